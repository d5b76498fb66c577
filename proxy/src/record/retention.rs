//! Retention: deletes old audit records and sessions by age and size, recording each audit
//! deletion as a tombstone in the chain so verification tells it from tampering.
//!
//! Owns: choosing what to delete and the order of the writes. Must never: delete the newest
//! record (the chain's tip), or delete before the tombstone that covers the deletion is durable.

use std::sync::atomic::Ordering;
use std::sync::Weak;
use std::time::{Duration, Instant};

use super::entry::{decode, now_unix_nanos, ChainEntry, Envelope, Tombstone};
use super::session::SessionRecord;
use super::store::{key_seq, seq_key, Tree};
use super::{RecordError, Shared};

/// What one retention pass did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RetentionReport {
    pub audit_deleted: u64,
    /// Seq of the tombstone written, if any.
    pub tombstone_seq: Option<u64>,
    pub sessions_deleted: u64,
}

const NANOS_PER_DAY: u64 = 86_400 * 1_000_000_000;
const META_FIRST_KEPT: &[u8] = b"retention_first_kept";

/// Runs retention every `retention.interval_seconds` until `stop`'s sender is dropped.
pub(super) fn run_thread(shared: Weak<Shared>, stop: std::sync::mpsc::Receiver<()>) {
    let mut next = Instant::now();
    loop {
        match stop.recv_timeout(Duration::from_millis(500)) {
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
            // The recorder is being dropped (or sent a stop).
            Ok(()) | Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => return,
        }
        let Some(shared) = shared.upgrade() else {
            return;
        };
        if shared.stop.load(Ordering::Acquire) {
            return;
        }
        if Instant::now() < next {
            continue;
        }
        next = Instant::now() + Duration::from_secs(shared.retention.interval_seconds.max(1));
        match run(&shared, now_unix_nanos()) {
            Ok(report) if report != RetentionReport::default() => {
                tracing::info!(?report, "retention pass")
            }
            Ok(_) => {}
            Err(e) => tracing::error!(error = %e, "retention pass failed"),
        }
    }
}

pub(super) fn run(shared: &Shared, now_ns: u64) -> Result<RetentionReport, RecordError> {
    let mut report = RetentionReport::default();
    finish_interrupted_deletion(shared)?;
    audit_pass(shared, now_ns, &mut report)?;
    session_pass(shared, now_ns, &mut report)?;
    Ok(report)
}

/// A pass that stopped between its tombstone and the deletion leaves records below the
/// tombstone's cut: delete them now.
fn finish_interrupted_deletion(shared: &Shared) -> Result<(), RecordError> {
    let Some(cut) = shared
        .store
        .get(Tree::Meta, META_FIRST_KEPT)?
        .and_then(|v| key_seq(&v))
    else {
        return Ok(());
    };
    shared
        .store
        .remove_range(Tree::Audit, &seq_key(0), &seq_key(cut))?;
    shared
        .store
        .remove_range(Tree::Checkpoints, &seq_key(0), &seq_key(cut))?;
    Ok(())
}

fn audit_pass(
    shared: &Shared,
    now_ns: u64,
    report: &mut RetentionReport,
) -> Result<(), RecordError> {
    let cfg = &shared.retention;
    if cfg.max_age_days.is_none() && cfg.max_audit_bytes.is_none() {
        return Ok(());
    }
    let oldest_kept_ns = cfg
        .max_age_days
        .map(|d| now_ns.saturating_sub(d.saturating_mul(NANOS_PER_DAY)));
    let Some((tip_key, _)) = shared.store.last(Tree::Audit)? else {
        return Ok(());
    };
    let tip = key_seq(&tip_key).unwrap_or(0);

    let mut total: u64 = 0;
    if cfg.max_audit_bytes.is_some() {
        for item in shared.store.range_from(Tree::Audit, &seq_key(0)) {
            total += item?.1.len() as u64;
        }
    }
    let mut cut: Option<(u64, [u8; 32])> = None;
    let mut deleted = 0u64;
    for item in shared.store.range_from(Tree::Audit, &seq_key(0)) {
        let (k, v) = item?;
        let Some(seq) = key_seq(&k) else { break };
        if seq >= tip {
            break;
        }
        let env: Envelope = decode(&v).map_err(|e| RecordError::Corrupt(e.to_string()))?;
        let too_old = match oldest_kept_ns {
            Some(limit) => env
                .decode_entry()
                .map(|e| e.time_ns() < limit)
                .unwrap_or(false),
            None => false,
        };
        let too_big = cfg.max_audit_bytes.is_some_and(|max| total > max);
        if !too_old && !too_big {
            break;
        }
        total = total.saturating_sub(v.len() as u64);
        deleted += 1;
        cut = Some((seq + 1, env.hash));
    }
    let Some((first_kept_seq, last_deleted_hash)) = cut else {
        return Ok(());
    };

    // Tombstone first, durable and checkpointed; only then delete.
    let tombstone = Tombstone {
        time_ns: now_ns,
        node: shared.node.clone(),
        first_kept_seq,
        last_deleted_hash,
        deleted_records: deleted,
        reason: "retention".into(),
    };
    let seq = shared.insert(ChainEntry::Tombstone(tombstone))?;
    shared.checkpoint_now();
    shared
        .store
        .insert(Tree::Meta, META_FIRST_KEPT, &seq_key(first_kept_seq))?;
    shared.flush_sync()?;
    let removed = shared
        .store
        .remove_range(Tree::Audit, &seq_key(0), &seq_key(first_kept_seq))?;
    shared
        .store
        .remove_range(Tree::Checkpoints, &seq_key(0), &seq_key(first_kept_seq))?;
    shared.dirty.store(true, Ordering::Release);
    shared.metrics.retention_deleted.inc_by(removed);
    report.audit_deleted = removed;
    report.tombstone_seq = Some(seq);
    Ok(())
}

fn session_pass(
    shared: &Shared,
    now_ns: u64,
    report: &mut RetentionReport,
) -> Result<(), RecordError> {
    let cfg = &shared.retention;
    if cfg.max_age_days.is_none() && cfg.max_session_bytes.is_none() {
        return Ok(());
    }
    let oldest_kept_ns = cfg
        .max_age_days
        .map(|d| now_ns.saturating_sub(d.saturating_mul(NANOS_PER_DAY)));
    let mut sessions = Vec::new();
    let mut total: u64 = 0;
    for item in shared.store.range_from(Tree::Sessions, &seq_key(0)) {
        let (_, v) = item?;
        let Ok(record) = decode::<SessionRecord>(&v) else {
            continue;
        };
        let bytes = record.stdin_bytes + record.stdout_bytes + record.stderr_bytes;
        total += bytes;
        sessions.push((record, bytes));
    }
    for (record, bytes) in sessions {
        let last_activity = record.end_ns.unwrap_or(record.meta.start_ns);
        let too_old = oldest_kept_ns.is_some_and(|limit| last_activity < limit);
        let too_big = cfg.max_session_bytes.is_some_and(|max| total > max);
        if !too_old && !too_big {
            break;
        }
        // A session still open is not deleted for size; only for age.
        if record.end_ns.is_none() && !too_old {
            continue;
        }
        shared.store.remove_frames(record.seq)?;
        shared
            .store
            .remove(Tree::SessionIds, record.meta.session_id.as_bytes())?;
        shared.store.remove(Tree::Sessions, &seq_key(record.seq))?;
        total = total.saturating_sub(bytes);
        report.sessions_deleted += 1;
    }
    if report.sessions_deleted > 0 {
        shared.dirty.store(true, Ordering::Release);
    }
    Ok(())
}
