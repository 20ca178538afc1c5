//! The agent's delivery path for real: a `VaultSink` sending to a real vault on 127.0.0.1
//! (plain HTTP, or TLS with the self-signed certificate pinned), the vault stopped, started
//! late, restarted mid-stream; the agent killed with SIGKILL (a child process); a torn spool
//! frame; a full spool. Every test checks what the vault finally holds, seq by seq.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::{Duration, Instant};

use auditor::event::{Body, Event, Exec, Process};
use auditor::sink::Sink;
use auditor::sink::vault_client::{VaultClientOptions, VaultSink};
use auditor::vault::{self, QueryFilter, ServeOptions, StoredRecord};
use serde_json::{Value, json};

const HOST: &str = "web1";

/// A vault server on its own thread and runtime, so the tests themselves stay synchronous
/// like the sink thread that drives a `VaultSink`.
struct VaultServer {
    addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl VaultServer {
    fn start(data: &Path, port: u16, tls: bool) -> VaultServer {
        let data = data.to_owned();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
                    .await
                    .unwrap();
                let addr = listener.local_addr().unwrap();
                let mut opts = ServeOptions::new(addr, data.clone());
                opts.insecure_http = !tls;
                opts.silence_threshold = Duration::from_secs(3600);
                let task = tokio::spawn(vault::serve_on(listener, opts, async move {
                    let _ = stop_rx.await;
                }));
                wait_healthy(addr, &data, tls).await;
                ready_tx.send(addr).unwrap();
                task.await.unwrap().unwrap();
            });
        });
        let addr = ready_rx
            .recv_timeout(Duration::from_secs(30))
            .expect("vault came up");
        VaultServer {
            addr,
            stop: Some(stop_tx),
            thread: Some(thread),
        }
    }

    fn stop(mut self) {
        let _ = self.stop.take().unwrap().send(());
        self.thread.take().unwrap().join().unwrap();
    }

    fn http_url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

