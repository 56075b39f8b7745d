#!/bin/bash
# make bench: figures, printed and compared with a baseline in the same run.
#   tests/bench.sh NODE_CONFIG
# - boot -> agent ready (median of 5) vs the same kernel booting a minimal
#   busybox init that powers off at once (QEMU start -> exit), and the ratio;
# - host RSS of QEMU + helpers while a VM runs;
# - initrd size.
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
