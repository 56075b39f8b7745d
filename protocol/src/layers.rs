//! The images a pod may run, as the root hashes of their verified layers:
//! the `[[images]]` tables of `cocoon-policy.toml` in the pod's initdata.
//!
//! ```toml
//! [[images]]
//! name = "registry.example/app:1.2"   # for people; never matched
//! layers = [                          # bottom to top
//!   "3f1c…(64 hex digits)",
//!   "a9e0…",
//! ]
//! ```
//!
//! A container's layers, in order, must be exactly one image's `layers`:
//! a subset, another order or a mix of two images is refused (leaving out
//! a layer could bring back a file a later layer deleted). `cocoon policy`
//! writes these tables from an OCI image.
//!
//! An entry may also pin what a container of the image runs, since the
//! host writes the container's OCI spec: `args` (the exact command line),
//! `cwd`, `env` (patterns every environment entry must match) and
//! `volumes` (patterns of the paths where the host may mount volumes or
//! file systems, or mask paths, over the image). A pin left out is not
//! checked. Patterns are exact text where `*` matches any run of
//! characters. Several entries may list the same
//! layers with different pins (one image, several commands): a container
//! is allowed when one entry with its layers allows its process.
//!
//! ```toml
//! [[images]]
//! name = "registry.example/app:1.2"
//! layers = ["3f1c…", "a9e0…"]
//! args = ["/app/server", "--port", "8080"]
//! cwd = "/app"
//! env = ["PATH=/usr/bin:/bin", "HOSTNAME=*", "*_SERVICE_HOST=*"]
//! volumes = ["/etc/hosts", "/etc/hostname", "/etc/resolv.conf", "/data/*"]
//! ```

/// Length of a root hash in hex digits (SHA-256).
pub const ROOT_HASH_HEX: usize = 64;
/// Most layers an image may have (OCI registries allow 127 in practice).
pub const MAX_LAYERS: usize = 128;

/// One allowed image.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct ImagePolicy {
    /// What the image is called (informational: the host names images).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub name: String,
    /// dm-verity root hashes of the image's layers, bottom to top.
    pub layers: Vec<String>,
    /// The container's `process.args`, exactly (not checked when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub args: Option<Vec<String>>,
    /// The container's `process.cwd`, exactly (not checked when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cwd: Option<String>,
    /// Patterns (`NAME=value`, `*` for any run of characters) every entry
    /// of the container's `process.env` must match (not checked when
    /// absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub env: Option<Vec<String>>,
    /// Patterns of the container paths where the host may mount volumes
    /// or file systems, or mask paths, outside `/proc`, `/sys` and `/dev`
    /// (`/etc/hosts`, `/data/*`); none but these (not checked when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volumes: Option<Vec<String>>,
}

/// What a container would run, as the pins of an [`ImagePolicy`] see it.
#[derive(Debug, Clone, Copy)]
pub struct Process<'a> {
    /// `process.args`.
    pub args: &'a [String],
    /// `process.cwd`.
    pub cwd: &'a str,
    /// `process.env`, as the host wrote it (sealed values still sealed).
    pub env: &'a [String],
    /// Where the host's spec puts something over the image: volumes, and
    /// file systems or masked paths outside `/proc`, `/sys` and `/dev`.
    pub volumes: &'a [&'a str],
}

/// Whether `text` matches `pattern`, where `*` matches any run of
/// characters (`/` included) and everything else itself.
pub fn glob_match(pattern: &str, text: &str) -> bool {
    let (p, t) = (pattern.as_bytes(), text.as_bytes());
    // Greedy matching with one back-track point: the last `*` seen.
    let (mut pi, mut ti) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && p[pi] == b'*' {
            star = Some((pi, ti));
            pi += 1;
        } else if pi < p.len() && p[pi] == t[ti] {
            pi += 1;
            ti += 1;
        } else if let Some((sp, st)) = star {
            pi = sp + 1;
            ti = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == b'*')
}

