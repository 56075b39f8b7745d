#!/bin/sh
# Install everything Cocoon needs to build and test, idempotently.
#
#   tests/deps.sh [PREFIX]
#
# - Debian packages: qemu-system-x86 10.x (bookworm-backports), containerd,
#   docker-registry (a local registry for `cocoon policy docker://...`),
#   containernetworking-plugins (bridge, host-local: the CRI pod network
#   tests), cryptsetup-bin (veritysetup: dm-verity trees are checked against
#   it), attr and erofs-utils (getfattr and fsck.erofs read back the erofs
#   layer images), curl,
#   cpio/xz, busybox-static (test images), build libraries for virtiofsd.
# - virtiofsd and vhost-device-vsock with `cargo install --locked` into
#   PREFIX (default build/tools), never system-wide.
# - The guest kernel: Debian's linux-image-6.12 from bookworm-backports,
#   unpacked with dpkg -x into build/kernel (never installed as the host's
#   kernel).
# - For the measurement tests: Debian's ovmf-amdsev and ovmf-inteltdx
#   firmware (unstable, unpacked into build/firmware) and sev-snp-measure
#   0.0.13 from PyPI in a venv (build/measure-venv); containerd 2.x
#   (unstable, unpacked into build/containerd2) for compatibility tests.
# - For the attestation tests and the demo: trustee's KBS into build/kbs
#   ($COCOON_KBS_BIN, or the prebuilt kbs.xz next to the checkout).
#
# A second run finds everything in place and says so.
#
# The Debian mirror for the sources this script adds (bookworm-backports,
# and unstable for the unpacked-only packages) is the one the host's own
# apt configuration uses for bookworm (sources.list, or deb822 files in
# sources.list.d), so a node behind a local mirror or proxy keeps using it;
# deb.debian.org only when the host names none. `tests/deps.sh
# --print-mirror` prints the choice.
set -eu

APT_ETC=${COCOON_APT_ETC:-/etc/apt}

