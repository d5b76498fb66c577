//! Recording: the hash-chained audit log of every API call and exec/attach/port-forward session
//! recordings, on a local store (sled) behind a trait.
//!
//! Owns: the store, record encoding, the chain and its checkpoints, sessions and frames,
//! retention. Must never: forward a mutating request whose audit record is not durable (callers
//! use [`Recorder::append_durable`] and refuse the request on error), block the data path without
//! bound (session frames go through a byte-bounded queue), or store a secret value (bodies come
//! in masked; tokens never come in).
//!
//! Threads: one flusher (group commit every `read_flush_interval_ms`, on demand for durable
//! appends, time-based checkpoints), one session writer (drains frame queues), and one retention
//! thread when retention is configured. They stop at [`Recorder::close`] (the server's shutdown),
//! or when the last [`Recorder`] clone and every [`SessionWriter`] are dropped.

pub mod chain;
pub mod cli;
pub mod entry;
pub mod frame_files;
pub mod frames;
pub mod keys;
pub mod query;
pub mod replay;
mod retention;
pub mod session;
pub mod store;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use ed25519_dalek::SigningKey;
use serde::Deserialize;

pub use chain::{verify, Break, BreakReason, Checkpoint, KeyTrust, VerifyReport};
pub use entry::{
    now_unix_nanos, AuditEntry, AuditIdentity, AuditRequest, ChainEntry, CompletionEntry, Decision,
    Envelope, ImpersonatedIdentity, NodeEventEntry, NodeEventKind, NodePod, NodeProtocol,
    RequestEntry, Tombstone, SCHEMA_VERSION,
};
pub use retention::RetentionReport;
pub use session::{
    FrameEvent, FrameKind, FrameRecord, OverflowPolicy, SessionKind, SessionMeta, SessionProtocol,
    SessionRecord, SessionWriter,
};
pub use store::{SledStore, Store, StoreError, Tree};

use crate::metrics::RecorderMetrics;
use entry::{encode, Hash, GENESIS_HASH};
use session::{SessionContext, SessionMsg};
use store::{key_seq, seq_key};

/// The `record:` section of the config. Absent `path`: recording is off.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RecordConfig {
    /// The store directory (sled). Created if missing.
    pub path: Option<PathBuf>,
    /// This gateway's name in every record; default: `$NODE_NAME`, else the host name.
    pub node_name: Option<String>,
    /// ed25519 key signing the checkpoints: PKCS#8 PEM or a raw 32-byte seed. Required with `path`.
    pub signing_key_file: Option<PathBuf>,
    /// Create `signing_key_file` (PEM, mode 0600) when it does not exist.
    pub generate_signing_key: bool,
    /// Group commit: non-durable appends and session frames are flushed this often. A power
    /// failure loses at most this window (plus one flush's duration) of read records and frames.
    pub read_flush_interval_ms: u64,
    /// How long `append_durable` waits for its flush before failing (the request then fails
    /// closed).
    pub durable_timeout_ms: u64,
    /// Sign a checkpoint after this many records...
    pub checkpoint_every_records: u64,
    /// ...or this many seconds after the last one, whichever first (if anything was appended).
    pub checkpoint_every_seconds: u64,
    /// The gateway keeps no request body longer than this (omitted, marked truncated); a kept,
    /// masked body that grew past it is cut (and marked truncated).
    pub max_body_bytes: usize,
    /// Per-session bound of frame bytes queued for the disk. The queue rides out the disk's
    /// latency spikes; backpressure starts at half of it (see `docs/recording.md`).
    pub session_queue_max_bytes: usize,
    /// When a session exceeds its bound: `terminate` (default) or `mark_gap`.
    pub on_session_overflow: OverflowPolicy,
    /// Store port-forward payloads (always counted per connection).
    pub port_forward_data: bool,
    /// sled's page cache.
    pub cache_bytes: u64,
    pub retention: RetentionConfig,
}

