use std::path::Path;
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use super::entry::tests::sample_request;
use super::entry::{decode, encode, Envelope};
use super::query::{find_session, list_sessions, query, session_frames, AuditFilter};
use super::store::{key_seq, seq_key, KeyValue, KvIter, ReadFrames};
use super::*;

const KEY_SEED: [u8; 32] = [42; 32];

fn config(dir: &Path) -> RecordConfig {
    let key = dir.join("audit.key");
    std::fs::write(&key, KEY_SEED).unwrap();
    RecordConfig {
        path: Some(dir.join("store")),
        node_name: Some("node-a".into()),
        signing_key_file: Some(key),
        checkpoint_every_records: 10,
        ..RecordConfig::default()
    }
}

fn metrics() -> RecorderMetrics {
    RecorderMetrics::new().unwrap()
}

fn request(user: &str, verb: &str) -> AuditEntry {
    AuditEntry::Request(sample_request(user, verb, "prod"))
}

fn verifying_key() -> ed25519_dalek::VerifyingKey {
    ed25519_dalek::SigningKey::from_bytes(&KEY_SEED).verifying_key()
}

/// A store of `n` records (checkpoints every 10), cleanly closed.
async fn build_store(dir: &Path, n: u64) -> RecordConfig {
    let cfg = config(dir);
    let recorder = Recorder::open(&cfg, metrics()).unwrap();
    for i in 0..n {
        let user = format!("user{i}");
        if i % 3 == 0 {
            recorder
                .append_durable(request(&user, "delete"))
                .await
                .unwrap();
        } else {
            recorder.append(request(&user, "get")).unwrap();
        }
    }
    drop(recorder);
    cfg
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

/// Opens a copy of the store for tampering.
fn tamper_copy(cfg: &RecordConfig, name: &str) -> SledStore {
    let src = cfg.path.as_ref().unwrap();
    let dst = src.parent().unwrap().join(name);
    copy_dir(src, &dst);
    SledStore::open(&dst, 1 << 20).unwrap()
}

fn get_env(store: &SledStore, seq: u64) -> Envelope {
    decode(&store.get(Tree::Audit, &seq_key(seq)).unwrap().unwrap()).unwrap()
}

fn put_env(store: &SledStore, key_seq: u64, env: &Envelope) {
    store
        .insert(Tree::Audit, &seq_key(key_seq), &encode(env).unwrap())
        .unwrap();
}

fn with_user(env: &Envelope, user: &str) -> Vec<u8> {
    let mut entry = env.decode_entry().unwrap();
    if let ChainEntry::Audit(AuditEntry::Request(r)) = &mut entry {
        r.identity.as_mut().unwrap().user = user.into();
    }
    encode(&entry).unwrap()
}

fn broken(store: &SledStore, from: Option<u64>) -> Break {
    let report = verify(store, from, Some(&verifying_key())).unwrap();
    match report.broken.clone() {
        Some(b) => b,
        None => panic!("verified: {report}"),
    }
}

#[tokio::test]
async fn appends_chain_checkpoint_and_verify() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = build_store(dir.path(), 25).await;
    let store = SledStore::open(cfg.path.as_ref().unwrap(), 1 << 20).unwrap();
    let report = verify(&store, None, Some(&verifying_key())).unwrap();
    assert!(report.is_ok(), "{report}");
    assert_eq!(report.records, 25);
    assert_eq!((report.first_seq, report.last_seq), (Some(0), Some(24)));
    assert_eq!(report.key, KeyTrust::Configured);
    // Every 10 records, plus the clean stop's checkpoint of the tail.
    let checkpoints: Vec<u64> = store
        .range_from(Tree::Checkpoints, &seq_key(0))
        .map(|kv| key_seq(&kv.unwrap().0).unwrap())
        .collect();
    assert_eq!(checkpoints, vec![9, 19, 24]);
    assert_eq!(report.checkpoints, 3);
    let env = get_env(&store, 3);
    match env.decode_entry().unwrap() {
        ChainEntry::Audit(AuditEntry::Request(r)) => {
            assert_eq!(r.node, "node-a", "node filled in");
            assert_eq!(r.identity.unwrap().user, "user3");
        }
        other => panic!("{other:?}"),
    }
    assert!(report.to_string().starts_with("OK: 25 records"), "{report}");
    // Without a key, signatures are only self-consistent, and the report says so.
    let unkeyed = verify(&store, None, None).unwrap();
    assert!(unkeyed.is_ok());
    assert_eq!(unkeyed.key, KeyTrust::StoredOnly);
}

#[tokio::test]
async fn an_edited_record_is_found() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = build_store(dir.path(), 30).await;
    let store = tamper_copy(&cfg, "edited");
    let mut env = get_env(&store, 12);
    env.entry = with_user(&env, "mallory");
    put_env(&store, 12, &env);
    let b = broken(&store, None);
    assert_eq!((b.seq, b.reason), (12, BreakReason::Edited), "{b:?}");
    // Starting after the edit, the rest verifies.
    assert!(verify(&store, Some(13), Some(&verifying_key()))
        .unwrap()
        .is_ok());
}

