//! `cargo xtask build-ebpf`: compiles `ebpf/forwarder.bpf.c` with clang-19 into
//! `target/bpf/forwarder.bpf.o`, which `forwarder/build.rs` embeds.

use std::path::PathBuf;
use std::process::Command;

use crate::prereq::{self, CLANG, KERNEL_HEADERS, LIBBPF};

/// Where the object goes (and where `forwarder/build.rs` looks for it).
pub fn object() -> PathBuf {
    crate::root().join("target/bpf/forwarder.bpf.o")
}

pub fn build() -> anyhow::Result<()> {
    prereq::ensure(&[CLANG, LIBBPF, KERNEL_HEADERS])?;
    let src = crate::root().join("ebpf");
    let out = object();
    std::fs::create_dir_all(out.parent().expect("object has a parent"))?;
    // <linux/bpf.h> includes <asm/types.h>, which Debian keeps under the multiarch directory.
    let multiarch = format!("/usr/include/{}-linux-gnu", std::env::consts::ARCH);
    let tmp = out.with_extension("o.tmp");
    prereq::run(
        Command::new(CLANG.program)
            .args(["-O2", "-g", "-target", "bpf", "-Wall", "-Werror"])
            .arg("-I")
            .arg(&src)
            .arg("-I")
            .arg(&multiarch)
            .arg("-c")
            .arg(src.join("forwarder.bpf.c"))
            .arg("-o")
            .arg(&tmp),
    )?;
    // Replace atomically, so a concurrent cargo build never embeds half an object.
    std::fs::rename(&tmp, &out)?;
    eprintln!("xtask: built {}", out.display());
    Ok(())
}