async fn wait_healthy(addr: SocketAddr, data: &Path, tls: bool) {
    for _ in 0..500 {
        let client = if tls {
            let pem = std::fs::read(vault::self_signed_paths(data).0).unwrap_or_default();
            match reqwest::Certificate::from_pem(&pem) {
                Ok(c) if !pem.is_empty() => reqwest::Client::builder()
                    .tls_built_in_root_certs(false)
                    .add_root_certificate(c)
                    .build()
                    .unwrap(),
                _ => {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                }
            }
        } else {
            reqwest::Client::new()
        };
        let scheme = if tls { "https" } else { "http" };
        let url = format!("{scheme}://localhost:{}/v1/health", addr.port());
        if let Ok(r) = client.get(url).send().await
            && r.status().is_success()
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("vault did not come up");
}

/// A port nothing listens on (bound, then released).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

struct Setup {
    _tmp: tempfile::TempDir,
    data: PathBuf,
    spool: PathBuf,
    token: String,
}

fn setup() -> Setup {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("vault");
    let spool = tmp.path().join("spool");
    std::fs::create_dir_all(&data).unwrap();
    let token = vault::enroll(&data, HOST).unwrap();
    Setup {
        _tmp: tmp,
        data,
        spool,
        token,
    }
}

fn options(s: &Setup, url: &str, boot: &str) -> VaultClientOptions {
    let mut o = VaultClientOptions::new(url, &s.token, HOST, boot);
    o.spool_dir = s.spool.clone();
    o.allow_insecure_http = true;
    o.batch_delay = Duration::from_millis(50);
    o.batch_max_events = 25;
    o.heartbeat_interval = Duration::from_millis(500);
    o
}

fn start(o: VaultClientOptions) -> VaultSink {
    VaultSink::start(o, Arc::new(AtomicU64::new(0))).unwrap()
}

fn exec(seq: u64, argv: &[&str]) -> Event {
    Event {
        schema_version: 1,
        seq,
        time: format!("2026-11-23T12:00:{:02}.000000001Z", seq % 60),
        boot_ns: 1_000_000 + seq,
        body: Body::Exec(Box::new(Exec {
            process: Process {
                pid: 1000 + seq as u32,
                comm: "bash".into(),
                ..Process::default()
            },
            filename: format!("/usr/bin/{}", argv[0]),
            argv: argv.iter().map(|s| (*s).to_owned()).collect(),
            exe_source: "argument",
            syscall: "execve",
            ..Exec::default()
        })),
    }
}

fn echo(seq: u64) -> Event {
    exec(seq, &["echo", &format!("n{seq}")])
}

fn records(data: &Path) -> Vec<StoredRecord> {
    vault::query(
        data,
        &QueryFilter {
            host: Some(HOST.into()),
            ..QueryFilter::default()
        },
    )
    .unwrap()
}

/// seq -> how many data records the vault holds for it, for one boot.
fn seq_counts(data: &Path, boot: &str) -> BTreeMap<u64, usize> {
    let mut m = BTreeMap::new();
    for r in records(data) {
        if r.record_kind == "data" && r.boot_id.as_deref() == Some(boot) {
            *m.entry(r.seq.unwrap()).or_insert(0) += 1;
        }
    }
    m
}

fn event_at(data: &Path, boot: &str, seq: u64) -> Value {
    records(data)
        .into_iter()
        .find(|r| {
            r.record_kind == "data" && r.boot_id.as_deref() == Some(boot) && r.seq == Some(seq)
        })
        .and_then(|r| r.payload)
        .unwrap_or_else(|| panic!("{boot}/{seq} not in the vault"))
}

fn assert_exactly_once(data: &Path, boot: &str, n: u64) {
    let counts = seq_counts(data, boot);
    let expected: BTreeMap<u64, usize> = (1..=n).map(|s| (s, 1)).collect();
    assert_eq!(counts, expected, "boot {boot}: seqs 1..={n} exactly once");
    let odd: Vec<_> = records(data)
        .into_iter()
        .filter(|r| ["replay", "out_of_order", "gap"].contains(&r.record_kind.as_str()))
        .collect();
    assert!(odd.is_empty(), "unexpected vault records: {odd:?}");
}

fn wait_until(timeout: Duration, what: &str, mut f: impl FnMut() -> bool) {
    let t = Instant::now();
    while !f() {
        assert!(t.elapsed() < timeout, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(25));
    }
}

#[test]
fn events_written_to_the_sink_arrive_in_the_vault() {
    let s = setup();
    let v = VaultServer::start(&s.data, 0, false);
    let mut sink = start(options(&s, &v.http_url(), "boot-a"));
    for seq in 1..=60 {
        sink.write(&echo(seq)).unwrap();
    }
    sink.flush().unwrap();
    let st = sink.shutdown(Duration::from_secs(20));
    assert_eq!(st.spooled_events, 0, "{st:?}");
    assert_eq!(st.acked_through, 60);
    assert!(st.last_rtt.is_some());
    assert!(st.vault_chain_head.is_some());
    v.stop();
    assert_exactly_once(&s.data, "boot-a", 60);
    let ev = event_at(&s.data, "boot-a", 7);
    assert_eq!(ev["argv"], json!(["echo", "n7"]));
    assert_eq!(ev["kind"], "exec");
    assert!(vault::verify(&s.data, None, false).unwrap().is_ok());
    // Delivered runs leave nothing behind in the spool but the lock file.
    let left: Vec<_> = std::fs::read_dir(&s.spool)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(
        left.iter().all(|n| n == "LOCK" || n == "boot-a"),
        "{left:?}"
    );
}

#[test]
fn tls_with_the_pinned_self_signed_certificate() {
    let s = setup();
    let v = VaultServer::start(&s.data, 0, true);
    let pin = vault::cert_fingerprint(&vault::self_signed_paths(&s.data).0).unwrap();
    let url = format!("https://127.0.0.1:{}", v.addr.port());

    // A wrong pin: nothing is sent, the failure says why, the events stay spooled.
    let mut o = options(&s, &url, "boot-wrong-pin");
    o.allow_insecure_http = false;
    o.tls_pin_sha256 = Some("00".repeat(32));
    let mut sink = start(o);
    sink.write(&echo(1)).unwrap();
    wait_until(Duration::from_secs(10), "a failed attempt", || {
        sink.stats().send_failures > 0
    });
    let st = sink.shutdown(Duration::from_millis(500));
    assert_eq!(st.spooled_events, 1);
    assert!(
        st.last_error.unwrap_or_default().contains("fingerprint"),
        "the error names the pin mismatch"
    );
    assert!(seq_counts(&s.data, "boot-wrong-pin").is_empty());

    // The right pin (as `vault serve` prints it): the earlier run's event goes out too.
    let mut o = options(&s, &url, "boot-tls");
    o.allow_insecure_http = false;
    o.tls_pin_sha256 = Some(pin);
    let mut sink = start(o);
    for seq in 1..=5 {
        sink.write(&echo(seq)).unwrap();
    }
    let st = sink.shutdown(Duration::from_secs(20));
    assert_eq!(st.spooled_events, 0, "{st:?}");
    v.stop();
    assert_eq!(seq_counts(&s.data, "boot-tls").len(), 5);
    assert_eq!(
        seq_counts(&s.data, "boot-wrong-pin"),
        BTreeMap::from([(1, 1)])
    );
}

#[test]
fn plain_http_is_refused_unless_allowed() {
    let s = setup();
    let mut o = options(&s, "http://127.0.0.1:1", "boot-x");
    o.allow_insecure_http = false;
    let err = VaultSink::start(o, Arc::new(AtomicU64::new(0)))
        .err()
        .unwrap();
    assert!(err.to_string().contains("plain HTTP"), "{err}");
}

#[test]
fn vault_down_at_start_then_started_gets_everything_once() {
    let s = setup();
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}");
    let mut sink = start(options(&s, &url, "boot-late"));
    for seq in 1..=40 {
        sink.write(&echo(seq)).unwrap();
    }
    sink.flush().unwrap();
    wait_until(Duration::from_secs(10), "failed attempts", || {
        sink.stats().send_failures >= 2
    });
    assert_eq!(sink.stats().spooled_events, 40);
    let v = VaultServer::start(&s.data, port, false);
    wait_until(
        Duration::from_secs(60),
        "delivery after the vault came up",
        || sink.stats().acked_through == 40,
    );
    let st = sink.shutdown(Duration::from_secs(10));
    assert_eq!(st.spooled_events, 0);
    v.stop();
    assert_exactly_once(&s.data, "boot-late", 40);
}