#[tokio::test]
async fn a_rewritten_chain_is_caught_by_the_signed_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = build_store(dir.path(), 30).await;
    let store = tamper_copy(&cfg, "rewritten");
    // The attacker edits 12 and re-hashes everything after it: only the signature stops them.
    let mut prev = get_env(&store, 11).hash;
    for seq in 12..30 {
        let env = get_env(&store, seq);
        let entry = if seq == 12 {
            with_user(&env, "mallory")
        } else {
            env.entry.clone()
        };
        let sealed = Envelope::seal(seq, prev, entry);
        prev = sealed.hash;
        put_env(&store, seq, &sealed);
    }
    let b = broken(&store, None);
    assert_eq!((b.seq, b.reason), (19, BreakReason::Edited), "{b:?}");
    assert!(b.detail.contains("checkpoint"), "{}", b.detail);
}

#[tokio::test]
async fn a_deleted_record_is_found() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = build_store(dir.path(), 30).await;
    let store = tamper_copy(&cfg, "deleted");
    store.remove(Tree::Audit, &seq_key(15)).unwrap();
    let b = broken(&store, None);
    assert_eq!((b.seq, b.reason), (15, BreakReason::Deleted), "{b:?}");

    let head = tamper_copy(&cfg, "head-deleted");
    head.remove_range(Tree::Audit, &seq_key(0), &seq_key(5))
        .unwrap();
    let b = broken(&head, None);
    assert_eq!((b.seq, b.reason), (0, BreakReason::Deleted), "{b:?}");
}

#[tokio::test]
async fn swapped_records_are_found() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = build_store(dir.path(), 30).await;
    let store = tamper_copy(&cfg, "swapped");
    let (a, b) = (get_env(&store, 15), get_env(&store, 16));
    put_env(&store, 15, &b);
    put_env(&store, 16, &a);
    let brk = broken(&store, None);
    assert_eq!(
        (brk.seq, brk.reason),
        (15, BreakReason::Reordered),
        "{brk:?}"
    );

    // Swapped and renumbered with valid hashes: the chain links no longer fit.
    let store = tamper_copy(&cfg, "swapped-renumbered");
    let (a, b) = (get_env(&store, 15), get_env(&store, 16));
    put_env(
        &store,
        15,
        &Envelope::seal(15, b.prev_hash, b.entry.clone()),
    );
    put_env(
        &store,
        16,
        &Envelope::seal(16, a.prev_hash, a.entry.clone()),
    );
    let brk = broken(&store, None);
    assert_eq!(
        (brk.seq, brk.reason),
        (15, BreakReason::Reordered),
        "{brk:?}"
    );
}

#[tokio::test]
async fn a_truncated_tail_is_found() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = build_store(dir.path(), 30).await;
    let store = tamper_copy(&cfg, "truncated");
    store
        .remove_range(Tree::Audit, &seq_key(25), &seq_key(30))
        .unwrap();
    let b = broken(&store, None);
    assert_eq!((b.seq, b.reason), (25, BreakReason::Truncated), "{b:?}");

    // Reopening a truncated store for appending is refused rather than papered over.
    let cfg2 = RecordConfig {
        path: Some(
            cfg.path
                .as_ref()
                .unwrap()
                .parent()
                .unwrap()
                .join("truncated"),
        ),
        ..cfg.clone()
    };
    drop(store);
    let err = Recorder::open(&cfg2, metrics()).err().unwrap();
    assert!(matches!(err, RecordError::Corrupt(_)), "{err}");
}

#[tokio::test]
async fn forged_checkpoints_and_wrong_keys_are_found() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = build_store(dir.path(), 30).await;
    let store = tamper_copy(&cfg, "forged");
    let raw = store.get(Tree::Checkpoints, &seq_key(19)).unwrap().unwrap();
    let mut cp: Checkpoint = decode(&raw).unwrap();
    cp.signature[0] ^= 1;
    store
        .insert(Tree::Checkpoints, &seq_key(19), &encode(&cp).unwrap())
        .unwrap();
    let b = broken(&store, None);
    assert_eq!((b.seq, b.reason), (19, BreakReason::BadCheckpoint), "{b:?}");

    let clean = SledStore::open(cfg.path.as_ref().unwrap(), 1 << 20).unwrap();
    let other = ed25519_dalek::SigningKey::from_bytes(&[1; 32]).verifying_key();
    let report = verify(&clean, None, Some(&other)).unwrap();
    assert_eq!(
        report.broken.map(|b| (b.seq, b.reason)),
        Some((9, BreakReason::BadCheckpoint))
    );
}

