//! Pod networking: a network namespace made the way CNI makes one (a veth
//! with an address and a default route) reaches the guest as virtio-net
//! with the same MAC, MTU, address and route; the pod answers HTTP from a
//! peer namespace; after the task is removed the namespace is as it was.
//! All traffic stays inside two namespaces this test creates.

use std::process::{Command, Output};
use std::time::{Duration, Instant};

use base64::Engine;

use cocoon_tests::containerd::{out, Containerd, Flavor, IMAGE, RUNTIME};
use cocoon_tests::cri::{connect, container_config, exec_out, pod_network_sandbox_config};
use cocoon_tests::{Env, Sandbox};
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use k8s_cri::v1::*;
use tonic::transport::Channel;

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
        Self::make(n, false)
    }

    /// The same with IPv6 only: `fd00:7b:<n>::2/64` in the pod,
    /// `fd00:7b:<n>::1/64` in the peer, no IPv4 address anywhere.
    fn ipv6_only(n: u32) -> Option<Self> {
        Self::make(n, true)
    }

    fn make(n: u32, ipv6: bool) -> Option<Self> {
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
        let addresses = if ipv6 {
            format!(
                "ip -n {pod} addr add fd00:7b:{n}::2/64 dev eth0 nodad; \
                 ip -n {pod} route add default via fd00:7b:{n}::1; \
                 ip -n {peer} addr add fd00:7b:{n}::1/64 dev p{n} nodad"
            )
        } else {
            format!(
                "ip -n {pod} addr add 10.123.{n}.2/24 dev eth0; \
                 ip -n {pod} route add default via 10.123.{n}.1; \
                 ip -n {pod} neigh add 10.123.{n}.77 lladdr 02:00:00:00:00:77 dev eth0 nud permanent; \
                 ip -n {peer} addr add 10.123.{n}.1/24 dev p{n}"
            )
        };
        let o = sh(&format!(
            "set -e; ip netns add {pod}; ip netns add {peer}; \
             ip -n {pod} link add eth0 mtu 1400 type veth peer name p{n} netns {peer}; \
             ip -n {pod} link set eth0 address 02:42:0a:7b:00:02 up; ip -n {pod} link set lo up; \
             ip -n {peer} link set p{n} mtu 1400 up; ip -n {peer} link set lo up; \
             {addresses}"
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
    let body = curl_in(&ns.peer, "http://10.123.7.2:8080/index.html", &ctd);
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
            // One CPU for the container: a VM of two vCPUs, so the
            // interface gets two queues.
            "--cpus",
            "1",
            IMAGE,
            "net2",
            "sh",
            "-c",
            "ip -o link show eth0; ip -o -4 addr show eth0; ip route; ping -c 1 -W 5 10.123.8.1 >/dev/null && echo ping-ok; \
             echo queues $(ls /sys/class/net/eth0/queues); ip neigh show 10.123.8.77",
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
        "queues rx-0 rx-1 tx-0 tx-1",
    ] {
        assert!(s.contains(want), "{want}:\n{s}");
    }
    // The permanent neighbour entry of the pod's namespace.
    let neigh = s
        .lines()
        .find(|l| l.starts_with("10.123.8.77 "))
        .unwrap_or_default();
    assert!(
        neigh.contains("lladdr 02:00:00:00:00:77") && neigh.ends_with("PERMANENT"),
        "{s}"
    );
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

#[test]
fn an_ipv6_only_pod_network_reaches_the_guest() {
    let test = "an_ipv6_only_pod_network_reaches_the_guest";
    let Some((_env, sb, ctd)) = setup(test) else {
        return;
    };
    let Some(ns) = Namespaces::ipv6_only(9) else {
        eprintln!("SKIP {test}: needs ip, tc and curl (iproute2, curl)");
        return;
    };
    let with_ns = format!("network:{}", ns.pod_path());
    let script = "ip -o -6 addr show eth0; ip -6 route; ip -o -4 addr show eth0; \
                  mkdir -p /tmp/www && echo hello-over-ipv6 > /tmp/www/index.html && \
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
            "net6",
            "sh",
            "-c",
            script,
        ])
        .unwrap();
    assert!(o.status.success(), "{}", out(&o));
    ctd.wait_running("net6");
    // The peer reaches the guest's httpd over IPv6 alone.
    let body = curl_in(&ns.peer, "http://[fd00:7b:9::2]:8080/index.html", &ctd);
    assert_eq!(body, "hello-over-ipv6\n");
    // What the guest configured: the IPv6 address (usable at once, not
    // tentative), the default route, and no IPv4 address.
    let o = ctd
        .ctr(&["task", "exec", "--exec-id", "look", "net6", "sh", "-c",
               "ip -o -6 addr show eth0 scope global; ip -6 route show default; ip -o -4 addr show eth0"])
        .unwrap();
    let seen = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(seen.contains("inet6 fd00:7b:9::2/64"), "{seen}");
    assert!(!seen.contains("tentative"), "{seen}");
    assert!(seen.contains("default via fd00:7b:9::1 dev eth0"), "{seen}");
    assert!(!seen.contains("inet "), "no IPv4 address: {seen}");
    ctd.kill_and_remove("net6");
    ctd.assert_no_shims();
    sb.assert_clean();
    let links = sh(&format!("ip -n {} link show", ns.pod));
    assert!(!String::from_utf8_lossy(&links.stdout).contains("_cocoon"));
}

