//! Process hygiene, applied before vaultd reads any secret: no core dumps. A dump of vaultd
//! would hold unwrapped DEKs and the PANs of calls in flight, in a file anyone with the
//! dump directory could read. `RLIMIT_CORE` is set to 0 (soft and hard, so the process cannot
//! raise it again), and on Linux the process is marked not dumpable (`PR_SET_DUMPABLE` 0),
//! which also keeps other processes of the same user from attaching to it with ptrace and
//! makes its `/proc/PID` files root's.

use nix::sys::resource::{Resource, getrlimit, setrlimit};

/// What [`forbid_core_dumps`] left in force, read back from the kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DumpState {
    /// The core file size limits (soft, hard), in bytes.
    pub core_limit: (u64, u64),
    /// Whether the process may be dumped (or ptraced by its user); `None` off Linux.
    pub dumpable: Option<bool>,
}

/// Turns core dumps off for this process and reads back what is in force.
///
/// # Errors
/// If the kernel refuses either setting.
pub fn forbid_core_dumps() -> std::io::Result<DumpState> {
    setrlimit(Resource::RLIMIT_CORE, 0, 0)?;
    #[cfg(target_os = "linux")]
    nix::sys::prctl::set_dumpable(false)?;
    #[cfg(target_os = "linux")]
    let dumpable = Some(nix::sys::prctl::get_dumpable()?);
    #[cfg(not(target_os = "linux"))]
    let dumpable = None;
    Ok(DumpState {
        core_limit: getrlimit(Resource::RLIMIT_CORE)?,
        dumpable,
    })
}
