//! Turning a recorded session back into something a person can watch: a timed plan for the
//! terminal (`portcullis replay`) and asciicast v2 (`portcullis export --format asciicast`).
//!
//! Pure functions over [`SessionRecord`] and [`FrameRecord`]s. Must never: reorder what the
//! session showed, or silently skip a recorder gap (gaps become visible markers).

use std::time::Duration;

use serde_json::{json, Value};

use super::session::{FrameEvent, FrameKind, FrameRecord, SessionRecord};

/// Where a replay step goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplayTarget {
    Stdout,
    Stderr,
    /// A note from the recorder (gap, overflow), printed apart from the session's output.
    Note,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplayStep {
    /// Wait this long before writing (original gap / speed, at most `max_gap`).
    pub delay: Duration,
    pub target: ReplayTarget,
    pub data: Vec<u8>,
}

/// The output a terminal showed, with its timing divided by `speed` and each pause capped at
/// `max_gap` (so an idle shell does not replay an idle hour). Stdin is not echoed: with a tty
/// the terminal's echo is already in stdout.
pub fn replay_plan(frames: &[FrameRecord], speed: f64, max_gap: Duration) -> Vec<ReplayStep> {
    let speed = if speed.is_finite() && speed > 0.0 {
        speed
    } else {
        1.0
    };
    let mut steps = Vec::new();
    let mut last_us: u64 = 0;
    for frame in frames {
        let (target, data) = match &frame.event {
            FrameEvent::Data {
                kind: FrameKind::Stdout,
                data,
            } => (ReplayTarget::Stdout, data.clone()),
            FrameEvent::Data {
                kind: FrameKind::Stderr,
                data,
            } => (ReplayTarget::Stderr, data.clone()),
            FrameEvent::Gap {
                dropped_bytes,
                dropped_frames,
            } => (
                ReplayTarget::Note,
                format!("[recording gap: {dropped_bytes} bytes in {dropped_frames} frames were not recorded]")
                    .into_bytes(),
            ),
            FrameEvent::Overflow { limit, .. } => (
                ReplayTarget::Note,
                format!("[recording overflow: the recorder fell behind (limit {limit} bytes); the session was ended]")
                    .into_bytes(),
            ),
            FrameEvent::Data { .. } => continue,
        };
        let gap_us = frame.t_us.saturating_sub(last_us);
        last_us = last_us.max(frame.t_us);
        let delay = Duration::from_secs_f64(gap_us as f64 / 1e6 / speed).min(max_gap);
        steps.push(ReplayStep {
            delay,
            target,
            data,
        });
    }
    steps
}

/// Incremental UTF-8 decoding for a byte stream cut at arbitrary points: a character split
/// across frames is emitted whole with the frame that completes it; invalid bytes become U+FFFD.
#[derive(Debug, Default)]
pub struct Utf8Stream {
    pending: Vec<u8>,
}

impl Utf8Stream {
    pub fn push(&mut self, data: &[u8]) -> String {
        self.pending.extend_from_slice(data);
        let mut out = String::new();
        let mut rest: &[u8] = &self.pending;
        loop {
            match std::str::from_utf8(rest) {
                Ok(s) => {
                    out.push_str(s);
                    rest = &[];
                    break;
                }
                Err(e) => {
                    let (valid, after) = rest.split_at(e.valid_up_to());
                    // `valid` is valid UTF-8 by construction.
                    out.push_str(&String::from_utf8_lossy(valid));
                    match e.error_len() {
                        Some(bad) => {
                            out.push(char::REPLACEMENT_CHARACTER);
                            rest = &after[bad..];
                        }
                        None => {
                            rest = after;
                            break;
                        }
                    }
                }
            }
        }
        self.pending = rest.to_vec();
        out
    }

    /// What is left at the end of the stream (an incomplete character) as U+FFFD.
    pub fn finish(&mut self) -> String {
        let out = String::from_utf8_lossy(&self.pending).into_owned();
        self.pending.clear();
        out
    }
}

/// Parses the resize channel's `{"Width":W,"Height":H}`.
pub fn parse_resize(data: &[u8]) -> Option<(u16, u16)> {
    let v: Value = serde_json::from_slice(data).ok()?;
    let w = v.get("Width")?.as_u64()?;
    let h = v.get("Height")?.as_u64()?;
    Some((u16::try_from(w).ok()?, u16::try_from(h).ok()?))
}

const DEFAULT_SIZE: (u16, u16) = (80, 24);

