#!/bin/bash
# make demo: a private containerd (own state dir and socket), a locally built
# busybox image, one task run through Cocoon, its output printed; then
# everything is stopped again.
# When trustee's KBS is available (build/kbs/kbs, from make deps), a second
# task reads a secret the guest fetched from it, and the demo shows that no
# host artefact holds the secret.
#   tests/demo.sh NODE_CONFIG BIN_DIR
set -euo pipefail
config=$1 bin=$2
root=$(cd "$(dirname "$0")/.." && pwd)
work=$(mktemp -d /tmp/cocoon-demo.XXXXXX)
ctd_pid="" kbs_pid=""
cleanup() {
    [ -n "$ctd_pid" ] && kill "$ctd_pid" 2>/dev/null && wait "$ctd_pid" 2>/dev/null || true
    [ -n "$kbs_pid" ] && kill "$kbs_pid" 2>/dev/null && wait "$kbs_pid" 2>/dev/null || true
    grep -o " $work[^ ]*" /proc/self/mountinfo | sort -r | xargs -r -n1 umount -l 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

echo "== building a busybox image"
"$root/tests/fixtures/make-busybox-rootfs.sh" "$work/rootfs"
"$root/tests/fixtures/make-oci-image.sh" "$work/rootfs" cocoon.demo/busybox:1 "$work/image.tar"

sed "s#^state_dir = .*#state_dir = \"$work/cocoon\"#" "$config" >"$work/cocoon.toml"

kbs_bin=$root/build/kbs/kbs
secret=""
if [ -x "$kbs_bin" ]; then
    echo "== starting trustee's KBS on loopback (development settings: sample TEE allowed)"
    . "$root/tests/fixtures/kbs.sh"
    kbs_start "$kbs_bin" "$work/kbs"
    port=$kbs_port
    secret="demo-secret-$(head -c 8 /dev/urandom | od -An -tx1 | tr -d ' \n')"
    printf '%s' "$secret" >"$work/kbs/demo-secret"
    kbs_store default/key/demo "$work/kbs/demo-secret"
    sed -i -e "s#^kbs_url = .*#kbs_url = \"http://127.0.0.1:$port\"#" \
        -e 's#^allowed_resources = .*#allowed_resources = ["kbs:///default/key/*"]#' \
        -e 's#^allowed_annotations = .*#allowed_annotations = ["io.cocoon.secret.*"]#' "$work/cocoon.toml"
else
    echo "== no trustee KBS in build/kbs (make deps unpacks it where available): skipping the secret demo"
fi

echo "== starting a private containerd in $work"
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
echo "== done in $(( (end - start) / 1000000 )) ms"

if [ -n "$secret" ]; then
    echo "== ctr run --annotation io.cocoon.secret.demo=kbs:///default/key/demo ..."
    $ctr run --rm --runtime io.containerd.cocoon.v2 --annotation io.cocoon.secret.demo=kbs:///default/key/demo \
        cocoon.demo/busybox:1 demo-secret \
        sh -c 'echo "the pod read its secret from /run/secrets/cocoon/demo: $(cat /run/secrets/cocoon/demo)"'
    b64=$(printf '%s' "$secret" | base64 -w0)
    echo "== looking for the secret (and its base64) in every host artefact: state dir, logs, share"
    if grep -rlaF -e "$secret" -e "$b64" "$work" --exclude-dir=kbs; then
        echo "the secret was found on the host (files above)" >&2
        exit 1
    fi
    echo "   not found: the secret existed only in the guest (and in the KBS's own store)"
fi
echo "== stopping containerd"
