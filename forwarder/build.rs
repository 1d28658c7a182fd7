//! Embeds the sockmap BPF object when `cargo xtask build-ebpf` has built it. Without it the
//! forwarder still builds; `mode = "sockmap"` then fails at startup saying how to get it.

use std::path::PathBuf;

fn main() {
    let manifest = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets it"));
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets it"));
    println!("cargo::rerun-if-env-changed=FORWARDER_BPF_OBJECT");
    let obj = match std::env::var_os("FORWARDER_BPF_OBJECT") {
        Some(p) => PathBuf::from(p),
        None => {
            let dir = manifest.join("../target/bpf");
            // Watch the directory, so that building the object later triggers a rebuild.
            let _ = std::fs::create_dir_all(&dir);
            println!("cargo::rerun-if-changed={}", dir.display());
            dir.join("forwarder.bpf.o")
        }
    };
    if obj.exists() {
        println!("cargo::rerun-if-changed={}", obj.display());
    }
    let bytes = std::fs::read(&obj).unwrap_or_default();
    std::fs::write(out.join("forwarder.bpf.o"), bytes).expect("write OUT_DIR/forwarder.bpf.o");
}
