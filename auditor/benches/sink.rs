//! Userspace cost per event after assembly: encoding and the local vault (the default
//! sink of `auditor watch`). `cargo bench -p auditor --bench sink [-- EVENTS]`.
//!
//! Prints nanoseconds per event for each stage. Timing on a shared machine is noisy:
//! compare stages within one run, or run under `valgrind --tool=callgrind` for
//! instruction counts (see docs/BENCHMARKS.md).

use std::time::Instant;

use auditor::{
    event::{Body, Connect, Event, FileOp, Process, SCHEMA_VERSION},
    sink::{Sink, local_vault::LocalVaultSink},
};

fn process(i: u64) -> Process {
    Process {
        pid: 4000 + (i % 50) as u32,
        tid: 4000 + (i % 50) as u32,
        ppid: 812,
        uid: Some(0),
        gid: Some(0),
        euid: Some(0),
        egid: Some(0),
        auid: None,
        sessionid: None,
        comm: "bench-files".into(),
        cgroup_id: 7123,
    }
}

/// A realistic mix: three file events for every connect.
fn event(i: u64) -> Event {
    let body = if i % 4 == 3 {
        Body::Connect(Box::new(Connect {
            process: process(i),
            fd: 3,
            family: "inet".into(),
            address: Some("127.0.0.1".into()),
            port: Some(9),
            path: None,
            ret: Some(0),
            errno: None,
            success: Some(true),
            outcome: Some("connected"),
            io_uring: None,
            warnings: Vec::new(),
        }))
    } else {
        Body::Truncate(Box::new(FileOp {
            process: process(i),
            syscall: "ftruncate".into(),
            path: format!("/tmp/auditor-bench-files/watched/tree/file-{i}"),
            raw_path: String::new(),
            fd: Some(3),
            length: Some(0),
            ret: Some(0),
            success: Some(true),
            ..FileOp::default()
        }))
    };
    Event {
        schema_version: SCHEMA_VERSION,
        seq: i + 1,
        time: "2026-11-23T17:00:00.123456789Z".into(),
        boot_ns: 1_000_000 + i * 1000,
        body,
    }
}

fn per_event(label: &str, n: u64, f: impl FnOnce()) {
    let t = Instant::now();
    f();
    let ns = t.elapsed().as_nanos() as f64 / n as f64;
    println!(
        "{label:<40} {ns:>9.0} ns/event  {:>10.0} events/s",
        1e9 / ns
    );
}

fn main() -> anyhow::Result<()> {
    let n: u64 = std::env::args()
        .skip(1)
        .find(|a| !a.starts_with('-'))
        .map(|a| a.parse())
        .transpose()?
        .unwrap_or(200_000);
    let events: Vec<Event> = (0..n).map(event).collect();
    let mut bytes = 0usize;
    per_event("JSON Lines (serde_json::to_writer)", n, || {
        let mut out = Vec::new();
        for ev in &events {
            out.clear();
            let _ = serde_json::to_writer(&mut out, ev);
            bytes += out.len();
        }
    });
    println!("  mean event size: {} bytes", bytes as u64 / n);
    per_event("canonical JSON (vault payload)", n, || {
        let mut enc = auditor::vault::canonical::Encoder::default();
        for ev in &events {
            if enc.encode(ev).is_err() {
                panic!("canonical encoding failed");
            }
        }
    });
    let dir = tempfile::tempdir()?;
    let mut sink = LocalVaultSink::open(dir.path(), "bench-host", "bench-boot")?;
    per_event("local vault (batches of 256)", n, || {
        for (i, ev) in events.iter().enumerate() {
            if sink.write(ev).is_err() {
                panic!("local vault write failed");
            }
            if i % 256 == 255 && sink.flush().is_err() {
                panic!("local vault flush failed");
            }
        }
        if sink.flush().is_err() {
            panic!("local vault flush failed");
        }
    });
    Box::new(sink).close();
    Ok(())
}
