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
use crate::record::frames::{
    Channel, Direction, EventSink, SessionDecoder, StreamEvent, StreamProtocol,
};
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

    /// Decodes and records a chunk one peer sent. An error ends the session: the caller must not
    /// pass this chunk on (and none of it is recorded).
    pub fn observe(&mut self, dir: Direction, chunk: &[u8]) -> Result<(), RecordingError> {
        let Some(decoder) = self.decoder.as_mut() else {
            return Ok(());
        };
        if chunk.is_empty() {
            return Ok(());
        }
        let mut found = ChunkEvents::new(chunk);
        if let Err(e) = decoder.push_into(dir, chunk, &mut found) {
            let peer = match dir {
                Direction::ClientToServer => "client",
                Direction::ServerToClient => "server",
            };
            self.failure = Some(format!("undecodable {peer} stream: {e}"));
            return Err(RecordingError::Decode(peer, e));
        }
        let Some(writer) = &self.writer else {
            return Err(RecordError::SessionClosed.into());
        };
        for found in found.into_found() {
            let result = match found {
                Found::Data { channel, parts } => {
                    let parts: Vec<&[u8]> = parts.iter().map(Part::bytes).collect();
                    writer.frame_parts(frame_kind(channel), &parts)
                }
                Found::Others(events) => events
                    .into_iter()
                    .try_for_each(|event| record_event(writer, event, &mut self.exit_code)),
            };
            if let Err(e) = result {
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
        let writer = self.writer.as_ref()?;
        let delay = backpressure_for(writer.backlog())?;
        writer.count_backpressure(delay);
        Some(delay)
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
        StreamEvent::Data { channel, bytes } => writer.frame(frame_kind(channel), &bytes),
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

fn frame_kind(channel: Channel) -> FrameKind {
    match channel {
        Channel::Stdin => FrameKind::Stdin,
        Channel::Stdout => FrameKind::Stdout,
        Channel::Stderr => FrameKind::Stderr,
        Channel::Error => FrameKind::Status,
        Channel::Resize => FrameKind::Resize,
    }
}

/// What the decoder found in one chunk, in wire order, held until the whole chunk decoded
/// (then laid out once, into the session's block). Data that lies in the chunk (server frames
/// are not masked) is kept as a slice of it; only pieces from a decoder's own buffer are copied
/// here.
struct ChunkEvents<'a> {
    chunk: &'a [u8],
    found: Vec<Found<'a>>,
    /// Other events since the last data, merged by `Vec<StreamEvent>`'s sink.
    others: Vec<StreamEvent>,
}

enum Found<'a> {
    /// One run of data on a channel.
    Data {
        channel: Channel,
        parts: Vec<Part<'a>>,
    },
    Others(Vec<StreamEvent>),
}

enum Part<'a> {
    InChunk(&'a [u8]),
    Copied(Vec<u8>),
}

impl Part<'_> {
    fn bytes(&self) -> &[u8] {
        match self {
            Part::InChunk(bytes) => bytes,
            Part::Copied(bytes) => bytes,
        }
    }
}

/// `data` as a slice of `chunk`, if it lies within it.
fn in_chunk<'a>(chunk: &'a [u8], data: &[u8]) -> Option<&'a [u8]> {
    let start = (data.as_ptr() as usize).checked_sub(chunk.as_ptr() as usize)?;
    let end = start.checked_add(data.len())?;
    chunk.get(start..end)
}

impl<'a> ChunkEvents<'a> {
    fn new(chunk: &'a [u8]) -> Self {
        Self {
            chunk,
            found: Vec::new(),
            others: Vec::new(),
        }
    }

    fn end_others(&mut self) {
        if !self.others.is_empty() {
            self.found
                .push(Found::Others(std::mem::take(&mut self.others)));
        }
    }

    fn into_found(mut self) -> Vec<Found<'a>> {
        self.end_others();
        self.found
    }
}

