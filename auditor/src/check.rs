//! `auditor check`: what this kernel allows, in plain words. Each probe says what it
//! found and what it means for auditor; the exit status is non-zero when auditor cannot
//! run here.

use std::path::{Path, PathBuf};

use aya::{
    maps::MapType,
    programs::ProgramType,
    sys::{is_map_supported, is_program_supported},
};

use crate::bpf::{self, LoadOptions, btf, tracefs};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Ok,
    /// Works, with a limitation worth knowing.
    Warn,
    /// auditor cannot run.
    Fail,
}

#[derive(Debug, Clone)]
pub struct Finding {
    pub what: &'static str,
    pub status: Status,
    pub detail: String,
}

fn f(what: &'static str, status: Status, detail: impl Into<String>) -> Finding {
    Finding {
        what,
        status,
        detail: detail.into(),
    }
}

/// Runs every probe. `obj` is the object to try loading (None: the embedded one).
pub fn run(obj: Option<PathBuf>) -> Vec<Finding> {
    let mut out = Vec::new();
    // SAFETY: no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    out.push(if root {
        f("privileges", Status::Ok, "running as root")
    } else {
        f(
            "privileges",
            Status::Fail,
            "not root: loading eBPF needs CAP_BPF, CAP_PERFMON and CAP_SYS_RESOURCE; run with sudo",
        )
    });

    let btf_path = Path::new(btf::VMLINUX_BTF);
    match btf::load(btf_path).and_then(|b| btf::kernel_offsets(&b)) {
        Ok(t) => {
            let audit = t.task_loginuid != auditor_common::offsets::ABSENT;
            out.push(f(
                "kernel BTF",
                Status::Ok,
                format!(
                    "{} readable; all {} struct offsets resolved{}",
                    btf_path.display(),
                    auditor_common::KernelOffsets::FIELDS.len(),
                    if audit {
                        ""
                    } else {
                        " (no CONFIG_AUDIT: login uid and session id will be null)"
                    }
                ),
            ));
        }
        Err(e) => out.push(f("kernel BTF", Status::Fail, e.to_string())),
    }

    match lockdown() {
        Some(mode) if mode == "confidentiality" => out.push(f(
            "kernel lockdown",
            Status::Fail,
            "lockdown=confidentiality forbids reading kernel memory from eBPF; auditor cannot resolve paths or credentials",
        )),
        Some(mode) => out.push(f("kernel lockdown", Status::Ok, format!("lockdown={mode}"))),
        None => out.push(f("kernel lockdown", Status::Ok, "no lockdown LSM (securityfs lockdown file absent)")),
    }

    if tracefs::is_mounted() {
        out.push(f(
            "tracefs",
            Status::Ok,
            "mounted: syscall tracepoints can be attached",
        ));
    } else if root {
        match tracefs::ensure_mounted() {
            Ok(_) => out.push(f(
                "tracefs",
                Status::Ok,
                format!("was not mounted; mounted it at {}", tracefs::TRACEFS),
            )),
            Err(e) => out.push(f("tracefs", Status::Fail, e.to_string())),
        }
    } else {
        out.push(f(
            "tracefs",
            Status::Warn,
            "not mounted; `auditor watch` (as root) mounts it",
        ));
    }

    if root {
        match is_map_supported(MapType::RingBuf) {
            Ok(true) => out.push(f("BPF ring buffer", Status::Ok, "supported")),
            Ok(false) => out.push(f(
                "BPF ring buffer",
                Status::Fail,
                "not supported (needs Linux 5.8+)",
            )),
            Err(e) => out.push(f(
                "BPF ring buffer",
                Status::Fail,
                format!("probe failed: {e}"),
            )),
        }
        for (what, ty) in [
            ("fentry/fexit programs", ProgramType::Tracing),
            (
                "BPF-LSM programs",
                ProgramType::Lsm(aya::programs::LsmAttachType::Mac),
            ),
        ] {
            match is_program_supported(ty) {
                Ok(true) => out.push(f(
                    what,
                    Status::Ok,
                    "allowed (not needed: auditor uses syscall tracepoints)",
                )),
                _ => out.push(f(
                    what,
                    Status::Ok,
                    "refused here; not needed: auditor uses syscall tracepoints",
                )),
            }
        }
        if !bpf::has_embedded_object() && obj.is_none() {
            out.push(f(
                "eBPF programs",
                Status::Fail,
                bpf::LoadError::NoEmbeddedObject.to_string(),
            ));
        } else {
            // With the default watch list: the verifier treats the settings as constants,
            // so only a load with real prefixes checks what `watch` will load.
            let watch = crate::watchlist::WatchList::for_trees(&[]).ok();
            let opts = LoadOptions {
                object: obj,
                watch,
                ..LoadOptions::default()
            };
            match bpf::load_and_attach(&opts) {
                Ok(loaded) => {
                    out.push(f(
                        "eBPF programs",
                        Status::Ok,
                        format!(
                            "loaded, verified and attached {} hooks (then detached)",
                            loaded.attached
                        ),
                    ));
                    out.push(verifier_margin(&loaded.verifier_work()));
                    for (hook, why) in &loaded.unattached {
                        out.push(f(
                            "optional hook",
                            Status::Warn,
                            format!("{hook} not attached: {why}"),
                        ));
                    }
                }
                Err(e) => out.push(f("eBPF programs", Status::Fail, e.to_string())),
            }
        }
    }
    out
}

