//! Prometheus metrics of the data path, registered once in a registry the admin port serves.
//!
//! Owns: metric names, labels and buckets. Must never: use a caller-controlled string (path, user,
//! token) as a label value; labels are verbs, resources from the classifier, and status codes.

use prometheus::{Encoder, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, Opts, Registry};

pub struct Metrics {
    registry: Registry,
    pub requests: IntCounterVec,
    pub latency: HistogramVec,
    pub active_streams: IntGauge,
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
        Ok(Self {
            registry,
            requests,
            latency,
            active_streams,
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
