//! The DHCP server against frames a guest sends: every frame is hostile. A reply, when there
//! is one, must be a well-formed Ethernet/IPv4/UDP frame from port 67 to port 68 with valid
//! checksums, a BOOTREPLY that echoes the request's xid, for the lease's client, and no
//! longer than one 1500-byte IP packet. `might_be_dhcp` never panics, and never says no to a
//! frame `handle` answers.

#![no_main]

use libfuzzer_sys::fuzz_target;
use net::dhcp::DhcpServer;
use net::dhcp::testing::{CLIENT, checksum, lease};

const ETH_HDR: usize = 14;
/// `MAX_REPLY_IP` in net/src/dhcp.rs: a reply fits one IP packet of the usual MTU.
const MAX_REPLY_IP: usize = 1500;
const BOOTP_FIXED: usize = 236;

fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

/// Checks every layer of `reply`, the answer to `request`.
fn check_reply(request: &[u8], reply: &[u8]) {
    assert!(
        reply.len() <= ETH_HDR + MAX_REPLY_IP,
        "a reply of {} bytes",
        reply.len()
    );
    assert!(
        reply.len() >= ETH_HDR + 20 + 8 + BOOTP_FIXED + 4 + 1,
        "a short reply"
    );
    // Ethernet: to the client or broadcast, from the server, IPv4.
    let dst = &reply[..6];
    assert!(
        dst == CLIENT.octets() || dst == [0xff; 6],
        "dst MAC {dst:02x?}"
    );
    assert_eq!(&reply[6..12], &lease().server_mac.octets());
    assert_eq!(be16(reply, 12), 0x0800);
    // IPv4: no options, the whole rest of the frame, UDP, valid checksum.
    let ip = &reply[ETH_HDR..];
    assert_eq!(ip[0], 0x45);
    assert_eq!(usize::from(be16(ip, 2)), ip.len(), "IP total length");
    assert_eq!(ip[9], 17);
    assert_eq!(checksum(&[&ip[..20]]), 0, "IP checksum");
    // UDP: 67 → 68, its length the rest of the packet, valid checksum.
    let udp = &ip[20..];
    assert_eq!(be16(udp, 0), 67);
    assert_eq!(be16(udp, 2), 68);
    assert_eq!(usize::from(be16(udp, 4)), udp.len(), "UDP length");
    let udp_len = (udp.len() as u16).to_be_bytes();
    assert_eq!(
        checksum(&[&ip[12..20], &[0, 17], &udp_len, udp]),
        0,
        "UDP checksum"
    );
    // BOOTP: a reply, the request's xid, the client's hardware address, the magic cookie.
    let bootp = &udp[8..];
    assert_eq!(&bootp[..3], &[2, 1, 6]);
    let req_bootp = &request[ETH_HDR + usize::from(request[ETH_HDR] & 0xf) * 4 + 8..];
    assert_eq!(&bootp[4..8], &req_bootp[4..8], "xid");
    assert_eq!(&bootp[28..34], &CLIENT.octets(), "chaddr");
    assert_eq!(&bootp[BOOTP_FIXED..BOOTP_FIXED + 4], &[99, 130, 83, 99]);
    // Options: well formed up to END, a message type of OFFER, ACK or NAK.
    let mut opts = &bootp[BOOTP_FIXED + 4..];
    let mut msg_type = None;
    loop {
        let (&code, rest) = opts.split_first().expect("options end without END");
        if code == 255 {
            break;
        }
        let (&len, rest) = rest.split_first().expect("an option without its length");
        let value = rest
            .get(..usize::from(len))
            .expect("an option longer than the reply");
        if code == 53 {
            msg_type = value.first().copied();
        }
        opts = &rest[usize::from(len)..];
    }
    assert!(
        matches!(msg_type, Some(2 | 5 | 6)),
        "message type {msg_type:?}"
    );
}

fuzz_target!(|data: &[u8]| {
    // The early test must not panic on any prefix, and once it says yes, more bytes do not
    // change its mind (it reads fixed offsets only).
    let mut said_yes = false;
    for n in 0..=data.len().min(128) {
        let yes = DhcpServer::might_be_dhcp(&data[..n]);
        assert!(
            !said_yes || yes,
            "might_be_dhcp changed its mind at {n} bytes"
        );
        said_yes = yes;
    }
    let server = DhcpServer::new(lease());
    if let Some(reply) = server.handle(data) {
        assert!(
            DhcpServer::might_be_dhcp(data),
            "a frame handle() answers fails might_be_dhcp"
        );
        check_reply(data, &reply);
        // The server keeps no state: the same frame gets the same answer.
        assert_eq!(server.handle(data).as_deref(), Some(&reply[..]));
    }
});
