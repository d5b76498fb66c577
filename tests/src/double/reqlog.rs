//! The request log: one JSON line per request appended (and flushed) to `requests.jsonl`, so tests can assert what
//! reached the API server: method, path, credential *hash*, impersonation and forwarding headers, effective user,
//! status. It must never write a token or any other credential in clear.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use http::HeaderMap;
use serde::{Deserialize, Serialize};

/// A header copied into the log (name lower-case, as received).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LoggedHeader {
    pub name: String,
    pub value: String,
}

/// One line of `requests.jsonl`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogEntry {
    /// RFC 3339 time the request arrived.
    pub time: String,
    pub method: String,
    pub path: String,
    pub query: Option<String>,
    /// "HTTP/1.1" or "HTTP/2.0".
    pub http_version: String,
    /// The Authorization scheme word (e.g. "Bearer"), null without an Authorization header.
    pub auth_scheme: Option<String>,
    /// Hex SHA-256 of the credential after the scheme; never the credential itself.
    pub token_sha256: Option<String>,
    /// The user the token authenticated as (null when authentication failed).
    pub token_user: Option<String>,
    /// The effective user after impersonation (null when authentication or impersonation failed).
    pub user: Option<String>,
    /// The effective groups after impersonation.
    pub groups: Vec<String>,
    /// Every `Impersonate-*`, `X-Remote-*` and `X-Forwarded-*` header, in arrival order.
    pub headers: Vec<LoggedHeader>,
    pub accept: Option<String>,
    pub content_type: Option<String>,
    pub upgrade: Option<String>,
    /// The HTTP status answered (101 for upgrades).
    pub status: u16,
}

const LOGGED_PREFIXES: [&str; 3] = ["impersonate-", "x-remote-", "x-forwarded-"];

/// Copies the headers the log keeps.
pub fn logged_headers(headers: &HeaderMap) -> Vec<LoggedHeader> {
    headers
        .iter()
        .filter(|(name, _)| LOGGED_PREFIXES.iter().any(|p| name.as_str().starts_with(p)))
        .map(|(name, value)| LoggedHeader {
            name: name.as_str().to_string(),
            value: String::from_utf8_lossy(value.as_bytes()).into_owned(),
        })
        .collect()
}

pub fn header_text(headers: &HeaderMap, name: http::header::HeaderName) -> Option<String> {
    let values: Vec<String> = headers
        .get_all(name)
        .iter()
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
        .collect();
    (!values.is_empty()).then(|| values.join(", "))
}

#[derive(Debug, thiserror::Error)]
pub enum RequestLogError {
    #[error("request log {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("request log {path} line {line}: {source}")]
    Parse {
        path: PathBuf,
        line: usize,
        #[source]
        source: serde_json::Error,
    },
}

/// The open log file. Appends are whole lines under a lock, so concurrent requests never interleave.
pub struct RequestLog {
    path: PathBuf,
    file: Mutex<File>,
}

impl RequestLog {
    pub fn open(path: &Path) -> Result<Self, RequestLogError> {
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(|source| RequestLogError::Io {
                path: path.to_path_buf(),
                source,
            })?;
        Ok(Self {
            path: path.to_path_buf(),
            file: Mutex::new(file),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends one entry. A failed write is reported in the tracing log, not to the client: the log is an
    /// observation aid and must not change what the client sees.
    pub fn append(&self, entry: &LogEntry) {
        let mut line = match serde_json::to_vec(entry) {
            Ok(l) => l,
            Err(e) => {
                tracing::error!(error = %e, "cannot encode request log entry");
                return;
            }
        };
        line.push(b'\n');
        let mut file = self.file.lock().unwrap_or_else(|p| p.into_inner());
        if let Err(e) = file.write_all(&line).and_then(|()| file.flush()) {
            tracing::error!(error = %e, path = %self.path.display(), "cannot write request log");
        }
    }
}

/// Reads every entry of a request log file.
pub fn read_log(path: &Path) -> Result<Vec<LogEntry>, RequestLogError> {
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => {
            return Err(RequestLogError::Io {
                path: path.to_path_buf(),
                source,
            })
        }
    };
    let mut entries = Vec::new();
    for (i, line) in BufReader::new(file).lines().enumerate() {
        let line = line.map_err(|source| RequestLogError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        if line.trim().is_empty() {
            continue;
        }
        entries.push(
            serde_json::from_str(&line).map_err(|source| RequestLogError::Parse {
                path: path.to_path_buf(),
                line: i + 1,
                source,
            })?,
        );
    }
    Ok(entries)
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    #[test]
    fn header_selection() {
        let mut h = HeaderMap::new();
        h.insert("impersonate-user", HeaderValue::from_static("alice"));
        h.append("impersonate-group", HeaderValue::from_static("a"));
        h.append("impersonate-group", HeaderValue::from_static("b"));
        h.insert("x-remote-user", HeaderValue::from_static("eve"));
        h.insert("x-forwarded-for", HeaderValue::from_static("192.0.2.1"));
        h.insert("authorization", HeaderValue::from_static("Bearer secret"));
        h.insert("user-agent", HeaderValue::from_static("kubectl"));
        let logged = logged_headers(&h);
        let names: Vec<&str> = logged.iter().map(|l| l.name.as_str()).collect();
        assert_eq!(names.len(), 5);
        assert!(!names.contains(&"authorization"));
        assert_eq!(
            logged
                .iter()
                .filter(|l| l.name == "impersonate-group")
                .count(),
            2
        );
    }

    #[test]
    fn append_and_read_back() {
        let dir = std::env::temp_dir().join(format!("reqlog-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("requests.jsonl");
        let log = RequestLog::open(&path).unwrap();
        let entry = LogEntry {
            time: "2026-01-01T00:00:00Z".into(),
            method: "GET".into(),
            path: "/api".into(),
            query: None,
            http_version: "HTTP/2.0".into(),
            auth_scheme: Some("Bearer".into()),
            token_sha256: Some("00".into()),
            token_user: Some("gateway".into()),
            user: Some("alice".into()),
            groups: vec!["system:authenticated".into()],
            headers: vec![],
            accept: None,
            content_type: None,
            upgrade: None,
            status: 200,
        };
        log.append(&entry);
        log.append(&entry);
        assert_eq!(read_log(&path).unwrap(), vec![entry.clone(), entry]);
        assert!(read_log(&dir.join("missing")).unwrap().is_empty());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
