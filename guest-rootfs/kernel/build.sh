#!/bin/sh
# Builds Cocoon's guest kernel, bit-reproducibly, into OUT_DIR:
#
#   guest-rootfs/kernel/build.sh OUT_DIR
#   guest-rootfs/kernel/build.sh --check-config FRAGMENT CONFIG
#       (only step 3 below: is every value of FRAGMENT in CONFIG?)
#   guest-rootfs/kernel/build.sh --print-key
#       (the cache key this source, fragment and toolchain have)
#
# Source: Debian's linux-source-6.12 at the version in ./source-version
# (downloaded with apt-get download and unpacked with dpkg -x; nothing is
# installed). Config: `make tinyconfig`, ./cocoon.config merged over it,
# `make olddefconfig`; every value of the fragment must be in the final
# .config. Build: fixed KBUILD_* identity, LC_ALL=C, TZ=UTC.
#
# OUT_DIR gets the layout of an unpacked kernel package, which the guest
# builder reads: boot/vmlinuz-<release>, boot/config-<release>,
# lib/modules/<release>/{modules.dep,modules.builtin,...}, and build-info
# (source version, fragment and toolchain hashes, sha256 of the bzImage).
#
# Cache: COCOON_CACHE_DIR (default $HOME/.cache/cocoon; set it empty to turn
# the cache off) keeps one entry per (source version, fragment, toolchain,
# RECIPE) under kernel/<key>. An entry is used only if its SHA256SUMS still
# match; a corrupt entry is an error, never used.
#
# COCOON_KERNEL_SOURCE_VERSION overrides ./source-version.
set -eu

# Bump when a change to this script changes what it builds.
RECIPE=1
HERE=$(cd "$(dirname "$0")" && pwd)
FRAGMENT=$HERE/cocoon.config

say() { printf 'kernel: %s\n' "$*"; }
die() { printf 'kernel: error: %s\n' "$*" >&2; exit 1; }

# Every value of the fragment must be in the final .config: a symbol the
# kernel does not know, or whose dependencies are missing, is an error.
check_config() { # fragment config
    missing=""
    while IFS= read -r line; do
        case "$line" in
            CONFIG_*=n) want="# ${line%=n} is not set" ;;
            CONFIG_*=*) want=$line ;;
            "# CONFIG_"*" is not set") want=$line ;;
            *) continue ;;
        esac
        sym=$(printf '%s\n' "$want" | sed -n 's/^\(# \)\{0,1\}\(CONFIG_[A-Za-z0-9_]*\).*/\2/p')
        if [ "${want#\# }" != "$want" ]; then
            # "not set" is also satisfied by a symbol that no longer exists.
            if grep -q "^$sym=" "$2"; then
                missing="$missing
  $want (final: $(grep "^$sym=" "$2"))"
            fi
        elif ! grep -qxF "$want" "$2"; then
            missing="$missing
  $want (final: $(grep -E "^(# )?$sym[= ]" "$2" || echo 'absent: unknown symbol or unmet dependency'))"
        fi
    done <"$1"
    [ -z "$missing" ] || die "values of $1 that are not in the final .config:$missing"
}

if [ "${1:-}" = "--check-config" ]; then
    [ $# -eq 3 ] || die "usage: build.sh --check-config FRAGMENT CONFIG"
    check_config "$2" "$3"
    say "every value of $2 is in $3"
    exit 0
fi
OUT=${1:?usage: build.sh OUT_DIR}
VERSION=${COCOON_KERNEL_SOURCE_VERSION:-$(cat "$HERE/source-version")}
case "$VERSION" in
    *[!A-Za-z0-9.+~:-]*|"") die "the source version \"$VERSION\" is not a Debian version (digits, letters, . + ~ : -)" ;;
esac
# The build's identity, fixed so two builds are byte-identical.
KBUILD_BUILD_TIMESTAMP='Sun Jul  5 00:00:00 UTC 2026'
KBUILD_BUILD_USER=cocoon
KBUILD_BUILD_HOST=cocoon
KBUILD_BUILD_VERSION=1
export KBUILD_BUILD_TIMESTAMP KBUILD_BUILD_USER KBUILD_BUILD_HOST KBUILD_BUILD_VERSION
export LC_ALL=C TZ=UTC
unset KCFLAGS KCPPFLAGS KAFLAGS CROSS_COMPILE ARCH 2>/dev/null || true

for tool in gcc ld make bison flex bc pahole zstd depmod dpkg-deb apt-get sha256sum; do
    command -v "$tool" >/dev/null 2>&1 || die "$tool is missing; run \`make deps\` (it installs the kernel build tools)"
done

# --- the cache key ------------------------------------------------------------
toolchain=$(dpkg-query -W -f='${Package}=${Version}\n' gcc-12 binutils make bison flex bc dwarves zstd libelf-dev libssl-dev 2>/dev/null | sort)
key=$({ echo "recipe=$RECIPE"; echo "linux-source-6.12=$VERSION"; cat "$FRAGMENT"; echo "$toolchain"; } | sha256sum | cut -c1-16)
CACHE_ROOT=${COCOON_CACHE_DIR-${HOME:-/root}/.cache/cocoon}
if [ "$OUT" = "--print-key" ]; then
    echo "$key"
    exit 0
fi

