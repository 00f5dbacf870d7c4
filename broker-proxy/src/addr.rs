//! Hosts and addresses: IP literals in every spelling, and which addresses are never reached.
//!
//! A host is normalised before any check: lower case, no trailing dot, and an IP literal in
//! any spelling a resolver or URL parser accepts — dotted decimal, a single decimal number
//! (`2852039166`), hex (`0xa9fea9fe`, `0xa9.0xfe.0xa9.0xfe`), octal (`0251.0376.0251.0376`),
//! short forms (`169.254.43518`, `127.1`), bracketed IPv6 — becomes its canonical text. An
//! IPv4 address embedded in IPv6 (IPv4-mapped `::ffff:a.b.c.d`, IPv4-compatible `::a.b.c.d`,
//! NAT64 `64:ff9b::/96`, 6to4 `2002::/16`) is checked as the IPv4 address too.
//!
//! Always blocked: cloud metadata endpoints (addresses and names), link-local, unspecified,
//! multicast, broadcast and reserved ranges. Blocked unless `allow_private`: loopback and
//! private ranges (RFC 1918, CGNAT `100.64.0.0/10`, unique-local `fc00::/7`).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Cloud metadata endpoints: never reachable through the proxy.
pub const METADATA_ADDRESSES: &[IpAddr] = &[
    IpAddr::V4(Ipv4Addr::new(169, 254, 169, 254)),
    IpAddr::V4(Ipv4Addr::new(169, 254, 170, 2)),
    IpAddr::V4(Ipv4Addr::new(100, 100, 100, 200)),
    IpAddr::V6(Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254)),
];

/// Metadata host names: never reachable, whatever they resolve to.
pub const METADATA_NAMES: &[&str] = &[
    "metadata.google.internal",
    "metadata.goog",
    "metadata",
    "instance-data",
    "instance-data.ec2.internal",
];

/// Why an address is not reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Blocked {
    /// A cloud metadata endpoint (always).
    Metadata,
    /// Link-local, unspecified, multicast, broadcast or reserved (always).
    Special,
    /// Loopback (unless `allow_private`).
    Loopback,
    /// A private range (unless `allow_private`).
    Private,
}

impl Blocked {
    /// Whether `allow_private` lifts it.
    pub fn private_class(self) -> bool {
        matches!(self, Blocked::Loopback | Blocked::Private)
    }

    /// Words for an audit record or an error.
    pub fn describe(self) -> &'static str {
        match self {
            Blocked::Metadata => "a cloud metadata endpoint",
            Blocked::Special => "a link-local, unspecified, multicast or reserved address",
            Blocked::Loopback => "a loopback address (egress.proxy.allow_private is off)",
            Blocked::Private => "a private address (egress.proxy.allow_private is off)",
        }
    }
}

/// `host` normalised (see the [module docs](self)): an IP literal's canonical text (IPv6
/// without brackets; IPv4-mapped IPv6 as IPv4), or a lower-case name without trailing dot.
/// `None` when it is neither, or when it looks numeric but is not a valid address (as URL
/// parsers refuse `1.2.3.999`).
pub fn normalise_host(host: &str) -> Option<String> {
    match parse_literal(host) {
        Literal::Ip(ip) => Some(canonical(ip).to_string()),
        Literal::Invalid => None,
        Literal::Name => normalise_name(host),
    }
}

/// A lower-case host name without trailing dot; `None` when `name` has characters no host
/// name has.
pub fn normalise_name(name: &str) -> Option<String> {
    let name = name.strip_suffix('.').unwrap_or(name).to_ascii_lowercase();
    let ok = !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        });
    ok.then_some(name)
}

/// The IP address `host` spells, in any spelling (see the [module docs](self)).
pub fn ip_literal(host: &str) -> Option<IpAddr> {
    match parse_literal(host) {
        Literal::Ip(ip) => Some(canonical(ip)),
        _ => None,
    }
}

enum Literal {
    Ip(IpAddr),
    Name,
    /// Looks numeric but is no address.
    Invalid,
}

