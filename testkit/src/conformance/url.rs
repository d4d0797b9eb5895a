//! iSCSI URLs as libiscsi takes them, and the loopback check.
//!
//! `iscsi://[USER[%PASSWORD]@]HOST[:PORT]/TARGET-IQN/LUN`, HOST a name, an
//! IPv4 address or a bracketed IPv6 address.

use std::net::IpAddr;

use super::ConformanceError;

/// Accepts `url` if it is a well-formed iSCSI URL to a loopback host.
pub(super) fn check(url: &str) -> Result<(), ConformanceError> {
    let bad = || ConformanceError::BadUrl(url.to_string());
    let rest = url.strip_prefix("iscsi://").ok_or_else(bad)?;
    let mut parts = rest.splitn(3, '/');
    let authority = parts.next().ok_or_else(bad)?;
    let iqn = parts.next().ok_or_else(bad)?;
    let lun = parts.next().ok_or_else(bad)?;
    if iqn.is_empty() || lun.is_empty() || !lun.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    // Credentials never contain '@' in libiscsi's syntax: the host follows
    // the last one.
    let host_port = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let host = if let Some(bracketed) = host_port.strip_prefix('[') {
        let (host, after) = bracketed.split_once(']').ok_or_else(bad)?;
        if !(after.is_empty() || is_port(after.strip_prefix(':').unwrap_or("x"))) {
            return Err(bad());
        }
        host
    } else {
        match host_port.split_once(':') {
            Some((host, port)) if is_port(port) => host,
            Some(_) => return Err(bad()),
            None => host_port,
        }
    };
    if host.is_empty() {
        return Err(bad());
    }
    let loopback = host.eq_ignore_ascii_case("localhost")
        || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback());
    if loopback {
        Ok(())
    } else {
        Err(ConformanceError::NotLoopback(url.to_string()))
    }
}

fn is_port(s: &str) -> bool {
    s.parse::<u16>().is_ok_and(|p| p != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_urls_are_accepted() {
        for url in [
            "iscsi://127.0.0.1:13260/iqn.2016-09.com.openebs.cstor:v1/0",
            "iscsi://127.0.0.1/iqn.2016-09.com.openebs.cstor:v1/0",
            "iscsi://127.1.2.3:3260/iqn.x:y/1",
            "iscsi://[::1]:3260/iqn.x:y/0",
            "iscsi://[::1]/iqn.x:y/0",
            "iscsi://localhost:3260/iqn.x:y/0",
            "iscsi://user%secret@127.0.0.1:3260/iqn.x:y/0",
        ] {
            assert!(check(url).is_ok(), "{url}");
        }
    }

    #[test]
    fn other_hosts_are_refused_as_not_loopback() {
        for url in [
            "iscsi://10.0.0.5:3260/iqn.x:y/0",
            "iscsi://[fe80::1]:3260/iqn.x:y/0",
            "iscsi://storage.example:3260/iqn.x:y/0",
            "iscsi://127.0.0.1.example:3260/iqn.x:y/0",
            "iscsi://user%secret@10.0.0.5/iqn.x:y/0",
        ] {
            assert!(
                matches!(check(url), Err(ConformanceError::NotLoopback(_))),
                "{url}"
            );
        }
    }

    #[test]
    fn malformed_urls_are_refused() {
        for url in [
            "",
            "http://127.0.0.1/iqn.x:y/0",
            "iscsi://127.0.0.1:3260/iqn.x:y",
            "iscsi://127.0.0.1:3260//0",
            "iscsi://127.0.0.1:3260/iqn.x:y/zero",
            "iscsi://127.0.0.1:port/iqn.x:y/0",
            "iscsi://[::1/iqn.x:y/0",
            "iscsi://:3260/iqn.x:y/0",
        ] {
            assert!(
                matches!(check(url), Err(ConformanceError::BadUrl(_))),
                "{url}"
            );
        }
    }
}
