//! The server process's protection of its own image, applied once at
//! start, before any secret is read (`[process]` in the configuration):
//!
//! - no core dumps: `prctl(PR_SET_DUMPABLE, 0)` (the kernel then writes no
//!   dump even if `RLIMIT_CORE` is raised later from outside, and only root
//!   may attach a debugger) and `RLIMIT_CORE` 0. `core_dumps = true` keeps
//!   both as the system set them, for debugging; the key arena and the
//!   secret heap stay excluded from dumps (`MADV_DONTDUMP`) even then.
//! - `require_mlock = true`: every region holding key or secrets (the key
//!   arenas, the secret heap, a KMS side's held key) must be locked in RAM,
//!   or the server refuses to start; off, a refused lock is a warning.
//! - the secret heap (KEK, NCP keys in use) is built now, at
//!   `secret_memory_bytes`.

use keypipe_core::key::locked::{self, LockError};
use serde::Deserialize;

/// `[process]`: how the server protects its own memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProcessSettings {
    /// Allow core dumps (debugging only: a dump may hold key).
    #[serde(default)]
    pub core_dumps: bool,
    /// Refuse to start when key memory cannot be locked in RAM.
    #[serde(default)]
    pub require_mlock: bool,
    /// Locked memory for the KEK and the NCP keys in use, bytes.
    #[serde(default = "default_secret_memory")]
    pub secret_memory_bytes: usize,
}

impl Default for ProcessSettings {
    fn default() -> Self {
        ProcessSettings {
            core_dumps: false,
            require_mlock: false,
            secret_memory_bytes: default_secret_memory(),
        }
    }
}

fn default_secret_memory() -> usize {
    locked::DEFAULT_SECRETS_BYTES
}

/// Applies `settings` to this process (see the module docs).
pub fn protect(settings: &ProcessSettings) -> Result<(), String> {
    if settings.core_dumps {
        tracing::warn!("[process] core_dumps = true: a core dump of this process may hold key");
    } else {
        forbid_core_dumps()?;
    }
    locked::require_locking(settings.require_mlock);
    let heap = locked::configure_secrets(settings.secret_memory_bytes)
        .map_err(|e: LockError| e.to_string())?;
    tracing::info!(
        // SAFETY: a query of this process's own flag.
        dumpable = unsafe { libc::prctl(libc::PR_GET_DUMPABLE, 0, 0, 0, 0) } == 1,
        core_dumps = settings.core_dumps,
        require_mlock = settings.require_mlock,
        secret_memory_bytes = heap.capacity(),
        secret_memory_locked = heap.protection().locked,
        "process protection applied"
    );
    Ok(())
}

fn forbid_core_dumps() -> Result<(), String> {
    let none = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: plain system calls on this process with valid arguments.
    let (limit, dumpable) = unsafe {
        (
            libc::setrlimit(libc::RLIMIT_CORE, &none),
            libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0),
        )
    };
    if limit != 0 || dumpable != 0 {
        return Err(format!(
            "cannot forbid core dumps: {}",
            std::io::Error::last_os_error()
        ));
    }
    Ok(())
}
