//! The bridge binding, as Virtink's pre-runner sets it up, and its undoing.
//!
//! For pod link `L` (`eth0`, or `net<i>` for a multus network):
//!
//! 1. record `L`'s MAC, MTU, IPv4 addresses, global IPv6 addresses and the routes through it
//!    (taking `L` down flushes its IPv6 addresses and routes: they are put back from this);
//! 2. remove its addresses, take it down, rename it `L-nic`, give it a new MAC with the same
//!    OUI (the guest will use the original);
//! 3. create a dummy `L` holding the pod addresses (both families), so the pod IP stays
//!    visible in the pod;
//! 4. create bridge `br-L` with `L`'s MTU and no ARP of its own (the pod would otherwise answer
//!    ARP for its address, now the guest's, on it), enslave `L-nic` with learning off, bring
//!    all up;
//! 5. create TAP `tap-L` on the bridge (the caller's [`Tap`] keeps it alive).
//!
//! Every step that changed something pushes its inverse onto an undo list; [`Binding`]
//! replays it in reverse when dropped, and a failure halfway through replays what was done
//! so far, so the namespace's links end as they were (names, MACs, addresses, routes) on
//! every exit path that runs destructors.
//!
//! For the one that does not (SIGKILL, the OOM killer), `L-nic` carries an alias recording
//! what `L` was (name, MAC, MTU, state, IPv4 routes; the addresses stay on the dummy, whose
//! own alias records the IPv6 routes), and [`recover`] puts it back before the next
//! take-over, so a restarted `vmm` in the same pod finds the namespace as the pod started.
//!
//! The guest is on the pod link's layer 2: whatever IPv6 the network behind it offers
//! (router advertisements, DHCPv6) reaches the guest untouched, which is what a multus
//! network with IPv6 needs. The pod's own IPv6 address is not delegated to the guest as its
//! IPv4 one is by DHCP: it stays the pod's, on the dummy.

use std::net::Ipv4Addr;

use crate::dhcp::{Lease, StaticRoute};
use crate::mac::MacAddr;
use crate::netlink::{Ipv4Net, Ipv6Net, LinkChange, LinkKind, Netlink, Route4, Route6};
use crate::resolv::Resolver;
use crate::tap::{Tap, TapError};

/// `RTPROT_KERNEL`: routes the kernel derives from addresses.
const RTPROT_KERNEL: u8 = 2;
/// `RTPROT_RA`: routes learnt from router advertisements.
const RTPROT_RA: u8 = 9;

/// `net` namespace inode of the initial network namespace on kernels that fix it.
const PROC_NET_INIT_INO: u64 = 0xEFFF_FFF9;
/// `pid` namespace inode of the initial PID namespace.
const PROC_PID_INIT_INO: u64 = 0xEFFF_FFFC;
/// The MAC DHCP replies come from (never on the wire: replies go straight to the guest).
const DHCP_SERVER_MAC: MacAddr = MacAddr::new([0x02, 0x00, 0x00, 0x00, 0x00, 0x01]);
/// The DHCP server's address when the pod link has no default gateway.
const DHCP_SERVER_FALLBACK: Ipv4Addr = Ipv4Addr::new(169, 254, 0, 1);

fn ns_inode(path: &str) -> Option<u64> {
    std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(path).ok()?).into()
}

/// Whether this process is in the host's initial network namespace, where taking a link
/// over would cut the host off.
pub fn in_initial_netns() -> bool {
    let Some(own) = ns_inode("/proc/self/ns/net") else {
        return false;
    };
    if own == PROC_NET_INIT_INO {
        return true;
    }
    // On kernels that number namespaces dynamically: compare with init's, when init is the
    // host's (this process is in the initial PID namespace).
    ns_inode("/proc/self/ns/pid") == Some(PROC_PID_INIT_INO)
        && ns_inode("/proc/1/ns/net") == Some(own)
}

