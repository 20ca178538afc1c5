//! `auditor watch`: kernel ring buffer -> decode -> assemble -> sequence -> sinks.
//!
//! One async task reads the ring buffer (woken by epoll through `AsyncFd`), decodes,
//! pairs and stamps records, and hands events to the sink thread over a bounded channel
//! (full-queue policy: block; see `sink`). A 200 ms tick polls the kernel loss counters,
//! expires exec entries whose exit never came, and re-samples the clock.
//!
//! SIGHUP reloads the watch list and the rules (through the caller's `reload`) without
//! detaching anything: the kernel maps are rewritten in place, so no event is lost.
//! Shutdown (SIGTERM/SIGINT) drains the ring and pending entries, then sends a last
//! `agent_stopping` record with the reason.

use std::{future::Future, time::Duration};

use tokio::{io::unix::AsyncFd, sync::mpsc};

use crate::{
    assemble::{Assembler, Stamped},
    bpf::{
        self, LoadOptions,
        ring::{IdleFlag, LossReader},
    },
    classify::UserRules,
    clock::{self, Clock},
    decode,
    event::{
        AgentReload, AgentStart, AgentStopping, Body, CpuLoss, DecodeErrorEvent, Event, Loss,
        SCHEMA_VERSION,
    },
    guard::AgentSelf,
    sink::{Sink, SinkError},
    watchlist::WatchList,
};

/// Batches in flight between the reader and the sinks. A batch is what one pass over the
/// ring produced (up to 256 records' worth, see `drain_ring`): handing events over one by
/// one cost a channel operation, and often a thread wakeup, per event.
pub const QUEUE_BATCHES: usize = 64;
const TICK: Duration = Duration::from_millis(200);
/// How often the ring is read while records keep coming (the programs wake the reader
/// only when the backlog crosses a multiple of 256 KiB: a wakeup per record was a
/// context switch, and in a VM an IPI, per event).
const RING_POLL: Duration = Duration::from_millis(5);
/// Once a whole `RING_POLL` passed without a record, the reader arms `READER_IDLE` (the
/// next record wakes it) and polls only this often, as a safety net for a record written
/// while the flag was being set. Polling every 5 ms while idle cost the agent 1.7 % of a
/// core (171 ms of CPU per 10 idle seconds, measured from schedstat).
const IDLE_POLL: Duration = Duration::from_millis(100);

