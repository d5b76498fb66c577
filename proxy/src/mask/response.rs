//! One response's masker: fed the body chunk by chunk, it returns what may be sent.

use std::sync::Arc;

use bytes::Bytes;
use serde_json::Value;

use super::accept::{is_identity_encoding, is_json_media_type, is_text_plain};
use super::profile::{is_pod_log, Limits, MaskProfile};
use super::walk::Walker;
use super::{MaskError, MARKER};
use crate::classify::{RequestInfo, Verb};

/// How a response body is masked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Buffered up to `max_body_bytes`, parsed, masked and re-serialized at the end.
    Whole,
    /// A watch: each event is masked and released as soon as it is complete.
    WatchStream,
    /// `pods/log`: each line is masked and released as soon as it is complete.
    LogLines,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Open,
    Finished,
    Failed,
}

pub struct ResponseMasker {
    mode: Mode,
    walker: Walker,
    limits: Limits,
    /// Whole: the body so far. LogLines: the current partial line.
    buf: Vec<u8>,
    events: EventSplitter,
    state: State,
}

impl std::fmt::Debug for ResponseMasker {
    // Deliberately without the buffered body.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseMasker")
            .field("mode", &self.mode)
            .field("profile", &self.walker.profile().name())
            .field("masked", &self.walker.masked)
            .field("state", &self.state)
            .finish_non_exhaustive()
    }
}

impl ResponseMasker {
    /// Chooses the mode from the request and the response head. An error means the body cannot
    /// be inspected (compressed, protobuf, YAML, ...): the gateway must answer 502 instead.
    /// Error statuses are JSON `Status` bodies: masked whole (nothing in them is masked).
    pub fn new(
        profile: Arc<MaskProfile>,
        info: &RequestInfo,
        query: Option<&str>,
        status: u16,
        content_type: Option<&str>,
        content_encoding: Option<&str>,
    ) -> Result<Self, MaskError> {
        if !is_identity_encoding(content_encoding) {
            return Err(MaskError::ContentEncoding(shorten(
                content_encoding.unwrap_or_default(),
            )));
        }
        let success = (200..300).contains(&status);
        let mode = if success && is_pod_log(info) {
            Mode::LogLines
        } else if success && (info.verb == Verb::Watch || query_asks_watch(query)) {
            Mode::WatchStream
        } else {
            Mode::Whole
        };
        let readable = match (mode, content_type) {
            // Without a content type the body is read as JSON, and refused if it is not.
            (_, None) => true,
            (Mode::LogLines, Some(ct)) => is_text_plain(ct),
            (_, Some(ct)) => is_json_media_type(ct),
        };
        if !readable {
            return Err(MaskError::ContentType(shorten(
                content_type.unwrap_or_default(),
            )));
        }
        let default = profile.rules_for_resource(&info.api_group, &info.resource);
        let limits = profile.limits;
        Ok(Self {
            mode,
            walker: Walker::new(profile, default),
            limits,
            buf: Vec::new(),
            events: EventSplitter::default(),
            state: State::Open,
        })
    }

    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// How many values were masked so far (for logs and metrics; never the values).
    pub fn masked_values(&self) -> u64 {
        self.walker.masked
    }

    /// Feeds a chunk of the upstream body; returns the bytes that may be sent now (possibly
    /// none). After an error the masker stays failed: the response must be aborted.
    pub fn push(&mut self, chunk: &[u8]) -> Result<Bytes, MaskError> {
        self.guarded(|this| this.push_inner(chunk))
    }

    /// The end of the upstream body; returns the rest to send.
    pub fn finish(&mut self) -> Result<Bytes, MaskError> {
        let out = self.guarded(Self::finish_inner)?;
        self.state = State::Finished;
        Ok(out)
    }