#[tokio::test]
async fn retention_deletes_old_records_behind_a_tombstone_that_verifies() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.retention.max_age_days = Some(7);
    let recorder = Recorder::open(&cfg, metrics()).unwrap();
    let now = now_unix_nanos();
    let day = 86_400 * 1_000_000_000u64;
    for i in 0..12u64 {
        let mut r = sample_request(&format!("old{i}"), "get", "prod");
        r.time_ns = now - 30 * day;
        recorder.append(AuditEntry::Request(r)).unwrap();
    }
    for i in 0..5u64 {
        let mut r = sample_request(&format!("new{i}"), "get", "prod");
        r.time_ns = now - day;
        recorder.append(AuditEntry::Request(r)).unwrap();
    }
    let report = recorder.run_retention(now).unwrap();
    assert_eq!(report.audit_deleted, 12);
    assert_eq!(report.tombstone_seq, Some(17));
    let store = recorder.store();
    let v = verify(store.as_ref(), None, Some(&verifying_key())).unwrap();
    assert!(v.is_ok(), "{v}");
    assert_eq!((v.records, v.tombstones), (6, 1));
    assert_eq!(v.first_seq, Some(12));
    // Nothing more to delete; a second pass leaves the chain alone.
    let again = recorder.run_retention(now).unwrap();
    assert_eq!(again.audit_deleted, 0);
    let rows = query(store.as_ref(), &AuditFilter::default()).unwrap();
    assert_eq!(rows.len(), 5);
    assert!(rows
        .iter()
        .all(|r| r.request.identity.as_ref().unwrap().user.starts_with("new")));

    // Deleting the head without a tombstone is still tampering.
    store
        .remove_range(Tree::Audit, &seq_key(12), &seq_key(14))
        .unwrap();
    let v = verify(store.as_ref(), None, Some(&verifying_key())).unwrap();
    assert_eq!(
        v.broken.map(|b| (b.seq, b.reason)),
        Some((0, BreakReason::Deleted))
    );
}

#[tokio::test]
async fn retention_by_size_keeps_the_newest_records() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.retention.max_audit_bytes = Some(2_000);
    let recorder = Recorder::open(&cfg, metrics()).unwrap();
    for i in 0..40 {
        recorder.append(request(&format!("u{i}"), "get")).unwrap();
    }
    let report = recorder.run_retention(now_unix_nanos()).unwrap();
    assert!(report.audit_deleted > 0 && report.audit_deleted < 40);
    let store = recorder.store();
    let mut total = 0;
    for kv in store.range_from(Tree::Audit, &seq_key(0)) {
        total += kv.unwrap().1.len();
    }
    // The tombstone is appended after the cut, so allow its size on top.
    assert!(total <= 2_000 + 400, "{total}");
    let v = verify(store.as_ref(), None, Some(&verifying_key())).unwrap();
    assert!(v.is_ok(), "{v}");
}

#[tokio::test]
async fn reopening_after_an_unclean_stop_recovers_seq_and_chain_tip() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path());
    let recorder = Recorder::open(&cfg, metrics()).unwrap();
    for i in 0..23 {
        recorder
            .append_durable(request(&format!("d{i}"), "delete"))
            .await
            .unwrap();
    }
    for i in 0..5 {
        recorder.append(request(&format!("g{i}"), "get")).unwrap();
    }
    // The state on disk while the gateway is still running: what a kill -9 leaves.
    let crashed = dir.path().join("crashed");
    copy_dir(cfg.path.as_ref().unwrap(), &crashed);
    let crashed_cfg = RecordConfig {
        path: Some(crashed),
        ..cfg.clone()
    };
    let reopened = Recorder::open(&crashed_cfg, metrics()).unwrap();
    let next = reopened.next_seq();
    assert!(
        (23..=28).contains(&next),
        "every durable record survives: next seq {next}"
    );
    let seq = reopened
        .append_durable(request("after", "create"))
        .await
        .unwrap();
    assert_eq!(seq, next);
    let v = verify(reopened.store().as_ref(), None, Some(&verifying_key())).unwrap();
    assert!(v.is_ok(), "{v}");
    assert_eq!(v.records, next + 1);
    // Checkpoints every 10 records: what came after the last one is reported as unsigned.
    assert_eq!(v.last_checkpoint, Some(19));
    let unsigned = next - 19;
    assert!(
        v.to_string().contains(&format!(
            "the {unsigned} records after seq 19 are not yet signed"
        )),
        "{v}"
    );
    drop(recorder);
}

#[tokio::test]
async fn close_waits_for_open_sessions_then_signs_and_flushes_the_tail() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path());
    let recorder = Recorder::open(&cfg, metrics()).unwrap();
    // 13 records: the count-based checkpoint signs seq 9, not the tail.
    for i in 0..13 {
        recorder.append(request(&format!("g{i}"), "get")).unwrap();
    }
    let writer = recorder.open_session(meta("ending")).unwrap();
    writer.frame(FrameKind::Stdout, b"last words\n").unwrap();
    // The session ends a little after shutdown began, as when a cancelled task's state is
    // dropped (the gateway's `SessionRecording` closes its writer on drop).
    let ender = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(200));
        writer.frame(FrameKind::Stdout, b"really last\n").unwrap();
        writer.close(None, Some("the gateway is stopping".into()));
    });
    recorder.close(Duration::from_secs(10)).unwrap();
    ender.join().unwrap();
    assert!(matches!(
        recorder.append(request("late", "get")),
        Err(RecordError::RecorderStopped)
    ));
    assert!(matches!(
        recorder.open_session(meta("late")),
        Err(RecordError::RecorderStopped)
    ));
    let store = recorder.store();
    let report = verify(store.as_ref(), None, Some(&verifying_key())).unwrap();
    assert!(report.is_ok(), "{report}");
    assert_eq!(
        (report.last_seq, report.last_checkpoint),
        (Some(12), Some(12))
    );
    assert!(
        report.to_string().contains("the tail is signed"),
        "{report}"
    );
    // Both frames were written before close returned (the session thread was joined).
    let session = find_session(store.as_ref(), "ending").unwrap();
    assert!(session.end_ns.is_some(), "{session:?}");
    let frames = session_frames(store.as_ref(), session.seq).unwrap();
    assert_eq!(frames.len(), 2, "{frames:?}");
}

