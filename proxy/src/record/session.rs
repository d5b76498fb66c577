//! exec/attach/port-forward session recordings: the session record, its timestamped frames, and
//! the writer the data path feeds.
//!
//! Owns: session and frame encoding, the per-session byte budget and what happens when it is
//! exceeded, the writer thread. Must never: make the caller wait for the disk (the data path
//! lays frames out in blocks; full blocks go to a queue the writer thread drains), or drop a
//! frame without leaving a marker in the recording and a metric.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::entry::{encode, now_unix_nanos, AuditIdentity, SCHEMA_VERSION};
use super::frame_files::{BlockBuilder, BlockPool, FrameBlock};
use super::store::{seq_key, Store, Tree};
use super::RecordError;
use crate::metrics::RecorderMetrics;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum SessionProtocol {
    WebSocketV4,
    WebSocketV5,
    /// `base64.channel.k8s.io` / `v4.base64.channel.k8s.io`.
    WebSocketBase64,
    Spdy,
}

impl SessionProtocol {
    pub fn as_str(self) -> &'static str {
        match self {
            SessionProtocol::WebSocketV4 => "websocket/v4",
            SessionProtocol::WebSocketV5 => "websocket/v5",
            SessionProtocol::WebSocketBase64 => "websocket/base64",
            SessionProtocol::Spdy => "spdy/3.1",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum SessionKind {
    Exec,
    Attach,
    PortForward,
}

impl SessionKind {
    pub fn as_str(self) -> &'static str {
        match self {
            SessionKind::Exec => "exec",
            SessionKind::Attach => "attach",
            SessionKind::PortForward => "portforward",
        }
    }
}

/// What is known when a session starts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionMeta {
    /// Unique per session; the same id as the request's audit entry.
    pub session_id: String,
    pub kind: SessionKind,
    pub pod: String,
    pub namespace: String,
    pub container: String,
    pub command: Vec<String>,
    pub tty: bool,
    pub stdin: bool,
    /// Port-forward: the requested ports.
    pub ports: Vec<u16>,
    pub identity: Option<AuditIdentity>,
    pub protocol: SessionProtocol,
    /// Nanoseconds since the epoch; 0 means "now" (set by `open_session`).
    pub start_ns: u64,
    /// The audit seq of the request that opened the session, if known.
    pub request_seq: Option<u64>,
    /// `false` when policy said `record: metadata`: the session's start, end and who ran what
    /// are kept, its frames (and so its exit code and byte counts) are not.
    pub frames_recorded: bool,
}

/// Per port-forward connection (SPDY stream pair / WebSocket data channel) totals.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortForwardStats {
    pub port: u16,
    pub stream: u32,
    pub bytes_to_pod: u64,
    pub bytes_from_pod: u64,
    pub first_us: u64,
    pub last_us: u64,
}

/// The stored session: written at open, rewritten at close.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionRecord {
    pub schema: u16,
    pub seq: u64,
    pub meta: SessionMeta,
    pub end_ns: Option<u64>,
    pub exit_code: Option<i32>,
    pub error: Option<String>,
    pub frames: u64,
    pub stdin_bytes: u64,
    pub stdout_bytes: u64,
    pub stderr_bytes: u64,
    pub port_forward: Vec<PortForwardStats>,
    /// Bytes the recorder could not keep (`mark_gap` policy); each gap is also a frame.
    pub dropped_bytes: u64,
    /// The byte budget was exceeded under the `terminate` policy.
    pub overflowed: bool,
}

/// The kind of data a frame carries, as the caller hands it over.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum FrameKind {
    Stdin,
    Stdout,
    Stderr,
    /// Channel 4: the JSON `{"Width":W,"Height":H}` the client sent.
    Resize,
    /// Channel 3 / the error stream: the `Status` JSON (carries the exit code).
    Status,
    /// Port-forward payload; stored only with `record.port_forward_data`, always counted.
    PortForwardData {
        port: u16,
        stream: u32,
        to_pod: bool,
    },
    PortForwardOpen {
        port: u16,
        stream: u32,
    },
    PortForwardClose {
        port: u16,
        stream: u32,
    },
    PortForwardError {
        port: u16,
        stream: u32,
    },
}

