//! Exec/attach over SPDY/3.1, as client-go's SPDY executor drives it through moby/spdystream: the client opens one
//! stream per channel (SYN_STREAM with a `streamtype` header: error, stdin, stdout, stderr, resize), the server
//! answers each with SYN_REPLY, data flows in DATA frames, and at the end the server writes the status on the error
//! stream, half-closes every stream with FIN and sends GOAWAY.
//!
//! Owns one upgraded connection's SPDY session. It must never send more than a flow-controlling peer's window
//! allows, and never keep the imaginary process alive once the client is gone.

pub(crate) mod frame;

use std::collections::HashMap;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio::time::{sleep, timeout};

use self::frame::{Frame, FrameReader, FrameWriter, DEFAULT_WINDOW, FLAG_FIN};
use super::channel::ResizeDecoder;
use super::commands::{Event, Output, Process, CHUNK};
use super::{error_channel_payload, ChannelVersion, ExecError, ExecRequest};

/// How long the client gets to open all the streams the request asked for (the kubelet's default).
const STREAM_CREATION_TIMEOUT: Duration = Duration::from_secs(30);
/// How long to wait for the client to hang up after our GOAWAY before dropping the connection.
const CLOSE_GRACE: Duration = Duration::from_secs(5);
/// Receive windows are topped up once this much of them has been used.
const WINDOW_UPDATE_THRESHOLD: u32 = DEFAULT_WINDOW / 2;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Kind {
    Error,
    Stdin,
    Stdout,
    Stderr,
    Resize,
    Other,
}

impl Kind {
    fn from_header(value: Option<&str>) -> Self {
        match value {
            Some("error") => Kind::Error,
            Some("stdin") => Kind::Stdin,
            Some("stdout") => Kind::Stdout,
            Some("stderr") => Kind::Stderr,
            Some("resize") => Kind::Resize,
            _ => Kind::Other,
        }
    }
}

struct StreamState {
    kind: Kind,
    /// We sent FIN or RST_STREAM (or the client reset it): nothing more may be written.
    local_closed: bool,
    /// Our send window, meaningful once the client shows it does flow control.
    send_window: i64,
    /// Bytes received since the last WINDOW_UPDATE we sent for this stream.
    recv_unacked: u32,
}

/// Writes frames to the connection.
struct Writer<W> {
    io: W,
    frames: FrameWriter,
    buf: BytesMut,
}

impl<W: AsyncWrite + Unpin> Writer<W> {
    async fn send(&mut self, frame: &Frame) -> Result<(), ExecError> {
        self.buf.clear();
        self.frames.encode(frame, &mut self.buf)?;
        self.io.write_all(&self.buf).await?;
        self.io.flush().await?;
        Ok(())
    }
}

/// What handling one frame means for the session.
enum Next {
    Continue,
    /// The client said GOAWAY: it will not read the rest of the session.
    ClientLeft,
}

struct Session {
    version: ChannelVersion,
    tty: bool,
    expected: Vec<Kind>,
    streams: HashMap<u32, StreamState>,
    /// Stream id per channel kind, for the first stream of each kind.
    by_kind: HashMap<Kind, u32>,
    last_client_stream: u32,
    /// Set once the client sends SETTINGS with an initial window or any WINDOW_UPDATE: spdystream never does, and
    /// holding to windows it never replenishes would stall it after 64 KiB.
    flow_control: bool,
    initial_send_window: i64,
    session_send_window: i64,
    session_recv_unacked: u32,
    resize: ResizeDecoder,
}

impl Session {
    fn new(version: ChannelVersion, request: &ExecRequest) -> Self {
        let mut expected = vec![Kind::Error];
        if request.stdin {
            expected.push(Kind::Stdin);
        }
        if request.stdout {
            expected.push(Kind::Stdout);
        }
        if request.stderr {
            expected.push(Kind::Stderr);
        }
        if request.tty && version.supports_resize() {
            expected.push(Kind::Resize);
        }
        Self {
            version,
            tty: request.tty,
            expected,
            streams: HashMap::new(),
            by_kind: HashMap::new(),
            last_client_stream: 0,
            flow_control: false,
            initial_send_window: i64::from(DEFAULT_WINDOW),
            session_send_window: i64::from(DEFAULT_WINDOW),
            session_recv_unacked: 0,
            resize: ResizeDecoder::default(),
        }
    }

