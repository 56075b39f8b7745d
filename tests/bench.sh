#!/bin/bash
# make bench: figures, printed and compared with a baseline in the same run.
#   tests/bench.sh NODE_CONFIG
# - boot -> agent ready (median of 5) vs the same kernel booting a minimal
#   busybox init that powers off at once (QEMU start -> exit), and the ratio;
# - host RSS of QEMU + helpers while a VM runs;
# - initrd size;
# - Cocoon's guest kernel vs Debian's: boot, whole run, QEMU RSS, size;
# - sealed models: cocoon seal and in-guest decryption vs openssl;
# - ctr run under Cocoon vs runc, pods with secrets, volumes (read
#   throughput vs the host, cost per volume), pod network (node <-> pod
#   throughput and latency, Cocoon vs runc), verified layers (pod start
#   first/cached vs virtio-fs, 256 MiB read, conversion vs mkfs.erofs +
#   veritysetup), launch measurement.
set -euo pipefail
config=$1
bin=${COCOON_BIN_DIR:-target/release}
root=$(cd "$(dirname "$0")/.." && pwd)
runs=${BENCH_RUNS:-5}
work=$(mktemp -d /tmp/cocoon-bench.XXXXXX)
trap 'rm -rf "$work"' EXIT

median() { python3 -c 'import sys,statistics; print(round(statistics.median(float(x) for x in sys.argv[1:]),1))' "$@"; }
kv() { sed -n "s/^$1 = \"\\(.*\\)\"/\\1/p" "$config" | head -n1; }

qemu=$(kv path); kernel=$(kv kernel)
rootfs="$work/rootfs"
"$root/tests/fixtures/make-busybox-rootfs.sh" "$rootfs"

# Baseline: same kernel, a busybox init that powers off at once.
mkdir -p "$work/base/dev" "$work/base/bin" "$work/base/proc"
cp /bin/busybox "$work/base/bin/busybox"
printf '#!/bin/busybox sh\n/bin/busybox poweroff -f\n' >"$work/base/init"
chmod 755 "$work/base/init"
(cd "$work/base" && find . | LC_ALL=C sort | cpio -o -H newc --quiet >"$work/base.cpio")

base=()
for _ in $(seq "$runs"); do
    t0=$(date +%s%N)
    "$qemu" -nodefaults -no-user-config -display none -no-reboot -machine q35,accel=tcg -cpu max -m 1024M \
        -kernel "$kernel" -initrd "$work/base.cpio" -append "reboot=k panic=-1 quiet" -serial none >/dev/null 2>&1
    t1=$(date +%s%N)
    base+=("$(( (t1 - t0) / 1000000 ))")
done

cocoon=()
for _ in $(seq "$runs"); do
    ms=$("$bin/cocoon" --config "$config" run --timing --rootfs "$rootfs" -- true 2>&1 >/dev/null \
        | sed -n 's/^cocoon: agent ready after \([0-9]*\) ms$/\1/p')
    cocoon+=("$ms")
done

# RSS of QEMU + helpers while a VM runs.
"$bin/cocoon" --config "$config" run --rootfs "$rootfs" -- sleep 6 >/dev/null 2>&1 &
runner=$!
sleep 5
state=$(sed -n 's/^state_dir = "\(.*\)"/\1/p' "$config")
rss_kb=0; parts=""
for pid in $(pgrep -f "$state/run-" || true); do
    name=$(ps -o comm= -p "$pid" 2>/dev/null || true)
    kb=$(awk '/^VmRSS:/ {print $2}' "/proc/$pid/status" 2>/dev/null || echo 0)
    rss_kb=$((rss_kb + kb)); parts="$parts $name=$((kb / 1024))MiB"
done
wait "$runner" || true

initrd=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["initrd"]["size"])' "$(dirname "$kernel")/manifest.json")
mb=$(median "${base[@]}"); mc=$(median "${cocoon[@]}")
echo "== Cocoon bench ($runs runs each, TCG=$(grep -qwE 'vmx|svm' /proc/cpuinfo && echo no || echo yes))"
echo "baseline: kernel + busybox init, QEMU start -> exit:   median ${mb} ms  (${base[*]})"
echo "cocoon:   launch -> agent ready (helpers, QEMU, boot): median ${mc} ms  (${cocoon[*]})"
echo "ratio cocoon/baseline: $(python3 -c "print(round($mc/$mb,2))")"
echo "host RSS of QEMU + helpers (1 GiB guest): $((rss_kb / 1024)) MiB ($parts )"
echo "initrd size: $initrd bytes ($((initrd / 1024)) KiB)"

