//! Loading the embedded program and its maps, and attaching it to `hooks`.

use std::io;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};

use aya::maps::{HashMap, MapData, PerCpuArray, PerCpuHashMap, RingBuf, SockHash};
use aya::programs::SkSkb;

use super::spill::{self, Flow, Waiters};
use super::{Activity, Sockmap, OBJECT};

/// Why the program cannot be loaded and attached here.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// `build.rs` could not compile the program, so the binary embeds none.
    #[error(
        "this binary was built without the BPF object: install clang-19, libbpf-dev \
         and linux-libc-dev (`cargo xtask build-ebpf` does, as root), then rebuild the \
         forwarder"
    )]
    NoObject,
    /// Loading the object failed (the error with its sources, on one line).
    #[error("loading the BPF object failed: {0}")]
    Object(String),
    /// A map the loader expects is not in the object: its name.
    #[error("the BPF object has no `{0}` map")]
    NoMap(&'static str),
    /// A map is not of the type the loader expects: its name and aya's error.
    #[error("map `{0}`: {1}")]
    Map(&'static str, aya::maps::MapError),
    /// The object has no program named `redirect`.
    #[error("the BPF object has no `redirect` program")]
    NoProgram,
    /// `redirect` is not an `sk_skb` program.
    #[error("program `redirect`: {0}")]
    Program(aya::programs::ProgramError),
    /// The verifier's refusal, with its sources on one line.
    #[error("the verifier rejected `redirect`: {0}")]
    Verifier(String),
    /// Duplicating the `peers` map's descriptor to attach to failed.
    #[error("dup of the map fd: {0}")]
    Dup(io::Error),
    /// The attach error, with its sources on one line.
    #[error("attaching `redirect` as stream_verdict: {0}")]
    Attach(String),
    /// The number of possible CPUs, which sizes the per-CPU values, could not be read.
    #[error("counting CPUs: {0}")]
    Cpus(io::Error),
    /// Loaded outside a tokio runtime, which reads the `spills` ring buffer.
    #[error("the sockmap needs a tokio runtime to read its `spills` ring buffer")]
    NoRuntime,
}

impl Sockmap {
    /// Loads the embedded program with room for `sessions` sessions, attaches it, and spawns
    /// the task that reads its `spills` ring buffer on the current tokio runtime.
    pub fn load(sessions: u32) -> Result<Sockmap, LoadError> {
        if OBJECT.is_empty() {
            return Err(LoadError::NoObject);
        }
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| LoadError::NoRuntime)?;
        let entries = sessions.saturating_mul(2).max(2);
        let mut ebpf = aya::EbpfLoader::new()
            .set_max_entries("peers", entries)
            .set_max_entries("hooks", entries)
            .set_max_entries("activity", entries)
            .set_max_entries("broken", entries)
            .set_max_entries("flows", entries)
            .load(OBJECT)
            .map_err(|e| LoadError::Object(chain(&e)))?;
        let peers: SockHash<MapData, u64> = ebpf
            .take_map("peers")
            .ok_or(LoadError::NoMap("peers"))?
            .try_into()
            .map_err(|e| LoadError::Map("peers", e))?;
        let hooks: SockHash<MapData, u64> = ebpf
            .take_map("hooks")
            .ok_or(LoadError::NoMap("hooks"))?
            .try_into()
            .map_err(|e| LoadError::Map("hooks", e))?;
        let activity: PerCpuHashMap<MapData, u64, Activity> = ebpf
            .take_map("activity")
            .ok_or(LoadError::NoMap("activity"))?
            .try_into()
            .map_err(|e| LoadError::Map("activity", e))?;
        let broken: HashMap<MapData, u64, u8> = ebpf
            .take_map("broken")
            .ok_or(LoadError::NoMap("broken"))?
            .try_into()
            .map_err(|e| LoadError::Map("broken", e))?;
        let flows: HashMap<MapData, u64, Flow> = ebpf
            .take_map("flows")
            .ok_or(LoadError::NoMap("flows"))?
            .try_into()
            .map_err(|e| LoadError::Map("flows", e))?;
        let ring: RingBuf<MapData> = ebpf
            .take_map("spills")
            .ok_or(LoadError::NoMap("spills"))?
            .try_into()
            .map_err(|e| LoadError::Map("spills", e))?;
        let totals: PerCpuArray<MapData, u64> = ebpf
            .take_map("totals")
            .ok_or(LoadError::NoMap("totals"))?
            .try_into()
            .map_err(|e| LoadError::Map("totals", e))?;
        let prog: &mut SkSkb = ebpf
            .program_mut("redirect")
            .ok_or(LoadError::NoProgram)?
            .try_into()
            .map_err(LoadError::Program)?;
        prog.load().map_err(|e| LoadError::Verifier(chain(&e)))?;
        let map_fd = hooks.fd().try_clone().map_err(LoadError::Dup)?;
        prog.attach(&map_fd)
            .map_err(|e| LoadError::Attach(chain(&e)))?;
        let ncpus = aya::util::nr_cpus().map_err(|(_, e)| LoadError::Cpus(e))?;
        let waiters = Waiters::default();
        runtime.spawn(spill::listen(ring, Arc::clone(&waiters)));
        Ok(Sockmap {
            peers: Mutex::new(peers),
            hooks: Mutex::new(hooks),
            activity: Mutex::new(activity),
            broken: Mutex::new(broken),
            flows: Mutex::new(flows),
            totals,
            waiters,
            spills: AtomicU64::new(0),
            user_faults: AtomicU64::new(0),
            ncpus,
            _ebpf: ebpf,
        })
    }
}

/// An error with its sources, on one line (aya's errors nest the errno).
pub(super) fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(c) = src {
        s.push_str(": ");
        s.push_str(&c.to_string());
        src = c.source();
    }
    s
}