fn parse_literal(host: &str) -> Literal {
    let host = host.strip_suffix('.').unwrap_or(host);
    if let Some(inner) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        return match inner.parse::<Ipv6Addr>() {
            Ok(v6) => Literal::Ip(IpAddr::V6(v6)),
            Err(_) => Literal::Invalid,
        };
    }
    if host.contains(':') {
        return match host.parse::<Ipv6Addr>() {
            Ok(v6) => Literal::Ip(IpAddr::V6(v6)),
            Err(_) => Literal::Invalid,
        };
    }
    let last = host.rsplit('.').next().unwrap_or(host);
    if !looks_numeric(last) {
        return Literal::Name;
    }
    match parse_ipv4(host) {
        Some(v4) => Literal::Ip(IpAddr::V4(v4)),
        None => Literal::Invalid,
    }
}

/// Whether a label is a number in a spelling `inet_aton` or a URL parser reads.
fn looks_numeric(label: &str) -> bool {
    let lower = label.to_ascii_lowercase();
    if let Some(hex) = lower.strip_prefix("0x") {
        return hex.bytes().all(|b| b.is_ascii_hexdigit());
    }
    !lower.is_empty() && lower.bytes().all(|b| b.is_ascii_digit())
}

/// `inet_aton`: one to four parts, each decimal, `0x` hex or `0`-prefixed octal; the last part
/// fills the remaining bytes.
fn parse_ipv4(host: &str) -> Option<Ipv4Addr> {
    let parts: Vec<&str> = host.split('.').collect();
    if parts.is_empty() || parts.len() > 4 {
        return None;
    }
    let mut numbers = Vec::with_capacity(4);
    for p in &parts {
        numbers.push(parse_part(p)?);
    }
    let (last, head) = numbers.split_last()?;
    let mut value: u64 = 0;
    for n in head {
        if *n > 255 {
            return None;
        }
        value = (value << 8) | n;
    }
    let room = 8 * (4 - head.len() as u32);
    if *last >= 1u64 << room {
        return None;
    }
    value = (value << room) | last;
    u32::try_from(value).ok().map(Ipv4Addr::from)
}

fn parse_part(p: &str) -> Option<u64> {
    let lower = p.to_ascii_lowercase();
    if let Some(hex) = lower.strip_prefix("0x") {
        if hex.is_empty() {
            return Some(0);
        }
        return u64::from_str_radix(hex, 16)
            .ok()
            .filter(|n| *n <= u32::MAX as u64);
    }
    if lower.len() > 1 && lower.starts_with('0') {
        return u64::from_str_radix(&lower[1..], 8)
            .ok()
            .filter(|n| *n <= u32::MAX as u64);
    }
    if lower.is_empty() || !lower.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    lower.parse::<u64>().ok().filter(|n| *n <= u32::MAX as u64)
}

/// IPv4-mapped IPv6 as IPv4; everything else as it is.
pub fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(v6),
        },
        v4 => v4,
    }
}

/// The IPv4 address embedded in an IPv6 one (mapped, compatible, NAT64, 6to4).
fn embedded_v4(v6: Ipv6Addr) -> Option<Ipv4Addr> {
    if let Some(v4) = v6.to_ipv4_mapped() {
        return Some(v4);
    }
    let s = v6.segments();
    let tail = Ipv4Addr::new((s[6] >> 8) as u8, s[6] as u8, (s[7] >> 8) as u8, s[7] as u8);
    if s[..6] == [0; 6] && !(s[6] == 0 && s[7] <= 1) {
        return Some(tail); // IPv4-compatible (deprecated)
    }
    if s[0] == 0x64 && s[1] == 0xff9b && s[2..6] == [0; 4] {
        return Some(tail); // NAT64 well-known prefix
    }
    if s[0] == 0x2002 {
        return Some(Ipv4Addr::new(
            (s[1] >> 8) as u8,
            s[1] as u8,
            (s[2] >> 8) as u8,
            s[2] as u8,
        )); // 6to4
    }
    None
}

/// Why `ip` is never reached, or reached only with `allow_private`; `None` for a public
/// address.
pub fn classify(ip: IpAddr) -> Option<Blocked> {
    let ip = canonical(ip);
    if METADATA_ADDRESSES.contains(&ip) {
        return Some(Blocked::Metadata);
    }
    match ip {
        IpAddr::V4(v4) => classify_v4(v4),
        IpAddr::V6(v6) => {
            if let Some(v4) = embedded_v4(v6) {
                if METADATA_ADDRESSES.contains(&IpAddr::V4(v4)) {
                    return Some(Blocked::Metadata);
                }
                if let Some(b) = classify_v4(v4) {
                    return Some(b);
                }
            }
            classify_v6(v6)
        }
    }
}