# --- the guest kernel: Cocoon's slim build vs Debian's generic kernel --------
# Same agent, same initrd builder, same VM; runs interleaved.
agent_bin=${COCOON_AGENT_BIN:-$root/target/x86_64-unknown-linux-gnu/release/cocoon-agent}
kinfo() { sed -n "s/^$1=//p" "$root/build/kernel-cocoon/build-info" 2>/dev/null; }
if [ -d "$root/build/kernel/boot" ] && [ -x "$bin/cocoon-guest-build" ] && [ -x "$agent_bin" ]; then
    "$bin/cocoon-guest-build" --kernel-dir "$root/build/kernel" --agent "$agent_bin" --out "$work/guest-debian" >/dev/null
    sed -e "s#^kernel = .*#kernel = \"$work/guest-debian/vmlinuz\"#" \
        -e "s#^initrd = .*#initrd = \"$work/guest-debian/initrd.img\"#" "$config" >"$work/debian.toml"
    declare -A ready wallt
    for _ in $(seq "$runs"); do
        for k in cocoon debian; do
            cfg=$config; [ $k = debian ] && cfg=$work/debian.toml
            t0=$(date +%s%N)
            ms=$("$bin/cocoon" --config "$cfg" run --timing --rootfs "$rootfs" -- true 2>&1 >/dev/null \
                | sed -n 's/^cocoon: agent ready after \([0-9]*\) ms$/\1/p')
            t1=$(date +%s%N)
            ready[$k]="${ready[$k]:-} $ms"; wallt[$k]="${wallt[$k]:-} $(( (t1 - t0) / 1000000 ))"
        done
    done
    peak_rss() { # config → QEMU's peak RSS in MiB while `sleep 4` runs
        "$bin/cocoon" --config "$1" run --rootfs "$rootfs" -- sleep 4 >/dev/null 2>&1 &
        local r=$! q="" kb=0
        while kill -0 "$r" 2>/dev/null; do
            q=$(for p in $(pgrep -f "$state/run-" || true); do
                    case "$(ps -o comm= -p "$p" 2>/dev/null)" in qemu*) echo "$p" ;; esac
                done | head -n1)
            [ -n "$q" ] && kb=$(awk '/^VmHWM:/ {print $2}' "/proc/$q/status" 2>/dev/null || echo "$kb")
            sleep 0.5
        done
        wait "$r" || true
        echo $((kb / 1024))
    }
    rc=$(median ${ready[cocoon]}); rd=$(median ${ready[debian]})
    wc_=$(median ${wallt[cocoon]}); wd=$(median ${wallt[debian]})
    echo "== guest kernel: Cocoon's $(cat "$root/build/kernel-cocoon/release" 2>/dev/null) vs Debian's $(cat "$root/build/kernel/package")"
    echo "launch -> agent ready: cocoon median ${rc} ms (${ready[cocoon]# }) vs debian ${rd} ms (${ready[debian]# }); ratio $(python3 -c "print(round($rc/$rd,2))") (goal <= 0.5)"
    echo "whole cocoon run -- true: cocoon median ${wc_} ms vs debian ${wd} ms; ratio $(python3 -c "print(round($wc_/$wd,2))")"
    echo "QEMU peak RSS (1 GiB guest): cocoon $(peak_rss "$config") MiB vs debian $(peak_rss "$work/debian.toml") MiB"
    echo "bzImage: cocoon $(stat -c %s "$kernel") bytes vs debian $(stat -c %s "$work/guest-debian/vmlinuz") bytes"
    if [ -f "$root/build/kernel-cocoon/build-seconds" ]; then
        echo "kernel build (clean, $(nproc) cores, recorded when built): $(cat "$root/build/kernel-cocoon/build-seconds") s"
    fi
else
    echo "== guest kernel: SKIP (needs build/kernel from make deps, cocoon-guest-build and the agent)"
fi

