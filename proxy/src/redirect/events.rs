//! The node agent's audit log: redirect, reject and drop events from the kernel, coalesced and
//! appended to the agent's own hash-chained store (the gateway's recorder, `record:` in the
//! node config). The agent keeps its own store because sled is single-process and rejects
//! happen exactly while the gateway is down.
//!
//! Owns: the coalescing (at most one record per kind, cgroup, destination and protocol per
//! window, carrying a count) and the recorder's life in the agent. Must never: stop or delay
//! enforcement (a failed append is logged and counted, nothing more), or grow without bound
//! when a pod hammers protected addresses.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::metrics::RecorderMetrics;
use crate::record::{
    now_unix_nanos, AuditEntry, NodeEventEntry, NodeEventKind, NodePod, NodeProtocol, RecordConfig,
    Recorder,
};

/// One record per key per this long.
pub const COALESCE_WINDOW: Duration = Duration::from_secs(1);
/// Distinct keys pending at once before destinations are folded per IP (port 0).
pub const MAX_PENDING_KEYS: usize = 4096;
/// How long after a failed open the store is tried again.
const REOPEN_INTERVAL: Duration = Duration::from_secs(30);

/// One event as the agent read it from the ring buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Observed {
    pub kind: NodeEventKind,
    pub cgroup_id: u64,
    pub destination: SocketAddr,
    pub protocol: NodeProtocol,
    pub pod: Option<NodePod>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct Key {
    kind: NodeEventKind,
    cgroup_id: u64,
    destination: SocketAddr,
    protocol: NodeProtocol,
}

#[derive(Debug)]
struct Pending {
    pod: Option<NodePod>,
    count: u64,
    first_ns: u64,
    last_ns: u64,
    due: Instant,
}

/// Identical events within `window` of the first become one record. Pure: time comes in as
/// arguments (a monotonic instant for the window, wall-clock nanoseconds for the record).
#[derive(Debug)]
pub struct Coalescer {
    window: Duration,
    max_keys: usize,
    pending: HashMap<Key, Pending>,
    lost: u64,
}

impl Coalescer {
    /// `max_keys` distinct keys are kept as they are; beyond that a new key's destination is
    /// folded to its IP with port 0 (bounded by the protected IPs), and beyond twice that the
    /// event is only counted in [`Coalescer::take_lost`].
    pub fn new(window: Duration, max_keys: usize) -> Self {
        Self {
            window,
            max_keys: max_keys.max(1),
            pending: HashMap::new(),
            lost: 0,
        }
    }

    pub fn observe(&mut self, event: Observed, now: Instant, now_ns: u64) {
        let mut key = Key {
            kind: event.kind,
            cgroup_id: event.cgroup_id,
            destination: event.destination,
            protocol: event.protocol,
        };
        if !self.pending.contains_key(&key) && self.pending.len() >= self.max_keys {
            key.destination.set_port(0);
            if !self.pending.contains_key(&key) && self.pending.len() >= 2 * self.max_keys {
                self.lost += 1;
                return;
            }
        }
        let window = self.window;
        let pending = self.pending.entry(key).or_insert_with(|| Pending {
            pod: event.pod,
            count: 0,
            first_ns: now_ns,
            last_ns: now_ns,
            due: now + window,
        });
        pending.count += 1;
        pending.last_ns = pending.last_ns.max(now_ns);
    }

    /// The records whose window has closed by `now`, oldest first.
    pub fn due(&mut self, now: Instant, now_ns: u64) -> Vec<NodeEventEntry> {
        let keys: Vec<Key> = self
            .pending
            .iter()
            .filter(|(_, p)| p.due <= now)
            .map(|(k, _)| *k)
            .collect();
        self.take(keys, now_ns)
    }

    /// Every pending record, window closed or not (shutdown), oldest first.
    pub fn drain(&mut self, now_ns: u64) -> Vec<NodeEventEntry> {
        let keys: Vec<Key> = self.pending.keys().copied().collect();
        self.take(keys, now_ns)
    }

    /// Events dropped since the last call because too many keys were pending.
    pub fn take_lost(&mut self) -> u64 {
        std::mem::take(&mut self.lost)
    }

    pub fn pending(&self) -> usize {
        self.pending.len()
    }

    fn take(&mut self, keys: Vec<Key>, now_ns: u64) -> Vec<NodeEventEntry> {
        let mut records: Vec<NodeEventEntry> = keys
            .into_iter()
            .filter_map(|key| {
                let p = self.pending.remove(&key)?;
                Some(NodeEventEntry {
                    time_ns: now_ns,
                    node: String::new(),
                    kind: key.kind,
                    pod: p.pod,
                    cgroup_id: key.cgroup_id,
                    destination: key.destination.to_string(),
                    protocol: key.protocol,
                    count: p.count,
                    first_ns: p.first_ns,
                    last_ns: p.last_ns,
                })
            })
            .collect();
        records.sort_by(|a, b| {
            (a.first_ns, a.cgroup_id, &a.destination).cmp(&(
                b.first_ns,
                b.cgroup_id,
                &b.destination,
            ))
        });
        records
    }
}

