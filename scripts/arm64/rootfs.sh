#!/usr/bin/env bash
# An emulated aarch64 (arm64) Debian, the Raspberry Pi OS 64-bit's base, for checking the
# torch-free runtime on the Pi's architecture from an x86 machine.
#
#   scripts/arm64/rootfs.sh            # build (or reuse) the root file system; prints its path
#
# The root file system is built from Debian's own packages (debootstrap) and run through
# qemu-user-static + binfmt_misc. It is cached under $EDGEDET_ARM64_CACHE (default
# ~/.cache/edgedet/arm64) in a directory named after the hash of this recipe: an unchanged
# recipe reuses it, a changed one builds a new one (older ones are removed).
# Needs root (debootstrap, mount, chroot). Missing tools are installed with apt-get.
set -euo pipefail

HERE="$(cd "$(dirname "$0")" && pwd)"
SUITE="${EDGEDET_ARM64_SUITE:-bookworm}"      # Raspberry Pi OS (64-bit) is Debian bookworm
CACHE="${EDGEDET_ARM64_CACHE:-$HOME/.cache/edgedet/arm64}"
INCLUDE="python3,python3-venv,python3-pip,ca-certificates"
RECIPE_VERSION=1                               # bump to force a rebuild without another change

log() { echo "[arm64] $*" >&2; }
die() { echo "[arm64] error: $*" >&2; exit 1; }

[ "$(id -u)" = 0 ] || die "needs root (debootstrap, mount and chroot); run it as root or with sudo"

# ---------------------------------------------------------------------------- host tools
ensure_tools() {
    local missing=()
    command -v qemu-aarch64-static >/dev/null || missing+=(qemu-user-static)
    command -v debootstrap >/dev/null || missing+=(debootstrap)
    command -v update-binfmts >/dev/null || missing+=(binfmt-support)
    if [ ${#missing[@]} -gt 0 ]; then
        log "installing ${missing[*]} (apt-get)"
        command -v apt-get >/dev/null || die "install ${missing[*]} (not a Debian/Ubuntu host: no apt-get)"
        DEBIAN_FRONTEND=noninteractive apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
    fi
}

# binfmt_misc lets the kernel hand aarch64 executables to qemu-aarch64-static.
ensure_binfmt() {
    local dir=/proc/sys/fs/binfmt_misc
    if [ ! -e "$dir/register" ]; then
        mount -t binfmt_misc binfmt_misc "$dir" || die "cannot mount binfmt_misc on $dir (a container without it: run on a VM or the host)"
    fi
    if [ ! -e "$dir/qemu-aarch64" ]; then
        update-binfmts --enable qemu-aarch64 >/dev/null 2>&1 || true
    fi
    if [ ! -e "$dir/qemu-aarch64" ]; then
        # binfmt-support knows no qemu-aarch64 entry (e.g. the package was installed before
        # binfmt_misc was mounted): register the standard one by hand; F = open qemu now, so
        # it need not exist inside the chroot.
        printf '%s' ':qemu-aarch64:M::\x7fELF\x02\x01\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00\x02\x00\xb7\x00:\xff\xff\xff\xff\xff\xff\xff\x00\xff\xff\xff\xff\xff\xff\xff\xff\xfe\xff\xff\xff:/usr/bin/qemu-aarch64-static:F' \
            > "$dir/register" || die "cannot register qemu-aarch64 with binfmt_misc"
    fi
    grep -q '^enabled' "$dir/qemu-aarch64" || echo 1 > "$dir/qemu-aarch64"
}

# The host's Debian mirror (never a host name of our own): deb822 sources first, then the
# one-line format.
host_mirror() {
    local uri=""
    if [ -r /etc/apt/sources.list.d/debian.sources ]; then
        uri=$(awk '/^URIs:/ {u=$2} /^Suites:/ && u != "" && $0 !~ /security/ {print u; exit}' \
              /etc/apt/sources.list.d/debian.sources)
    fi
    if [ -z "$uri" ] && [ -r /etc/apt/sources.list ]; then
        uri=$(awk '$1 == "deb" && $0 !~ /security/ {for (i = 2; i <= NF; i++) if ($i ~ /^[a-z]+:\/\//) {print $i; exit}}' \
              /etc/apt/sources.list)
    fi
    [ -n "$uri" ] || die "no Debian mirror in /etc/apt/sources.list(.d); set EDGEDET_ARM64_MIRROR"
    echo "$uri"
}

# ---------------------------------------------------------------------------- the recipe
# Its hash names the cache directory: this file's text plus the suite.
recipe_hash() {
    { cat "$0"; echo "$SUITE $RECIPE_VERSION"; } | sha256sum | cut -c1-12
}

# The host's pip set-up, so that pip inside uses the same registry and trusts the same CAs
# (pip inside fails TLS without the host's CA bundle).
copy_host_config() {
    local root=$1
    cp /etc/ssl/certs/ca-certificates.crt "$root/etc/ssl/certs/ca-certificates.crt"
    [ -f /etc/pip.conf ] && cp /etc/pip.conf "$root/etc/pip.conf"
    if [ -d /etc/xdg/pip ]; then mkdir -p "$root/etc/xdg" && rm -rf "$root/etc/xdg/pip" && cp -r /etc/xdg/pip "$root/etc/xdg/pip"; fi
    if [ -f "$HOME/.config/pip/pip.conf" ]; then
        mkdir -p "$root/root/.config/pip" && cp "$HOME/.config/pip/pip.conf" "$root/root/.config/pip/pip.conf"
    fi
    cp /etc/resolv.conf "$root/etc/resolv.conf" 2>/dev/null || true
}

build() {
    local root=$1 mirror=${EDGEDET_ARM64_MIRROR:-$(host_mirror)}
    local staging="$root.building"
    rm -rf "$staging"
    log "building a Debian $SUITE arm64 root file system from $mirror (a few minutes, ~330 MB)"
    debootstrap --arch=arm64 --variant=minbase --include="$INCLUDE" "$SUITE" "$staging" "$mirror" \
        > "$CACHE/debootstrap.log" 2>&1 || { tail -20 "$CACHE/debootstrap.log" >&2; die "debootstrap failed (log: $CACHE/debootstrap.log)"; }
    cp /usr/bin/qemu-aarch64-static "$staging/usr/bin/"  # for binfmt entries without the F flag
    [ "$(chroot "$staging" uname -m)" = aarch64 ] || die "the root file system does not run as aarch64"
    rm -rf "$staging/var/cache/apt/archives/"*.deb
    mv "$staging" "$root"
    log "built $root"
}

main() {
    ensure_tools
    ensure_binfmt
    mkdir -p "$CACHE"
    local root="$CACHE/rootfs-$(recipe_hash)"
    exec 9> "$CACHE/.lock"
    flock 9  # one build at a time; concurrent runs wait and reuse it
    if [ ! -x "$root/usr/bin/python3" ]; then
        for old in "$CACHE"/rootfs-*; do  # an older recipe's root file system
            [ -d "$old" ] && [ "$old" != "$root" ] && { log "removing $old (older recipe)"; rm -rf --one-file-system "$old"; }
        done
        build "$root"
    fi
    copy_host_config "$root"  # every run: the host's CAs and pip set-up may change
    echo "$root"
}

main "$@"
