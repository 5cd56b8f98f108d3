//! Who the client is: the TCP peer, or, when that peer is one of our own proxies
//! (`--trusted-proxies`), the address the proxies say they received the request from.
//!
//! Each proxy appends the address it saw to `X-Forwarded-For` (or `Forwarded: for=`), so the list
//! is read from the right: the first address that is not itself a trusted proxy is the client.
//! Everything left of it was written by the client (or proxies we do not know) and could say
//! anything. A header from a peer that is not trusted is not read at all, and a list we cannot
//! read falls back to the peer: a client can make its own identity worse, never someone else's.
use ipnet::IpNet;
use std::net::{IpAddr, Ipv6Addr};

/// The proxies whose forwarding headers are believed, from `--trusted-proxies`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrustedProxies(Vec<IpNet>);

impl TrustedProxies {
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    fn contains(&self, ip: IpAddr) -> bool {
        self.0.iter().any(|net| net.contains(&ip))
    }
}

impl std::str::FromStr for TrustedProxies {
    type Err = String;

    /// Comma-separated CIDRs (`10.0.0.0/8`) or single addresses (`127.0.0.1`, `::1`); empty
    /// items are skipped, so an empty value trusts no one.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        s.split(',')
            .map(str::trim)
            .filter(|item| !item.is_empty())
            .map(|item| {
                item.parse::<IpNet>()
                    .or_else(|_| item.parse::<IpAddr>().map(IpNet::from))
                    .map(|net| net.trunc())
                    .map_err(|_| {
                        format!("`{item}` is not an address or CIDR (e.g. 10.0.0.0/8, 127.0.0.1)")
                    })
            })
            .collect::<Result<_, _>>()
            .map(Self)
    }
}

/// The forwarding headers of one request, as sent (every `X-Forwarded-For` line in order, and
/// every `Forwarded` line).
#[derive(Debug, Default)]
pub struct Forwarding<'a> {
    pub x_forwarded_for: Vec<&'a str>,
    pub forwarded: Vec<&'a str>,
}

/// The client's address: the peer, unless the peer is a trusted proxy that forwarded for
/// someone. `X-Forwarded-For` is read when the request has it, else `Forwarded` (what nginx,
/// HAProxy, Envoy and cloud load balancers set by default is the former).
pub fn client_addr(peer: IpAddr, headers: &Forwarding<'_>, trusted: &TrustedProxies) -> IpAddr {
    let peer = canonical(peer);
    if !trusted.contains(peer) {
        return peer;
    }
    let hops = if !headers.x_forwarded_for.is_empty() {
        parse_list(&headers.x_forwarded_for, parse_xff_item)
    } else if !headers.forwarded.is_empty() {
        parse_list(&headers.forwarded, parse_forwarded_item)
    } else {
        return peer;
    };
    let Some(hops) = hops else { return peer };
    // From the right: our proxies' own entries are skipped; the first one that is not ours is
    // the client. If every hop is ours, the left-most is the nearest thing to a client we know.
    hops.iter()
        .rev()
        .copied()
        .find(|ip| !trusted.contains(*ip))
        .or_else(|| hops.first().copied())
        .unwrap_or(peer)
}

/// Every comma-separated item of every header line, in order; `None` if any item cannot be read
/// (a damaged list says nothing reliable about which hop is which).
fn parse_list(lines: &[&str], item: fn(&str) -> Option<IpAddr>) -> Option<Vec<IpAddr>> {
    lines
        .iter()
        .flat_map(|line| line.split(','))
        .map(|i| item(i.trim()).map(canonical))
        .collect()
}

/// `203.0.113.7`, `2001:db8::1`, and the bracketed or ported forms some proxies write.
fn parse_xff_item(item: &str) -> Option<IpAddr> {
    parse_node(item)
}

/// One `Forwarded` element: `for=192.0.2.60;proto=http;by=203.0.113.43`. Only `for` is read; an
/// element without one, or with an obfuscated or `unknown` node, cannot be placed.
fn parse_forwarded_item(element: &str) -> Option<IpAddr> {
    element.split(';').find_map(|pair| {
        let (name, value) = pair.split_once('=')?;
        if !name.trim().eq_ignore_ascii_case("for") {
            return None;
        }
        let value = value.trim();
        let value = value
            .strip_prefix('"')
            .and_then(|v| v.strip_suffix('"'))
            .unwrap_or(value);
        parse_node(value)
    })
}

/// An address, `[v6]`, `[v6]:port` or `v4:port`.
fn parse_node(node: &str) -> Option<IpAddr> {
    if let Ok(ip) = node.parse::<IpAddr>() {
        return Some(ip);
    }
    if let Some(rest) = node.strip_prefix('[') {
        let (v6, after) = rest.split_once(']')?;
        if !(after.is_empty() || after.starts_with(':')) {
            return None;
        }
        return v6.parse::<Ipv6Addr>().ok().map(IpAddr::V6);
    }
    let (v4, port) = node.rsplit_once(':')?;
    port.parse::<u16>().ok()?;
    v4.parse::<std::net::Ipv4Addr>().ok().map(IpAddr::V4)
}

/// An IPv4 client reached over an IPv6 socket (`::ffff:a.b.c.d`) is that IPv4 client.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6
            .to_ipv4_mapped()
            .map(IpAddr::V4)
            .unwrap_or(IpAddr::V6(v6)),
        v4 => v4,
    }
}

/// What a client's limits are kept under: an IPv4 address, or an IPv6 /64 (one host is usually
/// given a whole /64, so counting per address would let it have 2^64 budgets).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AddrKey {
    V4(u32),
    V6Prefix(u64),
}

