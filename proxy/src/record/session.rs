//! exec/attach/port-forward session recordings: the session record, its timestamped frames, and
//! the writer the data path feeds.
//!
//! Owns: session and frame encoding, the per-session byte budget and what happens when it is
//! exceeded. Must never: block the caller (frames go to a queue a background thread drains), or
//! drop a frame without leaving a marker in the recording and a metric.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::Sender;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use serde::{Deserialize, Serialize};

use super::entry::{encode, now_unix_nanos, AuditIdentity, SCHEMA_VERSION};
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
/// postcard writes bytes as a varint length and the bytes, and `Data` is variant 0). The writer
/// writes this prefix and then the data as it was queued, so no record is built around it.
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
    Frame {
        session_seq: u64,
        /// The encoded record is `head` followed by `body` (a pooled buffer; empty for markers).
        head: Vec<u8>,
        body: Vec<u8>,
        accounted: usize,
        budget: Arc<AtomicUsize>,
        failed: Arc<AtomicBool>,
    },
    Close {
        record: Box<SessionRecord>,
    },
}

/// Buffers the data path copies frame data into and the writer thread hands back once written.
/// Copying at once lets the proxy release each chunk it forwarded where it read it, and makes a
/// session's queue budget exactly the memory the queue holds; a reused buffer needs no
/// allocation per frame. (Holding slices of the forwarded chunks instead measured the same
/// throughput, but a small slice can keep a whole 64 KiB chunk alive.)
#[derive(Default)]
pub(crate) struct BufferPool {
    free: Mutex<Vec<Vec<u8>>>,
}

impl BufferPool {
    /// Enough for every session of a busy node to have a few frames in flight.
    const MAX_FREE: usize = 64;
    /// A buffer grown by one huge frame is not kept.
    const MAX_KEPT: usize = 1 << 20;

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Vec<u8>>> {
        self.free
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// An empty buffer with room for `len` bytes.
    pub(crate) fn take(&self, len: usize) -> Vec<u8> {
        let mut buffer = self.lock().pop().unwrap_or_default();
        buffer.clear();
        buffer.reserve(len);
        buffer
    }

    pub(crate) fn give(&self, buffer: Vec<u8>) {
        if buffer.capacity() == 0 || buffer.capacity() > Self::MAX_KEPT {
            return;
        }
        let mut free = self.lock();
        if free.len() < Self::MAX_FREE {
            free.push(buffer);
        }
    }
}

/// Settings and shared counters a writer needs; one per recorder.
pub(crate) struct SessionContext {
    /// `None` once the recorder is dropped.
    pub tx: Mutex<Option<Sender<SessionMsg>>>,
    pub queued_bytes: Arc<AtomicUsize>,
    pub max_bytes: usize,
    pub policy: OverflowPolicy,
    pub port_forward_data: bool,
    pub metrics: RecorderMetrics,
    pub buffers: Arc<BufferPool>,
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
    tx: Sender<SessionMsg>,
    ctx: Arc<SessionContext>,
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
        Ok(Self {
            state: Arc::new(SessionState {
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
                tx,
                ctx,
            }),
        })
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

    /// Records a frame, timestamped now. Never blocks. An error means the session can no longer
    /// be recorded (budget exceeded under `terminate`, a store failure, already closed): the
    /// caller must end the session.
    pub fn frame(&self, kind: FrameKind, data: &[u8]) -> Result<(), RecordError> {
        self.frame_parts(kind, &[data])
    }

    /// Like [`SessionWriter::frame`] with the data given in pieces to concatenate (a run of one
    /// channel's data spread over several WebSocket frames of a chunk).
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
        let size = head.len() + len;
        let before = s.budget.fetch_add(size, Ordering::AcqRel);
        // A single frame larger than the whole budget still goes through on an empty queue.
        if before > 0 && before + size > s.ctx.max_bytes {
            s.budget.fetch_sub(size, Ordering::AcqRel);
            return self.overflow(before, len, t_us);
        }
        self.flush_gap(t_us)?;
        let mut body = s.ctx.buffers.take(len);
        for part in parts {
            body.extend_from_slice(part);
        }
        self.send(head, body, size)
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
                    let size = value.len();
                    s.budget.fetch_add(size, Ordering::AcqRel);
                    self.send(value, Vec::new(), size)?;
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

