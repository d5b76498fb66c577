//! Hot reload: the policy in force lives behind an [`ArcSwap`]; a reloader polls the policy
//! files (and optionally the gateway config holding inline rules) about once a second, compiles
//! a changed policy, and swaps it in only if it compiles. A bad edit is logged with its file and
//! line and counted; the old policy stays in force.
//!
//! Polling compares file contents, not modification times: policy files are small, and a rewrite
//! inside one timestamp tick must not go unnoticed.

use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use prometheus::IntCounterVec;
use serde::Deserialize;

use super::compile::{parse_yaml, policy_files};
use super::{Policy, PolicyConfig, PolicyError};

/// How often the reloader looks at the files.
pub const RELOAD_POLL_INTERVAL: Duration = Duration::from_secs(1);

/// The policy in force, shared by every request. Cheap to clone.
#[derive(Clone)]
pub struct PolicyHandle(Arc<ArcSwap<Policy>>);

impl PolicyHandle {
    pub fn new(policy: Policy) -> Self {
        PolicyHandle(Arc::new(ArcSwap::from_pointee(policy)))
    }

    /// The policy in force now. A request should take it once and decide with it.
    pub fn current(&self) -> Arc<Policy> {
        self.0.load_full()
    }

    /// Replaces the policy in force atomically.
    pub fn store(&self, policy: Policy) {
        self.0.store(Arc::new(policy));
    }
}

/// What one look at the files found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReloadOutcome {
    Unchanged,
    /// A new policy is in force; the summary of it.
    Reloaded(String),
    /// The changed files do not compile; the error, with file and line. The old policy stays.
    Failed(String),
}

enum Source {
    /// A fixed `policy:` section; only its `files:` can change.
    Section {
        cfg: PolicyConfig,
        base_dir: PathBuf,
    },
    /// The gateway config file: its `policy:` section is re-read too.
    ConfigFile(PathBuf),
}

/// Only the `policy:` key of a gateway config; the rest is the gateway's business.
#[derive(Deserialize)]
struct PolicySectionOnly {
    #[serde(default)]
    policy: PolicyConfig,
}

type Snapshot = Vec<(PathBuf, Option<Vec<u8>>)>;

/// Watches the policy's files and swaps in each valid new version.
pub struct PolicyReloader {
    handle: PolicyHandle,
    source: Source,
    counter: IntCounterVec,
    last: Mutex<Option<Snapshot>>,
    /// The mask profiles that exist; a new policy naming another is rejected.
    mask_profiles: Option<Vec<String>>,
}

impl PolicyReloader {
    /// Watches the `files:` of a fixed `policy:` section.
    pub fn new(
        handle: PolicyHandle,
        cfg: PolicyConfig,
        base_dir: PathBuf,
        counter: IntCounterVec,
    ) -> Self {
        let reloader = PolicyReloader {
            handle,
            source: Source::Section { cfg, base_dir },
            counter,
            last: Mutex::new(None),
            mask_profiles: None,
        };
        reloader.prime();
        reloader
    }

    /// Watches the gateway config file itself (its inline rules) and the files it names.
    pub fn for_config_file(handle: PolicyHandle, config: PathBuf, counter: IntCounterVec) -> Self {
        let reloader = PolicyReloader {
            handle,
            source: Source::ConfigFile(config),
            counter,
            last: Mutex::new(None),
            mask_profiles: None,
        };
        reloader.prime();
        reloader
    }

    fn section(&self) -> Result<(PolicyConfig, PathBuf, String), PolicyError> {
        match &self.source {
            Source::Section { cfg, base_dir } => {
                Ok((cfg.clone(), base_dir.clone(), "config".into()))
            }
            Source::ConfigFile(path) => {
                let text = std::fs::read_to_string(path).map_err(|error| PolicyError::Read {
                    path: path.clone(),
                    error,
                })?;
                let only: PolicySectionOnly = parse_yaml(&text, path)?;
                let base_dir = path.parent().unwrap_or(Path::new(".")).to_path_buf();
                Ok((only.policy, base_dir, path.display().to_string()))
            }
        }
    }

