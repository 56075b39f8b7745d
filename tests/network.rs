//! Pod networking: a network namespace made the way CNI makes one (a veth
//! with an address and a default route) reaches the guest as virtio-net
//! with the same MAC, MTU, address and route; the pod answers HTTP from a
//! peer namespace; after the task is removed the namespace is as it was.
//! All traffic stays inside two namespaces this test creates.

use std::process::{Command, Output};
use std::time::{Duration, Instant};

use cocoon_tests::containerd::{out, Containerd, IMAGE, RUNTIME};
use cocoon_tests::{Env, Sandbox};

fn setup(test: &str) -> Option<(Env, Sandbox, Containerd)> {
    cocoon_tests::containerd::setup(test, &["default"])
}

fn sh(cmd: &str) -> Output {
    Command::new("sh").arg("-c").arg(cmd).output().unwrap()
}

/// A pod namespace with `eth0` (10.123.<n>.2/24, default route via .1) and
/// a peer namespace holding the other end (10.123.<n>.1/24). Removed on
/// drop.
struct Namespaces {
    pod: String,
    peer: String,
}

impl Namespaces {
    fn new(n: u32) -> Option<Self> {
        if !sh("command -v ip && command -v tc && command -v curl")
            .status
            .success()
        {
            return None;
        }
        let id = std::process::id();
        let ns = Self {
            pod: format!("cocoon-pod-{id}"),
            peer: format!("cocoon-peer-{id}"),
        };
        let (pod, peer) = (&ns.pod, &ns.peer);
        let o = sh(&format!(
            "set -e; ip netns add {pod}; ip netns add {peer}; \
             ip -n {pod} link add eth0 mtu 1400 type veth peer name p{n} netns {peer}; \
             ip -n {pod} link set eth0 address 02:42:0a:7b:00:02 up; ip -n {pod} link set lo up; \
             ip -n {pod} addr add 10.123.{n}.2/24 dev eth0; \
             ip -n {pod} route add default via 10.123.{n}.1; \
             ip -n {peer} link set p{n} mtu 1400 up; ip -n {peer} link set lo up; \
             ip -n {peer} addr add 10.123.{n}.1/24 dev p{n}"
        ));
        assert!(o.status.success(), "{}", out(&o));
        Some(ns)
    }

    fn pod_path(&self) -> String {
        format!("/var/run/netns/{}", self.pod)
    }
}

impl Drop for Namespaces {
    fn drop(&mut self) {
        sh(&format!(
            "ip netns del {}; ip netns del {}",
            self.pod, self.peer
        ));
    }
}

#[test]
fn a_pods_network_namespace_reaches_the_guest() {
    let test = "a_pods_network_namespace_reaches_the_guest";
    let Some((_env, sb, ctd)) = setup(test) else {
        return;
    };
    let Some(ns) = Namespaces::new(7) else {
        eprintln!("SKIP {test}: needs ip, tc and curl (iproute2, curl)");
        return;
    };
    let with_ns = format!("network:{}", ns.pod_path());
    let script = "ip -o link show eth0; ip -o -4 addr show eth0; ip route; \
                  mkdir -p /tmp/www && echo hello-from-the-pod > /tmp/www/index.html && \
                  exec httpd -f -p 8080 -h /tmp/www";
    let o = ctd
        .ctr(&[
            "run",
            "-d",
            "--runtime",
            RUNTIME,
            "--with-ns",
            &with_ns,
            IMAGE,
            "net1",
            "sh",
            "-c",
            script,
        ])
        .unwrap();
    assert!(o.status.success(), "{}", out(&o));
    ctd.wait_running("net1");
    // The pod's interface is mirrored to a tap with redirects both ways.
    let filters = sh(&format!("tc -n {} filter show dev eth0 ingress", ns.pod));
    let filters = String::from_utf8_lossy(&filters.stdout).into_owned();
    assert!(
        filters.contains("Redirect to device tap0_cocoon"),
        "{filters}"
    );

    // From the peer namespace, the pod's address answers (the guest's
    // httpd, through the tap and QEMU's virtio-net).
    let started = Instant::now();
    let body = loop {
        let o = sh(&format!(
            "ip netns exec {} curl -s --max-time 5 http://10.123.7.2:8080/index.html",
            ns.peer
        ));
        if o.status.success() {
            break String::from_utf8_lossy(&o.stdout).into_owned();
        }
        assert!(
            started.elapsed() < Duration::from_secs(90),
            "no answer from the pod: {}\n{}",
            out(&o),
            ctd.log()
        );
        std::thread::sleep(Duration::from_millis(500));
    };
    assert_eq!(body, "hello-from-the-pod\n");
    ctd.kill_and_remove("net1");
    ctd.assert_no_shims();
    sb.assert_clean();
    // The namespace is as CNI left it: no tap, no ingress qdisc, the
    // address still there.
    let links = sh(&format!("ip -n {} link show", ns.pod));
    assert!(!String::from_utf8_lossy(&links.stdout).contains("_cocoon"));
    let q = sh(&format!("tc -n {} qdisc show dev eth0", ns.pod));
    assert!(!String::from_utf8_lossy(&q.stdout).contains("ingress"));
    let a = sh(&format!("ip -n {} addr show eth0", ns.pod));
    assert!(String::from_utf8_lossy(&a.stdout).contains("10.123.7.2/24"));
}

#[test]
fn the_guest_sees_the_pods_address_mac_mtu_and_route() {
    let test = "the_guest_sees_the_pods_address_mac_mtu_and_route";
    let Some((_env, sb, ctd)) = setup(test) else {
        return;
    };
    let Some(ns) = Namespaces::new(8) else {
        eprintln!("SKIP {test}: needs ip, tc and curl (iproute2, curl)");
        return;
    };
    let with_ns = format!("network:{}", ns.pod_path());
    let o = ctd
        .ctr(&[
            "run",
            "--rm",
            "--runtime",
            RUNTIME,
            "--with-ns",
            &with_ns,
            IMAGE,
            "net2",
            "sh",
            "-c",
            "ip -o link show eth0; ip -o -4 addr show eth0; ip route; ping -c 1 -W 5 10.123.8.1 >/dev/null && echo ping-ok",
        ])
        .unwrap();
    assert!(o.status.success(), "{}", out(&o));
    let s = String::from_utf8_lossy(&o.stdout);
    for want in [
        "02:42:0a:7b:00:02",
        "mtu 1400",
        "10.123.8.2/24",
        "default via 10.123.8.1 dev eth0",
        "ping-ok",
    ] {
        assert!(s.contains(want), "{want}:\n{s}");
    }
    ctd.assert_no_shims();
    sb.assert_clean();

    // A namespace that does not exist: Create fails naming it.
    let o = ctd
        .ctr(&[
            "run",
            "--rm",
            "--runtime",
            RUNTIME,
            "--with-ns",
            "network:/var/run/netns/cocoon-no-such-ns",
            IMAGE,
            "net3",
            "true",
        ])
        .unwrap();
    assert!(!o.status.success());
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(e.contains("cocoon-no-such-ns"), "{e}");
    let _ = ctd.ctr(&["c", "rm", "net3"]);
    ctd.assert_no_shims();
    sb.assert_clean();
}
