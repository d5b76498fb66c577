//! The offline commands over a store: `audit verify`, `audit query`, `sessions list`, `replay`,
//! `export`. `main.rs` parses the arguments and calls these.
//!
//! Owns: finding the store (`--store DIR` or the config's `record.path`) and writing results.
//! Must never: create a store that does not exist, or write to one.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::chain::verify;
use super::keys::load_verifying_key;
use super::query::{
    find_session, format_query_rows, format_sessions, list_sessions, query_row_json, query_rows,
    session_frames, session_json, AuditFilter,
};
use super::replay::{replay_plan, to_asciicast, ReplayTarget};
use super::store::SledStore;
use super::RecordError;

#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error("name the store with --store DIR or --config FILE")]
    NoStore,
    #[error("the config {0} has no record.path")]
    NotConfigured(PathBuf),
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error(transparent)]
    Record(#[from] RecordError),
    #[error(transparent)]
    Key(#[from] super::keys::KeyError),
    #[error(transparent)]
    Store(#[from] super::store::StoreError),
    #[error(
        "session {0} was recorded as metadata only (policy `record: metadata`): who, what, when \
         are in `sessions list`, but there are no frames to play"
    )]
    MetadataOnly(u64),
    #[error("output: {0}")]
    Io(#[from] std::io::Error),
}

/// Where the store is, and the key to check signatures with.
#[derive(Debug, Clone)]
pub struct Target {
    pub path: PathBuf,
    pub key_file: Option<PathBuf>,
}

/// The page cache the offline commands give sled.
const CLI_CACHE_BYTES: u64 = 32 * 1024 * 1024;

pub fn locate(store: Option<&Path>, config: Option<&Path>) -> Result<Target, CliError> {
    if let Some(path) = store {
        return Ok(Target {
            path: path.to_path_buf(),
            key_file: None,
        });
    }
    let config_path = config.ok_or(CliError::NoStore)?;
    let config = crate::config::Config::load(config_path)?;
    let path = config
        .record
        .path
        .clone()
        .ok_or_else(|| CliError::NotConfigured(config_path.to_path_buf()))?;
    Ok(Target {
        path,
        key_file: config.record.signing_key_file.clone(),
    })
}

fn open(target: &Target) -> Result<SledStore, CliError> {
    Ok(SledStore::open_existing(&target.path, CLI_CACHE_BYTES)?)
}

/// Prints the report; returns whether the chain verified.
pub fn audit_verify(
    target: &Target,
    from: Option<u64>,
    key: Option<&Path>,
    out: &mut dyn Write,
) -> Result<bool, CliError> {
    let key_file = key
        .map(Path::to_path_buf)
        .or_else(|| target.key_file.clone());
    let verifying = key_file.as_deref().map(load_verifying_key).transpose()?;
    let store = open(target)?;
    let report = verify(&store, from, verifying.as_ref())?;
    writeln!(out, "{report}")?;
    Ok(report.is_ok())
}

/// Prints the matching requests and node events; returns how many.
pub fn audit_query(
    target: &Target,
    filter: &AuditFilter,
    json: bool,
    out: &mut dyn Write,
) -> Result<usize, CliError> {
    let store = open(target)?;
    let rows = query_rows(&store, filter)?;
    if json {
        for row in &rows {
            writeln!(out, "{}", query_row_json(row))?;
        }
    } else {
        write!(out, "{}", format_query_rows(&rows))?;
    }
    Ok(rows.len())
}

pub fn sessions_list(target: &Target, json: bool, out: &mut dyn Write) -> Result<(), CliError> {
    let store = open(target)?;
    let sessions = list_sessions(&store)?;
    if json {
        for s in &sessions {
            writeln!(out, "{}", session_json(s))?;
        }
    } else {
        write!(out, "{}", format_sessions(&sessions))?;
    }
    Ok(())
}

/// Plays the session's output with its timing (divided by `speed`, pauses capped at `max_gap`).
pub fn replay(
    target: &Target,
    session: &str,
    speed: f64,
    max_gap: Duration,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> Result<(), CliError> {
    let store = open(target)?;
    let record = find_session(&store, session)?;
    if !record.meta.frames_recorded {
        return Err(CliError::MetadataOnly(record.seq));
    }
    let frames = session_frames(&store, record.seq)?;
    for step in replay_plan(&frames, speed, max_gap) {
        if !step.delay.is_zero() {
            std::thread::sleep(step.delay);
        }
        match step.target {
            ReplayTarget::Stdout => out.write_all(&step.data)?,
            ReplayTarget::Stderr => err.write_all(&step.data)?,
            ReplayTarget::Note => {
                out.flush()?;
                writeln!(err, "\r\n{}", String::from_utf8_lossy(&step.data))?;
            }
        }
        out.flush()?;
        err.flush()?;
    }
    if let Some(code) = record.exit_code {
        writeln!(err, "\r\n[exit code {code}]")?;
    }
    Ok(())
}

pub fn export_asciicast(
    target: &Target,
    session: &str,
    out: &mut dyn Write,
) -> Result<(), CliError> {
    let store = open(target)?;
    let record = find_session(&store, session)?;
    if !record.meta.frames_recorded {
        return Err(CliError::MetadataOnly(record.seq));
    }
    let frames = session_frames(&store, record.seq)?;
    out.write_all(to_asciicast(&record, &frames).as_bytes())?;
    out.flush()?;
    Ok(())
}