    fn all_streams_open(&self) -> bool {
        self.expected
            .iter()
            .all(|kind| self.by_kind.contains_key(kind))
    }

    async fn handle<W: AsyncWrite + Unpin>(
        &mut self,
        frame: Frame,
        out: &mut Writer<W>,
        process: &mut Process,
    ) -> Result<Next, ExecError> {
        match frame {
            Frame::SynStream {
                stream_id,
                flags,
                headers,
                ..
            } => {
                if stream_id % 2 == 0 || stream_id <= self.last_client_stream {
                    let rst = Frame::RstStream {
                        stream_id,
                        status: frame::rst::PROTOCOL_ERROR,
                    };
                    out.send(&rst).await?;
                    return Ok(Next::Continue);
                }
                self.last_client_stream = stream_id;
                let kind = Kind::from_header(frame::header_value(&headers, "streamtype"));
                if kind == Kind::Other {
                    tracing::debug!(stream_id, ?headers, "unexpected SPDY stream type");
                }
                self.by_kind.entry(kind).or_insert(stream_id);
                self.streams.insert(
                    stream_id,
                    StreamState {
                        kind,
                        local_closed: false,
                        send_window: self.initial_send_window,
                        recv_unacked: 0,
                    },
                );
                let reply = Frame::SynReply {
                    stream_id,
                    flags: 0,
                    headers: Vec::new(),
                };
                out.send(&reply).await?;
                if flags & FLAG_FIN != 0 {
                    self.remote_finished(stream_id, process);
                }
            }
            Frame::Data {
                stream_id,
                flags,
                data,
            } => {
                let Some(stream) = self.streams.get_mut(&stream_id) else {
                    return Ok(Next::Continue);
                };
                let kind = stream.kind;
                let len = data.len() as u32;
                stream.recv_unacked = stream.recv_unacked.saturating_add(len);
                // A finished stream needs no more window.
                let stream_update =
                    if stream.recv_unacked >= WINDOW_UPDATE_THRESHOLD && flags & FLAG_FIN == 0 {
                        std::mem::take(&mut stream.recv_unacked)
                    } else {
                        0
                    };
                self.session_recv_unacked = self.session_recv_unacked.saturating_add(len);
                match kind {
                    Kind::Stdin => process.write_stdin(data),
                    Kind::Resize if self.tty => {
                        for size in self.resize.push(&data) {
                            process.resize(size);
                        }
                    }
                    _ => {}
                }
                // Grant as we receive: the process's stdin buffers without bound anyway, and a client that flow
                // controls must never be left waiting on a window we forgot to reopen.
                if stream_update > 0 {
                    out.send(&Frame::WindowUpdate {
                        stream_id,
                        delta: stream_update,
                    })
                    .await?;
                }
                if self.session_recv_unacked >= WINDOW_UPDATE_THRESHOLD {
                    let delta = std::mem::take(&mut self.session_recv_unacked);
                    out.send(&Frame::WindowUpdate {
                        stream_id: 0,
                        delta,
                    })
                    .await?;
                }
                if flags & FLAG_FIN != 0 {
                    self.remote_finished(stream_id, process);
                }
            }
            Frame::RstStream { stream_id, status } => {
                tracing::debug!(stream_id, status, "client reset a SPDY stream");
                if let Some(stream) = self.streams.get_mut(&stream_id) {
                    stream.local_closed = true;
                }
                self.remote_finished(stream_id, process);
            }
            Frame::Settings { entries, .. } => {
                for entry in entries {
                    if entry.id == frame::SETTINGS_INITIAL_WINDOW_SIZE {
                        let value = i64::from(entry.value & 0x7fff_ffff);
                        let delta = value - self.initial_send_window;
                        self.initial_send_window = value;
                        for stream in self.streams.values_mut() {
                            stream.send_window += delta;
                        }
                        self.flow_control = true;
                    }
                }
            }
            Frame::WindowUpdate { stream_id, delta } => {
                self.flow_control = true;
                if stream_id == 0 {
                    self.session_send_window += i64::from(delta);
                } else if let Some(stream) = self.streams.get_mut(&stream_id) {
                    stream.send_window += i64::from(delta);
                }
            }
            Frame::Ping { id } => {
                // Odd ids are the client's pings, to echo; even ones would be answers to ours (we send none).
                if id % 2 == 1 {
                    out.send(&Frame::Ping { id }).await?;
                }
            }
            Frame::GoAway { .. } => return Ok(Next::ClientLeft),
            Frame::SynReply { .. } | Frame::Headers { .. } | Frame::Unknown { .. } => {}
        }
        Ok(Next::Continue)
    }

