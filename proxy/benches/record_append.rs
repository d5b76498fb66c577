//! Recorder throughput: audit records appended per second (group commit, durable one at a time,
//! durable with many in flight) and session frame bytes per second. Prints figures; asserts
//! nothing about time. Run: `cargo bench -p portcullis --bench record_append [-- DIR]` (DIR: where
//! to put the store, default a temporary directory; the disk under it is what is measured).

use std::time::{Duration, Instant};

use portcullis::metrics::RecorderMetrics;
use portcullis::record::{
    AuditEntry, AuditIdentity, AuditRequest, Decision, FrameKind, RecordConfig, Recorder,
    RequestEntry, SessionKind, SessionMeta, SessionProtocol,
};

fn entry(i: u64, verb: &str) -> AuditEntry {
    AuditEntry::Request(RequestEntry {
        id: format!("bench-{i}"),
        time_ns: portcullis::record::now_unix_nanos(),
        node: String::new(),
        client_addr: Some("127.0.0.1:40000".into()),
        user_agent: Some("kubectl/v1.35.0 (linux/amd64)".into()),
        identity: Some(AuditIdentity {
            user: "system:serviceaccount:agents:mcp".into(),
            groups: vec![
                "system:serviceaccounts".into(),
                "system:serviceaccounts:agents".into(),
            ],
            issuer: "https://oidc.eks.example/id/ABC".into(),
            extra: vec![],
        }),
        request: AuditRequest {
            is_resource_request: true,
            verb: verb.into(),
            api_group: "apps".into(),
            api_version: "v1".into(),
            resource: "deployments".into(),
            subresource: String::new(),
            namespace: "prod".into(),
            name: format!("web-{i}"),
            path: format!("/apis/apps/v1/namespaces/prod/deployments/web-{i}"),
        },
        decision: Decision::Allow,
        reason: None,
        rule: Some("agents-manage-prod".into()),
        approval_id: None,
        impersonated: None,
        status: None,
        original_destination: None,
        client_cgroup_id: None,
    })
}

fn report(name: &str, n: u64, elapsed: Duration) {
    println!(
        "{name:<44} {n:>8} in {:>8.3} s = {:>10.0} /s",
        elapsed.as_secs_f64(),
        n as f64 / elapsed.as_secs_f64()
    );
}

fn main() {
    let arg_dir = std::env::args().skip(1).find(|a| !a.starts_with('-'));
    let tmp = tempfile::tempdir().expect("temporary directory");
    let base = arg_dir.map_or_else(|| tmp.path().to_path_buf(), std::path::PathBuf::from);
    std::fs::create_dir_all(&base).expect("bench directory");
    std::fs::write(base.join("bench.key"), [7u8; 32]).expect("key");
    let cfg = RecordConfig {
        path: Some(base.join("store")),
        signing_key_file: Some(base.join("bench.key")),
        node_name: Some("bench".into()),
        ..RecordConfig::default()
    };
    let metrics = RecorderMetrics::new().expect("metrics");
    let recorder = Recorder::open(&cfg, metrics.clone()).expect("open");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");

    let n = 100_000;
    let t = Instant::now();
    for i in 0..n {
        recorder.append(entry(i, "get")).expect("append");
    }
    recorder.flush().expect("flush");
    report("append (group commit), incl. final flush", n, t.elapsed());

    let n = 300;
    let t = Instant::now();
    rt.block_on(async {
        for i in 0..n {
            recorder
                .append_durable(entry(i, "patch"))
                .await
                .expect("durable");
        }
    });
    report("append_durable, one in flight", n, t.elapsed());

    let n = 20_000u64;
    let in_flight = 64;
    let t = Instant::now();
    rt.block_on(async {
        let mut tasks = Vec::new();
        for w in 0..in_flight {
            let r = recorder.clone();
            tasks.push(tokio::spawn(async move {
                for i in (w..n).step_by(in_flight as usize) {
                    r.append_durable(entry(i, "delete")).await.expect("durable");
                }
            }));
        }
        for task in tasks {
            task.await.expect("task");
        }
    });
    report("append_durable, 64 in flight", n, t.elapsed());

    let writer = recorder
        .open_session(SessionMeta {
            session_id: "bench-session".into(),
            kind: SessionKind::Exec,
            pod: "p".into(),
            namespace: "ns".into(),
            container: "c".into(),
            command: vec!["cat".into(), "/dev/zero".into()],
            tty: false,
            stdin: false,
            ports: vec![],
            identity: None,
            protocol: SessionProtocol::WebSocketV5,
            start_ns: 0,
            request_seq: None,
            frames_recorded: true,
        })
        .expect("session");
    let chunk_kib: usize = std::env::var("RECORD_BENCH_CHUNK_KIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(32);
    let chunk = vec![b'z'; chunk_kib * 1024];
    let total: u64 = 100 * 1024 * 1024;
    let t = Instant::now();
    let mut sent = 0u64;
    let mut waits = 0u64;
    while sent < total {
        // Stay under the session budget (a real session would be ended past it), so the figure
        // is the sustained rate of the writer thread and the disk.
        while metrics.session_queue_bytes.get() > 4 * 1024 * 1024 {
            waits += 1;
            std::thread::sleep(Duration::from_micros(100));
        }
        writer.frame(FrameKind::Stdout, &chunk).expect("frame");
        sent += chunk.len() as u64;
    }
    writer.close(Some(0), None);
    while metrics.session_queue_bytes.get() > 0 {
        std::thread::sleep(Duration::from_micros(100));
    }
    recorder.flush().expect("flush");
    let elapsed = t.elapsed();
    println!(
        "session frames ({chunk_kib} KiB stdout), incl. flush {:>8} MiB in {:>8.3} s = {:>8.1} MiB/s ({waits} backpressure waits)",
        sent / (1024 * 1024),
        elapsed.as_secs_f64(),
        sent as f64 / (1024.0 * 1024.0) / elapsed.as_secs_f64(),
    );
}
