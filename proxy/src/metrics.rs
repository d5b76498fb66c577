//! Prometheus metrics of the data path, registered once in a registry the admin port serves.
//!
//! Owns: metric names, labels and buckets. Must never: use a caller-controlled string (path, user,
//! token) as a label value; labels are verbs, resources from the classifier, and status codes.

use prometheus::{
    Counter, Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry,
};

pub struct Metrics {
    registry: Registry,
    pub requests: IntCounterVec,
    pub latency: HistogramVec,
    pub active_streams: IntGauge,
    /// Policy hot reloads, by `result`: `success` or `failure`.
    pub policy_reloads: IntCounterVec,
    /// The recorder's metrics (audit appends, flushes, session queues); see `record`.
    pub recorder: RecorderMetrics,
    /// The node agent's kernel counters by `kind` (redirect, reject, drop), read from its pins
    /// at each scrape when `redirect.pin_dir` is set; see `redirect::gateway::export_counters`.
    pub redirect_events: IntGaugeVec,
}

#[derive(Debug, thiserror::Error)]
#[error("metrics registration failed: {0}")]
pub struct MetricsError(#[from] prometheus::Error);

impl Metrics {
    pub fn new() -> Result<Self, MetricsError> {
        let registry = Registry::new();
        let requests = IntCounterVec::new(
            Opts::new(
                "portcullis_requests_total",
                "API requests handled, by verb, resource and response code",
            ),
            &["verb", "resource", "code"],
        )?;
        let latency = HistogramVec::new(
            HistogramOpts::new(
                "portcullis_request_duration_seconds",
                "Time from request to the end of the response (streams excluded)",
            )
            .buckets(vec![
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                10.0,
            ]),
            &["verb"],
        )?;
        let active_streams = IntGauge::new(
            "portcullis_active_streams",
            "Open long-lived streams: watches, followed logs, exec/attach/port-forward sessions",
        )?;
        registry.register(Box::new(requests.clone()))?;
        registry.register(Box::new(latency.clone()))?;
        registry.register(Box::new(active_streams.clone()))?;
        let policy_reloads = IntCounterVec::new(
            Opts::new(
                "portcullis_policy_reloads_total",
                "Policy reloads after a file changed, by result (success, failure)",
            ),
            &["result"],
        )?;
        registry.register(Box::new(policy_reloads.clone()))?;
        let recorder = RecorderMetrics::new()?;
        recorder.register(&registry)?;
        let redirect_events = IntGaugeVec::new(
            Opts::new(
                "portcullis_redirect_events",
                "Node agent eBPF events on this node since its maps were pinned, by kind (redirect, reject, drop)",
            ),
            &["kind"],
        )?;
        registry.register(Box::new(redirect_events.clone()))?;
        Ok(Self {
            registry,
            requests,
            latency,
            active_streams,
            policy_reloads,
            recorder,
            redirect_events,
        })
    }

    /// The text exposition format.
    pub fn render(&self) -> Vec<u8> {
        let mut out = Vec::new();
        // Encoding only fails on a write error, and writing to a Vec cannot fail.
        let _ = prometheus::TextEncoder::new().encode(&self.registry.gather(), &mut out);
        out
    }
}

/// The recorder's metrics. Cheap to clone (prometheus handles); `new` alone gives unregistered
/// ones for the CLI and tests.
#[derive(Clone)]
pub struct RecorderMetrics {
    /// Audit records appended, by `durability`: `durable` (flushed before returning) or `group`.
    pub appends: IntCounterVec,
    /// Failed appends and frame/session writes (the data path fails closed on these).
    pub append_errors: IntCounter,
    /// Time one store flush (fsync) takes.
    pub flush_seconds: Histogram,
    /// Time an `append_durable` waits for its flush.
    pub durable_wait_seconds: Histogram,
    /// Session frame bytes queued for the writer thread (backpressure).
    pub session_queue_bytes: IntGauge,
    /// Time sessions' streams were held so the recorder could catch up.
    pub backpressure_seconds: Counter,
    /// Sessions whose byte budget was exceeded, by `policy` (`terminate`, `mark_gap`).
    pub session_overflows: IntCounterVec,
    /// Session bytes not recorded because the budget was exceeded.
    pub session_dropped_bytes: IntCounter,
    /// Signed checkpoints written.
    pub checkpoints: IntCounter,
    /// Records deleted by retention (each deletion run is also a tombstone in the chain).
    pub retention_deleted: IntCounter,
}

impl RecorderMetrics {
    pub fn new() -> Result<Self, prometheus::Error> {
        let fsync_buckets = vec![
            0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
        ];
        Ok(Self {
            appends: IntCounterVec::new(
                Opts::new(
                    "portcullis_record_appends_total",
                    "Audit records appended, by durability (durable, group)",
                ),
                &["durability"],
            )?,
            append_errors: IntCounter::new(
                "portcullis_record_errors_total",
                "Audit appends and session writes that failed",
            )?,
            flush_seconds: Histogram::with_opts(
                HistogramOpts::new(
                    "portcullis_record_flush_seconds",
                    "Duration of one store flush (fsync)",
                )
                .buckets(fsync_buckets.clone()),
            )?,
            durable_wait_seconds: Histogram::with_opts(
                HistogramOpts::new(
                    "portcullis_record_durable_wait_seconds",
                    "Time a mutating request's audit record waits until it is on disk",
                )
                .buckets(fsync_buckets),
            )?,
            session_queue_bytes: IntGauge::new(
                "portcullis_record_session_queue_bytes",
                "Session frame bytes waiting to be written",
            )?,
            backpressure_seconds: Counter::new(
                "portcullis_record_backpressure_seconds_total",
                "Time session streams were held back so the recorder could keep up",
            )?,
            session_overflows: IntCounterVec::new(
                Opts::new(
                    "portcullis_record_session_overflows_total",
                    "Sessions that outran the recorder, by policy (terminate, mark_gap)",
                ),
                &["policy"],
            )?,
            session_dropped_bytes: IntCounter::new(
                "portcullis_record_session_dropped_bytes_total",
                "Session bytes not recorded because the recorder fell behind",
            )?,
            checkpoints: IntCounter::new(
                "portcullis_record_checkpoints_total",
                "Signed audit checkpoints written",
            )?,
            retention_deleted: IntCounter::new(
                "portcullis_record_retention_deleted_total",
                "Audit records deleted by retention",
            )?,
        })
    }

    pub fn register(&self, registry: &Registry) -> Result<(), prometheus::Error> {
        registry.register(Box::new(self.appends.clone()))?;
        registry.register(Box::new(self.append_errors.clone()))?;
        registry.register(Box::new(self.flush_seconds.clone()))?;
        registry.register(Box::new(self.durable_wait_seconds.clone()))?;
        registry.register(Box::new(self.session_queue_bytes.clone()))?;
        registry.register(Box::new(self.backpressure_seconds.clone()))?;
        registry.register(Box::new(self.session_overflows.clone()))?;
        registry.register(Box::new(self.session_dropped_bytes.clone()))?;
        registry.register(Box::new(self.checkpoints.clone()))?;
        registry.register(Box::new(self.retention_deleted.clone()))?;
        Ok(())
    }
}

/// Counts one open stream for as long as it lives.
pub struct StreamGuard(IntGauge);

impl StreamGuard {
    pub fn open(gauge: &IntGauge) -> Self {
        gauge.inc();
        Self(gauge.clone())
    }
}

impl Drop for StreamGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}
