//! The KBS client against a real trustee KBS (`COCOON_KBS_BIN`, or
//! `build/kbs/kbs` from `make deps`) on loopback: attestation with the
//! sample TEE, resources decrypted in the guest's memory, one session for
//! several resources, and what the KBS refuses. Skipped with a reason when
//! no KBS binary is available.

use std::path::{Path, PathBuf};
use std::process::{Child, Command};

use base64::Engine;

use super::*;

/// Connects over TCP (the guest uses a vsock stream instead).
struct Tcp(String);

impl Connect for Tcp {
    fn connect(&self) -> Connecting<'_> {
        Box::pin(async move {
            let s = tokio::net::TcpStream::connect(&self.0).await?;
            Ok(Box::new(s) as Box<dyn Stream>)
        })
    }
}

fn kbs_binary() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("COCOON_KBS_BIN") {
        return Some(p.into());
    }
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../build/kbs/kbs");
    p.exists().then_some(p)
}

/// A trustee KBS on loopback with an admin key, killed on drop.
struct Kbs {
    child: Child,
    addr: String,
    token: String,
    _dir: tempfile::TempDir,
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

fn b64url(b: &[u8]) -> String {
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
    fn start(bin: &Path) -> Self {
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
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let addr = format!("127.0.0.1:{port}");
        let config = format!(
            r#"[http_server]
sockets = ["{addr}"]
insecure_http = true

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
        let child = Command::new(bin)
            .arg("--config-file")
            .arg(d.join("kbs.toml"))
            .current_dir(d)
            .stdout(std::fs::File::create(d.join("kbs.log")).unwrap())
            .stderr(std::fs::File::create(d.join("kbs.err")).unwrap())
            .spawn()
            .unwrap();
        let token = admin_token(&key, d);
        let kbs = Self {
            child,
            addr,
            token,
            _dir: dir,
        };
        let start = std::time::Instant::now();
        while std::net::TcpStream::connect(&kbs.addr).is_err() {
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "the KBS did not start"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        kbs
    }

    fn admin_post(&self, path: &str, content_type: &str, body: &[u8]) {
        let file = self._dir.path().join("body");
        std::fs::write(&file, body).unwrap();
        let out = run(Command::new("curl")
            .args(["-sS", "-o", "/dev/null", "-w", "%{http_code}", "-X", "POST"])
            .arg(format!("http://{}{path}", self.addr))
            .arg("-H")
            .arg(format!("Authorization: Bearer {}", self.token))
            .arg("-H")
            .arg(format!("Content-Type: {content_type}"))
            .arg("--data-binary")
            .arg(format!("@{}", file.display())));
        assert_eq!(String::from_utf8_lossy(&out), "200", "POST {path}");
    }

    /// Lets the sample TEE have resources (development only) and stores one.
    fn allow_sample_and_store(&self, path: &str, secret: &[u8]) {
        let rego = "package policy\n\ndefault allow = false\n\nallow if {\n\tdata.plugin == \"resource\"\n}\n";
        let body = serde_json::json!({ "policy": b64url(rego.as_bytes()) }).to_string();
        self.admin_post(
            "/kbs/v0/resource-policy",
            "application/json",
            body.as_bytes(),
        );
        self.admin_post(
            &format!("/kbs/v0/resource/{path}"),
            "application/octet-stream",
            secret,
        );
    }
}

fn sample_evidence(rd: &[u8; 48]) -> Result<Value, KbsError> {
    Ok(evidence::sample(rd))
}

const INITDATA: &str = "version = \"0.1.0\"\nalgorithm = \"sha384\"\n[data]\n";

#[tokio::test]
async fn resources_come_from_a_real_trustee_kbs() {
    let Some(bin) = kbs_binary() else {
        eprintln!("SKIP resources_come_from_a_real_trustee_kbs: no KBS binary (set COCOON_KBS_BIN, or `make deps` unpacks trustee's kbs into build/kbs)");
        return;
    };
    let kbs = Kbs::start(&bin);
    let secret = b"model key \x00\xff bytes".to_vec();
    kbs.allow_sample_and_store("default/key/test", &secret);
    kbs.allow_sample_and_store("default/key/second", b"two");
    let client = Client::new(Tcp(kbs.addr.clone()), &kbs.addr);

    let session = client
        .attest("sample", &sample_evidence, Some(INITDATA))
        .await
        .unwrap();
    let uri: ResourceUri = "kbs:///default/key/test".parse().unwrap();
    assert_eq!(client.resource(&session, &uri).await.unwrap(), secret);
    // One session serves several resources.
    let two: ResourceUri = "kbs:///default/key/second".parse().unwrap();
    assert_eq!(client.resource(&session, &two).await.unwrap(), b"two");

    // A resource that does not exist: refused, with the KBS's detail.
    let missing: ResourceUri = "kbs:///default/key/nope".parse().unwrap();
    let e = client.resource(&session, &missing).await.unwrap_err();
    assert!(
        matches!(
            e,
            KbsError::Refused {
                step: "resource",
                ..
            }
        ),
        "{e}"
    );

    // Evidence bound to another key: the KBS refuses the attestation.
    let wrong = |_: &[u8; 48]| Ok(evidence::sample(&[7u8; 48]));
    let e = client.attest("sample", &wrong, None).await.unwrap_err();
    assert!(matches!(e, KbsError::Refused { step: "attest", .. }), "{e}");

    // Another protocol version: refused at auth.
    let e = client
        .send(
            "auth",
            Method::POST,
            "/kbs/v0/auth",
            None,
            Some(br#"{"version":"0.1.0","tee":"sample","extra-params":""}"#.to_vec()),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(&e, KbsError::Refused { step: "auth", status: 401, detail } if detail.contains("Version")),
        "{e}"
    );

    // The JWE as the KBS sent it: altered, it does not decrypt; another
    // algorithm is refused before any key is used.
    let (_, _, body) = client
        .send(
            "resource",
            Method::GET,
            &uri.path(),
            Some(&session.cookie),
            None,
        )
        .await
        .unwrap();
    let jwe: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(jwe::decrypt(&jwe, &session.key).unwrap(), secret);
    let mut tampered = jwe.clone();
    let mut tag = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(jwe["tag"].as_str().unwrap())
        .unwrap();
    tag[0] ^= 1;
    tampered["tag"] = b64url(&tag).into();
    assert!(matches!(
        jwe::decrypt(&tampered, &session.key),
        Err(jwe::JweError::Decrypt(_))
    ));
    let mut none = jwe.clone();
    none["protected"] = b64url(br#"{"alg":"none","enc":"A256GCM"}"#).into();
    assert!(matches!(
        jwe::decrypt(&none, &session.key),
        Err(jwe::JweError::Algorithm { field: "alg", .. })
    ));
    let other = SecretKey::random(&mut rand_core::OsRng);
    assert!(jwe::decrypt(&jwe, &other).is_err());
    assert!(matches!(
        jwe::decrypt(&serde_json::json!({"protected": 1}), &session.key),
        Err(jwe::JweError::Format(_))
    ));
}

#[tokio::test]
async fn an_unreachable_kbs_is_named() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr = format!("127.0.0.1:{port}");
    let client = Client::new(Tcp(addr.clone()), &addr);
    let e = client
        .attest("sample", &sample_evidence, None)
        .await
        .unwrap_err();
    assert!(
        matches!(&e, KbsError::Unreachable { host, .. } if *host == addr),
        "{e}"
    );
}

/// A server that answers every request with 200 and `body`.
async fn garbage_server(body: &'static str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap().to_string();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            let mut buf = [0u8; 4096];
            let _ = s.read(&mut buf).await;
            let resp = format!(
                "HTTP/1.1 200 OK\r\nset-cookie: kbs-session-id=abc\r\ncontent-length: {}\r\n\r\n{body}",
                body.len()
            );
            let _ = s.write_all(resp.as_bytes()).await;
        }
    });
    addr
}

#[tokio::test]
async fn a_kbs_answering_garbage_is_an_error() {
    let addr = garbage_server("<html>hello</html>").await;
    let client = Client::new(Tcp(addr.clone()), &addr);
    let e = client
        .attest("sample", &sample_evidence, None)
        .await
        .unwrap_err();
    assert!(matches!(e, KbsError::Garbage { step: "auth", .. }), "{e}");
}
