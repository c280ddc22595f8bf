//! The names the coordinator's certificate is valid for: what clients dial.

use std::net::IpAddr;

/// `bind` itself or, when it is the wildcard, every address of this
/// machine's interfaces and its host name; always the loopback names; then
/// `extra` (`--tls-name`, e.g. a DNS name or a NAT address).
pub fn server_names(bind: IpAddr, extra: &[String]) -> Vec<String> {
    let mut names: Vec<String> = vec!["localhost".into(), "127.0.0.1".into(), "::1".into()];
    if bind.is_unspecified() {
        names.extend(interface_addresses().iter().map(IpAddr::to_string));
        names.extend(host_name());
    } else {
        names.push(bind.to_string());
    }
    names.extend(extra.iter().cloned());
    let mut seen = std::collections::BTreeSet::new();
    names.retain(|n| !n.is_empty() && seen.insert(n.clone()));
    names
}

fn host_name() -> Option<String> {
    let name = std::fs::read_to_string("/proc/sys/kernel/hostname").ok()?;
    let name = name.trim();
    (!name.is_empty()).then(|| name.to_owned())
}

/// IPv4 and IPv6 addresses of this machine's interfaces.
fn interface_addresses() -> Vec<IpAddr> {
    let mut list: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills `list` with a linked list we free below.
    if unsafe { libc::getifaddrs(&mut list) } != 0 {
        return Vec::new();
    }
    let mut found = Vec::new();
    let mut cursor = list;
    while !cursor.is_null() {
        // SAFETY: `cursor` is a node of the list getifaddrs returned.
        let entry = unsafe { &*cursor };
        if !entry.ifa_addr.is_null() {
            // SAFETY: ifa_addr points to a sockaddr of the family it names.
            match i32::from(unsafe { (*entry.ifa_addr).sa_family }) {
                libc::AF_INET => {
                    let sin = unsafe { &*(entry.ifa_addr as *const libc::sockaddr_in) };
                    found.push(IpAddr::from(u32::from_be(sin.sin_addr.s_addr).to_be_bytes()));
                }
                libc::AF_INET6 => {
                    let sin6 = unsafe { &*(entry.ifa_addr as *const libc::sockaddr_in6) };
                    found.push(IpAddr::from(sin6.sin6_addr.s6_addr));
                }
                _ => {}
            }
        }
        cursor = entry.ifa_next;
    }
    // SAFETY: the list came from getifaddrs and is freed once.
    unsafe { libc::freeifaddrs(list) };
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_wildcard_bind_names_every_interface_a_specific_one_itself() {
        let all = server_names("0.0.0.0".parse().unwrap(), &["coord.example".into()]);
        assert!(all.contains(&"127.0.0.1".to_owned()) && all.contains(&"coord.example".to_owned()), "{all:?}");
        let one = server_names("10.1.2.3".parse().unwrap(), &[]);
        assert_eq!(one, ["localhost", "127.0.0.1", "::1", "10.1.2.3"]);
    }
}
