//! Pure conversions between socket addresses and the shared map types, and the plan that
//! turns the current `PROTECTED` contents into the desired ones.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use portcullis_ebpf_common::{protected_kind, Endpoint, Gateway};

/// Any IP in the map's canonical form: IPv6 words, IPv4 as `::ffff:a.b.c.d`.
pub fn endpoint(addr: SocketAddr) -> Endpoint {
    let v6 = match addr.ip() {
        IpAddr::V4(v4) => v4.to_ipv6_mapped(),
        IpAddr::V6(v6) => v6,
    };
    let octets = v6.octets();
    let word =
        |i: usize| u32::from_ne_bytes([octets[i], octets[i + 1], octets[i + 2], octets[i + 3]]);
    Endpoint::new([word(0), word(4), word(8), word(12)], addr.port())
}

/// The socket address an entry stands for; mapped forms come back as IPv4.
pub fn socket_addr(endpoint: &Endpoint) -> SocketAddr {
    let mut octets = [0u8; 16];
    for (chunk, word) in octets.chunks_exact_mut(4).zip(endpoint.addr) {
        chunk.copy_from_slice(&word.to_ne_bytes());
    }
    let v6 = Ipv6Addr::from(octets);
    let ip = match v6.to_ipv4_mapped() {
        Some(v4) => IpAddr::V4(v4),
        None => IpAddr::V6(v6),
    };
    SocketAddr::new(ip, endpoint.port)
}

/// `PROTECTED` as it should be: each `ip:port` redirects, and each IP is protected as a whole.
pub fn desired_protected(endpoints: &[SocketAddr]) -> HashMap<Endpoint, u8> {
    let mut entries = HashMap::new();
    for &addr in endpoints {
        let key = endpoint(addr);
        entries.insert(key, protected_kind::REDIRECT);
        entries
            .entry(key.any_port())
            .or_insert(protected_kind::ADDRESS);
    }
    entries
}

/// What to write and what to delete. Writes come first when applied, so an endpoint whose IP
/// changes is never unprotected in between.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct ProtectedPlan {
    pub upserts: Vec<(Endpoint, u8)>,
    pub removals: Vec<Endpoint>,
}

pub fn plan_protected(
    current: &HashMap<Endpoint, u8>,
    desired: &HashMap<Endpoint, u8>,
) -> ProtectedPlan {
    let mut plan = ProtectedPlan::default();
    for (key, kind) in desired {
        if current.get(key) != Some(kind) {
            plan.upserts.push((*key, *kind));
        }
    }
    for key in current.keys() {
        if !desired.contains_key(key) {
            plan.removals.push(*key);
        }
    }
    plan.upserts.sort_by_key(|(k, _)| (k.addr, k.port));
    plan.removals.sort_by_key(|k| (k.addr, k.port));
    plan
}

pub fn gateway(ipv4: SocketAddr, ipv6: Option<SocketAddr>) -> Gateway {
    Gateway {
        v4: endpoint(ipv4),
        v6: ipv6.map(endpoint).unwrap_or_default(),
    }
}

/// Loopback in either family (mapped IPv4 included), where 4-tuples are per network namespace.
pub fn is_loopback(addr: &SocketAddr) -> bool {
    match addr.ip() {
        IpAddr::V4(v4) => v4.is_loopback(),
        IpAddr::V6(v6) => {
            v6.is_loopback()
                || v6
                    .to_ipv4_mapped()
                    .is_some_and(|v4: Ipv4Addr| v4.is_loopback())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sa(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn ipv4_is_stored_mapped_and_comes_back_as_ipv4() {
        let e = endpoint(sa("203.0.113.10:443"));
        assert!(e.is_v4_mapped());
        assert_eq!(e.addr[3].to_ne_bytes(), [203, 0, 113, 10]);
        assert_eq!(e.port, 443);
        assert_eq!(socket_addr(&e), sa("203.0.113.10:443"));
        // The kernel side builds the same key from user_ip4.
        let from_kernel = Endpoint::from_v4_word(u32::from_ne_bytes([203, 0, 113, 10]), 443);
        assert_eq!(from_kernel, e);
    }

    #[test]
    fn mapped_ipv6_socket_address_is_the_same_key_as_ipv4() {
        assert_eq!(
            endpoint(sa("[::ffff:203.0.113.10]:443")),
            endpoint(sa("203.0.113.10:443"))
        );
    }

    #[test]
    fn ipv6_round_trips() {
        let e = endpoint(sa("[2001:db8::10]:6443"));
        assert!(!e.is_v4_mapped());
        assert_eq!(e.addr[0].to_ne_bytes(), [0x20, 0x01, 0x0d, 0xb8]);
        assert_eq!(socket_addr(&e), sa("[2001:db8::10]:6443"));
    }

    #[test]
    fn every_ip_gets_a_whole_address_entry() {
        let desired = desired_protected(&[sa("203.0.113.10:443"), sa("203.0.113.10:6443")]);
        assert_eq!(desired.len(), 3);
        let any = endpoint(sa("203.0.113.10:0"));
        assert_eq!(desired.get(&any), Some(&protected_kind::ADDRESS));
        assert_eq!(
            desired.get(&endpoint(sa("203.0.113.10:6443"))),
            Some(&protected_kind::REDIRECT)
        );
    }

    #[test]
    fn plan_adds_new_and_removes_stale_only() {
        let current = desired_protected(&[sa("203.0.113.10:443"), sa("203.0.113.11:443")]);
        let desired = desired_protected(&[sa("203.0.113.10:443"), sa("203.0.113.12:443")]);
        let plan = plan_protected(&current, &desired);
        let upserted: Vec<SocketAddr> = plan.upserts.iter().map(|(k, _)| socket_addr(k)).collect();
        let removed: Vec<SocketAddr> = plan.removals.iter().map(socket_addr).collect();
        assert_eq!(upserted, vec![sa("203.0.113.12:0"), sa("203.0.113.12:443")]);
        assert_eq!(removed, vec![sa("203.0.113.11:0"), sa("203.0.113.11:443")]);
        assert_eq!(plan_protected(&desired, &desired), ProtectedPlan::default());
    }

    #[test]
    fn gateway_without_ipv6_leaves_it_unset() {
        let g = gateway(sa("198.51.100.1:15443"), None);
        assert!(g.v6.is_unset());
        assert_eq!(socket_addr(&g.v4), sa("198.51.100.1:15443"));
    }

    #[test]
    fn loopback_detection_covers_mapped() {
        assert!(is_loopback(&sa("127.0.0.5:1")));
        assert!(is_loopback(&sa("[::1]:1")));
        assert!(is_loopback(&sa("[::ffff:127.0.0.1]:1")));
        assert!(!is_loopback(&sa("198.51.100.1:1")));
    }
}