    /// The client will send nothing more on this stream.
    fn remote_finished(&mut self, stream_id: u32, process: &mut Process) {
        if self.streams.get(&stream_id).map(|s| s.kind) == Some(Kind::Stdin)
            && self.by_kind.get(&Kind::Stdin) == Some(&stream_id)
        {
            process.close_stdin();
        }
    }

    /// The stream that carries `kind`, if the client opened it and it can still be written.
    fn writable(&self, kind: Kind) -> Option<u32> {
        let id = *self.by_kind.get(&kind)?;
        let stream = self.streams.get(&id)?;
        (!stream.local_closed).then_some(id)
    }

    /// Where a piece of output goes; `None` drops it (the client did not open that stream, or reset it).
    fn route(&self, output: Output) -> Option<(u32, Bytes)> {
        match output {
            Output::Stdout(data) => self.writable(Kind::Stdout).map(|id| (id, data)),
            Output::Stderr(data) => self.writable(Kind::Stderr).map(|id| (id, data)),
        }
    }

    /// How much may be sent on `stream_id` right now.
    fn window(&self, stream_id: u32) -> usize {
        if !self.flow_control {
            return usize::MAX;
        }
        let stream = self.streams.get(&stream_id).map_or(0, |s| s.send_window);
        stream.min(self.session_send_window).max(0) as usize
    }

    fn consume_window(&mut self, stream_id: u32, len: usize) {
        let len = len as i64;
        self.session_send_window -= len;
        if let Some(stream) = self.streams.get_mut(&stream_id) {
            stream.send_window -= len;
        }
    }

    /// Sends as much of `pending` as the windows allow; what is left stays pending.
    async fn flush_pending<W: AsyncWrite + Unpin>(
        &mut self,
        pending: &mut Option<(u32, Bytes)>,
        out: &mut Writer<W>,
    ) -> Result<(), ExecError> {
        while let Some((stream_id, data)) = pending.as_mut() {
            let stream_id = *stream_id;
            if self.streams.get(&stream_id).is_none_or(|s| s.local_closed) {
                *pending = None;
                break;
            }
            let allowed = self.window(stream_id).min(CHUNK);
            if allowed == 0 {
                break;
            }
            let piece = data.split_to(allowed.min(data.len()));
            self.consume_window(stream_id, piece.len());
            out.send(&Frame::Data {
                stream_id,
                flags: 0,
                data: piece,
            })
            .await?;
            if data.is_empty() {
                *pending = None;
            }
        }
        Ok(())
    }

    /// Half-closes one stream from our side.
    async fn finish_stream<W: AsyncWrite + Unpin>(
        &mut self,
        stream_id: u32,
        out: &mut Writer<W>,
    ) -> Result<(), ExecError> {
        let Some(stream) = self.streams.get_mut(&stream_id) else {
            return Ok(());
        };
        if stream.local_closed {
            return Ok(());
        }
        stream.local_closed = true;
        let fin = Frame::Data {
            stream_id,
            flags: FLAG_FIN,
            data: Bytes::new(),
        };
        out.send(&fin).await
    }
}