fn classify_v4(v4: Ipv4Addr) -> Option<Blocked> {
    let o = v4.octets();
    if v4.is_loopback() {
        return Some(Blocked::Loopback);
    }
    if v4.is_link_local()
        || v4.is_unspecified()
        || o[0] == 0
        || v4.is_multicast()
        || v4.is_broadcast()
        || o[0] >= 240
    {
        return Some(Blocked::Special);
    }
    if v4.is_private() || (o[0] == 100 && (o[1] & 0xc0) == 64) || (o[0] == 198 && o[1] & 0xfe == 18)
    {
        return Some(Blocked::Private);
    }
    None
}

fn classify_v6(v6: Ipv6Addr) -> Option<Blocked> {
    let s = v6.segments();
    if v6.is_loopback() {
        return Some(Blocked::Loopback);
    }
    if v6.is_unspecified() || v6.is_multicast() || (s[0] & 0xffc0) == 0xfe80 {
        return Some(Blocked::Special);
    }
    if (s[0] & 0xfe00) == 0xfc00 || (s[0] & 0xffc0) == 0xfec0 {
        return Some(Blocked::Private);
    }
    None
}

/// Whether `name` (normalised) is a metadata host name.
pub fn is_metadata_name(name: &str) -> bool {
    METADATA_NAMES.contains(&name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spellings_of_the_metadata_address() {
        for s in [
            "169.254.169.254",
            "2852039166",
            "0xa9fea9fe",
            "0xA9.0xFE.0xA9.0xFE",
            "0251.0376.0251.0376",
            "169.254.43518",
            "169.16689662",
            "[::ffff:169.254.169.254]",
            "::ffff:a9fe:a9fe",
            "[::169.254.169.254]",
            "[64:ff9b::a9fe:a9fe]",
            "[2002:a9fe:a9fe::1]",
            "169.254.169.254.",
        ] {
            let ip = ip_literal(s).unwrap_or_else(|| panic!("{s} not read as an address"));
            assert_eq!(classify(ip), Some(Blocked::Metadata), "{s}");
        }
        assert_eq!(
            classify(ip_literal("[fd00:ec2::254]").unwrap()),
            Some(Blocked::Metadata)
        );
        assert_eq!(normalise_host("0x7f.1").as_deref(), Some("127.0.0.1"));
        assert_eq!(
            normalise_host("[::ffff:7f00:1]").as_deref(),
            Some("127.0.0.1")
        );
        assert_eq!(normalise_host("1.2.3.999"), None);
        assert_eq!(
            normalise_host("Example.COM.").as_deref(),
            Some("example.com")
        );
        assert_eq!(normalise_host("1e100.net").as_deref(), Some("1e100.net"));
    }

    #[test]
    fn ranges() {
        let c = |s: &str| classify(ip_literal(s).unwrap());
        assert_eq!(c("127.0.0.1"), Some(Blocked::Loopback));
        assert_eq!(c("017700000001"), Some(Blocked::Loopback));
        assert_eq!(c("[::1]"), Some(Blocked::Loopback));
        assert_eq!(c("10.1.2.3"), Some(Blocked::Private));
        assert_eq!(c("172.16.0.1"), Some(Blocked::Private));
        assert_eq!(c("192.168.1.1"), Some(Blocked::Private));
        assert_eq!(c("100.64.0.1"), Some(Blocked::Private));
        assert_eq!(c("[fd12::1]"), Some(Blocked::Private));
        assert_eq!(c("[fe80::1]"), Some(Blocked::Special));
        assert_eq!(c("0.0.0.0"), Some(Blocked::Special));
        assert_eq!(c("0"), Some(Blocked::Special));
        assert_eq!(c("169.254.1.1"), Some(Blocked::Special));
        assert_eq!(c("8.8.8.8"), None);
        assert_eq!(c("[2606:4700::1111]"), None);
    }
}
