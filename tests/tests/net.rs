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

/// The socket address is read in one copy when `addrlen` covers it; these are the other
/// cases, through raw `connect(2)` calls the kernel refuses: a sockaddr_in that ends where
/// its mapping ends but claims 24 bytes (the one-copy read faults, the fields are still
/// read one by one), a short `addrlen` (the fields beyond it are read anyway: the attempt
/// is what is recorded), and an address that cannot be read at all.
#[test]
fn socket_address_at_a_mapping_end_short_or_unreadable() {
    let a = Auditor::start(&[]);
    let (pid, st) = python(
        r#"
import ctypes, mmap, socket, struct, sys
libc = ctypes.CDLL(None, use_errno=True)
def attempt(addr, length):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    r = libc.connect(s.fileno(), ctypes.c_void_p(addr), length)
    e = ctypes.get_errno()
    s.close()
    return e if r < 0 else 0
def sin(port):
    return struct.pack('<H', socket.AF_INET) + struct.pack('>H', port) + socket.inet_aton('127.0.0.1') + bytes(8)
P = mmap.PAGESIZE
pages = mmap.mmap(-1, 2 * P)
base = ctypes.addressof(ctypes.c_char.from_buffer(pages))
libc.mprotect(ctypes.c_void_p(base + P), P, 0)  # PROT_NONE: the mapping's end
pages[P - 16:P] = sin(int(sys.argv[1]))
end = base + P - 16
short = ctypes.create_string_buffer(sin(int(sys.argv[2])), 16)
errs = [attempt(end, 24), attempt(ctypes.addressof(short), 8), attempt(1, 16)]
sys.exit(0 if errs == [14, 22, 14] else 1)
"#,
        &["40111", "40112"],
    );
    assert!(st.success(), "the raw connects did not fail as expected");
    let at_end = connect_event(&a, pid, |e| e["port"] == 40111);
    assert_eq!(at_end["family"], "inet");
    assert_eq!(at_end["address"], "127.0.0.1");
    assert_eq!(at_end["errno"], "EFAULT");
    assert!(at_end.get("warnings").is_none(), "{at_end}");
    let short = connect_event(&a, pid, |e| e["port"] == 40112);
    assert_eq!(short["family"], "inet");
    assert_eq!(short["address"], "127.0.0.1");
    assert_eq!(short["errno"], "EINVAL");
    let unreadable = connect_event(&a, pid, |e| {
        e["warnings"]
            .as_array()
            .is_some_and(|w| w.iter().any(|x| x == "address_fault"))
    });
    assert_eq!(unreadable["errno"], "EFAULT");
    assert!(unreadable.get("address").is_none(), "{unreadable}");
    a.stop();
}