/// A store whose frame writes wait for a gate and whose flush can be made to fail.
struct GatedStore {
    inner: SledStore,
    gate: Mutex<bool>,
    opened: Condvar,
    fail_flush: std::sync::atomic::AtomicBool,
}

impl GatedStore {
    fn open_gate(&self) {
        *self.gate.lock().unwrap() = true;
        self.opened.notify_all();
    }
}

impl Store for GatedStore {
    fn insert(&self, tree: Tree, key: &[u8], value: &[u8]) -> Result<(), StoreError> {
        self.inner.insert(tree, key, value)
    }
    fn write_frames(&self, session_seq: u64, offset: u64, bytes: &[u8]) -> Result<(), StoreError> {
        let mut open = self.gate.lock().unwrap();
        while !*open {
            open = self.opened.wait(open).unwrap();
        }
        drop(open);
        self.inner.write_frames(session_seq, offset, bytes)
    }
    fn close_frames(&self, session_seq: u64, end: u64) -> Result<(), StoreError> {
        self.inner.close_frames(session_seq, end)
    }
    fn frames(&self, session_seq: u64) -> Result<ReadFrames, StoreError> {
        self.inner.frames(session_seq)
    }
    fn remove_frames(&self, session_seq: u64) -> Result<(), StoreError> {
        self.inner.remove_frames(session_seq)
    }
    fn get(&self, tree: Tree, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        self.inner.get(tree, key)
    }
    fn remove(&self, tree: Tree, key: &[u8]) -> Result<(), StoreError> {
        self.inner.remove(tree, key)
    }
    fn remove_range(&self, tree: Tree, start: &[u8], end: &[u8]) -> Result<u64, StoreError> {
        self.inner.remove_range(tree, start, end)
    }
    fn last(&self, tree: Tree) -> Result<Option<KeyValue>, StoreError> {
        self.inner.last(tree)
    }
    fn first(&self, tree: Tree) -> Result<Option<KeyValue>, StoreError> {
        self.inner.first(tree)
    }
    fn range_from<'a>(&'a self, tree: Tree, start: &[u8]) -> KvIter<'a> {
        self.inner.range_from(tree, start)
    }
    fn scan_prefix<'a>(&'a self, tree: Tree, prefix: &[u8]) -> KvIter<'a> {
        self.inner.scan_prefix(tree, prefix)
    }
    fn flush(&self) -> Result<(), StoreError> {
        if self.fail_flush.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(StoreError::Io("disk on fire".into()));
        }
        self.inner.flush()
    }
}

fn gated(dir: &Path, gate_open: bool) -> Arc<GatedStore> {
    Arc::new(GatedStore {
        inner: SledStore::open(&dir.join("gated"), 1 << 20).unwrap(),
        gate: Mutex::new(gate_open),
        opened: Condvar::new(),
        fail_flush: std::sync::atomic::AtomicBool::new(false),
    })
}

fn signer() -> ed25519_dalek::SigningKey {
    ed25519_dalek::SigningKey::from_bytes(&KEY_SEED)
}

fn meta(id: &str) -> SessionMeta {
    SessionMeta {
        session_id: id.into(),
        kind: SessionKind::Exec,
        pod: "web-0".into(),
        namespace: "prod".into(),
        container: "app".into(),
        command: vec!["sh".into()],
        tty: true,
        stdin: true,
        ports: vec![],
        identity: None,
        protocol: SessionProtocol::Spdy,
        start_ns: 0,
        request_seq: Some(1),
        frames_recorded: true,
    }
}

