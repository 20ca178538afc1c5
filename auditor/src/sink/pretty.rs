//! The readable one-line-per-event view for a terminal. Tamper and loss events stand out.

use std::io::Write;

use super::{Sink, SinkError};
use crate::event::{Body, Event};

pub struct Pretty<W: Write + Send> {
    out: W,
    color: bool,
}

impl<W: Write + Send> Pretty<W> {
    pub fn new(out: W, color: bool) -> Self {
        Self { out, color }
    }
}

const RED: &str = "\x1b[1;31m";
const DIM: &str = "\x1b[2m";
const YELLOW: &str = "\x1b[33m";
const RESET: &str = "\x1b[0m";

/// Quotes an argument when a shell would need it, so the line reads like the command.
fn shell_word(a: &str) -> String {
    if !a.is_empty()
        && a.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_./=:,@%+".contains(&b))
    {
        a.to_string()
    } else {
        format!("'{}'", a.replace('\'', r"'\''"))
    }
}

pub fn line(ev: &Event, color: bool) -> String {
    let (c, dim, reset) = if color {
        (RED, DIM, RESET)
    } else {
        ("", "", "")
    };
    let time = ev.time.get(11..23).unwrap_or(&ev.time);
    match &ev.body {
        Body::Exec(e) => {
            let argv: Vec<String> = e.argv.iter().map(|a| shell_word(a)).collect();
            let result = match (e.success, &e.errno) {
                (Some(true), _) => String::new(),
                (Some(false), Some(errno)) => format!(
                    " {}FAILED {errno}{}",
                    if color { YELLOW } else { "" },
                    reset
                ),
                _ => format!(" {dim}(result missing){reset}"),
            };
            let tamper = e
                .tamper
                .as_ref()
                .map(|t| format!(" {c}TAMPER {}{reset}", t.kind))
                .unwrap_or_default();
            format!(
                "{dim}{time}{reset} exec  pid={} ppid={} uid={} {}{} {}{}{dim} cwd={}{}{reset}{tamper}",
                e.process.pid,
                e.process.ppid,
                e.process.uid.map_or("?".into(), |u| u.to_string()),
                e.exe.as_deref().unwrap_or("?"),
                if e.argv_truncated {
                    " [argv truncated]"
                } else {
                    ""
                },
                argv.join(" "),
                result,
                e.cwd.as_deref().unwrap_or("?"),
                e.tty
                    .as_deref()
                    .map(|t| format!(" tty={t}"))
                    .unwrap_or_default(),
            )
        }
        Body::Delete(f) | Body::Rename(f) | Body::Truncate(f) | Body::Link(f) => {
            let target = f
                .new_path
                .as_deref()
                .or(f.target.as_deref())
                .map(|n| format!(" -> {n}"))
                .unwrap_or_default();
            let result = match (f.success, &f.errno) {
                (Some(true), _) => String::new(),
                (Some(false), Some(errno)) => format!(" FAILED {errno}"),
                _ => " (result missing)".into(),
            };
            let line = format!(
                "{time} {:<6} pid={} uid={} {} {}{}{}",
                ev.body.kind(),
                f.process.pid,
                f.process.uid.map_or("?".into(), |u| u.to_string()),
                f.process.comm,
                f.path,
                target,
                result
            );
            match &f.tamper {
                Some(t) => format!("{c}{line}  TAMPER {}{reset}", t.kind),
                None => format!("{dim}{line}{reset}"),
            }
        }
        Body::Connect(n) => format!(
            "{dim}{time}{reset} connect pid={} uid={} {} {} {}{}",
            n.process.pid,
            n.process.uid.map_or("?".into(), |u| u.to_string()),
            n.process.comm,
            n.family,
            n.path.clone().unwrap_or_else(|| format!(
                "{}:{}",
                n.address.as_deref().unwrap_or("?"),
                n.port.map_or("?".into(), |p| p.to_string())
            )),
            n.outcome.map(|o| format!(" {o}")).unwrap_or_default()
        ),
        Body::Loss(l) => format!(
            "{c}{time} LOSS  {} records ({} bytes) dropped by the {} between {} and {} (total {}){reset}",
            l.records, l.bytes, l.source, l.since, l.until, l.total_records
        ),
        Body::DecodeError(d) => format!(
            "{c}{time} DECODE ERROR {} ({} bytes){reset}",
            d.error, d.len
        ),
        Body::AgentStart(s) => format!(
            "{dim}{time}{reset} auditor {} started on {} (kernel {}), boot id {}, {} hooks{}",
            s.version,
            s.hostname,
            s.kernel,
            s.boot_id,
            s.hooks,
            if s.hooks_missing.is_empty() {
                String::new()
            } else {
                format!(" (not attached: {})", s.hooks_missing.join("; "))
            }
        ),
        Body::Syslog(g)
        | Body::Ptrace(g)
        | Body::Bpf(g)
        | Body::ProcessVmWritev(g)
        | Body::PidfdGetfd(g) => {
            let line = format!(
                "{time} {} {} pid={} uid={} {}{}{}",
                ev.body.kind(),
                g.action,
                g.process.pid,
                g.process.uid.map_or("?".into(), |u| u.to_string()),
                g.process.comm,
                g.target_pid
                    .map(|p| format!(" target={p}"))
                    .unwrap_or_default(),
                g.errno
                    .as_deref()
                    .map(|e| format!(" FAILED {e}"))
                    .unwrap_or_default(),
            );
            match &g.tamper {
                Some(t) => format!("{c}{line}  TAMPER {}{reset}", t.kind),
                None => format!("{dim}{line}{reset}"),
            }
        }
        Body::Signal(s) => format!(
            "{c}{time} signal {} to the auditor from pid={} uid={} {} ({}){}{reset}",
            s.signal,
            s.process.pid,
            s.process.uid.map_or("?".into(), |u| u.to_string()),
            s.process.comm,
            s.code,
            s.tamper
                .as_ref()
                .map(|t| format!("  TAMPER {}", t.kind))
                .unwrap_or_default()
        ),
        Body::AgentReload(r) => match &r.error {
            None => format!(
                "{dim}{time}{reset} reloaded: watching {:?}, {} user rules",
                r.watch_paths, r.user_rules
            ),
            Some(e) => format!("{c}{time} reload refused (old configuration kept): {e}{reset}"),
        },
        Body::AgentStopping(s) => format!(
            "{dim}{time}{reset} auditor stopping ({}), {} events, {} kernel losses",
            s.reason, s.events, s.kernel_losses
        ),
    }
}

impl<W: Write + Send> Sink for Pretty<W> {
    fn write(&mut self, ev: &Event) -> Result<(), SinkError> {
        writeln!(self.out, "{}", line(ev, self.color)).map_err(|source| SinkError::Io {
            target: "stdout".into(),
            source,
        })
    }

    fn flush(&mut self) -> Result<(), SinkError> {
        self.out.flush().map_err(|source| SinkError::Io {
            target: "stdout".into(),
            source,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quotes_like_a_shell() {
        assert_eq!(shell_word("ls"), "ls");
        assert_eq!(shell_word("a b"), "'a b'");
        assert_eq!(shell_word("it's"), r"'it'\''s'");
        assert_eq!(shell_word(""), "''");
    }
}