    /// The files whose contents decide the policy: the config file (if watched), every policy
    /// file, and the listed directories themselves (so that adding a file is noticed).
    fn snapshot(&self) -> Snapshot {
        let mut paths = Vec::new();
        if let Source::ConfigFile(path) = &self.source {
            paths.push(path.clone());
        }
        if let Ok((cfg, base_dir, _)) = self.section() {
            for entry in &cfg.files {
                let p = base_dir.join(entry);
                if p.is_dir() {
                    paths.push(p);
                }
            }
            if let Ok(files) = policy_files(&cfg, &base_dir) {
                paths.extend(files);
            }
        }
        paths
            .into_iter()
            .map(|p| {
                let contents = if p.is_dir() {
                    // A directory's "contents" are its listing, via the files pushed above; its
                    // presence is what matters here.
                    Some(Vec::new())
                } else {
                    std::fs::read(&p).ok()
                };
                (p, contents)
            })
            .collect()
    }

    fn prime(&self) {
        let snapshot = self.snapshot();
        if let Ok(mut last) = self.last.lock() {
            *last = Some(snapshot);
        }
    }

    /// Rejects new policies whose rules name a mask profile not in `names`.
    pub fn with_mask_profiles(mut self, names: Vec<String>) -> Self {
        self.mask_profiles = Some(names);
        self
    }

    fn load(&self) -> Result<Policy, PolicyError> {
        let (cfg, base_dir, label) = self.section()?;
        let policy = Policy::from_config_named(&cfg, &base_dir, &label)?;
        if let Some(names) = &self.mask_profiles {
            policy.check_mask_profiles(|p| names.iter().any(|n| n == p))?;
        }
        Ok(policy)
    }

    /// Looks once: if anything changed since the last look, recompiles and swaps or keeps.
    pub fn check(&self) -> ReloadOutcome {
        let snapshot = self.snapshot();
        {
            let Ok(mut last) = self.last.lock() else {
                return ReloadOutcome::Unchanged;
            };
            if last.as_ref() == Some(&snapshot) {
                return ReloadOutcome::Unchanged;
            }
            *last = Some(snapshot);
        }
        match self.load() {
            Ok(policy) => {
                let summary = policy.summary();
                self.handle.store(policy);
                self.counter.with_label_values(&["success"]).inc();
                tracing::info!(policy = %summary, "policy reloaded");
                ReloadOutcome::Reloaded(summary)
            }
            Err(e) => {
                self.counter.with_label_values(&["failure"]).inc();
                tracing::error!(error = %e, "policy reload rejected; the previous policy stays in force");
                ReloadOutcome::Failed(e.to_string())
            }
        }
    }

    /// Polls until `shutdown` completes. For a pingora background service or a tokio task.
    pub async fn run(&self, shutdown: impl std::future::Future<Output = ()>) {
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                _ = &mut shutdown => return,
                _ = tokio::time::sleep(RELOAD_POLL_INTERVAL) => {
                    let _ = self.check();
                }
            }
        }
    }
}

/// A reloader running on its own thread; stops (and is joined) when dropped.
pub struct ReloaderThread {
    stop: Option<mpsc::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for ReloaderThread {
    fn drop(&mut self) {
        // Dropping the sender wakes the thread at once.
        self.stop.take();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Starts a thread that watches the `files:` of `cfg` and swaps each valid new policy into
/// `handle`, counting reloads in `counter` (label `result`: `success` or `failure`). Needs no
/// async runtime. To also watch inline rules in the gateway config, use
/// [`PolicyReloader::for_config_file`] with [`spawn_reloader_thread`].
pub fn spawn_reloader(
    handle: PolicyHandle,
    cfg: PolicyConfig,
    base_dir: PathBuf,
    counter: IntCounterVec,
) -> std::io::Result<ReloaderThread> {
    spawn_reloader_thread(PolicyReloader::new(handle, cfg, base_dir, counter))
}

/// Runs any [`PolicyReloader`] on its own thread, polling every [`RELOAD_POLL_INTERVAL`].
pub fn spawn_reloader_thread(reloader: PolicyReloader) -> std::io::Result<ReloaderThread> {
    let (stop, stopped) = mpsc::channel::<()>();
    let thread = std::thread::Builder::new()
        .name("policy-reload".into())
        .spawn(move || {
            while let Err(mpsc::RecvTimeoutError::Timeout) =
                stopped.recv_timeout(RELOAD_POLL_INTERVAL)
            {
                let _ = reloader.check();
            }
        })?;
    Ok(ReloaderThread {
        stop: Some(stop),
        thread: Some(thread),
    })
}
