//! Which IP addresses a user-supplied URL may make us connect to.
//!
//! The service fetches URLs chosen by anyone, so without this check a caller could make it
//! talk to our own loopback services, the cloud metadata endpoint (169.254.169.254), or
//! hosts on the private network behind it (SSRF). Only globally routable unicast
//! addresses are allowed.
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Whether `ip` is a globally routable unicast address we are willing to connect to.
///
/// IPv6 forms that carry an IPv4 address the network will deliver to (IPv4-mapped,
/// IPv4-compatible, NAT64, 6to4, Teredo) are judged by that embedded IPv4 address, so
/// `::ffff:127.0.0.1` is refused just like `127.0.0.1`.
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_public_v4(v4),
        IpAddr::V6(v6) => is_public_v6(v6),
    }
}

fn is_public_v4(ip: Ipv4Addr) -> bool {
    let [a, b, c, _] = ip.octets();
    let refused = a == 0 // "this network", includes the unspecified 0.0.0.0
        || a == 10 // private
        || a == 127 // loopback
        || (a == 100 && (64..=127).contains(&b)) // CGNAT shared space 100.64/10
        || (a == 169 && b == 254) // link-local, includes the metadata endpoint
        || (a == 172 && (16..=31).contains(&b)) // private 172.16/12
        || (a == 192 && b == 168) // private
        || (a == 192 && b == 0 && c == 0) // IETF protocol assignments
        || (a == 192 && b == 0 && c == 2) // documentation TEST-NET-1
        || (a == 198 && (b == 18 || b == 19)) // benchmarking 198.18/15
        || (a == 198 && b == 51 && c == 100) // documentation TEST-NET-2
        || (a == 203 && b == 0 && c == 113) // documentation TEST-NET-3
        || a >= 224; // multicast 224/4, reserved 240/4, broadcast 255.255.255.255
    !refused
}

fn is_public_v6(ip: Ipv6Addr) -> bool {
    if let Some(embedded) = embedded_v4(ip) {
        return is_public_v4(embedded);
    }
    let s = ip.segments();
    // IANA only hands out global unicast from 2000::/3. Allowing just that block refuses
    // in one stroke the unspecified and loopback addresses, the discard prefix 100::/64,
    // ULA fc00::/7, link-local fe80::/10, site-local fec0::/10 and multicast ff00::/8,
    // and anything odd that a future special-purpose assignment outside it might carry.
    if s[0] & 0xe000 != 0x2000 {
        return false;
    }
    let refused = (s[0] == 0x2001 && s[1] == 0x0db8) // documentation 2001:db8::/32
        || (s[0] == 0x2001 && s[1] == 0x0002 && s[2] == 0) // benchmarking 2001:2::/48
        || (s[0] == 0x3fff && s[1] < 0x1000); // documentation 3fff::/20 (RFC 9637)
    !refused
}