#[test]
fn vault_killed_and_restarted_mid_stream_loses_and_duplicates_nothing() {
    let s = setup();
    let v = VaultServer::start(&s.data, 0, false);
    let port = v.addr.port();
    let url = v.http_url();
    let mut sink = start(options(&s, &url, "boot-mid"));
    for seq in 1..=40 {
        sink.write(&echo(seq)).unwrap();
        std::thread::sleep(Duration::from_millis(2));
    }
    v.stop();
    for seq in 41..=80 {
        sink.write(&echo(seq)).unwrap();
        std::thread::sleep(Duration::from_millis(2));
    }
    sink.flush().unwrap();
    std::thread::sleep(Duration::from_millis(500));
    assert!(sink.stats().acked_through < 80);
    let v = VaultServer::start(&s.data, port, false);
    for seq in 81..=120 {
        sink.write(&echo(seq)).unwrap();
    }
    let st = sink.shutdown(Duration::from_secs(30));
    assert_eq!(st.spooled_events, 0, "{st:?}");
    v.stop();
    assert_exactly_once(&s.data, "boot-mid", 120);
    assert!(vault::verify(&s.data, None, false).unwrap().is_ok());
}

#[test]
fn tamper_events_skip_the_batching_delay() {
    let s = setup();
    let v = VaultServer::start(&s.data, 0, false);
    let mut o = options(&s, &v.http_url(), "boot-tamper");
    o.batch_delay = Duration::from_secs(5);
    o.batch_max_events = 1000;
    let mut sink = start(o);
    // Let the sender settle into waiting, then an ordinary event: it waits for companions.
    std::thread::sleep(Duration::from_millis(200));
    sink.write(&echo(1)).unwrap();
    std::thread::sleep(Duration::from_millis(600));
    assert!(
        seq_counts(&s.data, "boot-tamper").is_empty(),
        "an ordinary event waits for the batching delay"
    );
    let t = Instant::now();
    let mut tamper = serde_json::to_value(exec(2, &["rm", "/var/log/auth.log"])).unwrap();
    tamper["tamper"] = json!({"class": "log_deleted", "path": "/var/log/auth.log"});
    sink.write_value(tamper).unwrap();
    wait_until(Duration::from_secs(2), "the tamper event", || {
        seq_counts(&s.data, "boot-tamper").contains_key(&2)
    });
    assert!(t.elapsed() < Duration::from_secs(2));
    let ev = event_at(&s.data, "boot-tamper", 2);
    assert_eq!(ev["tamper"]["class"], "log_deleted");
    drop(sink);
    v.stop();
}