/// What a stored frame holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum FrameEvent {
    Data {
        kind: FrameKind,
        // As bytes, not a sequence of u8 (same postcard encoding, but serde's default visits
        // every byte: that was a sixth of the gateway's CPU while recording a fast stream).
        #[serde(with = "serde_bytes")]
        data: Vec<u8>,
    },
    /// `mark_gap`: this much was dropped here because the disk fell behind.
    Gap {
        dropped_bytes: u64,
        dropped_frames: u64,
    },
    /// `terminate`: the budget was exceeded here and the session was ended.
    Overflow { queued_bytes: u64, limit: u64 },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FrameRecord {
    pub schema: u16,
    /// Microseconds since the session opened (monotonic clock), taken when the frame arrived.
    pub t_us: u64,
    pub event: FrameEvent,
}

/// The encoding of a `FrameRecord` holding `FrameEvent::Data` up to its data: followed by the
/// `len` data bytes it is exactly a `FrameRecord`'s encoding (a unit test holds them together;
/// postcard writes bytes as a varint length and the bytes, and `Data` is variant 0). The data
/// path lays this prefix and then the stream's own bytes into the session's block, so no
/// record is built around them.
#[derive(Serialize)]
struct DataFramePrefix {
    schema: u16,
    t_us: u64,
    event: DataEventPrefix,
}

#[derive(Serialize)]
enum DataEventPrefix {
    Data { kind: FrameKind, len: usize },
}

pub(crate) fn encode_data_prefix(
    t_us: u64,
    kind: FrameKind,
    len: usize,
) -> Result<Vec<u8>, postcard::Error> {
    encode(&DataFramePrefix {
        schema: SCHEMA_VERSION,
        t_us,
        event: DataEventPrefix::Data { kind, len },
    })
}

/// What to do when a session's queued bytes exceed `record.session_queue_max_bytes`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OverflowPolicy {
    /// Refuse the frame (the gateway closes the session) and record an overflow marker.
    #[default]
    Terminate,
    /// Drop the frame, record a gap marker with the dropped byte count, carry on.
    MarkGap,
}

pub(crate) enum SessionMsg {
    /// A full block of a session's frame file, to be written at its offset.
    Block {
        session_seq: u64,
        block: FrameBlock,
        accounted: usize,
        budget: Arc<AtomicUsize>,
        failed: Arc<AtomicBool>,
        written: Arc<AtomicU64>,
    },
    Close {
        record: Box<SessionRecord>,
        /// The last, partly filled block; `None` when the session stored no frame.
        tail: Option<FrameBlock>,
    },
    /// A session opened: a writer waiting for blocks must start writing partial blocks on its
    /// interval (a quiet session may never fill a block).
    Opened,
}

/// The open sessions, so the writer thread can write the part of each one's block filled so
/// far before a group commit.
#[derive(Default)]
pub(crate) struct LiveSessions {
    sessions: Mutex<HashMap<u64, Weak<SessionState>>>,
}

impl LiveSessions {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Weak<SessionState>>> {
        self.sessions
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn is_empty(&self) -> bool {
        self.lock().is_empty()
    }

    /// The sessions still open (a session dropped without `close` is forgotten here).
    fn open(&self) -> Vec<(u64, Arc<SessionState>)> {
        let mut open = Vec::new();
        self.lock().retain(|seq, session| match session.upgrade() {
            Some(session) => {
                open.push((*seq, session));
                true
            }
            None => false,
        });
        open
    }
}

/// Settings and shared counters a writer needs; one per recorder.
pub(crate) struct SessionContext {
    /// `None` once the recorder stops ([`super::Recorder::close`] or the last clone dropped).
    /// Each open session holds a sender of its own (and one `Arc` of this context, which is how
    /// the recorder counts them at shutdown).
    pub tx: Mutex<Option<Sender<SessionMsg>>>,
    pub queued_bytes: Arc<AtomicUsize>,
    pub max_bytes: usize,
    pub policy: OverflowPolicy,
    pub port_forward_data: bool,
    pub metrics: RecorderMetrics,
    pub blocks: Arc<BlockPool>,
    pub live: Arc<LiveSessions>,
}

/// A session's frames on their way to blocks.
#[derive(Default)]
struct SessionBlocks {
    /// Created with the first frame (the file's first block holds the magic).
    builder: Option<BlockBuilder>,
    /// Full blocks handed to the writer.
    sent: u64,
    /// The end of the partly filled block when the writer last wrote it.
    partial_written_to: u64,
}

struct SessionState {
    seq: u64,
    meta: SessionMeta,
    opened: Instant,
    next_index: AtomicU64,
    budget: Arc<AtomicUsize>,
    failed: Arc<AtomicBool>,
    terminated: AtomicBool,
    closed: AtomicBool,
    gap_bytes: AtomicU64,
    gap_frames: AtomicU64,
    dropped_total: AtomicU64,
    stdin: AtomicU64,
    stdout: AtomicU64,
    stderr: AtomicU64,
    port_forward: Mutex<BTreeMap<(u16, u32), PortForwardStats>>,
    blocks: Mutex<SessionBlocks>,
    /// Full blocks the writer has written.
    written: Arc<AtomicU64>,
    tx: Sender<SessionMsg>,
    ctx: Arc<SessionContext>,
}

impl SessionState {
    fn lock_blocks(&self) -> std::sync::MutexGuard<'_, SessionBlocks> {
        self.blocks
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// Feeds one session's frames to the recorder. Cheap to clone (both directions of a stream can
/// hold one); `close` on any clone ends the session for all.
#[derive(Clone)]
pub struct SessionWriter {
    state: Arc<SessionState>,
}

impl std::fmt::Debug for SessionWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionWriter")
            .field("seq", &self.state.seq)
            .field("session_id", &self.state.meta.session_id)
            .finish()
    }
}

