#!/bin/bash
# make soak: parallel `ctr run --rm` cycles through Cocoon on a private
# containerd, with kill -9 of QEMU, virtiofsd, vhost-device-vsock or the
# shim at a random point of some cycles, and a leak audit after every cycle
# (processes, mounts, files of the pod, the shim, containerd's fds and
# /run/containerd/s sockets). Prints cycles, failures, leaks and p50/p99.
#   tests/soak.sh NODE_CONFIG BIN_DIR
# SOAK_SECONDS (default 1800), SOAK_PARALLEL (default 2), SOAK_FAULTS
# (percentage of cycles with a kill, default 50).
set -uo pipefail
config=$1 bin=$2
root=$(cd "$(dirname "$0")/.." && pwd)
seconds=${SOAK_SECONDS:-1800} parallel=${SOAK_PARALLEL:-2} faults=${SOAK_FAULTS:-50}
work=$(mktemp -d /tmp/cocoon-soak.XXXXXX)
state=$work/cocoon
ctd_pid=""
cleanup() {
    [ -n "$ctd_pid" ] && kill "$ctd_pid" 2>/dev/null && wait "$ctd_pid" 2>/dev/null
    grep -o " $work[^ ]*" /proc/self/mountinfo | sort -r | xargs -r -n1 umount -l 2>/dev/null
    rm -rf "$work"
}
trap cleanup EXIT

"$root/tests/fixtures/make-busybox-rootfs.sh" "$work/rootfs" >/dev/null
"$root/tests/fixtures/make-oci-image.sh" "$work/rootfs" cocoon.soak/busybox:1 "$work/image.tar"
. "$root/tests/fixtures/containerd.sh"
ctd_node_config "$work" "$config"
ctd_start "$work" "$bin"
$ctr images import "$work/image.tar" >/dev/null
fds0=$(ls /proc/$ctd_pid/fd | wc -l)
socks0=$(ls /run/containerd/s 2>/dev/null | wc -l)

# Processes of a pod (QEMU and the helpers name its state directory).
pod_pids() { pgrep -f "$state/$1/" || true; }
victim_pid() { # id kind
    case $2 in
        shim) pgrep -f "containerd-shim-cocoon-v2 .*-id $1( |$)" | head -n1 ;;
        # (comm is cut at 15 characters: vhost-device-vs)
        *) for p in $(pod_pids "$1"); do
               case "$(ps -o comm= -p "$p" 2>/dev/null)" in "$2"*) echo "$p"; break ;; esac
           done ;;
    esac
}

audit() { # id -> prints leaks, one per line
    local id=$1
    pod_pids "$id" | sed "s/^/process /"
    grep -F " $state/$id" /proc/self/mountinfo | awk '{print "mount " $5}'
    [ -e "$state/$id" ] && echo "directory $state/$id"
    pgrep -f "containerd-shim-cocoon-v2 .*-id $id( |$)" | sed "s/^/shim /"
    $ctr task ls -q 2>/dev/null | grep -qx "$id" && echo "task $id"
    $ctr c ls -q 2>/dev/null | grep -qx "$id" && echo "container $id"
}

worker() { # n
    local n=$1 i=0 end=$(( $(date +%s) + seconds ))
    while [ "$(date +%s)" -lt "$end" ]; do
        i=$((i + 1))
        local id="w$n-$i" kind=none
        if [ $((RANDOM % 100)) -lt "$faults" ]; then
            kind=$(printf 'qemu\nvirtiofsd\nvhost-device-vs\nshim\n' | shuf -n1)
        fi
        local t0; t0=$(date +%s%N)
        $ctr run --rm --runtime io.containerd.cocoon.v2 cocoon.soak/busybox:1 "$id" \
            sh -c 'sleep 2; echo ok' >"$work/$id.out" 2>&1 &
        local run=$!
        if [ "$kind" != none ]; then
            # A random point: during boot, create, or while the task runs.
            sleep "0.$((RANDOM % 10))$((RANDOM % 10))"; sleep $((RANDOM % 4))
            local v; v=$(victim_pid "$id" "$kind")
            [ -n "$v" ] && kill -9 "$v" 2>/dev/null
        fi
        wait "$run"; local rc=$?
        # What a user does after a failed run.
        if [ $rc -ne 0 ]; then
            timeout 60 $ctr task rm -f "$id" >/dev/null 2>&1
            timeout 60 $ctr c rm "$id" >/dev/null 2>&1
        fi
        local t1; t1=$(date +%s%N)
        local ok=1
        grep -qx ok "$work/$id.out" || ok=0
        local leaks=""
        for _ in $(seq 50); do leaks=$(audit "$id"); [ -z "$leaks" ] && break; sleep 0.1; done
        printf '%s %s %s %s %s\n' "$id" "$kind" "$rc" "$ok" "$(( (t1 - t0) / 1000000 ))" >>"$work/results"
        [ -n "$leaks" ] && echo "$leaks" | sed "s/^/$id (kill $kind, rc $rc): /" >>"$work/leaks"
        rm -f "$work/$id.out"
    done
}

echo "== soak: $parallel workers for $seconds s, a kill -9 in ${faults}% of the cycles"
for n in $(seq "$parallel"); do worker "$n" & done
wait $(jobs -p | grep -v "^$ctd_pid$") 2>/dev/null
touch "$work/results" "$work/leaks"
fds1=$(ls /proc/$ctd_pid/fd | wc -l)
socks1=$(ls /run/containerd/s 2>/dev/null | wc -l)
python3 - "$work/results" <<'PY'
import statistics, sys
rows = [l.split() for l in open(sys.argv[1]) if l.strip()]
if not rows:
    sys.exit("no cycles ran")
times = sorted(int(r[4]) for r in rows)
q = lambda p: times[min(len(times) - 1, int(p * len(times)))]
clean = [r for r in rows if r[1] == "none"]
failed = [r for r in clean if r[3] != "1"]
print(f"cycles: {len(rows)} ({len(clean)} without a fault, {len(rows) - len(clean)} with a kill -9)")
for kind in sorted({r[1] for r in rows} - {"none"}):
    k = [r for r in rows if r[1] == kind]
    print(f"  kill -9 {kind}: {len(k)} cycles, the task still printed ok in {sum(r[3] == '1' for r in k)}")
print(f"failures (a cycle without a fault that did not print ok): {len(failed)}" + (f" {[r[0] for r in failed][:10]}" if failed else ""))
print(f"cycle time: p50 {q(0.5)} ms, p99 {q(0.99)} ms, max {times[-1]} ms")
PY
nleaks=$(wc -l <"$work/leaks")
echo "leaks after cycles: $nleaks"
if [ "$nleaks" -gt 0 ]; then
    head -n 20 "$work/leaks"
    # Keep the evidence (the work directory goes at exit).
    keep=$(mktemp /tmp/cocoon-soak-containerd.XXXXXX.log)
    cp "$work/containerd.log" "$keep"
    echo "containerd's log (with the shims' lines) kept in $keep"
fi
echo "containerd fds: $fds0 -> $fds1; /run/containerd/s sockets: $socks0 -> $socks1"
failed=$(awk '$2 == "none" && $4 != "1"' "$work/results" | wc -l)
[ "$nleaks" -eq 0 ] && [ "$failed" -eq 0 ]
