//! The pod's network in the guest: each interface the shim mirrored from
//! the pod's namespace (`CreateSandboxRequest.interfaces`) is found by its
//! MAC among the virtio-net devices, renamed, given its MTU and addresses,
//! brought up, and its routes are added. The containers of the pod share
//! this namespace (the VM's), like a pod's network namespace.
//!
//! The host chooses this configuration; in a confidential pod it is as
//! untrusted as the network itself (TLS and attestation do not depend on
//! it).

use std::net::IpAddr;

use cocoon_protocol::agent::{Interface, Neighbour, Route};
use futures::TryStreamExt;
use rtnetlink::packet_route::address::{AddressAttribute, AddressFlags};
use rtnetlink::packet_route::link::LinkAttribute;
use rtnetlink::{Handle, LinkUnspec, RouteMessageBuilder};

use crate::error::{Error, Result};

fn invalid(problem: String) -> Error {
    Error::InvalidArgument {
        field: "interfaces",
        problem,
    }
}

fn nl(step: String) -> impl FnOnce(rtnetlink::Error) -> Error {
    move |e| Error::FailedPrecondition(format!("{step}: {e}"))
}

/// `10.88.0.5/16` → address and prefix length, checked.
fn cidr(s: &str) -> Result<(IpAddr, u8)> {
    let (ip, len) = s
        .split_once('/')
        .ok_or_else(|| invalid(format!("{s:?} is not address/prefix")))?;
    let ip: IpAddr = ip
        .parse()
        .map_err(|_| invalid(format!("{s:?}: {ip:?} is not an IP address")))?;
    let max = if ip.is_ipv4() { 32 } else { 128 };
    let len: u8 = len
        .parse()
        .ok()
        .filter(|l| *l <= max)
        .ok_or_else(|| invalid(format!("{s:?}: the prefix length must be 0..={max}")))?;
    Ok((ip, len))
}

fn parse_mac(s: &str) -> Result<Vec<u8>> {
    let bytes: Option<Vec<u8>> = s
        .split(':')
        .map(|b| u8::from_str_radix(b, 16).ok().filter(|_| b.len() == 2))
        .collect();
    bytes
        .filter(|b| b.len() == 6)
        .ok_or_else(|| invalid(format!("{s:?} is not a MAC address")))
}

/// Checks every interface before anything is changed.
pub fn validate(ifaces: &[Interface]) -> Result<()> {
    for i in ifaces {
        parse_mac(&i.mac)?;
        if i.name.is_empty() || i.name.len() >= 16 || i.name.contains(['/', ' ', ':']) {
            return Err(invalid(format!("{:?} is not an interface name", i.name)));
        }
        if !(68..=65535).contains(&i.mtu) {
            return Err(invalid(format!(
                "{}: MTU {} is outside 68..=65535",
                i.name, i.mtu
            )));
        }
        for a in &i.addresses {
            cidr(a)?;
        }
        for r in &i.routes {
            route_parts(r)?;
        }
        for n in &i.neighbours {
            neighbour_parts(n)?;
        }
    }
    Ok(())
}

/// A neighbour entry's address and MAC, checked.
fn neighbour_parts(n: &Neighbour) -> Result<(IpAddr, Vec<u8>)> {
    let ip =
        n.ip.parse::<IpAddr>()
            .map_err(|_| invalid(format!("neighbour {:?} is not an IP address", n.ip)))?;
    Ok((ip, parse_mac(&n.mac)?))
}

/// A route's destination (address, prefix) and gateway.
type RouteParts = (Option<(IpAddr, u8)>, Option<IpAddr>);

fn route_parts(r: &Route) -> Result<RouteParts> {
    let dst = (!r.destination.is_empty())
        .then(|| cidr(&r.destination))
        .transpose()?;
    let gw = (!r.gateway.is_empty())
        .then(|| {
            r.gateway.parse::<IpAddr>().map_err(|_| {
                invalid(format!(
                    "route gateway {:?} is not an IP address",
                    r.gateway
                ))
            })
        })
        .transpose()?;
    if dst.is_none() && gw.is_none() {
        return Err(invalid("a route needs a destination or a gateway".into()));
    }
    if let (Some((d, _)), Some(g)) = (dst, gw) {
        if d.is_ipv4() != g.is_ipv4() {
            return Err(invalid(format!("route to {d} via {g} mixes IPv4 and IPv6")));
        }
    }
    Ok((dst, gw))
}

/// Configures `ifaces` (validated) in the guest's network namespace.
pub async fn configure(ifaces: &[Interface]) -> Result<()> {
    if ifaces.is_empty() {
        return Ok(());
    }
    let (conn, handle, _) = rtnetlink::new_connection()
        .map_err(|e| Error::FailedPrecondition(format!("open a netlink socket: {e}")))?;
    let task = tokio::spawn(conn);
    let r = configure_with(&handle, ifaces).await;
    task.abort();
    r
}