#[test]
fn redaction_happens_before_anything_leaves_the_host() {
    let s = setup();
    let v = VaultServer::start(&s.data, 0, false);
    let mut sink = start(options(&s, &v.http_url(), "boot-pii"));
    let secrets = [
        "S3cretMysqlPw",
        "Hunter2LongPw",
        "UrlSecret99",
        "eyJhbGciOiJIUzI1NiJ9.tokentoken",
        "alice.secret@example.com",
    ];
    let argv = [
        "mysql",
        "-uroot",
        "-pS3cretMysqlPw",
        "--password=Hunter2LongPw",
        "https://bob:UrlSecret99@db.example.com/x",
        "Authorization: Bearer eyJhbGciOiJIUzI1NiJ9.tokentoken",
        "alice.secret@example.com",
    ];
    sink.write(&exec(1, &argv)).unwrap();
    let st = sink.shutdown(Duration::from_secs(20));
    assert_eq!(st.spooled_events, 0);
    v.stop();
    let ev = event_at(&s.data, "boot-pii", 1);
    assert_eq!(
        ev["argv"],
        json!([
            "mysql",
            "-uroot",
            "-p[REDACTED]",
            "--password=[REDACTED]",
            "https://bob:[REDACTED]@db.example.com/x",
            "Authorization: Bearer [REDACTED]",
            "[REDACTED]"
        ])
    );
    assert_eq!(
        ev["redacted"],
        json!([
            "argv[2]:password",
            "argv[3]:password",
            "argv[4]:url_credentials",
            "argv[5]:bearer",
            "argv[6]:email"
        ])
    );
    // No secret anywhere on disk: not in the vault's files, not in the agent's spool.
    for dir in [&s.data, &s.spool] {
        for f in walk(dir) {
            let bytes = std::fs::read(&f).unwrap();
            for secret in secrets {
                assert!(
                    !contains(&bytes, secret.as_bytes()),
                    "{secret} found in {}",
                    f.display()
                );
            }
        }
    }
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

fn segments(spool: &Path, boot: &str) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(spool.join(boot))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "spl"))
        .collect();
    v.sort();
    v
}

