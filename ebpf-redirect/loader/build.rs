//! Builds the kernel-side programs (`../ebpf`) with nightly, `build-std=core` and the bpfel
//! target, so that a plain `cargo build` of the workspace (on stable) does everything. The
//! toolchain pieces (nightly + rust-src, bpf-linker) come from `scripts/setup.sh`.

use std::env;
use std::path::PathBuf;
use std::process::Command;

fn main() {
    let manifest_dir = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let ebpf_dir = manifest_dir.join("../ebpf");
    for watched in ["../ebpf/src", "../ebpf/Cargo.toml", "../ebpf/Cargo.lock", "../common/src", "../common/Cargo.toml"]
    {
        println!("cargo:rerun-if-changed={watched}");
    }
    let target_dir = out_dir.join("ebpf-target");
    let mut cargo = Command::new("rustup");
    cargo
        .args(["run", "nightly", "cargo", "build", "--release", "--locked", "--target-dir"])
        .arg(&target_dir)
        // The eBPF crate's .cargo/config.toml (target, build-std) is found from the working
        // directory, not from --manifest-path.
        .current_dir(&ebpf_dir);
    // What the outer (stable, host-target) build set must not leak into the inner one.
    for var in [
        "RUSTC",
        "RUSTC_WRAPPER",
        "RUSTC_WORKSPACE_WRAPPER",
        "RUSTFLAGS",
        "CARGO_ENCODED_RUSTFLAGS",
        "CARGO_BUILD_RUSTFLAGS",
        "CARGO_TARGET_DIR",
        "CARGO_BUILD_TARGET",
        "RUSTUP_TOOLCHAIN",
        "CARGO_MAKEFLAGS",
        "CARGO_LLVM_COV",
        "RUSTDOC",
    ] {
        cargo.env_remove(var);
    }
    let status = cargo.status().unwrap_or_else(|e| {
        panic!("could not run `rustup run nightly cargo` to build the eBPF programs: {e}; run scripts/setup.sh")
    });
    if !status.success() {
        panic!(
            "building the eBPF programs failed ({status}); they need the nightly toolchain with rust-src and \
             bpf-linker 0.9: run scripts/setup.sh"
        );
    }
    let object = target_dir.join("bpfel-unknown-none/release/nodus-redirect");
    std::fs::copy(&object, out_dir.join("nodus-redirect.bpf.o"))
        .unwrap_or_else(|e| panic!("copying {}: {e}", object.display()));
}
