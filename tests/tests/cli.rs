//! Bad input gets a clear error, and `auditor check` tells the truth. Needs root for the
//! parts that load programs.
#![allow(clippy::unwrap_used)]

use std::process::Command;

use auditor_integration::{TempDir, auditor_bin};

fn out(cmd: &mut Command) -> (Option<i32>, String, String) {
    let o = cmd.output().unwrap();
    (
        o.status.code(),
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

#[test]
fn unknown_flag_is_refused() {
    let (code, _, err) = out(Command::new(auditor_bin()).args(["watch", "--bogus"]));
    assert_eq!(code, Some(2));
    assert!(err.contains("unexpected argument '--bogus'"), "{err}");
}

#[test]
fn unreadable_and_empty_objects_are_named() {
    let (code, _, err) =
        out(Command::new(auditor_bin()).args(["watch", "--obj", "/nonexistent/x.o"]));
    assert_eq!(code, Some(1));
    assert!(
        err.contains("cannot read eBPF object /nonexistent/x.o"),
        "{err}"
    );
    let dir = TempDir::new("emptyobj");
    let empty = dir.path().join("empty.o");
    std::fs::write(&empty, b"").unwrap();
    let (code, _, err) = out(Command::new(auditor_bin())
        .args(["watch", "--obj"])
        .arg(&empty));
    assert_eq!(code, Some(1));
    assert!(err.contains("is not an eBPF object"), "{err}");
    let junk = dir.path().join("junk.o");
    std::fs::write(&junk, b"not an elf file").unwrap();
    let (code, _, err) = out(Command::new(auditor_bin())
        .args(["watch", "--obj"])
        .arg(&junk));
    assert_eq!(code, Some(1));
    assert!(
        err.contains("the kernel refused the eBPF object") || err.contains("error parsing"),
        "{err}"
    );
}

#[test]
fn bad_values_are_named() {
    let (code, _, err) =
        out(Command::new(auditor_bin()).args(["watch", "--ring-buffer-size", "3M"]));
    assert_eq!(code, Some(1));
    assert!(
        err.contains("--ring-buffer-size \"3M\": must be a power of two"),
        "{err}"
    );
    let (code, _, err) =
        out(Command::new(auditor_bin()).args(["watch", "--path", "/nonexistent-dir"]));
    assert_eq!(code, Some(1));
    assert!(err.contains("--path /nonexistent-dir"), "{err}");
}

#[test]
fn without_root_it_says_so() {
    let (code, _, err) = out(Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(auditor_bin())
        .arg("watch"));
    assert_eq!(code, Some(1));
    assert!(err.contains("needs root"), "{err}");
    let (code, stdout, _) = out(Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(auditor_bin())
        .arg("check"));
    assert_eq!(code, Some(1));
    assert!(stdout.contains("[FAIL] privileges"), "{stdout}");
}

#[test]
fn check_passes_as_root_and_loads_the_programs() {
    let (code, stdout, _) = out(Command::new(auditor_bin()).arg("check"));
    assert_eq!(code, Some(0), "{stdout}");
    assert!(
        stdout.contains("[ok  ] eBPF programs: loaded, verified and attached"),
        "{stdout}"
    );
    assert!(stdout.contains("[ok  ] kernel BTF"), "{stdout}");
    // Every program within half the verifier's budget: a compiler or kernel update
    // must not be what makes the agent unloadable.
    assert!(
        stdout.contains("[ok  ] verifier budget: largest program "),
        "{stdout}"
    );
    assert!(
        stdout.contains("auditor can run on this machine."),
        "{stdout}"
    );
}

#[test]
fn missing_btf_is_explained() {
    let (code, _, err) =
        out(Command::new(auditor_bin()).args(["watch", "--btf", "/nonexistent/vmlinux"]));
    assert_eq!(code, Some(1));
    assert!(
        err.contains("cannot read kernel BTF at /nonexistent/vmlinux"),
        "{err}"
    );
    assert!(err.contains("CONFIG_DEBUG_INFO_BTF"), "{err}");
}
