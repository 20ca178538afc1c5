//! io_uring is not a blind spot: operations submitted through a ring never pass the
//! syscall tracepoints, yet each is recorded with its absolute path (resolved in the
//! kernel from the request), pid, ring, outcome and tamper kind.
#![allow(clippy::unwrap_used)]

use std::{ffi::CString, os::fd::AsRawFd, time::Duration};

use auditor_integration::{Auditor, TempDir};
use io_uring::{IoUring, opcode, types};
use serde_json::Value;

/// Submits one entry and returns its result (`-errno` on failure).
fn submit(ring: &mut IoUring, sqe: io_uring::squeue::Entry) -> i32 {
    // SAFETY: every buffer the entry points at outlives the wait below.
    unsafe { ring.submission().push(&sqe.user_data(7)).unwrap() };
    ring.submit_and_wait(1).unwrap();
    ring.completion().next().unwrap().result()
}

fn event(a: &Auditor, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
    a.wait_for(what, Duration::from_secs(20), |e| {
        e["io_uring"].is_object() && e["ret"].is_i64() && pred(e)
    })
}

#[test]
fn io_uring_unlink_rename_truncate_symlink_and_connect() {
    let dir = TempDir::new("uring");
    let d = dir.str();
    let (log, old, moved, trunc) = (
        format!("{d}/app.log"),
        format!("{d}/old.log"),
        "/tmp/uring-moved.log".to_string(),
        format!("{d}/t.log"),
    );
    for f in [&log, &old, &trunc] {
        std::fs::write(f, "evidence\n").unwrap();
    }
    let _ = std::fs::remove_file(&moved);
    let a = Auditor::start(&["--path", d]);
    let me = std::process::id();
    let mut ring = IoUring::new(8).unwrap();
    let dirfd = std::fs::File::open(dir.path()).unwrap();

    // unlinkat relative to a directory fd.
    let name = CString::new("app.log").unwrap();
    let r = submit(
        &mut ring,
        opcode::UnlinkAt::new(types::Fd(dirfd.as_raw_fd()), name.as_ptr()).build(),
    );
    assert_eq!(r, 0);
    let e = event(&a, "io_uring unlinkat", |e| {
        e["kind"] == "delete" && e["path"] == log.as_str()
    });
    assert_eq!(e["syscall"], "io_uring:unlinkat");
    assert_eq!(e["pid"], me);
    assert_eq!(e["raw_path"], "app.log");
    assert_eq!(e["success"], true);
    assert_eq!(e["tamper"]["kind"], "log_deleted");
    let ring_id = e["io_uring"]["ring"].clone();
    assert!(ring_id.as_str().is_some_and(|s| s.len() == 12), "{e}");

    // renameat out of the tree, absolute names.
    let (from, to) = (
        CString::new(old.as_str()).unwrap(),
        CString::new(moved.as_str()).unwrap(),
    );
    let r = submit(
        &mut ring,
        opcode::RenameAt::new(
            types::Fd(libc::AT_FDCWD),
            from.as_ptr(),
            types::Fd(libc::AT_FDCWD),
            to.as_ptr(),
        )
        .build(),
    );
    assert_eq!(r, 0);
    let e = event(&a, "io_uring renameat", |e| {
        e["kind"] == "rename" && e["path"] == old.as_str()
    });
    assert_eq!(e["new_path"], moved);
    assert_eq!(e["tamper"]["kind"], "log_renamed_away");
    assert_eq!(e["io_uring"]["ring"], ring_id);

    // openat with O_TRUNC.
    let t = CString::new(trunc.as_str()).unwrap();
    let r = submit(
        &mut ring,
        opcode::OpenAt::new(types::Fd(libc::AT_FDCWD), t.as_ptr())
            .flags(libc::O_WRONLY | libc::O_TRUNC)
            .build(),
    );
    assert!(r >= 0, "openat: {r}");
    // SAFETY: closing the fd the ring just opened for us.
    unsafe { libc::close(r) };
    let e = event(&a, "io_uring openat O_TRUNC", |e| {
        e["kind"] == "truncate" && e["path"] == trunc.as_str()
    });
    assert_eq!(e["syscall"], "io_uring:openat");
    assert_eq!(e["tamper"]["kind"], "log_truncated");
    assert!(e["flags"].as_array().unwrap().contains(&"O_TRUNC".into()));

    // symlinkat /dev/null at a watched name: a failed attempt (the name exists).
    let (target, at) = (
        CString::new("/dev/null").unwrap(),
        CString::new(trunc.as_str()).unwrap(),
    );
    let r = submit(
        &mut ring,
        opcode::SymlinkAt::new(types::Fd(libc::AT_FDCWD), target.as_ptr(), at.as_ptr()).build(),
    );
    assert_eq!(r, -libc::EEXIST);
    let e = event(&a, "io_uring symlinkat", |e| {
        e["kind"] == "link" && e["path"] == trunc.as_str()
    });
    assert_eq!(e["target"], "/dev/null");
    assert_eq!(e["errno"], "EEXIST");
    assert_eq!(e["tamper"]["kind"], "log_linked_to_null");

    // connect on loopback.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    // SAFETY: plain socket(2).
    let s = unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0) };
    assert!(s >= 0);
    let sa = libc::sockaddr_in {
        sin_family: libc::AF_INET as u16,
        sin_port: port.to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from_ne_bytes([127, 0, 0, 1]),
        },
        sin_zero: [0; 8],
    };
    let r = submit(
        &mut ring,
        opcode::Connect::new(
            types::Fd(s),
            (&raw const sa).cast(),
            std::mem::size_of::<libc::sockaddr_in>() as u32,
        )
        .build(),
    );
    assert_eq!(r, 0);
    let e = event(&a, "io_uring connect", |e| {
        e["kind"] == "connect" && e["port"] == port
    });
    assert_eq!(e["pid"], me);
    assert_eq!(e["address"], "127.0.0.1");
    assert_eq!(e["outcome"], "connected");
    // SAFETY: our socket.
    unsafe { libc::close(s) };
    let _ = std::fs::remove_file(&moved);
    a.stop();
}
