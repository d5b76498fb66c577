//! The node agent's own audit log (`record:` in its config): redirects, rejects and drops of a
//! selected pod end up in a hash-chained store, with the pod's identity, readable and
//! verifiable with `portcullis audit query|verify --store DIR` once the agent has stopped.

use super::*;

/// Adds a `record:` section to the fixture's agent config; returns the store and key paths.
fn enable_record(fx: &Fixture) -> Result<(PathBuf, PathBuf)> {
    let store = fx.dir.join("node-audit");
    let key = fx.dir.join("node-audit.pem");
    let mut config = std::fs::read_to_string(&fx.config)?;
    config.push_str(&format!(
        "record:\n  path: {}\n  signing_key_file: {}\n  generate_signing_key: true\n  node_name: test-node\n",
        store.display(),
        key.display()
    ));
    std::fs::write(&fx.config, config)?;
    Ok((store, key))
}

/// SIGTERM, as the kubelet stops a pod; the agent must exit cleanly within 15 s.
fn terminate_agent(fx: &mut Fixture) -> Result<()> {
    let mut agent = fx.agent.take().context("agent not running")?;
    let pid = i32::try_from(agent.id())?;
    // SAFETY: plain syscall on our own child's pid (not yet reaped, so not reused).
    let rc = unsafe { libc::kill(pid, libc::SIGTERM) };
    ensure!(rc == 0, "kill: {}", std::io::Error::last_os_error());
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if let Some(status) = agent.try_wait()? {
            ensure!(
                status.success(),
                "the agent exited with {status} on SIGTERM"
            );
            return Ok(());
        }
        if Instant::now() >= deadline {
            let _ = agent.kill();
            let _ = agent.wait();
            bail!("the agent did not stop within 15 s of SIGTERM");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn redirects_rejects_and_drops_are_audited_with_the_pods_identity() -> Result<()> {
    let Some(mut fx) = Fixture::new(false)? else {
        return Ok(());
    };
    let (store, key) = enable_record(&fx)?;
    fx.start_agent()?;
    assert!(
        fx.agent_log().contains("node audit log open"),
        "{}",
        fx.agent_log()
    );
    let cgroup_id = fx.pod_cgroup_id();

    // Two redirected connects (one record or two, depending on the coalescing window).
    for _ in 0..2 {
        let v = fx.pod_tcp(ENDPOINT)?;
        expect_gateway(&v, ENDPOINT, cgroup_id, "redirect");
    }
    // A refused connect: the protected IP on another port.
    let v = fx.pod_tcp(ENDPOINT_OTHER_PORT)?;
    assert_eq!(v["errno"], libc::EPERM, "refused at connect(): {v}");
    // Dropped packets: an unconnected UDP send and a raw IP socket's hand-made datagram.
    let v = fx.probe(&fx.app_cgroup, &fx.pod_ns, &["udp", ENDPOINT])?;
    assert_eq!(v["ok"], false, "UDP must not get through: {v}");
    fx.probe(&fx.app_cgroup, &fx.pod_ns, &["raw-udp", ENDPOINT])?;
    wait_until(
        || {
            portcullis::redirect::read_counters(&fx.pins)
                .map(|c| c.drops >= 2)
                .unwrap_or(false)
        },
        "two drops in the kernel counters",
    )?;

    // Stopped right away: what is still being coalesced must be written at shutdown.
    terminate_agent(&mut fx)?;
    let log = fx.agent_log();
    assert!(
        log.contains("node audit log flushed and checkpointed"),
        "{log}"
    );
    // The kernel counters (the gateway's /metrics source) still count, and every counted
    // event is in the audit log exactly once.
    let counters = portcullis::redirect::read_counters(&fx.pins)?;

    let store_arg = store.to_string_lossy().into_owned();
    let rows = super::audit_query_json(&["--store".as_ref(), store.as_os_str()])?;
    ensure!(!rows.is_empty(), "no records");
    for row in &rows {
        assert_eq!(row["type"], "node", "only node events here: {row}");
        assert_eq!(row["node"], "test-node", "{row}");
        assert_eq!(row["namespace"], "agents", "the pod's identity: {row}");
        assert_eq!(row["pod"], "mcp", "{row}");
        assert_eq!(row["cgroup_id"], cgroup_id, "the app's cgroup: {row}");
        assert!(row["count"].as_u64().unwrap_or(0) >= 1, "{row}");
    }
    let total = |kind: &str| -> u64 {
        rows.iter()
            .filter(|r| r["kind"] == kind)
            .filter_map(|r| r["count"].as_u64())
            .sum()
    };
    let of_kind =
        |kind: &str| -> Vec<&Value> { rows.iter().filter(|r| r["kind"] == kind).collect() };

    let redirects = of_kind("redirect");
    assert!(!redirects.is_empty(), "{rows:#?}");
    for row in &redirects {
        assert_eq!(
            row["destination"], ENDPOINT,
            "the original destination: {row}"
        );
        assert_eq!(row["protocol"], "tcp", "{row}");
    }
    assert_eq!(total("redirect"), 2, "{rows:#?}");

    let rejects = of_kind("reject");
    assert_eq!(rejects.len(), 1, "{rows:#?}");
    assert_eq!(rejects[0]["destination"], ENDPOINT_OTHER_PORT, "{rows:#?}");
    assert_eq!(rejects[0]["count"], 1, "{rows:#?}");

    let drops = of_kind("drop");
    assert!(!drops.is_empty(), "{rows:#?}");
    for row in &drops {
        // The packet filter matches the IP only: port 0.
        assert_eq!(row["destination"], "203.0.113.10:0", "{row}");
        assert_eq!(row["protocol"], "udp", "{row}");
    }
    assert!(total("drop") >= 2, "{rows:#?}");

    assert_eq!(
        (total("redirect"), total("reject"), total("drop")),
        (counters.redirects, counters.rejects, counters.drops),
        "audit counts and kernel counters disagree: {rows:#?}"
    );

    // Filters: the pod's namespace selects its events, a user filter none of them.
    let table = harness::run_portcullis(&[
        "audit",
        "query",
        "--store",
        &store_arg,
        "--kind",
        "node",
        "--namespace",
        "agents",
    ])?;
    let text = String::from_utf8_lossy(&table.stdout);
    assert!(table.status.success(), "{text}");
    assert!(
        text.contains(&format!(
            "redirect agents/mcp (cgroup {cgroup_id}) to {ENDPOINT} tcp"
        )),
        "{text}"
    );
    let by_user = harness::run_portcullis(&[
        "audit", "query", "--store", &store_arg, "--user", "alice", "--output", "json",
    ])?;
    assert!(by_user.status.success());
    assert!(
        String::from_utf8_lossy(&by_user.stdout).trim().is_empty(),
        "node events have no user"
    );

    // The chain and its signed checkpoint (written at shutdown) verify with the agent's key.
    let key_arg = key.to_string_lossy().into_owned();
    let out =
        harness::run_portcullis(&["audit", "verify", "--store", &store_arg, "--key", &key_arg])?;
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "audit verify: {report}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        report.starts_with(&format!("OK: {} records", rows.len())),
        "{report}"
    );
    assert!(report.contains("configured key"), "{report}");
    assert!(
        report.contains("the tail is signed"),
        "the shutdown checkpoint signs the tail: {report}"
    );
    Ok(())
}
