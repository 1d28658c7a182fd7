//! The sockmap BPF program's prerequisites. `forwarder/build.rs` compiles
//! `ebpf/forwarder.bpf.c` whenever the forwarder is built (and warns when it cannot), so the
//! workflow only has to make sure clang-19 and the headers are there.

use crate::prereq::{self, CLANG, KERNEL_HEADERS, LIBBPF};

/// Installs (as root) or names the packages `forwarder/build.rs` needs for the program.
pub fn prerequisites() -> anyhow::Result<()> {
    prereq::ensure(&[CLANG, LIBBPF, KERNEL_HEADERS])
}

/// `cargo xtask build-ebpf`: the prerequisites, then the forwarder, which embeds the program.
pub fn build() -> anyhow::Result<()> {
    prerequisites()?;
    prereq::run(crate::cargo().args(["build", "-p", "forwarder"]))
}