/// Waits for the session writer thread to drain (bounded; no timing assertion).
fn wait_until(mut done: impl FnMut() -> bool) {
    for _ in 0..500 {
        if done() {
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    panic!("condition not reached");
}

#[tokio::test]
async fn a_durable_append_fails_closed_when_the_flush_fails() {
    let dir = tempfile::tempdir().unwrap();
    let store = gated(dir.path(), true);
    let recorder =
        Recorder::with_store(store.clone(), signer(), &config(dir.path()), metrics()).unwrap();
    recorder
        .append_durable(request("a", "create"))
        .await
        .unwrap();
    store
        .fail_flush
        .store(true, std::sync::atomic::Ordering::SeqCst);
    let err = recorder
        .append_durable(request("a", "delete"))
        .await
        .unwrap_err();
    assert!(matches!(err, RecordError::FlushFailed(_)), "{err}");
    store
        .fail_flush
        .store(false, std::sync::atomic::Ordering::SeqCst);
    recorder
        .append_durable(request("a", "patch"))
        .await
        .unwrap();
    // A failed last flush at shutdown is reported, not taken for a clean stop.
    recorder.append(request("a", "get")).unwrap();
    store
        .fail_flush
        .store(true, std::sync::atomic::Ordering::SeqCst);
    assert!(matches!(
        recorder.close(Duration::ZERO),
        Err(RecordError::FlushFailed(_))
    ));
}

#[tokio::test]
async fn sessions_record_frames_in_order_and_close_with_totals() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path());
    let recorder = Recorder::open(&cfg, metrics()).unwrap();
    let writer = recorder.open_session(meta("sess-1")).unwrap();
    let other_half = writer.clone();
    writer
        .frame(FrameKind::Resize, br#"{"Width":100,"Height":30}"#)
        .unwrap();
    other_half.frame(FrameKind::Stdin, b"echo hi\r").unwrap();
    writer
        .frame(FrameKind::Stdout, b"echo hi\r\nhi\r\n")
        .unwrap();
    writer.frame(FrameKind::Stderr, b"warn\n").unwrap();
    writer
        .frame(FrameKind::Status, br#"{"status":"Success"}"#)
        .unwrap();
    writer.close(Some(0), None);
    assert!(matches!(
        other_half.frame(FrameKind::Stdout, b"late"),
        Err(RecordError::SessionClosed)
    ));
    drop(other_half);
    let store = recorder.store();
    wait_until(|| {
        find_session(store.as_ref(), "sess-1")
            .map(|s| s.end_ns.is_some())
            .unwrap_or(false)
    });
    let session = find_session(store.as_ref(), "sess-1").unwrap();
    assert_eq!(session, find_session(store.as_ref(), "0").unwrap());
    assert_eq!(session.exit_code, Some(0));
    assert_eq!(
        (
            session.stdin_bytes,
            session.stdout_bytes,
            session.stderr_bytes
        ),
        (8, 13, 5)
    );
    assert_eq!(session.frames, 5);
    assert!(session.meta.start_ns > 0);
    let frames = session_frames(store.as_ref(), session.seq).unwrap();
    let kinds: Vec<FrameKind> = frames
        .iter()
        .map(|f| match &f.event {
            FrameEvent::Data { kind, .. } => *kind,
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(
        kinds,
        vec![
            FrameKind::Resize,
            FrameKind::Stdin,
            FrameKind::Stdout,
            FrameKind::Stderr,
            FrameKind::Status
        ]
    );
    assert!(frames.windows(2).all(|w| w[0].t_us <= w[1].t_us));
    let cast = replay::to_asciicast(&session, &frames);
    assert!(
        cast.starts_with(r#"{"#) && cast.contains(r#""i","echo hi\r""#),
        "{cast}"
    );
    assert_eq!(list_sessions(store.as_ref()).unwrap().len(), 1);
    assert!(matches!(
        find_session(store.as_ref(), "nope"),
        Err(RecordError::NoSuchSession(_))
    ));
}

#[tokio::test]
async fn port_forward_payload_is_counted_and_stored_only_when_configured() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path());
    let recorder = Recorder::open(&cfg, metrics()).unwrap();
    let mut m = meta("pf-1");
    m.kind = SessionKind::PortForward;
    m.ports = vec![8080];
    let writer = recorder.open_session(m).unwrap();
    writer
        .frame(
            FrameKind::PortForwardOpen {
                port: 8080,
                stream: 1,
            },
            b"",
        )
        .unwrap();
    for (to_pod, data) in [(true, &b"GET /"[..]), (false, &b"HTTP/1.1 200 OK"[..])] {
        writer
            .frame(
                FrameKind::PortForwardData {
                    port: 8080,
                    stream: 1,
                    to_pod,
                },
                data,
            )
            .unwrap();
    }
    writer.close(None, None);
    let store = recorder.store();
    wait_until(|| {
        find_session(store.as_ref(), "pf-1")
            .map(|s| s.end_ns.is_some())
            .unwrap_or(false)
    });
    let s = find_session(store.as_ref(), "pf-1").unwrap();
    assert_eq!(s.port_forward.len(), 1);
    assert_eq!(
        (
            s.port_forward[0].bytes_to_pod,
            s.port_forward[0].bytes_from_pod
        ),
        (5, 15)
    );
    let frames = session_frames(store.as_ref(), s.seq).unwrap();
    assert_eq!(frames.len(), 1, "payload not stored by default: {frames:?}");
}

#[tokio::test]
async fn a_session_that_outruns_the_disk_is_terminated_with_a_marker() {
    let dir = tempfile::tempdir().unwrap();
    let store = gated(dir.path(), false);
    let mut cfg = config(dir.path());
    cfg.session_queue_max_bytes = 64 * 1024;
    let m = metrics();
    let recorder = Recorder::with_store(store.clone(), signer(), &cfg, m.clone()).unwrap();
    let writer = recorder.open_session(meta("flood")).unwrap();
    let chunk = vec![b'x'; 16 * 1024];
    let mut accepted = 0;
    let err = loop {
        match writer.frame(FrameKind::Stdout, &chunk) {
            Ok(()) => accepted += 1,
            Err(e) => break e,
        }
        assert!(accepted < 100, "never overflowed");
    };
    assert!(matches!(err, RecordError::SessionOverflow { .. }), "{err}");
    assert!(matches!(
        writer.frame(FrameKind::Stdout, b"more"),
        Err(RecordError::SessionOverflow { .. })
    ));
    assert_eq!(
        m.session_overflows.with_label_values(&["terminate"]).get(),
        1
    );
    assert!(m.session_queue_bytes.get() > 0);
    store.open_gate();
    writer.close(None, Some("recording overflow".into()));
    wait_until(|| {
        find_session(store.as_ref(), "flood")
            .map(|s| s.end_ns.is_some())
            .unwrap_or(false)
    });
    let s = find_session(store.as_ref(), "flood").unwrap();
    assert!(s.overflowed);
    let frames = session_frames(store.as_ref(), s.seq).unwrap();
    assert_eq!(frames.len(), accepted + 1);
    assert!(matches!(
        frames.last().unwrap().event,
        FrameEvent::Overflow { .. }
    ));
    assert_eq!(m.session_queue_bytes.get(), 0);
}

#[tokio::test]
async fn mark_gap_drops_frames_and_records_how_much() {
    let dir = tempfile::tempdir().unwrap();
    let store = gated(dir.path(), false);
    let mut cfg = config(dir.path());
    cfg.session_queue_max_bytes = 64 * 1024;
    cfg.on_session_overflow = OverflowPolicy::MarkGap;
    let m = metrics();
    let recorder = Recorder::with_store(store.clone(), signer(), &cfg, m.clone()).unwrap();
    let writer = recorder.open_session(meta("gappy")).unwrap();
    let chunk = vec![b'y'; 16 * 1024];
    for _ in 0..10 {
        writer.frame(FrameKind::Stdout, &chunk).unwrap();
    }
    let dropped = m.session_dropped_bytes.get();
    assert!(dropped > 0);
    store.open_gate();
    wait_until(|| m.session_queue_bytes.get() == 0);
    writer.frame(FrameKind::Stdout, b"after").unwrap();
    writer.close(Some(0), None);
    wait_until(|| {
        find_session(store.as_ref(), "gappy")
            .map(|s| s.end_ns.is_some())
            .unwrap_or(false)
    });
    let s = find_session(store.as_ref(), "gappy").unwrap();
    assert_eq!(s.dropped_bytes, dropped);
    assert!(!s.overflowed);
    let frames = session_frames(store.as_ref(), s.seq).unwrap();
    let gap = frames
        .iter()
        .find_map(|f| match f.event {
            FrameEvent::Gap { dropped_bytes, .. } => Some(dropped_bytes),
            _ => None,
        })
        .expect("a gap marker");
    assert_eq!(gap, dropped);
    assert!(matches!(
        &frames.last().unwrap().event,
        FrameEvent::Data { data, .. } if data == b"after"
    ));
}

#[tokio::test]
async fn bodies_are_cut_to_the_limit_and_query_filters() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.max_body_bytes = 4;
    let recorder = Recorder::open(&cfg, metrics()).unwrap();
    let mut r = sample_request("alice", "create", "prod");
    r.original_destination = Some("203.0.113.10:443".into());
    r.client_cgroup_id = Some(4242);
    let seq = recorder
        .append_durable(AuditEntry::Request(r))
        .await
        .unwrap();
    recorder
        .append(AuditEntry::Completion(CompletionEntry {
            id: "x".into(),
            time_ns: now_unix_nanos(),
            node: String::new(),
            request_seq: seq,
            status: Some(201),
            latency_us: 1500,
            request_bytes: 14,
            response_bytes: 300,
            error: None,
            body: Some(b"{\"kind\":\"Pod\"}".to_vec()),
            body_truncated: false,
            body_omitted: None,
        }))
        .unwrap();
    let mut denied = sample_request("bob", "delete", "kube-system");
    denied.decision = Decision::Deny;
    denied.status = Some(403);
    recorder.append(AuditEntry::Request(denied)).unwrap();
    recorder.append(request("alice", "get")).unwrap();
    let store = recorder.store();

    let all = query(store.as_ref(), &AuditFilter::default()).unwrap();
    assert_eq!(all.len(), 3, "completions join their request");
    let first = &all[0];
    let completion = &first.completion.as_ref().unwrap().1;
    assert_eq!(completion.body.as_deref(), Some(&b"{\"ki"[..]));
    assert!(completion.body_truncated);
    assert_eq!(completion.status, Some(201));
    let json = query::row_json(first);
    assert_eq!(json["status"], 201);
    assert_eq!(json["user"], "alice");
    assert_eq!(json["request_body"], "{\"ki");
    assert_eq!(json["request_body_truncated"], true);
    assert!(json["request_body_omitted"].is_null());
    assert_eq!(json["original_destination"], "203.0.113.10:443");
    assert_eq!(json["client_cgroup_id"], 4242);
    assert!(
        query::row_json(&all[1])["original_destination"].is_null(),
        "not redirected"
    );

    let by = |f: AuditFilter| -> Vec<u64> {
        query(store.as_ref(), &f)
            .unwrap()
            .iter()
            .map(|r| r.seq)
            .collect()
    };
    assert_eq!(
        by(AuditFilter {
            user: Some("alice".into()),
            ..Default::default()
        }),
        vec![0, 3]
    );
    assert_eq!(
        by(AuditFilter {
            decision: Some(Decision::Deny),
            ..Default::default()
        }),
        vec![2]
    );
    assert_eq!(
        by(AuditFilter {
            namespace: Some("kube-system".into()),
            verb: Some("delete".into()),
            resource: Some("pods".into()),
            ..Default::default()
        }),
        vec![2]
    );
    assert_eq!(
        by(AuditFilter {
            resource: Some("pods/exec".into()),
            ..Default::default()
        }),
        Vec::<u64>::new()
    );
    assert_eq!(
        by(AuditFilter {
            until_ns: Some(1),
            ..Default::default()
        }),
        Vec::<u64>::new()
    );
    let table = query::format_table(&all);
    assert_eq!(table.lines().count(), 4);
    assert!(table.contains("deny"));
}

#[test]
fn config_keys_and_defaults() {
    let cfg: RecordConfig = serde_saphyr::from_str(
        "path: /var/lib/portcullis\nsigning_key_file: /etc/portcullis/audit.pem\non_session_overflow: mark_gap\nretention:\n  max_age_days: 90\n",
    )
    .unwrap();
    assert_eq!(cfg.read_flush_interval_ms, 50);
    assert_eq!(cfg.checkpoint_every_records, 1000);
    assert_eq!(cfg.on_session_overflow, OverflowPolicy::MarkGap);
    assert_eq!(cfg.retention.max_age_days, Some(90));
    assert_eq!(cfg.retention.interval_seconds, 3600);
    assert!(cfg.validate().is_ok());
    assert!(serde_saphyr::from_str::<RecordConfig>("pth: /x\n").is_err());
    let no_key: RecordConfig = serde_saphyr::from_str("path: /x\n").unwrap();
    assert!(no_key.validate().unwrap_err().contains("signing_key_file"));
    assert!(!RecordConfig::default().enabled());
}

#[tokio::test]
async fn cli_commands_read_a_closed_store() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = build_store(dir.path(), 12).await;
    {
        let recorder = Recorder::open(&cfg, metrics()).unwrap();
        let writer = recorder.open_session(meta("cli-sess")).unwrap();
        writer.frame(FrameKind::Stdout, b"hello\n").unwrap();
        writer.close(Some(7), None);
    }
    let target = cli::Target {
        path: cfg.path.clone().unwrap(),
        key_file: cfg.signing_key_file.clone(),
    };
    let mut out = Vec::new();
    assert!(cli::audit_verify(&target, None, None, &mut out).unwrap());
    let text = String::from_utf8(out).unwrap();
    assert!(text.starts_with("OK: 12 records"), "{text}");
    assert!(text.contains("configured key"), "{text}");

    let mut out = Vec::new();
    let filter = AuditFilter {
        verb: Some("delete".into()),
        ..Default::default()
    };
    assert_eq!(
        cli::audit_query(&target, &filter, true, &mut out).unwrap(),
        4
    );
    let lines: Vec<serde_json::Value> = String::from_utf8(out)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 4);
    assert!(lines.iter().all(|l| l["verb"] == "delete"));

    let mut out = Vec::new();
    cli::sessions_list(&target, true, &mut out).unwrap();
    let listed: serde_json::Value =
        serde_json::from_str(String::from_utf8(out).unwrap().trim()).unwrap();
    assert_eq!(listed["session_id"], "cli-sess");
    assert_eq!(listed["exit_code"], 7);

    let mut cast = Vec::new();
    cli::export_asciicast(&target, "cli-sess", &mut cast).unwrap();
    let cast = String::from_utf8(cast).unwrap();
    assert!(cast.contains(r#""o","hello\n""#), "{cast}");

    let (mut out, mut err) = (Vec::new(), Vec::new());
    cli::replay(
        &target,
        "0",
        100.0,
        Duration::from_millis(10),
        &mut out,
        &mut err,
    )
    .unwrap();
    assert_eq!(out, b"hello\n");
    assert!(String::from_utf8(err).unwrap().contains("exit code 7"));

    let missing = cli::Target {
        path: dir.path().join("nowhere"),
        key_file: None,
    };
    assert!(cli::audit_verify(&missing, None, None, &mut Vec::new()).is_err());
    assert!(!dir.path().join("nowhere").exists(), "no store created");
}

#[tokio::test]
async fn a_retention_pass_interrupted_before_deleting_still_verifies() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path());
    let recorder = Recorder::open(&cfg, metrics()).unwrap();
    for i in 0..20 {
        recorder.append(request(&format!("u{i}"), "get")).unwrap();
    }
    let store = recorder.store();
    let env9: Envelope = decode(&store.get(Tree::Audit, &seq_key(9)).unwrap().unwrap()).unwrap();
    // The tombstone is written first; the crash comes before any deletion.
    recorder
        .inner
        .shared
        .insert(ChainEntry::Tombstone(Tombstone {
            time_ns: now_unix_nanos(),
            node: "node-a".into(),
            first_kept_seq: 10,
            last_deleted_hash: env9.hash,
            deleted_records: 10,
            reason: "retention".into(),
        }))
        .unwrap();
    let key = verifying_key();
    let ok = |store: &dyn Store| verify(store, None, Some(&key)).unwrap();
    assert!(ok(store.as_ref()).is_ok(), "{}", ok(store.as_ref()));
    // Partly deleted, then fully deleted: both fine.
    store
        .remove_range(Tree::Audit, &seq_key(0), &seq_key(4))
        .unwrap();
    assert!(ok(store.as_ref()).is_ok(), "{}", ok(store.as_ref()));
    store
        .remove_range(Tree::Audit, &seq_key(0), &seq_key(10))
        .unwrap();
    let report = ok(store.as_ref());
    assert!(report.is_ok(), "{report}");
    assert_eq!((report.first_seq, report.records), (Some(10), 11));
    // One record more than the tombstone covers is tampering.
    store.remove(Tree::Audit, &seq_key(10)).unwrap();
    let report = ok(store.as_ref());
    assert_eq!(
        report.broken.map(|b| (b.seq, b.reason)),
        Some((0, BreakReason::Deleted))
    );
}

