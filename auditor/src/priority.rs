//! The agent's CPU priority. Under an event storm the traced workload and the agent
//! compete for the same cores; at the default nice 0 the scheduler shares them evenly,
//! the agent falls behind and the kernel ring buffer overflows (records lost, counted).
//! Run ahead of the workload instead (auditd boosts its daemon the same way, with
//! `priority_boost`), and the workload waits for the agent: slower, but nothing is lost.
//! Measured side by side: docs/OPERATIONS.md, "Priority".
//!
//! Linux keeps a nice value per thread, and a new thread inherits its creator's, so the
//! value is set on every thread that exists when the agent starts, before it spawns any.

use std::io;

/// A thread's nice value could not be set.
#[derive(Debug, thiserror::Error)]
#[error("cannot set nice {nice} on thread {tid}: {source}{hint}")]
pub struct PriorityError {
    pub nice: i32,
    pub tid: i32,
    pub source: io::Error,
    hint: &'static str,
}

/// Sets `nice` on every thread of this process. Threads created later inherit it.
pub fn apply(nice: i32) -> Result<(), PriorityError> {
    let mut tids = own_threads();
    if tids.is_empty() {
        // No /proc: the calling thread at least (tid 0 = the caller).
        tids.push(0);
    }
    for tid in tids {
        set_thread_nice(tid, nice)?;
    }
    Ok(())
}

/// This thread's nice value.
pub fn current() -> io::Result<i32> {
    // getpriority returns the nice value itself, and -1 is a valid one: errno decides.
    // SAFETY: errno is thread-local; clearing it and then reading it is the documented way.
    unsafe { *libc::__errno_location() = 0 };
    // SAFETY: no pointers; PRIO_PROCESS with who = 0 is the calling thread on Linux.
    let n = unsafe { libc::getpriority(libc::PRIO_PROCESS, 0) };
    let err = io::Error::last_os_error();
    match err.raw_os_error() {
        Some(0) | None => Ok(n),
        Some(_) => Err(err),
    }
}

fn set_thread_nice(tid: i32, nice: i32) -> Result<(), PriorityError> {
    let who = libc::id_t::try_from(tid).unwrap_or(0);
    // SAFETY: no pointers; on Linux PRIO_PROCESS with a thread id sets that thread only.
    if unsafe { libc::setpriority(libc::PRIO_PROCESS, who, nice) } == 0 {
        return Ok(());
    }
    let source = io::Error::last_os_error();
    let hint = match source.raw_os_error() {
        Some(libc::EACCES | libc::EPERM) => {
            " (raising the priority needs CAP_SYS_NICE: under systemd the unit's Nice= sets it; or configure a value at or above the current one)"
        }
        _ => "",
    };
    Err(PriorityError {
        nice,
        tid,
        source,
        hint,
    })
}

/// Thread ids under /proc/self/task (empty when /proc is not there).
fn own_threads() -> Vec<i32> {
    let Ok(dir) = std::fs::read_dir("/proc/self/task") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// Raising one's nice value needs no privilege, so this runs unprivileged: a thread
    /// of its own, raised to 19, reads back 19, and a thread it then spawns inherits it.
    #[test]
    fn a_raised_nice_value_is_read_back_and_inherited() {
        std::thread::spawn(|| {
            set_thread_nice(0, 19).unwrap();
            assert_eq!(current().unwrap(), 19);
            let child = std::thread::spawn(|| current().unwrap()).join().unwrap();
            assert_eq!(child, 19);
        })
        .join()
        .unwrap();
    }
}
