#!/usr/bin/env bash
# Installs what the side-by-side benchmarks need, on top of scripts/setup.sh: the peers (nginx,
# haproxy from Debian), the load generators (wrk and h2load from Debian, oha from crates.io),
# valgrind for scripts/profile-proxy.sh, and a font for the PNG chart. Idempotent.
# Kept out of setup.sh so that `make test` does not pay for oha's build (about 4 minutes).
set -euo pipefail
OHA_VERSION=1.16.0
say() { echo "setup-bench: $*"; }
scripts/setup.sh
missing=()
for pkg in nginx-light haproxy wrk nghttp2-client valgrind fonts-dejavu-core; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
  say "installing ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  # The benchmarks start their own instances inside the lab; the distribution's services stay off.
  systemctl disable --now nginx haproxy >/dev/null 2>&1 || true
fi
if [ "$(oha --version 2>/dev/null | awk '{print $2}')" != "$OHA_VERSION" ]; then
  say "installing oha $OHA_VERSION (about 4 minutes)"
  cargo install oha --version "=$OHA_VERSION" --locked --quiet
fi
