//! The pod's agent policy: `cocoon-policy.toml` in the (verified) initdata.
//! It says which KBS resources the pod may fetch and which host requests
//! the agent serves for it. The host delivers the initdata once, and its
//! digest is bound into the launch (HOST_DATA / MRCONFIGID), so the host
//! cannot change the policy of a running confidential pod.
//!
//! ```toml
//! allowed_resources = ["kbs:///default/key/*"]
//! exec = false        # ExecProcess
//! stdin = false       # WriteStdin
//! logs = true         # ReadStream (stdout, stderr)
//! signals = true      # SignalProcess
//! stats = true        # Stats, ListProcesses
//! update = true       # UpdateContainer (cgroup limits)
//! privileged = false  # capabilities that own the guest kernel
//!
//! [[images]]          # with any: containers run only these images,
//! name = "app:1"      # from verified layers (docs/verified-layers.md)
//! layers = ["<root hash>", ...]
//! ```
//!
//! An unset rule takes its default, which depends on whether the guest
//! runs in a TEE and, for `stdin`, whether the container holds secrets
//! (the pod's KBS secrets or a sealed model): see [`Rule::default_allows`].

use std::collections::BTreeMap;

use cocoon_protocol::resource::ResourceUri;

use crate::error::{Error, Result};
use crate::initdata::GuestTee;

/// What the pod's initdata says about the KBS and the host's requests.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PodPolicy {
    /// `aa.toml` `[token_configs.kbs] url` (not part of the policy file).
    #[serde(skip)]
    pub kbs_url: Option<String>,
    /// The CA certificate(s) (PEM) of an https KBS: `aa.toml`
    /// `[token_configs.kbs] cert` or `cdh.toml` `[kbc] kbs_cert`.
    #[serde(skip)]
    pub kbs_cert: Option<String>,
    /// Resource URIs the pod may fetch (a trailing `*` matches the rest).
    #[serde(default)]
    pub allowed_resources: Vec<String>,
    /// Whether the host may run new processes in the pod's containers.
    pub exec: Option<bool>,
    /// Whether the host may write to a container process's stdin.
    pub stdin: Option<bool>,
    /// Whether the host may read a process's stdout and stderr.
    pub logs: Option<bool>,
    /// Whether the host may signal processes (removing a container or the
    /// pod, which the host always can, kills them regardless).
    pub signals: Option<bool>,
    /// Whether the host may read usage statistics and process lists.
    pub stats: Option<bool>,
    /// Whether the host may change a container's resource limits.
    pub update: Option<bool>,
    /// Whether a container may hold capabilities that own the guest kernel
    /// ([`GUEST_OWNING_CAPS`]).
    pub privileged: Option<bool>,
    /// The images containers may run, as verified layers' root hashes.
    /// Empty: the container's root filesystem comes from the host over
    /// virtio-fs, unverified.
    #[serde(default)]
    pub images: Vec<cocoon_protocol::layers::ImagePolicy>,
}

/// A host request the policy governs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rule {
    /// ExecProcess.
    Exec,
    /// WriteStdin.
    Stdin,
    /// ReadStream.
    Logs,
    /// SignalProcess.
    Signals,
    /// Stats, ListProcesses.
    Stats,
    /// UpdateContainer.
    Update,
}

impl Rule {
    /// The key in `cocoon-policy.toml`.
    pub fn key(self) -> &'static str {
        match self {
            Rule::Exec => "exec",
            Rule::Stdin => "stdin",
            Rule::Logs => "logs",
            Rule::Signals => "signals",
            Rule::Stats => "stats",
            Rule::Update => "update",
        }
    }

    /// The default of an unset rule: everything is allowed without a TEE;
    /// in a TEE exec is refused, and so is stdin into a container that
    /// holds secrets (what the host types could steer a process that has
    /// them); logs, signals, stats and updates stay allowed (they carry
    /// what the workload chooses to print, or nothing secret).
    pub fn default_allows(self, tee: &GuestTee, holds_secrets: bool) -> bool {
        if matches!(tee, GuestTee::None) {
            return true;
        }
        match self {
            Rule::Exec => false,
            Rule::Stdin => !holds_secrets,
            Rule::Logs | Rule::Signals | Rule::Stats | Rule::Update => true,
        }
    }
}