# --- containerd: ctr run --rm ... echo, Cocoon vs runc ----------------------
echo "== containerd (private instance, same image): ctr run --rm IMG id echo hi"
ctd="$work/ctd"
. "$root/tests/fixtures/containerd.sh"
ctd_node_config "$ctd" "$config"
stop_all() {
    set +e
    # Tasks a failed step left running (their shims stop VMs and runc
    # containers), then containerd.
    if [ -n "${ctd_pid:-}" ]; then
        for t in $($ctr task ls -q 2>/dev/null); do $ctr task rm -f "$t" >/dev/null 2>&1; done
        for c in $($ctr c ls -q 2>/dev/null); do $ctr c rm "$c" >/dev/null 2>&1; done
    fi
    [ -n "${ctd_pid:-}" ] && kill "$ctd_pid" 2>/dev/null && wait "$ctd_pid" 2>/dev/null
    [ -n "${kbs_pid:-}" ] && kill "$kbs_pid" 2>/dev/null && wait "$kbs_pid" 2>/dev/null
    grep -o " $work[^ ]*" /proc/self/mountinfo | sort -r | xargs -r -n1 umount -l 2>/dev/null
    for n in $(ip netns list 2>/dev/null | awk '{print $1}' | grep "^cbn$$-"); do ip netns del "$n"; done
    rm -rf "$work"
}
trap stop_all EXIT
ctd_start "$ctd" "$bin"
"$root/tests/fixtures/make-oci-image.sh" "$rootfs" cocoon.bench/busybox:1 "$work/image.tar"
$ctr images import "$work/image.tar" >/dev/null
wall() { local t0 t1; t0=$(date +%s%N); "$@" >/dev/null; t1=$(date +%s%N); echo $(( (t1 - t0) / 1000000 )); }
runc_t=(); cocoon_t=()
for i in $(seq "$runs"); do
    runc_t+=("$(wall $ctr run --rm --runtime io.containerd.runc.v2 cocoon.bench/busybox:1 r$i echo hi)")
    cocoon_t+=("$(wall $ctr run --rm --runtime io.containerd.cocoon.v2 cocoon.bench/busybox:1 c$i echo hi)")
done
mr=$(median "${runc_t[@]}"); mco=$(median "${cocoon_t[@]}")
echo "runc:   median ${mr} ms  (${runc_t[*]})"
echo "cocoon: median ${mco} ms  (${cocoon_t[*]})"
echo "ratio cocoon/runc: $(python3 -c "print(round($mco/$mr,1))")"
boots=$(grep '"msg":"pod VM ready"' "$ctd/containerd.log" | grep -o '"boot_ms":[0-9]*' | cut -d: -f2 | tail -n "$runs")
creates=$(grep '"msg":"container created"' "$ctd/containerd.log" | grep -o '"create_ms":[0-9]*' | cut -d: -f2 | tail -n "$runs")
plans=$(grep '"msg":"pod VM ready"' "$ctd/containerd.log" | grep -o '"plan_ms":[0-9]*' | cut -d: -f2 | tail -n "$runs")
if [ -n "$plans" ]; then
    echo "launch plan (measurement, TEE, devices, argv; part of boot): median $(median $plans) ms  ($(echo $plans))"
fi
if [ -n "$boots" ] && [ -n "$creates" ]; then
    inside=$(paste <(echo "$creates") <(echo "$boots") | awk '{print $1-$2}')
    echo "shim Create without VM boot (rootfs mount, agent create): median $(median $inside) ms  ($(echo $inside))"
    echo "shim overhead outside Create+boot (start, I/O, delete incl. VM stop, containerd): median $(median $(paste <(printf '%s\n' "${cocoon_t[@]}") <(echo "$creates") | awk '{print $1-$2}')) ms"
fi
# RSS of the shims for a running task.
$ctr run -d --runtime io.containerd.runc.v2 cocoon.bench/busybox:1 rss-runc sleep 60 >/dev/null
$ctr run -d --runtime io.containerd.cocoon.v2 cocoon.bench/busybox:1 rss-cocoon sleep 60 >/dev/null
sleep 1
rss() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status"; }
runc_shim=$(pgrep -f "containerd-shim-runc-v2 .*$ctd/c.sock" | head -n1)
cocoon_shim=$(pgrep -f "containerd-shim-cocoon-v2 .*$ctd/c.sock" | head -n1)
echo "shim RSS with a running task: cocoon $(( $(rss "$cocoon_shim") / 1024 )) MiB, containerd-shim-runc-v2 $(( $(rss "$runc_shim") / 1024 )) MiB"
for t in rss-runc rss-cocoon; do $ctr task rm -f "$t" >/dev/null 2>&1 || true; $ctr c rm "$t" >/dev/null 2>&1 || true; done