/// asciicast v2: a header line, then `[seconds, code, data]` lines: stdout and stderr as `"o"`,
/// stdin as `"i"`, terminal resizes as `"r"` (`"COLSxROWS"`), recorder gaps and the exit status
/// as markers (`"m"`). The header's size is the first resize (80x24 if the client sent none).
pub fn to_asciicast(session: &SessionRecord, frames: &[FrameRecord]) -> String {
    let first_size = frames.iter().find_map(|f| match &f.event {
        FrameEvent::Data {
            kind: FrameKind::Resize,
            data,
        } => parse_resize(data),
        _ => None,
    });
    let (width, height) = first_size.unwrap_or(DEFAULT_SIZE);
    let meta = &session.meta;
    let target = if meta.container.is_empty() {
        format!("{}/{}", meta.namespace, meta.pod)
    } else {
        format!("{}/{} ({})", meta.namespace, meta.pod, meta.container)
    };
    let user = meta
        .identity
        .as_ref()
        .map(|i| i.user.as_str())
        .unwrap_or("unknown");
    let duration = frames.iter().map(|f| f.t_us).max().unwrap_or(0) as f64 / 1e6;
    let mut header = json!({
        "version": 2,
        "width": width,
        "height": height,
        "timestamp": meta.start_ns / 1_000_000_000,
        "duration": duration,
        "title": format!("{} {} by {} [{}]", meta.kind.as_str(), target, user, meta.session_id),
    });
    if !meta.command.is_empty() {
        header["command"] = Value::String(meta.command.join(" "));
    }
    let mut lines = vec![header.to_string()];

    let mut stdout = Utf8Stream::default();
    let mut stderr = Utf8Stream::default();
    let mut stdin = Utf8Stream::default();
    let mut initial_size_used = first_size.is_none();
    let mut push = |t_us: u64, code: &str, data: String| {
        if !data.is_empty() || code == "m" {
            lines.push(json!([t_us as f64 / 1e6, code, data]).to_string());
        }
    };
    for frame in frames {
        let t = frame.t_us;
        match &frame.event {
            FrameEvent::Data { kind, data } => match kind {
                FrameKind::Stdout => push(t, "o", stdout.push(data)),
                FrameKind::Stderr => push(t, "o", stderr.push(data)),
                FrameKind::Stdin => push(t, "i", stdin.push(data)),
                FrameKind::Resize => {
                    if let Some((w, h)) = parse_resize(data) {
                        if initial_size_used {
                            push(t, "r", format!("{w}x{h}"));
                        }
                        initial_size_used = true;
                    }
                }
                _ => {}
            },
            FrameEvent::Gap { dropped_bytes, .. } => push(
                t,
                "m",
                format!("recording gap: {dropped_bytes} bytes not recorded"),
            ),
            FrameEvent::Overflow { .. } => push(t, "m", "recording overflow: session ended".into()),
        }
    }
    let end = frames.iter().map(|f| f.t_us).max().unwrap_or(0);
    push(end, "o", stdout.finish());
    push(end, "o", stderr.finish());
    if let Some(code) = session.exit_code {
        push(end, "m", format!("exit code {code}"));
    }
    let mut out = lines.join("\n");
    out.push('\n');
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::entry::SCHEMA_VERSION;
    use crate::record::session::{SessionKind, SessionMeta, SessionProtocol};

    fn data(t_us: u64, kind: FrameKind, bytes: &[u8]) -> FrameRecord {
        FrameRecord {
            schema: SCHEMA_VERSION,
            t_us,
            event: FrameEvent::Data {
                kind,
                data: bytes.to_vec(),
            },
        }
    }

    fn session() -> SessionRecord {
        SessionRecord {
            schema: SCHEMA_VERSION,
            seq: 3,
            meta: SessionMeta {
                session_id: "s-1".into(),
                kind: SessionKind::Exec,
                pod: "web-0".into(),
                namespace: "prod".into(),
                container: "app".into(),
                command: vec!["sh".into(), "-i".into()],
                tty: true,
                stdin: true,
                ports: vec![],
                identity: None,
                protocol: SessionProtocol::WebSocketV5,
                start_ns: 1_700_000_000_500_000_000,
                request_seq: Some(9),
                frames_recorded: true,
            },
            end_ns: Some(1_700_000_010_000_000_000),
            exit_code: Some(3),
            error: None,
            frames: 0,
            stdin_bytes: 0,
            stdout_bytes: 0,
            stderr_bytes: 0,
            port_forward: vec![],
            dropped_bytes: 0,
            overflowed: false,
        }
    }

    #[test]
    fn replay_plan_scales_and_caps_pauses_and_keeps_gaps_visible() {
        let frames = vec![
            data(0, FrameKind::Stdin, b"ls\r"),
            data(1_000_000, FrameKind::Stdout, b"a b\r\n"),
            data(3_000_000, FrameKind::Stderr, b"oops\n"),
            FrameRecord {
                schema: SCHEMA_VERSION,
                t_us: 3_000_500,
                event: FrameEvent::Gap {
                    dropped_bytes: 4096,
                    dropped_frames: 2,
                },
            },
            data(100_000_000, FrameKind::Stdout, b"late\n"),
        ];
        let plan = replay_plan(&frames, 2.0, Duration::from_secs(5));
        let targets: Vec<ReplayTarget> = plan.iter().map(|s| s.target).collect();
        assert_eq!(
            targets,
            vec![
                ReplayTarget::Stdout,
                ReplayTarget::Stderr,
                ReplayTarget::Note,
                ReplayTarget::Stdout
            ]
        );
        assert_eq!(plan[0].delay, Duration::from_millis(500));
        assert_eq!(plan[1].delay, Duration::from_secs(1));
        assert_eq!(plan[2].delay, Duration::from_micros(250));
        assert_eq!(plan[3].delay, Duration::from_secs(5), "capped");
        assert!(String::from_utf8_lossy(&plan[2].data).contains("4096 bytes"));
        assert_eq!(plan[3].data, b"late\n");
        // A nonsensical speed falls back to real time.
        let plan = replay_plan(&frames, 0.0, Duration::from_secs(60));
        assert_eq!(plan[0].delay, Duration::from_secs(1));
    }

    #[test]
    fn utf8_split_across_frames_is_kept_whole_and_garbage_is_replaced() {
        let mut s = Utf8Stream::default();
        let euro = "€".as_bytes(); // 3 bytes
        assert_eq!(s.push(&[b'a', euro[0]]), "a");
        assert_eq!(s.push(&euro[1..2]), "");
        assert_eq!(s.push(&[euro[2], b'b']), "€b");
        assert_eq!(s.push(&[0xff, b'c']), "\u{fffd}c");
        assert_eq!(s.push(&euro[..2]), "");
        assert_eq!(s.finish(), "\u{fffd}");
    }

    #[test]
    fn asciicast_v2_has_header_input_output_resize_and_markers() {
        let frames = vec![
            data(0, FrameKind::Resize, br#"{"Width":120,"Height":40}"#),
            data(10_000, FrameKind::Stdout, b"$ "),
            data(500_000, FrameKind::Stdin, b"echo hi\r"),
            data(600_000, FrameKind::Stdout, "hi €\r\n".as_bytes()),
            data(700_000, FrameKind::Resize, br#"{"Width":100,"Height":30}"#),
            data(800_000, FrameKind::Stderr, b"err\n"),
            data(
                900_000,
                FrameKind::Status,
                br#"{"status":"Failure","reason":"NonZeroExitCode"}"#,
            ),
        ];
        let cast = to_asciicast(&session(), &frames);
        let lines: Vec<Value> = cast
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        let header = &lines[0];
        assert_eq!(header["version"], 2);
        assert_eq!(header["width"], 120);
        assert_eq!(header["height"], 40);
        assert_eq!(header["timestamp"], 1_700_000_000u64);
        assert_eq!(header["command"], "sh -i");
        assert!(header["title"].as_str().unwrap().contains("prod/web-0"));
        let events: Vec<(f64, String, String)> = lines[1..]
            .iter()
            .map(|e| {
                (
                    e[0].as_f64().unwrap(),
                    e[1].as_str().unwrap().to_owned(),
                    e[2].as_str().unwrap().to_owned(),
                )
            })
            .collect();
        let codes: Vec<&str> = events.iter().map(|e| e.1.as_str()).collect();
        assert_eq!(codes, vec!["o", "i", "o", "r", "o", "m"]);
        assert_eq!(events[0], (0.01, "o".into(), "$ ".into()));
        assert_eq!(events[1], (0.5, "i".into(), "echo hi\r".into()));
        assert_eq!(events[2].2, "hi €\r\n");
        assert_eq!(events[3], (0.7, "r".into(), "100x30".into()));
        assert_eq!(events[5].2, "exit code 3");
        // Times never go backwards.
        assert!(events.windows(2).all(|w| w[0].0 <= w[1].0));
    }

    #[test]
    fn asciicast_defaults_to_80x24_without_a_resize() {
        let cast = to_asciicast(&session(), &[data(5, FrameKind::Stdout, b"x")]);
        let header: Value = serde_json::from_str(cast.lines().next().unwrap()).unwrap();
        assert_eq!(
            (header["width"].clone(), header["height"].clone()),
            (json!(80), json!(24))
        );
        assert_eq!(cast.lines().count(), 3, "{cast}");
    }
}