# The URI the host's apt uses for Debian bookworm (not -security).
host_mirror() {
    m=""
    if [ -f "$APT_ETC/sources.list" ]; then
        m=$(sed -n 's/^[[:space:]]*deb[[:space:]]\{1,\}\(\[[^]]*\][[:space:]]\{1,\}\)\{0,1\}\([a-z+]*:\/\/[^[:space:]]*\)[[:space:]]\{1,\}bookworm[[:space:]].*/\2/p' \
            "$APT_ETC/sources.list" | head -n1)
    fi
    if [ -z "$m" ]; then
        for f in "$APT_ETC"/sources.list.d/*.sources; do
            [ -f "$f" ] || continue
            # deb822: the URIs of a stanza whose Suites include bookworm.
            m=$(awk '
                /^[[:space:]]*$/ { if (suite && uri) { print uri; exit } suite = 0; uri = ""; next }
                /^[[:space:]]*#/ { next }
                tolower($1) == "uris:" { uri = $2 }
                tolower($1) == "suites:" { for (i = 2; i <= NF; i++) if ($i == "bookworm") suite = 1 }
                END { if (suite && uri) print uri }' "$f" | head -n1)
            [ -n "$m" ] && break
        done
    fi
    echo "${m:-http://deb.debian.org/debian}" | sed 's#/*$##'
}
MIRROR=$(host_mirror)
if [ "${1:-}" = "--print-mirror" ]; then
    echo "$MIRROR"
    exit 0
fi

ROOT=$(cd "$(dirname "$0")/.." && pwd)
PREFIX=${1:-$ROOT/build/tools}
KERNEL_DIR=$ROOT/build/kernel
VIRTIOFSD_VERSION=1.14.0
VHOST_DEVICE_VSOCK_VERSION=0.3.0
changed=0

say() { printf 'deps: %s\n' "$*"; }

export DEBIAN_FRONTEND=noninteractive

# --- apt sources ------------------------------------------------------------
BACKPORTS=/etc/apt/sources.list.d/cocoon-bookworm-backports.sources
if ! grep -rqs 'bookworm-backports' /etc/apt/sources.list /etc/apt/sources.list.d/; then
    cat >"$BACKPORTS" <<EOF
Types: deb
URIs: $MIRROR
Suites: bookworm-backports
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
    say "added bookworm-backports ($MIRROR) to apt sources"
    apt-get update -qq
    changed=1
fi

# --- Debian packages --------------------------------------------------------
PKGS="containerd containernetworking-plugins docker-registry cryptsetup-bin curl attr erofs-utils protobuf-compiler procps time bsdutils mount python3 python3-venv cpio xz-utils busybox-static libcap-ng-dev libseccomp-dev pkg-config iproute2 kmod gcc make bc bison flex dwarves libelf-dev libssl-dev zstd"
missing=""
for p in $PKGS; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing="$missing $p"
done
qemu_ok=0
if command -v qemu-system-x86_64 >/dev/null 2>&1; then
    qv=$(qemu-system-x86_64 --version | sed -n 's/^QEMU emulator version \([0-9]*\)\..*/\1/p')
    [ "${qv:-0}" -ge 10 ] && qemu_ok=1
fi
if [ -n "$missing" ] || [ $qemu_ok -eq 0 ]; then
    [ $changed -eq 0 ] && apt-get update -qq
    if [ -n "$missing" ]; then
        say "installing Debian packages:$missing"
        apt-get install -y -qq --no-install-recommends $missing >/dev/null
    fi
    if [ $qemu_ok -eq 0 ]; then
        say "installing qemu-system-x86 from bookworm-backports"
        apt-get install -y -qq --no-install-recommends -t bookworm-backports \
            qemu-system-x86 qemu-system-data ovmf >/dev/null
    fi
    changed=1
fi

# --- crates-built helper daemons -------------------------------------------
mkdir -p "$PREFIX"
install_crate() { # name version binary
    if [ -x "$PREFIX/bin/$3" ] && "$PREFIX/bin/$3" --version 2>/dev/null | grep -q "$2"; then
        return 0
    fi
    say "cargo install --locked $1@$2 (into $PREFIX)"
    cargo install --locked --quiet --root "$PREFIX" "$1@$2"
    changed=1
}
install_crate virtiofsd "$VIRTIOFSD_VERSION" virtiofsd
install_crate vhost-device-vsock "$VHOST_DEVICE_VSOCK_VERSION" vhost-device-vsock

# --- guest kernel -----------------------------------------------------------
if ! ls "$KERNEL_DIR"/boot/vmlinuz-* >/dev/null 2>&1; then
    # Resolve the current 6.12 image from the backports metapackage.
    kpkg=$(apt-cache depends -t bookworm-backports linux-image-amd64 2>/dev/null \
        | sed -n 's/^ *Depends: \(linux-image-6\.[0-9.+a-z-]*-amd64\)$/\1/p' | head -n1)
    case "$kpkg" in
        linux-image-6.12*) ;;
        *) echo "deps: could not resolve linux-image-6.12 from bookworm-backports (got '${kpkg}')" >&2; exit 1 ;;
    esac
    say "fetching guest kernel $kpkg"
    tmp=$(mktemp -d)
    trap 'rm -rf "$tmp"' EXIT
    (cd "$tmp" && apt-get download -qq -t bookworm-backports "$kpkg")
    rm -rf "$KERNEL_DIR.partial"
    mkdir -p "$KERNEL_DIR.partial"
    dpkg -x "$tmp"/"$kpkg"_*.deb "$KERNEL_DIR.partial"
    echo "$kpkg" >"$KERNEL_DIR.partial/package"
    # The package leaves modules.dep to the installer; generate it here.
    release=${kpkg#linux-image-}
    depmod -b "$KERNEL_DIR.partial" "$release"
    rm -rf "$KERNEL_DIR"
    mv "$KERNEL_DIR.partial" "$KERNEL_DIR"
    changed=1
fi

# --- packages from Debian unstable, unpacked only ----------------------------
# Downloaded with a private apt state under build/apt-unstable and unpacked
# with dpkg -x (never installed on the host).
sid=$ROOT/build/apt-unstable
sid_ready=0
sid_download() {
    mkdir -p "$sid/lists/partial" "$sid/cache/archives/partial"
    echo "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] $MIRROR unstable main" >"$sid/sources.list"
    opts="-o Dir::Etc::SourceList=$sid/sources.list -o Dir::Etc::SourceParts=/dev/null -o Dir::State::Lists=$sid/lists -o Dir::Cache=$sid/cache -o APT::Sandbox::User=root"
    if [ $sid_ready -eq 0 ]; then
        apt-get $opts update -qq >/dev/null 2>&1 || return 1
        sid_ready=1
    fi
    (cd "$sid" && apt-get $opts download -qq "$@" >/dev/null 2>&1)
}

# --- confidential-guest firmware (measurement tests) -------------------------
# OVMF.amdsev.fd (SEV-SNP with the kernel hashes table) and
# OVMF.inteltdx.ms.fd (TDVF) from Debian's architecture-independent
# ovmf-amdsev and ovmf-inteltdx packages, unpacked into build/firmware.
FW_DIR=$ROOT/build/firmware
if [ ! -f "$FW_DIR/usr/share/ovmf/OVMF.amdsev.fd" ] || [ ! -f "$FW_DIR/usr/share/ovmf/OVMF.inteltdx.ms.fd" ]; then
    rm -f "$sid"/ovmf-amdsev_*.deb "$sid"/ovmf-inteltdx_*.deb
    if sid_download ovmf-amdsev ovmf-inteltdx; then
        rm -rf "$FW_DIR" && mkdir -p "$FW_DIR"
        for d in "$sid"/ovmf-amdsev_*.deb "$sid"/ovmf-inteltdx_*.deb; do dpkg -x "$d" "$FW_DIR"; done
        say "unpacked $(basename "$sid"/ovmf-amdsev_*.deb .deb) and $(basename "$sid"/ovmf-inteltdx_*.deb .deb) into $FW_DIR"
        changed=1
    else
        say "could not fetch ovmf-amdsev/ovmf-inteltdx from Debian unstable; the firmware measurement tests will be skipped"
    fi
fi

# --- sev-snp-measure (reference implementation for differential tests) -----
VENV=$ROOT/build/measure-venv
if [ ! -x "$VENV/bin/sev-snp-measure" ]; then
    rm -rf "$VENV"
    if python3 -m venv "$VENV" && "$VENV/bin/pip" install -q --disable-pip-version-check sev-snp-measure==0.0.13; then
        say "installed sev-snp-measure 0.0.13 into $VENV"
        changed=1
    else
        rm -rf "$VENV"
        say "could not install sev-snp-measure from PyPI; the differential measurement tests will be skipped"
    fi
fi

# --- containerd 2.x (optional, for compatibility tests) ---------------------
# Debian's unstable package, only unpacked (never installed) into
# build/containerd2; its binaries run on bookworm. Failure is not fatal: the
# tests that need it are skipped with a printed reason.
C2_DIR=$ROOT/build/containerd2
if [ ! -x "$C2_DIR/usr/bin/containerd" ]; then
    if sid_download containerd; then
        rm -rf "$C2_DIR" && mkdir -p "$C2_DIR"
        dpkg -x "$sid"/containerd_*.deb "$C2_DIR"
        say "unpacked containerd $("$C2_DIR/usr/bin/containerd" --version | awk '{print $3}') into $C2_DIR"
        changed=1
    else
        say "could not fetch containerd 2.x from Debian unstable; its compatibility tests will be skipped"
    fi
fi

# --- Docker 28 (optional, for the Docker tests) ------------------------------
# Debian unstable's docker.io, docker-cli and tini-static, only unpacked into
# build/docker (dockerd runs against a test's private containerd, in its own
# network namespace). Failure is not fatal: the Docker tests are skipped
# with a printed reason.
DOCKER_DIR=$ROOT/build/docker
if [ ! -x "$DOCKER_DIR/usr/sbin/dockerd" ] || [ ! -x "$DOCKER_DIR/usr/bin/docker" ]; then
    rm -f "$sid"/docker.io_*.deb "$sid"/docker-cli_*.deb "$sid"/tini-static_*.deb
    if sid_download docker.io docker-cli tini-static; then
        rm -rf "$DOCKER_DIR" && mkdir -p "$DOCKER_DIR"
        for d in "$sid"/docker.io_*.deb "$sid"/docker-cli_*.deb "$sid"/tini-static_*.deb; do dpkg -x "$d" "$DOCKER_DIR"; done
        say "unpacked Docker $("$DOCKER_DIR/usr/sbin/dockerd" --version | awk '{print $3}' | tr -d ,) into $DOCKER_DIR"
        changed=1
    else
        say "could not fetch docker.io from Debian unstable; the Docker tests will be skipped"
    fi
fi

# --- trustee's KBS (optional, for the attestation tests) ---------------------
# A real Key Broker Service from Confidential Containers' trustee, for tests
# and the demo only: $COCOON_KBS_BIN if set, else the prebuilt binary next
# to this checkout (../shared/vendor/trustee-kbs/kbs.xz) where it exists.
# Without one, the KBS tests are skipped with a printed reason.
KBS_DIR=$ROOT/build/kbs
KBS_XZ=$ROOT/../shared/vendor/trustee-kbs/kbs.xz
if [ -n "${COCOON_KBS_BIN:-}" ] && [ -x "$COCOON_KBS_BIN" ]; then
    if ! cmp -s "$COCOON_KBS_BIN" "$KBS_DIR/kbs" 2>/dev/null; then
        mkdir -p "$KBS_DIR" && install -m 0755 "$COCOON_KBS_BIN" "$KBS_DIR/kbs"
        say "installed the KBS from \$COCOON_KBS_BIN into $KBS_DIR"
        changed=1
    fi
elif [ ! -x "$KBS_DIR/kbs" ]; then
    if [ -f "$KBS_XZ" ]; then
        mkdir -p "$KBS_DIR"
        xz -dc "$KBS_XZ" > "$KBS_DIR/kbs.tmp" && chmod 0755 "$KBS_DIR/kbs.tmp" && mv "$KBS_DIR/kbs.tmp" "$KBS_DIR/kbs"
        say "unpacked trustee's kbs into $KBS_DIR"
        changed=1
    else
        say "no trustee KBS: set COCOON_KBS_BIN to a kbs binary (build it from confidential-containers/trustee: cargo build --release -p kbs --bin kbs --no-default-features --features coco-as-builtin); the KBS tests will be skipped"
    fi
fi

if [ $changed -eq 0 ]; then
    say "everything already installed; nothing to do"
else
    say "done"
fi
