//! A `sock` argument's bytes (a `SockInfo`) as Tetragon's `KprobeSock`:
//! names for family, type, protocol and TCP state, addresses as text.

use std::net::{Ipv4Addr, Ipv6Addr};

use node_sensor_common::SockInfo;
use proto::tetragon::KprobeSock;

const AF_INET: u16 = 2;
const AF_INET6: u16 = 10;

fn family(f: u16) -> String {
    match f {
        1 => "AF_UNIX".into(),
        AF_INET => "AF_INET".into(),
        AF_INET6 => "AF_INET6".into(),
        16 => "AF_NETLINK".into(),
        17 => "AF_PACKET".into(),
        0 => String::new(),
        n => n.to_string(),
    }
}

fn kind(t: u16) -> String {
    match t {
        1 => "SOCK_STREAM".into(),
        2 => "SOCK_DGRAM".into(),
        3 => "SOCK_RAW".into(),
        4 => "SOCK_RDM".into(),
        5 => "SOCK_SEQPACKET".into(),
        6 => "SOCK_DCCP".into(),
        10 => "SOCK_PACKET".into(),
        0 => String::new(),
        n => n.to_string(),
    }
}

fn protocol(p: u16) -> String {
    match p {
        0 => "IPPROTO_IP".into(),
        1 => "IPPROTO_ICMP".into(),
        6 => "IPPROTO_TCP".into(),
        17 => "IPPROTO_UDP".into(),
        41 => "IPPROTO_IPV6".into(),
        58 => "IPPROTO_ICMPV6".into(),
        132 => "IPPROTO_SCTP".into(),
        255 => "IPPROTO_RAW".into(),
        n => n.to_string(),
    }
}

fn state(s: u8) -> String {
    const STATES: [&str; 13] = [
        "",
        "TCP_ESTABLISHED",
        "TCP_SYN_SENT",
        "TCP_SYN_RECV",
        "TCP_FIN_WAIT1",
        "TCP_FIN_WAIT2",
        "TCP_TIME_WAIT",
        "TCP_CLOSE",
        "TCP_CLOSE_WAIT",
        "TCP_LAST_ACK",
        "TCP_LISTEN",
        "TCP_CLOSING",
        "TCP_NEW_SYN_RECV",
    ];
    STATES.get(s as usize).map_or_else(|| s.to_string(), |n| (*n).to_owned())
}

/// The argument from its bytes; short ones (a failed read) give an empty
/// socket rather than a panic.
pub fn sock_arg(bytes: &[u8]) -> KprobeSock {
    let Some(head) = bytes.get(..std::mem::size_of::<SockInfo>()) else {
        return KprobeSock::default();
    };
    // SAFETY: exactly size_of::<SockInfo>() bytes; SockInfo is repr(C),
    // Copy, integers and byte arrays valid for any bit pattern, read
    // without alignment assumptions.
    let s: SockInfo = unsafe { std::ptr::read_unaligned(head.as_ptr().cast::<SockInfo>()) };
    let (saddr, daddr) = if s.family == AF_INET6 {
        (Ipv6Addr::from(s.saddr6).to_string(), Ipv6Addr::from(s.daddr6).to_string())
    } else {
        (Ipv4Addr::from(u32::from_be(s.saddr)).to_string(), Ipv4Addr::from(u32::from_be(s.daddr)).to_string())
    };
    KprobeSock {
        family: family(s.family),
        r#type: kind(s.kind),
        protocol: protocol(s.protocol),
        mark: s.mark,
        priority: s.priority,
        saddr,
        daddr,
        sport: u32::from(s.sport),
        dport: u32::from(u16::from_be(s.dport_be)),
        cookie: s.cookie,
        state: state(s.state),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bytes(s: &SockInfo) -> Vec<u8> {
        // SAFETY: test-only view of a plain repr(C) record.
        unsafe { std::slice::from_raw_parts((s as *const SockInfo).cast::<u8>(), std::mem::size_of::<SockInfo>()) }
            .to_vec()
    }

    #[test]
    fn a_connecting_socket_reads_as_tetragon_shows_it() {
        let lo = u32::from(Ipv4Addr::LOCALHOST).to_be();
        let info = SockInfo {
            family: AF_INET,
            kind: 1,
            protocol: 6,
            sport: 34414,
            dport_be: 8765u16.to_be(),
            state: 2,
            saddr: lo,
            daddr: lo,
            cookie: 18386332642069366784,
            ..SockInfo::default()
        };
        assert_eq!(
            sock_arg(&bytes(&info)),
            KprobeSock {
                family: "AF_INET".into(),
                r#type: "SOCK_STREAM".into(),
                protocol: "IPPROTO_TCP".into(),
                saddr: "127.0.0.1".into(),
                daddr: "127.0.0.1".into(),
                sport: 34414,
                dport: 8765,
                cookie: 18386332642069366784,
                state: "TCP_SYN_SENT".into(),
                ..KprobeSock::default()
            }
        );
        // A v4-mapped IPv6 address, as the accepted socket of the fixture.
        let mut mapped = [0u8; 16];
        mapped[10..12].copy_from_slice(&[0xff, 0xff]);
        mapped[12..].copy_from_slice(&[127, 0, 0, 1]);
        let v6 = SockInfo { family: AF_INET6, kind: 1, protocol: 6, state: 10, saddr6: mapped, ..SockInfo::default() };
        let s = sock_arg(&bytes(&v6));
        assert_eq!((s.saddr.as_str(), s.daddr.as_str(), s.state.as_str()), ("::ffff:127.0.0.1", "::", "TCP_LISTEN"));
        assert_eq!(sock_arg(&[1, 2, 3]), KprobeSock::default());
    }
}