impl Default for RecordConfig {
    fn default() -> Self {
        Self {
            path: None,
            node_name: None,
            signing_key_file: None,
            generate_signing_key: false,
            read_flush_interval_ms: 50,
            durable_timeout_ms: 5000,
            checkpoint_every_records: 1000,
            checkpoint_every_seconds: 60,
            max_body_bytes: 64 * 1024,
            // 16 MiB: at 8 MiB a 600 MB/s stream reached the backpressure mark (half) on every
            // 100 MB, on write-latency spikes of a few ms, and lost ~3% of its throughput to the
            // pauses; at 16 MiB it seldom does (README, "Benchmark results").
            session_queue_max_bytes: 16 * 1024 * 1024,
            on_session_overflow: OverflowPolicy::Terminate,
            port_forward_data: false,
            cache_bytes: 64 * 1024 * 1024,
            retention: RetentionConfig::default(),
        }
    }
}

/// Retention: nothing is deleted unless a limit is set.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RetentionConfig {
    /// Delete audit records and sessions older than this.
    pub max_age_days: Option<u64>,
    /// Keep the audit records' stored size under this (oldest deleted first).
    pub max_audit_bytes: Option<u64>,
    /// Keep recorded session bytes under this (oldest sessions deleted first).
    pub max_session_bytes: Option<u64>,
    /// How often retention runs.
    pub interval_seconds: u64,
}

impl Default for RetentionConfig {
    fn default() -> Self {
        Self {
            max_age_days: None,
            max_audit_bytes: None,
            max_session_bytes: None,
            interval_seconds: 3600,
        }
    }
}

impl RetentionConfig {
    fn enabled(&self) -> bool {
        self.max_age_days.is_some()
            || self.max_audit_bytes.is_some()
            || self.max_session_bytes.is_some()
    }
}

impl RecordConfig {
    pub fn enabled(&self) -> bool {
        self.path.is_some()
    }

