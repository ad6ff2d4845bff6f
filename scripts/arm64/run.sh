#!/usr/bin/env bash
# Run a command inside the emulated arm64 Debian (scripts/arm64/rootfs.sh builds or reuses it).
#
#   scripts/arm64/run.sh [-b HOST_DIR:DIR]... [-e NAME=VALUE]... [--] COMMAND [ARG]...
#   scripts/arm64/run.sh -- uname -m                                # aarch64
#   scripts/arm64/run.sh -b "$PWD/out:/work" -- python3 -c 'import platform; print(platform.machine())'
#
# The mounts (/proc, /dev, /dev/shm, the -b directories) live in a private mount namespace
# (unshare -m): they disappear when the command ends, even when it is killed, so none is left
# behind on the host and the cached root file system can always be deleted or rebuilt.
#
# /sys is deliberately NOT mounted: with it, onnxruntime's cpuinfo reads the host's CPU topology
# and crashes qemu (segfault on import); without it onnxruntime only warns.
# The environment inside is clean (a fixed PATH, HOME=/root) plus the host's PIP_* variables (the
# same package index set-up as the host) and the -e variables.
set -euo pipefail

HERE="$(cd "$(dirname "$0")" && pwd)"
binds=()
envs=()
while [ $# -gt 0 ]; do
    case "$1" in
        -b) binds+=("$2"); shift 2 ;;
        -e) envs+=("$2"); shift 2 ;;
        --) shift; break ;;
        -*) echo "usage: $0 [-b HOST_DIR:DIR]... [-e NAME=VALUE]... [--] COMMAND..." >&2; exit 2 ;;
        *) break ;;
    esac
done
[ $# -gt 0 ] || { echo "usage: $0 [-b HOST_DIR:DIR]... [-e NAME=VALUE]... [--] COMMAND..." >&2; exit 2; }

ROOT="$("$HERE/rootfs.sh")"

for name in $(compgen -e | grep '^PIP_' || true); do
    envs+=("$name=${!name}")
done
# A PIP_* value naming a host folder (a local wheel directory) does not exist inside: pip warns
# and goes on with the index.

mounts="mount -t proc proc '$ROOT/proc' && mount --rbind /dev '$ROOT/dev'"
for bind in ${binds[@]+"${binds[@]}"}; do
    src="${bind%%:*}" dst="${bind#*:}"
    [ -d "$src" ] || { echo "[arm64] error: $src is not a directory" >&2; exit 2; }
    mkdir -p "$ROOT$dst"
    mounts+=" && mount --bind '$src' '$ROOT$dst'"
done

exec unshare --mount --propagation private -- bash -c "$mounts && exec \"\$@\"" bash \
    chroot "$ROOT" /usr/bin/env -i HOME=/root LANG=C.UTF-8 TERM=dumb \
    PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    ${envs[@]+"${envs[@]}"} "$@"