impl SessionWriter {
    pub(crate) fn new(
        seq: u64,
        meta: SessionMeta,
        ctx: Arc<SessionContext>,
    ) -> Result<Self, RecordError> {
        let tx = ctx
            .tx
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
            .ok_or(RecordError::RecorderStopped)?;
        let state = Arc::new(SessionState {
            seq,
            meta,
            opened: Instant::now(),
            next_index: AtomicU64::new(0),
            budget: Arc::new(AtomicUsize::new(0)),
            failed: Arc::new(AtomicBool::new(false)),
            terminated: AtomicBool::new(false),
            closed: AtomicBool::new(false),
            gap_bytes: AtomicU64::new(0),
            gap_frames: AtomicU64::new(0),
            dropped_total: AtomicU64::new(0),
            stdin: AtomicU64::new(0),
            stdout: AtomicU64::new(0),
            stderr: AtomicU64::new(0),
            port_forward: Mutex::new(BTreeMap::new()),
            blocks: Mutex::new(SessionBlocks::default()),
            written: Arc::new(AtomicU64::new(0)),
            tx,
            ctx: ctx.clone(),
        });
        ctx.live.lock().insert(seq, Arc::downgrade(&state));
        state
            .tx
            .send(SessionMsg::Opened)
            .map_err(|_| RecordError::RecorderStopped)?;
        Ok(Self { state })
    }

    /// How full this session's queue to the disk is, from 0.0 (empty) to 1.0 (the limit, where
    /// the overflow policy applies). The gateway slows the stream down before it gets there.
    pub fn backlog(&self) -> f64 {
        let queued = self.state.budget.load(Ordering::Acquire) as f64;
        let limit = self.state.ctx.max_bytes.max(1) as f64;
        (queued / limit).min(1.0)
    }

    /// Counts a pause the data path takes because of [`SessionWriter::backlog`].
    pub fn count_backpressure(&self, delay: std::time::Duration) {
        self.state
            .ctx
            .metrics
            .backpressure_seconds
            .inc_by(delay.as_secs_f64());
    }

    /// The session's sequence number (`sessions list`, `replay`).
    pub fn seq(&self) -> u64 {
        self.state.seq
    }

    pub fn session_id(&self) -> &str {
        &self.state.meta.session_id
    }

    fn elapsed_us(&self) -> u64 {
        u64::try_from(self.state.opened.elapsed().as_micros()).unwrap_or(u64::MAX)
    }

    /// Records a frame, timestamped now. Never blocks on the disk. An error means the session
    /// can no longer be recorded (budget exceeded under `terminate`, a store failure, already
    /// closed): the caller must end the session.
    pub fn frame(&self, kind: FrameKind, data: &[u8]) -> Result<(), RecordError> {
        self.frame_parts(kind, &[data])
    }