    /// Checks the section; `Config::validate` may call it. Messages name the key.
    pub fn validate(&self) -> Result<(), String> {
        if self.path.is_some() && self.signing_key_file.is_none() {
            return Err("record.signing_key_file is required when record.path is set (checkpoints are signed)".into());
        }
        if self.read_flush_interval_ms == 0 || self.read_flush_interval_ms > 10_000 {
            return Err("record.read_flush_interval_ms must be between 1 and 10000".into());
        }
        if self.durable_timeout_ms == 0 {
            return Err("record.durable_timeout_ms must be at least 1".into());
        }
        if self.checkpoint_every_records == 0 || self.checkpoint_every_seconds == 0 {
            return Err(
                "record.checkpoint_every_records and checkpoint_every_seconds must be at least 1"
                    .into(),
            );
        }
        if self.session_queue_max_bytes < 64 * 1024 {
            return Err("record.session_queue_max_bytes must be at least 65536".into());
        }
        if self.retention.interval_seconds == 0 {
            return Err("record.retention.interval_seconds must be at least 1".into());
        }
        Ok(())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    #[error("recording is not configured (record.path is not set)")]
    NotConfigured,
    #[error("invalid record config: {0}")]
    Config(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Key(#[from] keys::KeyError),
    #[error("cannot encode a record: {0}")]
    Encode(String),
    #[error("the store is damaged: {0}")]
    Corrupt(String),
    #[error("the audit record could not be made durable: {0}")]
    FlushFailed(String),
    #[error("the audit record was not durable within {0:?}")]
    FlushTimeout(Duration),
    #[error("the recorder has stopped")]
    RecorderStopped,
    #[error("session recording fell behind the stream (queue limit {limit} bytes); the session must end")]
    SessionOverflow { limit: usize },
    #[error("session recording failed to write to the store; the session must end")]
    SessionWriteFailed,
    #[error("the session is closed")]
    SessionClosed,
    #[error("no session {0}")]
    NoSuchSession(String),
}

#[derive(Debug, Clone, Copy)]
struct FlushOutcome {
    /// Every seq below this was in the store before the flush started.
    through: u64,
    ok: bool,
}

struct ChainTip {
    next_seq: u64,
    last_hash: Hash,
    checkpointed: Option<u64>,
    checkpointed_at: Instant,
}

struct Shared {
    store: Arc<dyn Store>,
    node: String,
    signer: SigningKey,
    chain: Mutex<ChainTip>,
    checkpoint_every: u64,
    checkpoint_interval: Duration,
    inserted_through: AtomicU64,
    dirty: Arc<AtomicBool>,
    flush_requested: Mutex<bool>,
    flush_wakeup: Condvar,
    flushed: tokio::sync::watch::Sender<FlushOutcome>,
    flush_interval: Duration,
    durable_timeout: Duration,
    max_body_bytes: usize,
    next_session_seq: AtomicU64,
    retention: RetentionConfig,
    stop: AtomicBool,
    metrics: RecorderMetrics,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every critical section leaves its data consistent before anything can fail, so a panic
    // elsewhere does not make it unusable.
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Shared {
    /// Seals and inserts one chain entry; returns its seq.
    fn insert(&self, entry: ChainEntry) -> Result<u64, RecordError> {
        let bytes = encode(&entry).map_err(|e| RecordError::Encode(e.to_string()))?;
        let mut tip = lock(&self.chain);
        // Checked under the chain's lock: the last checkpoint (taken under it after `stop` is
        // set) then covers every record the store will ever hold.
        if self.stop.load(Ordering::Acquire) {
            return Err(RecordError::RecorderStopped);
        }
        let seq = tip.next_seq;
        let envelope = Envelope::seal(seq, tip.last_hash, bytes);
        let value = encode(&envelope).map_err(|e| RecordError::Encode(e.to_string()))?;
        self.store
            .insert(Tree::Audit, &seq_key(seq), &value)
            .inspect_err(|_| self.metrics.append_errors.inc())?;
        tip.next_seq = seq + 1;
        tip.last_hash = envelope.hash;
        self.inserted_through.store(seq + 1, Ordering::Release);
        let since = tip.checkpointed.map_or(seq + 1, |c| seq - c);
        if since >= self.checkpoint_every {
            self.checkpoint_locked(&mut tip);
        }
        Ok(seq)
    }

    /// Signs and stores a checkpoint of the current tip, if it moved since the last one.
    fn checkpoint_locked(&self, tip: &mut ChainTip) {
        let Some(seq) = tip.next_seq.checked_sub(1) else {
            return;
        };
        if tip.checkpointed == Some(seq) {
            return;
        }
        let cp = Checkpoint::sign(
            &self.signer,
            seq,
            tip.last_hash,
            now_unix_nanos(),
            &self.node,
        );
        let result = encode(&cp)
            .map_err(|e| RecordError::Encode(e.to_string()))
            .and_then(|v| Ok(self.store.insert(Tree::Checkpoints, &seq_key(seq), &v)?));
        match result {
            Ok(()) => {
                tip.checkpointed = Some(seq);
                tip.checkpointed_at = Instant::now();
                self.dirty.store(true, Ordering::Release);
                self.metrics.checkpoints.inc();
                // The log line is the off-box copy that makes tail truncation detectable.
                tracing::info!(
                    target: "portcullis::audit::checkpoint",
                    seq,
                    hash = %hex::encode(cp.hash),
                    signature = %hex::encode(&cp.signature),
                    "audit checkpoint"
                );
            }
            Err(e) => {
                self.metrics.append_errors.inc();
                tracing::error!(seq, error = %e, "cannot write an audit checkpoint");
            }
        }
    }

    fn checkpoint_now(&self) {
        let mut tip = lock(&self.chain);
        self.checkpoint_locked(&mut tip);
    }

    fn checkpoint_if_due(&self) {
        let mut tip = lock(&self.chain);
        if tip.checkpointed_at.elapsed() >= self.checkpoint_interval {
            self.checkpoint_locked(&mut tip);
        }
    }

    fn request_flush(&self) {
        *lock(&self.flush_requested) = true;
        self.flush_wakeup.notify_one();
    }

    /// Flushes now on the calling thread (retention, shutdown).
    fn flush_sync(&self) -> Result<(), RecordError> {
        let through = self.inserted_through.load(Ordering::Acquire);
        let started = Instant::now();
        let result = self.store.flush();
        self.metrics
            .flush_seconds
            .observe(started.elapsed().as_secs_f64());
        self.flushed.send_replace(FlushOutcome {
            through,
            ok: result.is_ok(),
        });
        result.map_err(|e| RecordError::FlushFailed(e.to_string()))
    }

    fn run_flusher(&self) {
        loop {
            let requested = {
                let mut requested = lock(&self.flush_requested);
                if !*requested && !self.stop.load(Ordering::Acquire) {
                    requested = self
                        .flush_wakeup
                        .wait_timeout(requested, self.flush_interval)
                        .map(|(guard, _)| guard)
                        .unwrap_or_else(|poisoned| poisoned.into_inner().0);
                }
                std::mem::take(&mut *requested)
            };
            let stopping = self.stop.load(Ordering::Acquire);
            if stopping {
                self.checkpoint_now();
            } else {
                self.checkpoint_if_due();
            }
            let dirty = self.dirty.swap(false, Ordering::AcqRel);
            if requested || dirty || stopping {
                if let Err(e) = self.flush_sync() {
                    self.dirty.store(true, Ordering::Release);
                    tracing::error!(error = %e, "audit store flush failed");
                }
            }
            if stopping {
                return;
            }
        }
    }
}

/// The recorder. Cheap to clone.
#[derive(Clone)]
pub struct Recorder {
    inner: Arc<Inner>,
}

struct Inner {
    shared: Arc<Shared>,
    sessions: Arc<SessionContext>,
    flusher: Mutex<Option<std::thread::JoinHandle<()>>>,
    session_thread: Mutex<Option<std::thread::JoinHandle<()>>>,
    /// Dropping the sender wakes the retention thread, which then ends; joined on drop so the
    /// store is closed when the recorder is gone (a pass holds the store open while it runs).
    retention: Mutex<Option<(std::sync::mpsc::Sender<()>, std::thread::JoinHandle<()>)>>,
}

impl Inner {
    /// Stops the background threads in the order that leaves the most on disk, signed: the
    /// retention thread; then the session writer, once every session has ended (waiting at most
    /// `sessions_grace`), so the tails of the last sessions are written; then the flusher, whose
    /// last round signs a checkpoint of the tip and flushes everything, frame files included.
    /// Records appended after that are refused. Idempotent.
    fn stop(&self, sessions_grace: Duration) {
        if let Some((wake, handle)) = lock(&self.retention).take() {
            drop(wake);
            let _ = handle.join();
        }
        // Each open session holds its own sender: the session thread ends once the last one is
        // gone and it has written what they queued.
        lock(&self.sessions.tx).take();
        let mut session_thread = lock(&self.session_thread);
        if let Some(handle) = session_thread.take() {
            let deadline = Instant::now() + sessions_grace;
            while Arc::strong_count(&self.sessions) > 1 && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
            if Arc::strong_count(&self.sessions) == 1 {
                let _ = handle.join();
            } else {
                tracing::warn!(
                    open = Arc::strong_count(&self.sessions) - 1,
                    "sessions still open as the recorder stops: what they record from now on is not flushed"
                );
                *session_thread = Some(handle);
            }
        }
        drop(session_thread);
        self.shared.stop.store(true, Ordering::Release);
        self.shared.request_flush();
        if let Some(handle) = lock(&self.flusher).take() {
            let _ = handle.join();
        }
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        // No `Recorder` is left, so no session can open; the ones still open are not waited for.
        self.stop(Duration::ZERO);
    }
}

fn default_node_name() -> String {
    if let Ok(name) = std::env::var("NODE_NAME") {
        if !name.is_empty() {
            return name;
        }
    }
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_owned())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "unknown".into())
}

impl Recorder {
    /// Opens (or creates) the store, recovers the chain tip and the next sequence numbers, and
    /// starts the background threads.
    pub fn open(cfg: &RecordConfig, metrics: RecorderMetrics) -> Result<Recorder, RecordError> {
        cfg.validate().map_err(RecordError::Config)?;
        let path = cfg.path.as_ref().ok_or(RecordError::NotConfigured)?;
        let key_path = cfg
            .signing_key_file
            .as_ref()
            .ok_or_else(|| RecordError::Config("record.signing_key_file is not set".into()))?;
        let signer = keys::load_or_generate_signing_key(key_path, cfg.generate_signing_key)?;
        let store: Arc<dyn Store> = Arc::new(SledStore::open(path, cfg.cache_bytes)?);
        Self::with_store(store, signer, cfg, metrics)
    }

    /// Like [`Recorder::open`] over any store (tests, other backends).
    pub fn with_store(
        store: Arc<dyn Store>,
        signer: SigningKey,
        cfg: &RecordConfig,
        metrics: RecorderMetrics,
    ) -> Result<Recorder, RecordError> {
        let (next_seq, last_hash) = match store.last(Tree::Audit)? {
            None => (0, GENESIS_HASH),
            Some((k, v)) => {
                let seq = key_seq(&k)
                    .ok_or_else(|| RecordError::Corrupt("an audit key is not a seq".into()))?;
                let env: Envelope = entry::decode(&v).map_err(|e| {
                    RecordError::Corrupt(format!(
                        "the last audit record ({seq}) does not decode ({e}); run `portcullis audit verify`"
                    ))
                })?;
                if env.schema != SCHEMA_VERSION {
                    return Err(RecordError::Config(format!(
                        "the store was written with record schema {}, this build writes schema \
                         {SCHEMA_VERSION}: move the store aside (the portcullis that wrote it can \
                         still verify and query it) and start a new one",
                        env.schema
                    )));
                }
                if env.seq != seq || !env.hash_matches() {
                    return Err(RecordError::Corrupt(format!(
                        "the last audit record ({seq}) does not match its hash; run `portcullis audit verify`"
                    )));
                }
                (seq + 1, env.hash)
            }
        };
        let checkpointed = match store.last(Tree::Checkpoints)? {
            None => None,
            Some((k, _)) => key_seq(&k),
        };
        if let Some(cp) = checkpointed {
            if cp >= next_seq {
                return Err(RecordError::Corrupt(format!(
                    "a signed checkpoint covers record {cp} but the log ends at {}: records were lost or removed; run `portcullis audit verify`",
                    next_seq as i128 - 1
                )));
            }
        }
        let next_session_seq = match store.last(Tree::Sessions)? {
            None => 0,
            Some((k, _)) => key_seq(&k).map_or(0, |s| s + 1),
        };
        let node = cfg.node_name.clone().unwrap_or_else(default_node_name);
        let (flushed, _) = tokio::sync::watch::channel(FlushOutcome {
            through: next_seq,
            ok: true,
        });
        let dirty = Arc::new(AtomicBool::new(false));
        let shared = Arc::new(Shared {
            store: store.clone(),
            node,
            signer,
            chain: Mutex::new(ChainTip {
                next_seq,
                last_hash,
                checkpointed,
                checkpointed_at: Instant::now(),
            }),
            checkpoint_every: cfg.checkpoint_every_records.max(1),
            checkpoint_interval: Duration::from_secs(cfg.checkpoint_every_seconds.max(1)),
            inserted_through: AtomicU64::new(next_seq),
            dirty: dirty.clone(),
            flush_requested: Mutex::new(false),
            flush_wakeup: Condvar::new(),
            flushed,
            flush_interval: Duration::from_millis(cfg.read_flush_interval_ms.max(1)),
            durable_timeout: Duration::from_millis(cfg.durable_timeout_ms.max(1)),
            max_body_bytes: cfg.max_body_bytes,
            next_session_seq: AtomicU64::new(next_session_seq),
            retention: cfg.retention.clone(),
            stop: AtomicBool::new(false),
            metrics: metrics.clone(),
        });
        tracing::info!(next_seq, next_session_seq, node = %shared.node, "audit store opened");

        let (tx, rx) = std::sync::mpsc::channel::<SessionMsg>();
        let queued_bytes = Arc::new(AtomicUsize::new(0));
        let blocks = Arc::new(frame_files::BlockPool::for_queue(
            cfg.session_queue_max_bytes,
        ));
        let live = Arc::new(session::LiveSessions::default());
        let sessions = Arc::new(SessionContext {
            tx: Mutex::new(Some(tx)),
            queued_bytes: queued_bytes.clone(),
            max_bytes: cfg.session_queue_max_bytes,
            policy: cfg.on_session_overflow,
            port_forward_data: cfg.port_forward_data,
            metrics: metrics.clone(),
            blocks: blocks.clone(),
            live: live.clone(),
        });
        let spawn_err =
            |e: std::io::Error| RecordError::Config(format!("cannot start a thread: {e}"));
        let session_thread = {
            let writer = session::WriterContext {
                store: store.clone(),
                queued_bytes,
                dirty,
                metrics: metrics.clone(),
                blocks,
                live,
                partial_interval: shared.flush_interval,
            };
            std::thread::Builder::new()
                .name("record-sessions".into())
                .spawn(move || session::run_writer(rx, writer))
                .map_err(spawn_err)?
        };
        let flusher = {
            let shared = shared.clone();
            std::thread::Builder::new()
                .name("record-flush".into())
                .spawn(move || shared.run_flusher())
                .map_err(spawn_err)?
        };
        let retention = if shared.retention.enabled() {
            let weak = Arc::downgrade(&shared);
            let (wake, stop) = std::sync::mpsc::channel();
            let handle = std::thread::Builder::new()
                .name("record-retention".into())
                .spawn(move || retention::run_thread(weak, stop))
                .map_err(spawn_err)?;
            Some((wake, handle))
        } else {
            None
        };
        Ok(Recorder {
            inner: Arc::new(Inner {
                shared,
                sessions,
                flusher: Mutex::new(Some(flusher)),
                session_thread: Mutex::new(Some(session_thread)),
                retention: Mutex::new(retention),
            }),
        })
    }

    fn prepare(&self, mut entry: AuditEntry) -> ChainEntry {
        let shared = &self.inner.shared;
        match &mut entry {
            AuditEntry::Request(r) => {
                if r.node.is_empty() {
                    r.node.clone_from(&shared.node);
                }
            }
            AuditEntry::Completion(c) => {
                if c.node.is_empty() {
                    c.node.clone_from(&shared.node);
                }
                if let Some(body) = &mut c.body {
                    if body.len() > shared.max_body_bytes {
                        body.truncate(shared.max_body_bytes);
                        c.body_truncated = true;
                    }
                }
            }
            AuditEntry::Node(n) => {
                if n.node.is_empty() {
                    n.node.clone_from(&shared.node);
                }
            }
        }
        ChainEntry::Audit(entry)
    }

    /// Appends and waits until the record is on disk (fsync). For mutating requests: forward
    /// only after this returned `Ok`; on `Err` answer 503.
    pub async fn append_durable(&self, entry: AuditEntry) -> Result<u64, RecordError> {
        let shared = &self.inner.shared;
        let mut flushed = shared.flushed.subscribe();
        let seq = shared.insert(self.prepare(entry))?;
        let started = Instant::now();
        shared.request_flush();
        let outcome = tokio::time::timeout(
            shared.durable_timeout,
            flushed.wait_for(|o| o.through > seq),
        )
        .await
        .map_err(|_| RecordError::FlushTimeout(shared.durable_timeout))?
        .map(|o| *o)
        .map_err(|_| RecordError::RecorderStopped)?;
        shared
            .metrics
            .durable_wait_seconds
            .observe(started.elapsed().as_secs_f64());
        if !outcome.ok {
            shared.metrics.append_errors.inc();
            return Err(RecordError::FlushFailed("store flush failed".into()));
        }
        shared.metrics.appends.with_label_values(&["durable"]).inc();
        Ok(seq)
    }

    /// Appends; the record becomes durable with the next group commit (within
    /// `read_flush_interval_ms`). For reads and completions.
    pub fn append(&self, entry: AuditEntry) -> Result<u64, RecordError> {
        let shared = &self.inner.shared;
        let seq = shared.insert(self.prepare(entry))?;
        shared.dirty.store(true, Ordering::Release);
        shared.metrics.appends.with_label_values(&["group"]).inc();
        Ok(seq)
    }

    /// Starts a session recording. The session record is written at once (and completed by
    /// [`SessionWriter::close`]).
    pub fn open_session(&self, mut meta: SessionMeta) -> Result<SessionWriter, RecordError> {
        let shared = &self.inner.shared;
        if shared.stop.load(Ordering::Acquire) {
            return Err(RecordError::RecorderStopped);
        }
        if meta.start_ns == 0 {
            meta.start_ns = now_unix_nanos();
        }
        let seq = shared.next_session_seq.fetch_add(1, Ordering::AcqRel);
        let record = SessionRecord {
            schema: SCHEMA_VERSION,
            seq,
            meta: meta.clone(),
            end_ns: None,
            exit_code: None,
            error: None,
            frames: 0,
            stdin_bytes: 0,
            stdout_bytes: 0,
            stderr_bytes: 0,
            port_forward: Vec::new(),
            dropped_bytes: 0,
            overflowed: false,
        };
        let value = encode(&record).map_err(|e| RecordError::Encode(e.to_string()))?;
        shared
            .store
            .insert(Tree::SessionIds, meta.session_id.as_bytes(), &seq_key(seq))?;
        shared.store.insert(Tree::Sessions, &seq_key(seq), &value)?;
        shared.dirty.store(true, Ordering::Release);
        SessionWriter::new(seq, meta, self.inner.sessions.clone())
    }

    /// Signs a checkpoint of the current tip now (also done every N records / T seconds).
    pub fn checkpoint(&self) {
        self.inner.shared.checkpoint_now();
    }

    /// Stops recording for good (the process is shutting down): waits up to `sessions_grace` for
    /// open sessions to end, writes their tails, signs a checkpoint of the tip and flushes. From
    /// then on appends and new sessions are refused with [`RecordError::RecorderStopped`].
    /// `Err` when the last flush failed (the store may lack its newest records).
    pub fn close(&self, sessions_grace: Duration) -> Result<(), RecordError> {
        self.inner.stop(sessions_grace);
        let last = *self.inner.shared.flushed.borrow();
        let appended = self.inner.shared.inserted_through.load(Ordering::Acquire);
        if last.ok && last.through >= appended {
            Ok(())
        } else {
            Err(RecordError::FlushFailed(
                "the last flush at shutdown did not complete".into(),
            ))
        }
    }

    /// Flushes everything written so far, on the calling thread.
    pub fn flush(&self) -> Result<(), RecordError> {
        self.inner.shared.flush_sync()
    }

    /// One retention pass now (it also runs every `retention.interval_seconds`).
    pub fn run_retention(&self, now_ns: u64) -> Result<RetentionReport, RecordError> {
        retention::run(&self.inner.shared, now_ns)
    }

    /// The next audit seq (= number of records ever appended on this node).
    pub fn next_seq(&self) -> u64 {
        lock(&self.inner.shared.chain).next_seq
    }

    /// `record.max_body_bytes`: how much of a request body the gateway collects.
    pub fn max_body_bytes(&self) -> usize {
        self.inner.shared.max_body_bytes
    }

    pub fn store(&self) -> Arc<dyn Store> {
        self.inner.shared.store.clone()
    }

    pub fn verifying_key(&self) -> ed25519_dalek::VerifyingKey {
        self.inner.shared.signer.verifying_key()
    }
}

#[cfg(test)]
mod tests;
