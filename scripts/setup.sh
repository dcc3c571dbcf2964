#!/usr/bin/env bash
# Installs everything Nodus needs to build, test and run its local mesh on a fresh Debian machine
# of our CI kind (run as root). Idempotent: a second run checks and installs nothing new.
#
#   scripts/setup.sh          # everything
#   SETUP_QUIET=1 scripts/setup.sh
#
# Pinned versions live here, in one place.
set -euo pipefail

BPF_LINKER_VERSION=0.9.15        # 0.9.x uses the Rust toolchain's own LLVM; 0.13 needs a system LLVM 21 Debian lacks.
CARGO_FUZZ_VERSION=0.13.2
NEXTEST_MIN_VERSION=0.9.100
PY_GRPC_VERSION=1.85.1           # grpcio + grpcio-tools: the independent gRPC client of our tests.
APT_PACKAGES=(
  iproute2            # ip netns / veth / bridge for the mesh harness
  nftables            # (reserved for harness firewalling and tests)
  protobuf-compiler   # protoc for tonic/prost code generation
  prometheus          # promtool: checks /metrics with Prometheus's own parser
  curl
  make
)

started=$(date +%s)
say() { [ "${SETUP_QUIET:-0}" = 1 ] || echo "setup: $*"; }
need_root() { [ "$(id -u)" = 0 ] || { echo "setup: must run as root (apt-get, bpffs mount)" >&2; exit 1; }; }

# --- Debian packages -------------------------------------------------------------------------
missing=()
for pkg in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
  need_root
  say "installing Debian packages: ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# --- Rust toolchains -------------------------------------------------------------------------
# Userspace builds on stable; only the eBPF programs need nightly (build-std for bpfel).
command -v rustup >/dev/null || { echo "setup: rustup is required (the machine image provides it)" >&2; exit 1; }
rustup component list --installed 2>/dev/null | grep -q '^clippy' || rustup component add clippy
rustup component list --installed 2>/dev/null | grep -q '^rustfmt' || rustup component add rustfmt
if ! rustup run nightly rustc --version >/dev/null 2>&1; then
  say "installing the nightly toolchain (for eBPF only)"
  rustup toolchain install nightly --profile minimal
fi
if ! rustup component list --installed --toolchain nightly 2>/dev/null | grep -q '^rust-src'; then
  say "adding rust-src to nightly (build-std for the bpfel target)"
  rustup component add rust-src --toolchain nightly
fi

# --- Cargo tools ---------------------------------------------------------------------------
if [ "$(bpf-linker --version 2>/dev/null | awk '{print $2}')" != "$BPF_LINKER_VERSION" ]; then
  say "installing bpf-linker $BPF_LINKER_VERSION (about 80 s)"
  cargo install bpf-linker --version "=$BPF_LINKER_VERSION" --locked --quiet
fi
if [ "$(cargo fuzz --version 2>/dev/null | awk '{print $2}')" != "$CARGO_FUZZ_VERSION" ]; then
  say "installing cargo-fuzz $CARGO_FUZZ_VERSION (about 30 s)"
  cargo install cargo-fuzz --version "=$CARGO_FUZZ_VERSION" --locked --quiet
fi
have_nextest=$(cargo nextest --version 2>/dev/null | awk '{print $2}' || true)
if [ -z "$have_nextest" ] || [ "$(printf '%s\n%s\n' "$NEXTEST_MIN_VERSION" "$have_nextest" | sort -V | head -1)" != "$NEXTEST_MIN_VERSION" ]; then
  say "installing cargo-nextest"
  cargo install cargo-nextest --locked --quiet
fi

# --- Python test client ----------------------------------------------------------------------
python3 -m pip --version >/dev/null 2>&1 || { need_root; apt-get install -y -qq python3-pip >/dev/null; }
if ! python3 -c "import grpc, grpc_tools; assert grpc.__version__ == '$PY_GRPC_VERSION'" 2>/dev/null; then
  say "installing Python grpcio $PY_GRPC_VERSION"
  python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore \
    "grpcio==$PY_GRPC_VERSION" "grpcio-tools==$PY_GRPC_VERSION"
fi

# --- Kernel plumbing: bpffs and cgroup v2 ------------------------------------------------------
if [ "$(id -u)" = 0 ]; then
  if ! mount | grep -q ' /sys/fs/bpf type bpf'; then
    say "mounting bpffs at /sys/fs/bpf (pinned eBPF programs and maps)"
    mkdir -p /sys/fs/bpf && mount -t bpf bpf /sys/fs/bpf
  fi
  grep -q ' cgroup2 ' /proc/self/mountinfo || { echo "setup: no cgroup v2 mount found; the mesh needs one" >&2; exit 1; }
fi

say "done in $(( $(date +%s) - started )) s"
