//! The runtime options containerd passes with Create:
//! `runtimeoptions.v1.Options { type_url = 1, config_path = 2 }` (the CRI
//! `options` table with `ConfigPath`, or `ctr --runtime-config-path`).

use std::path::PathBuf;

use containerd_shim_protos::protobuf::well_known_types::any::Any;
use containerd_shim_protos::protobuf::CodedInputStream;

use super::error::{Result, ShimError};

const TYPE_URLS: &[&str] = &[
    "runtimeoptions.v1.Options",
    "type.googleapis.com/runtimeoptions.v1.Options",
];

/// The config path from the options, if any.
pub fn config_path(options: Option<&Any>) -> Result<Option<PathBuf>> {
    let Some(any) = options else { return Ok(None) };
    if any.type_url.is_empty() && any.value.is_empty() {
        return Ok(None);
    }
    if !TYPE_URLS.contains(&any.type_url.as_str()) {
        return Err(ShimError::Options(format!(
            "unexpected type {:?}",
            any.type_url
        )));
    }
    let bad =
        |e: containerd_shim_protos::protobuf::Error| ShimError::Options(format!("malformed: {e}"));
    let mut input = CodedInputStream::from_bytes(&any.value);
    let mut path = None;
    while let Some(tag) = input.read_raw_tag_or_eof().map_err(bad)? {
        match (tag >> 3, tag & 7) {
            (1, 2) => {
                input.read_string().map_err(bad)?;
            }
            (2, 2) => path = Some(input.read_string().map_err(bad)?),
            (field, _) => return Err(ShimError::Options(format!("unknown field number {field}"))),
        }
    }
    Ok(path.filter(|p| !p.is_empty()).map(PathBuf::from))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn any(type_url: &str, value: Vec<u8>) -> Any {
        let mut a = Any::new();
        a.type_url = type_url.into();
        a.value = value;
        a
    }

    #[test]
    fn decodes_config_path() {
        // field 2 (config_path), length 7, "/c.toml"
        let mut v = vec![0x12, 7];
        v.extend_from_slice(b"/c.toml");
        assert_eq!(
            config_path(Some(&any("runtimeoptions.v1.Options", v))).unwrap(),
            Some(PathBuf::from("/c.toml"))
        );
        assert_eq!(config_path(None).unwrap(), None);
    }

    #[test]
    fn foreign_or_unknown_options_are_refused() {
        let e = config_path(Some(&any("containerd.runc.v1.Options", vec![])))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("unexpected type") && e.contains("ConfigPath"),
            "{e}"
        );
        let e = config_path(Some(&any("runtimeoptions.v1.Options", vec![0x18, 1])))
            .unwrap_err()
            .to_string();
        assert!(e.contains("unknown field number 3"), "{e}");
    }
}