#[tokio::test]
async fn a_store_of_another_schema_is_refused_but_still_hash_checked() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = build_store(dir.path(), 3).await;
    {
        // Reseal the tail as if an older build had written it (same bytes, schema 1).
        let store = SledStore::open(cfg.path.as_ref().unwrap(), 1 << 20).unwrap();
        let last = get_env(&store, 2);
        let older = Envelope {
            schema: 1,
            hash: crate::record::entry::chain_hash(1, 2, &last.prev_hash, &last.entry),
            ..last
        };
        put_env(&store, 2, &older);
        store.flush().unwrap();
    }
    let err = Recorder::open(&cfg, metrics()).err().unwrap().to_string();
    assert!(err.contains("schema 1") && err.contains("new one"), "{err}");
    // Not decoded, but its hash links: an edit to it is still found.
    let store = SledStore::open(cfg.path.as_ref().unwrap(), 1 << 20).unwrap();
    let mut older = get_env(&store, 2);
    older.entry[0] ^= 1;
    put_env(&store, 2, &older);
    assert_eq!(broken(&store, None).seq, 2);
}

#[tokio::test]
async fn query_fails_on_a_record_it_cannot_decode_instead_of_leaving_it_out() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = build_store(dir.path(), 3).await;
    let store = SledStore::open(cfg.path.as_ref().unwrap(), 1 << 20).unwrap();
    assert_eq!(query(&store, &AuditFilter::default()).unwrap().len(), 3);
    // A well-sealed record (hash and link intact) whose entry is not a ChainEntry.
    let last = get_env(&store, 2);
    let garbage = vec![0xff; 8];
    let resealed = Envelope::seal(2, last.prev_hash, garbage);
    put_env(&store, 2, &resealed);
    let err = query(&store, &AuditFilter::default())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("record 2") && err.contains("audit verify"),
        "{err}"
    );
}