/// Reads and decodes frames on its own task, so a large frame arriving in pieces never holds up the writer.
async fn read_frames<R: AsyncRead + Unpin>(
    mut io: R,
    frames: mpsc::Sender<Result<Frame, ExecError>>,
) {
    let mut buf = BytesMut::with_capacity(16 * 1024);
    let mut reader = FrameReader::default();
    loop {
        match reader.decode(&mut buf) {
            Ok(Some(frame)) => {
                if frames.send(Ok(frame)).await.is_err() {
                    return;
                }
            }
            Ok(None) => {
                if buf.capacity() - buf.len() < 8 * 1024 {
                    buf.reserve(16 * 1024);
                }
                match io.read_buf(&mut buf).await {
                    Ok(0) => return,
                    Ok(_) => {}
                    Err(err) => {
                        let _ = frames.send(Err(err.into())).await;
                        return;
                    }
                }
            }
            Err(err) => {
                let _ = frames.send(Err(err.into())).await;
                return;
            }
        }
    }
}

/// Aborts the frame reader however the session ends.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

pub(super) async fn serve<IO>(io: IO, version: &str, request: ExecRequest) -> Result<(), ExecError>
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let version = ChannelVersion::from_spdy(version).ok_or_else(|| ExecError::Rejected {
        status: http::StatusCode::FORBIDDEN,
        reason: "Forbidden",
        message: format!("unsupported stream protocol version {version:?}"),
    })?;
    tracing::debug!(pod = %request.pod, ?version, "exec session over SPDY/3.1");
    let (read_half, write_half) = tokio::io::split(io);
    let (frame_tx, mut frames) = mpsc::channel(64);
    let _reader = AbortOnDrop(tokio::spawn(read_frames(read_half, frame_tx)));
    let mut out = Writer {
        io: write_half,
        frames: FrameWriter::default(),
        buf: BytesMut::with_capacity(CHUNK + 64),
    };
    let mut session = Session::new(version, &request);
    let mut process = Process::start(&request);

    let creation_deadline = sleep(STREAM_CREATION_TIMEOUT);
    tokio::pin!(creation_deadline);
    while !session.all_streams_open() {
        tokio::select! {
            frame = frames.recv() => match frame {
                Some(Ok(frame)) => {
                    if let Next::ClientLeft = session.handle(frame, &mut out, &mut process).await? {
                        return Ok(());
                    }
                }
                Some(Err(err)) => return protocol_failure(&mut out, &session, err).await,
                None => return Ok(()),
            },
            _ = &mut creation_deadline => {
                go_away(&mut out, &session, frame::goaway::OK).await;
                return Err(ExecError::StreamCreationTimeout(STREAM_CREATION_TIMEOUT));
            }
        }
    }

    let mut pending: Option<(u32, Bytes)> = None;
    let exit_code = loop {
        tokio::select! {
            frame = frames.recv() => match frame {
                Some(Ok(frame)) => {
                    if let Next::ClientLeft = session.handle(frame, &mut out, &mut process).await? {
                        return Ok(());
                    }
                }
                Some(Err(err)) => return protocol_failure(&mut out, &session, err).await,
                None => return Ok(()),
            },
            event = process.next_event(), if pending.is_none() => match event {
                Event::Output(output) => pending = session.route(output),
                Event::Exited(code) => break code,
            },
        }
        session.flush_pending(&mut pending, &mut out).await?;
    };

    // Like a runtime, close the output streams when the process exits, then report the status. The error stream
    // goes last: once it ends, client-go tears the connection down.
    let error_stream = session.writable(Kind::Error);
    let mut ids: Vec<u32> = session.streams.keys().copied().collect();
    ids.sort_unstable();
    for kind in [Kind::Stdout, Kind::Stderr] {
        if let Some(id) = session.writable(kind) {
            session.finish_stream(id, &mut out).await?;
        }
    }
    for id in ids.iter().copied().filter(|id| Some(*id) != error_stream) {
        session.finish_stream(id, &mut out).await?;
    }
    if let Some(id) = error_stream {
        if let Some(payload) = error_channel_payload(session.version, &request, exit_code) {
            let data = Frame::Data {
                stream_id: id,
                flags: 0,
                data: Bytes::from(payload),
            };
            out.send(&data).await?;
        }
        session.finish_stream(id, &mut out).await?;
    }
    go_away(&mut out, &session, frame::goaway::OK).await;

    // Wait for the client to hang up: closing first could reset the connection under data it has not read yet.
    let _ = timeout(CLOSE_GRACE, async {
        while let Some(Ok(_)) = frames.recv().await {}
    })
    .await;
    let _ = out.io.shutdown().await;
    Ok(())
}

