//! Recording one upgraded exec/attach/port-forward connection: the bytes pingora's body filters
//! see in each direction go through a [`SessionDecoder`], and what it finds becomes frames of a
//! session in the store.
//!
//! Owns: the session's metadata (from the request's query), the mapping of decoded events to
//! stored frames, and the exit code. Must never: let a stream continue that it could not decode
//! or record (the caller ends the connection on any error), or block (frames are queued).

use std::time::Duration;

use crate::classify::RequestInfo;
use crate::identity::Identity;
use crate::record::frames::{Channel, Direction, SessionDecoder, StreamEvent, StreamProtocol};
use crate::record::{
    AuditIdentity, FrameKind, RecordError, Recorder, SessionKind, SessionMeta, SessionProtocol,
    SessionWriter,
};

#[derive(Debug, thiserror::Error)]
pub enum RecordingError {
    #[error("the {0} stream could not be decoded for recording: {1}")]
    Decode(&'static str, crate::record::frames::FrameError),
    #[error(transparent)]
    Record(#[from] RecordError),
}

/// One recorded session, alive as long as the upgraded connection.
pub struct SessionRecording {
    /// `None` for a metadata-only session: its bytes are not looked at.
    decoder: Option<SessionDecoder>,
    writer: Option<SessionWriter>,
    exit_code: Option<i32>,
    failure: Option<String>,
}

/// What the request says about the session: `?container=c&command=sh&command=-c&stdin=true&tty=true`
/// for exec/attach, `?ports=8080&ports=9090` for port-forward.
pub fn session_meta(
    info: &RequestInfo,
    query: Option<&str>,
    identity: Option<&Identity>,
    protocol: StreamProtocol,
    session_id: &str,
    request_seq: Option<u64>,
) -> SessionMeta {
    let mut meta = SessionMeta {
        session_id: session_id.to_owned(),
        kind: match info.subresource.as_str() {
            "attach" => SessionKind::Attach,
            "portforward" => SessionKind::PortForward,
            _ => SessionKind::Exec,
        },
        pod: info.name.clone(),
        namespace: info.namespace.clone(),
        container: String::new(),
        command: Vec::new(),
        tty: false,
        stdin: false,
        ports: Vec::new(),
        identity: identity.map(AuditIdentity::from),
        protocol: session_protocol(protocol),
        start_ns: 0,
        request_seq,
        frames_recorded: true,
    };
    let truthy = |v: &str| matches!(v, "true" | "1");
    for (key, value) in form_urlencoded::parse(query.unwrap_or_default().as_bytes()) {
        match key.as_ref() {
            "container" => meta.container = value.into_owned(),
            "command" => meta.command.push(value.into_owned()),
            "tty" => meta.tty = truthy(&value),
            "stdin" => meta.stdin = truthy(&value),
            "ports" => meta.ports.extend(
                value
                    .split(',')
                    .filter_map(|p| p.trim().parse::<u16>().ok()),
            ),
            _ => {}
        }
    }
    meta
}

fn session_protocol(protocol: StreamProtocol) -> SessionProtocol {
    match protocol {
        StreamProtocol::WebSocketChannelV4 | StreamProtocol::WebSocketPortForward => {
            SessionProtocol::WebSocketV4
        }
        StreamProtocol::WebSocketChannelV5 => SessionProtocol::WebSocketV5,
        StreamProtocol::WebSocketBase64V4 => SessionProtocol::WebSocketBase64,
        StreamProtocol::Spdy31
        | StreamProtocol::SpdyPortForward
        | StreamProtocol::WebSocketTunnelSpdyPortForward => SessionProtocol::Spdy,
    }
}

impl SessionRecording {
    pub fn start(
        recorder: &Recorder,
        protocol: StreamProtocol,
        meta: SessionMeta,
    ) -> Result<Self, RecordError> {
        let frames = meta.frames_recorded;
        let writer = recorder.open_session(meta)?;
        Ok(Self {
            decoder: frames.then(|| SessionDecoder::new(protocol)),
            writer: Some(writer),
            exit_code: None,
            failure: None,
        })
    }

    /// Decodes and records bytes one peer sent. An error ends the session: the caller must not
    /// pass these bytes on.
    pub fn observe(&mut self, dir: Direction, bytes: &[u8]) -> Result<(), RecordingError> {
        let Some(decoder) = self.decoder.as_mut() else {
            return Ok(());
        };
        if bytes.is_empty() {
            return Ok(());
        }
        let events = match decoder.push(dir, bytes) {
            Ok(events) => events,
            Err(e) => {
                let peer = match dir {
                    Direction::ClientToServer => "client",
                    Direction::ServerToClient => "server",
                };
                self.failure = Some(format!("undecodable {peer} stream: {e}"));
                return Err(RecordingError::Decode(peer, e));
            }
        };
        let Some(writer) = &self.writer else {
            return Err(RecordError::SessionClosed.into());
        };
        for event in events {
            if let Err(e) = record_event(writer, event, &mut self.exit_code) {
                self.failure = Some(e.to_string());
                return Err(e.into());
            }
        }
        Ok(())
    }

    /// How long to hold the next chunk so the disk keeps up: nothing while the session's queue
    /// is under half full, then a delay growing with the backlog (up to [`MAX_BACKPRESSURE`]).
    /// Slowing the stream is what a recorder should do when the disk falls behind; ending the
    /// session (the overflow policy) is only the last resort.
    pub fn backpressure(&self) -> Option<Duration> {
        self.writer
            .as_ref()
            .and_then(|w| backpressure_for(w.backlog()))
    }

    /// Ends the session record (exit code, and why it failed if it did).
    pub fn finish(&mut self, error: Option<String>) {
        if let Some(writer) = self.writer.take() {
            writer.close(self.exit_code, self.failure.take().or(error));
        }
    }
}

impl Drop for SessionRecording {
    fn drop(&mut self) {
        self.finish(None);
    }
}

/// The longest pause before one chunk; the queue drains at disk speed meanwhile. Long enough
/// to ride out a slow fsync on a busy node.
pub const MAX_BACKPRESSURE: Duration = Duration::from_millis(250);

/// Pure: the delay for a queue `backlog` full (0.0..=1.0).
pub fn backpressure_for(backlog: f64) -> Option<Duration> {
    if backlog < 0.5 {
        return None;
    }
    // Quadratic: gentle just past half full, the full pause as the queue nears its limit.
    let over = ((backlog - 0.5) * 2.0).clamp(0.0, 1.0).powi(2);
    let millis = (over * MAX_BACKPRESSURE.as_millis() as f64).max(1.0);
    Some(Duration::from_micros((millis * 1000.0) as u64))
}

fn record_event(
    writer: &SessionWriter,
    event: StreamEvent,
    exit_code: &mut Option<i32>,
) -> Result<(), RecordError> {
    match event {
        StreamEvent::Data { channel, bytes } => {
            let kind = match channel {
                Channel::Stdin => FrameKind::Stdin,
                Channel::Stdout => FrameKind::Stdout,
                Channel::Stderr => FrameKind::Stderr,
                Channel::Error => FrameKind::Status,
                Channel::Resize => FrameKind::Resize,
            };
            writer.frame(kind, &bytes)
        }
        StreamEvent::Resize { width, height } => {
            let json = format!("{{\"Width\":{width},\"Height\":{height}}}");
            writer.frame(FrameKind::Resize, json.as_bytes())
        }
        StreamEvent::Status {
            exit_code: code,
            message,
        } => {
            if code.is_some() {
                *exit_code = code;
            }
            writer.frame(FrameKind::Status, message.as_bytes())
        }
        StreamEvent::PortForwardOpened { port, request_id } => writer.frame(
            FrameKind::PortForwardOpen {
                port,
                stream: stream_number(request_id.as_deref()),
            },
            &[],
        ),
        StreamEvent::PortForward {
            port,
            request_id,
            dir,
            data,
            ..
        } => writer.frame(
            FrameKind::PortForwardData {
                port,
                stream: stream_number(request_id.as_deref()),
                to_pod: dir == Direction::ClientToServer,
            },
            &data,
        ),
        StreamEvent::PortForwardError { port, message } => writer.frame(
            FrameKind::PortForwardError { port, stream: 0 },
            message.as_bytes(),
        ),
        StreamEvent::PortForwardClosed {
            port, request_id, ..
        } => writer.frame(
            FrameKind::PortForwardClose {
                port,
                stream: stream_number(request_id.as_deref()),
            },
            &[],
        ),
        StreamEvent::ChannelClosed { .. } | StreamEvent::Closed { .. } => Ok(()),
    }
}

/// kubectl numbers port-forward connections with a decimal `requestID`; anything else is 0.
fn stream_number(request_id: Option<&str>) -> u32 {
    request_id.and_then(|r| r.parse().ok()).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::classify::classify;

    #[test]
    fn backpressure_starts_at_half_full_and_grows_to_the_cap() {
        assert_eq!(backpressure_for(0.0), None);
        assert_eq!(backpressure_for(0.49), None);
        let at_half = backpressure_for(0.5).unwrap();
        let at_three_quarters = backpressure_for(0.75).unwrap();
        let full = backpressure_for(1.0).unwrap();
        assert!(at_half >= Duration::from_millis(1));
        assert!(at_half < at_three_quarters && at_three_quarters < full);
        assert_eq!(full, MAX_BACKPRESSURE);
        assert_eq!(backpressure_for(7.0), Some(MAX_BACKPRESSURE));
    }

    #[test]
    fn exec_and_port_forward_metadata_come_from_the_query() {
        let info = classify(
            &http::Method::GET,
            "/api/v1/namespaces/dev/pods/agent-0/exec",
            Some("command=sh&command=-c&command=echo%20hi&container=main&stdin=true&tty=true"),
        )
        .unwrap();
        let meta = session_meta(
            &info,
            Some("command=sh&command=-c&command=echo%20hi&container=main&stdin=true&tty=true"),
            None,
            StreamProtocol::WebSocketChannelV5,
            "id-1",
            Some(7),
        );
        assert_eq!(meta.kind, SessionKind::Exec);
        assert_eq!(
            (meta.pod.as_str(), meta.namespace.as_str()),
            ("agent-0", "dev")
        );
        assert_eq!(meta.command, ["sh", "-c", "echo hi"]);
        assert_eq!(meta.container, "main");
        assert!(meta.tty && meta.stdin);
        assert_eq!(meta.protocol, SessionProtocol::WebSocketV5);
        assert_eq!(meta.request_seq, Some(7));

        let info = classify(
            &http::Method::POST,
            "/api/v1/namespaces/dev/pods/db-0/portforward",
            None,
        )
        .unwrap();
        let meta = session_meta(
            &info,
            Some("ports=5432&ports=8080"),
            None,
            StreamProtocol::SpdyPortForward,
            "id-2",
            None,
        );
        assert_eq!(meta.kind, SessionKind::PortForward);
        assert_eq!(meta.ports, [5432, 8080]);
        assert!(!meta.tty);
    }
}
