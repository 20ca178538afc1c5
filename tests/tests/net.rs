//! Network connections against the real kernel: real connects on loopback and unix
//! sockets, exact address, port, pid and outcome asserted. Needs root.
#![allow(clippy::unwrap_used)]

use std::{process::Command, time::Duration};

use auditor_integration::{Auditor, TempDir, run};
use serde_json::Value;

/// The connect by `pid` that `pred` picks out. A process may make other connects on
/// the way (glibc's name lookup tries nscd's unix socket on hosts that run it), so each
/// test names the destination it made rather than taking the first connect.
fn connect_event(a: &Auditor, pid: u32, pred: impl Fn(&Value) -> bool) -> Value {
    a.wait_for("connect", Duration::from_secs(20), |e| {
        e["kind"] == "connect" && e["pid"] == pid && e["outcome"].is_string() && pred(e)
    })
}

fn python(code: &str, args: &[&str]) -> (u32, std::process::ExitStatus) {
    run(Command::new("python3").arg("-c").arg(code).args(args))
}

#[test]
fn tcp_over_ipv4_and_ipv6_loopback() {
    let a = Auditor::start(&[]);
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let (pid, st) = python(
        "import socket,sys\ns=socket.create_connection(('127.0.0.1', int(sys.argv[1])))",
        &[&port.to_string()],
    );
    assert!(st.success());
    let e = connect_event(&a, pid, |e| e["port"] == port);
    assert_eq!(e["family"], "inet");
    assert_eq!(e["address"], "127.0.0.1");
    assert_eq!(e["port"], port);
    assert_eq!(e["outcome"], "connected");
    assert_eq!(e["ret"], 0);
    assert_eq!(e["uid"], 0);
    assert_eq!(e["comm"], "python3");

    // A refused IPv6 connect: the port was free a moment ago and nobody listens.
    let port6 = std::net::TcpListener::bind("[::1]:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let (pid, st) = python(
        "import socket,sys\ns=socket.socket(socket.AF_INET6)\ntry: s.connect(('::1', int(sys.argv[1])))\nexcept OSError as e: sys.exit(e.errno)",
        &[&port6.to_string()],
    );
    assert_eq!(st.code(), Some(libc::ECONNREFUSED));
    let e = connect_event(&a, pid, |e| e["port"] == port6);
    assert_eq!(e["family"], "inet6");
    assert_eq!(e["address"], "::1");
    assert_eq!(e["port"], port6);
    assert_eq!(e["outcome"], "failed");
    assert_eq!(e["errno"], "ECONNREFUSED");
    assert_eq!(e["success"], false);
    a.stop();
}

#[test]
fn unix_socket_path_and_nonblocking_connect() {
    let a = Auditor::start(&[]);
    let dir = TempDir::new("unix");
    let path = format!("{}/ctl.sock", dir.str());
    let _listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
    let (pid, st) = python(
        "import socket,sys\ns=socket.socket(socket.AF_UNIX)\ns.connect(sys.argv[1])",
        &[&path],
    );
    assert!(st.success());
    let e = connect_event(&a, pid, |e| e["path"] == path.as_str());
    assert_eq!(e["family"], "unix");
    assert_eq!(e["path"], path);
    assert_eq!(e["outcome"], "connected");

    // Non-blocking: the kernel answers EINPROGRESS; the outcome is not yet known.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let (pid, _) = python(
        "import socket,sys\ns=socket.socket()\ns.setblocking(False)\ns.connect_ex(('127.0.0.1', int(sys.argv[1])))",
        &[&port.to_string()],
    );
    let e = connect_event(&a, pid, |e| e["port"] == port);
    assert!(
        ["in_progress", "connected"].contains(&e["outcome"].as_str().unwrap()),
        "{e}"
    );
    assert_eq!(e["port"], port);
    a.stop();
}
