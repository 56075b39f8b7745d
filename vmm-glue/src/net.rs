//! Pod networking, host side: the interfaces CNI made in the pod's network
//! namespace are mirrored into the VM (the approach Kata calls `tcfilter`).
//!
//! For each interface that is up and has an Ethernet address (veth,
//! macvlan, ipvlan...)
//! a tap `tap<N>_cocoon` is created in the same namespace and the two are
//! joined by tc ingress redirects both ways (`u32 match all` + `mirred
//! egress redirect`), so every frame that reaches the interface leaves
//! through the tap into QEMU's virtio-net device and back. The guest's
//! device gets the interface's MAC, MTU, addresses and routes (the agent
//! sets them), so the pod keeps the address CNI gave it and nothing outside
//! the namespace changes.
//!
//! The taps are not persistent: they disappear when QEMU (which holds
//! their fds) exits. [`unmirror`] removes the ingress qdiscs from the pod's
//! interfaces, so CNI's `DEL` finds them as it made them.
//!
//! Everything runs on a short-lived thread that entered the namespace, with
//! a netlink socket opened there; the calling thread's namespace never
//! changes.

use std::ffi::CString;
use std::fs::File;
use std::net::IpAddr;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use futures::TryStreamExt;
use rtnetlink::packet_route::address::AddressAttribute;
use rtnetlink::packet_route::link::{LinkAttribute, LinkFlags};
use rtnetlink::packet_route::neighbour::{NeighbourAddress, NeighbourAttribute, NeighbourState};
use rtnetlink::packet_route::route::{
    RouteAddress, RouteAttribute, RouteFlags, RouteProtocol, RouteType,
};
use rtnetlink::{Handle, LinkUnspec, RouteMessageBuilder};

/// Suffix of the taps Cocoon creates (Kata uses `_kata`).
pub const TAP_SUFFIX: &str = "_cocoon";

/// A route through one interface.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    /// Destination and prefix length; `None` for a default route.
    pub destination: Option<(IpAddr, u8)>,
    /// Next hop; `None` for a route on the link.
    pub gateway: Option<IpAddr>,
    /// `onlink`.
    pub onlink: bool,
}

/// One interface of the pod's namespace, as the guest must see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Interface {
    /// Name (eth0).
    pub name: String,
    /// Ethernet address.
    pub mac: [u8; 6],
    /// MTU.
    pub mtu: u32,
    /// Addresses and prefix lengths (IPv6 link-local left out).
    pub addresses: Vec<(IpAddr, u8)>,
    /// Routes through it in the main table, kernel-made ones left out.
    pub routes: Vec<Route>,
    /// Permanent neighbour entries on it (what a CNI plugin or an
    /// operator pinned; learned ones are the guest's to learn).
    pub neighbours: Vec<Neighbour>,
}

/// A permanent neighbour (ARP / NDP) entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Neighbour {
    /// The neighbour's IP address.
    pub ip: IpAddr,
    /// Its Ethernet address.
    pub mac: [u8; 6],
}