/// The agent's audit log: a coalescer in front of a recorder. Failures are logged and counted;
/// none reaches the caller.
pub struct NodeAudit {
    config: RecordConfig,
    recorder: Option<Recorder>,
    next_open: Instant,
    coalescer: Coalescer,
    /// Records that could not be appended (store not open, or the append failed).
    failed: u64,
}

impl NodeAudit {
    /// `None` (and a log line saying so) when the config has no `record.path`. A store that
    /// cannot be opened now is logged and retried every 30 s; enforcement goes on regardless.
    pub fn start(config: &RecordConfig) -> Option<Self> {
        if !config.enabled() {
            tracing::info!(
                "record.path is not set: redirect/reject/drop events are only logged, not audited"
            );
            return None;
        }
        let mut audit = Self {
            config: config.clone(),
            recorder: None,
            next_open: Instant::now(),
            coalescer: Coalescer::new(COALESCE_WINDOW, MAX_PENDING_KEYS),
            failed: 0,
        };
        audit.ensure_open(Instant::now());
        Some(audit)
    }

    fn ensure_open(&mut self, now: Instant) -> bool {
        if self.recorder.is_some() {
            return true;
        }
        if now < self.next_open {
            return false;
        }
        let path = self
            .config
            .path
            .as_ref()
            .map(|p| p.display().to_string())
            .unwrap_or_default();
        let opened = RecorderMetrics::new()
            .map_err(|e| e.to_string())
            .and_then(|metrics| Recorder::open(&self.config, metrics).map_err(|e| e.to_string()));
        match opened {
            Ok(recorder) => {
                tracing::info!(store = %path, "node audit log open: events are recorded");
                self.recorder = Some(recorder);
                true
            }
            Err(error) => {
                tracing::error!(
                    store = %path,
                    error = %error,
                    retry_seconds = REOPEN_INTERVAL.as_secs(),
                    "cannot open the node audit log; events are only logged until it opens"
                );
                self.next_open = now + REOPEN_INTERVAL;
                false
            }
        }
    }

    pub fn observe(&mut self, event: Observed) {
        self.coalescer
            .observe(event, Instant::now(), now_unix_nanos());
    }

    /// Appends the records whose window has closed (group commit: durable within
    /// `record.read_flush_interval_ms`).
    pub fn write_due(&mut self) {
        let now = Instant::now();
        let records = self.coalescer.due(now, now_unix_nanos());
        self.write(records, now);
    }

    /// Shutdown: appends everything pending, signs a checkpoint of the tip and flushes, so a
    /// cleanly stopped agent leaves a store whose whole tail is signed.
    pub fn finish(mut self) {
        let now = Instant::now();
        let records = self.coalescer.drain(now_unix_nanos());
        let pending = records.len();
        self.write(records, now);
        if let Some(recorder) = self.recorder.take() {
            recorder.checkpoint();
            match recorder.flush() {
                Ok(()) => tracing::info!(
                    records = pending,
                    failed = self.failed,
                    "node audit log flushed and checkpointed"
                ),
                Err(error) => tracing::error!(error = %error, "final node audit log flush failed"),
            }
        }
    }

