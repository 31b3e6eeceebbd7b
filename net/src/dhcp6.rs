//! A stateful DHCPv6 server (RFC 8415) for exactly one client: the guest, which it gives one
//! address, the DNS servers (option 23) and the search list (option 24).
//!
//! [`Dhcp6Server::handle`] takes the UDP payload of a client message and returns the UDP
//! payload that answers it; the caller frames it (from the server's link-local address,
//! port 547, to the client's, port 546). A SOLICIT gets an ADVERTISE, or a REPLY straight
//! away when the client asks for rapid commit (option 14); REQUEST, RENEW and REBIND get a
//! REPLY with the address; CONFIRM a REPLY that says whether the client's addresses are
//! still on the link; RELEASE and DECLINE a REPLY of success (there is one address: nothing
//! to free or to mark); INFORMATION-REQUEST a REPLY with DNS and search list only. What is
//! addressed to another server (its server identifier), malformed or of another type is not
//! answered. The router, the on-link prefix and the MTU are not DHCPv6's to tell: router
//! advertisements carry them.
//!
//! Messages are hostile input: every option length is checked against the message before
//! it is read, and a reply is built from the lease and a bounded copy of the client's
//! identifier, never from anything else the client sent.

use std::net::Ipv6Addr;

use crate::mac::MacAddr;

/// The server's UDP port.
pub const SERVER_PORT: u16 = 547;
/// The client's UDP port.
pub const CLIENT_PORT: u16 = 546;
/// All_DHCP_Relay_Agents_and_Servers: where clients send.
pub const ALL_SERVERS: Ipv6Addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 1, 2);

// Message types.
pub(crate) const SOLICIT: u8 = 1;
pub(crate) const ADVERTISE: u8 = 2;
pub(crate) const REQUEST: u8 = 3;
const CONFIRM: u8 = 4;
const RENEW: u8 = 5;
const REBIND: u8 = 6;
pub(crate) const REPLY: u8 = 7;
const RELEASE: u8 = 8;
const DECLINE: u8 = 9;
const INFORMATION_REQUEST: u8 = 11;

// Options.
const OPT_CLIENTID: u16 = 1;
const OPT_SERVERID: u16 = 2;
const OPT_IA_NA: u16 = 3;
const OPT_IAADDR: u16 = 5;
const OPT_STATUS_CODE: u16 = 13;
const OPT_RAPID_COMMIT: u16 = 14;
const OPT_DNS_SERVERS: u16 = 23;
const OPT_DOMAIN_LIST: u16 = 24;

// Status codes.
const STATUS_SUCCESS: u16 = 0;
const STATUS_NO_ADDRS_AVAIL: u16 = 2;
const STATUS_NOT_ON_LINK: u16 = 4;

/// A DUID is at most 128 bytes, and its type 2 more (RFC 8415 section 11.1).
const MAX_DUID: usize = 130;
/// At most this many DNS servers and search domains are told (resolv.conf uses 3 and 6).
const MAX_DNS: usize = 8;
const MAX_SEARCH: usize = 6;

/// Lifetimes: the address is preferred and valid for a day, renewed at half of it (T1) and
/// rebound at 0.8 of it (T2), as RFC 8415 recommends.
const LIFETIME: u32 = 86_400;
const T1: u32 = LIFETIME / 2;
const T2: u32 = LIFETIME / 5 * 4;

/// What the client is told.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease6 {
    /// Its address.
    pub address: Ipv6Addr,
    /// DNS servers.
    pub dns: Vec<Ipv6Addr>,
    /// Search domains.
    pub search: Vec<String>,
    /// The server's MAC, from which its identifier is made.
    pub server_mac: MacAddr,
}

/// The server.
#[derive(Debug, Clone)]
pub struct Dhcp6Server {
    lease: Lease6,
    /// DUID-LL (type 3) from the server's MAC.
    duid: Vec<u8>,
}

/// What a client message says, as far as the server needs it.
#[derive(Debug, Default)]
struct Message<'a> {
    msg_type: u8,
    transaction: [u8; 3],
    client_id: Option<&'a [u8]>,
    server_id: Option<&'a [u8]>,
    /// The first IA_NA's identifier.
    iaid: Option<[u8; 4]>,
    /// The addresses in the client's IA_NAs (for CONFIRM).
    addresses: Vec<Ipv6Addr>,
    rapid_commit: bool,
}

