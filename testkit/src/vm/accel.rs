//! KVM or TCG, and the cached verdict on KVM.
//!
//! `/dev/kvm` may exist and still not run a stock kernel: under a nested
//! hypervisor QEMU aborts with `-cpu host` (`failed to set MSR 0x10a`) or
//! the guest crawls. So the first run on a machine tries KVM with a boot
//! watchdog (the guest must print its init marker in time), falls back to
//! TCG if it does not, and records the verdict in the cache, keyed by the
//! host kernel and the QEMU version: later runs go straight to the
//! accelerator that works, and a kernel or QEMU upgrade probes again.
//! `CSTOR_VM_ACCEL=kvm|tcg|auto` overrides the choice.

use std::fmt;

/// How QEMU runs the guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accel {
    /// Hardware virtualization (`-accel kvm -cpu host`).
    Kvm,
    /// QEMU's emulator (`-accel tcg -cpu max`).
    Tcg,
}

impl Accel {
    /// QEMU's name for it.
    pub fn name(self) -> &'static str {
        match self {
            Accel::Kvm => "kvm",
            Accel::Tcg => "tcg",
        }
    }

    /// The `-cpu` model.
    pub fn cpu(self) -> &'static str {
        match self {
            Accel::Kvm => "host",
            Accel::Tcg => "max",
        }
    }

    fn parse(s: &str) -> Option<Accel> {
        match s.trim() {
            "kvm" => Some(Accel::Kvm),
            "tcg" => Some(Accel::Tcg),
            _ => None,
        }
    }
}

impl fmt::Display for Accel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// What the caller asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AccelChoice {
    /// KVM if it works here (probed once, then cached), else TCG.
    #[default]
    Auto,
    /// Only KVM (no watchdog, no fallback).
    Kvm,
    /// Only TCG.
    Tcg,
}

impl AccelChoice {
    /// Parses `auto`, `kvm` or `tcg`.
    pub fn parse(s: &str) -> Option<AccelChoice> {
        match s.trim() {
            "auto" | "" => Some(AccelChoice::Auto),
            "kvm" => Some(AccelChoice::Kvm),
            "tcg" => Some(AccelChoice::Tcg),
            _ => None,
        }
    }
}

/// The key a cached verdict holds for: the host kernel and QEMU's version.
pub fn verdict_key(kernel_release: &str, qemu_version: &str) -> String {
    let one_line = |s: &str| s.split_whitespace().collect::<Vec<_>>().join(" ");
    format!(
        "kernel {} | {}",
        one_line(kernel_release),
        one_line(qemu_version)
    )
}

/// The cache file's text: key, accelerator, reason, a line each.
pub fn format_verdict(key: &str, accel: Accel, reason: &str) -> String {
    format!("{key}\n{accel}\n{}\n", reason.replace('\n', " "))
}

/// The cached accelerator and the reason given, if the file holds a
/// verdict for `key` (a verdict for another key is stale).
pub fn parse_verdict(text: &str, key: &str) -> Option<(Accel, String)> {
    let mut lines = text.lines();
    if lines.next()? != key {
        return None;
    }
    let accel = Accel::parse(lines.next()?)?;
    Some((accel, lines.next().unwrap_or("").to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_verdict_holds_for_its_key_only() {
        let key = verdict_key("6.18.44-fc", "QEMU emulator version 10.0.2\n(Debian)");
        assert_eq!(
            key,
            "kernel 6.18.44-fc | QEMU emulator version 10.0.2 (Debian)"
        );
        let text = format_verdict(&key, Accel::Tcg, "qemu: failed to set MSR 0x10a\nabort");
        assert_eq!(
            parse_verdict(&text, &key),
            Some((Accel::Tcg, "qemu: failed to set MSR 0x10a abort".into()))
        );
        let other = verdict_key("6.18.45-fc", "QEMU emulator version 10.0.2 (Debian)");
        assert_eq!(parse_verdict(&text, &other), None);
        let good = format_verdict(&key, Accel::Kvm, "");
        assert_eq!(
            parse_verdict(&good, &key),
            Some((Accel::Kvm, String::new()))
        );
        assert_eq!(parse_verdict("", &key), None);
        assert_eq!(parse_verdict(&format!("{key}\nvirtualbox\n"), &key), None);
    }

    #[test]
    fn choices_parse() {
        assert_eq!(AccelChoice::parse("kvm"), Some(AccelChoice::Kvm));
        assert_eq!(AccelChoice::parse(" tcg\n"), Some(AccelChoice::Tcg));
        assert_eq!(AccelChoice::parse(""), Some(AccelChoice::Auto));
        assert_eq!(AccelChoice::parse("xen"), None);
        assert_eq!(Accel::Kvm.cpu(), "host");
        assert_eq!(Accel::Tcg.to_string(), "tcg");
    }
}
