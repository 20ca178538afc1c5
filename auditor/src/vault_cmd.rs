//! `auditor vault ...`: the command-line face of [`crate::vault`].

use std::{io::IsTerminal, ops::ControlFlow, time::Duration};

use anyhow::{Context as _, Result, anyhow, bail};

use crate::{
    cli::{QueryFormat, VaultCommand, parse_size},
    vault::{self, EraseSelector, QueryFilter, ServeOptions, StoredRecord},
};

fn parse_time(flag: &str, s: &str) -> Result<std::time::SystemTime> {
    humantime::parse_rfc3339_weak(s).map_err(|e| {
        anyhow!("{flag} {s:?}: not an RFC 3339 time ({e}); example: 2026-11-23T10:00:00Z")
    })
}

/// Runs one vault subcommand; returns whether it succeeded (verify's verdict).
pub fn run(cmd: VaultCommand) -> Result<bool> {
    match cmd {
        VaultCommand::Serve {
            listen,
            data,
            insecure_http,
            tls_cert,
            tls_key,
            client_ca,
            silence_threshold,
            max_body,
        } => {
            if !(silence_threshold.is_finite() && silence_threshold > 0.0) {
                bail!(
                    "--silence-threshold {silence_threshold}: must be a positive number of seconds"
                );
            }
            let max =
                parse_size(&max_body).map_err(|why| anyhow!("--max-body {max_body:?}: {why}"))?;
            let opts = ServeOptions {
                insecure_http,
                tls_cert,
                tls_key,
                client_ca,
                silence_threshold: Duration::from_secs_f64(silence_threshold),
                max_body_bytes: usize::try_from(max).context("--max-body too large")?,
                ..ServeOptions::new(listen, data)
            };
            let rt = tokio::runtime::Runtime::new().context("starting the async runtime")?;
            rt.block_on(vault::serve(opts, async {
                crate::shutdown_signal().await;
            }))?;
            Ok(true)
        }
        VaultCommand::Enroll { data, host } => {
            let token = vault::enroll(&data, &host)?;
            println!("{token}");
            eprintln!(
                "enrolled {host}; give this token to its agent (--token). It is shown only once."
            );
            Ok(true)
        }
        VaultCommand::Revoke { data, host } => {
            vault::revoke(&data, &host)?;
            eprintln!("revoked {host}");
            Ok(true)
        }
        VaultCommand::Verify { data, host } => {
            let progress = std::io::stderr().is_terminal();
            let report = vault::verify(&data, host.as_deref(), progress)?;
            for w in &report.warnings {
                eprintln!("warning: {w}");
            }
            if let Some(first) = report.first_failure() {
                println!("FAILED: {first}");
                println!(
                    "{} record(s) checked, {} failure(s)",
                    report.records,
                    report.failures.len()
                );
                return Ok(false);
            }
            println!(
                "ok: {} record(s) in {} host chain(s) verified ({} erased payload(s))",
                report.records,
                report.hosts.len(),
                report.erased
            );
            Ok(true)
        }
        VaultCommand::Query {
            data,
            host,
            since,
            until,
            kinds,
            path_glob,
            tamper_only,
            argv_contains,
            limit,
            format,
        } => {
            let filter = QueryFilter {
                host,
                since: since.map(|s| parse_time("--since", &s)).transpose()?,
                until: until.map(|s| parse_time("--until", &s)).transpose()?,
                kinds,
                path_glob,
                tamper_only,
                argv_contains,
                limit,
            };
            let mut out = std::io::stdout().lock();
            let mut failed = None;
            vault::for_each_record(&data, &filter, |r| {
                match print_record(&mut out, &r, format) {
                    Ok(()) => ControlFlow::Continue(()),
                    Err(e) => {
                        failed = Some(e);
                        ControlFlow::Break(())
                    }
                }
            })?;
            match failed {
                // A closed pipe (`| head`) is not an error.
                Some(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(true),
                Some(e) => Err(e).context("writing query results"),
                None => Ok(true),
            }
        }
        VaultCommand::Erase {
            data,
            record,
            matching,
            reason,
            who,
        } => {
            let selector = match (record, matching) {
                (Some(id), None) => EraseSelector::Record(id),
                (None, Some(m)) => {
                    let (field, value) = m
                        .split_once('=')
                        .ok_or_else(|| anyhow!("--match {m:?}: expected FIELD=VALUE"))?;
                    EraseSelector::Match {
                        field: field.to_string(),
                        value: value.to_string(),
                    }
                }
                _ => bail!("give exactly one of --record ID or --match FIELD=VALUE"),
            };
            if reason.trim().is_empty() {
                bail!("--reason must say why the data is erased");
            }
            let who = who
                .or_else(|| std::env::var("SUDO_USER").ok())
                .or_else(|| std::env::var("USER").ok())
                .unwrap_or_else(|| "unknown".into());
            let report = vault::erase(&data, selector, &reason, &who)?;
            println!(
                "erased {} record(s), {} already erased; erasure record(s): {}",
                report.erased.len(),
                report.already_erased.len(),
                report.erasure_records.join(", ")
            );
            Ok(true)
        }
    }
}

fn print_record(
    out: &mut impl std::io::Write,
    r: &StoredRecord,
    format: QueryFormat,
) -> std::io::Result<()> {
    match format {
        QueryFormat::Json => {
            serde_json::to_writer(&mut *out, r)?;
            writeln!(out)
        }
        QueryFormat::Table => {
            let ev = r.payload.as_ref();
            let field = |k: &str| {
                ev.and_then(|v| v.get(k))
                    .map(|v| v.as_str().map_or(v.to_string(), str::to_string))
            };
            let what = field("path")
                .or_else(|| {
                    ev.and_then(|v| v.get("argv"))
                        .and_then(|a| a.as_array())
                        .map(|a| {
                            a.iter()
                                .filter_map(|x| x.as_str())
                                .collect::<Vec<_>>()
                                .join(" ")
                        })
                })
                .unwrap_or_default();
            let kind = field("kind").unwrap_or_else(|| r.record_kind.clone());
            let tamper = ev
                .and_then(|v| v.get("tamper"))
                .and_then(|t| t.get("kind"))
                .and_then(|k| k.as_str());
            writeln!(
                out,
                "{:<14} {:<32} {:<14} {}{}{}",
                r.id,
                field("time").unwrap_or_else(|| r.received_at.clone()),
                kind,
                tamper.map(|t| format!("[TAMPER {t}] ")).unwrap_or_default(),
                if r.erased { "[erased] " } else { "" },
                what
            )
        }
    }
}