/// Why the binding cannot be set up.
#[derive(Debug, thiserror::Error)]
pub enum BindError {
    /// The pod link does not exist.
    #[error("host link {0} not found in this network namespace")]
    NoLink(String),
    /// The link has no MAC to hand to the guest.
    #[error("host link {0} has no Ethernet address")]
    NoMac(String),
    /// A netlink operation failed.
    #[error("{what}")]
    Netlink {
        /// What was being done.
        what: String,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// The TAP.
    #[error(transparent)]
    Tap(#[from] TapError),
}

/// What the pod link had before it was taken over.
#[derive(Debug, Clone)]
pub struct PodLink {
    /// Its name.
    pub name: String,
    /// Its MAC, which the guest gets.
    pub mac: MacAddr,
    /// Its MTU, which the bridge, the TAP and the guest get.
    pub mtu: u32,
    /// Its IPv4 addresses.
    pub addresses: Vec<Ipv4Net>,
    /// The routes through it (without those the kernel derives from addresses).
    pub routes: Vec<Route4>,
    /// Its global IPv6 addresses.
    pub addresses6: Vec<Ipv6Net>,
    /// The IPv6 routes through it (without the kernel's and those learnt from router
    /// advertisements, which the network advertises again).
    pub routes6: Vec<Route6>,
}

impl PodLink {
    /// What DHCP delegates to the guest: the link's first IPv4 address, its routes and MTU,
    /// with the pod's `resolver` and the guest's `hostname`; `None` when the link has no
    /// IPv4 address (the guest is then on layer 2 only).
    pub fn lease(&self, resolver: &Resolver, hostname: &str) -> Option<Lease> {
        let address = self.addresses.first()?;
        let router = self.router();
        Some(Lease {
            client: self.mac,
            address: address.addr,
            prefix: address.prefix,
            router,
            routes: self.static_routes(),
            dns: resolver.dns.clone(),
            search: resolver.search.clone(),
            mtu: Some(u16::try_from(self.mtu).unwrap_or(u16::MAX)),
            hostname: hostname.to_string(),
            server: router.unwrap_or(DHCP_SERVER_FALLBACK),
            server_mac: DHCP_SERVER_MAC,
        })
    }

    /// The default gateway, if a default route goes through the link.
    pub fn router(&self) -> Option<Ipv4Addr> {
        self.routes
            .iter()
            .find(|r| r.prefix == 0)
            .and_then(|r| r.gateway)
    }

    /// The routes for DHCP option 121: every route through the link, on-link ones with
    /// gateway 0.0.0.0, the default route last.
    pub fn static_routes(&self) -> Vec<StaticRoute> {
        let mut routes: Vec<StaticRoute> = self
            .routes
            .iter()
            .filter(|r| r.prefix > 0)
            .map(|r| StaticRoute {
                dst: r.dst,
                prefix: r.prefix,
                gateway: r.gateway.unwrap_or(Ipv4Addr::UNSPECIFIED),
            })
            .collect();
        if let Some(gw) = self.router() {
            routes.push(StaticRoute {
                dst: Ipv4Addr::UNSPECIFIED,
                prefix: 0,
                gateway: gw,
            });
        }
        routes
    }
}

/// The alias prefix that marks a link vmm renamed.
const RECORD: &str = "vmm-bridge-binding";
/// Linux's limit on an alias, with its NUL.
const ALIAS_MAX: usize = 255;

/// What `L` was, as `L-nic`'s alias records it:
/// `vmm-bridge-binding L MAC MTU up|down ROUTE...`, a route being `dst/prefix[@gateway]:scope`.
fn record(pod: &PodLink, up: bool) -> String {
    let mut s = format!(
        "{RECORD} {} {} {} {}",
        pod.name,
        pod.mac,
        pod.mtu,
        if up { "up" } else { "down" }
    );
    for r in &pod.routes {
        let gw = r.gateway.map(|g| format!("@{g}")).unwrap_or_default();
        let route = format!(" {}/{}{gw}:{}", r.dst, r.prefix, r.scope);
        if s.len() + route.len() > ALIAS_MAX {
            log::warn!(
                "{}: too many routes to record them all for recovery",
                pod.name
            );
            break;
        }
        s += &route;
    }
    s
}

/// The alias prefix of the dummy, which records the IPv6 routes.
const RECORD6: &str = "vmm-bridge-binding-ipv6";

/// The IPv6 routes through `L`, as the dummy's alias records them:
/// `vmm-bridge-binding-ipv6 ROUTE...`, a route being `dst/prefix[@gateway]`.
fn record6(link: &str, routes: &[Route6]) -> String {
    let mut s = RECORD6.to_string();
    for r in routes {
        let gw = r.gateway.map(|g| format!("@{g}")).unwrap_or_default();
        let route = format!(" {}/{}{gw}", r.dst, r.prefix);
        if s.len() + route.len() > ALIAS_MAX {
            log::warn!("{link}: too many IPv6 routes to record them all for recovery");
            break;
        }
        s += &route;
    }
    s
}

/// A parsed [`record6`].
fn parse_record6(alias: &str) -> Option<Vec<Route6>> {
    let mut words = alias.split_whitespace();
    if words.next()? != RECORD6 {
        return None;
    }
    words
        .map(|w| {
            let (net, gateway) = match w.split_once('@') {
                Some((n, g)) => (n, Some(g.parse().ok()?)),
                None => (w, None),
            };
            let (dst, prefix) = net.split_once('/')?;
            Some(Route6 {
                dst: dst.parse().ok()?,
                prefix: prefix.parse().ok()?,
                gateway,
                oif: None,
                protocol: 3, // RTPROT_BOOT, as `ip route add` makes them
                metric: None,
            })
        })
        .collect()
}

/// A parsed [`record`]: (link, MAC, MTU, up, routes).
fn parse_record(alias: &str) -> Option<(String, MacAddr, u32, bool, Vec<Route4>)> {
    let mut words = alias.split_whitespace();
    if words.next()? != RECORD {
        return None;
    }
    let link = words.next()?.to_string();
    let mac: MacAddr = words.next()?.parse().ok()?;
    let mtu: u32 = words.next()?.parse().ok()?;
    let up = words.next()? == "up";
    let mut routes = Vec::new();
    for w in words {
        let (net, scope) = w.rsplit_once(':')?;
        let (net, gateway) = match net.split_once('@') {
            Some((n, g)) => (n, Some(g.parse().ok()?)),
            None => (net, None),
        };
        let (dst, prefix) = net.split_once('/')?;
        routes.push(Route4 {
            dst: dst.parse().ok()?,
            prefix: prefix.parse().ok()?,
            gateway,
            oif: None,
            prefsrc: None,
            scope: scope.parse().ok()?,
            protocol: 3, // RTPROT_BOOT, as `ip route add` makes them
            metric: None,
        });
    }
    Some((link, mac, mtu, up, routes))
}

/// Whether a `vmm` that did not exit cleanly left pod link `link` taken over.
pub fn left_taken_over(nl: &mut Netlink, link: &str) -> bool {
    nl.link(&format!("{link}-nic"))
        .ok()
        .flatten()
        .and_then(|l| l.alias)
        .and_then(|a| parse_record(&a))
        .is_some_and(|r| r.0 == link)
}

/// Puts pod link `link` back as it was if a `vmm` that did not exit cleanly left it taken
/// over (see the module documentation). Returns whether it did.
pub fn recover(nl: &mut Netlink, link: &str) -> Result<bool, BindError> {
    let nic_name = format!("{link}-nic");
    let Some(nic) = nl.link(&nic_name).map_err(nl_err("cannot list links"))? else {
        return Ok(false);
    };
    let Some((name, mac, _mtu, up, routes)) = nic.alias.as_deref().and_then(parse_record) else {
        return Ok(false);
    };
    if name != link {
        return Ok(false);
    }
    // The dummy holds the pod's addresses.
    let (mut addresses, mut addresses6, mut routes6) = (Vec::new(), Vec::new(), Vec::new());
    if let Some(dummy) = nl.link(link).map_err(nl_err("cannot list links"))? {
        routes6 = dummy
            .alias
            .as_deref()
            .and_then(parse_record6)
            .unwrap_or_default();
        addresses = nl
            .addresses(dummy.index)
            .map_err(nl_err(format!("cannot list the addresses of {link}")))?;
        addresses6 = nl
            .addresses6(dummy.index)
            .map_err(nl_err(format!("cannot list the IPv6 addresses of {link}")))?;
        nl.del_link(dummy.index)
            .map_err(nl_err(format!("cannot delete dummy {link}")))?;
    }
    for leftover in [format!("tap-{link}"), format!("br-{link}")] {
        if let Some(l) = nl.link(&leftover).map_err(nl_err("cannot list links"))? {
            nl.del_link(l.index)
                .map_err(nl_err(format!("cannot delete {leftover}")))?;
        }
    }
    nl.set_link(
        nic.index,
        &LinkChange {
            up: Some(false),
            ..LinkChange::default()
        },
    )
    .map_err(nl_err(format!("cannot take {nic_name} down")))?;
    nl.set_link(
        nic.index,
        &LinkChange {
            name: Some(link.to_string()),
            mac: Some(mac),
            master: Some(0),
            alias: Some(String::new()),
            up: Some(up),
            ..LinkChange::default()
        },
    )
    .map_err(nl_err(format!("cannot rename {nic_name} back to {link}")))?;
    for a in &addresses {
        exists_ok(nl.add_address(nic.index, *a), || {
            format!("cannot put {}/{} back on {link}", a.addr, a.prefix)
        })?;
    }
    for a in &addresses6 {
        exists_ok(nl.add_address6(nic.index, *a), || {
            format!("cannot put {}/{} back on {link}", a.addr, a.prefix)
        })?;
    }
    let mut ordered = routes;
    ordered.sort_by_key(|r| (r.gateway.is_some(), std::cmp::Reverse(r.prefix)));
    for r in ordered {
        let r = Route4 {
            oif: Some(nic.index),
            ..r
        };
        exists_ok(nl.add_route(&r), || {
            format!("cannot put route {}/{} back", r.dst, r.prefix)
        })?;
    }
    for r in routes6 {
        let r = Route6 {
            oif: Some(nic.index),
            ..r
        };
        exists_ok(nl.add_route6(&r), || {
            format!("cannot put route {}/{} back", r.dst, r.prefix)
        })?;
    }
    log::warn!("{link}: put back as it was, from what a vmm that did not exit cleanly left");
    Ok(true)
}

/// `result` of adding something, where its being there already is no error; otherwise the
/// error says `what` failed.
fn exists_ok(result: std::io::Result<()>, what: impl FnOnce() -> String) -> Result<(), BindError> {
    match result {
        Err(e) if e.raw_os_error() != Some(libc::EEXIST) => Err(nl_err(what())(e)),
        _ => Ok(()),
    }
}

#[derive(Debug)]
enum Undo {
    DeleteLink(String),
    SetLink(String, LinkChange),
    AddAddresses(String, Vec<Ipv4Net>),
    AddRoutes(Vec<Route4>, String),
    AddAddresses6(String, Vec<Ipv6Net>),
    AddRoutes6(Vec<Route6>, String),
}

/// A taken-over pod link; dropping it restores the namespace.
#[derive(Debug)]
pub struct Binding {
    /// The link as it was.
    pub pod: PodLink,
    /// The bridge's name.
    pub bridge: String,
    undo: Vec<Undo>,
}

fn nl_err(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> BindError {
    let what = what.into();
    move |source| BindError::Netlink { what, source }
}

fn index_of(nl: &mut Netlink, name: &str) -> Result<u32, BindError> {
    nl.link(name)
        .map_err(nl_err(format!("cannot list links for {name}")))?
        .map(|l| l.index)
        .ok_or_else(|| BindError::NoLink(name.to_string()))
}

/// A MAC with `mac`'s OUI and other, random, lower bytes.
fn new_mac(mac: MacAddr) -> MacAddr {
    let mut o = mac.octets();
    crate::random::fill(&mut o[3..]);
    if o == mac.octets() {
        o[5] ^= 1;
    }
    MacAddr::new(o)
}

impl Binding {
    /// Takes over `link` and puts TAP `tap`, with `queues` queues, on a new bridge in front
    /// of it.
    pub fn take_over(
        nl: &mut Netlink,
        link: &str,
        tap: &str,
        queues: usize,
    ) -> Result<(Self, Vec<Tap>), BindError> {
        let mut binding = Binding {
            pod: PodLink {
                name: link.to_string(),
                mac: MacAddr::new([0; 6]),
                mtu: 0,
                addresses: vec![],
                routes: vec![],
                addresses6: vec![],
                routes6: vec![],
            },
            bridge: format!("br-{link}"),
            undo: vec![],
        };
        // On error, `binding` drops here and undoes what was done.
        let taps = binding.set_up(nl, link, tap, queues)?;
        Ok((binding, taps))
    }

    fn set_up(
        &mut self,
        nl: &mut Netlink,
        link: &str,
        tap_name: &str,
        queues: usize,
    ) -> Result<Vec<Tap>, BindError> {
        let l = nl
            .link(link)
            .map_err(nl_err("cannot list links"))?
            .ok_or_else(|| BindError::NoLink(link.to_string()))?;
        let mac = l.mac.ok_or_else(|| BindError::NoMac(link.to_string()))?;
        let addresses = nl
            .addresses(l.index)
            .map_err(nl_err(format!("cannot list the addresses of {link}")))?;
        let routes: Vec<Route4> = nl
            .routes()
            .map_err(nl_err("cannot list routes"))?
            .into_iter()
            .filter(|r| r.oif == Some(l.index) && r.protocol != RTPROT_KERNEL)
            .collect();
        let addresses6 = nl
            .addresses6(l.index)
            .map_err(nl_err(format!("cannot list the IPv6 addresses of {link}")))?;
        let routes6: Vec<Route6> = nl
            .routes6()
            .map_err(nl_err("cannot list IPv6 routes"))?
            .into_iter()
            .filter(|r| {
                r.oif == Some(l.index) && r.protocol != RTPROT_KERNEL && r.protocol != RTPROT_RA
            })
            .collect();
        self.pod = PodLink {
            name: link.to_string(),
            mac,
            mtu: l.mtu,
            addresses: addresses.clone(),
            routes: routes.clone(),
            addresses6: addresses6.clone(),
            routes6: routes6.clone(),
        };
        let nic = format!("{link}-nic");

        // Routes come back after the addresses they depend on (undo runs in reverse).
        self.undo
            .push(Undo::AddRoutes6(routes6.clone(), link.to_string()));
        self.undo.push(Undo::AddRoutes(routes, link.to_string()));
        // Taking the link down flushes its IPv6 addresses (unless keep_addr_on_down).
        self.undo
            .push(Undo::AddAddresses6(link.to_string(), addresses6.clone()));
        for a in &addresses {
            nl.del_address(l.index, *a).map_err(nl_err(format!(
                "cannot remove {}/{} from {link}",
                a.addr, a.prefix
            )))?;
        }
        self.undo
            .push(Undo::AddAddresses(link.to_string(), addresses.clone()));
        let down = LinkChange {
            up: Some(false),
            ..LinkChange::default()
        };
        nl.set_link(l.index, &down)
            .map_err(nl_err(format!("cannot take {link} down")))?;
        self.undo.push(Undo::SetLink(
            link.to_string(),
            LinkChange {
                up: Some(l.up),
                ..LinkChange::default()
            },
        ));
        nl.set_link(
            l.index,
            &LinkChange {
                name: Some(nic.clone()),
                mac: Some(new_mac(mac)),
                alias: Some(record(&self.pod, l.up)),
                ..LinkChange::default()
            },
        )
        .map_err(nl_err(format!("cannot rename {link} to {nic}")))?;
        self.undo.push(Undo::SetLink(
            nic.clone(),
            LinkChange {
                name: Some(link.to_string()),
                mac: Some(mac),
                master: Some(0),
                up: Some(false),
                alias: Some(String::new()),
                ..LinkChange::default()
            },
        ));

        // The dummy keeping the pod IP.
        nl.add_link(link, LinkKind::Dummy, None)
            .map_err(nl_err(format!("cannot create dummy {link}")))?;
        self.undo.push(Undo::DeleteLink(link.to_string()));
        let dummy = index_of(nl, link)?;
        for a in &addresses {
            nl.add_address(dummy, *a).map_err(nl_err(format!(
                "cannot add {}/{} to dummy {link}",
                a.addr, a.prefix
            )))?;
        }
        for a in &addresses6 {
            nl.add_address6(dummy, *a).map_err(nl_err(format!(
                "cannot add {}/{} to dummy {link}",
                a.addr, a.prefix
            )))?;
        }
        let up = LinkChange {
            up: Some(true),
            alias: Some(record6(link, &routes6)),
            ..LinkChange::default()
        };
        nl.set_link(dummy, &up)
            .map_err(nl_err(format!("cannot bring dummy {link} up")))?;

        // The bridge.
        let bridge = self.bridge.clone();
        nl.add_link(&bridge, LinkKind::Bridge, Some(l.mtu))
            .map_err(nl_err(format!("cannot create bridge {bridge}")))?;
        self.undo.push(Undo::DeleteLink(bridge.clone()));
        let br = index_of(nl, &bridge)?;
        // The pod's address is on the dummy, so the pod's own stack would answer ARP for it
        // on the bridge (any local address, on any interface: arp_ignore 0) and a peer
        // asking for the guest could learn the bridge's MAC instead of the guest's. The
        // bridge device does no ARP of its own; frames between its ports still pass.
        let up_noarp = LinkChange {
            up: Some(true),
            noarp: Some(true),
            ..LinkChange::default()
        };
        nl.set_link(br, &up_noarp)
            .map_err(nl_err(format!("cannot bring {bridge} up")))?;
        nl.set_link(
            l.index,
            &LinkChange {
                master: Some(br),
                up: Some(true),
                ..LinkChange::default()
            },
        )
        .map_err(nl_err(format!("cannot add {nic} to {bridge}")))?;
        nl.set_port_learning(l.index, false)
            .map_err(nl_err(format!("cannot turn learning off on {nic}")))?;

        attach_tap(nl, tap_name, br, l.mtu, queues)
    }
}

/// Opens (or creates) TAP `name` with `queues` queues (see [`Tap::open_queues`]) and puts
/// it, up, on bridge `bridge` with `mtu`.
pub fn attach_tap(
    nl: &mut Netlink,
    name: &str,
    bridge: u32,
    mtu: u32,
    queues: usize,
) -> Result<Vec<Tap>, BindError> {
    let taps = Tap::open_queues(name, queues)?;
    let index = index_of(nl, name)?;
    nl.set_link(
        index,
        &LinkChange {
            mtu: Some(mtu),
            master: Some(bridge),
            up: Some(true),
            ..LinkChange::default()
        },
    )
    .map_err(nl_err(format!("cannot put {name} on its bridge")))?;
    Ok(taps)
}

/// Finds bridge `name`, creating it (up) if missing. Returns its index, its MTU and
/// whether it was created here.
pub fn ensure_bridge(nl: &mut Netlink, name: &str) -> Result<(u32, u32, bool), BindError> {
    if let Some(l) = nl.link(name).map_err(nl_err("cannot list links"))? {
        return Ok((l.index, l.mtu, false));
    }
    nl.add_link(name, LinkKind::Bridge, None)
        .map_err(nl_err(format!("cannot create bridge {name}")))?;
    let l = nl
        .link(name)
        .map_err(nl_err("cannot list links"))?
        .ok_or_else(|| BindError::NoLink(name.to_string()))?;
    nl.set_link(
        l.index,
        &LinkChange {
            up: Some(true),
            ..LinkChange::default()
        },
    )
    .map_err(nl_err(format!("cannot bring {name} up")))?;
    Ok((l.index, l.mtu, true))
}

/// Adds every one of `items` with `add`, an item that exists already counting as added;
/// every item is tried, and the first error is returned.
fn add_each<T>(items: &[T], mut add: impl FnMut(&T) -> std::io::Result<()>) -> std::io::Result<()> {
    let mut first_err = Ok(());
    for item in items {
        match add(item) {
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {}
            Err(e) => {
                if first_err.is_ok() {
                    first_err = Err(e);
                }
            }
            Ok(()) => {}
        }
    }
    first_err
}

impl Drop for Binding {
    fn drop(&mut self) {
        let Ok(mut nl) = Netlink::open() else {
            log::error!("cannot open netlink to restore {}", self.pod.name);
            return;
        };
        while let Some(step) = self.undo.pop() {
            let result = match &step {
                Undo::DeleteLink(name) => match nl.link(name) {
                    Ok(Some(l)) => nl.del_link(l.index),
                    other => other.map(|_| ()),
                },
                Undo::SetLink(name, change) => match nl.link(name) {
                    Ok(Some(l)) => {
                        // Renaming needs the link down; the change says what it ends as.
                        let _ = nl.set_link(
                            l.index,
                            &LinkChange {
                                up: Some(false),
                                ..LinkChange::default()
                            },
                        );
                        nl.set_link(l.index, change)
                    }
                    other => other.map(|_| ()),
                },
                Undo::AddAddresses(name, addrs) => match nl.link(name) {
                    Ok(Some(l)) => add_each(addrs, |a| nl.add_address(l.index, *a)),
                    other => other.map(|_| ()),
                },
                Undo::AddAddresses6(name, addrs) => match nl.link(name) {
                    Ok(Some(l)) => add_each(addrs, |a| nl.add_address6(l.index, *a)),
                    other => other.map(|_| ()),
                },
                // On-link routes first: a gateway must be reachable when its route is added
                // (an IPv6 link-local gateway always is).
                Undo::AddRoutes(routes, name) => match nl.link(name) {
                    Ok(Some(l)) => {
                        let mut ordered = routes.clone();
                        ordered.sort_by_key(|r| (r.gateway.is_some(), std::cmp::Reverse(r.prefix)));
                        add_each(&ordered, |r| {
                            nl.add_route(&Route4 {
                                oif: Some(l.index),
                                ..r.clone()
                            })
                        })
                    }
                    other => other.map(|_| ()),
                },
                Undo::AddRoutes6(routes, name) => match nl.link(name) {
                    Ok(Some(l)) => {
                        let mut ordered = routes.clone();
                        ordered.sort_by_key(|r| (r.gateway.is_some(), std::cmp::Reverse(r.prefix)));
                        add_each(&ordered, |r| {
                            nl.add_route6(&Route6 {
                                oif: Some(l.index),
                                ..r.clone()
                            })
                        })
                    }
                    other => other.map(|_| ()),
                },
            };
            if let Err(e) = result {
                log::error!("restoring {}: {step:?}: {e}", self.pod.name);
            }
        }
        log::debug!("{} restored", self.pod.name);
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv6Addr;

    use super::*;

    fn route(dst: [u8; 4], prefix: u8, gw: Option<[u8; 4]>) -> Route4 {
        Route4 {
            dst: Ipv4Addr::from(dst),
            prefix,
            gateway: gw.map(Ipv4Addr::from),
            oif: Some(2),
            prefsrc: None,
            scope: 0,
            protocol: 3,
            metric: None,
        }
    }

    #[test]
    fn calico_routes_become_option_121_with_the_default_last() {
        let pod = PodLink {
            name: "eth0".into(),
            mac: MacAddr::new([2, 0, 0, 0, 0, 1]),
            mtu: 1450,
            addresses: vec![],
            addresses6: vec![],
            routes6: vec![],
            routes: vec![
                route([0, 0, 0, 0], 0, Some([169, 254, 1, 1])),
                route([169, 254, 1, 1], 32, None),
            ],
        };
        assert_eq!(pod.router(), Some(Ipv4Addr::new(169, 254, 1, 1)));
        let r = pod.static_routes();
        assert_eq!(r.len(), 2);
        assert_eq!(r[0].gateway, Ipv4Addr::UNSPECIFIED);
        assert_eq!(r[0].prefix, 32);
        assert_eq!(r[1].prefix, 0);
        assert_eq!(r[1].gateway, Ipv4Addr::new(169, 254, 1, 1));
    }

    #[test]
    fn the_recovery_record_round_trips() {
        let pod = PodLink {
            name: "eth0".into(),
            mac: MacAddr::new([0x0a, 0x58, 0x0a, 0xf4, 0x01, 0x05]),
            mtu: 1450,
            addresses: vec![],
            addresses6: vec![],
            routes6: vec![],
            routes: vec![
                route([0, 0, 0, 0], 0, Some([169, 254, 1, 1])),
                route([169, 254, 1, 1], 32, None),
            ],
        };
        let alias = record(&pod, true);
        assert!(alias.len() <= ALIAS_MAX);
        let (link, mac, mtu, up, routes) = parse_record(&alias).unwrap();
        assert_eq!((link.as_str(), mac, mtu, up), ("eth0", pod.mac, 1450, true));
        assert_eq!(routes.len(), 2);
        assert_eq!(routes[0].gateway, Some(Ipv4Addr::new(169, 254, 1, 1)));
        assert_eq!(
            (routes[1].dst, routes[1].prefix, routes[1].gateway),
            (Ipv4Addr::new(169, 254, 1, 1), 32, None)
        );
        assert!(parse_record("someone else's alias").is_none());
        assert!(parse_record("vmm-bridge-binding eth0 nonsense").is_none());
        // Too many routes to fit: as many as fit are recorded.
        let many = PodLink {
            routes: (0..40)
                .map(|i| route([10, i, 0, 0], 16, Some([10, 0, 0, 1])))
                .collect(),
            ..pod
        };
        let alias = record(&many, false);
        assert!(alias.len() <= ALIAS_MAX, "{}", alias.len());
        assert!(parse_record(&alias).is_some());
    }

    #[test]
    fn the_ipv6_recovery_record_round_trips() {
        let routes = vec![
            Route6 {
                dst: Ipv6Addr::UNSPECIFIED,
                prefix: 0,
                gateway: Some("fe80::ecee:eeff:feee:eeee".parse().unwrap()),
                oif: None,
                protocol: 3,
                metric: None,
            },
            Route6 {
                dst: "fd00:30::".parse().unwrap(),
                prefix: 64,
                gateway: None,
                oif: None,
                protocol: 3,
                metric: None,
            },
        ];
        let alias = record6("eth0", &routes);
        assert_eq!(
            alias,
            "vmm-bridge-binding-ipv6 ::/0@fe80::ecee:eeff:feee:eeee fd00:30::/64"
        );
        assert_eq!(parse_record6(&alias), Some(routes));
        assert_eq!(parse_record6("vmm-bridge-binding-ipv6"), Some(vec![]));
        assert_eq!(parse_record6("vmm-bridge-binding-ipv6 x/1"), None);
        assert_eq!(parse_record6("something else"), None);
        let many: Vec<Route6> = (0..40u16)
            .map(|i| Route6 {
                dst: Ipv6Addr::new(0xfd00, i, 0, 0, 0, 0, 0, 0),
                prefix: 48,
                gateway: Some(Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, i)),
                oif: None,
                protocol: 3,
                metric: None,
            })
            .collect();
        assert!(record6("eth0", &many).len() <= ALIAS_MAX);
    }

    #[test]
    fn new_mac_keeps_the_oui() {
        let m = MacAddr::new([0x0a, 0x58, 0x0a, 1, 2, 3]);
        let n = new_mac(m);
        assert_eq!(n.octets()[..3], m.octets()[..3]);
        assert_ne!(n, m);
    }
}
