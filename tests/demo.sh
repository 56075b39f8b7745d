#!/bin/bash
# make demo: a private containerd (own state dir and socket), a locally built
# busybox image, one task run through Cocoon, its output printed; then
# everything is stopped again.
# When trustee's KBS is available (build/kbs/kbs, from make deps), a second
# task reads a secret the guest fetched from it, and a third a sealed model
# made and sealed on the spot, decrypted only in the guest with a key from
# the KBS; the demo shows that no host artefact holds the secret, the
# model's plaintext or its key. Last, a pod runs its image from verified
# layers (root hashes from `cocoon policy` in its initdata), and a changed
# byte in the node's copy of the layer is refused by the guest.
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

. "$root/tests/fixtures/containerd.sh"
ctd_node_config "$work" "$config"

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
        -e 's#^allowed_resources = .*#allowed_resources = ["kbs:///default/key/*", "kbs:///default/model/*"]#' \
        -e 's#^allowed_annotations = .*#allowed_annotations = ["io.cocoon.secret.*", "io.cocoon.model.*"]#' "$work/cocoon.toml"
    echo "== the model owner's machine: a small model, sealed with a fresh key; the key goes to the KBS"
    mkdir -p "$work/owner/model" "$work/volume"
    head -c $((4 << 20)) /dev/urandom >"$work/owner/model/weights.safetensors"
    printf '{"architecture": "demo", "layers": 2}\n' >"$work/owner/model/config.json"
    "$bin/cocoon" seal model --in "$work/owner/model" --out "$work/volume/demo.sealed" \
        --key-uri kbs:///default/model/demo --key-out "$work/owner/demo.key" | sed -n '1,2p'
    kbs_store default/model/demo "$work/owner/demo.key"
    model_sha=$(sha256sum "$work/owner/model/weights.safetensors" | cut -d' ' -f1)
else
    echo "== no trustee KBS in build/kbs (make deps unpacks it where available): skipping the secret demo"
fi

echo "== starting a private containerd in $work"
ctd_start "$work" "$bin"
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
if [ -n "$secret" ]; then
    echo "== ctr run --mount <volume with demo.sealed> --annotation io.cocoon.model.demo=/data/demo.sealed ..."
    $ctr run --rm --runtime io.containerd.cocoon.v2 \
        --mount "type=bind,src=$work/volume,dst=/data,options=rbind:ro" \
        --annotation io.cocoon.model.demo=/data/demo.sealed cocoon.demo/busybox:1 demo-model \
        sh -c 'echo "the pod sees its model at /models/demo (read-only):"; cd /models/demo && sha256sum weights.safetensors && cat config.json' \
        | tee "$work/model.out"
    grep -q "$model_sha  weights.safetensors" "$work/model.out" || { echo "the model's hash differs from the owner's ($model_sha)" >&2; exit 1; }
    echo "   same sha256 as on the owner's machine: $model_sha"
    grep -o '"msg":"sealed model decrypted in the guest"[^}]*' "$work/containerd.log" | tail -n1 | sed 's/^/   shim log: /'
    echo "== looking for the model's plaintext and its key in every host artefact (not the owner's dir, not the KBS's store)"
    python3 - "$work" "$work/owner/model/weights.safetensors" "$work/owner/demo.key" <<'EOF3'
import os, sys
work, weights, key = sys.argv[1:]
needles = {"plaintext": open(weights, "rb").read()[65536:65536 + 64], "key": open(key, "rb").read()}
skip = {os.path.join(work, "owner"), os.path.join(work, "kbs")}
found = []
for d, dirs, files in os.walk(work):
    dirs[:] = [x for x in dirs if os.path.join(d, x) not in skip]
    for f in files:
        p = os.path.join(d, f)
        if os.path.islink(p) or not os.path.isfile(p):
            continue
        data = open(p, "rb").read()
        found += ["%s in %s" % (w, p) for w, n in needles.items() if n in data]
if found:
    sys.exit("found on the host: " + "; ".join(found))
print("   not found: the model was plaintext only in the owner's hands and in the guest's memory")
EOF3
fi
echo "== verified image: cocoon policy computes the image's layer root hashes and pins the container's command for the pod's initdata"
pinned=$("$bin/cocoon" policy --name cocoon.demo/busybox:1 "$work/image.tar")
printf '%s\n' "$pinned" | sed 's/^/   /'
# The demo's probes run commands of their own: an entry for the same
# layers without pins.
fragment=$("$bin/cocoon" policy --any-process --any-volume --name cocoon.demo/busybox:1 "$work/image.tar")
to_initdata() {
    local doc
    doc=$(printf 'version = "0.1.0"\nalgorithm = "sha256"\n\n[data]\n"cocoon-policy.toml" = '"'''"'\n%s\n'"'''"'\n' "$1")
    echo "io.katacontainers.config.hypervisor.cc_init_data=$(printf '%s' "$doc" | gzip -9 | base64 -w0)"
}
initdata=$(to_initdata "$fragment")
pinned_initdata=$(to_initdata "$pinned")
# The node verifies every pod's image (as it does for SEV-SNP/TDX pods by
# default) and allows the pod's own initdata.
sed -i -e 's/^verified_layers = .*/verified_layers = "always"/' \
    -e "s#^layer_cache_dir = .*#layer_cache_dir = \"$work/layers\"#" \
    -e 's/^allowed_annotations = \[\]/allowed_annotations = ["io.katacontainers.config.hypervisor.cc_init_data"]/' \
    -e 's/^allowed_annotations = \[\(..*\)\]/allowed_annotations = [\1, "io.katacontainers.config.hypervisor.cc_init_data"]/' "$work/cocoon.toml"
echo "== ctr run --annotation <initdata with the image's hashes> ... (the layer checked by dm-verity in the guest)"
$ctr run --rm --runtime io.containerd.cocoon.v2 --annotation "$initdata" cocoon.demo/busybox:1 demo-verified \
    sh -c 'echo "   root: $(grep " / " /proc/mounts | cut -d" " -f1-3), lower layer $(grep " / " /proc/mounts | grep -o "lowerdir=[^,]*")"; for d in /sys/block/dm-*; do echo "   $(cat $d/dm/name): a dm-verity device over $(ls $d/slaves)"; done'
echo "== under the pinned entry, another command of the same image is refused"
if $ctr run --rm --runtime io.containerd.cocoon.v2 --annotation "$pinned_initdata" cocoon.demo/busybox:1 demo-other \
    sh -c 'cat /proc/self/environ' 2>"$work/other.err"; then
    echo "a command the policy does not pin was run" >&2
    exit 1
fi
grep -o "not what the host asks it to run: [^;]*" "$work/other.err" | head -n1 | sed 's/^/   /'
echo "== one byte of the node's cached layer changed: the guest refuses it"
layer_file=$(ls "$work"/layers/*.layer)
python3 -c 'import sys; f=open(sys.argv[1],"r+b"); f.seek(2000); b=f.read(1); f.seek(2000); f.write(bytes([b[0]^1]))' "$layer_file"
if $ctr run --rm --runtime io.containerd.cocoon.v2 --annotation "$initdata" cocoon.demo/busybox:1 demo-tampered true 2>"$work/tampered.err"; then
    echo "the changed layer was accepted" >&2
    exit 1
fi
grep -o "failed dm-verity verification: [^(]*" "$work/tampered.err" | head -n1 | sed 's/^/   /'
echo "== stopping containerd"
