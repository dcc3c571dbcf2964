#!/usr/bin/env bash
# Builds h2spec, the independent HTTP/2 conformance suite (github.com/summerwind/h2spec, from
# the kit in ../shared/tools/h2spec, Debian's Go packages only), once: the binary is cached in
# .cache/h2spec, keyed on the kit's contents so that a changed kit is built again.
#
# proxy/tests/h2spec.rs runs it against the proxy's HTTP/2 listener. Without the kit this says so
# loudly and that test prints SKIPPED (and fails under CI, NODUS_REQUIRE_H2SPEC=1).
set -euo pipefail
cd "$(dirname "$0")/.."
kit=${NODUS_H2SPEC_KIT:-../shared/tools/h2spec}
work=.cache/h2spec
if [ ! -f "$kit/build.sh" ]; then
    echo "WARNING: h2spec kit not found at $kit (set NODUS_H2SPEC_KIT); the h2spec test will be SKIPPED" >&2
    exit 0
fi
key=$( (cd "$kit" && find . -type f -print0 | sort -z | xargs -0 sha256sum; sha256sum < "$OLDPWD/scripts/h2spec/main.go") | sha256sum | cut -c1-16)
if [ -x "$work/bin/h2spec" ] && [ "$(cat "$work/key" 2>/dev/null)" = "$key" ]; then
    echo "h2spec: cached in $work/bin (kit $key)"
    exit 0
fi
rm -rf "$work" && mkdir -p "$work/bin"
# The kit's own build.sh builds ./cmd/h2spec, which its source lacks (see scripts/h2spec/main.go):
# the same build, with that main of ours added.
pkgs=(golang-go golang-golang-x-net-dev golang-github-spf13-cobra-dev golang-github-fatih-color-dev)
missing=()
for p in "${pkgs[@]}"; do dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p"); done
if [ ${#missing[@]} -gt 0 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
out=$(pwd)/$work/bin
gopath=$(pwd)/$work/gopath
src=$gopath/src/github.com/summerwind/h2spec
mkdir -p "$src" && cp -r "$kit/src/." "$src" && chmod -R u+w "$src"
mkdir -p "$src/cmd/h2spec" && cp scripts/h2spec/main.go "$src/cmd/h2spec/main.go"
(cd "$src" && GO111MODULE=off GOPATH="$gopath:/usr/share/gocode" GOFLAGS= GOPROXY=off GOCACHE="$gopath/cache" \
    go build -o "$out/h2spec" ./cmd/h2spec) > "$work/build.log" 2>&1 \
    || { tail -20 "$work/build.log" >&2; exit 1; }
rm -rf "$gopath"
echo "$key" > "$work/key"
echo "h2spec: built $work/bin/h2spec (kit $key)"
