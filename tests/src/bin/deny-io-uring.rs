//! `deny-io-uring PROGRAM [ARGS...]`: runs PROGRAM with `io_uring_setup` failing with EPERM, as
//! under Docker's default seccomp profile, so tests can prove the forwarder's fallback for real.
#![forbid(unsafe_code)]

use std::collections::BTreeMap;
use std::os::unix::process::CommandExt;
use std::process::{Command, ExitCode};

use seccompiler::{BpfProgram, SeccompAction, SeccompFilter, TargetArch};

fn main() -> ExitCode {
    let mut args = std::env::args_os().skip(1);
    let Some(program) = args.next() else {
        eprintln!("usage: deny-io-uring PROGRAM [ARGS...]");
        return ExitCode::from(2);
    };
    let filter = TargetArch::try_from(std::env::consts::ARCH)
        .map_err(|e| e.to_string())
        .and_then(|arch| {
            SeccompFilter::new(
                BTreeMap::from([(libc::SYS_io_uring_setup, vec![])]),
                SeccompAction::Allow,
                SeccompAction::Errno(libc::EPERM as u32),
                arch,
            )
            .map_err(|e| e.to_string())
        })
        .and_then(|f| BpfProgram::try_from(f).map_err(|e| e.to_string()));
    let filter = match filter {
        Ok(f) => f,
        Err(e) => {
            eprintln!("deny-io-uring: cannot build the seccomp filter: {e}");
            return ExitCode::FAILURE;
        }
    };
    // Sets no_new_privs, then installs the filter; it survives the exec below.
    if let Err(e) = seccompiler::apply_filter(&filter) {
        eprintln!("deny-io-uring: cannot install the seccomp filter: {e}");
        return ExitCode::FAILURE;
    }
    let e = Command::new(&program).args(args).exec();
    eprintln!(
        "deny-io-uring: cannot run {}: {e}",
        program.to_string_lossy()
    );
    ExitCode::FAILURE
}