impl From<IpAddr> for AddrKey {
    fn from(ip: IpAddr) -> Self {
        match canonical(ip) {
            IpAddr::V4(v4) => Self::V4(v4.into()),
            IpAddr::V6(v6) => Self::V6Prefix((u128::from(v6) >> 64) as u64),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn trusted(s: &str) -> TrustedProxies {
        s.parse().unwrap()
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn the_proxy_list_takes_cidrs_and_addresses() {
        let t = trusted(" 10.0.0.0/8, 127.0.0.1 ,::1,2001:db8::/32,");
        assert!(t.contains(ip("10.1.2.3")));
        assert!(t.contains(ip("127.0.0.1")));
        assert!(!t.contains(ip("127.0.0.2")));
        assert!(t.contains(ip("::1")));
        assert!(t.contains(ip("2001:db8:1::5")));
        assert!(trusted("").is_empty());
        // Host bits are dropped: 10.1.2.3/8 means 10.0.0.0/8.
        assert!(trusted("10.1.2.3/8").contains(ip("10.200.0.1")));
        for bad in ["10.0.0.0/33", "example.com", "10.0.0", "*"] {
            let err = bad.parse::<TrustedProxies>().unwrap_err();
            assert!(err.contains(bad), "{err}");
        }
    }

    /// (peer, X-Forwarded-For lines, Forwarded lines, expected client), proxies 10.0.0.0/8 and
    /// 2001:db8:ffff::/48.
    const CASES: &[(&str, &[&str], &[&str], &str)] = &[
        // No proxy in front: the peer, whatever it sends.
        ("203.0.113.9", &[], &[], "203.0.113.9"),
        ("203.0.113.9", &["198.51.100.1"], &[], "203.0.113.9"),
        ("203.0.113.9", &[], &["for=198.51.100.1"], "203.0.113.9"),
        // One proxy.
        ("10.0.0.2", &["198.51.100.1"], &[], "198.51.100.1"),
        ("10.0.0.2", &[], &[], "10.0.0.2"),
        // A client that wrote its own entry: the right-most untrusted one wins.
        ("10.0.0.2", &["1.2.3.4, 198.51.100.1"], &[], "198.51.100.1"),
        // Two of our proxies in a chain, and HAProxy's one line per hop.
        ("10.0.0.2", &["198.51.100.1, 10.0.0.7"], &[], "198.51.100.1"),
        (
            "10.0.0.2",
            &["1.2.3.4", "198.51.100.1", "10.0.0.7"],
            &[],
            "198.51.100.1",
        ),
        // Every hop ours: the left-most.
        ("10.0.0.2", &["10.0.0.5, 10.0.0.7"], &[], "10.0.0.5"),
        // Ports and brackets, IPv6, and IPv4 written as IPv6.
        ("10.0.0.2", &["198.51.100.1:5555"], &[], "198.51.100.1"),
        ("10.0.0.2", &["[2001:db8::7]:443"], &[], "2001:db8::7"),
        (
            "10.0.0.2",
            &["2001:db8::7, 2001:db8:ffff::1"],
            &[],
            "2001:db8::7",
        ),
        (
            "::ffff:10.0.0.2",
            &["::ffff:198.51.100.1"],
            &[],
            "198.51.100.1",
        ),
        // Garbage anywhere in the list: the peer.
        ("10.0.0.2", &["not-an-ip"], &[], "10.0.0.2"),
        ("10.0.0.2", &["198.51.100.1, "], &[], "10.0.0.2"),
        ("10.0.0.2", &["198.51.100.1:99999"], &[], "10.0.0.2"),
        ("10.0.0.2", &["[2001:db8::7]x"], &[], "10.0.0.2"),
        // RFC 7239.
        (
            "10.0.0.2",
            &[],
            &["for=198.51.100.1;proto=https"],
            "198.51.100.1",
        ),
        (
            "10.0.0.2",
            &[],
            &["for=1.2.3.4, For=\"[2001:db8::7]:80\""],
            "2001:db8::7",
        ),
        (
            "10.0.0.2",
            &[],
            &["for=1.2.3.4", "for=198.51.100.1;by=10.0.0.2"],
            "198.51.100.1",
        ),
        ("10.0.0.2", &[], &["for=unknown"], "10.0.0.2"),
        ("10.0.0.2", &[], &["for=_hidden"], "10.0.0.2"),
        ("10.0.0.2", &[], &["proto=https"], "10.0.0.2"),
        // Both: X-Forwarded-For is the one read.
        (
            "10.0.0.2",
            &["198.51.100.1"],
            &["for=1.2.3.4"],
            "198.51.100.1",
        ),
    ];

    #[test]
    fn the_client_is_the_right_most_address_that_is_not_ours() {
        let proxies = trusted("10.0.0.0/8,2001:db8:ffff::/48");
        for (peer, xff, forwarded, want) in CASES {
            let headers = Forwarding {
                x_forwarded_for: xff.to_vec(),
                forwarded: forwarded.to_vec(),
            };
            assert_eq!(
                client_addr(ip(peer), &headers, &proxies),
                ip(want),
                "peer {peer}, X-Forwarded-For {xff:?}, Forwarded {forwarded:?}"
            );
        }
    }

    #[test]
    fn ipv6_clients_are_counted_per_64() {
        let a = AddrKey::from(ip("2001:db8:1:2:aaaa::1"));
        assert_eq!(a, AddrKey::from(ip("2001:db8:1:2:ffff:ffff:ffff:ffff")));
        assert_ne!(a, AddrKey::from(ip("2001:db8:1:3::1")));
        assert_eq!(
            AddrKey::from(ip("::ffff:198.51.100.1")),
            AddrKey::from(ip("198.51.100.1"))
        );
        assert_ne!(
            AddrKey::from(ip("198.51.100.1")),
            AddrKey::from(ip("198.51.100.2"))
        );
    }
}
