//! A real trustee KBS on loopback for tests: started from `COCOON_KBS_BIN`
//! or `build/kbs/kbs` (`make deps`), with an Ed25519 admin key, a
//! resource policy and resources set through its admin API (curl), killed
//! on drop. Shared by the agent's KBS client tests and the pod tests.

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::Duration;

use base64::Engine;

/// The KBS binary: `$COCOON_KBS_BIN`, else `build/kbs/kbs` of the checkout
/// holding `manifest_dir`.
pub fn kbs_binary(manifest_dir: &Path) -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("COCOON_KBS_BIN") {
        return Some(p.into());
    }
    manifest_dir
        .ancestors()
        .find(|d| d.join("Cargo.lock").exists())
        .map(|root| root.join("build/kbs/kbs"))
        .filter(|p| p.exists())
}

/// A trustee KBS on loopback (or in a network namespace) with an admin
/// key, killed on drop.
pub struct Kbs {
    child: Child,
    /// `127.0.0.1:<port>` (or `<ip>:8080` in a namespace).
    pub addr: String,
    /// The `ip netns` name it runs in, if not this process's namespace.
    netns: Option<String>,
    token: String,
    dir: tempfile::TempDir,
    /// With TLS: the PEM of the CA that signed the certificate it serves
    /// (for 127.0.0.1 and `kbs.test`).
    pub cert_pem: Option<String>,
}