#[test]
fn frame_data_is_encoded_as_bytes_exactly_like_a_sequence_of_u8() {
    // The stored format predates `serde_bytes` on these fields: it must not have changed.
    #[derive(serde::Serialize)]
    enum MirrorEvent {
        Data { kind: FrameKind, data: Vec<u8> },
    }
    let data: Vec<u8> = (0..=255u8).chain(0..=255u8).collect();
    let ours = encode(&FrameEvent::Data {
        kind: FrameKind::Stdout,
        data: data.clone(),
    })
    .unwrap();
    let mirror = encode(&MirrorEvent::Data {
        kind: FrameKind::Stdout,
        data,
    })
    .unwrap();
    assert_eq!(ours, mirror);
}

#[test]
fn a_data_frame_prefix_followed_by_its_bytes_is_a_frame_record() {
    let kind = FrameKind::PortForwardData {
        port: 8080,
        stream: 3,
        to_pod: true,
    };
    // Lengths whose varint takes 1, 2 and 3 bytes, and their edges.
    for len in [0usize, 7, 127, 128, 16_383, 16_384, 70_000] {
        let data: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
        let mut value = session::encode_data_prefix(1234, kind, len).unwrap();
        value.extend_from_slice(&data);
        let owned = FrameRecord {
            schema: SCHEMA_VERSION,
            t_us: 1234,
            event: FrameEvent::Data { kind, data },
        };
        assert_eq!(value, encode(&owned).unwrap(), "len {len}");
        assert_eq!(decode::<FrameRecord>(&value).unwrap(), owned);
    }
}

