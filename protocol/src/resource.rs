//! Resource URIs of Confidential Containers, parsed the same way by the
//! shim (early errors) and the agent (which decides): `kbs:///<repository>/<type>/<tag>`
//! (the authority, naming the KBS, is empty: the guest's KBS comes from
//! measured initdata, never from the URI).

use std::fmt;

/// A KBS resource: three path segments.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ResourceUri {
    /// Repository (`default` in most deployments).
    pub repository: String,
    /// Resource type.
    pub kind: String,
    /// Tag.
    pub tag: String,
}

/// Why a string is not a resource URI.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{uri:?} is not a KBS resource URI: {problem} (expected kbs:///<repository>/<type>/<tag>)")]
pub struct BadUri {
    /// The string as given.
    pub uri: String,
    /// What is wrong.
    pub problem: &'static str,
}

/// A segment as the KBS accepts it: `[A-Za-z0-9_-][A-Za-z0-9_.-]*`.
fn segment_ok(s: &str) -> bool {
    let mut chars = s.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
}

impl std::str::FromStr for ResourceUri {
    type Err = BadUri;

    fn from_str(uri: &str) -> Result<Self, BadUri> {
        let bad = |problem| BadUri {
            uri: uri.to_string(),
            problem,
        };
        let rest = uri
            .strip_prefix("kbs://")
            .or_else(|| uri.strip_prefix("kbs+resource://"))
            .ok_or_else(|| bad("the scheme must be kbs://"))?;
        if rest.contains(['?', '#']) {
            return Err(bad("a query string or fragment is not allowed"));
        }
        let path = rest.strip_prefix('/').ok_or_else(|| {
            bad("the authority must be empty (kbs:///...); the KBS comes from initdata")
        })?;
        let parts: Vec<&str> = path.split('/').collect();
        let [repository, kind, tag] = parts.as_slice() else {
            return Err(bad("it needs exactly three path segments"));
        };
        if !parts.iter().all(|s| segment_ok(s)) || parts.contains(&"..") {
            return Err(bad(
                "a segment is empty, `..`, or has characters other than A-Z a-z 0-9 _ - .",
            ));
        }
        Ok(Self {
            repository: (*repository).to_string(),
            kind: (*kind).to_string(),
            tag: (*tag).to_string(),
        })
    }
}

/// Whether `id` follows containerd's identifier rule (`A-Z a-z 0-9 . _ -`,
/// starting with a letter or digit, at most 76 characters): what a
/// container or sandbox id must be before it names a path.
pub fn is_container_id(id: &str) -> bool {
    id.len() <= 76
        && id.starts_with(|c: char| c.is_ascii_alphanumeric())
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

/// Whether `name` is a DNS label (RFC 1123): 1-63 of `a-z 0-9 -`, not
/// starting or ending with `-` — what a secret's file name must be.
pub fn is_dns_label(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && !name.starts_with('-')
        && !name.ends_with('-')
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

impl ResourceUri {
    /// The KBS path of the resource.
    pub fn path(&self) -> String {
        format!(
            "/kbs/v0/resource/{}/{}/{}",
            self.repository, self.kind, self.tag
        )
    }
}

impl fmt::Display for ResourceUri {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "kbs:///{}/{}/{}", self.repository, self.kind, self.tag)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn container_ids_follow_containerds_rule() {
        for ok in ["a", "pod-1", "A.b_c-9", &"x".repeat(76)] {
            assert!(is_container_id(ok), "{ok}");
        }
        for bad in [
            "",
            "../../etc",
            "-a",
            ".a",
            "a/b",
            "a b",
            &"x".repeat(77),
            "é",
        ] {
            assert!(!is_container_id(bad), "{bad:?}");
        }
    }

    #[test]
    fn good_and_bad_uris() {
        let u: ResourceUri = "kbs:///default/key/model-1.v2".parse().unwrap();
        assert_eq!(u.path(), "/kbs/v0/resource/default/key/model-1.v2");
        assert_eq!(u.to_string(), "kbs:///default/key/model-1.v2");
        assert_eq!(
            "kbs+resource:///a/b/c"
                .parse::<ResourceUri>()
                .unwrap()
                .to_string(),
            "kbs:///a/b/c"
        );
        for (bad, needle) in [
            ("kbs://", "authority must be empty"),
            ("kbs://evil.example/a/b/c", "authority must be empty"),
            ("https:///a/b/c", "scheme"),
            ("kbs:///a/b", "exactly three"),
            ("kbs:///a/b/c/d", "exactly three"),
            ("kbs:///a/../c", "segment"),
            ("kbs:///a//c", "segment"),
            ("kbs:///a/b/c?x=1", "query string"),
            ("kbs:///a/b/.hidden", "segment"),
            ("kbs:///a/b/c d", "segment"),
        ] {
            let e = bad.parse::<ResourceUri>().unwrap_err().to_string();
            assert!(e.contains(needle), "{bad}: {e}");
        }
    }
}
