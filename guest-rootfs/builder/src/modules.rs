//! Kernel module resolution from `modules.dep`.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};

/// Errors of module resolution.
#[derive(Debug, thiserror::Error)]
pub enum ModulesError {
    /// `modules.dep` could not be read.
    #[error("cannot read {path}; is the kernel tree unpacked (make deps)?")]
    ReadDep {
        /// Path of modules.dep.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// A requested module is not in the kernel.
    #[error("kernel module {0:?} not found in modules.dep; check the module name (built-in modules need not be listed)")]
    Unknown(String),
}

/// Module name as the kernel normalises it (`-` and `_` are the same).
fn normalise(name: &str) -> String {
    name.replace('-', "_")
}

fn module_name(rel: &str) -> String {
    let file = rel.rsplit('/').next().unwrap_or(rel);
    let stem = file.split(".ko").next().unwrap_or(file);
    normalise(stem)
}

/// The parsed `modules.dep` (and `modules.builtin`) of one kernel release.
#[derive(Debug, Clone)]
pub struct ModuleDb {
    /// name → (relative path, dependency paths)
    by_name: BTreeMap<String, (String, Vec<String>)>,
    /// Names of the modules built into the kernel image.
    builtin: HashSet<String>,
}

impl ModuleDb {
    /// Reads `<modules_dir>/modules.dep` and, where the kernel has one,
    /// `modules.builtin`.
    pub fn load(modules_dir: &Path) -> Result<Self, ModulesError> {
        let path = modules_dir.join("modules.dep");
        let text = std::fs::read_to_string(&path)
            .map_err(|source| ModulesError::ReadDep { path, source })?;
        let builtin_path = modules_dir.join("modules.builtin");
        let builtin = match std::fs::read_to_string(&builtin_path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(source) => {
                return Err(ModulesError::ReadDep {
                    path: builtin_path,
                    source,
                })
            }
        };
        Ok(Self::parse(&text).with_builtin(&builtin))
    }

    /// Adds the text of a `modules.builtin`: modules named there are part
    /// of the kernel image, so a request for one needs no file.
    pub fn with_builtin(mut self, text: &str) -> Self {
        self.builtin.extend(
            text.lines()
                .filter(|l| !l.trim().is_empty())
                .map(module_name),
        );
        self
    }

    /// Whether `name` is built into the kernel image.
    pub fn is_builtin(&self, name: &str) -> bool {
        self.builtin.contains(&normalise(name))
    }

    /// Parses the text of a `modules.dep`.
    pub fn parse(text: &str) -> Self {
        let mut by_name = BTreeMap::new();
        for line in text.lines() {
            let Some((module, deps)) = line.split_once(':') else {
                continue;
            };
            let module = module.trim().to_string();
            let deps = deps.split_whitespace().map(str::to_string).collect();
            by_name.insert(module_name(&module), (module, deps));
        }
        Self {
            by_name,
            builtin: HashSet::new(),
        }
    }

    /// Relative paths of `names` and everything they depend on, in an order
    /// where each module comes after its dependencies. Built-in modules are
    /// left out: the kernel has them already.
    pub fn load_order(&self, names: &[&str]) -> Result<Vec<String>, ModulesError> {
        let mut out = Vec::new();
        let mut seen = HashSet::new();
        for name in names {
            self.visit(&normalise(name), &mut seen, &mut out)?;
        }
        Ok(out)
    }

    fn visit(
        &self,
        name: &str,
        seen: &mut HashSet<String>,
        out: &mut Vec<String>,
    ) -> Result<(), ModulesError> {
        if !seen.insert(name.to_string()) || self.builtin.contains(name) {
            return Ok(());
        }
        let (path, deps) = self
            .by_name
            .get(name)
            .ok_or_else(|| ModulesError::Unknown(name.to_string()))?;
        for dep in deps {
            self.visit(&module_name(dep), seen, out)?;
        }
        out.push(path.clone());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEP: &str = "\
kernel/net/vmw_vsock/vsock.ko.xz:
kernel/net/vmw_vsock/vmw_vsock_virtio_transport_common.ko.xz: kernel/net/vmw_vsock/vsock.ko.xz
kernel/net/vmw_vsock/vmw_vsock_virtio_transport.ko.xz: kernel/net/vmw_vsock/vmw_vsock_virtio_transport_common.ko.xz kernel/net/vmw_vsock/vsock.ko.xz
kernel/drivers/virt/coco/sev-guest/sev-guest.ko.xz: kernel/drivers/virt/coco/tsm.ko.xz
kernel/drivers/virt/coco/tsm.ko.xz:
";

    #[test]
    fn dependencies_come_first() {
        let db = ModuleDb::parse(DEP);
        let order = db.load_order(&["vmw_vsock_virtio_transport"]).unwrap();
        assert_eq!(
            order,
            vec![
                "kernel/net/vmw_vsock/vsock.ko.xz",
                "kernel/net/vmw_vsock/vmw_vsock_virtio_transport_common.ko.xz",
                "kernel/net/vmw_vsock/vmw_vsock_virtio_transport.ko.xz",
            ]
        );
    }

    #[test]
    fn dashes_and_underscores_are_the_same_name() {
        let db = ModuleDb::parse(DEP);
        let order = db.load_order(&["sev_guest", "tsm"]).unwrap();
        assert_eq!(order.len(), 2);
        assert!(order[0].ends_with("tsm.ko.xz"));
    }

    #[test]
    fn built_in_modules_need_no_file() {
        let db = ModuleDb::parse(DEP).with_builtin(
            "kernel/net/vmw_vsock/vsock.ko\nkernel/drivers/virt/coco/tsm.ko\nkernel/drivers/virt/coco/sev-guest/sev-guest.ko\n",
        );
        assert!(db.is_builtin("sev-guest") && !db.is_builtin("vmw_vsock_virtio_transport"));
        // A module whose dependency is built in loads alone.
        let order = db.load_order(&["vmw_vsock_virtio_transport"]).unwrap();
        assert_eq!(
            order,
            vec![
                "kernel/net/vmw_vsock/vmw_vsock_virtio_transport_common.ko.xz",
                "kernel/net/vmw_vsock/vmw_vsock_virtio_transport.ko.xz",
            ]
        );
        // Built-in modules are not in modules.dep at all, and need nothing.
        let slim = ModuleDb::parse("").with_builtin("kernel/drivers/virt/coco/tsm.ko\n");
        assert!(slim.load_order(&["tsm"]).unwrap().is_empty());
        assert!(slim.load_order(&["sev_guest"]).is_err());
    }

    #[test]
    fn unknown_module_is_named() {
        let e = ModuleDb::parse(DEP)
            .load_order(&["nope"])
            .unwrap_err()
            .to_string();
        assert!(e.contains("\"nope\""), "{e}");
    }
}