#[test]
fn a_new_agent_resends_what_an_unstopped_one_left_in_the_spool() {
    // Dropped without shutdown: the sender stops at once, the spool stays as it is.
    let s = setup();
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}");
    let mut sink = start(options(&s, &url, "boot-old"));
    for seq in 1..=30 {
        sink.write(&echo(seq)).unwrap();
    }
    drop(sink);
    let v = VaultServer::start(&s.data, port, false);
    let mut sink = start(options(&s, &url, "boot-new"));
    assert_eq!(sink.stats().old_boots_pending, 1);
    for seq in 1..=10 {
        sink.write(&echo(seq)).unwrap();
    }
    let st = sink.shutdown(Duration::from_secs(30));
    assert_eq!(st.spooled_events, 0, "{st:?}");
    assert_eq!(st.old_boots_pending, 0);
    v.stop();
    assert_exactly_once(&s.data, "boot-old", 30);
    assert_exactly_once(&s.data, "boot-new", 10);
    assert!(!s.spool.join("boot-old").exists(), "delivered run removed");
}

#[test]
fn a_torn_spool_frame_is_cut_and_reported_not_sent() {
    let s = setup();
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}");
    let mut sink = start(options(&s, &url, "boot-torn"));
    for seq in 1..=10 {
        sink.write(&echo(seq)).unwrap();
    }
    drop(sink);
    // What kill -9 in the middle of appending seq 10 leaves: its frame cut short.
    let seg = segments(&s.spool, "boot-torn").pop().unwrap();
    let len = std::fs::metadata(&seg).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&seg)
        .unwrap()
        .set_len(len - 7)
        .unwrap();

    let v = VaultServer::start(&s.data, port, false);
    let mut sink = start(options(&s, &url, "boot-after"));
    assert_eq!(sink.stats().torn_cuts, 1);
    sink.write(&echo(1)).unwrap();
    let st = sink.shutdown(Duration::from_secs(30));
    assert_eq!(st.spooled_events, 0, "{st:?}");
    v.stop();
    let counts = seq_counts(&s.data, "boot-torn");
    assert_eq!(
        counts.keys().copied().collect::<Vec<_>>(),
        (1..=10).collect::<Vec<_>>()
    );
    for seq in 1..=9 {
        assert_eq!(
            event_at(&s.data, "boot-torn", seq)["argv"][1],
            format!("n{seq}")
        );
    }
    // In place of the torn record: a loss event saying so, never the torn bytes.
    let loss = event_at(&s.data, "boot-torn", 10);
    assert_eq!(loss["kind"], "loss");
    assert_eq!(loss["source"], "agent_spool_torn");
    assert!(loss.get("argv").is_none());
    assert_exactly_once(&s.data, "boot-after", 1);
}

#[test]
fn a_full_spool_drops_counts_and_tells_the_vault() {
    let s = setup();
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}");
    let mut o = options(&s, &url, "boot-full");
    o.spool_max_bytes = 16 << 10;
    let mut sink = start(o);
    let pad = "x".repeat(200);
    for seq in 1..=200 {
        sink.write(&exec(seq, &["echo", &pad])).unwrap();
    }
    let dropped = sink.stats().spool_dropped;
    assert!(dropped > 100 && dropped < 200, "dropped {dropped}");
    let spooled = sink.stats().spooled_events;
    assert_eq!(spooled + dropped, 200);
    assert!(sink.stats().spooled_bytes <= 16 << 10);

    let v = VaultServer::start(&s.data, port, false);
    wait_until(Duration::from_secs(60), "the spooled part", || {
        sink.stats().spooled_events == 0
    });
    // Space is back: the sink thread's next flush spools the loss event for the dropped run.
    sink.flush().unwrap();
    sink.write(&echo(201)).unwrap();
    wait_until(
        Duration::from_secs(10),
        "a heartbeat with the loss count",
        || {
            records(&s.data).iter().any(|r| {
                r.record_kind == "loss_report"
                    && r.payload.as_ref().unwrap()["spool_dropped"] == json!(dropped)
            })
        },
    );
    let st = sink.shutdown(Duration::from_secs(20));
    assert_eq!(st.spooled_events, 0, "{st:?}");
    v.stop();

    let first_dropped = spooled + 1;
    let loss = event_at(&s.data, "boot-full", 200);
    assert_eq!(loss["kind"], "loss");
    assert_eq!(loss["source"], "agent_spool");
    assert_eq!(loss["records"], json!(dropped));
    assert_eq!(loss["first_seq"], json!(first_dropped));
    assert_eq!(loss["last_seq"], json!(200));
    let counts = seq_counts(&s.data, "boot-full");
    let mut expected: Vec<u64> = (1..first_dropped).collect();
    expected.extend([200, 201]);
    assert_eq!(counts.keys().copied().collect::<Vec<_>>(), expected);
    // The vault noticed the hole too, and the loss event explains it.
    assert!(records(&s.data).iter().any(|r| r.record_kind == "gap"));
}