#[derive(Debug, thiserror::Error)]
pub enum WatchError {
    #[error(transparent)]
    Load(#[from] bpf::LoadError),
    #[error(transparent)]
    Ring(#[from] bpf::ring::RingError),
    #[error("cannot poll the ring buffer: {0}")]
    Poll(std::io::Error),
    #[error(transparent)]
    Sink(#[from] SinkError),
    #[error("the sink thread stopped unexpectedly")]
    SinkGone,
}

pub struct WatchOptions {
    pub load: LoadOptions,
    /// The nice value the agent runs at (`None`: could not be read), for `agent_start`.
    pub nice: Option<i32>,
    pub boot_id: String,
    /// Kernel records lost since start, for the vault client's heartbeats.
    pub kernel_losses: std::sync::Arc<std::sync::atomic::AtomicU64>,
    /// The user's tamper rules.
    pub rules: UserRules,
    /// Called on SIGHUP: the new watch list and rules, or why not (the old ones stay).
    pub reload: Option<Reloader>,
}

/// What a reload produces.
pub struct Reconfig {
    pub watch: WatchList,
    pub rules: UserRules,
}

pub type Reloader = Box<dyn FnMut() -> Result<Reconfig, String> + Send>;

/// Assigns per-boot sequence numbers and wall-clock times.
pub struct Sequencer {
    next: u64,
    clock: Clock,
    second: crate::clock::SecondCache,
}

impl Sequencer {
    pub fn new() -> Self {
        Self {
            next: 1,
            clock: Clock::sample(),
            second: crate::clock::SecondCache::default(),
        }
    }

    pub fn resample(&mut self) {
        self.clock = Clock::sample();
    }

    pub fn time(&self, boot_ns: u64) -> String {
        self.clock.rfc3339(boot_ns)
    }

    pub fn stamp(&mut self, s: Stamped) -> Event {
        let seq = self.next;
        self.next += 1;
        Event {
            schema_version: SCHEMA_VERSION,
            seq,
            time: self.clock.rfc3339_cached(s.boot_ns, &mut self.second),
            boot_ns: s.boot_ns,
            body: s.body,
        }
    }
}

impl Default for Sequencer {
    fn default() -> Self {
        Self::new()
    }
}

fn hex_head(b: &[u8]) -> String {
    b.iter().take(32).map(|x| format!("{x:02x}")).collect()
}

/// Runs until `shutdown` resolves (or a fatal error). Everything already read from the
/// kernel is delivered to the sinks before returning.
pub async fn run(
    mut opts: WatchOptions,
    sinks: Vec<Box<dyn Sink>>,
    ready: impl FnOnce(usize),
    shutdown: impl Future<Output = String>,
) -> Result<(), WatchError> {
    let bpf::Loaded {
        mut ebpf,
        attached,
        unattached,
    } = bpf::load_and_attach(&opts.load)?;
    let agent = AgentSelf::current(own_bpf_ids(&ebpf));
    let ring = bpf::ring::take_ring(&mut ebpf)?;
    let mut losses = LossReader::new(&mut ebpf)?;
    let mut idle = IdleFlag::new(&mut ebpf)?;
    // SAFETY: the AsyncFd owns the ring buffer, and with it the fd, for its whole life:
    // the fd cannot be closed while registered.
    let mut ring = unsafe { AsyncFd::register(ring) }.map_err(|e| WatchError::Poll(e.into()))?;

    let (tx, rx) = mpsc::channel::<Vec<Event>>(QUEUE_BATCHES);
    let sink_thread = std::thread::Builder::new()
        .name("auditor-sink".into())
        .spawn(move || sink_loop(rx, sinks))
        .map_err(|_| WatchError::SinkGone)?;

    let mut seq = Sequencer::new();
    let mut asm = Assembler::with_watch(opts.load.watch.clone());
    asm.set_rules(std::mem::take(&mut opts.rules));
    asm.set_agent(agent);
    let mut out: Vec<Stamped> = Vec::new();
    let start = Stamped {
        boot_ns: clock::boot_now_ns(),
        body: Body::AgentStart(AgentStart {
            version: env!("CARGO_PKG_VERSION"),
            boot_id: opts.boot_id.clone(),
            hostname: hostname(),
            kernel: kernel_release(),
            argv_max_bytes: opts.load.settings.argv_bytes,
            argv_max_args: opts.load.settings.argv_args,
            ring_bytes: opts.load.ring_bytes,
            nice: opts.nice,
            hooks: attached,
            hooks_missing: unattached
                .iter()
                .map(|(hook, why)| format!("{hook}: {why}"))
                .collect(),
        }),
    };
    tx.send(vec![seq.stamp(start)])
        .await
        .map_err(|_| WatchError::SinkGone)?;
    ready(attached);

    let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        .map_err(WatchError::Poll)?;
    let mut tick = tokio::time::interval(TICK);
    let mut next_poll = tokio::time::Instant::now() + RING_POLL;
    // READER_IDLE is set: the next record wakes the reader.
    let mut armed = false;
    let mut arm_failed = false;
    tokio::pin!(shutdown);
    let mut reason = String::new();
    let result = loop {
        tokio::select! {
            biased;
            r = &mut shutdown => {
                reason = r;
                break Ok(());
            }
            _ = tokio::time::sleep_until(next_poll) => {
                // Records are coming when any was read (it may have been the one that
                // disarmed READER_IDLE) or one is still being written (its commit may
                // not wake us).
                let mut coming = drain_all(ring.get_mut(), &mut asm, &mut out, &tx, &mut seq).await;
                if !coming && !armed && !arm_failed {
                    match idle.arm() {
                        Ok(()) => {
                            armed = true;
                            // A record written while the flag was being set did not see
                            // it: read once more.
                            coming = drain_all(ring.get_mut(), &mut asm, &mut out, &tx, &mut seq).await;
                        }
                        Err(e) => {
                            tracing::warn!("cannot arm the ring wakeup, polling every {RING_POLL:?}: {e}");
                            arm_failed = true;
                        }
                    }
                }
                if coming {
                    armed = false;
                }
                next_poll = tokio::time::Instant::now() + if armed { IDLE_POLL } else { RING_POLL };
            }
            _ = hup.recv() => {
                let body = reload(&mut opts.reload, &mut ebpf, &mut asm);
                out.push(Stamped { boot_ns: clock::boot_now_ns(), body });
            }
            guard = ring.readable_mut() => {
                let mut guard = match guard {
                    Ok(g) => g,
                    Err(e) => break Err(WatchError::Poll(e)),
                };
                let mut read = 0;
                if drain_ring(guard.get_inner_mut(), &mut asm, &mut out, &mut read) {
                    guard.clear_ready();
                }
                // Woken by the programs (which disarmed READER_IDLE if it was set):
                // records are coming, poll at the fast rate again.
                armed = false;
                next_poll = tokio::time::Instant::now() + RING_POLL;
            }
            _ = tick.tick() => {
                // The safety net for a record that missed the wakeup.
                let mut read = 0;
                drain_ring(ring.get_mut(), &mut asm, &mut out, &mut read);
                if read > 0 {
                    armed = false;
                    next_poll = tokio::time::Instant::now() + RING_POLL;
                }
                seq.resample();
                asm.expire(clock::boot_now_ns(), &mut out);
                if let Err(e) = push_losses(&mut losses, &opts.kernel_losses, &seq, &mut out) {
                    tracing::warn!("cannot read the kernel loss counters: {e}");
                }
            }
        }
        if send_all(&tx, &mut seq, &mut out).await.is_err() {
            break Err(WatchError::SinkGone);
        }
    };

    // Shutdown: deliver what the kernel already handed over, and every pending entry.
    let mut read = 0;
    while !drain_ring(ring.get_mut(), &mut asm, &mut out, &mut read) {
        let _ = send_all(&tx, &mut seq, &mut out).await;
    }
    asm.drain(&mut out);
    let _ = push_losses(&mut losses, &opts.kernel_losses, &seq, &mut out);
    let _ = send_all(&tx, &mut seq, &mut out).await;
    if let Err(e) = &result {
        reason = format!("error: {e}");
    }
    let last = Stamped {
        boot_ns: clock::boot_now_ns(),
        body: Body::AgentStopping(AgentStopping {
            reason,
            events: seq.next,
            kernel_losses: opts
                .kernel_losses
                .load(std::sync::atomic::Ordering::Relaxed),
        }),
    };
    let _ = tx.send(vec![seq.stamp(last)]).await;
    drop(tx);
    let sink_result = sink_thread.join().map_err(|_| WatchError::SinkGone)?;
    result?;
    sink_result
}

/// Ids of the agent's BPF programs and the maps they use: a `bpf()` call by another
/// process that opens one of these by id is tamper.
fn own_bpf_ids(ebpf: &aya::Ebpf) -> std::collections::HashSet<u32> {
    let mut ids = std::collections::HashSet::new();
    for (_, prog) in ebpf.programs() {
        if let Ok(info) = prog.info() {
            ids.insert(info.id());
            if let Ok(Some(maps)) = info.map_ids() {
                ids.extend(maps);
            }
        }
    }
    ids
}

/// SIGHUP: asks the caller for the new configuration and applies it to the kernel maps
/// and the assembler. On any error the old configuration stays and the event says why.
fn reload(reloader: &mut Option<Reloader>, ebpf: &mut aya::Ebpf, asm: &mut Assembler) -> Body {
    let refused = |error: String| {
        tracing::warn!("reload refused, old configuration kept: {error}");
        Body::AgentReload(AgentReload {
            watch_paths: Vec::new(),
            rule_files: Vec::new(),
            user_rules: 0,
            error: Some(error),
        })
    };
    let Some(f) = reloader.as_mut() else {
        return refused("this agent was started without a reloadable configuration".into());
    };
    let cfg = match f() {
        Ok(c) => c,
        Err(e) => return refused(e),
    };
    if let Err(e) = bpf::write_watch_list(ebpf, Some(&cfg.watch)) {
        return refused(format!("updating the kernel watch maps: {e}"));
    }
    let ev = AgentReload {
        watch_paths: cfg
            .watch
            .trees
            .iter()
            .map(|p| p.display().to_string())
            .collect(),
        rule_files: cfg
            .rules
            .sources
            .iter()
            .map(|p| p.display().to_string())
            .collect(),
        user_rules: cfg.rules.len(),
        error: None,
    };
    tracing::info!(paths = ?ev.watch_paths, rules = ev.user_rules, "reloaded");
    asm.reconfigure(Some(cfg.watch), cfg.rules);
    Body::AgentReload(ev)
}

/// Reads records until the ring is empty (returns true) or a batch is full (false);
/// counts them into `read`.
fn drain_ring(
    ring: &mut bpf::ringbuf::EventRing,
    asm: &mut Assembler,
    out: &mut Vec<Stamped>,
    read: &mut u64,
) -> bool {
    loop {
        {
            let Some(item) = ring.next() else {
                return true;
            };
            *read += 1;
            match decode::record(&item) {
                Ok(rec) => asm.push(rec, out),
                Err(e) => out.push(Stamped {
                    boot_ns: clock::boot_now_ns(),
                    body: Body::DecodeError(DecodeErrorEvent {
                        error: e.to_string(),
                        len: item.len(),
                        head: hex_head(&item),
                    }),
                }),
            }
        }
        if out.len() >= 256 {
            // Keep batches small so the sink sees events promptly; the caller sends them
            // and comes back (the fd stays readable). What was read is released first:
            // sending may wait for the sink.
            ring.publish();
            return false;
        }
    }
}

/// Drains the ring, handing full batches to the sinks as they fill (until the sinks are
/// gone). True when records are coming: some were read, or one is still being written.
async fn drain_all(
    ring: &mut bpf::ringbuf::EventRing,
    asm: &mut Assembler,
    out: &mut Vec<Stamped>,
    tx: &mpsc::Sender<Vec<Event>>,
    seq: &mut Sequencer,
) -> bool {
    let mut read = 0;
    while !drain_ring(ring, asm, out, &mut read) {
        if send_all(tx, seq, out).await.is_err() {
            break;
        }
    }
    read > 0 || ring.record_in_progress()
}

/// Turns what the kernel's loss counters newly show into `loss` events, and publishes
/// the total for the metrics and the vault heartbeat.
fn push_losses(
    losses: &mut LossReader,
    total: &std::sync::atomic::AtomicU64,
    seq: &Sequencer,
    out: &mut Vec<Stamped>,
) -> Result<(), bpf::ring::RingError> {
    let deltas = losses.poll()?;
    if !deltas.is_empty() {
        total.store(losses.total_records(), std::sync::atomic::Ordering::Relaxed);
    }
    out.extend(deltas.into_iter().map(|d| loss_event(seq, d)));
    Ok(())
}

async fn send_all(
    tx: &mpsc::Sender<Vec<Event>>,
    seq: &mut Sequencer,
    out: &mut Vec<Stamped>,
) -> Result<(), ()> {
    if out.is_empty() {
        return Ok(());
    }
    out.sort_by_key(|s| s.boot_ns);
    let batch: Vec<Event> = out.drain(..).map(|s| seq.stamp(s)).collect();
    tx.send(batch).await.map_err(|_| ())
}

fn loss_event(seq: &Sequencer, d: bpf::ring::LossDelta) -> Stamped {
    Stamped {
        boot_ns: d.last_boot_ns,
        body: Body::Loss(Loss {
            source: d.source,
            records: d.records,
            bytes: d.bytes,
            since: seq.time(d.first_boot_ns),
            until: seq.time(d.last_boot_ns),
            total_records: d.total_records,
            per_cpu: d
                .per_cpu
                .into_iter()
                .map(|(cpu, records)| CpuLoss { cpu, records })
                .collect(),
        }),
    }
}

fn sink_loop(
    mut rx: mpsc::Receiver<Vec<Event>>,
    mut sinks: Vec<Box<dyn Sink>>,
) -> Result<(), WatchError> {
    while let Some(batch) = rx.blocking_recv() {
        for ev in &batch {
            for s in sinks.iter_mut() {
                s.write(ev)?;
            }
        }
        if rx.is_empty() {
            for s in sinks.iter_mut() {
                s.flush()?;
            }
        }
    }
    for s in sinks.iter_mut() {
        s.flush()?;
    }
    for s in sinks {
        s.close();
    }
    Ok(())
}

pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

pub fn kernel_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

/// A fresh id for this agent boot (the kernel's random UUID generator).
pub fn new_boot_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/uuid")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| format!("{}-{}", std::process::id(), clock::boot_now_ns()))
}