/// The (code, value) options of `data`; `None` when one overruns it.
fn options(mut data: &[u8]) -> Option<Vec<(u16, &[u8])>> {
    let mut out = Vec::new();
    while !data.is_empty() {
        let code = u16::from_be_bytes([*data.first()?, *data.get(1)?]);
        let len = usize::from(u16::from_be_bytes([*data.get(2)?, *data.get(3)?]));
        let value = data.get(4..4 + len)?;
        out.push((code, value));
        data = &data[4 + len..];
    }
    Some(out)
}

fn parse(payload: &[u8]) -> Option<Message<'_>> {
    let (&msg_type, rest) = payload.split_first()?;
    let transaction: [u8; 3] = rest.get(..3)?.try_into().ok()?;
    let mut m = Message {
        msg_type,
        transaction,
        ..Message::default()
    };
    for (code, value) in options(&rest[3..])? {
        match code {
            OPT_CLIENTID if m.client_id.is_none() => {
                if value.len() < 2 || value.len() > MAX_DUID {
                    return None;
                }
                m.client_id = Some(value);
            }
            OPT_SERVERID if m.server_id.is_none() => m.server_id = Some(value),
            OPT_IA_NA => {
                let iaid: [u8; 4] = value.get(..4)?.try_into().ok()?;
                m.iaid.get_or_insert(iaid);
                for (sub, v) in options(value.get(12..)?)? {
                    if sub == OPT_IAADDR {
                        let a: [u8; 16] = v.get(..16)?.try_into().ok()?;
                        // Bounded by the message: one address per 28 bytes of it.
                        m.addresses.push(Ipv6Addr::from(a));
                    }
                }
            }
            OPT_RAPID_COMMIT => m.rapid_commit = true,
            _ => {}
        }
    }
    Some(m)
}

fn put_option(out: &mut Vec<u8>, code: u16, value: &[u8]) {
    out.extend_from_slice(&code.to_be_bytes());
    // Every value built here is far below 64 KiB.
    out.extend_from_slice(&u16::try_from(value.len()).unwrap_or(0).to_be_bytes());
    out.extend_from_slice(value);
}

fn status(code: u16, text: &str) -> Vec<u8> {
    let mut v = code.to_be_bytes().to_vec();
    v.extend_from_slice(text.as_bytes());
    v
}

impl Dhcp6Server {
    /// A server that hands `lease` to its client.
    pub fn new(lease: Lease6) -> Self {
        let mut duid = vec![0, 3, 0, 1]; // DUID-LL, hardware type 1 (Ethernet)
        duid.extend_from_slice(&lease.server_mac.octets());
        Self { lease, duid }
    }

    /// The lease.
    pub fn lease(&self) -> &Lease6 {
        &self.lease
    }

    /// The server's identifier (DUID-LL).
    pub fn duid(&self) -> &[u8] {
        &self.duid
    }