    fn write(&mut self, records: Vec<NodeEventEntry>, now: Instant) {
        let lost = self.coalescer.take_lost();
        if lost > 0 {
            self.failed += lost;
            tracing::warn!(
                lost,
                failed_total = self.failed,
                "too many distinct events pending; some were not recorded"
            );
        }
        if records.is_empty() {
            return;
        }
        if !self.ensure_open(now) {
            self.failed += records.len() as u64;
            tracing::warn!(
                records = records.len(),
                failed_total = self.failed,
                "node audit log not open; events not recorded"
            );
            return;
        }
        let Some(recorder) = &self.recorder else {
            return;
        };
        for record in records {
            if let Err(error) = recorder.append(AuditEntry::Node(record)) {
                self.failed += 1;
                tracing::error!(
                    error = %error,
                    failed_total = self.failed,
                    "cannot append to the node audit log; enforcement continues"
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(kind: NodeEventKind, destination: &str) -> Observed {
        Observed {
            kind,
            cgroup_id: 77,
            destination: destination.parse().unwrap(),
            protocol: NodeProtocol::Tcp,
            pod: Some(NodePod {
                namespace: "agents".into(),
                name: "mcp".into(),
                uid: None,
            }),
        }
    }

    const NS: u64 = 1_000_000_000_000;

    #[test]
    fn identical_events_in_one_window_become_one_record_with_a_count() {
        let start = Instant::now();
        let mut c = Coalescer::new(Duration::from_secs(1), 16);
        for i in 0..1000u64 {
            let at = start + Duration::from_micros(i * 900);
            c.observe(
                event(NodeEventKind::Reject, "203.0.113.10:6443"),
                at,
                NS + i * 900_000,
            );
        }
        assert!(
            c.due(start + Duration::from_millis(999), NS + 999_000_000)
                .is_empty(),
            "window still open"
        );
        let records = c.due(start + Duration::from_secs(1), NS + 1_000_000_000);
        assert_eq!(records.len(), 1, "{records:?}");
        let r = &records[0];
        assert_eq!(r.count, 1000);
        assert_eq!(r.kind, NodeEventKind::Reject);
        assert_eq!(r.destination, "203.0.113.10:6443");
        assert_eq!(r.first_ns, NS);
        assert_eq!(r.last_ns, NS + 999 * 900_000);
        assert_eq!(r.time_ns, NS + 1_000_000_000);
        assert_eq!(r.pod.as_ref().unwrap().name, "mcp");
        assert_eq!(c.pending(), 0);
    }

    #[test]
    fn a_hammering_pod_gets_at_most_one_record_per_key_per_window() {
        let start = Instant::now();
        let mut c = Coalescer::new(Duration::from_secs(1), 16);
        let mut records = Vec::new();
        // 10 s of one event every 10 ms, the agent writing due records every 250 ms.
        for tick in 0..1000u64 {
            let now = start + Duration::from_millis(tick * 10);
            c.observe(event(NodeEventKind::Drop, "203.0.113.10:0"), now, tick);
            if tick % 25 == 0 {
                records.extend(c.due(now, tick));
            }
        }
        records.extend(c.drain(1000));
        assert!(records.len() <= 11, "{} records", records.len());
        assert!(records.len() >= 9, "{} records", records.len());
        assert_eq!(records.iter().map(|r| r.count).sum::<u64>(), 1000);
    }

    #[test]
    fn different_keys_stay_apart() {
        let start = Instant::now();
        let mut c = Coalescer::new(Duration::from_secs(1), 16);
        c.observe(event(NodeEventKind::Redirect, "203.0.113.10:443"), start, 1);
        c.observe(event(NodeEventKind::Reject, "203.0.113.10:443"), start, 2);
        c.observe(event(NodeEventKind::Redirect, "203.0.113.11:443"), start, 3);
        let mut udp = event(NodeEventKind::Redirect, "203.0.113.10:443");
        udp.protocol = NodeProtocol::Udp;
        c.observe(udp, start, 4);
        let mut other_cgroup = event(NodeEventKind::Redirect, "203.0.113.10:443");
        other_cgroup.cgroup_id = 78;
        c.observe(other_cgroup, start, 5);
        c.observe(event(NodeEventKind::Redirect, "203.0.113.10:443"), start, 6);
        let records = c.drain(10);
        assert_eq!(records.len(), 5, "{records:?}");
        assert_eq!(
            records.iter().map(|r| r.first_ns).collect::<Vec<_>>(),
            vec![1, 2, 3, 4, 5],
            "oldest first"
        );
        assert_eq!(records[0].count, 2);
        assert_eq!(records[0].last_ns, 6);
        assert_eq!(records[3].protocol, NodeProtocol::Udp);
        assert_eq!(records[4].cgroup_id, 78);
    }

    #[test]
    fn a_new_window_starts_after_a_record() {
        let start = Instant::now();
        let mut c = Coalescer::new(Duration::from_secs(1), 16);
        c.observe(event(NodeEventKind::Drop, "203.0.113.10:0"), start, 1);
        assert_eq!(c.due(start + Duration::from_secs(1), 2).len(), 1);
        let later = start + Duration::from_millis(1500);
        c.observe(event(NodeEventKind::Drop, "203.0.113.10:0"), later, 3);
        assert!(c.due(start + Duration::from_secs(2), 4).is_empty());
        let second = c.due(later + Duration::from_secs(1), 5);
        assert_eq!(second.len(), 1);
        assert_eq!((second[0].count, second[0].first_ns), (1, 3));
    }

    #[test]
    fn many_destinations_fold_per_ip_and_the_table_stays_bounded() {
        let start = Instant::now();
        let mut c = Coalescer::new(Duration::from_secs(1), 4);
        // A port scan of one protected IP: 4 ports keep their own record, the rest fold.
        for port in 1..=1000u16 {
            c.observe(
                event(NodeEventKind::Reject, &format!("203.0.113.10:{port}")),
                start,
                u64::from(port),
            );
        }
        assert_eq!(c.pending(), 5);
        assert_eq!(c.take_lost(), 0);
        // Other cgroups fill the rest of the hard bound; beyond it events are only counted.
        for cgroup in 0..10u64 {
            let mut e = event(NodeEventKind::Reject, "203.0.113.10:9");
            e.cgroup_id = 1000 + cgroup;
            c.observe(e, start, 2000 + cgroup);
        }
        assert_eq!(c.pending(), 8, "hard bound is twice max_keys");
        assert_eq!(c.take_lost(), 7);
        assert_eq!(c.take_lost(), 0, "taken");
        let records = c.drain(5000);
        let folded = records
            .iter()
            .find(|r| r.destination == "203.0.113.10:0" && r.cgroup_id == 77)
            .unwrap();
        assert_eq!(folded.count, 996);
        assert_eq!(records.iter().map(|r| r.count).sum::<u64>(), 1000 + 3);
    }
}