    /// Writes the pending gap marker (if any) before the next frame that fits.
    fn flush_gap(&self, t_us: u64) -> Result<(), RecordError> {
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
        let size = value.len();
        s.budget.fetch_add(size, Ordering::AcqRel);
        self.send(value, Vec::new(), size)
    }

    fn send(&self, head: Vec<u8>, body: Vec<u8>, size: usize) -> Result<(), RecordError> {
        let s = &self.state;
        s.next_index.fetch_add(1, Ordering::AcqRel);
        let total = s.ctx.queued_bytes.fetch_add(size, Ordering::AcqRel) + size;
        s.ctx.metrics.session_queue_bytes.set(total as i64);
        s.tx.send(SessionMsg::Frame {
            session_seq: s.seq,
            head,
            body,
            accounted: size,
            budget: s.budget.clone(),
            failed: s.failed.clone(),
        })
        .map_err(|_| {
            s.budget.fetch_sub(size, Ordering::AcqRel);
            s.ctx.queued_bytes.fetch_sub(size, Ordering::AcqRel);
            RecordError::RecorderStopped
        })
    }

    /// Ends the session: the record gets its end time, exit code and totals. Frames sent before
    /// are written first. Only the first close of any clone counts.
    pub fn close(self, exit_code: Option<i32>, error: Option<String>) {
        let s = &self.state;
        if s.closed.swap(true, Ordering::AcqRel) {
            return;
        }
        let t_us = self.elapsed_us();
        if let Err(e) = self.flush_gap(t_us) {
            tracing::error!(session = %s.meta.session_id, error = %e, "cannot record the final gap marker");
        }
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
            })
            .is_err()
        {
            tracing::error!(session = %s.meta.session_id, "recorder stopped before the session closed");
        }
    }
}

/// The background thread that drains every session's queue into the store.
pub(crate) fn run_writer(
    rx: std::sync::mpsc::Receiver<SessionMsg>,
    store: Arc<dyn Store>,
    queued_bytes: Arc<AtomicUsize>,
    dirty: Arc<AtomicBool>,
    metrics: RecorderMetrics,
    buffers: Arc<BufferPool>,
) {
    for msg in rx {
        match msg {
            SessionMsg::Frame {
                session_seq,
                head,
                body,
                accounted,
                budget,
                failed,
            } => {
                let result = store.append_frame(session_seq, &[&head, &body]);
                buffers.give(body);
                if let Err(e) = result {
                    // Surfaces on the session's next frame, which ends it.
                    failed.store(true, Ordering::Release);
                    metrics.append_errors.inc();
                    tracing::error!(session_seq, error = %e, "cannot store a session frame");
                }
                dirty.store(true, Ordering::Release);
                budget.fetch_sub(accounted, Ordering::AcqRel);
                let left = queued_bytes
                    .fetch_sub(accounted, Ordering::AcqRel)
                    .saturating_sub(accounted);
                metrics.session_queue_bytes.set(left as i64);
            }
            SessionMsg::Close { record } => {
                if let Err(e) = store.close_frames(record.seq) {
                    metrics.append_errors.inc();
                    tracing::error!(session_seq = record.seq, error = %e, "cannot close the session's frames");
                }
                let result = encode(&*record).map_err(|e| e.to_string()).and_then(|v| {
                    store
                        .insert(Tree::Sessions, &seq_key(record.seq), &v)
                        .map_err(|e| e.to_string())
                });
                if let Err(e) = result {
                    metrics.append_errors.inc();
                    tracing::error!(session_seq = record.seq, error = %e, "cannot store the session's end");
                }
                dirty.store(true, Ordering::Release);
            }
        }
    }
}
