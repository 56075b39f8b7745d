#!/bin/sh
# The guest kernel is bit-reproducible: a clean build in another directory,
# with the cache off, gives the same bzImage, .config and modules metadata
# as the reference tree.
#
#   tests/kernel-repro.sh REFERENCE_DIR     (build/kernel-cocoon)
set -eu
ROOT=$(cd "$(dirname "$0")/.." && pwd)
REF=${1:?usage: kernel-repro.sh REFERENCE_DIR}
[ -f "$REF/SHA256SUMS" ] || { echo "kernel-repro: $REF has no SHA256SUMS; run \`make kernel\` first" >&2; exit 1; }
scratch=$(mktemp -d "${TMPDIR:-/var/tmp}/cocoon-kernel-repro.XXXXXX")
trap 'rm -rf "$scratch"' EXIT INT TERM
start=$(date +%s)
COCOON_CACHE_DIR= TMPDIR=$scratch "$ROOT/guest-rootfs/kernel/build.sh" "$scratch/out"
took=$(( $(date +%s) - start ))
if cmp -s "$REF/SHA256SUMS" "$scratch/out/SHA256SUMS"; then
    echo "kernel-repro: PASS: two builds are byte-identical ($(sed -n 's/^bzimage_sha256=//p' "$REF/build-info"); second build ${took} s)"
else
    echo "kernel-repro: FAIL: the second build differs from $REF:" >&2
    diff "$REF/SHA256SUMS" "$scratch/out/SHA256SUMS" >&2 || true
    exit 1
fi