#[tokio::test]
async fn an_open_sessions_frames_reach_its_file_before_it_ends() {
    // The writer writes the part of a session's block filled so far every group-commit
    // interval: a crash in a long session loses its last moments, not the session.
    let dir = tempfile::tempdir().unwrap();
    let recorder = Recorder::open(&config(dir.path()), metrics()).unwrap();
    let store = recorder.store();
    // Let the writer thread reach its wait for a block first: opening a session must wake it
    // (a quiet session may never fill one).
    std::thread::sleep(Duration::from_millis(100));
    let writer = recorder.open_session(meta("live")).unwrap();
    let on_disk = |n: usize| {
        session_frames(store.as_ref(), writer.seq())
            .map(|frames| frames.len() == n)
            .unwrap_or(false)
    };
    writer.frame(FrameKind::Stdout, b"first").unwrap();
    wait_until(|| on_disk(1));
    writer.frame(FrameKind::Stdin, b"second").unwrap();
    wait_until(|| on_disk(2));
    // More than a block: full blocks and the part after them.
    let big = vec![b'z'; 300 * 1024];
    writer.frame(FrameKind::Stdout, &big).unwrap();
    wait_until(|| on_disk(3));
    let frames = session_frames(store.as_ref(), writer.seq()).unwrap();
    assert!(matches!(&frames[2].event, FrameEvent::Data { data, .. } if *data == big));
    writer.close(Some(0), None);
}