    /// Like [`SessionWriter::frame`] with the data given in pieces to concatenate (a run of one
    /// channel's data spread over several WebSocket frames of a chunk). The record is laid out
    /// in the session's block here, checksum and copy while the data is in cache; the writer
    /// thread only writes full blocks.
    pub fn frame_parts(&self, kind: FrameKind, parts: &[&[u8]]) -> Result<(), RecordError> {
        let s = &self.state;
        if s.closed.load(Ordering::Acquire) {
            return Err(RecordError::SessionClosed);
        }
        if s.terminated.load(Ordering::Acquire) {
            return Err(RecordError::SessionOverflow {
                limit: s.ctx.max_bytes,
            });
        }
        if s.failed.load(Ordering::Acquire) {
            return Err(RecordError::SessionWriteFailed);
        }
        let t_us = self.elapsed_us();
        let len: usize = parts.iter().map(|p| p.len()).sum();
        self.count(kind, len, t_us);
        if matches!(kind, FrameKind::PortForwardData { .. }) && !s.ctx.port_forward_data {
            return Ok(());
        }

        let head =
            encode_data_prefix(t_us, kind, len).map_err(|e| RecordError::Encode(e.to_string()))?;
        let mut blocks = s.lock_blocks();
        let builder = self.builder(&mut blocks)?;
        // The queue holds whole blocks: this record costs the blocks it fills.
        let cost = builder.bytes_filled_by(&s.ctx.blocks, head.len() + len);
        let before = s.budget.load(Ordering::Acquire);
        // A record larger than the whole budget still goes through on an empty queue.
        if cost > 0 && before > 0 && before + cost > s.ctx.max_bytes {
            drop(blocks);
            return self.overflow(before, len, t_us);
        }
        self.flush_gap(&mut blocks, t_us)?;
        let mut record = Vec::with_capacity(parts.len() + 1);
        record.push(head.as_slice());
        record.extend_from_slice(parts);
        self.push_record(&mut blocks, &record)
    }

