//! tracefs: classic tracepoint attachment looks tracepoint ids up there, and a fresh
//! machine may not have it mounted. Mount it ourselves rather than fail.

use std::path::Path;

pub const TRACEFS: &str = "/sys/kernel/tracing";
pub const DEBUGFS_TRACING: &str = "/sys/kernel/debug/tracing";

#[derive(Debug, thiserror::Error)]
pub enum TracefsError {
    #[error("tracefs is not mounted and mounting it at {TRACEFS} failed: {0}")]
    Mount(std::io::Error),
}

/// True if tracefs is reachable where aya looks for it.
pub fn is_mounted() -> bool {
    [TRACEFS, DEBUGFS_TRACING]
        .iter()
        .any(|d| Path::new(d).join("events").is_dir())
}

/// Mounts tracefs at /sys/kernel/tracing when neither location has it. Returns whether
/// it had to mount.
pub fn ensure_mounted() -> Result<bool, TracefsError> {
    if is_mounted() {
        return Ok(false);
    }
    let target = c"/sys/kernel/tracing";
    // SAFETY: all pointers are valid NUL-terminated strings; data may be NULL.
    let rc = unsafe {
        libc::mount(
            c"nodev".as_ptr(),
            target.as_ptr(),
            c"tracefs".as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        return Err(TracefsError::Mount(std::io::Error::last_os_error()));
    }
    tracing::info!("mounted tracefs at {TRACEFS}");
    Ok(true)
}