install_entry() { # entry dir → OUT (atomically)
    rm -rf "$OUT.partial"
    mkdir -p "$(dirname "$OUT")"
    cp -a "$1" "$OUT.partial"
    rm -rf "$OUT"
    mv "$OUT.partial" "$OUT"
}

verify_entry() { # entry dir
    (cd "$1" && sha256sum --quiet --strict -c SHA256SUMS >/dev/null 2>&1)
}

if [ -f "$OUT/build-info" ] && grep -qx "cache_key=$key" "$OUT/build-info" && verify_entry "$OUT"; then
    say "$(cat "$OUT/release") is up to date ($OUT)"
    exit 0
fi
if [ -n "$CACHE_ROOT" ]; then
    entry=$CACHE_ROOT/kernel/$key
    if [ -d "$entry" ]; then
        verify_entry "$entry" || die "the cached kernel $entry does not match its SHA256SUMS (corrupt or edited); remove it (rm -rf '$entry') and run \`make kernel\` again"
        install_entry "$entry"
        say "$(cat "$OUT/release") from the cache ($entry)"
        exit 0
    fi
fi

# --- a clean build ------------------------------------------------------------
started=$(date +%s)
work=$(mktemp -d "${TMPDIR:-/var/tmp}/cocoon-kernel.XXXXXX")
trap 'rm -rf "$work"' EXIT INT TERM
say "building from linux-source-6.12=$VERSION in $work (about 8 minutes on 2 cores)"
(cd "$work" && apt-get download -qq "linux-source-6.12=$VERSION" >/dev/null 2>"$work/apt.err") \
    || die "cannot download linux-source-6.12=$VERSION: $(tail -n1 "$work/apt.err"). Is bookworm-backports in the apt sources (\`make deps\` adds it)? If the archive no longer has this version, update guest-rootfs/kernel/source-version and the published measurements"
dpkg-deb -x "$work"/linux-source-6.12_*.deb "$work/pkg"
tarball=$(ls "$work"/pkg/usr/src/linux-source-6.12.tar.* 2>/dev/null | head -n1)
[ -n "$tarball" ] || die "linux-source-6.12=$VERSION has no /usr/src/linux-source-6.12.tar.*"
tar -C "$work" -xf "$tarball"
rm -rf "$work/pkg" "$work"/linux-source-6.12_*.deb
src=$work/linux-source-6.12
[ -f "$src/Makefile" ] || die "the source tarball did not unpack to linux-source-6.12/"

jobs=$(nproc)
kmake() { make -C "$src" -s ARCH=x86_64 "$@"; }
kmake tinyconfig >/dev/null
(cd "$src" && ARCH=x86_64 scripts/kconfig/merge_config.sh -m -O "$src" .config "$FRAGMENT" >"$work/merge.log" 2>&1) \
    || { cat "$work/merge.log" >&2; die "merge_config.sh failed"; }
kmake olddefconfig >/dev/null

check_config "$FRAGMENT" "$src/.config"

kmake -j"$jobs" bzImage modules
# Only after the build has the configuration's local version in effect.
release=$(kmake kernelrelease)
case "$release" in *-cocoon) ;; *) die "the built kernel's release is \"$release\", not *-cocoon" ;; esac
stage=$work/out
mkdir -p "$stage/boot"
cp "$src/arch/x86/boot/bzImage" "$stage/boot/vmlinuz-$release"
cp "$src/.config" "$stage/boot/config-$release"
kmake INSTALL_MOD_PATH="$stage" modules_install >/dev/null
# modules_install links build/ back into the source tree; the guest needs none of it.
rm -f "$stage/lib/modules/$release/build" "$stage/lib/modules/$release/source"
echo "$release" >"$stage/release"
{
    echo "source=linux-source-6.12=$VERSION"
    echo "fragment_sha256=$(sha256sum <"$FRAGMENT" | cut -d' ' -f1)"
    echo "config_sha256=$(sha256sum <"$src/.config" | cut -d' ' -f1)"
    echo "toolchain_sha256=$(echo "$toolchain" | sha256sum | cut -d' ' -f1)"
    echo "bzimage_sha256=$(sha256sum <"$stage/boot/vmlinuz-$release" | cut -d' ' -f1)"
    echo "cache_key=$key"
} >"$stage/build-info"
(cd "$stage" && find . -type f ! -name SHA256SUMS | LC_ALL=C sort | xargs sha256sum >SHA256SUMS)
# How long the clean build took (for `make bench`; not part of SHA256SUMS).
echo $(( $(date +%s) - started )) >"$stage/build-seconds"

if [ -n "$CACHE_ROOT" ]; then
    mkdir -p "$CACHE_ROOT/kernel"
    rm -rf "$CACHE_ROOT/kernel/$key.partial"
    cp -a "$stage" "$CACHE_ROOT/kernel/$key.partial"
    # Another build may have filled the entry meanwhile: keep the first.
    mv -T "$CACHE_ROOT/kernel/$key.partial" "$CACHE_ROOT/kernel/$key" 2>/dev/null \
        || rm -rf "$CACHE_ROOT/kernel/$key.partial"
fi
install_entry "$stage"
say "built $release: bzImage $(stat -c %s "$OUT/boot/vmlinuz-$release") bytes, sha256 $(sed -n 's/^bzimage_sha256=//p' "$OUT/build-info")"