    fn guarded(
        &mut self,
        step: impl FnOnce(&mut Self) -> Result<Bytes, MaskError>,
    ) -> Result<Bytes, MaskError> {
        if self.state != State::Open {
            return Err(MaskError::Failed);
        }
        let result = step(self);
        if result.is_err() {
            self.state = State::Failed;
            self.buf = Vec::new();
            self.events = EventSplitter::default();
        }
        result
    }

    fn push_inner(&mut self, chunk: &[u8]) -> Result<Bytes, MaskError> {
        match self.mode {
            Mode::Whole => {
                let limit = self.limits.max_body_bytes;
                if self.buf.len().saturating_add(chunk.len()) > limit {
                    return Err(MaskError::BodyTooLarge { limit });
                }
                self.buf.extend_from_slice(chunk);
                Ok(Bytes::new())
            }
            Mode::WatchStream => {
                let mut out = Vec::new();
                let walker = &mut self.walker;
                self.events
                    .feed(chunk, self.limits.max_event_bytes, &mut |event| {
                        mask_event(walker, event, &mut out)
                    })?;
                Ok(Bytes::from(out))
            }
            Mode::LogLines => {
                let Some(last_newline) = chunk.iter().rposition(|b| *b == b'\n') else {
                    let limit = self.limits.max_log_line_bytes;
                    if self.buf.len().saturating_add(chunk.len()) > limit {
                        return Err(MaskError::LogLineTooLong { limit });
                    }
                    self.buf.extend_from_slice(chunk);
                    return Ok(Bytes::new());
                };
                let (complete, rest) = chunk.split_at(last_newline + 1);
                self.buf.extend_from_slice(complete);
                let lines = std::mem::take(&mut self.buf);
                let out = self.mask_lines(&lines)?;
                let limit = self.limits.max_log_line_bytes;
                if rest.len() > limit {
                    return Err(MaskError::LogLineTooLong { limit });
                }
                self.buf.extend_from_slice(rest);
                Ok(Bytes::from(out))
            }
        }
    }

    fn finish_inner(&mut self) -> Result<Bytes, MaskError> {
        match self.mode {
            Mode::Whole => {
                let body = std::mem::take(&mut self.buf);
                if body.iter().all(u8::is_ascii_whitespace) {
                    return Ok(Bytes::from(body));
                }
                let mut doc: Value =
                    serde_json::from_slice(&body).map_err(|e| MaskError::json(&e))?;
                self.walker.document(&mut doc);
                // Always re-serialized, never the original bytes: what is sent is exactly what
                // was inspected (a duplicate key, say, cannot smuggle a second value past).
                let mut out = serde_json::to_vec(&doc).map_err(|e| MaskError::json(&e))?;
                if body.ends_with(b"\n") {
                    out.push(b'\n');
                }
                Ok(Bytes::from(out))
            }
            Mode::WatchStream => {
                if self.events.in_event() {
                    return Err(MaskError::TruncatedEvent);
                }
                Ok(Bytes::new())
            }
            Mode::LogLines => {
                let rest = std::mem::take(&mut self.buf);
                Ok(Bytes::from(self.mask_lines(&rest)?))
            }
        }
    }

    /// Masks complete lines (each ending in `\n`, except possibly the last at the end of body).
    fn mask_lines(&mut self, text: &[u8]) -> Result<Vec<u8>, MaskError> {
        let limit = self.limits.max_log_line_bytes;
        let mut out = Vec::with_capacity(text.len());
        for line in text.split_inclusive(|b| *b == b'\n') {
            let (body, newline) = match line.strip_suffix(b"\n") {
                Some(body) => (body, true),
                None => (line, false),
            };
            if body.len() > limit {
                return Err(MaskError::LogLineTooLong { limit });
            }
            let (masked, count) = mask_line(self.walker.profile().log_patterns(), body);
            self.walker.masked += count;
            out.extend_from_slice(&masked);
            if newline {
                out.push(b'\n');
            }
        }
        Ok(out)
    }
}