impl Drop for Kbs {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn run(cmd: &mut Command) -> Vec<u8> {
    let o = cmd.output().unwrap();
    assert!(
        o.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    o.stdout
}

/// Base64url without padding.
pub fn b64url(b: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
}

/// An admin JWT (EdDSA, role admin) signed with `key`, as the KBS's
/// bearer-JWT admin authentication expects.
fn admin_token(key: &Path, dir: &Path) -> String {
    let header = b64url(br#"{"alg":"EdDSA","typ":"JWT"}"#);
    let payload = b64url(
        br#"{"iss":"issuer","role":"admin","aud":["kbs"],"iat":1700000000,"exp":4102444800}"#,
    );
    let msg = dir.join("jwt-input");
    std::fs::write(&msg, format!("{header}.{payload}")).unwrap();
    let sig = run(Command::new("openssl")
        .args(["pkeyutl", "-sign", "-rawin", "-inkey"])
        .arg(key)
        .arg("-in")
        .arg(&msg));
    format!("{header}.{payload}.{}", b64url(&sig))
}

impl Kbs {
    /// Starts the KBS (plain HTTP) and waits until it listens.
    pub fn start(bin: &Path) -> Self {
        Self::start_with(bin, false, None)
    }

    /// Starts the KBS (plain HTTP) in the network namespace `netns` (an
    /// `ip netns` name), listening on `ip:8080`.
    // The agent's KBS client tests share this harness and do not use it.
    #[allow(dead_code)]
    pub fn start_in_netns(bin: &Path, netns: &str, ip: &str) -> Self {
        Self::start_with(bin, false, Some((netns, ip)))
    }

    /// A command run in the KBS's network namespace.
    fn command(&self, program: &str) -> Command {
        match &self.netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns, program]);
                c
            }
            None => Command::new(program),
        }
    }

    /// Starts the KBS serving HTTPS with a certificate from a fresh CA
    /// ([`Kbs::cert_pem`]).
    pub fn start_tls(bin: &Path) -> Self {
        Self::start_with(bin, true, None)
    }

    fn start_with(bin: &Path, tls: bool, netns: Option<(&str, &str)>) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let key = d.join("admin.key");
        let key_pem = run(Command::new("openssl").args(["genpkey", "-algorithm", "ed25519"]));
        std::fs::write(&key, key_pem).unwrap();
        run(Command::new("openssl")
            .args(["pkey", "-pubout", "-in"])
            .arg(&key)
            .arg("-out")
            .arg(d.join("admin.pub")));
        let addr = match netns {
            Some((_, ip)) => format!("{ip}:8080"),
            None => {
                let port = std::net::TcpListener::bind("127.0.0.1:0")
                    .unwrap()
                    .local_addr()
                    .unwrap()
                    .port();
                format!("127.0.0.1:{port}")
            }
        };
        let http = if tls {
            // A CA (what the pod's initdata trusts) and the KBS's own
            // certificate signed by it.
            let ec = [
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-nodes",
            ];
            run(Command::new("openssl")
                .args(["req", "-x509"])
                .args(ec)
                .args(["-days", "2", "-subj", "/CN=cocoon-test-ca", "-keyout"])
                .arg(d.join("ca.key"))
                .arg("-out")
                .arg(d.join("ca.crt")));
            run(Command::new("openssl")
                .arg("req")
                .args(ec)
                .args(["-subj", "/CN=cocoon-test-kbs", "-keyout"])
                .arg(d.join("tls.key"))
                .arg("-out")
                .arg(d.join("tls.csr")));
            std::fs::write(
                d.join("ext"),
                "subjectAltName=IP:127.0.0.1,DNS:kbs.test\\nbasicConstraints=critical,CA:FALSE\\n",
            )
            .unwrap();
            run(Command::new("openssl")
                .args(["x509", "-req", "-days", "2", "-in"])
                .arg(d.join("tls.csr"))
                .arg("-CA")
                .arg(d.join("ca.crt"))
                .arg("-CAkey")
                .arg(d.join("ca.key"))
                .args(["-CAcreateserial", "-extfile"])
                .arg(d.join("ext"))
                .arg("-out")
                .arg(d.join("tls.crt")));
            format!(
                "insecure_http = false\nprivate_key = \"{}\"\ncertificate = \"{}\"",
                d.join("tls.key").display(),
                d.join("tls.crt").display()
            )
        } else {
            "insecure_http = true".to_string()
        };
        let config = format!(
            r#"[http_server]
sockets = ["{addr}"]
{http}

[attestation_token]
insecure_header_jwk = true

[attestation_service]
type = "coco_as_builtin"

[attestation_service.attestation_token_broker]
duration_min = 5

[attestation_service.rvps_config]
type = "BuiltIn"

[storage_backend]
storage_type = "LocalFs"

[storage_backend.backends.local_fs]
dir_path = "{repo}"

[admin]
authorization_mode = "AuthenticatedAuthorization"

[admin.authentication.bearer_jwt]
identity_providers = [{{ issuer = "issuer", audience = "kbs", public_key_uri = "{pubkey}" }}]

[admin.authorization.regex_acl]
acls = [{{ role = "admin", allowed_endpoints = "^/kbs/.+$" }}]

[[plugins]]
name = "resource"
storage_backend_type = "kvstorage"
"#,
            repo = d.join("repo").display(),
            pubkey = d.join("admin.pub").display(),
        );
        std::fs::write(d.join("kbs.toml"), config).unwrap();
        let mut cmd = match netns {
            Some((ns, _)) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns]).arg(bin);
                c
            }
            None => Command::new(bin),
        };
        let child = cmd
            .arg("--config-file")
            .arg(d.join("kbs.toml"))
            .current_dir(d)
            .stdout(std::fs::File::create(d.join("kbs.log")).unwrap())
            .stderr(std::fs::File::create(d.join("kbs.err")).unwrap())
            .spawn()
            .unwrap();
        let token = admin_token(&key, d);
        let cert_pem = tls.then(|| std::fs::read_to_string(d.join("ca.crt")).unwrap());
        let kbs = Self {
            child,
            addr,
            netns: netns.map(|(ns, _)| ns.to_string()),
            token,
            dir,
            cert_pem,
        };
        let listening = |kbs: &Self| match &kbs.netns {
            None => std::net::TcpStream::connect(&kbs.addr).is_ok(),
            Some(_) => kbs
                .command("curl")
                .args(["-s", "-o", "/dev/null", "--max-time", "2"])
                .arg(format!("http://{}/", kbs.addr))
                .status()
                .is_ok_and(|s| s.code() != Some(7) && s.code() != Some(28)),
        };
        let start = std::time::Instant::now();
        while !listening(&kbs) {
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "the KBS did not start"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        kbs
    }

    /// `POST path` with the admin token.
    pub fn admin_post(&self, path: &str, content_type: &str, body: &[u8]) {
        let file = self.dir.path().join("body");
        std::fs::write(&file, body).unwrap();
        let mut curl = self.command("curl");
        let scheme = if self.cert_pem.is_some() {
            // HTTP/1.1: over HTTP/2 the KBS matches its admin ACL against
            // the absolute URI, which `^/kbs/` does not match.
            curl.args(["--http1.1", "--cacert"])
                .arg(self.dir.path().join("ca.crt"));
            "https"
        } else {
            "http"
        };
        let out = run(curl
            .args(["-sS", "-o", "/dev/null", "-w", "%{http_code}", "-X", "POST"])
            .arg(format!("{scheme}://{}{path}", self.addr))
            .arg("-H")
            .arg(format!("Authorization: Bearer {}", self.token))
            .arg("-H")
            .arg(format!("Content-Type: {content_type}"))
            .arg("--data-binary")
            .arg(format!("@{}", file.display())));
        assert_eq!(String::from_utf8_lossy(&out), "200", "POST {path}");
    }

    /// Lets the sample TEE have resources (development only) and stores one.
    pub fn allow_sample_and_store(&self, path: &str, secret: &[u8]) {
        let rego = "package policy\n\ndefault allow = false\n\nallow if {\n\tdata.plugin == \"resource\"\n}\n";
        let body = serde_json::json!({ "policy": b64url(rego.as_bytes()) }).to_string();
        self.admin_post(
            "/kbs/v0/resource-policy",
            "application/json",
            body.as_bytes(),
        );
        self.store(path, secret);
    }

    /// Stores resource `path` (`<repo>/<type>/<tag>`).
    pub fn store(&self, path: &str, data: &[u8]) {
        self.admin_post(
            &format!("/kbs/v0/resource/{path}"),
            "application/octet-stream",
            data,
        );
    }
}