/// Whether `e` is an `env` pattern: `NAME=value` with a name.
pub fn is_env_pattern(e: &str) -> bool {
    e.split_once('=').is_some_and(|(name, _)| !name.is_empty())
}

/// Whether `v` is a `volumes` pattern: an absolute path without `..`.
pub fn is_volume_pattern(v: &str) -> bool {
    v.starts_with('/') && !v.split('/').any(|c| c == "..")
}

/// `path` without repeated, trailing or `.` components (`/etc//hosts/`
/// is `/etc/hosts`).
pub fn clean_path(path: &str) -> String {
    let parts: Vec<&str> = path
        .split('/')
        .filter(|c| !c.is_empty() && *c != ".")
        .collect();
    format!("/{}", parts.join("/"))
}

/// Checks one root hash: 64 lowercase hex digits. The error is a predicate
/// (`is ...`) for the caller to prefix with the field.
pub fn check_root_hash(h: &str) -> Result<(), String> {
    if h.len() != ROOT_HASH_HEX {
        return Err(format!(
            "{h:?} is {} characters; a root hash is {ROOT_HASH_HEX} hex digits (SHA-256, as `cocoon policy` and `veritysetup format` print it)",
            h.len()
        ));
    }
    if !h.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        return Err(format!(
            "{h:?} is not lowercase hexadecimal; a root hash is {ROOT_HASH_HEX} digits 0-9 a-f"
        ));
    }
    Ok(())
}

impl ImagePolicy {
    /// Checks the image's hashes; `at` names it in the message
    /// (`images[2]`).
    pub fn check(&self, at: &str) -> Result<(), String> {
        if self.layers.is_empty() {
            return Err(format!("{at}.layers is empty; list the image's layer root hashes (`cocoon policy IMAGE` prints them)"));
        }
        if self.layers.len() > MAX_LAYERS {
            return Err(format!(
                "{at}.layers has {} entries; at most {MAX_LAYERS}",
                self.layers.len()
            ));
        }
        for (i, h) in self.layers.iter().enumerate() {
            check_root_hash(h).map_err(|e| format!("{at}.layers[{i}]: {e}"))?;
        }
        if self.args.as_ref().is_some_and(Vec::is_empty) {
            return Err(format!(
                "{at}.args is empty; a process needs a command (leave `args` out to allow any)"
            ));
        }
        if let Some(cwd) = &self.cwd {
            if !cwd.starts_with('/') {
                return Err(format!("{at}.cwd {cwd:?} is not an absolute path"));
            }
        }
        for (i, e) in self.env.iter().flatten().enumerate() {
            if !is_env_pattern(e) {
                return Err(format!(
                    "{at}.env[{i}] {e:?} is not NAME=value (a pattern: `*` matches any run of characters, as in \"HOSTNAME=*\")"
                ));
            }
        }
        for (i, v) in self.volumes.iter().flatten().enumerate() {
            if !is_volume_pattern(v) {
                return Err(format!(
                    "{at}.volumes[{i}] {v:?} is not an absolute container path without `..`"
                ));
            }
        }
        Ok(())
    }

    /// Whether this entry's pins allow `p`; the error names the first pin
    /// `p` breaks (`args`, `cwd`, `env[3]`, `volumes`), for the caller to
    /// prefix with the entry.
    pub fn allows(&self, p: &Process<'_>) -> Result<(), String> {
        if let Some(args) = &self.args {
            if args.as_slice() != p.args {
                return Err(format!(
                    "process.args {:?} are not its args {args:?}",
                    p.args
                ));
            }
        }
        if let Some(cwd) = &self.cwd {
            if clean_path(cwd) != clean_path(p.cwd) {
                return Err(format!("process.cwd {:?} is not its cwd {cwd:?}", p.cwd));
            }
        }
        if let Some(env) = &self.env {
            if let Some(e) = p
                .env
                .iter()
                .find(|e| !env.iter().any(|pat| glob_match(pat, e)))
            {
                let name = e.split_once('=').map_or(e.as_str(), |(n, _)| n);
                return Err(format!(
                    "process.env entry {name}=… matches none of its env patterns"
                ));
            }
        }
        if let Some(volumes) = &self.volumes {
            if let Some(v) = p.volumes.iter().find(|v| {
                !volumes
                    .iter()
                    .any(|pat| glob_match(&clean_path(pat), &clean_path(v)))
            }) {
                return Err(format!(
                    "a host mount at {v:?} matches none of its volumes patterns"
                ));
            }
        }
        Ok(())
    }
}