    /// The answer to client message `payload` (a UDP payload), if it gets one.
    pub fn handle(&self, payload: &[u8]) -> Option<Vec<u8>> {
        let m = parse(payload)?;
        let ours = m.server_id == Some(&self.duid[..]);
        // Which messages must, may or must not name a server (RFC 8415 section 16).
        let addressed = match m.msg_type {
            SOLICIT | CONFIRM | REBIND => m.server_id.is_none(),
            REQUEST | RENEW | RELEASE | DECLINE => ours,
            INFORMATION_REQUEST => m.server_id.is_none() || ours,
            _ => false,
        };
        if !addressed {
            return None;
        }
        // Every message but INFORMATION-REQUEST identifies its client.
        if m.client_id.is_none() && m.msg_type != INFORMATION_REQUEST {
            return None;
        }
        let reply_type = if m.msg_type == SOLICIT && !m.rapid_commit {
            ADVERTISE
        } else {
            REPLY
        };
        let mut out = vec![reply_type];
        out.extend_from_slice(&m.transaction);
        put_option(&mut out, OPT_SERVERID, &self.duid);
        if let Some(client) = m.client_id {
            put_option(&mut out, OPT_CLIENTID, client);
        }
        match m.msg_type {
            SOLICIT | REQUEST | RENEW | REBIND => {
                if m.msg_type == SOLICIT && m.rapid_commit {
                    put_option(&mut out, OPT_RAPID_COMMIT, &[]);
                }
                match m.iaid {
                    Some(iaid) => put_option(&mut out, OPT_IA_NA, &self.ia_na(iaid)),
                    None => put_option(
                        &mut out,
                        OPT_STATUS_CODE,
                        &status(STATUS_NO_ADDRS_AVAIL, "only IA_NA is served"),
                    ),
                }
            }
            CONFIRM => {
                let on_link = m.addresses.iter().all(|a| *a == self.lease.address);
                let (code, text) = if on_link && !m.addresses.is_empty() {
                    (STATUS_SUCCESS, "on link")
                } else {
                    (STATUS_NOT_ON_LINK, "not this link's address")
                };
                put_option(&mut out, OPT_STATUS_CODE, &status(code, text));
                return Some(out);
            }
            RELEASE | DECLINE => {
                put_option(&mut out, OPT_STATUS_CODE, &status(STATUS_SUCCESS, ""));
                return Some(out);
            }
            _ => {} // INFORMATION-REQUEST: configuration only
        }
        self.configuration(&mut out);
        Some(out)
    }

    /// An IA_NA with identifier `iaid` holding the lease's address.
    fn ia_na(&self, iaid: [u8; 4]) -> Vec<u8> {
        let mut ia = iaid.to_vec();
        ia.extend_from_slice(&T1.to_be_bytes());
        ia.extend_from_slice(&T2.to_be_bytes());
        let mut addr = self.lease.address.octets().to_vec();
        addr.extend_from_slice(&LIFETIME.to_be_bytes()); // preferred
        addr.extend_from_slice(&LIFETIME.to_be_bytes()); // valid
        put_option(&mut ia, OPT_IAADDR, &addr);
        ia
    }

    /// DNS servers and search list.
    fn configuration(&self, out: &mut Vec<u8>) {
        let dns: Vec<u8> = (self.lease.dns.iter().take(MAX_DNS))
            .flat_map(Ipv6Addr::octets)
            .collect();
        if !dns.is_empty() {
            put_option(out, OPT_DNS_SERVERS, &dns);
        }
        let search: Vec<String> = self.lease.search.iter().take(MAX_SEARCH).cloned().collect();
        let names = crate::dhcp::encode_names(&search);
        if !names.is_empty() {
            put_option(out, OPT_DOMAIN_LIST, &names);
        }
    }
}

#[cfg(test)]
pub(crate) mod testing {
    //! A client's messages and a reader of the server's, for this module's tests and the
    //! masquerade engine's.

    use super::*;

    /// The client's DUID in these tests (DUID-LL of 52:54:00:12:34:56).
    pub(crate) const CLIENT_DUID: [u8; 10] = [0, 3, 0, 1, 0x52, 0x54, 0, 0x12, 0x34, 0x56];

    /// A client message of `msg_type` with transaction 0xabcdef, the client's identifier,
    /// an IA_NA 7 holding `addresses`, `server` as server identifier, rapid commit if asked.
    pub(crate) fn message(
        msg_type: u8,
        server: Option<&[u8]>,
        addresses: &[Ipv6Addr],
        rapid_commit: bool,
    ) -> Vec<u8> {
        let mut m = vec![msg_type, 0xab, 0xcd, 0xef];
        put_option(&mut m, OPT_CLIENTID, &CLIENT_DUID);
        if let Some(s) = server {
            put_option(&mut m, OPT_SERVERID, s);
        }
        let mut ia = vec![0, 0, 0, 7, 0, 0, 0, 0, 0, 0, 0, 0];
        for a in addresses {
            let mut v = a.octets().to_vec();
            v.extend_from_slice(&[0; 8]);
            put_option(&mut ia, OPT_IAADDR, &v);
        }
        put_option(&mut m, OPT_IA_NA, &ia);
        if rapid_commit {
            put_option(&mut m, OPT_RAPID_COMMIT, &[]);
        }
        put_option(&mut m, 8, &[0, 0]); // elapsed time
        m
    }