    fn builder<'b>(
        &self,
        blocks: &'b mut SessionBlocks,
    ) -> Result<&'b mut BlockBuilder, RecordError> {
        if blocks.builder.is_none() {
            blocks.builder = Some(BlockBuilder::new(&self.state.ctx.blocks)?);
        }
        blocks
            .builder
            .as_mut()
            .ok_or(RecordError::SessionWriteFailed)
    }

    /// Lays one encoded record into the session's block and sends every block it fills.
    fn push_record(&self, blocks: &mut SessionBlocks, record: &[&[u8]]) -> Result<(), RecordError> {
        let s = &self.state;
        let mut full = Vec::new();
        self.builder(blocks)?
            .push(&s.ctx.blocks, record, |block| full.push(block))?;
        s.next_index.fetch_add(1, Ordering::AcqRel);
        for block in full {
            self.send_block(blocks, block)?;
        }
        Ok(())
    }

    fn count(&self, kind: FrameKind, len: usize, t_us: u64) {
        let s = &self.state;
        let len = len as u64;
        match kind {
            FrameKind::Stdin => {
                s.stdin.fetch_add(len, Ordering::Relaxed);
            }
            FrameKind::Stdout => {
                s.stdout.fetch_add(len, Ordering::Relaxed);
            }
            FrameKind::Stderr => {
                s.stderr.fetch_add(len, Ordering::Relaxed);
            }
            FrameKind::PortForwardData {
                port,
                stream,
                to_pod,
            } => {
                let mut map = s
                    .port_forward
                    .lock()
                    .unwrap_or_else(|poisoned| poisoned.into_inner());
                let stats = map.entry((port, stream)).or_insert(PortForwardStats {
                    port,
                    stream,
                    first_us: t_us,
                    ..PortForwardStats::default()
                });
                if to_pod {
                    stats.bytes_to_pod += len;
                } else {
                    stats.bytes_from_pod += len;
                }
                stats.last_us = t_us;
            }
            _ => {}
        }
    }

    fn overflow(&self, queued: usize, dropped: usize, t_us: u64) -> Result<(), RecordError> {
        let s = &self.state;
        let limit = s.ctx.max_bytes;
        s.dropped_total.fetch_add(dropped as u64, Ordering::Relaxed);
        s.ctx.metrics.session_dropped_bytes.inc_by(dropped as u64);
        match s.ctx.policy {
            OverflowPolicy::Terminate => {
                s.ctx
                    .metrics
                    .session_overflows
                    .with_label_values(&["terminate"])
                    .inc();
                if !s.terminated.swap(true, Ordering::AcqRel) {
                    tracing::warn!(session = %s.meta.session_id, limit, "session recording fell behind the stream; ending the session");
                    // The marker bypasses the budget: it is tiny and must not be lost.
                    let marker = FrameRecord {
                        schema: SCHEMA_VERSION,
                        t_us,
                        event: FrameEvent::Overflow {
                            queued_bytes: queued as u64,
                            limit: limit as u64,
                        },
                    };
                    let value = encode(&marker).map_err(|e| RecordError::Encode(e.to_string()))?;
                    let mut blocks = s.lock_blocks();
                    self.push_record(&mut blocks, &[&value])?;
                }
                Err(RecordError::SessionOverflow { limit })
            }
            OverflowPolicy::MarkGap => {
                if s.gap_frames.fetch_add(1, Ordering::AcqRel) == 0 {
                    s.ctx
                        .metrics
                        .session_overflows
                        .with_label_values(&["mark_gap"])
                        .inc();
                }
                s.gap_bytes.fetch_add(dropped as u64, Ordering::AcqRel);
                Ok(())
            }
        }
    }

    /// Records the pending gap marker (if any) before the next frame that fits. Like the
    /// overflow marker it bypasses the budget.
    fn flush_gap(&self, blocks: &mut SessionBlocks, t_us: u64) -> Result<(), RecordError> {
        let s = &self.state;
        let frames = s.gap_frames.swap(0, Ordering::AcqRel);
        if frames == 0 {
            return Ok(());
        }
        let bytes = s.gap_bytes.swap(0, Ordering::AcqRel);
        let marker = FrameRecord {
            schema: SCHEMA_VERSION,
            t_us,
            event: FrameEvent::Gap {
                dropped_bytes: bytes,
                dropped_frames: frames,
            },
        };
        let value = encode(&marker).map_err(|e| RecordError::Encode(e.to_string()))?;
        self.push_record(blocks, &[&value])
    }

    fn send_block(&self, blocks: &mut SessionBlocks, block: FrameBlock) -> Result<(), RecordError> {
        let s = &self.state;
        let size = block.size();
        s.budget.fetch_add(size, Ordering::AcqRel);
        let total = s.ctx.queued_bytes.fetch_add(size, Ordering::AcqRel) + size;
        s.ctx.metrics.session_queue_bytes.set(total as i64);
        blocks.sent += 1;
        s.tx.send(SessionMsg::Block {
            session_seq: s.seq,
            block,
            accounted: size,
            budget: s.budget.clone(),
            failed: s.failed.clone(),
            written: s.written.clone(),
        })
        .map_err(|_| {
            s.budget.fetch_sub(size, Ordering::AcqRel);
            s.ctx.queued_bytes.fetch_sub(size, Ordering::AcqRel);
            RecordError::RecorderStopped
        })
    }

    /// Ends the session: the record gets its end time, exit code and totals. Frames recorded
    /// before are written first. Only the first close of any clone counts.
    pub fn close(self, exit_code: Option<i32>, error: Option<String>) {
        let s = &self.state;
        if s.closed.swap(true, Ordering::AcqRel) {
            return;
        }
        let t_us = self.elapsed_us();
        let tail = {
            let mut blocks = s.lock_blocks();
            if let Err(e) = self.flush_gap(&mut blocks, t_us) {
                tracing::error!(session = %s.meta.session_id, error = %e, "cannot record the final gap marker");
            }
            blocks.builder.take().map(BlockBuilder::finish)
        };
        s.ctx.live.lock().remove(&s.seq);
        let port_forward = s
            .port_forward
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .values()
            .cloned()
            .collect();
        let record = SessionRecord {
            schema: SCHEMA_VERSION,
            seq: s.seq,
            meta: s.meta.clone(),
            end_ns: Some(now_unix_nanos()),
            exit_code,
            error,
            frames: s.next_index.load(Ordering::Acquire),
            stdin_bytes: s.stdin.load(Ordering::Relaxed),
            stdout_bytes: s.stdout.load(Ordering::Relaxed),
            stderr_bytes: s.stderr.load(Ordering::Relaxed),
            port_forward,
            dropped_bytes: s.dropped_total.load(Ordering::Relaxed),
            overflowed: s.terminated.load(Ordering::Acquire),
        };
        if s.tx
            .send(SessionMsg::Close {
                record: Box::new(record),
                tail,
            })
            .is_err()
        {
            tracing::error!(session = %s.meta.session_id, "recorder stopped before the session closed");
        }
    }
}