impl EventSink for ChunkEvents<'_> {
    fn data(&mut self, channel: Channel, data: &[u8]) {
        if data.is_empty() {
            return;
        }
        self.end_others();
        let same_run = matches!(self.found.last(), Some(Found::Data { channel: last, .. }) if *last == channel);
        if !same_run {
            self.found.push(Found::Data {
                channel,
                parts: Vec::new(),
            });
        }
        if let Some(Found::Data { parts, .. }) = self.found.last_mut() {
            // Pieces not in the chunk are copied together, straight onto the last copied piece.
            match (in_chunk(self.chunk, data), parts.last_mut()) {
                (Some(slice), _) => parts.push(Part::InChunk(slice)),
                (None, Some(Part::Copied(copied))) => copied.extend_from_slice(data),
                (None, _) => parts.push(Part::Copied(data.to_vec())),
            }
        }
    }

    fn port_forward(
        &mut self,
        port: u16,
        request_id: Option<&str>,
        dir: Direction,
        data: &[u8],
        capture: bool,
    ) {
        self.others
            .port_forward(port, request_id, dir, data, capture);
    }

    fn push(&mut self, event: StreamEvent) {
        EventSink::push(&mut self.others, event);
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

    /// An unmasked server frame: FIN, binary.
    fn server_frame(payload: &[u8]) -> Vec<u8> {
        let mut frame = vec![0x82];
        match payload.len() {
            len @ 0..=125 => frame.push(len as u8),
            len @ 126..=0xffff => {
                frame.push(126);
                frame.extend_from_slice(&(len as u16).to_be_bytes());
            }
            len => {
                frame.push(127);
                frame.extend_from_slice(&(len as u64).to_be_bytes());
            }
        }
        frame.extend_from_slice(payload);
        frame
    }

    fn channel(index: u8, data: &[u8]) -> Vec<u8> {
        let mut message = vec![index];
        message.extend_from_slice(data);
        server_frame(&message)
    }

    #[test]
    fn data_is_found_in_the_chunk_only_where_it_lies_there() {
        let chunk: Vec<u8> = (0..=255u8).cycle().take(4000).collect();
        let found = in_chunk(&chunk, &chunk[100..1100]).unwrap();
        assert_eq!(found.as_ptr(), chunk[100..].as_ptr(), "a slice, not a copy");
        assert_eq!(found.len(), 1000);
        assert!(in_chunk(&chunk, &chunk[3999..]).is_some());
        let elsewhere = chunk[..2000].to_vec();
        assert!(in_chunk(&chunk, &elsewhere).is_none(), "not in the chunk");
        assert!(
            in_chunk(&chunk[..10], &chunk[5..20]).is_none(),
            "runs past its end"
        );
        assert!(
            in_chunk(&chunk[10..], &chunk[5..20]).is_none(),
            "starts before it"
        );
    }

    #[tokio::test]
    async fn a_chunk_of_many_frames_is_recorded_as_its_runs_of_data_across_chunk_boundaries() {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("audit.key");
        std::fs::write(&key, [7u8; 32]).unwrap();
        let cfg = crate::record::RecordConfig {
            path: Some(dir.path().join("store")),
            signing_key_file: Some(key),
            ..Default::default()
        };
        let recorder =
            Recorder::open(&cfg, crate::metrics::RecorderMetrics::new().unwrap()).unwrap();
        let info = classify(
            &http::Method::GET,
            "/api/v1/namespaces/dev/pods/agent-0/exec",
            Some("command=cat&stdout=true"),
        )
        .unwrap();
        let protocol = StreamProtocol::WebSocketChannelV5;
        let meta = session_meta(&info, Some("command=cat"), None, protocol, "s-1", None);
        let mut recording = SessionRecording::start(&recorder, protocol, meta).unwrap();

        let big: Vec<u8> = (0..40_000u32).map(|i| (i % 253) as u8).collect();
        let second: Vec<u8> = (0..30_000u32).map(|i| (i % 241) as u8).collect();
        let mut stream = channel(1, &big);
        stream.extend(channel(2, b"warn"));
        stream.extend(channel(1, b"a"));
        stream.extend(channel(1, b"b"));
        stream.extend(channel(1, &second));
        stream.extend(channel(
            3,
            br#"{"metadata":{},"status":"Failure","message":"command terminated with non-zero exit code: exit code 3","reason":"NonZeroExitCode","details":{"causes":[{"reason":"ExitCode","message":"3"}]}}"#,
        ));
        // Cuts: inside "warn", inside the second big frame's payload, inside the status frame's
        // header (the stream is 40_005 + 7 + 4 + 4 + 30_005 bytes before the status frame).
        let cuts = [0, 40_010, 50_000, 70_026, stream.len()];
        for pair in cuts.windows(2) {
            let chunk = stream[pair[0]..pair[1]].to_vec();
            recording
                .observe(Direction::ServerToClient, &chunk)
                .unwrap();
        }
        recording.finish(None);
        drop(recording);

        let store = recorder.store();
        let session = (0..500)
            .find_map(|_| {
                let found = crate::record::query::find_session(store.as_ref(), "s-1").ok();
                match found {
                    Some(s) if s.end_ns.is_some() => Some(s),
                    _ => {
                        std::thread::sleep(Duration::from_millis(10));
                        None
                    }
                }
            })
            .expect("the session closes");
        assert_eq!(session.exit_code, Some(3));
        assert_eq!(session.stdout_bytes, (big.len() + 2 + second.len()) as u64);
        assert_eq!(session.stderr_bytes, 4);
        let frames = crate::record::query::session_frames(store.as_ref(), session.seq).unwrap();
        let mut stdout = Vec::new();
        let mut kinds = Vec::new();
        for frame in frames {
            if let crate::record::FrameEvent::Data { kind, data } = frame.event {
                if kind == FrameKind::Stdout {
                    stdout.extend_from_slice(&data);
                }
                kinds.push((kind, data.len()));
            }
        }
        let mut expected = big.clone();
        expected.extend_from_slice(b"ab");
        expected.extend_from_slice(&second);
        assert_eq!(stdout, expected);
        // Runs of one channel within a chunk are one frame (copied pieces and slices of the
        // chunk together); a chunk boundary starts a new one.
        let message = "command terminated with non-zero exit code: exit code 3";
        assert_eq!(
            kinds,
            [
                (FrameKind::Stdout, 40_000),
                (FrameKind::Stderr, 2),
                (FrameKind::Stderr, 2),
                (FrameKind::Stdout, 2 + 9_975),
                (FrameKind::Stdout, 20_025),
                (FrameKind::Status, message.len()),
            ]
        );
    }
}