    /// A reply read back: its type, transaction and options.
    #[derive(Debug)]
    pub(crate) struct Reply {
        pub(crate) msg_type: u8,
        pub(crate) transaction: [u8; 3],
        pub(crate) options: Vec<(u16, Vec<u8>)>,
    }

    impl Reply {
        pub(crate) fn parse(payload: &[u8]) -> Self {
            let options = options(&payload[4..]).expect("well-formed options");
            Self {
                msg_type: payload[0],
                transaction: payload[1..4].try_into().unwrap(),
                options: options.into_iter().map(|(c, v)| (c, v.to_vec())).collect(),
            }
        }

        pub(crate) fn option(&self, code: u16) -> Option<&[u8]> {
            self.options
                .iter()
                .find(|(c, _)| *c == code)
                .map(|(_, v)| &v[..])
        }

        /// The address in the IA_NA, with its IAID, preferred and valid lifetimes.
        pub(crate) fn address(&self) -> Option<(u32, Ipv6Addr, u32, u32)> {
            let ia = self.option(OPT_IA_NA)?;
            let iaid = u32::from_be_bytes(ia[..4].try_into().unwrap());
            let (code, v) = options(&ia[12..])?.into_iter().next()?;
            assert_eq!(code, OPT_IAADDR);
            let addr = Ipv6Addr::from(<[u8; 16]>::try_from(&v[..16]).unwrap());
            let be32 = |b: &[u8]| u32::from_be_bytes(b.try_into().unwrap());
            Some((iaid, addr, be32(&v[16..20]), be32(&v[20..24])))
        }