async fn configure_with(handle: &Handle, ifaces: &[Interface]) -> Result<()> {
    let mut links = Vec::new();
    let mut stream = handle.link().get().execute();
    while let Some(l) = stream.try_next().await.map_err(nl("list links".into()))? {
        links.push(l);
    }
    let mut indexes = Vec::new();
    for i in ifaces {
        let mac = parse_mac(&i.mac)?;
        let index = links
            .iter()
            .find(|l| {
                l.attributes
                    .iter()
                    .any(|a| matches!(a, LinkAttribute::Address(m) if *m == mac))
            })
            .map(|l| l.header.index)
            .ok_or_else(|| {
                Error::FailedPrecondition(format!(
                    "interface {} ({}): no network device with that MAC in the guest",
                    i.name, i.mac
                ))
            })?;
        handle
            .link()
            .set(
                LinkUnspec::new_with_index(index)
                    .down()
                    .name(i.name.clone())
                    .mtu(i.mtu)
                    .build(),
            )
            .execute()
            .await
            .map_err(nl(format!("set up interface {}", i.name)))?;
        for a in &i.addresses {
            let (ip, len) = cidr(a)?;
            let mut req = handle.address().add(index, ip, len);
            if ip.is_ipv6() {
                // The address passed duplicate detection when CNI gave it
                // to the pod's interface; probing again would leave it
                // tentative (unusable) for the first seconds of the pod.
                req.message_mut()
                    .attributes
                    .push(AddressAttribute::Flags(AddressFlags::Nodad));
            }
            req.execute()
                .await
                .map_err(nl(format!("add {a} to {}", i.name)))?;
        }
        handle
            .link()
            .set(LinkUnspec::new_with_index(index).up().build())
            .execute()
            .await
            .map_err(nl(format!("bring {} up", i.name)))?;
        for n in &i.neighbours {
            let (ip, mac) = neighbour_parts(n)?;
            handle
                .neighbours()
                .add(index, ip)
                .link_layer_address(&mac)
                .replace()
                .execute()
                .await
                .map_err(nl(format!("add neighbour {} on {}", n.ip, i.name)))?;
        }
        indexes.push(index);
    }
    for (i, index) in ifaces.iter().zip(indexes) {
        for r in &i.routes {
            let (dst, gw) = route_parts(r)?;
            let family_v4 = dst
                .map(|(d, _)| d.is_ipv4())
                .or(gw.map(|g| g.is_ipv4()))
                .unwrap_or(true);
            let bad = |e: &dyn std::fmt::Display| invalid(format!("route {r:?}: {e}"));
            let mut b = RouteMessageBuilder::<IpAddr>::new();
            b = match dst {
                Some((d, len)) => b.destination_prefix(d, len).map_err(|e| bad(&e))?,
                None if family_v4 => b
                    .destination_prefix(IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED), 0)
                    .map_err(|e| bad(&e))?,
                None => b
                    .destination_prefix(IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED), 0)
                    .map_err(|e| bad(&e))?,
            };
            if let Some(g) = gw {
                b = b.gateway(g).map_err(|e| bad(&e))?;
            }
            let mut b = b.output_interface(index);
            if r.onlink {
                b = b.onlink();
            }
            handle
                .route()
                .add(b.build())
                .replace()
                .execute()
                .await
                .map_err(nl(format!(
                    "add route {} via {} on {}",
                    if r.destination.is_empty() {
                        "default"
                    } else {
                        &r.destination
                    },
                    if r.gateway.is_empty() {
                        "the link"
                    } else {
                        &r.gateway
                    },
                    i.name
                )))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn iface(mac: &str, addrs: &[&str], routes: Vec<Route>) -> Interface {
        let mut i = Interface::new();
        i.name = "eth0".into();
        i.mac = mac.into();
        i.mtu = 1500;
        i.addresses = addrs.iter().map(|a| a.to_string()).collect();
        i.routes = routes;
        i
    }

    fn route(dst: &str, gw: &str) -> Route {
        let mut r = Route::new();
        r.destination = dst.into();
        r.gateway = gw.into();
        r
    }

    #[test]
    fn bad_interfaces_are_refused_before_anything_changes() {
        let ok = iface(
            "02:42:0a:58:00:05",
            &["10.88.0.5/16", "fd00::5/64"],
            vec![route("", "10.88.0.1"), route("192.168.7.0/24", "10.88.0.9")],
        );
        validate(std::slice::from_ref(&ok)).unwrap();
        for (bad, needle) in [
            (iface("02:42:0a:58:00", &[], vec![]), "not a MAC"),
            (iface("02:42:0a:58:00:zz", &[], vec![]), "not a MAC"),
            (
                iface("02:42:0a:58:00:05", &["10.88.0.5"], vec![]),
                "address/prefix",
            ),
            (
                iface("02:42:0a:58:00:05", &["10.88.0.5/33"], vec![]),
                "0..=32",
            ),
            (
                iface("02:42:0a:58:00:05", &[], vec![route("", "")]),
                "destination or a gateway",
            ),
            (
                iface(
                    "02:42:0a:58:00:05",
                    &[],
                    vec![route("10.0.0.0/8", "fd00::1")],
                ),
                "mixes",
            ),
        ] {
            let e = validate(&[bad]).unwrap_err().to_string();
            assert!(
                e.contains("interfaces") && e.contains(needle),
                "{needle}: {e}"
            );
        }
        for (ip, mac, needle) in [
            ("10.88.0.300", "02:00:00:00:00:77", "not an IP address"),
            ("10.88.0.77", "02:00:00:00:77", "not a MAC"),
        ] {
            let mut bad = ok.clone();
            let mut n = Neighbour::new();
            n.ip = ip.into();
            n.mac = mac.into();
            bad.neighbours.push(n);
            let e = validate(&[bad]).unwrap_err().to_string();
            assert!(e.contains(needle), "{needle}: {e}");
        }
        let mut bad = ok;
        bad.mtu = 10;
        assert!(validate(&[bad]).unwrap_err().to_string().contains("MTU"));
    }
}
