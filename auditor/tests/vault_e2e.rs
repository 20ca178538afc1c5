//! The vault for real: a server on 127.0.0.1 port 0, real HTTP(S) through reqwest, then
//! verify/query/erase on the directory it wrote. Unprivileged, loopback only.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use auditor::vault::{self, EraseSelector, QueryFilter, ServeOptions, StoredRecord};
use serde_json::{Value, json};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

struct Server {
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<Result<(), vault::VaultError>>,
}

impl Server {
    async fn start(opts: ServeOptions) -> Server {
        let data = opts.data.clone();
        let tls = !opts.insecure_http;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(vault::serve_on(listener, opts, async move {
            let _ = rx.await;
        }));
        let s = Server {
            addr,
            stop: Some(tx),
            task,
        };
        s.wait_healthy(&data, tls).await;
        s
    }

    /// The port accepts as soon as it is bound: wait for an actual answer to /v1/health
    /// (over TLS, once the certificate has been generated, trusting only it).
    async fn wait_healthy(&self, data: &Path, tls: bool) {
        for _ in 0..250 {
            assert!(!self.task.is_finished(), "server exited early");
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
            let url = format!("{scheme}://localhost:{}/v1/health", self.addr.port());
            if let Ok(r) = client.get(url).send().await
                && r.status().is_success()
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("server did not come up");
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    async fn stop(mut self) {
        let _ = self.stop.take().unwrap().send(());
        tokio::time::timeout(Duration::from_secs(15), self.task)
            .await
            .expect("server stops")
            .unwrap()
            .unwrap();
    }
}

fn http_opts(data: &Path) -> ServeOptions {
    let mut o = ServeOptions::new("127.0.0.1:0".parse().unwrap(), data.to_owned());
    o.insecure_http = true;
    // Long, so that no agent_silent record lands in the middle of a byte-for-byte comparison.
    o.silence_threshold = Duration::from_secs(3600);
    o
}

fn event(seq: u64, kind: &str, extra: Value) -> Value {
    let mut e = json!({
        "schema_version": 1,
        "kind": kind,
        "time": format!("2026-11-23T12:00:{:02}.123456789Z", seq % 60),
        "pid": 1000 + seq,
    });
    for (k, v) in extra.as_object().unwrap() {
        e[k] = v.clone();
    }
    e
}

fn exec(seq: u64, argv: &[&str]) -> Value {
    event(
        seq,
        "exec",
        json!({"exe": format!("/usr/bin/{}", argv[0]), "argv": argv, "cwd": "/root", "uid": 0}),
    )
}

fn batch(host: &str, boot: &str, seqs: impl IntoIterator<Item = u64>) -> Value {
    let records: Vec<Value> = seqs
        .into_iter()
        .map(|s| json!({"seq": s, "event": exec(s, &["echo", &format!("n{s}")])}))
        .collect();
    json!({"host": host, "boot_id": boot, "records": records})
}

async fn post(client: &reqwest::Client, url: &str, token: &str, body: &Value) -> (u16, Value) {
    let r = client
        .post(url)
        .bearer_auth(token)
        .json(body)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

async fn post_raw(
    client: &reqwest::Client,
    url: &str,
    token: &str,
    body: Vec<u8>,
    gzip: bool,
) -> (u16, Value) {
    let mut req = client
        .post(url)
        .bearer_auth(token)
        .header("content-type", "application/json")
        .body(body);
    if gzip {
        req = req.header("content-encoding", "gzip");
    }
    let r = req.send().await.unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

fn gz(bytes: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(bytes).unwrap();
    e.finish().unwrap()
}

/// Every file under DATA/hosts with its bytes.
fn snapshot(data: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    fn walk(dir: &Path, out: &mut BTreeMap<PathBuf, Vec<u8>>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                walk(&p, out);
            } else {
                out.insert(p.clone(), std::fs::read(&p).unwrap());
            }
        }
    }
    let mut out = BTreeMap::new();
    let hosts = data.join("hosts");
    if hosts.exists() {
        walk(&hosts, &mut out);
    }
    out
}

fn all_files_contain(dir: &Path, needle: &[u8]) -> Vec<PathBuf> {
    let mut hits = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            hits.extend(all_files_contain(&p, needle));
        } else {
            let b = std::fs::read(&p).unwrap();
            if b.windows(needle.len()).any(|w| w == needle) {
                hits.push(p);
            }
        }
    }
    hits
}