/// The IPv4 address an IPv6 address actually leads to, for the transition forms a
/// resolver or a URL could use to smuggle a private IPv4 destination past the check.
fn embedded_v4(ip: Ipv6Addr) -> Option<Ipv4Addr> {
    let s = ip.segments();
    let low32 = |hi: u16, lo: u16| Ipv4Addr::from((u32::from(hi) << 16) | u32::from(lo));
    match s {
        // IPv4-compatible ::a.b.c.d (deprecated). `::` and `::1` fall in here too and are
        // refused through their embedded 0.0.0.0 / 0.0.0.1.
        [0, 0, 0, 0, 0, 0, hi, lo] => Some(low32(hi, lo)),
        // IPv4-mapped ::ffff:a.b.c.d
        [0, 0, 0, 0, 0, 0xffff, hi, lo] => Some(low32(hi, lo)),
        // NAT64 well-known prefix 64:ff9b::/96: the gateway connects to the embedded address.
        [0x64, 0xff9b, 0, 0, 0, 0, hi, lo] => Some(low32(hi, lo)),
        // Local-use NAT64 64:ff9b:1::/48 is by definition inside someone's network; judge
        // it as the always-refused 0.0.0.0.
        [0x64, 0xff9b, 1, ..] => Some(Ipv4Addr::UNSPECIFIED),
        // 6to4 2002:AABB:CCDD::/48 tunnels to AA.BB.CC.DD.
        [0x2002, hi, lo, ..] => Some(low32(hi, lo)),
        // Teredo 2001:0::/32 carries the client's IPv4 address bit-inverted in the low 32 bits.
        [0x2001, 0, .., hi, lo] => Some(low32(!hi, !lo)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(table: &[(&str, bool)]) {
        for (text, expected) in table {
            let ip: IpAddr = text
                .parse()
                .unwrap_or_else(|e| panic!("bad test address {text}: {e}"));
            assert_eq!(is_public(ip), *expected, "is_public({text})");
        }
    }

    #[test]
    fn ipv4_public_addresses_are_allowed() {
        check(&[
            ("1.1.1.1", true),
            ("8.8.8.8", true),
            ("93.184.216.34", true),
            ("9.255.255.255", true),  // just below 10/8
            ("11.0.0.0", true),       // just above 10/8
            ("100.63.255.255", true), // just below CGNAT
            ("100.128.0.0", true),    // just above CGNAT
            ("126.255.255.255", true),
            ("128.0.0.1", true),
            ("169.253.255.255", true),
            ("169.255.0.0", true),
            ("172.15.255.255", true), // just below 172.16/12
            ("172.32.0.0", true),     // just above 172.16/12
            ("192.0.1.1", true),
            ("192.0.3.1", true),
            ("192.167.255.255", true),
            ("192.169.0.0", true),
            ("198.17.255.255", true), // just below 198.18/15
            ("198.20.0.0", true),     // just above 198.18/15
            ("198.51.99.1", true),
            ("203.0.112.1", true),
            ("223.255.255.255", true), // last unicast /8 before multicast
        ]);
    }

    #[test]
    fn ipv4_special_addresses_are_refused() {
        check(&[
            ("0.0.0.0", false),
            ("0.1.2.3", false),
            ("10.0.0.1", false),
            ("10.255.255.255", false),
            ("100.64.0.1", false),
            ("100.127.255.255", false),
            ("127.0.0.1", false),
            ("127.255.255.254", false),
            ("169.254.0.1", false),
            ("169.254.169.254", false),
            ("172.16.0.1", false),
            ("172.31.255.255", false),
            ("192.0.0.1", false),
            ("192.0.0.170", false),
            ("192.0.2.1", false),
            ("192.168.0.1", false),
            ("192.168.255.255", false),
            ("198.18.0.1", false),
            ("198.19.255.255", false),
            ("198.51.100.7", false),
            ("203.0.113.9", false),
            ("224.0.0.1", false),
            ("239.255.255.250", false),
            ("240.0.0.1", false),
            ("255.255.255.255", false),
        ]);
    }

    #[test]
    fn ipv6_public_addresses_are_allowed() {
        check(&[
            ("2606:4700:4700::1111", true),
            ("2001:4860:4860::8888", true),
            ("2a00:1450:4001:82a::200e", true),
            ("2001:db9::1", true),       // just past documentation
            ("2001:3::1", true),         // just past benchmarking 2001:2::/48
            ("3ffe::1", true),           // just below 3fff::/20
            ("3fff:1000::1", true),      // just above 3fff::/20
            ("2002:0808:0808::1", true), // 6to4 embedding 8.8.8.8
            ("::ffff:8.8.8.8", true),
            ("::8.8.8.8", true),
            ("64:ff9b::808:808", true), // NAT64 of 8.8.8.8
            // Teredo whose client is 8.8.8.8 (inverted: f7f7:f7f7)
            ("2001:0:4136:e378:8000:63bf:f7f7:f7f7", true),
        ]);
    }

    #[test]
    fn ipv6_special_addresses_are_refused() {
        check(&[
            ("::", false),
            ("::1", false),
            ("100::1", false),
            ("2001:db8::1", false),
            ("2001:db8:ffff::1", false),
            ("2001:2::1", false),
            ("3fff::1", false),
            ("3fff:fff::1", false),
            ("fc00::1", false),
            ("fd12:3456:789a::1", false),
            ("fe80::1", false),
            ("febf::1", false),
            ("fec0::1", false),
            ("feff::1", false),
            ("ff02::1", false),
            ("ff0e::1", false),
            ("4000::1", false), // outside 2000::/3, not allocated
            ("1000::1", false),
        ]);
    }

    #[test]
    fn ipv6_forms_embedding_private_ipv4_are_refused() {
        check(&[
            ("::ffff:127.0.0.1", false),
            ("::ffff:10.0.0.1", false),
            ("::ffff:169.254.169.254", false),
            ("::ffff:0.0.0.0", false),
            ("::127.0.0.1", false),
            ("::192.168.1.1", false),
            ("64:ff9b::127.0.0.1", false),
            ("64:ff9b::a9fe:a9fe", false), // 169.254.169.254
            ("64:ff9b:1::808:808", false), // local-use NAT64 is never public
            ("2002:7f00:0001::1", false),  // 6to4 of 127.0.0.1
            ("2002:c0a8:0101::1", false),  // 6to4 of 192.168.1.1
            ("2002:a9fe:a9fe::", false),   // 6to4 of 169.254.169.254
            // Teredo whose client is 127.0.0.1 (inverted: 80ff:fffe)
            ("2001:0:4136:e378:8000:63bf:80ff:fffe", false),
        ]);
    }
}
