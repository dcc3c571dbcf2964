#!/usr/bin/env bash
# Builds the real Kubernetes API server the controller's integration tests run against
# (shared/kapi: upstream k8s.io/apiserver + apiextensions-apiserver from Debian, and etcd),
# once: the binaries are cached in .cache/kapi (gitignored). About 3.5 min on 2 cores.
#
# The kit lives outside this repository (NODUS_KAPI_KIT, default ../shared/kapi). Without it
# this says so loudly and the API-server tests print SKIPPED.
set -euo pipefail
cd "$(dirname "$0")/.."
kit=${NODUS_KAPI_KIT:-../shared/kapi}
work=.cache/kapi
if [ ! -f "$kit/setup-kapi.sh" ]; then
    echo "WARNING: kapi kit not found at $kit (set NODUS_KAPI_KIT); the controller's API-server tests will be SKIPPED" >&2
    exit 0
fi
# The cache is keyed on the kit's contents: a kit that changed (new resources, CRDs) is built again.
key=$(cd "$kit" && find . -type f -print0 | sort -z | xargs -0 sha256sum | sha256sum | cut -c1-16)
if [ -x "$work/bin/kapilite" ] && [ -x "$work/bin/etcd" ] && [ "$(cat "$work/key" 2>/dev/null)" = "$key" ]; then
    echo "kapi: cached in $work/bin (kit $key)"
    exit 0
fi
rm -rf "$work"
mkdir -p "$work/tmp"
# The build needs about 5.5 GB at its peak (Debian Go sources, debs, Go's build cache). Say so
# up front rather than failing half-way with "no space left on device".
free_kb=$(df -Pk "$work" | awk 'NR==2 {print $4}')
echo "kapi: building into $work (about 3.5 min, once; $((free_kb / 1024)) MiB free here, about 6000 MiB needed)"
if [ "$free_kb" -lt $((6000 * 1024)) ]; then
    echo "kapi: not enough disk space for the build ($((free_kb / 1024)) MiB free in $work)" >&2
    df -h "$work" /tmp >&2
    exit 1
fi
# Go's temporary build directories go beside the build, not to /tmp (which may be a small tmpfs).
export GOTMPDIR="$(pwd)/$work/tmp" TMPDIR="$(pwd)/$work/tmp"
bash "$kit/setup-kapi.sh" "$(pwd)/$work" > "$work/build.log" 2>&1 || {
    tail -20 "$work/build.log"
    df -h "$work" >&2
    exit 1
}
# The build leaves Go sources and debs behind (about 3.5 GB): only the binaries are kept.
find "$work" -mindepth 1 -maxdepth 1 ! -name bin ! -name build.log -exec rm -rf {} +
echo "$key" > "$work/key"
echo "kapi: built ($(tail -1 "$work/build.log"))"
