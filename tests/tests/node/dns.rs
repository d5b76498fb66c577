//! Protected hostnames (`protected.hostnames`) against the real kernel: the agent re-resolves
//! the name every `resolve_interval_seconds` (as EKS endpoint IPs change) and moves protection
//! with the answer; a failed lookup keeps the previous addresses protected.
//!
//! The agent resolves through glibc, so it runs in a mount namespace of its own in which a
//! test-owned hosts file (and an nsswitch.conf that consults only files, so no lookup leaves
//! the machine) are bind-mounted over /etc; the machine's real files are never touched. The
//! hosts file is rewritten in place (same inode), which the bind mount shows at once.

use super::*;

const HOST: &str = "api.portcullis.test";

/// The pod's view of both fake API addresses: the reply for 203.0.113.10:443 and for .11:443.
fn replies(fx: &Fixture) -> Result<(String, String)> {
    let first = fx.pod_tcp(ENDPOINT)?;
    let second = fx.pod_tcp(SECOND_ENDPOINT)?;
    Ok((reply(&first).to_string(), reply(&second).to_string()))
}

/// What the gateway stand-in answers for a redirected connection to `original`.
fn via_gateway(original: &str, cgroup_id: u64) -> String {
    format!("gateway {original} {cgroup_id} Addresses")
}

/// Polls (bounded, 10 s) until the pod sees `want` for (.10, .11).
fn wait_for_replies(fx: &Fixture, want: &(String, String), what: &str) -> Result<Duration> {
    let start = Instant::now();
    loop {
        let seen = replies(fx)?;
        if &seen == want {
            return Ok(start.elapsed());
        }
        ensure!(
            start.elapsed() < Duration::from_secs(10),
            "{what}: after 10 s the pod still sees {seen:?}, want {want:?}\n--- agent log ---\n{}",
            fx.agent_log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Writes the hosts file in place (truncate + write on the same inode), so the agent's bind
/// mount sees the new content; a rename would leave the mount on the old file.
fn write_hosts(path: &Path, content: &str) -> Result<()> {
    let mut file = File::options().write(true).truncate(true).open(path)?;
    file.write_all(content.as_bytes())?;
    file.sync_all()?;
    Ok(())
}

#[test]
fn a_protected_hostname_is_re_resolved_and_a_failed_lookup_keeps_the_old_addresses() -> Result<()> {
    let Some(mut fx) = Fixture::new(false)? else {
        return Ok(());
    };
    ensure!(
        Path::new("/etc/nsswitch.conf").exists() && Path::new("/etc/hosts").exists(),
        "this test bind-mounts over /etc/hosts and /etc/nsswitch.conf; both must exist"
    );
    // Protection comes only from the hostname: no fixed endpoint for either address.
    let config = std::fs::read_to_string(&fx.config)?;
    let fixed =
        format!("  endpoints: [\"{ENDPOINT}\", \"{SECOND_ENDPOINT}\", \"{ENDPOINT_V6}\"]\n");
    ensure!(config.contains(&fixed), "fixture config changed: {config}");
    std::fs::write(
        &fx.config,
        config.replace(
            &fixed,
            &format!("  hostnames: [\"{HOST}:443\"]\n  resolve_interval_seconds: 1\n"),
        ),
    )?;
    let hosts = fx.dir.join("hosts");
    std::fs::write(
        &hosts,
        format!("127.0.0.1 localhost\n203.0.113.10 {HOST}\n"),
    )?;
    let nsswitch = fx.dir.join("nsswitch.conf");
    std::fs::write(&nsswitch, "hosts: files\n")?;

    // unshare execs sh, which execs the agent: one process, so killing the child (the
    // fixture does on drop) stops the agent, and its mount namespace goes with it. The
    // fixture's cgroup2 and bpffs mounts exist already, so the copy sees them.
    let mut command = Command::new("unshare");
    command
        .args(["--mount", "--propagation", "private", "sh", "-c"])
        .arg(
            r#"mount --bind "$1" /etc/hosts && mount --bind "$2" /etc/nsswitch.conf && shift 2 && exec "$@""#,
        )
        .arg("sh")
        .arg(&hosts)
        .arg(&nsswitch)
        .arg(harness::portcullis_bin())
        .args(["node", "run", "--config"])
        .arg(&fx.config)
        .env("NO_COLOR", "1")
        .env("RUST_LOG", "info");
    fx.start_agent_with_command(command)?;
    let pid = fx.agent.as_ref().context("agent not running")?.id();
    let exe = std::fs::read_link(format!("/proc/{pid}/exe"))?;
    assert_eq!(
        exe.canonicalize()?,
        harness::portcullis_bin().canonicalize()?,
        "the child must be the agent itself (exec), so killing it stops the agent"
    );
    // The agent pinned into the bpffs the test sees, not into a copy.
    ensure!(
        fx.pins.join("maps").is_dir() && fx.pod_pins().is_dir(),
        "the agent's pins are not under {}:\n{}",
        fx.pins.display(),
        fx.agent_log()
    );
    // The real /etc/hosts outside the agent's namespace is untouched.
    assert!(
        !std::fs::read_to_string("/etc/hosts")?.contains(HOST),
        "the machine's /etc/hosts changed"
    );
    let cgroup_id = fx.pod_cgroup_id();

    // The first resolution happens before "ready": .10 is redirected, .11 is not protected.
    let v = fx.pod_tcp(ENDPOINT)?;
    expect_gateway(&v, ENDPOINT, cgroup_id, "resolved to .10");
    assert_eq!(v["peer"], ENDPOINT, "{v}");
    let v = fx.pod_tcp(SECOND_ENDPOINT)?;
    assert_eq!(reply(&v), "endpoint", ".11 is not protected yet: {v}");

    // The name moves to .11: within a few intervals protection follows it.
    write_hosts(
        &hosts,
        &format!("127.0.0.1 localhost\n203.0.113.11 {HOST}\n"),
    )?;
    let took = wait_for_replies(
        &fx,
        &(
            "endpoint".to_string(),
            via_gateway(SECOND_ENDPOINT, cgroup_id),
        ),
        "re-resolved to .11",
    )?;
    eprintln!("protection moved to .11 after {took:?}");
    let v = fx.pod_tcp(SECOND_ENDPOINT)?;
    assert_eq!(v["peer"], SECOND_ENDPOINT, "{v}");
    let log = fx.agent_log();
    assert!(log.contains("203.0.113.11:443"), "{log}");
    assert!(log.contains("no longer protected"), "{log}");

    // The name stops resolving: the lookups fail, and .11 stays protected through several of
    // them (a failed lookup never removes protection).
    let failures = |fx: &Fixture| {
        fx.agent_log()
            .matches("resolution failed; keeping the previous addresses")
            .count()
    };
    let failed_before = failures(&fx);
    write_hosts(&hosts, "127.0.0.1 localhost\n")?;
    let want = (
        "endpoint".to_string(),
        via_gateway(SECOND_ENDPOINT, cgroup_id),
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while failures(&fx) < failed_before + 3 {
        ensure!(
            Instant::now() < deadline,
            "three failed lookups within 10 s expected:\n{}",
            fx.agent_log()
        );
        let seen = replies(&fx)?;
        assert_eq!(
            seen,
            want,
            "a failed lookup must keep .11 protected\n--- agent log ---\n{}",
            fx.agent_log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(replies(&fx)?, want, "after three failed lookups");

    fx.kill_agent()?;
    Ok(())
}