async fn go_away<W: AsyncWrite + Unpin>(out: &mut Writer<W>, session: &Session, status: u32) {
    let frame = Frame::GoAway {
        last_good_stream_id: session.last_client_stream,
        status,
    };
    // Best effort: the client may already be gone.
    let _ = out.send(&frame).await;
}

async fn protocol_failure<W: AsyncWrite + Unpin>(
    out: &mut Writer<W>,
    session: &Session,
    err: ExecError,
) -> Result<(), ExecError> {
    if matches!(err, ExecError::Spdy(_)) {
        go_away(out, session, frame::goaway::PROTOCOL_ERROR).await;
    }
    Err(err)
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use tokio::io::{DuplexStream, ReadHalf, WriteHalf};

    use super::super::commands::STREAM_PATTERN;
    use super::super::{run, StreamProtocol};
    use super::frame::{Setting, SETTINGS_INITIAL_WINDOW_SIZE};
    use super::*;

    /// A minimal SPDY client built on the codec, standing in for spdystream.
    struct Client {
        read: ReadHalf<DuplexStream>,
        write: WriteHalf<DuplexStream>,
        reader: FrameReader,
        writer: FrameWriter,
        buf: BytesMut,
    }

    impl Client {
        fn new(io: DuplexStream) -> Self {
            let (read, write) = tokio::io::split(io);
            Self {
                read,
                write,
                reader: FrameReader::default(),
                writer: FrameWriter::default(),
                buf: BytesMut::new(),
            }
        }

        async fn send(&mut self, frame: Frame) {
            let mut bytes = BytesMut::new();
            self.writer.encode(&frame, &mut bytes).unwrap();
            self.write.write_all(&bytes).await.unwrap();
        }

        async fn recv(&mut self) -> Option<Frame> {
            loop {
                if let Some(frame) = self.reader.decode(&mut self.buf).unwrap() {
                    return Some(frame);
                }
                if self.read.read_buf(&mut self.buf).await.unwrap() == 0 {
                    return None;
                }
            }
        }
    }

    #[derive(Debug, Default)]
    struct Transcript {
        stdout: Vec<u8>,
        stderr: Vec<u8>,
        error: Vec<u8>,
        fins: HashSet<u32>,
        pings: Vec<u32>,
        goaway: Option<u32>,
        ids: HashMap<&'static str, u32>,
    }

    fn request(command: &[&str], stdin: bool, tty: bool) -> ExecRequest {
        ExecRequest {
            namespace: "default".into(),
            pod: "web-0".into(),
            container: None,
            command: command.iter().map(|s| s.to_string()).collect(),
            stdin,
            stdout: true,
            stderr: !tty,
            tty,
            attach: false,
            user: "alice".into(),
        }
    }

    /// Plays client-go's SPDY executor: opens the streams in its order, waits for every SYN_REPLY, sends stdin
    /// (then FIN), and reads until GOAWAY. With `window`, it also flow controls: announces the initial window and
    /// only reopens it lazily, checking the server never overruns it.
    async fn session(
        version: &str,
        request: ExecRequest,
        stdin: &[&[u8]],
        window: Option<u32>,
    ) -> Transcript {
        let (client_io, server_io) = tokio::io::duplex(64 * 1024);
        let resize = request.tty
            && ChannelVersion::from_spdy(version)
                .unwrap()
                .supports_resize();
        let server = tokio::spawn(run(
            server_io,
            StreamProtocol::Spdy {
                version: version.into(),
            },
            request.clone(),
        ));
        let mut client = Client::new(client_io);
        let mut t = Transcript::default();
        let work = async {
            if let Some(window) = window {
                client
                    .send(Frame::Settings {
                        flags: 0,
                        entries: vec![Setting {
                            flags: 0,
                            id: SETTINGS_INITIAL_WINDOW_SIZE,
                            value: window,
                        }],
                    })
                    .await;
            }
            // spdystream's ping ids are odd for the client.
            client.send(Frame::Ping { id: 1 }).await;
            let mut kinds = vec!["error"];
            for (wanted, kind) in [
                (request.stdin, "stdin"),
                (request.stdout, "stdout"),
                (request.stderr, "stderr"),
                (resize, "resize"),
            ] {
                if wanted {
                    kinds.push(kind);
                }
            }
            for (i, kind) in kinds.iter().enumerate() {
                let stream_id = 1 + 2 * i as u32;
                t.ids.insert(kind, stream_id);
                client
                    .send(Frame::SynStream {
                        stream_id,
                        associated_to: 0,
                        priority: 0,
                        slot: 0,
                        flags: 0,
                        headers: vec![("streamtype".into(), kind.to_string())],
                    })
                    .await;
                loop {
                    match client.recv().await {
                        Some(Frame::SynReply { stream_id: id, .. }) => {
                            assert_eq!(id, stream_id);
                            break;
                        }
                        Some(Frame::Ping { id }) => t.pings.push(id),
                        other => panic!("expected SYN_REPLY, got {other:?}"),
                    }
                }
            }
            if resize {
                let data = Bytes::from_static(b"{\"Width\":90,\"Height\":12}\n");
                client
                    .send(Frame::Data {
                        stream_id: t.ids["resize"],
                        flags: 0,
                        data,
                    })
                    .await;
            }
            if let Some(&id) = t.ids.get("stdin") {
                for piece in stdin {
                    let data = Bytes::copy_from_slice(piece);
                    client
                        .send(Frame::Data {
                            stream_id: id,
                            flags: 0,
                            data,
                        })
                        .await;
                }
                client
                    .send(Frame::Data {
                        stream_id: id,
                        flags: FLAG_FIN,
                        data: Bytes::new(),
                    })
                    .await;
            }
            let initial = i64::from(window.unwrap_or(DEFAULT_WINDOW));
            let mut windows: HashMap<u32, i64> = HashMap::new();
            let mut session_window = i64::from(DEFAULT_WINDOW);
            let mut consumed: HashMap<u32, i64> = HashMap::new();
            let mut session_consumed = 0i64;
            while let Some(frame) = client.recv().await {
                match frame {
                    Frame::Data {
                        stream_id,
                        flags,
                        data,
                    } => {
                        if flags & FLAG_FIN != 0 {
                            assert!(t.fins.insert(stream_id), "second FIN on {stream_id}");
                        } else {
                            assert!(
                                !t.fins.contains(&stream_id),
                                "data after FIN on {stream_id}"
                            );
                        }
                        if data.is_empty() {
                            continue;
                        }
                        let target = match stream_id {
                            id if Some(&id) == t.ids.get("stdout") => &mut t.stdout,
                            id if Some(&id) == t.ids.get("stderr") => &mut t.stderr,
                            id if Some(&id) == t.ids.get("error") => &mut t.error,
                            id => panic!("data on stream {id}"),
                        };
                        target.extend_from_slice(&data);
                        if window.is_none() {
                            continue;
                        }
                        let len = data.len() as i64;
                        let stream_window = windows.entry(stream_id).or_insert(initial);
                        *stream_window -= len;
                        session_window -= len;
                        assert!(
                            *stream_window >= 0 && session_window >= 0,
                            "server overran the window"
                        );
                        let used = consumed.entry(stream_id).or_default();
                        *used += len;
                        session_consumed += len;
                        if *used >= initial / 2 {
                            let delta = std::mem::take(used);
                            *stream_window += delta;
                            client
                                .send(Frame::WindowUpdate {
                                    stream_id,
                                    delta: delta as u32,
                                })
                                .await;
                        }
                        if session_consumed >= i64::from(DEFAULT_WINDOW / 2) {
                            let delta = std::mem::take(&mut session_consumed);
                            session_window += delta;
                            client
                                .send(Frame::WindowUpdate {
                                    stream_id: 0,
                                    delta: delta as u32,
                                })
                                .await;
                        }
                    }
                    Frame::Ping { id } => t.pings.push(id),
                    Frame::GoAway { status, .. } => {
                        t.goaway = Some(status);
                        break;
                    }
                    Frame::WindowUpdate { .. } => {}
                    other => panic!("unexpected {other:?}"),
                }
            }
        };
        timeout(Duration::from_secs(20), work)
            .await
            .expect("session timed out");
        drop(client);
        timeout(Duration::from_secs(5), server)
            .await
            .expect("server did not finish")
            .unwrap()
            .unwrap();
        t
    }

    const SUCCESS: &str = r#"{"metadata":{},"status":"Success"}"#;

    fn all_streams_finished(t: &Transcript) {
        for (kind, id) in &t.ids {
            assert!(t.fins.contains(id), "no FIN on {kind}");
        }
        assert_eq!(t.goaway, Some(frame::goaway::OK));
    }

    #[tokio::test]
    async fn echo_hi() {
        let t = session(
            "v4.channel.k8s.io",
            request(&["echo", "hi"], false, false),
            &[],
            None,
        )
        .await;
        assert_eq!(t.stdout, b"hi\n");
        assert_eq!(String::from_utf8(t.error.clone()).unwrap(), SUCCESS);
        assert_eq!(t.pings, vec![1]);
        all_streams_finished(&t);
    }

    #[tokio::test]
    async fn cat_with_stdin() {
        let t = session(
            "v5.channel.k8s.io",
            request(&["cat"], true, false),
            &[b"hello\n", b"world\n"],
            None,
        )
        .await;
        assert_eq!(t.stdout, b"hello\nworld\n");
        assert_eq!(String::from_utf8(t.error.clone()).unwrap(), SUCCESS);
        all_streams_finished(&t);
    }

    #[tokio::test]
    async fn exit_3() {
        let t = session(
            "v4.channel.k8s.io",
            request(&["sh", "-c", "stderr bye; exit 3"], false, false),
            &[],
            None,
        )
        .await;
        assert_eq!(t.stderr, b"bye\n");
        let status: serde_json::Value = serde_json::from_slice(&t.error).unwrap();
        assert_eq!(status["reason"], "NonZeroExitCode");
        assert_eq!(
            status["details"]["causes"][0],
            serde_json::json!({"reason": "ExitCode", "message": "3"})
        );
        all_streams_finished(&t);
    }

    #[tokio::test]
    async fn stream_a_megabyte_without_flow_control() {
        // spdystream never sends WINDOW_UPDATE; the server must not wait for one.
        let t = session(
            "v4.channel.k8s.io",
            request(&["stream", "1000000"], false, false),
            &[],
            None,
        )
        .await;
        assert_eq!(t.stdout.len(), 1_000_000);
        assert!(t
            .stdout
            .iter()
            .enumerate()
            .all(|(i, b)| *b == STREAM_PATTERN[i % 64]));
        assert_eq!(String::from_utf8(t.error.clone()).unwrap(), SUCCESS);
    }

    #[tokio::test]
    async fn stream_a_megabyte_with_flow_control() {
        let t = session(
            "v4.channel.k8s.io",
            request(&["stream", "1000000"], false, false),
            &[],
            Some(10_000),
        )
        .await;
        assert_eq!(t.stdout.len(), 1_000_000);
        assert!(t
            .stdout
            .iter()
            .enumerate()
            .all(|(i, b)| *b == STREAM_PATTERN[i % 64]));
        all_streams_finished(&t);
    }

    #[tokio::test]
    async fn legacy_versions_report_only_failures() {
        let t = session(
            "v2.channel.k8s.io",
            request(&["true"], false, false),
            &[],
            None,
        )
        .await;
        assert!(t.error.is_empty());
        let t = session("", request(&["exit", "9"], false, false), &[], None).await;
        assert!(String::from_utf8(t.error)
            .unwrap()
            .ends_with("[exit 9], exit code 9"));
    }

    #[tokio::test]
    async fn tty_shell_with_resize_stream() {
        let t = session(
            "v4.channel.k8s.io",
            request(&["sh"], true, true),
            &[b"stty size\r", b"exit\r"],
            None,
        )
        .await;
        assert!(!t.ids.contains_key("stderr"));
        assert_eq!(
            String::from_utf8(t.stdout.clone()).unwrap(),
            "$ stty size\r\n12 90\r\n$ exit\r\n"
        );
        assert_eq!(String::from_utf8(t.error.clone()).unwrap(), SUCCESS);
        all_streams_finished(&t);
    }

    #[tokio::test]
    async fn large_stdin_gets_window_updates() {
        let big = vec![b'x'; 200_000];
        let (client_io, server_io) = tokio::io::duplex(256 * 1024);
        let server = tokio::spawn(run(
            server_io,
            StreamProtocol::Spdy {
                version: "v4.channel.k8s.io".into(),
            },
            request(&["sleep", "3600"], true, false),
        ));
        let mut client = Client::new(client_io);
        for (stream_id, kind) in [(1, "error"), (3, "stdin"), (5, "stdout"), (7, "stderr")] {
            let headers = vec![("streamtype".into(), kind.into())];
            client
                .send(Frame::SynStream {
                    stream_id,
                    associated_to: 0,
                    priority: 0,
                    slot: 0,
                    flags: 0,
                    headers,
                })
                .await;
        }
        for chunk in big.chunks(20_000) {
            let data = Bytes::copy_from_slice(chunk);
            client
                .send(Frame::Data {
                    stream_id: 3,
                    flags: 0,
                    data,
                })
                .await;
        }
        let (mut stream_granted, mut session_granted) = (0u64, 0u64);
        let work = async {
            while stream_granted < 150_000 || session_granted < 150_000 {
                match client.recv().await.unwrap() {
                    Frame::WindowUpdate {
                        stream_id: 3,
                        delta,
                    } => stream_granted += u64::from(delta),
                    Frame::WindowUpdate {
                        stream_id: 0,
                        delta,
                    } => session_granted += u64::from(delta),
                    _ => {}
                }
            }
        };
        timeout(Duration::from_secs(10), work)
            .await
            .expect("no window updates");
        // A GOAWAY from the client ends the session and the process.
        client
            .send(Frame::GoAway {
                last_good_stream_id: 0,
                status: 0,
            })
            .await;
        timeout(Duration::from_secs(5), server)
            .await
            .unwrap()
            .unwrap()
            .unwrap();
    }

    #[tokio::test]
    async fn garbage_ends_the_session_without_panicking() {
        let mut seed = 0xdead_beef_cafe_f00du64;
        for round in 0..64 {
            let (client_io, server_io) = tokio::io::duplex(64 * 1024);
            let server = tokio::spawn(run(
                server_io,
                StreamProtocol::Spdy {
                    version: "v4.channel.k8s.io".into(),
                },
                request(&["echo", "hi"], false, false),
            ));
            let mut client = Client::new(client_io);
            if round % 2 == 0 {
                let headers = vec![("streamtype".into(), "error".into())];
                client
                    .send(Frame::SynStream {
                        stream_id: 1,
                        associated_to: 0,
                        priority: 0,
                        slot: 0,
                        flags: 0,
                        headers,
                    })
                    .await;
            }
            let garbage: Vec<u8> = (0..(round * 37 + 5))
                .map(|_| {
                    seed ^= seed << 13;
                    seed ^= seed >> 7;
                    seed ^= seed << 17;
                    seed as u8
                })
                .collect();
            let _ = client.write.write_all(&garbage).await;
            drop(client);
            let outcome = timeout(Duration::from_secs(5), server)
                .await
                .expect("server hung");
            assert!(outcome.is_ok(), "server panicked");
        }
    }
}