        /// The status code at the top level, if any.
        pub(crate) fn status(&self) -> Option<u16> {
            self.option(OPT_STATUS_CODE)
                .map(|v| u16::from_be_bytes([v[0], v[1]]))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::testing::{CLIENT_DUID, Reply, message};
    use super::*;

    fn server() -> Dhcp6Server {
        Dhcp6Server::new(Lease6 {
            address: "fd10:0:2::2".parse().unwrap(),
            dns: vec!["fd00::10".parse().unwrap(), "fd00::11".parse().unwrap()],
            search: vec!["svc.cluster.local".into(), "bad..name".into()],
            server_mac: MacAddr::new([2, 0x56, 0x4d, 0x4d, 0, 1]),
        })
    }

    fn addr(s: &str) -> Ipv6Addr {
        s.parse().unwrap()
    }

    #[test]
    fn solicit_is_advertised_and_request_replied_with_the_address_dns_and_search() {
        let s = server();
        let adv = Reply::parse(&s.handle(&message(SOLICIT, None, &[], false)).unwrap());
        assert_eq!(adv.msg_type, ADVERTISE);
        assert_eq!(adv.transaction, [0xab, 0xcd, 0xef]);
        assert_eq!(adv.option(OPT_CLIENTID), Some(&CLIENT_DUID[..]));
        let duid = adv.option(OPT_SERVERID).unwrap().to_vec();
        assert_eq!(duid, [0, 3, 0, 1, 2, 0x56, 0x4d, 0x4d, 0, 1]);
        assert_eq!(
            adv.address(),
            Some((7, addr("fd10:0:2::2"), LIFETIME, LIFETIME))
        );
        let reply = Reply::parse(
            &s.handle(&message(
                REQUEST,
                Some(&duid),
                &[addr("fd10:0:2::2")],
                false,
            ))
            .unwrap(),
        );
        assert_eq!(reply.msg_type, REPLY);
        assert_eq!(reply.address().unwrap().1, addr("fd10:0:2::2"));
        let dns = reply.option(OPT_DNS_SERVERS).unwrap();
        assert_eq!(dns.len(), 32);
        assert_eq!(&dns[..16], &addr("fd00::10").octets());
        // The malformed name is left out, the good one encoded.
        assert_eq!(
            reply.option(OPT_DOMAIN_LIST).unwrap(),
            b"\x03svc\x07cluster\x05local\x00"
        );
        for renewal in [RENEW, REBIND] {
            let server_id = (renewal == RENEW).then_some(&duid[..]);
            let r = Reply::parse(&s.handle(&message(renewal, server_id, &[], false)).unwrap());
            assert_eq!(
                (r.msg_type, r.address().unwrap().1),
                (REPLY, addr("fd10:0:2::2"))
            );
        }
    }

    #[test]
    fn rapid_commit_is_answered_with_a_reply_at_once() {
        let r = Reply::parse(&server().handle(&message(SOLICIT, None, &[], true)).unwrap());
        assert_eq!(r.msg_type, REPLY);
        assert_eq!(r.option(OPT_RAPID_COMMIT), Some(&[][..]));
        assert!(r.address().is_some());
    }

    #[test]
    fn messages_for_another_server_or_without_a_client_are_not_answered() {
        let s = server();
        let other = [0, 3, 0, 1, 1, 2, 3, 4, 5, 6];
        assert!(
            s.handle(&message(REQUEST, Some(&other), &[], false))
                .is_none()
        );
        assert!(s.handle(&message(REQUEST, None, &[], false)).is_none());
        assert!(
            s.handle(&message(SOLICIT, Some(s.duid()), &[], false))
                .is_none()
        );
        assert!(s.handle(&message(ADVERTISE, None, &[], false)).is_none());
        assert!(s.handle(&message(REPLY, None, &[], false)).is_none());
        let mut anonymous = message(SOLICIT, None, &[], false);
        anonymous.drain(4..4 + 4 + CLIENT_DUID.len());
        assert!(s.handle(&anonymous).is_none(), "no client identifier");
    }

    #[test]
    fn confirm_release_and_information_request() {
        let s = server();
        let confirm = |a: &[Ipv6Addr]| {
            Reply::parse(&s.handle(&message(CONFIRM, None, a, false)).unwrap()).status()
        };
        assert_eq!(confirm(&[addr("fd10:0:2::2")]), Some(STATUS_SUCCESS));
        assert_eq!(confirm(&[addr("fd10:0:2::9")]), Some(STATUS_NOT_ON_LINK));
        let released = Reply::parse(
            &s.handle(&message(RELEASE, Some(s.duid()), &[], false))
                .unwrap(),
        );
        assert_eq!(
            (released.msg_type, released.status()),
            (REPLY, Some(STATUS_SUCCESS))
        );
        let mut info = vec![INFORMATION_REQUEST, 1, 2, 3];
        put_option(&mut info, 8, &[0, 0]);
        let r = Reply::parse(&s.handle(&info).unwrap());
        assert_eq!((r.msg_type, r.transaction), (REPLY, [1, 2, 3]));
        assert!(r.option(OPT_DNS_SERVERS).is_some());
        assert!(r.address().is_none(), "configuration only");
    }

    #[test]
    fn malformed_messages_are_ignored() {
        let s = server();
        let good = message(SOLICIT, None, &[addr("fd10:0:2::2")], true);
        // Every truncation: never a panic; an answer only where the options still parse.
        for n in 0..good.len() {
            let _ = s.handle(&good[..n]);
        }
        assert!(s.handle(&[]).is_none());
        assert!(s.handle(&[SOLICIT, 0, 0]).is_none());
        // An option longer than the message.
        let mut overrun = vec![SOLICIT, 0, 0, 0];
        put_option(&mut overrun, OPT_CLIENTID, &CLIENT_DUID);
        overrun.extend_from_slice(&[0, 3, 0xff, 0xff, 0, 0]);
        assert!(s.handle(&overrun).is_none());
        // A client identifier too long for a DUID.
        let mut long = vec![SOLICIT, 0, 0, 0];
        put_option(&mut long, OPT_CLIENTID, &[7; 200]);
        assert!(s.handle(&long).is_none());
        // An IA_NA too short for its fixed part.
        let mut short_ia = vec![SOLICIT, 0, 0, 0];
        put_option(&mut short_ia, OPT_CLIENTID, &CLIENT_DUID);
        put_option(&mut short_ia, OPT_IA_NA, &[0, 0, 0, 1, 0, 0]);
        assert!(s.handle(&short_ia).is_none());
    }
}