# --- secrets: pod start with 0, 1 and 10 secrets from trustee's KBS ---------
if [ -x "$root/build/kbs/kbs" ]; then
    . "$root/tests/fixtures/kbs.sh"
    kbs_start "$root/build/kbs/kbs" "$work/kbs"
    for n in $(seq 10); do printf 'secret %s' "$n" >"$work/kbs/s$n"; kbs_store "default/key/s$n" "$work/kbs/s$n"; done
    sed -i -e "s#^kbs_url = .*#kbs_url = \"http://127.0.0.1:$kbs_port\"#" \
        -e 's#^allowed_resources = .*#allowed_resources = ["kbs:///default/key/*"]#' \
        -e 's#^allowed_annotations = .*#allowed_annotations = ["io.cocoon.secret.*"]#' "$ctd/cocoon.toml"
    secret_flags() { for n in $(seq "$1"); do printf -- '--annotation io.cocoon.secret.s%s=kbs:///default/key/s%s ' "$n" "$n"; done; }
    echo "== secrets (trustee KBS on loopback, sample TEE, through the vsock relay): ctr run --rm ... cat"
    for k in 0 1 10; do
        t=()
        # shellcheck disable=SC2046 # the flags are words on purpose
        for i in $(seq "$runs"); do t+=("$(wall $ctr run --rm --runtime io.containerd.cocoon.v2 $(secret_flags "$k") cocoon.bench/busybox:1 k$k-$i sh -c 'cat /run/secrets/cocoon/* 2>/dev/null | wc -c')"); done
        echo "with $k secret(s): median $(median "${t[@]}") ms  (${t[*]})"
        # CreateSandbox in the shim log: with secrets it holds the guest's
        # attestation and fetch through the relay.
        sbx=$(grep '"msg":"pod VM ready"' "$ctd/containerd.log" | grep "\"secrets\":$k[,}]" | grep -o '"sandbox_ms":[0-9]*' | cut -d: -f2 | tail -n "$runs")
        # shellcheck disable=SC2086 # one value per line on purpose
        eval "sandbox_$k=$(median $sbx | cut -d. -f1)"
    done
    floor=$("$root/build/measure-venv/bin/python3" "$root/tests/fixtures/kbs_roundtrip.py" "http://127.0.0.1:$kbs_port" kbs:///default/key/s1 5 2>/dev/null || echo "")
    # shellcheck disable=SC2154 # set by the eval above
    echo "attestation round trip (auth -> attest -> 1 resource): in the guest through the relay $((sandbox_1 - sandbox_0)) ms (CreateSandbox with 1 secret minus without: median $sandbox_1 - $sandbox_0 ms); from the host in Python (the floor, 5 runs): ${floor:-n/a} ms"
    # --- sealed models: seal on the host, decrypt in the guest, vs openssl --
    model_mib=${BENCH_MODEL_MIB:-1024}; guest_mib=${BENCH_GUEST_MODEL_MIB:-256}
    echo "== sealed models: cocoon seal of a ${model_mib} MiB model on the host, in-guest decryption of ${guest_mib} MiB, vs openssl"
    mkdir -p "$work/model" "$work/mvol"
    head -c $((model_mib << 20)) /dev/urandom >"$work/model/weights.bin"
    cat "$work/model/weights.bin" >/dev/null
    seal_out=$( { /usr/bin/time -f 'rss_kb=%M' "$bin/cocoon" seal model --in "$work/model/weights.bin" --out "$work/mvol/big.sealed" \
        --key-uri kbs:///default/model/big --key-out "$work/model/big.key" | head -n1; } 2>&1)
    seal_rate=$(echo "$seal_out" | sed -n 's/.*(\([0-9]*\) MiB\/s).*/\1/p' | head -n1)
    seal_rss=$(echo "$seal_out" | sed -n 's/^rss_kb=//p')
    ossl=$(/usr/bin/time -o "$work/ossl.time" -f '%M' openssl speed -evp aes-256-gcm -bytes 1048576 -seconds 3 2>/dev/null | tail -n1)
    ossl_rate=$(echo "$ossl" | awk 'tolower($1) == "aes-256-gcm" {v = $2; sub(/k$/, "", v); printf "%d", v * 1000 / 1048576}')
    ossl_rss=$(tail -n1 "$work/ossl.time")
    echo "cocoon seal (AES-256-GCM, 1 MiB chunks, $(nproc) threads): ${seal_rate} MiB/s, peak RSS $((seal_rss / 1024)) MiB"
    echo "openssl speed -evp aes-256-gcm (1 MiB blocks, 1 thread):    ${ossl_rate} MiB/s, peak RSS $((ossl_rss / 1024)) MiB; ratio cocoon/openssl $(python3 -c "print(round(${seal_rate:-0}/max(${ossl_rate:-1},1),2))")"
    rm -f "$work/mvol/big.sealed"
    head -c $((guest_mib << 20)) "$work/model/weights.bin" >"$work/model/guest.bin"; rm -f "$work/model/weights.bin"
    "$bin/cocoon" seal model --in "$work/model/guest.bin" --out "$work/mvol/guest.sealed" \
        --key-uri kbs:///default/model/guest --key-out "$work/model/guest.key" >/dev/null
    kbs_store default/model/guest "$work/model/guest.key"
    sed -i -e 's#^allowed_resources = .*#allowed_resources = ["kbs:///default/key/*", "kbs:///default/model/*"]#' \
        -e 's#^allowed_annotations = .*#allowed_annotations = ["io.cocoon.secret.*", "io.cocoon.model.*"]#' "$ctd/cocoon.toml"
    # The VM grows with the pod's memory limit (the model lives in guest RAM).
    $ctr run --rm --runtime io.containerd.cocoon.v2 --memory-limit $(( (guest_mib + 512) << 20 )) \
        --mount "type=bind,src=$work/mvol,dst=/data,options=rbind:ro" \
        --annotation io.cocoon.model.guest=/data/guest.sealed cocoon.bench/busybox:1 model-1 true >/dev/null
    rep=$(grep -o '"msg":"sealed model decrypted in the guest"[^}]*' "$ctd/containerd.log" | tail -n1)
    g_ms=$(echo "$rep" | grep -o '"ms":[0-9]*' | cut -d: -f2); g_rate=$(echo "$rep" | grep -o '"mib_per_s":"[0-9.]*"' | cut -d'"' -f4)
    echo "in-guest decryption of ${guest_mib} MiB (TCG, key fetch included): ${g_ms} ms, ${g_rate} MiB/s; ratio to host openssl $(python3 -c "print(round(${g_rate:-0}/max(${ossl_rate:-1},1),3))")"
    kill "$kbs_pid"; wait "$kbs_pid" 2>/dev/null || true; kbs_pid=""
else
    echo "secrets: skipped (no trustee KBS in build/kbs; make deps unpacks it where available)"
fi

# --- volumes: read throughput through the share, cost per volume at create --
echo "== volumes (host directories bound into the share, virtio-fs cache=$(kv virtio_fs_cache || true))"
vol="$work/vol"; mkdir -p "$vol"
head -c $((256 * 1024 * 1024)) /dev/urandom >"$vol/big"
cat "$vol/big" >/dev/null # page cache warm on the host for both readers
host_s=$(python3 - "$vol/big" <<'PY'
import sys, time
t = time.perf_counter()
with open(sys.argv[1], 'rb') as f:
    while f.read(1 << 20):
        pass
print(round(time.perf_counter() - t, 3))
PY
)
guest_s=$($ctr run --rm --runtime io.containerd.cocoon.v2 --mount "type=bind,src=$vol,dst=/vol,options=rbind:ro" \
    cocoon.bench/busybox:1 vol-read sh -c 'time -f %e cat /vol/big >/dev/null' 2>&1 | tail -n1)
mbs() { python3 -c "print(round(256 / max($1, 0.001)))"; }
echo "read 256 MiB: host $(mbs "$host_s") MiB/s (${host_s} s), guest through the share $(mbs "$guest_s") MiB/s (${guest_s} s), guest/host $(python3 -c "print(round($host_s/max($guest_s,0.001),3))")"
vols=()
for n in $(seq 10); do mkdir -p "$vol/v$n"; vols+=(--mount "type=bind,src=$vol/v$n,dst=/v$n,options=rbind:rw"); done
for i in $(seq "$runs"); do
    $ctr run --rm --runtime io.containerd.cocoon.v2 cocoon.bench/busybox:1 v0-$i true >/dev/null
    $ctr run --rm --runtime io.containerd.cocoon.v2 "${vols[@]}" cocoon.bench/busybox:1 v10-$i true >/dev/null
done
# Create minus the VM boot, from the shim's log: what the volumes cost.
create_inside() { python3 - "$ctd/containerd.log" "$1" <<'PY'
import json, re, statistics, sys
boot, create = {}, {}
for line in open(sys.argv[1]):
    if not line.startswith('{'):
        continue
    try:
        j = json.loads(line)
    except ValueError:
        continue
    if j.get('msg') == 'pod VM ready':
        boot[j.get('pod')] = j.get('boot_ms')
    if j.get('msg') == 'container created':
        create[j.get('id')] = j.get('create_ms')
v = [create[k] - boot[k] for k in create if re.fullmatch(sys.argv[2], k) and k in boot]
print(statistics.median(v) if v else 0, ' '.join(str(x) for x in v))
PY
}
read -r m0 all0 <<<"$(create_inside 'v0-[0-9]+')"
read -r m10 all10 <<<"$(create_inside 'v10-[0-9]+')"
echo "shim Create without VM boot: no volume median ${m0} ms (${all0}), 10 volumes median ${m10} ms (${all10})"
echo "per volume: $(python3 -c "print(round(($m10 - $m0) / 10, 1))") ms"

# --- pod network: node <-> pod over a bridge, Cocoon vs runc ----------------
# A node namespace with a bridge and one namespace per pod (a veth on the
# bridge, like CNI's bridge plugin makes). The pod serves a 256 MiB file
# from a tmpfs with busybox httpd; the node downloads it with curl
# (throughput) and fetches a small page 30 times, one TCP connection each
# (latency).
echo "== pod network (tcfilter; node <-> pod over a bridge, busybox httpd, curl)"
nn="cbn$$-node"
ip netns add "$nn"
ip -n "$nn" link set lo up
ip -n "$nn" link add br0 type bridge
ip -n "$nn" addr add 10.125.0.1/24 dev br0
ip -n "$nn" link set br0 up
net_pod() { # name index -> the pod's namespace path
    local ns="cbn$$-$1"
    ip netns add "$ns"
    ip -n "$ns" link set lo up
    ip -n "$ns" link add eth0 type veth peer name "v$2" netns "$nn"
    ip -n "$nn" link set "v$2" master br0 up
    ip -n "$ns" addr add "10.125.0.$2/24" dev eth0
    ip -n "$ns" link set eth0 up
    ip -n "$ns" route add default via 10.125.0.1
    echo "/var/run/netns/$ns"
}
serve='mkdir -p /www && mount -t tmpfs -o size=300m tmpfs /www 2>/dev/null; echo ok > /www/small && head -c 268435456 /dev/zero > /www/big && exec httpd -f -p 8080 -h /www'
declare -A net_tp net_lat
for rt in runc cocoon; do
    if [ "$rt" = runc ]; then idx=2; else idx=3; fi
    path=$(net_pod "$rt" "$idx")
    $ctr run -d --privileged --runtime "io.containerd.$rt.v2" --with-ns "network:$path" \
        cocoon.bench/busybox:1 "net-$rt" sh -c "$serve" >/dev/null
    ip="10.125.0.$idx"
    for _ in $(seq 120); do
        [ "$(ip netns exec "$nn" curl -s --max-time 2 "http://$ip:8080/small" 2>/dev/null)" = ok ] && break
        sleep 0.5
    done
    tp=()
    for _ in 1 2 3; do
        bps=$(ip netns exec "$nn" curl -s -o /dev/null -w '%{speed_download}' "http://$ip:8080/big")
        tp+=("$(python3 -c "print(round($bps / 1048576, 1))")")
    done
    urls=(); for _ in $(seq 30); do urls+=(-o /dev/null "http://$ip:8080/small"); done
    lat=($(ip netns exec "$nn" curl -s -w '%{time_total}\n' "${urls[@]}" | python3 -c 'import sys; print(" ".join(str(round(float(x) * 1000, 2)) for x in sys.stdin))'))
    net_tp[$rt]=$(median "${tp[@]}"); net_lat[$rt]=$(median "${lat[@]}")
    echo "$rt: 256 MiB download median ${net_tp[$rt]} MiB/s (${tp[*]}); request latency median ${net_lat[$rt]} ms over 30 connections"
    $ctr task rm -f "net-$rt" >/dev/null 2>&1 || true
    $ctr c rm "net-$rt" >/dev/null 2>&1 || true
done
echo "cocoon/runc: throughput x$(python3 -c "print(round(${net_tp[cocoon]} / max(${net_tp[runc]}, 0.001), 3))"), latency x$(python3 -c "print(round(${net_lat[cocoon]} / max(${net_lat[runc]}, 0.001), 1))")"

# --- verified layers: pod start and reads, conversion -----------------------
# The same image (busybox + a 256 MiB random file, one uncompressed layer)
# over virtio-fs, then from verified layers: first pod (the node converts
# the layer into its cache), cached pods; reading the 256 MiB file in the
# guest either way; the conversion (tar -> erofs -> dm-verity tree) as
# `cocoon policy` does it vs tar -x + mkfs.erofs + veritysetup format.
echo "== verified layers (erofs + dm-verity per layer, checked in the guest)"
big_root="$work/big-rootfs"
cp -a "$rootfs" "$big_root"
mkdir -p "$big_root/data"
head -c $((256 * 1024 * 1024)) /dev/urandom >"$big_root/data/big"
"$root/tests/fixtures/make-oci-image.sh" "$big_root" cocoon.bench/big:1 "$work/big.tar"
rm -rf "$big_root"
$ctr images import "$work/big.tar" >/dev/null
layer_mib=$(python3 -c "import sys,tarfile; t=tarfile.open(sys.argv[1]); print(round(max(m.size for m in t.getmembers())/1048576))" "$work/big.tar")
conv_t=(); hand_t=()
for _ in $(seq 3); do
    conv_t+=("$(wall "$bin/cocoon" policy "$work/big.tar")")
    hand_t+=("$(wall sh -c "rm -rf '$work/x' && mkdir '$work/x' && tar -xf '$work/big.tar' -C '$work/x' && mkdir '$work/x/root' && tar -xf \$(ls -S '$work'/x/blobs/sha256/* | head -n1) -C '$work/x/root' && mkfs.erofs --quiet '$work/x/img' '$work/x/root' && veritysetup format --no-superblock '$work/x/img' '$work/x/hash' >/dev/null")")
done
[ -s "$work/x/hash" ] || { echo "bench: the mkfs.erofs + veritysetup run failed" >&2; exit 1; }
rm -rf "$work/x"
mconv=$(median "${conv_t[@]}"); mhand=$(median "${hand_t[@]}")
echo "conversion of a ${layer_mib} MiB layer: cocoon policy median ${mconv} ms ($(python3 -c "print(round($layer_mib * 1000 / $mconv))") MiB/s; ${conv_t[*]}), tar -x + mkfs.erofs + veritysetup format median ${mhand} ms ($(python3 -c "print(round($layer_mib * 1000 / $mhand))") MiB/s; ${hand_t[*]}), ratio x$(python3 -c "print(round($mhand / $mconv, 2))")"
fragment=$("$bin/cocoon" policy --any-process --name big "$work/big.tar")
doc=$(printf 'version = "0.1.0"\nalgorithm = "sha256"\n\n[data]\n"cocoon-policy.toml" = '"'''"'\n%s\n'"'''"'\n' "$fragment")
initdata="io.katacontainers.config.hypervisor.cc_init_data=$(printf '%s' "$doc" | gzip -9 | base64 -w0)"
readcmd='time -f %e cat /data/big >/dev/null'
fs_t=(); for i in $(seq "$runs"); do fs_t+=("$(wall $ctr run --rm --runtime io.containerd.cocoon.v2 cocoon.bench/big:1 vf$i true)"); done
fs_read=$($ctr run --rm --runtime io.containerd.cocoon.v2 cocoon.bench/big:1 vf-read sh -c "$readcmd" 2>&1 | tail -n1)
sed -i -e 's/^verified_layers = .*/verified_layers = "always"/' \
    -e "s#^layer_cache_dir = .*#layer_cache_dir = \"$work/layers\"#" \
    -e 's/^allowed_annotations = .*/allowed_annotations = ["io.katacontainers.config.hypervisor.cc_init_data"]/' "$ctd/cocoon.toml"
first_t=(); cached_t=()
for i in $(seq 3); do
    rm -rf "$work/layers"
    first_t+=("$(wall $ctr run --rm --runtime io.containerd.cocoon.v2 --annotation "$initdata" cocoon.bench/big:1 vl-first$i true)")
done
for i in $(seq "$runs"); do
    cached_t+=("$(wall $ctr run --rm --runtime io.containerd.cocoon.v2 --annotation "$initdata" cocoon.bench/big:1 vl-cached$i true)")
done
vl_read=$($ctr run --rm --runtime io.containerd.cocoon.v2 --annotation "$initdata" cocoon.bench/big:1 vl-read sh -c "$readcmd" 2>&1 | tail -n1)
builds=$(grep '"msg":"layer ready"' "$ctd/containerd.log" | grep '"built":true' | grep -o '"ms":[0-9]*' | cut -d: -f2)
mfs=$(median "${fs_t[@]}"); mfirst=$(median "${first_t[@]}"); mcached=$(median "${cached_t[@]}")
echo "pod start (ctr run --rm ... true): virtio-fs median ${mfs} ms (${fs_t[*]}); verified, first pod (layer converted) median ${mfirst} ms (${first_t[*]}); verified, cached median ${mcached} ms (${cached_t[*]})"
echo "  cached/virtio-fs x$(python3 -c "print(round($mcached / $mfs, 2))"), first/cached x$(python3 -c "print(round($mfirst / $mcached, 2))"); the shim's conversion in the node cache: $(echo $builds) ms"
echo "read 256 MiB in the guest: virtio-fs $(mbs "$fs_read") MiB/s (${fs_read} s), verified layer $(mbs "$vl_read") MiB/s (${vl_read} s), verified/virtio-fs x$(python3 -c "print(round($fs_read / max($vl_read, 0.001), 2))")"

# Launch measurement: cocoon measure snp vs sev-snp-measure 0.0.13 on the
# same inputs (4 MiB OVMF.amdsev.fd, the guest kernel, a 30 MiB initrd), and
# sha256sum (kernel + initrd) + sha384sum (firmware) over the same bytes as
# the floor.
ovmf=$root/build/firmware/usr/share/ovmf/OVMF.amdsev.fd
ssm=$root/build/measure-venv/bin/sev-snp-measure
if [ -f "$ovmf" ] && [ -x "$ssm" ]; then
    big="$work/initrd-30m.img"
    head -c $((30 * 1024 * 1024)) /dev/urandom >"$big"
    gk=$root/build/guest/vmlinuz
    wall_ms() { python3 - "$@" <<'PY'
import subprocess, sys, time
t = time.perf_counter(); subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL, check=True)
print(round((time.perf_counter() - t) * 1000, 1))
PY
}
    args=(--mode snp --vcpus 4 --vcpu-type EPYC-v4 --ovmf "$ovmf" --kernel "$gk" --initrd "$big" --append "console=hvc0")
    cat "$ovmf" "$gk" "$big" >/dev/null # page cache warm for everyone
    ours=(); theirs=(); floor=()
    for _ in $(seq "$runs"); do
        ours+=("$(wall_ms "$bin/cocoon" measure snp "${args[@]}")")
        theirs+=("$(wall_ms "$ssm" "${args[@]}")")
        floor+=("$(wall_ms sh -c "sha256sum '$gk' '$big' >/dev/null && sha384sum '$ovmf' >/dev/null")")
    done
    mo=$(median "${ours[@]}"); mt=$(median "${theirs[@]}"); mf=$(median "${floor[@]}")
    echo "measure snp (4 MiB OVMF, $(( $(stat -c %s "$gk") / 1024 / 1024 )) MiB kernel, 30 MiB initrd):"
    echo "  cocoon measure snp:        median ${mo} ms  (${ours[*]})"
    echo "  sev-snp-measure 0.0.13:    median ${mt} ms  (${theirs[*]})  -> cocoon is x$(python3 -c "print(round($mt/$mo,1))") faster"
    echo "  sha256sum + sha384sum:     median ${mf} ms  (${floor[*]})  -> cocoon at x$(python3 -c "print(round($mo/$mf,2))") of the hashing floor"
    rss_kb=$( { /usr/bin/time -f '%M' "$bin/cocoon" measure snp "${args[@]}" >/dev/null; } 2>&1 | tail -n1)
    echo "  cocoon measure snp peak RSS: $(( rss_kb / 1024 )) MiB"
else
    echo "measure snp: skipped ($ovmf or $ssm missing; make deps fetches them)"
fi
exit 0
