//! Kernel modules the guest loads, in load order, from `modules.dep`.
//!
//! `depmod` writes one line per module, `path: dependency-path…`, paths
//! relative to `/lib/modules/RELEASE`; `modules.builtin` lists the modules
//! built into the kernel (nothing to load). A module's name is its file name
//! without `.ko[.xz|.zst|.gz]`, with `-` read as `_` (as modprobe does).
//! [`ModuleDeps::load_order`] walks the dependencies depth first, so every
//! module comes after all it needs, and each once.

use std::collections::{HashMap, HashSet};

/// `modules.dep` and `modules.builtin` of one kernel, parsed.
#[derive(Debug, Default)]
pub struct ModuleDeps {
    /// name -> (path, dependency paths)
    modules: HashMap<String, (String, Vec<String>)>,
    builtin: HashSet<String>,
}

/// The module name of a path in `modules.dep` (`kernel/fs/ext4/ext4.ko` ->
/// `ext4`, `…/crc32c-intel.ko.xz` -> `crc32c_intel`).
pub fn module_name(path: &str) -> String {
    let file = path.rsplit('/').next().unwrap_or(path);
    let stem = match file.find(".ko") {
        Some(i) => &file[..i],
        None => file,
    };
    stem.replace('-', "_")
}

impl ModuleDeps {
    /// Parses the texts of `modules.dep` and `modules.builtin`.
    pub fn parse(dep: &str, builtin: &str) -> ModuleDeps {
        let mut modules = HashMap::new();
        for line in dep.lines() {
            let Some((path, deps)) = line.split_once(':') else {
                continue;
            };
            let path = path.trim();
            if path.is_empty() {
                continue;
            }
            let deps = deps.split_whitespace().map(str::to_string).collect();
            modules.insert(module_name(path), (path.to_string(), deps));
        }
        let builtin = builtin
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(module_name)
            .collect();
        ModuleDeps { modules, builtin }
    }

    /// Whether `name` is built into the kernel.
    pub fn is_builtin(&self, name: &str) -> bool {
        self.builtin.contains(&name.replace('-', "_"))
    }

    /// The paths of the modules to load for `wanted`, dependencies first,
    /// each once; built-in modules are left out. A wanted module that is
    /// neither a module nor built in is an error naming it.
    pub fn load_order(&self, wanted: &[&str]) -> Result<Vec<String>, String> {
        let mut order = Vec::new();
        let mut done = HashSet::new();
        for name in wanted {
            let name = name.replace('-', "_");
            if self.is_builtin(&name) {
                continue;
            }
            let Some((path, _)) = self.modules.get(&name) else {
                return Err(name);
            };
            self.visit(path, &mut done, &mut order);
        }
        Ok(order)
    }

    fn visit(&self, path: &str, done: &mut HashSet<String>, order: &mut Vec<String>) {
        if !done.insert(path.to_string()) {
            return; // loaded already, or being visited (a cycle: depmod rejects those)
        }
        if let Some((_, deps)) = self.modules.get(&module_name(path)) {
            for dep in deps {
                self.visit(dep, done, order);
            }
        }
        order.push(path.to_string());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEP: &str = "\
kernel/drivers/net/virtio_net.ko: kernel/drivers/net/net_failover.ko kernel/net/core/failover.ko
kernel/drivers/net/net_failover.ko: kernel/net/core/failover.ko
kernel/net/core/failover.ko:
kernel/drivers/scsi/iscsi_tcp.ko: kernel/drivers/scsi/libiscsi_tcp.ko kernel/drivers/scsi/libiscsi.ko kernel/drivers/scsi/scsi_transport_iscsi.ko
kernel/drivers/scsi/libiscsi_tcp.ko: kernel/drivers/scsi/libiscsi.ko kernel/drivers/scsi/scsi_transport_iscsi.ko
kernel/drivers/scsi/libiscsi.ko: kernel/drivers/scsi/scsi_transport_iscsi.ko
kernel/drivers/scsi/scsi_transport_iscsi.ko:
kernel/fs/ext4/ext4.ko: kernel/fs/mbcache.ko kernel/fs/jbd2/jbd2.ko kernel/lib/crc16.ko
kernel/fs/mbcache.ko:
kernel/fs/jbd2/jbd2.ko:
kernel/lib/crc16.ko:
kernel/arch/x86/crypto/crc32c-intel.ko.xz:
";
    const BUILTIN: &str = "kernel/drivers/virtio/virtio_pci.ko\nkernel/drivers/scsi/sd_mod.ko\n";

    fn pos(order: &[String], name: &str) -> usize {
        order
            .iter()
            .position(|p| module_name(p) == name)
            .unwrap_or_else(|| panic!("{name} not in {order:?}"))
    }

    #[test]
    fn names_drop_the_directory_the_suffix_and_dashes() {
        assert_eq!(module_name("kernel/fs/ext4/ext4.ko"), "ext4");
        assert_eq!(
            module_name("kernel/arch/x86/crypto/crc32c-intel.ko.xz"),
            "crc32c_intel"
        );
        assert_eq!(module_name("sd_mod"), "sd_mod");
    }

    #[test]
    fn dependencies_come_first_and_each_module_once() {
        let deps = ModuleDeps::parse(DEP, BUILTIN);
        let order = deps
            .load_order(&[
                "virtio_pci",
                "virtio_net",
                "iscsi_tcp",
                "sd_mod",
                "ext4",
                "libiscsi",
            ])
            .unwrap();
        assert_eq!(order.len(), 11, "{order:?}");
        let unique: HashSet<&String> = order.iter().collect();
        assert_eq!(unique.len(), order.len());
        assert!(pos(&order, "failover") < pos(&order, "net_failover"));
        assert!(pos(&order, "net_failover") < pos(&order, "virtio_net"));
        assert!(pos(&order, "scsi_transport_iscsi") < pos(&order, "libiscsi"));
        assert!(pos(&order, "libiscsi") < pos(&order, "libiscsi_tcp"));
        assert!(pos(&order, "libiscsi_tcp") < pos(&order, "iscsi_tcp"));
        assert!(pos(&order, "jbd2") < pos(&order, "ext4"));
        assert!(!order
            .iter()
            .any(|p| p.contains("virtio_pci") || p.contains("sd_mod")));
    }

    #[test]
    fn dashes_match_underscores_and_unknown_modules_are_named() {
        let deps = ModuleDeps::parse(DEP, BUILTIN);
        assert_eq!(
            deps.load_order(&["crc32c-intel"]).unwrap(),
            ["kernel/arch/x86/crypto/crc32c-intel.ko.xz"]
        );
        assert!(deps.is_builtin("sd-mod"));
        assert_eq!(deps.load_order(&["ext4", "nosuch"]).unwrap_err(), "nosuch");
    }
}