/// Whether an `[[images]]` entry with exactly these layers allows `p`:
/// `Ok(index)` of the first that does; `Err(None)` when no entry has these
/// layers, `Err(Some(why))` when entries have them but their pins refuse
/// `p` (each entry's reason, naming it).
pub fn allowed_image(
    images: &[ImagePolicy],
    hashes: &[&str],
    p: &Process<'_>,
) -> Result<usize, Option<String>> {
    let mut why: Vec<String> = Vec::new();
    for (i, img) in images.iter().enumerate() {
        if !img
            .layers
            .iter()
            .map(String::as_str)
            .eq(hashes.iter().copied())
        {
            continue;
        }
        if let Err(e) = img.allows(p) {
            let name = if img.name.is_empty() {
                String::new()
            } else {
                format!(" ({:?})", img.name)
            };
            why.push(format!("images[{i}]{name}: {e}"));
        } else {
            return Ok(i);
        }
    }
    Err((!why.is_empty()).then(|| why.join("; ")))
}

/// Checks every image of a policy.
pub fn check_images(images: &[ImagePolicy]) -> Result<(), String> {
    for (i, img) in images.iter().enumerate() {
        img.check(&format!("images[{i}]"))?;
    }
    Ok(())
}

/// The index of the image whose layers are exactly `hashes`, if any.
pub fn matching_image(images: &[ImagePolicy], hashes: &[&str]) -> Option<usize> {
    images.iter().position(|img| {
        img.layers
            .iter()
            .map(String::as_str)
            .eq(hashes.iter().copied())
    })
}

/// The `[[images]]` of a `cocoon-policy.toml` text, checked; other keys are
/// left to the agent, which owns the policy's full grammar.
pub fn images_of_policy(policy_toml: &str) -> Result<Vec<ImagePolicy>, String> {
    #[derive(serde::Deserialize)]
    struct Only {
        #[serde(default)]
        images: Vec<ImagePolicy>,
    }
    let only: Only = toml::from_str(policy_toml)
        .map_err(|e| format!("cocoon-policy.toml: {}", e.message().trim_end()))?;
    check_images(&only.images).map_err(|e| format!("cocoon-policy.toml: {e}"))?;
    Ok(only.images)
}

/// The initdata key of Cocoon's policy.
pub const POLICY_KEY: &str = "cocoon-policy.toml";

