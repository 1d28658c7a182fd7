//! Names the git commit being built in `FORWARDER_REVISION` (`forwarder_build_info`), and
//! compiles the sockmap BPF program (`ebpf/forwarder.bpf.c`) with clang-19 into
//! `OUT_DIR/forwarder.bpf.o`, which `src/datapath/sockmap.rs` embeds, so that a plain
//! `cargo build` yields a binary whose `mode = "sockmap"` works. `FORWARDER_BPF_OBJECT` names a
//! prebuilt object to embed instead.
//!
//! Without clang-19 or the headers the forwarder still builds, with a cargo warning saying what
//! to install, and an empty object: `mode = "sockmap"` then fails at startup saying the same.
//! Then dpkg's database is watched (it changes when packages are installed), so the first build
//! after installing them compiles the program. Watching the missing files themselves would make
//! every build rerun this script and rebuild the forwarder: cargo counts a missing path as
//! changed. A program that does not compile with everything installed fails the build.

use std::path::{Path, PathBuf};
use std::process::Command;

const CLANG: &str = "clang-19";
/// Files the compilation needs besides clang: libbpf-dev's helpers and the kernel's UAPI headers.
const HEADERS: [&str; 2] = ["/usr/include/bpf/bpf_helpers.h", "/usr/include/linux/bpf.h"];
const INSTALL: &str = "apt-get install clang-19 libbpf-dev linux-libc-dev";
/// Changes when a Debian package is installed or removed.
const DPKG_STATUS: &str = "/var/lib/dpkg/status";

fn main() {
    let manifest = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets it"));
    revision(&manifest);
    let out =
        PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets it")).join("forwarder.bpf.o");
    println!("cargo::rerun-if-env-changed=FORWARDER_BPF_OBJECT");
    if let Some(obj) = std::env::var_os("FORWARDER_BPF_OBJECT") {
        let obj = PathBuf::from(obj);
        println!("cargo::rerun-if-changed={}", obj.display());
        let bytes = std::fs::read(&obj).unwrap_or_else(|e| {
            println!(
                "cargo::warning=FORWARDER_BPF_OBJECT={}: {e}; the forwarder is built without its \
                 BPF program (mode = \"sockmap\" unavailable)",
                obj.display()
            );
            Vec::new()
        });
        std::fs::write(&out, bytes).expect("write OUT_DIR/forwarder.bpf.o");
        return;
    }

    let src = manifest
        .parent()
        .expect("the forwarder is in a workspace")
        .join("ebpf");
    println!("cargo::rerun-if-changed={}", src.display());
    let clang = find_program(CLANG);
    let mut missing: Vec<String> = HEADERS
        .iter()
        .filter(|h| !Path::new(h).is_file())
        .map(|h| h.to_string())
        .collect();
    if clang.is_none() {
        missing.insert(0, format!("{CLANG} (on PATH)"));
    }
    let clang = match clang {
        Some(clang) if missing.is_empty() => clang,
        _ => {
            let again = if Path::new(DPKG_STATUS).is_file() {
                println!("cargo::rerun-if-changed={DPKG_STATUS}");
                "the next build after installing compiles it"
            } else {
                "then `touch ebpf/forwarder.bpf.c` to build it"
            };
            println!(
                "cargo::warning=the forwarder is built without its BPF program (mode = \"sockmap\" \
                 unavailable): {} missing; install with: {INSTALL} ({again})",
                missing.join(", ")
            );
            std::fs::write(&out, []).expect("write OUT_DIR/forwarder.bpf.o");
            return;
        }
    };

    // <linux/bpf.h> includes <asm/types.h>, which Debian keeps under the multiarch directory.
    let multiarch = format!("/usr/include/{}-linux-gnu", std::env::consts::ARCH);
    let mut cmd = Command::new(clang);
    cmd.args(["-O2", "-g", "-target", "bpf", "-Wall", "-Werror"])
        .arg("-I")
        .arg(&src)
        .arg("-I")
        .arg(&multiarch)
        .arg("-c")
        .arg(src.join("forwarder.bpf.c"))
        .arg("-o")
        .arg(&out);
    let status = cmd
        .status()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(status.success(), "{cmd:?} failed: {status}");
}

/// Sets `FORWARDER_REVISION` to the commit checked out (12 hex digits), or to `unknown` outside a
/// git checkout (a source tarball) or without git: that never fails the build. A non-empty
/// `FORWARDER_REVISION` in the environment (a packager's) wins. Rebuilt when HEAD moves.
fn revision(manifest: &Path) {
    println!("cargo::rerun-if-env-changed=FORWARDER_REVISION");
    let given = std::env::var("FORWARDER_REVISION").ok();
    let rev = match given.filter(|r| !r.trim().is_empty()) {
        Some(r) => r,
        None => {
            let git = |args: &[&str]| {
                Command::new("git")
                    .args(args)
                    .current_dir(manifest)
                    .output()
                    .ok()
                    .filter(|o| o.status.success())
                    .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            };
            // HEAD, the branch it names (a loose ref or packed), in this worktree or the common dir.
            let mut watched = vec!["HEAD".to_string(), "packed-refs".to_string()];
            watched.extend(git(&["symbolic-ref", "-q", "HEAD"]));
            for name in watched {
                let path = git(&["rev-parse", "--path-format=absolute", "--git-path", &name]);
                if let Some(path) = path.filter(|p| Path::new(p).exists()) {
                    println!("cargo::rerun-if-changed={path}");
                }
            }
            git(&["rev-parse", "--short=12", "HEAD"]).unwrap_or_else(|| "unknown".to_string())
        }
    };
    println!("cargo::rustc-env=FORWARDER_REVISION={rev}");
}

/// Where `program` is on PATH.
fn find_program(program: &str) -> Option<PathBuf> {
    let paths = std::env::var_os("PATH")?;
    std::env::split_paths(&paths)
        .map(|d| d.join(program))
        .find(|p| p.is_file())
}