/// `curl` of `url` from the `ip netns` namespace `netns`, retried for up to
/// 90 s while the pod's server starts; its body.
fn curl_in(netns: &str, url: &str, ctd: &Containerd) -> String {
    let started = Instant::now();
    loop {
        let o = sh(&format!(
            "ip netns exec {netns} curl -s -g --max-time 5 '{url}'"
        ));
        if o.status.success() {
            return String::from_utf8_lossy(&o.stdout).into_owned();
        }
        assert!(
            started.elapsed() < Duration::from_secs(90),
            "no answer from {url} in {netns}: {}\n{}",
            out(&o),
            ctd.log()
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// A pod's IP as CRI reports it.
async fn pod_ip(cri: &mut RuntimeServiceClient<Channel>, pod: &str) -> String {
    cri.pod_sandbox_status(PodSandboxStatusRequest {
        pod_sandbox_id: pod.into(),
        verbose: false,
    })
    .await
    .unwrap()
    .into_inner()
    .status
    .and_then(|s| s.network)
    .map(|n| n.ip)
    .unwrap_or_default()
}

/// Starts a pod on `handler` whose container serves `hello-from-<name>` on
/// port 8080; returns the pod and container IDs.
async fn web_pod(
    cri: &mut RuntimeServiceClient<Channel>,
    ctd: &Containerd,
    name: &str,
    handler: &str,
) -> (String, String) {
    let logs = ctd.dir.path().join(format!("logs-{name}"));
    std::fs::create_dir_all(&logs).unwrap();
    let config = PodSandboxConfig {
        hostname: name.into(),
        log_directory: logs.display().to_string(),
        dns_config: Some(DnsConfig {
            servers: vec!["10.124.1.53".into()],
            searches: vec!["cocoon.test".into()],
            options: vec!["ndots:2".into()],
        }),
        ..pod_network_sandbox_config(name, "default")
    };
    let pod = cri
        .run_pod_sandbox(RunPodSandboxRequest {
            config: Some(config.clone()),
            runtime_handler: handler.into(),
        })
        .await
        .unwrap_or_else(|e| panic!("RunPodSandbox {name}: {e}\n{}", ctd.log()))
        .into_inner()
        .pod_sandbox_id;
    let script = format!(
        "mkdir -p /tmp/www && echo hello-from-{name} > /tmp/www/index.html && \
         exec httpd -f -p 8080 -h /tmp/www"
    );
    let id = cri
        .create_container(CreateContainerRequest {
            pod_sandbox_id: pod.clone(),
            config: Some(container_config("web", &script)),
            sandbox_config: Some(config),
        })
        .await
        .unwrap_or_else(|e| panic!("CreateContainer {name}: {e}"))
        .into_inner()
        .container_id;
    cri.start_container(StartContainerRequest {
        container_id: id.clone(),
    })
    .await
    .unwrap_or_else(|e| panic!("StartContainer {name}: {e}"));
    (pod, id)
}

/// `wget` of `http://<ip>:8080/` from the container `id`, retried while the
/// server is still starting (bounded by `timeout`: busybox 1.35's `wget -T`
/// crashes).
async fn fetch_from(cri: &mut RuntimeServiceClient<Channel>, id: &str, ip: &str) -> String {
    let started = Instant::now();
    loop {
        let o = exec_out(
            cri,
            id,
            &format!("timeout 10 wget -q -O - http://{ip}:8080/index.html"),
        )
        .await;
        if o.starts_with("hello-from-") || started.elapsed() > Duration::from_secs(60) {
            return o;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cri_pods_on_a_cni_bridge_reach_each_other_and_the_node() {
    cni_pods(
        "cri_pods_on_a_cni_bridge_reach_each_other_and_the_node",
        Flavor::system(),
    )
    .await;
}

/// The same through containerd 2.x's CRI (its `bin_dirs` CNI setting and
/// its own runc shim for the runc pod).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cri_pods_on_a_cni_bridge_with_containerd_2() {
    cni_pods("cri_pods_on_a_cni_bridge_with_containerd_2", Flavor::v2()).await;
}

/// Two Cocoon pods and a runc pod on a CNI bridge, through `flavor`'s CRI.
async fn cni_pods(test: &str, flavor: Option<Flavor>) {
    let Some(env) = cocoon_tests::env_or_skip(test) else {
        return;
    };
    let Some(flavor) = flavor else {
        eprintln!("SKIP {test}: that containerd is not installed (make deps)");
        return;
    };
    if !sh("command -v ip && command -v curl").status.success() {
        eprintln!("SKIP {test}: needs ip and curl (iproute2, curl)");
        return;
    }
    let sb = Sandbox::new(&env, |_| {});
    let Some(ctd) = tokio::task::block_in_place(|| {
        Containerd::start_with_cni(&env, &sb, flavor, &["k8s.io"], 1)
    }) else {
        eprintln!("SKIP {test}: no CNI node network");
        return;
    };
    let node = ctd.node.as_ref().unwrap();
    let mut cri = connect(ctd.cri_socket().to_path_buf()).await;

    // Two Cocoon pods and a runc pod on the same bridge.
    let mut pods = Vec::new();
    for (name, handler) in [("pod-a", "cocoon"), ("pod-b", "cocoon"), ("pod-r", "runc")] {
        let (pod, id) = web_pod(&mut cri, &ctd, name, handler).await;
        let ip = pod_ip(&mut cri, &pod).await;
        assert!(
            ip.starts_with("10.124.1."),
            "{name}: CNI address {ip:?} in {}",
            node.subnet
        );
        pods.push((name, pod, id, ip));
    }
    let qemus = sb
        .leftover_processes()
        .iter()
        .filter(|p| p.contains("qemu-system"))
        .count();
    assert_eq!(qemus, 2, "one VM per Cocoon pod");

    // The Cocoon pod's container sees the CNI interface: the address CRI
    // reports, and the default route through the bridge.
    let (_, _, a_id, a_ip) = &pods[0];
    let seen = exec_out(&mut cri, a_id, "ip -o -4 addr show eth0; ip route").await;
    for want in [
        format!("inet {a_ip}/24"),
        format!("default via {} dev eth0", node.gateway),
    ] {
        assert!(seen.contains(&want), "{want}:\n{seen}");
    }

    // The node reaches every pod.
    for (name, _, _, ip) in &pods {
        let url = format!("http://{ip}:8080/index.html");
        let body = tokio::task::block_in_place(|| curl_in(&node.netns, &url, &ctd));
        assert_eq!(body, format!("hello-from-{name}\n"), "node → {name}");
    }
    // Every pod reaches every other (Cocoon ↔ Cocoon, Cocoon ↔ runc).
    for (from, _, id, _) in &pods {
        for (to, _, _, ip) in &pods {
            if from != to {
                assert_eq!(
                    fetch_from(&mut cri, id, ip).await,
                    format!("hello-from-{to}\n"),
                    "{from} → {to}"
                );
            }
        }
    }
    // DNS and hosts files are CRI's, as in the runc pod.
    let files = "cat /etc/resolv.conf; cat /etc/hostname";
    let cocoon = exec_out(&mut cri, a_id, files).await;
    let runc = exec_out(&mut cri, &pods[2].2, files).await;
    assert_eq!(
        cocoon.replace("pod-a", "NAME"),
        runc.replace("pod-r", "NAME"),
        "resolv.conf and hostname as in a runc pod"
    );
    assert!(
        cocoon.contains("nameserver 10.124.1.53")
            && cocoon.contains("search cocoon.test")
            && cocoon.contains("options ndots:2"),
        "{cocoon}"
    );

    for (_, pod, _, _) in &pods {
        cri.stop_pod_sandbox(StopPodSandboxRequest {
            pod_sandbox_id: pod.clone(),
        })
        .await
        .unwrap();
        cri.remove_pod_sandbox(RemovePodSandboxRequest {
            pod_sandbox_id: pod.clone(),
        })
        .await
        .unwrap();
    }
    tokio::task::block_in_place(|| {
        ctd.assert_no_shims();
        sb.assert_clean();
    });
    // CNI's DEL ran for every pod: no address leased, no port left on the
    // bridge, no pod namespace left.
    assert_eq!(node.leases(), Vec::<String>::new(), "host-local leases");
    let ports = node.sh("ip -o link show master cbr0");
    assert_eq!(String::from_utf8_lossy(&ports.stdout), "", "bridge ports");
    for (name, pod, _, _) in &pods {
        let left = sh(&format!("grep -l {pod} /proc/mounts || true"));
        assert!(
            left.stdout.is_empty(),
            "{name}: a mount still names the pod"
        );
    }
}

#[test]
fn the_kbs_is_reached_over_the_pod_network() {
    let test = "the_kbs_is_reached_over_the_pod_network";
    let Some(env) = cocoon_tests::env_or_skip(test) else {
        return;
    };
    let Some(flavor) = Flavor::system() else {
        eprintln!("SKIP {test}: containerd is not installed (make deps)");
        return;
    };
    let Some(bin) = cocoon_tests::pod_kbs::kbs_or_skip(test) else {
        return;
    };
    let Some(ns) = Namespaces::new(10) else {
        eprintln!("SKIP {test}: needs ip, tc and curl (iproute2, curl)");
        return;
    };
    // The KBS lives in the peer namespace: from the node's own namespace
    // (where a relay would connect) it cannot be reached at all.
    let kbs = cocoon_tests::kbs::Kbs::start_in_netns(&bin, &ns.peer, "10.123.10.1");
    let mut rnd = [0u8; 12];
    std::io::Read::read_exact(&mut std::fs::File::open("/dev/urandom").unwrap(), &mut rnd).unwrap();
    let secret = format!("over-the-pod-network-{}", hex::encode(rnd));
    kbs.allow_sample_and_store("default/key/net", secret.as_bytes());
    let sb = Sandbox::new(&env, |t| {
        cocoon_tests::pod_kbs::attest_to(
            t,
            &kbs.addr,
            &["kbs:///default/key/*"],
            &["io.cocoon.secret.*"],
        );
        t["attestation"]
            .as_table_mut()
            .unwrap()
            .insert("kbs_via".into(), "pod-network".into());
    });
    let ctd = Containerd::start(&env, &sb, flavor, &["default"]);
    let with_ns = format!("network:{}", ns.pod_path());
    let o = ctd
        .ctr(&[
            "run",
            "-d",
            "--runtime",
            RUNTIME,
            "--with-ns",
            &with_ns,
            "--annotation",
            "io.cocoon.secret.demo=kbs:///default/key/net",
            IMAGE,
            "kbsnet1",
            "sleep",
            "1000",
        ])
        .unwrap();
    assert!(o.status.success(), "{}\n{}", out(&o), ctd.log());
    ctd.wait_running("kbsnet1");
    let o = ctd
        .ctr(&[
            "task",
            "exec",
            "--exec-id",
            "read",
            "kbsnet1",
            "cat",
            "/run/secrets/cocoon/demo",
        ])
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&o.stdout), secret, "{}", out(&o));
    // No host artefact of the running pod holds the secret, in clear or
    // in base64: state (console, helper logs, sockets), the share,
    // containerd's state and log with the shim's.
    let b64 = base64::engine::general_purpose::STANDARD.encode(secret.as_bytes());
    for needle in [secret.as_bytes(), b64.as_bytes()] {
        let mut found = Vec::new();
        cocoon_tests::files_containing(&sb.state_dir, needle, &mut found);
        cocoon_tests::files_containing(sb.dir.path(), needle, &mut found);
        cocoon_tests::files_containing(ctd.dir.path(), needle, &mut found);
        assert!(found.is_empty(), "the secret is on the host in {found:?}");
    }
    ctd.kill_and_remove("kbsnet1");
    ctd.assert_no_shims();
    sb.assert_clean();

    // A pod without a network cannot reach it that way: one clear error.
    let o = ctd
        .ctr(&[
            "run",
            "--rm",
            "--runtime",
            RUNTIME,
            "--annotation",
            "io.cocoon.secret.demo=kbs:///default/key/net",
            IMAGE,
            "kbsnet2",
            "true",
        ])
        .unwrap();
    assert!(!o.status.success());
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(
        e.contains("kbs_via") && e.contains("has none"),
        "{}",
        out(&o)
    );
    let _ = ctd.ctr(&["c", "rm", "kbsnet2"]);
    ctd.assert_no_shims();
    sb.assert_clean();
}