/// Writes `images` as `[[images]]` tables, ready to paste into
/// `cocoon-policy.toml`.
pub fn policy_fragment(images: &[ImagePolicy]) -> String {
    #[derive(serde::Serialize)]
    struct Doc<'a> {
        images: &'a [ImagePolicy],
    }
    toml::to_string_pretty(&Doc { images }).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(c: char) -> String {
        std::iter::repeat_n(c, 64).collect()
    }

    #[test]
    fn hashes_are_64_lowercase_hex_digits() {
        assert!(check_root_hash(&h('a')).is_ok());
        let short = check_root_hash(&h('a')[..63]).unwrap_err();
        assert!(
            short.contains("63 characters") && short.contains("64 hex"),
            "{short}"
        );
        let upper = check_root_hash(&h('A')).unwrap_err();
        assert!(upper.contains("lowercase"), "{upper}");
        let img = ImagePolicy {
            name: "x".into(),
            layers: vec![h('1'), "zz".into()],
            ..ImagePolicy::default()
        };
        let e = check_images(&[img]).unwrap_err();
        assert!(
            e.starts_with("images[0].layers[1]: \"zz\" is 2 characters"),
            "{e}"
        );
        let e = check_images(&[ImagePolicy::default()]).unwrap_err();
        assert!(e.contains("images[0].layers is empty"), "{e}");
    }

    #[test]
    fn a_container_matches_an_image_only_with_all_its_layers_in_order() {
        let images = vec![
            ImagePolicy {
                name: "a".into(),
                layers: vec![h('1'), h('2')],
                ..ImagePolicy::default()
            },
            ImagePolicy {
                name: "b".into(),
                layers: vec![h('3')],
                ..ImagePolicy::default()
            },
        ];
        assert_eq!(matching_image(&images, &[&h('1'), &h('2')]), Some(0));
        assert_eq!(matching_image(&images, &[&h('3')]), Some(1));
        assert_eq!(matching_image(&images, &[&h('1')]), None);
        assert_eq!(matching_image(&images, &[&h('2'), &h('1')]), None);
        assert_eq!(matching_image(&images, &[&h('1'), &h('2'), &h('3')]), None);
        assert_eq!(matching_image(&images, &[]), None);
    }

    #[test]
    fn stars_match_any_run_of_characters() {
        for (p, t) in [
            ("HOSTNAME=*", "HOSTNAME=pod-1"),
            ("HOSTNAME=*", "HOSTNAME="),
            ("*_SERVICE_HOST=*", "KUBERNETES_SERVICE_HOST=10.0.0.1"),
            ("/data/*", "/data/a/b"),
            ("a*b*c", "abbbc"),
            ("a*b*c", "aXbYbZc"),
            ("PATH=/bin", "PATH=/bin"),
            ("*", ""),
        ] {
            assert!(glob_match(p, t), "{p} should match {t}");
        }
        for (p, t) in [
            ("HOSTNAME=*", "HOSTNAMEX=1"),
            ("PATH=/bin", "PATH=/bin:/x"),
            ("/data/*", "/data"),
            ("/data/*", "/etc/data/x"),
            ("a*b*c", "abcx"),
            ("", "x"),
        ] {
            assert!(!glob_match(p, t), "{p} should not match {t}");
        }
        assert_eq!(clean_path("/etc//hosts/"), "/etc/hosts");
        assert_eq!(clean_path("/./a/./b"), "/a/b");
        assert_eq!(clean_path("/"), "/");
    }

    #[test]
    fn pins_allow_only_their_process() {
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        let img = ImagePolicy {
            name: "app".into(),
            layers: vec![h('1')],
            args: Some(s(&["/app/server", "--port", "80"])),
            cwd: Some("/app".into()),
            env: Some(s(&["PATH=/bin", "HOSTNAME=*"])),
            volumes: Some(s(&["/etc/hosts", "/data/*"])),
        };
        img.check("images[0]").unwrap();
        let args = s(&["/app/server", "--port", "80"]);
        let env = s(&["PATH=/bin", "HOSTNAME=pod"]);
        let ok = Process {
            args: &args,
            cwd: "/app/",
            env: &env,
            volumes: &["/etc//hosts", "/data/models"],
        };
        img.allows(&ok).unwrap();
        let sh = s(&["/bin/sh", "-c", "cat /run/secrets/*"]);
        let e = img.allows(&Process { args: &sh, ..ok }).unwrap_err();
        assert!(e.starts_with("process.args [\"/bin/sh\""), "{e}");
        let e = img.allows(&Process { cwd: "/", ..ok }).unwrap_err();
        assert!(e.contains("process.cwd \"/\""), "{e}");
        let preload = s(&["PATH=/bin", "LD_PRELOAD=/data/x.so"]);
        let e = img
            .allows(&Process {
                env: &preload,
                ..ok
            })
            .unwrap_err();
        assert_eq!(
            e,
            "process.env entry LD_PRELOAD=… matches none of its env patterns"
        );
        let e = img
            .allows(&Process {
                volumes: &["/app"],
                ..ok
            })
            .unwrap_err();
        assert!(e.contains("\"/app\" matches none"), "{e}");
        // No pins: anything on these layers.
        let any = ImagePolicy {
            layers: vec![h('1')],
            ..ImagePolicy::default()
        };
        any.allows(&Process {
            args: &sh,
            cwd: "/",
            env: &preload,
            volumes: &["/app"],
        })
        .unwrap();

        // Two entries for one image: either command; another image's
        // layers: no entry at all.
        let mut other = img.clone();
        other.args = Some(sh.clone());
        let images = vec![img.clone(), other];
        assert_eq!(allowed_image(&images, &[&h('1')], &ok), Ok(0));
        assert_eq!(
            allowed_image(&images, &[&h('1')], &Process { args: &sh, ..ok }),
            Ok(1)
        );
        let bad = allowed_image(&images, &[&h('1')], &Process { cwd: "/tmp", ..ok }).unwrap_err();
        let bad = bad.unwrap();
        assert!(bad.starts_with("images[0] (\"app\"): process.cwd"), "{bad}");
        assert!(bad.contains("; images[1] (\"app\"): process.args"), "{bad}");
        assert_eq!(allowed_image(&images, &[&h('2')], &ok), Err(None));
    }

    #[test]
    fn malformed_pins_are_refused_by_name() {
        let base = ImagePolicy {
            layers: vec![h('1')],
            ..ImagePolicy::default()
        };
        let cases = [
            (
                ImagePolicy {
                    args: Some(vec![]),
                    ..base.clone()
                },
                "images[0].args is empty",
            ),
            (
                ImagePolicy {
                    cwd: Some("app".into()),
                    ..base.clone()
                },
                "images[0].cwd \"app\" is not an absolute path",
            ),
            (
                ImagePolicy {
                    env: Some(vec!["PATH".into()]),
                    ..base.clone()
                },
                "images[0].env[0] \"PATH\" is not NAME=value",
            ),
            (
                ImagePolicy {
                    env: Some(vec!["=x".into()]),
                    ..base.clone()
                },
                "images[0].env[0]",
            ),
            (
                ImagePolicy {
                    volumes: Some(vec!["data".into()]),
                    ..base.clone()
                },
                "images[0].volumes[0] \"data\"",
            ),
            (
                ImagePolicy {
                    volumes: Some(vec!["/a/../etc".into()]),
                    ..base.clone()
                },
                "without `..`",
            ),
        ];
        for (img, want) in cases {
            let e = check_images(&[img]).unwrap_err();
            assert!(e.contains(want), "{e} should contain {want}");
        }
    }

    #[test]
    fn the_fragment_reads_back_as_the_policy() {
        let images = vec![
            ImagePolicy {
                name: "registry.example/app:1".into(),
                layers: vec![h('1'), h('f')],
                ..ImagePolicy::default()
            },
            ImagePolicy {
                name: "registry.example/app:1".into(),
                layers: vec![h('1'), h('f')],
                args: Some(vec!["/app".into(), "a b".into()]),
                cwd: Some("/".into()),
                env: Some(vec!["PATH=/bin".into(), "HOSTNAME=*".into()]),
                volumes: Some(vec!["/etc/hosts".into()]),
            },
        ];
        let text = policy_fragment(&images);
        assert!(text.contains("[[images]]"), "{text}");
        let with_rest = format!("exec = false\n{text}");
        assert_eq!(images_of_policy(&with_rest).unwrap(), images);
        assert!(images_of_policy("exec = true").unwrap().is_empty());
        let e = images_of_policy("[[images]]\nlayers = [\"00\"]").unwrap_err();
        assert!(e.contains("images[0].layers[0]"), "{e}");
        let e = images_of_policy("[[images]]\nlayers = []\nhash = 1").unwrap_err();
        assert!(e.contains("unknown field `hash`"), "{e}");
    }
}
