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
        Ok(())
    }
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
            },
            ImagePolicy {
                name: "b".into(),
                layers: vec![h('3')],
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
    fn the_fragment_reads_back_as_the_policy() {
        let images = vec![ImagePolicy {
            name: "registry.example/app:1".into(),
            layers: vec![h('1'), h('f')],
        }];
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