/// The largest program's share of the verifier's budget: a warning above half, where a
/// new compiler or kernel could tip it over.
fn verifier_margin(work: &[(String, u32)]) -> Finding {
    const WHAT: &str = "verifier budget";
    let Some((name, n)) = work.first() else {
        return f(
            WHAT,
            Status::Warn,
            "this kernel does not report verified instruction counts (before 5.16)",
        );
    };
    let pct = f64::from(*n) * 100.0 / f64::from(bpf::VERIFIER_BUDGET);
    let detail = format!(
        "largest program {name}: {n} of {} instructions ({pct:.1}%)",
        bpf::VERIFIER_BUDGET
    );
    if u64::from(*n) * 2 > u64::from(bpf::VERIFIER_BUDGET) {
        f(
            WHAT,
            Status::Warn,
            format!("{detail}: less than half the budget left"),
        )
    } else {
        f(WHAT, Status::Ok, detail)
    }
}

fn lockdown() -> Option<String> {
    let s = std::fs::read_to_string("/sys/kernel/security/lockdown").ok()?;
    // Format: "none [integrity] confidentiality" with the active mode bracketed.
    let start = s.find('[')?;
    let end = s[start..].find(']')? + start;
    Some(s[start + 1..end].to_string())
}

/// Prints the findings; returns whether auditor can run.
pub fn report(findings: &[Finding]) -> bool {
    for x in findings {
        let tag = match x.status {
            Status::Ok => "ok  ",
            Status::Warn => "warn",
            Status::Fail => "FAIL",
        };
        println!("[{tag}] {}: {}", x.what, x.detail);
    }
    let ok = findings.iter().all(|x| x.status != Status::Fail);
    println!(
        "{}",
        if ok {
            "auditor can run on this machine."
        } else {
            "auditor cannot run on this machine (see FAIL above)."
        }
    );
    ok
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verifier_margin_names_the_largest_program_and_warns_past_half() {
        let ok = verifier_margin(&[("file_entry_body".into(), 120_000), ("x".into(), 5)]);
        assert_eq!(ok.status, Status::Ok);
        assert_eq!(
            ok.detail,
            "largest program file_entry_body: 120000 of 1000000 instructions (12.0%)"
        );
        let warn = verifier_margin(&[("file_entry_body".into(), 500_001)]);
        assert_eq!(warn.status, Status::Warn);
        assert!(
            warn.detail.ends_with("less than half the budget left"),
            "{}",
            warn.detail
        );
        assert_eq!(verifier_margin(&[]).status, Status::Warn);
    }
}