fn mask_event(walker: &mut Walker, event: &[u8], out: &mut Vec<u8>) -> Result<(), MaskError> {
    let mut value: Value = serde_json::from_slice(event).map_err(|e| MaskError::json(&e))?;
    walker.event(&mut value);
    serde_json::to_writer(&mut *out, &value).map_err(|e| MaskError::json(&e))?;
    out.push(b'\n');
    Ok(())
}

/// Applies every pattern to one line (without its newline). A match is replaced by the marker,
/// or only its `secret` group when the pattern has one; empty matches are left alone.
fn mask_line(patterns: &[regex::bytes::Regex], line: &[u8]) -> (Vec<u8>, u64) {
    let mut current = line.to_vec();
    let mut total = 0;
    for pattern in patterns {
        let has_secret_group = pattern.capture_names().any(|n| n == Some("secret"));
        let mut count = 0;
        let replaced = pattern.replace_all(&current, |caps: &regex::bytes::Captures<'_>| {
            let Some(whole) = caps.get(0) else {
                return Vec::new();
            };
            if whole.is_empty() {
                return Vec::new();
            }
            count += 1;
            match caps.name("secret").filter(|_| has_secret_group) {
                Some(secret) => {
                    let text = whole.as_bytes();
                    let (from, to) = (secret.start() - whole.start(), secret.end() - whole.start());
                    let mut out = Vec::with_capacity(text.len() + MARKER.len());
                    out.extend_from_slice(&text[..from]);
                    out.extend_from_slice(MARKER.as_bytes());
                    out.extend_from_slice(&text[to..]);
                    out
                }
                None => MARKER.as_bytes().to_vec(),
            }
        });
        if count > 0 {
            current = replaced.into_owned();
            total += count;
        }
    }
    (current, total)
}

/// Whether a query string asks for a watch (`watch` as `metav1.ListOptions` reads it: anything
/// but `0`/`false`). Watch mode also reads a plain object correctly, so erring toward it is safe.
fn query_asks_watch(query: Option<&str>) -> bool {
    query.is_some_and(|q| {
        q.split('&').find_map(|pair| {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            (key == "watch").then(|| !matches!(value.to_ascii_lowercase().as_str(), "0" | "false"))
        }) == Some(true)
    })
}

fn shorten(header: &str) -> String {
    header.chars().take(100).collect()
}

/// Finds the JSON values of a stream, whatever the chunk boundaries: the real API server ends
/// each event with a newline, but nothing here relies on that (or on chunks holding whole
/// events). It tracks only string/escape state and bracket depth; the parser judges the rest.
#[derive(Debug, Default)]
struct EventSplitter {
    buf: Vec<u8>,
    depth: usize,
    in_string: bool,
    escaped: bool,
}

impl EventSplitter {
    fn in_event(&self) -> bool {
        self.depth > 0
    }