/// The agent process for the kill -9 test: runs only when the parent test starts it.
#[test]
#[ignore = "helper process for agent_killed_with_sigkill_resends_on_restart"]
fn kill9_child_agent() {
    // Run by hand (or with --include-ignored) it has nothing to do.
    let Ok(cfg) = std::env::var("AUDITOR_KILL9_CHILD") else {
        return;
    };
    let cfg: Value = serde_json::from_str(&cfg).unwrap();
    let mut o = VaultClientOptions::new(
        cfg["url"].as_str().unwrap(),
        cfg["token"].as_str().unwrap(),
        HOST,
        "boot-killed",
    );
    o.spool_dir = PathBuf::from(cfg["spool"].as_str().unwrap());
    o.allow_insecure_http = true;
    o.batch_delay = Duration::from_millis(20);
    let mut sink = start(o);
    for seq in 1..=10 {
        sink.write(&echo(seq)).unwrap();
    }
    wait_until(Duration::from_secs(30), "the first ten acked", || {
        sink.stats().acked_through == 10
    });
    println!("ACKED");
    let mut line = String::new();
    std::io::stdin().read_line(&mut line).unwrap();
    for seq in 11..=25 {
        sink.write(&echo(seq)).unwrap();
    }
    sink.flush().unwrap();
    println!("SPOOLED");
    std::thread::sleep(Duration::from_secs(600));
}

#[test]
fn agent_killed_with_sigkill_resends_on_restart() {
    let s = setup();
    let v = VaultServer::start(&s.data, 0, false);
    let port = v.addr.port();
    let url = v.http_url();
    let cfg = json!({"url": url, "token": s.token, "spool": s.spool});
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["--ignored", "--exact", "kill9_child_agent", "--nocapture"])
        .env("AUDITOR_KILL9_CHILD", cfg.to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut wait_for = |word: &str| {
        let mut line = String::new();
        loop {
            line.clear();
            assert!(
                out.read_line(&mut line).unwrap() > 0,
                "child exited before {word}"
            );
            if line.trim() == word {
                return;
            }
        }
    };
    wait_for("ACKED");
    // The vault goes away; the agent keeps capturing into its spool, then is killed.
    v.stop();
    child.stdin.as_mut().unwrap().write_all(b"go\n").unwrap();
    wait_for("SPOOLED");
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();

    let v = VaultServer::start(&s.data, port, false);
    let mut sink = start(options(&s, &url, "boot-restarted"));
    assert_eq!(sink.stats().old_boots_pending, 1);
    assert_eq!(sink.stats().spooled_events, 15, "11..=25 were never acked");
    sink.write(&echo(1)).unwrap();
    let st = sink.shutdown(Duration::from_secs(30));
    assert_eq!(st.spooled_events, 0, "{st:?}");
    v.stop();
    assert_exactly_once(&s.data, "boot-killed", 25);
    assert_exactly_once(&s.data, "boot-restarted", 1);
}