fn segment_path(data: &Path, host: &str) -> PathBuf {
    data.join("hosts").join(host).join("seg-00000001.avs")
}

fn records(data: &Path, f: QueryFilter) -> Vec<StoredRecord> {
    vault::query(data, &f).unwrap()
}

fn kinds(data: &Path, kind: &str) -> Vec<StoredRecord> {
    records(
        data,
        QueryFilter {
            kinds: vec![kind.to_owned()],
            ..Default::default()
        },
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingest_then_query_finds_it() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path();
    let token = vault::enroll(data, "web1").unwrap();
    let server = Server::start(http_opts(data)).await;
    let client = reqwest::Client::new();

    let health = client.get(server.url("/v1/health")).send().await.unwrap();
    assert_eq!(health.status().as_u16(), 200);

    let rm = exec(1, &["rm", "/var/log/app.log"]);
    let unlink = event(
        2,
        "unlink",
        json!({"path": "/var/log/app.log", "tamper": {"kind": "log_deleted", "reason": "a log file was deleted"}}),
    );
    let other = event(3, "connect", json!({"daddr": "127.0.0.1", "dport": 22}));
    let body = json!({"host": "web1", "boot_id": "boot-a", "records": [
        {"seq": 1, "event": rm}, {"seq": 2, "event": unlink}, {"seq": 3, "event": other}]});
    let (status, reply) = post(&client, &server.url("/v1/ingest"), &token, &body).await;
    assert_eq!(status, 200, "{reply}");
    assert_eq!(reply["acked_through"], 3);
    assert_eq!(reply["stored"], 3);
    assert_eq!(reply["duplicates"], 0);
    assert_eq!(reply["chain_index"], 3);
    assert_eq!(reply["chain_head"].as_str().unwrap().len(), 64);
    server.stop().await;

    let by_path = records(
        data,
        QueryFilter {
            path_glob: Some("/var/log/*".into()),
            ..Default::default()
        },
    );
    // The exec names /usr/bin/rm as exe; only the unlink has a path under /var/log.
    assert_eq!(by_path.len(), 1);
    assert_eq!(by_path[0].id, "web1/2");
    assert_eq!(by_path[0].event(), Some(&unlink));
    assert_eq!(by_path[0].boot_id.as_deref(), Some("boot-a"));
    assert_eq!(by_path[0].seq, Some(2));

    let by_argv = records(
        data,
        QueryFilter {
            argv_contains: Some("rm /var/log".into()),
            ..Default::default()
        },
    );
    assert_eq!(by_argv.len(), 1);
    assert_eq!(by_argv[0].event(), Some(&rm));

    let tamper = records(
        data,
        QueryFilter {
            tamper_only: true,
            ..Default::default()
        },
    );
    assert_eq!(tamper.iter().map(|r| r.index).collect::<Vec<_>>(), [2]);

    assert_eq!(kinds(data, "connect").len(), 1);
    let host_filter = records(
        data,
        QueryFilter {
            host: Some("web1".into()),
            ..Default::default()
        },
    );
    assert_eq!(host_filter.len(), 3);

    let t = |s: &str| humantime::parse_rfc3339(s).unwrap();
    let window = records(
        data,
        QueryFilter {
            since: Some(t("2026-11-23T12:00:02Z")),
            until: Some(t("2026-11-23T12:00:03Z")),
            ..Default::default()
        },
    );
    assert_eq!(window.iter().map(|r| r.index).collect::<Vec<_>>(), [2]);

    let report = vault::verify(data, None, false).unwrap();
    assert!(report.is_ok(), "{:?}", report.failures);
    assert_eq!(report.records, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_mid_stream_loses_nothing_and_stores_nothing_twice() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path();
    let token = vault::enroll(data, "web1").unwrap();
    let client = reqwest::Client::new();

    let server = Server::start(http_opts(data)).await;
    for chunk in [1..=10u64, 11..=20, 21..=30] {
        let (s, r) = post(
            &client,
            &server.url("/v1/ingest"),
            &token,
            &batch("web1", "b1", chunk),
        )
        .await;
        assert_eq!(s, 200, "{r}");
    }
    server.stop().await;

    let server = Server::start(http_opts(data)).await;
    // The agent never saw the ack for 21..=30: it sends it again.
    let (s, r) = post(
        &client,
        &server.url("/v1/ingest"),
        &token,
        &batch("web1", "b1", 21..=30),
    )
    .await;
    assert_eq!(s, 200, "{r}");
    assert_eq!(
        (r["stored"].as_u64(), r["duplicates"].as_u64()),
        (Some(0), Some(10))
    );
    assert_eq!(r["acked_through"], 30);
    // Overlapping batch: half old, half new.
    let (s, r) = post(
        &client,
        &server.url("/v1/ingest"),
        &token,
        &batch("web1", "b1", 26..=50),
    )
    .await;
    assert_eq!(s, 200, "{r}");
    assert_eq!(
        (r["stored"].as_u64(), r["duplicates"].as_u64()),
        (Some(20), Some(5))
    );
    server.stop().await;

    let data_records = kinds(data, "data");
    let seqs: Vec<u64> = data_records.iter().map(|r| r.seq.unwrap()).collect();
    assert_eq!(seqs, (1..=50).collect::<Vec<_>>());
    assert_eq!(
        vault::query(data, &QueryFilter::default()).unwrap().len(),
        50,
        "no system records"
    );
    assert!(vault::verify(data, Some("web1"), false).unwrap().is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn any_flipped_byte_fails_verify_and_names_the_record() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path();
    let token = vault::enroll(data, "web1").unwrap();
    let client = reqwest::Client::new();
    let server = Server::start(http_opts(data)).await;
    let body = json!({"host": "web1", "boot_id": "b", "records": (1..=5u64).map(|s| json!({
        "seq": s, "event": exec(s, &["cat", &format!("MARK-{s}")])})).collect::<Vec<_>>()});
    let (s, _) = post(&client, &server.url("/v1/ingest"), &token, &body).await;
    assert_eq!(s, 200);
    server.stop().await;
    assert!(vault::verify(data, None, false).unwrap().is_ok());

    let seg = segment_path(data, "web1");
    let good = std::fs::read(&seg).unwrap();
    let at = good.windows(6).position(|w| w == b"MARK-3").unwrap();
    let mut bad = good.clone();
    bad[at] ^= 0x20;
    std::fs::write(&seg, &bad).unwrap();
    let report = vault::verify(data, None, false).unwrap();
    let f = report.first_failure().expect("flip detected");
    assert_eq!(f.record, "web1/3");
    assert_eq!(f.segment, seg);
    assert!(f.reason.contains("checksum"), "{f}");

    // Every single byte of the segment matters.
    for i in 0..good.len() {
        let mut bad = good.clone();
        bad[i] ^= 0x01;
        std::fs::write(&seg, &bad).unwrap();
        let report = vault::verify(data, None, false).unwrap();
        assert!(
            !report.is_ok(),
            "flip at byte {i} of {} went unnoticed",
            good.len()
        );
    }
    std::fs::write(&seg, &good).unwrap();
    assert!(vault::verify(data, None, false).unwrap().is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn erase_keeps_verify_passing_and_the_bytes_are_gone() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path();
    let token = vault::enroll(data, "web1").unwrap();
    let client = reqwest::Client::new();
    let server = Server::start(http_opts(data)).await;
    let marker = "alice-SECRET-7f3a";
    let body = json!({"host": "web1", "boot_id": "b", "records": [
        {"seq": 1, "event": exec(1, &["ls"])},
        {"seq": 2, "event": event(2, "unlink", json!({"path": format!("/home/{marker}/notes")}))},
        {"seq": 3, "event": exec(3, &["vim", &format!("/home/{marker}/notes")])},
        {"seq": 4, "event": exec(4, &["ls", "-l"])},
    ]});
    let (s, _) = post(&client, &server.url("/v1/ingest"), &token, &body).await;
    assert_eq!(s, 200);

    // The server holds the writer lock: erase refuses rather than race it.
    let err =
        vault::erase(data, EraseSelector::Record("web1/2".into()), "gdpr", "test").unwrap_err();
    assert!(matches!(err, vault::VaultError::Locked(_)), "{err}");
    server.stop().await;
    assert!(!all_files_contain(data, marker.as_bytes()).is_empty());

    let r1 = vault::erase(
        data,
        EraseSelector::Record("web1/2".into()),
        "GDPR request #12",
        "dpo",
    )
    .unwrap();
    assert_eq!(r1.erased, ["web1/2"]);
    let r2 = vault::erase(
        data,
        EraseSelector::Match {
            field: "argv".into(),
            value: format!("/home/{marker}/notes"),
        },
        "GDPR request #12",
        "dpo",
    )
    .unwrap();
    assert_eq!(r2.erased, ["web1/3"]);
    assert_eq!(r2.erasure_records.len(), 1);

    let hits = all_files_contain(data, marker.as_bytes());
    assert!(hits.is_empty(), "erased marker still on disk in {hits:?}");
    let report = vault::verify(data, None, false).unwrap();
    assert!(report.is_ok(), "{:?}", report.failures);
    assert_eq!(report.erased, 2);

    let all = vault::query(data, &QueryFilter::default()).unwrap();
    let two = all.iter().find(|r| r.id == "web1/2").unwrap();
    assert!(two.erased && two.payload.is_none());
    assert_eq!(two.seq, Some(2), "metadata survives erasure");
    let erasures: Vec<_> = all.iter().filter(|r| r.record_kind == "erasure").collect();
    assert_eq!(erasures.len(), 2);
    let p = erasures[1].payload.as_ref().unwrap();
    assert_eq!(p["who"], "dpo");
    assert_eq!(p["reason"], "GDPR request #12");
    assert_eq!(p["records"], json!(["web1/3"]));
    assert_eq!(p["selector"], json!({"type": "match", "field": "argv"}));
    // Untouched records keep their payload.
    assert!(
        all.iter()
            .find(|r| r.id == "web1/4")
            .unwrap()
            .payload
            .is_some()
    );

    // Erasing again is reported, not repeated; vault records cannot be erased.
    let again = vault::erase(data, EraseSelector::Record("web1/2".into()), "again", "dpo").unwrap();
    assert_eq!(again.already_erased, ["web1/2"]);
    assert!(again.erasure_records.is_empty());
    assert!(
        vault::erase(
            data,
            EraseSelector::Record(erasures[0].id.clone()),
            "x",
            "dpo"
        )
        .is_err()
    );

    // The server restarts on the erased store, and the resend of an erased seq stays a duplicate.
    let server = Server::start(http_opts(data)).await;
    let (s, r) = post(&client, &server.url("/v1/ingest"), &token, &body).await;
    assert_eq!(s, 200);
    assert_eq!(r["duplicates"], 4);
    server.stop().await;
    assert!(all_files_contain(data, marker.as_bytes()).is_empty());

    // Zeroing a payload behind the vault's back is caught: no erasure record names it.
    let seg = segment_path(data, "web1");
    let mut bytes = std::fs::read(&seg).unwrap();
    let n = bytes.windows(5).position(|w| w == b"\"-l\"]").unwrap();
    bytes[n] = b'X';
    std::fs::write(&seg, &bytes).unwrap();
    assert!(!vault::verify(data, None, false).unwrap().is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rejected_requests_get_clear_errors_and_leave_the_store_unchanged() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path();
    let token = vault::enroll(data, "web1").unwrap();
    let other = vault::enroll(data, "web2").unwrap();
    let mut opts = http_opts(data);
    opts.max_body_bytes = 64 * 1024;
    let server = Server::start(opts).await;
    let client = reqwest::Client::new();
    let url = server.url("/v1/ingest");
    let (s, _) = post(&client, &url, &token, &batch("web1", "b", 1..=3)).await;
    assert_eq!(s, 200);
    let before = snapshot(data);
    assert!(!before.is_empty());

    let good = serde_json::to_vec(&batch("web1", "b", 4..=6)).unwrap();
    let mut cases: Vec<(&str, u16, (u16, Value))> = Vec::new();
    cases.push((
        "wrong token",
        401,
        post(&client, &url, "avt_nope", &batch("web1", "b", 4..=6)).await,
    ));
    let r = client
        .post(&url)
        .json(&batch("web1", "b", 4..=6))
        .send()
        .await
        .unwrap();
    cases.push((
        "no token",
        401,
        (r.status().as_u16(), r.json().await.unwrap()),
    ));
    cases.push((
        "other host's token",
        403,
        post(&client, &url, &other, &batch("web1", "b", 4..=6)).await,
    ));
    cases.push((
        "malformed JSON",
        400,
        post_raw(
            &client,
            &url,
            &token,
            b"{\"host\":\"web1\",".to_vec(),
            false,
        )
        .await,
    ));
    cases.push((
        "missing field",
        400,
        post(
            &client,
            &url,
            &token,
            &json!({"host": "web1", "records": []}),
        )
        .await,
    ));
    cases.push((
        "seq 0",
        400,
        post(
            &client,
            &url,
            &token,
            &json!({"host": "web1", "boot_id": "b", "records": [{"seq": 0, "event": {}}]}),
        )
        .await,
    ));
    cases.push((
        "event not an object",
        400,
        post(
            &client,
            &url,
            &token,
            &json!({"host": "web1", "boot_id": "b", "records": [{"seq": 9, "event": "x"}]}),
        )
        .await,
    ));
    let compressed = gz(&good);
    cases.push((
        "truncated gzip",
        400,
        post_raw(
            &client,
            &url,
            &token,
            compressed[..compressed.len() - 9].to_vec(),
            true,
        )
        .await,
    ));
    cases.push((
        "not gzip at all",
        400,
        post_raw(&client, &url, &token, good.clone(), true).await,
    ));
    let huge = serde_json::to_vec(&json!({"host": "web1", "boot_id": "b", "records": [
        {"seq": 4, "event": {"kind": "exec", "argv": ["x".repeat(100 * 1024)]}}]}))
    .unwrap();
    cases.push((
        "oversized body",
        413,
        post_raw(&client, &url, &token, huge.clone(), false).await,
    ));
    // Small on the wire, big once inflated: a gzip bomb.
    let bomb = gz(&huge);
    assert!(bomb.len() < 64 * 1024);
    cases.push((
        "gzip bomb",
        413,
        post_raw(&client, &url, &token, bomb, true).await,
    ));
    for (what, want, (got, body)) in &cases {
        assert_eq!(got, want, "{what}: {body}");
        let msg = body["error"]
            .as_str()
            .unwrap_or_else(|| panic!("{what}: no error message: {body}"));
        assert!(!msg.is_empty());
    }
    // A replay of acknowledged records is acknowledged again and stored nothing.
    let (s, r) = post(&client, &url, &token, &batch("web1", "b", 1..=3)).await;
    assert_eq!(s, 200);
    assert_eq!(
        (r["stored"].as_u64(), r["duplicates"].as_u64()),
        (Some(0), Some(3))
    );
    assert_eq!(
        snapshot(data),
        before,
        "store changed by a rejected or replayed request"
    );

    // A revoked token stops working at once, on the running server.
    vault::revoke(data, "web1").unwrap();
    let (s, r) = post(&client, &url, &token, &batch("web1", "b", 4..=6)).await;
    assert_eq!(s, 401, "{r}");
    assert_eq!(snapshot(data), before);

    // And the good gzip path works.
    let token2 = vault::enroll(data, "web3").unwrap();
    let body = serde_json::to_vec(&batch("web3", "b", 1..=3)).unwrap();
    let (s, r) = post_raw(&client, &url, &token2, gz(&body), true).await;
    assert_eq!(s, 200, "{r}");
    assert_eq!(r["stored"], 3);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gaps_out_of_order_and_conflicting_replays_are_recorded() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path();
    let token = vault::enroll(data, "web1").unwrap();
    let client = reqwest::Client::new();
    let server = Server::start(http_opts(data)).await;
    let url = server.url("/v1/ingest");
    let (s, _) = post(&client, &url, &token, &batch("web1", "b", [1, 2])).await;
    assert_eq!(s, 200);
    let (s, r) = post(&client, &url, &token, &batch("web1", "b", [5])).await;
    assert_eq!(s, 200);
    assert_eq!(r["gaps"], json!([[3, 4]]));
    assert_eq!(r["acked_through"], 5);
    let (s, _) = post(&client, &url, &token, &batch("web1", "b", [3])).await;
    assert_eq!(s, 200);
    // Same (boot, seq), different event: kept as evidence, original untouched.
    let forged = json!({"host": "web1", "boot_id": "b", "records": [{"seq": 2, "event": exec(2, &["forged"])}]});
    let (s, r) = post(&client, &url, &token, &forged).await;
    assert_eq!(s, 200);
    assert_eq!(
        (r["stored"].as_u64(), r["conflicts"].as_u64()),
        (Some(0), Some(1))
    );
    // A new boot starting past 1 is a gap too.
    let (s, _) = post(&client, &url, &token, &batch("web1", "b2", [3])).await;
    assert_eq!(s, 200);
    server.stop().await;

    let gaps = kinds(data, "gap");
    assert_eq!(gaps.len(), 2);
    let g = gaps[0].payload.as_ref().unwrap();
    assert_eq!(
        (g["host"].as_str(), g["boot_id"].as_str()),
        (Some("web1"), Some("b"))
    );
    assert_eq!(
        (g["from"].as_u64(), g["to"].as_u64(), g["count"].as_u64()),
        (Some(3), Some(4), Some(2))
    );
    assert!(g["noticed_at"].as_str().unwrap().starts_with("20"));
    let g2 = gaps[1].payload.as_ref().unwrap();
    assert_eq!(
        (
            g2["boot_id"].as_str(),
            g2["from"].as_u64(),
            g2["to"].as_u64()
        ),
        (Some("b2"), Some(1), Some(2))
    );

    let ooo = kinds(data, "out_of_order");
    assert_eq!(ooo.len(), 1);
    assert_eq!(ooo[0].payload.as_ref().unwrap()["seq"], 3);
    assert_eq!(ooo[0].payload.as_ref().unwrap()["highest_seen"], 5);

    let replay = kinds(data, "replay");
    assert_eq!(replay.len(), 1);
    let p = replay[0].payload.as_ref().unwrap();
    assert_eq!(p["offered_event"]["argv"], json!(["forged"]));
    assert_eq!(p["stored_record"], "web1/2");
    let original = vault::query(data, &QueryFilter::default())
        .unwrap()
        .into_iter()
        .find(|r| r.id == "web1/2")
        .unwrap();
    assert_eq!(original.event().unwrap()["argv"], json!(["echo", "n2"]));
    assert!(vault::verify(data, None, false).unwrap().is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_agent_gets_one_record_per_episode_and_heartbeats_report_loss() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path();
    let token = vault::enroll(data, "web1").unwrap();
    let mut opts = http_opts(data);
    opts.silence_threshold = Duration::from_millis(800);
    let server = Server::start(opts).await;
    let client = reqwest::Client::new();
    let (s, _) = post(
        &client,
        &server.url("/v1/ingest"),
        &token,
        &batch("web1", "b", [1]),
    )
    .await;
    assert_eq!(s, 200);
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(
        kinds(data, "agent_silent").len(),
        1,
        "one record per episode, not per tick"
    );

    let hb = json!({"host": "web1", "boot_id": "b", "last_seq": 1,
        "loss": {"kernel_records": 3, "spool_dropped": 0}});
    let (s, r) = post(&client, &server.url("/v1/heartbeat"), &token, &hb).await;
    assert_eq!(s, 200, "{r}");
    assert_eq!(r["acked_through"], 1);
    // Same counters again: nothing new to record.
    let (s, _) = post(&client, &server.url("/v1/heartbeat"), &token, &hb).await;
    assert_eq!(s, 200);
    tokio::time::sleep(Duration::from_millis(2000)).await;
    server.stop().await;

    let all = vault::query(data, &QueryFilter::default()).unwrap();
    let sequence: Vec<&str> = all.iter().map(|r| r.record_kind.as_str()).collect();
    assert_eq!(
        sequence,
        [
            "data",
            "agent_silent",
            "agent_resumed",
            "loss_report",
            "agent_silent"
        ]
    );
    let silent = all[1].payload.as_ref().unwrap();
    assert_eq!(silent["host"], "web1");
    assert_eq!(silent["last_boot_id"], "b");
    assert_eq!(silent["last_seq"], 1);
    let loss = all[3].payload.as_ref().unwrap();
    assert_eq!(
        (
            loss["kernel_records"].as_u64(),
            loss["spool_dropped"].as_u64()
        ),
        (Some(3), Some(0))
    );
    assert!(vault::verify(data, None, false).unwrap().is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_with_the_generated_self_signed_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path();
    let token = vault::enroll(data, "web1").unwrap();
    let mut opts = http_opts(data);
    opts.insecure_http = false;
    let server = Server::start(opts.clone()).await;
    let (cert, key) = vault::self_signed_paths(data);
    let fp = vault::cert_fingerprint(&cert).unwrap();
    assert_eq!(fp.len(), 32 * 3 - 1, "{fp}");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&key).unwrap().permissions().mode() & 0o077,
        0
    );

    let pem = std::fs::read(&cert).unwrap();
    let pinned = reqwest::Client::builder()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(&pem).unwrap())
        .build()
        .unwrap();
    let url = format!("https://localhost:{}/v1/ingest", server.addr.port());
    let (s, r) = post(&pinned, &url, &token, &batch("web1", "b", 1..=2)).await;
    assert_eq!(s, 200, "{r}");
    let health = pinned
        .get(format!(
            "https://127.0.0.1:{}/v1/health",
            server.addr.port()
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status().as_u16(), 200);

    // A client that does not trust the certificate is refused, and so is plain HTTP.
    let untrusting = reqwest::Client::builder()
        .tls_built_in_root_certs(false)
        .build()
        .unwrap();
    assert!(
        untrusting
            .get(format!(
                "https://localhost:{}/v1/health",
                server.addr.port()
            ))
            .send()
            .await
            .is_err()
    );
    assert!(
        reqwest::Client::new()
            .get(server.url("/v1/health"))
            .send()
            .await
            .is_err()
    );
    server.stop().await;

    // The certificate is reused on the next start.
    let server = Server::start(opts).await;
    assert_eq!(vault::cert_fingerprint(&cert).unwrap(), fp);
    let url = format!("https://localhost:{}/v1/ingest", server.addr.port());
    let (s, r) = post(&pinned, &url, &token, &batch("web1", "b", 3..=3)).await;
    assert_eq!(s, 200, "{r}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_torn_append_is_cut_off_on_start_and_never_read_as_data() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path();
    let token = vault::enroll(data, "web1").unwrap();
    let client = reqwest::Client::new();
    let server = Server::start(http_opts(data)).await;
    let (s, _) = post(
        &client,
        &server.url("/v1/ingest"),
        &token,
        &batch("web1", "b", 1..=3),
    )
    .await;
    assert_eq!(s, 200);
    server.stop().await;

    // What kill -9 in the middle of the next append leaves: the start of a frame.
    let seg = segment_path(data, "web1");
    let good = std::fs::read(&seg).unwrap();
    let frame_start = good.len();
    let mut torn = good.clone();
    torn.extend_from_slice(&good[8..8 + 60]);
    std::fs::write(&seg, &torn).unwrap();
    let report = vault::verify(data, None, false).unwrap();
    let f = report
        .first_failure()
        .expect("a torn tail with no writer running is reported");
    assert_eq!(
        (f.record.as_str(), f.offset),
        ("web1/4", frame_start as u64)
    );

    let server = Server::start(http_opts(data)).await;
    let (s, r) = post(
        &client,
        &server.url("/v1/ingest"),
        &token,
        &batch("web1", "b", 3..=4),
    )
    .await;
    assert_eq!(s, 200, "{r}");
    assert_eq!(
        (r["stored"].as_u64(), r["duplicates"].as_u64()),
        (Some(1), Some(1))
    );
    server.stop().await;

    let all = vault::query(data, &QueryFilter::default()).unwrap();
    let sequence: Vec<&str> = all.iter().map(|r| r.record_kind.as_str()).collect();
    assert_eq!(sequence, ["data", "data", "data", "recovery", "data"]);
    let rec = all[3].payload.as_ref().unwrap();
    assert_eq!(
        (rec["offset"].as_u64(), rec["bytes"].as_u64()),
        (Some(frame_start as u64), Some(60))
    );
    let q = data.join("hosts/web1/quarantine");
    let kept: Vec<_> = std::fs::read_dir(&q).unwrap().collect();
    assert_eq!(kept.len(), 1);
    assert!(vault::verify(data, None, false).unwrap().is_ok());
}

#[test]
fn local_vault_writes_the_same_verifiable_format() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path();
    {
        let mut v = vault::LocalVault::open(data, "laptop", "boot-1").unwrap();
        assert!(matches!(
            vault::LocalVault::open(data, "laptop", "boot-1"),
            Err(vault::VaultError::Locked(_))
        ));
        for s in 1..=3 {
            v.append(s, &exec(s, &["true"])).unwrap();
        }
        v.append(3, &exec(3, &["true"])).unwrap();
        v.append(6, &exec(6, &["true"])).unwrap();
        v.flush().unwrap();
        assert_eq!(v.chain_head().1, 5);
    }
    let all = vault::query(data, &QueryFilter::default()).unwrap();
    let sequence: Vec<&str> = all.iter().map(|r| r.record_kind.as_str()).collect();
    assert_eq!(sequence, ["data", "data", "data", "gap", "data"]);
    assert!(vault::verify(data, Some("laptop"), false).unwrap().is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_refuses_clients_without_a_certificate_from_the_ca() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path();
    let token = vault::enroll(data, "web1").unwrap();

    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    let mut client_params = rcgen::CertificateParams::new(vec!["agent-web1".to_owned()]).unwrap();
    client_params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    let client_key = rcgen::KeyPair::generate().unwrap();
    let client_cert = client_params.signed_by(&client_key, &issuer).unwrap();
    let ca_path = data.join("client-ca.pem");
    std::fs::write(&ca_path, ca_cert.pem()).unwrap();

    let mut opts = http_opts(data);
    opts.insecure_http = false;
    opts.client_ca = Some(ca_path);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let (tx, rx) = oneshot::channel::<()>();
    let task = tokio::spawn(vault::serve_on(listener, opts, async move {
        let _ = rx.await;
    }));
    let (cert, _) = vault::self_signed_paths(data);
    for _ in 0..250 {
        if std::fs::metadata(&cert).is_ok_and(|m| m.len() > 0) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let root = reqwest::Certificate::from_pem(&std::fs::read(&cert).unwrap()).unwrap();
    let url = format!("https://localhost:{port}/v1/ingest");

    let anonymous = reqwest::Client::builder()
        .tls_built_in_root_certs(false)
        .add_root_certificate(root.clone())
        .build()
        .unwrap();
    let refused = anonymous
        .post(&url)
        .bearer_auth(&token)
        .json(&batch("web1", "b", [1]))
        .send()
        .await;
    assert!(refused.is_err(), "no client certificate, yet {refused:?}");

    let identity = format!("{}{}", client_cert.pem(), client_key.serialize_pem());
    let with_cert = reqwest::Client::builder()
        .tls_built_in_root_certs(false)
        .add_root_certificate(root)
        .identity(reqwest::Identity::from_pem(identity.as_bytes()).unwrap())
        .build()
        .unwrap();
    let (s, r) = post(&with_cert, &url, &token, &batch("web1", "b", [1])).await;
    assert_eq!(s, 200, "{r}");

    let _ = tx.send(());
    tokio::time::timeout(Duration::from_secs(15), task)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(kinds(data, "data").len(), 1);
}