/// `aa:bb:cc:dd:ee:ff`.
pub fn mac_string(mac: &[u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

impl Interface {
    /// `aa:bb:cc:dd:ee:ff`.
    pub fn mac_string(&self) -> String {
        mac_string(&self.mac)
    }
}

/// An interface mirrored to a tap.
#[derive(Debug)]
pub struct Mirrored {
    /// The interface.
    pub interface: Interface,
    /// The tap's name in the namespace.
    pub tap_name: String,
    /// The tap's queues (one fd each), for QEMU's `-netdev tap,fds=`.
    pub taps: Vec<OwnedFd>,
}

/// What went wrong, and at which step.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// The namespace could not be entered.
    #[error("network namespace {path}: {source}; is the pod's network set up (CNI)?")]
    Namespace {
        /// Its path.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A netlink request failed.
    #[error("{step} in network namespace {path}: {source}")]
    Netlink {
        /// What was being done.
        step: String,
        /// The namespace.
        path: PathBuf,
        /// Why.
        #[source]
        source: rtnetlink::Error,
    },
    /// A system call failed.
    #[error("{step} in network namespace {path}: {source}")]
    Io {
        /// What was being done.
        step: String,
        /// The namespace.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The namespace has nothing a VM could be given.
    #[error("network namespace {path} has {problem}")]
    Unsupported {
        /// The namespace.
        path: PathBuf,
        /// What.
        problem: String,
    },
}

/// Runs `f` with a netlink handle on a thread inside the namespace at
/// `path`.
fn in_namespace<T: Send>(
    path: &Path,
    f: impl AsyncFnOnce(Handle, &Path) -> Result<T, NetError> + Send,
) -> Result<T, NetError> {
    let ns = File::open(path).map_err(|source| NetError::Namespace {
        path: path.to_path_buf(),
        source,
    })?;
    let io = |step: &str, source: std::io::Error| NetError::Io {
        step: step.into(),
        path: path.to_path_buf(),
        source,
    };
    std::thread::scope(|s| {
        s.spawn(|| {
            nix::sched::setns(ns.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET).map_err(|e| {
                NetError::Namespace {
                    path: path.to_path_buf(),
                    source: e.into(),
                }
            })?;
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| io("start a runtime", e))?;
            rt.block_on(async {
                let (conn, handle, _) =
                    rtnetlink::new_connection().map_err(|e| io("open a netlink socket", e))?;
                let task = tokio::spawn(conn);
                let r = f(handle, path).await;
                task.abort();
                r
            })
        })
        .join()
        .unwrap_or_else(|_| Err(io("network thread", std::io::Error::other("panicked"))))
    })
}

fn nl(path: &Path, step: impl Into<String>) -> impl FnOnce(rtnetlink::Error) -> NetError + '_ {
    let step = step.into();
    move |source| NetError::Netlink {
        step,
        path: path.to_path_buf(),
        source,
    }
}

/// `ifreq` for `TUNSETIFF`.
#[repr(C)]
struct IfReq {
    name: [u8; libc::IFNAMSIZ],
    flags: libc::c_short,
    _pad: [u8; 22],
}

/// `TUNSETIFF`: `_IOW('T', 202, int)`.
const TUNSETIFF: libc::c_ulong = 0x4004_54ca;

/// Opens `/dev/net/tun` as the tap `name` (created in this thread's
/// namespace by the first open; gone when the last fd closes). With
/// `multi_queue` each open attaches one more queue to the same tap.
fn open_tap(name: &str, multi_queue: bool) -> std::io::Result<OwnedFd> {
    let path = CString::new("/dev/net/tun").map_err(std::io::Error::other)?;
    // SAFETY: a valid C string; the fd is owned below.
    let fd = unsafe { libc::open(path.as_ptr(), libc::O_RDWR | libc::O_CLOEXEC) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `open` just returned this fd and nothing else owns it.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    // The IFF_* flags of ifr_flags are 16-bit by definition.
    #[allow(clippy::cast_possible_truncation)]
    let mut req = IfReq {
        name: [0; libc::IFNAMSIZ],
        flags: (libc::IFF_TAP
            | libc::IFF_NO_PI
            | libc::IFF_VNET_HDR
            | if multi_queue {
                libc::IFF_MULTI_QUEUE
            } else {
                0
            }) as libc::c_short,
        _pad: [0; 22],
    };
    let bytes = name.as_bytes();
    if bytes.len() >= libc::IFNAMSIZ {
        return Err(std::io::Error::other(format!(
            "tap name {name:?} is too long"
        )));
    }
    req.name[..bytes.len()].copy_from_slice(bytes);
    // SAFETY: TUNSETIFF reads and writes an ifreq, which `req` is.
    if unsafe { libc::ioctl(fd.as_raw_fd(), TUNSETIFF, &mut req as *mut IfReq) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(fd)
}

fn is_link_local_v6(a: &IpAddr) -> bool {
    matches!(a, IpAddr::V6(v6) if (v6.segments()[0] & 0xffc0) == 0xfe80)
}

fn route_ip(a: &RouteAddress) -> Option<IpAddr> {
    match a {
        RouteAddress::Inet(v4) => Some(IpAddr::V4(*v4)),
        RouteAddress::Inet6(v6) => Some(IpAddr::V6(*v6)),
        _ => None,
    }
}

/// The routes of the main table through `index`, kernel-made ones left out.
async fn routes_of(handle: &Handle, path: &Path, index: u32) -> Result<Vec<Route>, NetError> {
    let mut out = Vec::new();
    for query in [
        RouteMessageBuilder::<std::net::Ipv4Addr>::new().build(),
        RouteMessageBuilder::<std::net::Ipv6Addr>::new().build(),
    ] {
        let mut routes = handle.route().get(query).execute();
        while let Some(r) = routes.try_next().await.map_err(nl(path, "list routes"))? {
            let h = &r.header;
            if h.table != 254 || h.protocol == RouteProtocol::Kernel || h.kind != RouteType::Unicast
            {
                continue;
            }
            let mut oif = None;
            let mut dst = None;
            let mut gateway = None;
            for a in &r.attributes {
                match a {
                    RouteAttribute::Oif(i) => oif = Some(*i),
                    RouteAttribute::Destination(d) => dst = route_ip(d),
                    RouteAttribute::Gateway(g) => gateway = route_ip(g),
                    _ => {}
                }
            }
            if oif != Some(index) {
                continue;
            }
            if let Some(d) = dst {
                if is_link_local_v6(&d)
                    || matches!(d, IpAddr::V6(v6) if v6.segments()[0] & 0xff00 == 0xff00)
                {
                    continue;
                }
            }
            out.push(Route {
                destination: dst.map(|d| (d, h.destination_prefix_length)),
                gateway,
                onlink: h.flags.contains(RouteFlags::Onlink),
            });
        }
    }
    Ok(out)
}

/// The permanent neighbour entries on link `index`.
async fn neighbours_of(
    handle: &Handle,
    path: &Path,
    index: u32,
) -> Result<Vec<Neighbour>, NetError> {
    let mut out = Vec::new();
    let mut stream = handle.neighbours().get().execute();
    while let Some(n) = stream
        .try_next()
        .await
        .map_err(nl(path, "list neighbours"))?
    {
        if n.header.ifindex != index || n.header.state != NeighbourState::Permanent {
            continue;
        }
        let mut ip = None;
        let mut mac = None;
        for a in &n.attributes {
            match a {
                NeighbourAttribute::Destination(NeighbourAddress::Inet(v4)) => {
                    ip = Some(IpAddr::V4(*v4));
                }
                NeighbourAttribute::Destination(NeighbourAddress::Inet6(v6)) => {
                    ip = Some(IpAddr::V6(*v6));
                }
                NeighbourAttribute::LinkLayerAddress(m) => {
                    mac = <[u8; 6]>::try_from(m.as_slice()).ok();
                }
                _ => {}
            }
        }
        if let (Some(ip), Some(mac)) = (ip, mac) {
            out.push(Neighbour { ip, mac });
        }
    }
    Ok(out)
}

/// Mirrors every interface of the namespace at `netns` that is up into a
/// tap. An interface without an Ethernet address (a tunnel, say) cannot
/// become a virtio-net device: that is an error naming it, with nothing
/// left behind. A namespace with no interface up but `lo` gives an empty
/// list. Each tap gets `queues` queues (multiqueue when more than one: one
/// per vCPU lets the guest spread the interface's load).
pub fn mirror(netns: &Path, queues: u32) -> Result<Vec<Mirrored>, NetError> {
    in_namespace(netns, async |handle: Handle, path: &Path| {
        let mut links = Vec::new();
        let mut stream = handle.link().get().execute();
        while let Some(l) = stream.try_next().await.map_err(nl(path, "list links"))? {
            links.push(l);
        }
        let taken = links
            .iter()
            .flat_map(|l| &l.attributes)
            .find_map(|a| match a {
                LinkAttribute::IfName(n) if n.ends_with(TAP_SUFFIX) => Some(n.clone()),
                _ => None,
            });
        if let Some(name) = taken {
            return Err(NetError::Unsupported {
                path: path.to_path_buf(),
                problem: format!("a tap {name} already: another VM uses this namespace"),
            });
        }
        let mut out: Vec<Mirrored> = Vec::new();
        let result = async {
            for l in &links {
                // lo, and what CNI did not bring up: the fallback devices
                // a tunnel module adds to every namespace (tunl0, gre0,
                // sit0...) stay down.
                if l.header.flags.contains(LinkFlags::Loopback)
                    || !l.header.flags.contains(LinkFlags::Up)
                {
                    continue;
                }
                let mut name = String::new();
                let mut mac = None;
                let mut mtu = 1500;
                for a in &l.attributes {
                    match a {
                        LinkAttribute::IfName(n) => name = n.clone(),
                        LinkAttribute::Address(m) => mac = <[u8; 6]>::try_from(m.as_slice()).ok(),
                        LinkAttribute::Mtu(m) => mtu = *m,
                        _ => {}
                    }
                }
                let Some(mac) = mac else {
                    return Err(NetError::Unsupported {
                        path: path.to_path_buf(),
                        problem: format!("interface {name} without an Ethernet address, which a VM cannot be given (tcfilter mirrors veth, macvlan, ipvlan and other Ethernet links)"),
                    });
                };
                let index = l.header.index;
                let mut addresses = Vec::new();
                let mut addrs = handle.address().get().set_link_index_filter(index).execute();
                while let Some(a) = addrs.try_next().await.map_err(nl(path, "list addresses"))? {
                    let ip = a.attributes.iter().find_map(|x| match x {
                        AddressAttribute::Address(ip) => Some(*ip),
                        _ => None,
                    });
                    if let Some(ip) = ip.filter(|ip| !is_link_local_v6(ip)) {
                        addresses.push((ip, a.header.prefix_len));
                    }
                }
                let routes = routes_of(&handle, path, index).await?;
                let neighbours = neighbours_of(&handle, path, index).await?;
                let tap_name = format!("tap{}{TAP_SUFFIX}", out.len());
                let taps = (0..queues.max(1))
                    .map(|q| {
                        open_tap(&tap_name, queues > 1).map_err(|source| NetError::Io {
                            step: format!("create tap {tap_name} (queue {q})"),
                            path: path.to_path_buf(),
                            source,
                        })
                    })
                    .collect::<Result<Vec<_>, _>>()?;
                let mirrored = Mirrored {
                    interface: Interface { name: name.clone(), mac, mtu, addresses, routes, neighbours },
                    tap_name: tap_name.clone(),
                    taps,
                };
                out.push(mirrored);
                let tap_index = link_index(&handle, path, &tap_name).await?;
                handle
                    .link()
                    .set(LinkUnspec::new_with_index(tap_index).mtu(mtu).up().build())
                    .execute()
                    .await
                    .map_err(nl(path, format!("set {tap_name} up")))?;
                for (from, to, what) in [(index, tap_index, &name), (tap_index, index, &tap_name)] {
                    handle
                        .qdisc()
                        .add(i32::try_from(from).unwrap_or(i32::MAX))
                        .ingress()
                        .execute()
                        .await
                        .map_err(nl(path, format!("add an ingress qdisc to {what}")))?;
                    handle
                        .traffic_filter(i32::try_from(from).unwrap_or(i32::MAX))
                        .add()
                        .parent(0xffff_0000)
                        .protocol(0x0003_u16.to_be()) // ETH_P_ALL in network byte order (`protocol all`)
                        .redirect(to)
                        .map_err(nl(path, format!("redirect {what}")))?
                        .execute()
                        .await
                        .map_err(nl(path, format!("redirect {what}")))?;
                }
            }
            Ok(())
        }
        .await;
        if let Err(e) = result {
            let names: Vec<String> = out.iter().map(|m| m.interface.name.clone()).collect();
            drop(out);
            remove_ingress(&handle, &names).await;
            return Err(e);
        }
        Ok(out)
    })
}

async fn link_index(handle: &Handle, path: &Path, name: &str) -> Result<u32, NetError> {
    handle
        .link()
        .get()
        .match_name(name.to_string())
        .execute()
        .try_next()
        .await
        .map_err(nl(path, format!("find {name}")))?
        .map(|l| l.header.index)
        .ok_or_else(|| NetError::Unsupported {
            path: path.to_path_buf(),
            problem: format!("no link {name}"),
        })
}

/// Removes the ingress qdiscs (and with them the redirects) from `names`;
/// errors are ignored (a link may be gone).
async fn remove_ingress(handle: &Handle, names: &[String]) {
    for name in names {
        let Ok(Some(l)) = handle
            .link()
            .get()
            .match_name(name.clone())
            .execute()
            .try_next()
            .await
        else {
            continue;
        };
        let mut req = handle
            .qdisc()
            .del(i32::try_from(l.header.index).unwrap_or(i32::MAX));
        req.message_mut().header.parent = rtnetlink::packet_route::tc::TcHandle::INGRESS;
        let _ = req.execute().await;
    }
}

/// Undoes [`mirror`] on the pod's interfaces once QEMU is gone (its taps
/// went with it). A namespace that is gone already is fine: CNI deleted it.
pub fn unmirror(netns: &Path, interfaces: &[String]) -> Result<(), NetError> {
    if !netns.exists() {
        return Ok(());
    }
    in_namespace(netns, async |handle: Handle, _path: &Path| {
        remove_ingress(&handle, interfaces).await;
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sh(cmd: &str) -> std::process::Output {
        std::process::Command::new("sh")
            .arg("-c")
            .arg(cmd)
            .output()
            .unwrap()
    }

    /// A namespace with a veth, addresses and routes like CNI's bridge
    /// plugin makes: mirrored, the tap and both redirects exist; unmirrored
    /// (and the tap's fd closed), nothing of Cocoon's is left. Needs root
    /// and iproute2; skipped with the reason otherwise.
    #[test]
    fn a_cni_namespace_is_mirrored_and_restored() {
        if !nix::unistd::geteuid().is_root()
            || !sh("command -v ip && command -v tc").status.success()
        {
            eprintln!("SKIP a_cni_namespace_is_mirrored_and_restored: needs root, ip and tc");
            return;
        }
        let ns = format!("cocoon-nettest-{}", std::process::id());
        let setup = format!(
            "set -e; ip netns add {ns}; ip -n {ns} link add eth0 type veth peer name peer0; \
             ip -n {ns} link set eth0 address 02:42:0a:58:00:05 mtu 1450 up; ip -n {ns} link set peer0 up; \
             ip -n {ns} addr add 10.88.0.5/16 dev eth0; ip -n {ns} addr add fd00::5/64 dev eth0 nodad; \
             ip -n {ns} route add default via 10.88.0.1 dev eth0; \
             ip -n {ns} route add 192.168.7.0/24 via 10.88.0.9 dev eth0; \
             ip -n {ns} neigh add 10.88.0.77 lladdr 02:00:00:00:00:77 dev eth0 nud permanent; \
             ip -n {ns} tuntap add mode tap name down0"
        );
        let o = sh(&setup);
        let path = PathBuf::from(format!("/var/run/netns/{ns}"));
        let result = std::panic::catch_unwind(|| {
            assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
            let m = mirror(&path, 2).unwrap();
            // peer0 is in the namespace too (a test artefact): two links;
            // down0 is down and left alone.
            assert_eq!(m.len(), 2, "{m:?}");
            let eth0 = m.iter().find(|m| m.interface.name == "eth0").unwrap();
            assert_eq!(eth0.interface.mac_string(), "02:42:0a:58:00:05");
            assert_eq!(eth0.interface.mtu, 1450);
            assert!(eth0
                .interface
                .addresses
                .contains(&("10.88.0.5".parse().unwrap(), 16)));
            assert!(eth0
                .interface
                .addresses
                .contains(&("fd00::5".parse().unwrap(), 64)));
            assert!(eth0.interface.routes.contains(&Route {
                destination: None,
                gateway: Some("10.88.0.1".parse().unwrap()),
                onlink: false
            }));
            assert!(eth0.interface.routes.contains(&Route {
                destination: Some(("192.168.7.0".parse().unwrap(), 24)),
                gateway: Some("10.88.0.9".parse().unwrap()),
                onlink: false
            }));
            assert_eq!(
                eth0.interface.neighbours,
                vec![Neighbour {
                    ip: "10.88.0.77".parse().unwrap(),
                    mac: [2, 0, 0, 0, 0, 0x77]
                }]
            );
            // Two queues: one tap with multi_queue and two fds attached.
            assert_eq!(eth0.taps.len(), 2);
            let tap = sh(&format!("ip -d -n {ns} link show {}", eth0.tap_name));
            let tap = String::from_utf8_lossy(&tap.stdout);
            assert!(
                tap.contains("multi_queue") && tap.contains("numqueues 2"),
                "{tap}"
            );
            let filters = sh(&format!("tc -n {ns} filter show dev eth0 ingress"));
            let filters = String::from_utf8_lossy(&filters.stdout);
            assert!(
                filters.contains(&format!("Redirect to device {}", eth0.tap_name)),
                "{filters}"
            );
            assert!(filters.contains("protocol all"), "{filters}");
            let tapf = sh(&format!(
                "tc -n {ns} filter show dev {} ingress",
                eth0.tap_name
            ));
            assert!(String::from_utf8_lossy(&tapf.stdout).contains("Redirect to device eth0"));
            let link = sh(&format!("ip -n {ns} link show {}", eth0.tap_name));
            let link = String::from_utf8_lossy(&link.stdout);
            assert!(link.contains("mtu 1450") && link.contains("UP"), "{link}");
            // A second mirror of the same namespace is refused.
            let e = mirror(&path, 1).unwrap_err().to_string();
            assert!(e.contains("another VM uses this namespace"), "{e}");
            let names: Vec<String> = m.iter().map(|m| m.interface.name.clone()).collect();
            drop(m);
            unmirror(&path, &names).unwrap();
            let qdiscs = sh(&format!("tc -n {ns} qdisc show dev eth0"));
            assert!(!String::from_utf8_lossy(&qdiscs.stdout).contains("ingress"));
            let links = sh(&format!("ip -n {ns} link show"));
            assert!(!String::from_utf8_lossy(&links.stdout).contains(TAP_SUFFIX));
            // The namespace's own configuration is untouched.
            let addrs = sh(&format!("ip -n {ns} addr show eth0"));
            assert!(String::from_utf8_lossy(&addrs.stdout).contains("10.88.0.5/16"));
            // An interface that is up without an Ethernet address (an L3
            // tun here) cannot be mirrored: refused naming it, and what was
            // done for the others is undone.
            let o = sh(&format!(
                "ip -n {ns} tuntap add mode tun name tun9 && ip -n {ns} link set tun9 up"
            ));
            assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
            let e = mirror(&path, 1).unwrap_err().to_string();
            assert!(e.contains("tun9") && e.contains("Ethernet"), "{e}");
            let links = sh(&format!("ip -n {ns} link show"));
            assert!(!String::from_utf8_lossy(&links.stdout).contains(TAP_SUFFIX));
            let qdiscs = sh(&format!("tc -n {ns} qdisc show"));
            assert!(
                !String::from_utf8_lossy(&qdiscs.stdout).contains("ingress"),
                "{}",
                String::from_utf8_lossy(&qdiscs.stdout)
            );
        });
        sh(&format!("ip netns del {ns}"));
        result.unwrap();
        let e = mirror(Path::new("/var/run/netns/cocoon-no-such-ns"), 1)
            .unwrap_err()
            .to_string();
        assert!(e.contains("cocoon-no-such-ns") && e.contains("CNI"), "{e}");
        assert!(unmirror(Path::new("/var/run/netns/cocoon-no-such-ns"), &[]).is_ok());
    }
}
