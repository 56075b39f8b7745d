#!/bin/bash
# make demo: a private containerd (own state dir and socket), a locally built
# busybox image, one task run through Cocoon, its output printed; then
# everything is stopped again.
#   tests/demo.sh NODE_CONFIG BIN_DIR
set -euo pipefail
config=$1 bin=$2
root=$(cd "$(dirname "$0")/.." && pwd)
work=$(mktemp -d /tmp/cocoon-demo.XXXXXX)
ctd_pid=""
cleanup() {
    [ -n "$ctd_pid" ] && kill "$ctd_pid" 2>/dev/null && wait "$ctd_pid" 2>/dev/null || true
    grep -o " $work[^ ]*" /proc/self/mountinfo | sort -r | xargs -r -n1 umount -l 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

echo "== building a busybox image"
"$root/tests/fixtures/make-busybox-rootfs.sh" "$work/rootfs"
"$root/tests/fixtures/make-oci-image.sh" "$work/rootfs" cocoon.demo/busybox:1 "$work/image.tar"

echo "== starting a private containerd in $work"
sed "s#^state_dir = .*#state_dir = \"$work/cocoon\"#" "$config" >"$work/cocoon.toml"
sed -e "s#@WORK@#$work#g" >"$work/containerd.toml" <<'EOF2'
version = 2
root = "@WORK@/root"
state = "@WORK@/state"
[grpc]
  address = "@WORK@/containerd.sock"
[ttrpc]
  address = "@WORK@/containerd.sock.ttrpc"
[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
  runtime_type = "io.containerd.runc.v2"
[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.cocoon]
  runtime_type = "io.containerd.cocoon.v2"
EOF2
PATH="$bin:$PATH" COCOON_CONFIG="$work/cocoon.toml" containerd --config "$work/containerd.toml" >"$work/containerd.log" 2>&1 &
ctd_pid=$!
ctr="ctr -a $work/containerd.sock"
for _ in $(seq 100); do $ctr version >/dev/null 2>&1 && break; sleep 0.1; done
$ctr images import "$work/image.tar" >/dev/null

echo "== ctr run --runtime io.containerd.cocoon.v2 cocoon.demo/busybox:1 demo ..."
start=$(date +%s%N)
$ctr run --rm --runtime io.containerd.cocoon.v2 cocoon.demo/busybox:1 demo \
    sh -c 'echo "hello from a Cocoon VM: kernel $(uname -r), $(grep -c ^processor /proc/cpuinfo) vCPU, $(ps | wc -l) processes visible"'
end=$(date +%s%N)
echo "== done in $(( (end - start) / 1000000 )) ms; stopping containerd"