    fn feed(
        &mut self,
        chunk: &[u8],
        limit: usize,
        on_event: &mut dyn FnMut(&[u8]) -> Result<(), MaskError>,
    ) -> Result<(), MaskError> {
        let mut start = 0;
        for (i, &b) in chunk.iter().enumerate() {
            if self.depth == 0 {
                match b {
                    b'{' => {
                        self.depth = 1;
                        start = i;
                    }
                    b' ' | b'\t' | b'\r' | b'\n' => {}
                    _ => return Err(MaskError::NotAnEvent),
                }
                continue;
            }
            if self.in_string {
                if self.escaped {
                    self.escaped = false;
                } else if b == b'\\' {
                    self.escaped = true;
                } else if b == b'"' {
                    self.in_string = false;
                }
                continue;
            }
            match b {
                b'"' => self.in_string = true,
                b'{' | b'[' => self.depth += 1,
                b'}' | b']' => {
                    self.depth -= 1;
                    if self.depth == 0 {
                        self.buf.extend_from_slice(&chunk[start..=i]);
                        if self.buf.len() > limit {
                            return Err(MaskError::EventTooLarge { limit });
                        }
                        on_event(&self.buf)?;
                        self.buf.clear();
                    }
                }
                _ => {}
            }
        }
        if self.depth > 0 {
            self.buf.extend_from_slice(&chunk[start..]);
            if self.buf.len() > limit {
                return Err(MaskError::EventTooLarge { limit });
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split_all(stream: &[u8], pieces: &[usize]) -> Result<Vec<String>, MaskError> {
        let mut splitter = EventSplitter::default();
        let mut events = Vec::new();
        let mut at: usize = 0;
        for &len in pieces.iter().chain(std::iter::once(&usize::MAX)) {
            let end = at.saturating_add(len).min(stream.len());
            splitter.feed(&stream[at..end], 1 << 20, &mut |e| {
                events.push(String::from_utf8_lossy(e).into_owned());
                Ok(())
            })?;
            at = end;
        }
        assert!(!splitter.in_event());
        Ok(events)
    }

    #[test]
    fn splitter_finds_events_across_any_boundaries() {
        let stream = br#"{"type":"ADDED","object":{"a":"}{\"]"}}
  {"type":"MODIFIED","object":{"b":[1,{"c":"\\"}]}}{"type":"BOOKMARK","object":{}}
"#;
        let want = vec![
            r#"{"type":"ADDED","object":{"a":"}{\"]"}}"#.to_owned(),
            r#"{"type":"MODIFIED","object":{"b":[1,{"c":"\\"}]}}"#.to_owned(),
            r#"{"type":"BOOKMARK","object":{}}"#.to_owned(),
        ];
        for size in 1..stream.len() {
            let pieces = vec![size; stream.len() / size + 1];
            assert_eq!(split_all(stream, &pieces).expect("splits"), want, "{size}");
        }
    }

    #[test]
    fn splitter_refuses_non_objects_and_oversized_events() {
        assert_eq!(split_all(b"[1]", &[]), Err(MaskError::NotAnEvent));
        assert_eq!(split_all(b"{} x", &[]), Err(MaskError::NotAnEvent));
        let mut splitter = EventSplitter::default();
        let big = format!("{{\"a\":\"{}\"}}", "x".repeat(100));
        let err = splitter
            .feed(&big.as_bytes()[..50], 64, &mut |_| Ok(()))
            .and_then(|()| splitter.feed(&big.as_bytes()[50..], 64, &mut |_| Ok(())));
        assert_eq!(err, Err(MaskError::EventTooLarge { limit: 64 }));
    }

    #[test]
    fn watch_query() {
        assert!(query_asks_watch(Some("watch=true")));
        assert!(query_asks_watch(Some("labelSelector=a&watch=1")));
        assert!(query_asks_watch(Some("watch=True")));
        assert!(!query_asks_watch(Some("watch=false")));
        assert!(!query_asks_watch(Some("watch=0")));
        assert!(!query_asks_watch(Some("watchx=true")));
        assert!(!query_asks_watch(None));
        assert!(!query_asks_watch(Some("watch=false&watch=true")));
    }

    #[test]
    fn log_lines_mask_whole_matches_or_the_secret_group() {
        let patterns = vec![
            regex::bytes::Regex::new(r"(?i)password=(?P<secret>\S+)").expect("valid"),
            regex::bytes::Regex::new(r"AKIA[0-9A-Z]{16}").expect("valid"),
            regex::bytes::Regex::new(r"x*").expect("valid"),
        ];
        let (line, n) = mask_line(
            &patterns,
            b"login ok PASSWORD=hunter2 key AKIAABCDEFGHIJKLMNOP done",
        );
        assert_eq!(
            String::from_utf8_lossy(&line),
            format!("login ok PASSWORD={MARKER} key {MARKER} done")
        );
        assert_eq!(n, 2);
        let (line, n) = mask_line(&patterns, b"nothing here");
        assert_eq!(line, b"nothing here");
        assert_eq!(n, 0);
    }
}