/// What the writer thread works with.
pub(crate) struct WriterContext {
    pub store: Arc<dyn Store>,
    pub queued_bytes: Arc<AtomicUsize>,
    /// Set when something was written: the flusher's next group commit syncs it.
    pub dirty: Arc<AtomicBool>,
    pub metrics: RecorderMetrics,
    pub blocks: Arc<BlockPool>,
    pub live: Arc<LiveSessions>,
    /// How often the part of each open session's block filled so far is written (the group
    /// commit interval: a frame is on disk within about two of them).
    pub partial_interval: Duration,
}

/// The background thread that writes every session's blocks into the store.
pub(crate) fn run_writer(rx: Receiver<SessionMsg>, w: WriterContext) {
    let mut partials_written = Instant::now();
    loop {
        let msg = if w.live.is_empty() {
            match rx.recv() {
                Ok(msg) => Some(msg),
                Err(_) => return,
            }
        } else {
            let wait = w
                .partial_interval
                .saturating_sub(partials_written.elapsed());
            match rx.recv_timeout(wait) {
                Ok(msg) => Some(msg),
                Err(RecvTimeoutError::Timeout) => None,
                Err(RecvTimeoutError::Disconnected) => return,
            }
        };
        match msg {
            Some(SessionMsg::Block {
                session_seq,
                block,
                accounted,
                budget,
                failed,
                written,
            }) => {
                let result = w
                    .store
                    .write_frames(session_seq, block.offset(), block.filled());
                w.blocks.give(block);
                if let Err(e) = result {
                    // Surfaces on the session's next frame, which ends it.
                    failed.store(true, Ordering::Release);
                    w.metrics.append_errors.inc();
                    tracing::error!(session_seq, error = %e, "cannot store a session's frames");
                }
                written.fetch_add(1, Ordering::AcqRel);
                w.dirty.store(true, Ordering::Release);
                budget.fetch_sub(accounted, Ordering::AcqRel);
                let left = w
                    .queued_bytes
                    .fetch_sub(accounted, Ordering::AcqRel)
                    .saturating_sub(accounted);
                w.metrics.session_queue_bytes.set(left as i64);
            }
            Some(SessionMsg::Close { record, tail }) => {
                if let Some(tail) = tail {
                    let result = w
                        .store
                        .write_frames(record.seq, tail.offset(), tail.filled())
                        .and_then(|()| w.store.close_frames(record.seq, tail.end()));
                    w.blocks.give(tail);
                    if let Err(e) = result {
                        w.metrics.append_errors.inc();
                        tracing::error!(session_seq = record.seq, error = %e, "cannot write the session's last frames");
                    }
                }
                let result = encode(&*record).map_err(|e| e.to_string()).and_then(|v| {
                    w.store
                        .insert(Tree::Sessions, &seq_key(record.seq), &v)
                        .map_err(|e| e.to_string())
                });
                if let Err(e) = result {
                    w.metrics.append_errors.inc();
                    tracing::error!(session_seq = record.seq, error = %e, "cannot store the session's end");
                }
                w.dirty.store(true, Ordering::Release);
            }
            Some(SessionMsg::Opened) | None => {}
        }
        // Slabs for the block sizes the data path found none of (never cut there: see
        // `BlockPool`).
        w.blocks.provision();
        if partials_written.elapsed() >= w.partial_interval {
            write_partials(&w);
            partials_written = Instant::now();
        }
    }
}

/// Writes the part of each open session's block filled since the last time, so the next group
/// commit makes it durable. A session with a full block still queued is skipped until that
/// block is written (the file must not get a later block before an earlier one).
fn write_partials(w: &WriterContext) {
    for (seq, session) in w.live.open() {
        let partial = {
            let mut blocks = session.lock_blocks();
            let all_written = blocks.sent == session.written.load(Ordering::Acquire);
            let Some(current) = blocks.builder.as_ref().map(BlockBuilder::current) else {
                continue;
            };
            let end = current.end();
            if !all_written || end == blocks.partial_written_to || current.filled().is_empty() {
                continue;
            }
            let (offset, bytes) = current.unwritten_since(blocks.partial_written_to);
            let partial = w.blocks.padded_copy(bytes, offset);
            blocks.partial_written_to = end;
            partial
        };
        let result = partial.and_then(|partial| {
            let written = w
                .store
                .write_frames(seq, partial.offset(), partial.filled());
            w.blocks.give(partial);
            written
        });
        if let Err(e) = result {
            session.failed.store(true, Ordering::Release);
            w.metrics.append_errors.inc();
            tracing::error!(session_seq = seq, error = %e, "cannot store a session's frames");
        }
        w.dirty.store(true, Ordering::Release);
    }
}