/// Capabilities that give a container the guest kernel (and with it every
/// secret in the TEE): mounting anything, loading modules, raw I/O and
/// `/dev/mem`, rebooting, BPF and perf.
pub const GUEST_OWNING_CAPS: &[(u8, &str)] = &[
    (16, "CAP_SYS_MODULE"),
    (17, "CAP_SYS_RAWIO"),
    (21, "CAP_SYS_ADMIN"),
    (22, "CAP_SYS_BOOT"),
    (38, "CAP_PERFMON"),
    (39, "CAP_BPF"),
];

impl PodPolicy {
    /// Whether the initdata allows fetching `uri`.
    pub fn allows(&self, uri: &ResourceUri) -> bool {
        let canonical = uri.to_string();
        self.allowed_resources
            .iter()
            .any(|a| matches(a, &canonical))
    }

    fn value(&self, rule: Rule) -> Option<bool> {
        match rule {
            Rule::Exec => self.exec,
            Rule::Stdin => self.stdin,
            Rule::Logs => self.logs,
            Rule::Signals => self.signals,
            Rule::Stats => self.stats,
            Rule::Update => self.update,
        }
    }

    /// Refuses a host request the policy (or, unset, its default) does not
    /// allow, with PERMISSION_DENIED naming the rule; `what` says what was
    /// asked ("exec into \"c1\"").
    pub fn check(&self, rule: Rule, tee: &GuestTee, holds_secrets: bool, what: &str) -> Result<()> {
        let key = rule.key();
        match self.value(rule) {
            Some(true) => Ok(()),
            Some(false) => Err(Error::PermissionDenied(format!(
                "{what} is refused by the pod's policy (cocoon-policy.toml in its initdata: {key} = false)"
            ))),
            None if rule.default_allows(tee, holds_secrets) => Ok(()),
            None => Err(Error::PermissionDenied(if rule == Rule::Stdin {
                format!("{what} is refused: the container holds the pod's secrets in a confidential pod; its initdata's cocoon-policy.toml may allow it with {key} = true")
            } else {
                format!("{what} is refused in a confidential pod by default; its initdata's cocoon-policy.toml may allow it with {key} = true")
            })),
        }
    }

    /// Refuses a container whose bounding set holds a capability that owns
    /// the guest kernel, unless the policy (or, unset, the lack of a TEE)
    /// allows it.
    pub fn check_privileged(&self, bounding: u64, tee: &GuestTee) -> Result<()> {
        let held: Vec<&str> = GUEST_OWNING_CAPS
            .iter()
            .filter(|(bit, _)| bounding & (1u64 << bit) != 0)
            .map(|(_, name)| *name)
            .collect();
        if held.is_empty() {
            return Ok(());
        }
        match (self.privileged, tee) {
            (Some(true), _) | (None, GuestTee::None) => Ok(()),
            (Some(false), _) => Err(Error::PermissionDenied(format!(
                "process.capabilities.bounding holds {}: refused by the pod's policy (cocoon-policy.toml in its initdata: privileged = false)",
                held.join(", ")
            ))),
            (None, _) => Err(Error::PermissionDenied(format!(
                "process.capabilities.bounding holds {}, which would own the guest kernel: refused in a confidential pod by default; its initdata's cocoon-policy.toml may allow it with privileged = true",
                held.join(", ")
            ))),
        }
    }
}

fn bad(problem: String) -> Error {
    Error::InvalidArgument {
        field: "initdata",
        problem,
    }
}

/// Reads the KBS URL and the policy from an initdata document.
pub fn policy(initdata: &[u8]) -> Result<PodPolicy> {
    #[derive(serde::Deserialize)]
    struct Doc {
        #[serde(default)]
        data: BTreeMap<String, String>,
    }
    #[derive(serde::Deserialize)]
    struct Aa {
        token_configs: Option<TokenConfigs>,
    }
    #[derive(serde::Deserialize)]
    struct TokenConfigs {
        kbs: Option<KbsConfig>,
    }
    #[derive(serde::Deserialize)]
    struct KbsConfig {
        url: String,
        cert: Option<String>,
    }
    let text = std::str::from_utf8(initdata).map_err(|_| bad("is not UTF-8".into()))?;
    let doc: Doc = toml::from_str(text).map_err(|e| bad(e.message().to_string()))?;
    #[derive(serde::Deserialize)]
    struct Cdh {
        kbc: Option<Kbc>,
    }
    #[derive(serde::Deserialize)]
    struct Kbc {
        url: Option<String>,
        kbs_cert: Option<String>,
    }
    let aa_url = match doc.data.get("aa.toml") {
        Some(aa) => {
            let aa: Aa =
                toml::from_str(aa).map_err(|e| bad(format!("aa.toml: {}", e.message())))?;
            aa.token_configs
                .and_then(|t| t.kbs)
                .map(|k| (k.url, k.cert))
        }
        None => None,
    };
    // Kata's initdata usually names the KBS twice, for the attestation
    // agent and for the confidential data hub; one agent does both here.
    let cdh_url = match doc.data.get("cdh.toml") {
        Some(cdh) => {
            let cdh: Cdh =
                toml::from_str(cdh).map_err(|e| bad(format!("cdh.toml: {}", e.message())))?;
            cdh.kbc.map(|k| (k.url, k.kbs_cert))
        }
        None => None,
    };
    let (aa_url, aa_cert) = aa_url.map_or((None, None), |(u, c)| (Some(u), c));
    let (cdh_url, cdh_cert) = cdh_url.unwrap_or_default();
    let kbs_url = match (aa_url, cdh_url) {
        (Some(a), Some(c)) if a.trim_end_matches('/') != c.trim_end_matches('/') => {
            return Err(bad(format!(
                "aa.toml names the KBS {a:?} and cdh.toml names {c:?}; they must be the same KBS"
            )))
        }
        (a, c) => a.or(c),
    };
    let mut policy = match doc.data.get("cocoon-policy.toml") {
        Some(p) => toml::from_str::<PodPolicy>(p)
            .map_err(|e| bad(format!("cocoon-policy.toml: {}", e.message())))?,
        None => PodPolicy::default(),
    };
    cocoon_protocol::layers::check_images(&policy.images)
        .map_err(|e| bad(format!("cocoon-policy.toml: {e}")))?;
    policy.kbs_url = kbs_url;
    policy.kbs_cert = aa_cert.or(cdh_cert);
    Ok(policy)
}

/// Whether `pattern` (a URI, or a prefix ending in `*`) allows `uri`.
fn matches(pattern: &str, uri: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some(prefix) => uri.starts_with(prefix),
        None => pattern == uri,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn doc(policy_toml: &str) -> Vec<u8> {
        format!("version = \"0.1.0\"\nalgorithm = \"sha384\"\n[data]\n\"cocoon-policy.toml\" = '''\n{policy_toml}\n'''\n").into_bytes()
    }

    #[test]
    fn images_are_read_and_their_hashes_checked() {
        let h = "ab".repeat(32);
        let p = policy(&doc(&format!(
            "[[images]]\nname = \"app\"\nlayers = [\"{h}\"]"
        )))
        .unwrap();
        assert_eq!(p.images.len(), 1);
        assert_eq!(p.images[0].layers, std::slice::from_ref(&h));
        let e = policy(&doc(&format!("[[images]]\nlayers = [\"{}\"]", &h[..40])))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("initdata")
                && e.contains("images[0].layers[0]")
                && e.contains("40 characters"),
            "{e}"
        );
        let e = policy(&doc("[[images]]\nlayers = [\"xyz\"]"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("images[0].layers[0]"), "{e}");
    }

    #[test]
    fn every_rule_is_read_from_the_policy() {
        let p = policy(&doc("exec = true\nstdin = false\nlogs = false\nsignals = false\nstats = false\nupdate = true\nprivileged = true")).unwrap();
        assert_eq!(
            (
                p.exec,
                p.stdin,
                p.logs,
                p.signals,
                p.stats,
                p.update,
                p.privileged
            ),
            (
                Some(true),
                Some(false),
                Some(false),
                Some(false),
                Some(false),
                Some(true),
                Some(true)
            )
        );
        assert_eq!(p.kbs_url, None);
        // The KBS from cdh.toml when aa.toml has none; both must agree.
        let with = |aa: &str, cdh: &str| {
            policy(format!("version = \"0.1.0\"\nalgorithm = \"sha384\"\n[data]\n\"aa.toml\" = '''\n{aa}\n'''\n\"cdh.toml\" = '''\n{cdh}\n'''\n").as_bytes())
        };
        let kbc = "[kbc]\nname = \"cc_kbc\"\nurl = \"http://10.0.0.5:8080\"";
        let p = with("", kbc).unwrap();
        assert_eq!(p.kbs_url.as_deref(), Some("http://10.0.0.5:8080"));
        let p = with("[token_configs.kbs]\nurl = \"http://10.0.0.5:8080/\"", kbc).unwrap();
        assert_eq!(p.kbs_url.as_deref(), Some("http://10.0.0.5:8080/"));
        let e = with("[token_configs.kbs]\nurl = \"http://10.9.9.9:8080\"", kbc)
            .unwrap_err()
            .to_string();
        assert!(e.contains("must be the same KBS"), "{e}");
        let e = with("", "kbc = 3").unwrap_err().to_string();
        assert!(e.contains("cdh.toml"), "{e}");
        // Unknown keys (a typo, a rule this agent does not know) are refused,
        // not ignored: a policy must never mean less than it says.
        let e = policy(&doc("debug = true")).unwrap_err().to_string();
        assert!(
            e.contains("cocoon-policy.toml") && e.contains("debug"),
            "{e}"
        );
        let e = policy(&doc("exec = \"no\"")).unwrap_err().to_string();
        assert!(e.contains("cocoon-policy.toml"), "{e}");
    }

    #[test]
    fn rules_follow_the_policy_and_their_defaults() {
        let open = PodPolicy::default();
        for rule in [
            Rule::Exec,
            Rule::Stdin,
            Rule::Logs,
            Rule::Signals,
            Rule::Stats,
            Rule::Update,
        ] {
            open.check(rule, &GuestTee::None, true, "x").unwrap();
        }
        // In a TEE: exec refused, stdin refused only with secrets.
        let e = open
            .check(Rule::Exec, &GuestTee::Snp, false, "exec into \"c\"")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("exec into \"c\" is refused in a confidential pod by default")
                && e.contains("exec = true"),
            "{e}"
        );
        open.check(Rule::Stdin, &GuestTee::Tdx, false, "x").unwrap();
        let e = open
            .check(Rule::Stdin, &GuestTee::Tdx, true, "stdin of \"c\"")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("holds the pod's secrets") && e.contains("stdin = true"),
            "{e}"
        );
        for rule in [Rule::Logs, Rule::Signals, Rule::Stats, Rule::Update] {
            open.check(rule, &GuestTee::Snp, true, "x").unwrap();
        }
        let closed = PodPolicy {
            logs: Some(false),
            stdin: Some(true),
            ..PodPolicy::default()
        };
        let e = closed
            .check(Rule::Logs, &GuestTee::None, false, "stdout of \"c\"")
            .unwrap_err();
        assert!(matches!(e, Error::PermissionDenied(_)));
        assert!(e.to_string().contains("logs = false"), "{e}");
        closed
            .check(Rule::Stdin, &GuestTee::Snp, true, "x")
            .unwrap();
    }

    #[test]
    fn guest_owning_capabilities_follow_the_policy_and_the_tee() {
        // containerd's default set (no CAP_SYS_ADMIN) is always fine.
        let default_caps: u64 = 0xa804_25fb;
        let admin = default_caps | (1 << 21) | (1 << 16);
        let open = PodPolicy::default();
        open.check_privileged(default_caps, &GuestTee::Snp).unwrap();
        open.check_privileged(admin, &GuestTee::None).unwrap();
        let e = open
            .check_privileged(admin, &GuestTee::Tdx)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("CAP_SYS_MODULE, CAP_SYS_ADMIN") && e.contains("privileged = true"),
            "{e}"
        );
        let closed = PodPolicy {
            privileged: Some(false),
            ..PodPolicy::default()
        };
        let e = closed
            .check_privileged(admin, &GuestTee::None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("privileged = false"), "{e}");
        let allowed = PodPolicy {
            privileged: Some(true),
            ..PodPolicy::default()
        };
        allowed.check_privileged(u64::MAX, &GuestTee::Snp).unwrap();
    }
}
