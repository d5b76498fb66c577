//! Port forwarding for the Kubernetes API test double (`pods/NAME/portforward`): negotiates SPDY/3.1 with
//! `portforward.k8s.io`, or the WebSocket tunnel (`SPDY/3.1+portforward.k8s.io`, the same SPDY session carried in
//! binary WebSocket messages, as kubectl 1.35 uses by default), and then acts as every port of the pod: each data
//! stream is an echo server.
//!
//! Owns the session after the 101 response; routing and pod lookup stay with `api.rs`. It must never connect to
//! anything on the host (the "pod port" is purely in-memory) and never outlive its connection.

use std::collections::HashMap;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures_util::{SinkExt, StreamExt};
use http::header::UPGRADE;
use http::{HeaderMap, HeaderValue, StatusCode};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::timeout;
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

use super::spdy::frame::{
    header_value, Frame, FrameReader, FrameWriter, DEFAULT_WINDOW, FLAG_FIN,
    SETTINGS_INITIAL_WINDOW_SIZE,
};
use super::{
    header_tokens, header_value as response_header, upgrade_offer, websocket_key, ExecError,
    SEC_WEBSOCKET_ACCEPT, SEC_WEBSOCKET_PROTOCOL, X_STREAM_PROTOCOL_VERSION,
};

/// The X-Stream-Protocol-Version of port forwarding over SPDY.
pub const PORTFORWARD_PROTOCOL: &str = "portforward.k8s.io";
/// The Sec-WebSocket-Protocol of the SPDY-over-WebSocket tunnel.
pub const TUNNEL_PROTOCOL: &str = "SPDY/3.1+portforward.k8s.io";
/// Receive windows are topped up once this much of them has been used.
const WINDOW_UPDATE_THRESHOLD: u32 = DEFAULT_WINDOW / 2;
/// The largest WebSocket message the tunnel writes; SPDY frames may span messages.
const TUNNEL_CHUNK: usize = 32 * 1024;
/// How long a finished tunnel waits for the client's WebSocket close before dropping the connection.
const CLOSE_GRACE: Duration = Duration::from_secs(2);

/// How the SPDY port-forward session reaches us.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    /// SPDY/3.1 directly on the upgraded connection.
    Spdy,
    /// SPDY/3.1 bytes inside binary WebSocket messages.
    WebSocketTunnel,
}

/// Decides the transport from the request headers and returns the headers of the 101 response.
pub fn negotiate(headers: &HeaderMap) -> Result<(HeaderMap, Transport), ExecError> {
    let (upgrades, mut response) = upgrade_offer(headers)?;

    if upgrades.iter().any(|u| u.eq_ignore_ascii_case("websocket")) {
        let key = websocket_key(headers)?;
        let offered = header_tokens(headers, SEC_WEBSOCKET_PROTOCOL);
        if !offered.contains(&TUNNEL_PROTOCOL) {
            return Err(ExecError::bad_request(format!(
                "requested protocol(s) are not supported: {}; supports [{TUNNEL_PROTOCOL}]",
                super::go_list(&offered)
            )));
        }
        response.insert(UPGRADE, HeaderValue::from_static("websocket"));
        let accept = tokio_tungstenite::tungstenite::handshake::derive_accept_key(key);
        response.insert(SEC_WEBSOCKET_ACCEPT, response_header(&accept)?);
        response.insert(
            SEC_WEBSOCKET_PROTOCOL,
            HeaderValue::from_static(TUNNEL_PROTOCOL),
        );
        return Ok((response, Transport::WebSocketTunnel));
    }

    if upgrades.iter().any(|u| u.eq_ignore_ascii_case("SPDY/3.1")) {
        let offered = header_tokens(headers, X_STREAM_PROTOCOL_VERSION);
        if !offered.contains(&PORTFORWARD_PROTOCOL) {
            return Err(ExecError::Rejected {
                status: StatusCode::FORBIDDEN,
                reason: "Forbidden",
                message: format!(
                    "unable to upgrade: unable to negotiate protocol: client supports {}, server supports [{PORTFORWARD_PROTOCOL}]",
                    super::go_list(&offered)
                ),
            });
        }
        response.insert(UPGRADE, HeaderValue::from_static("SPDY/3.1"));
        response.insert(
            X_STREAM_PROTOCOL_VERSION,
            HeaderValue::from_static(PORTFORWARD_PROTOCOL),
        );
        return Ok((response, Transport::Spdy));
    }

    Err(ExecError::bad_request(format!(
        "unsupported upgrade {}; expected websocket or SPDY/3.1",
        super::go_list(&upgrades)
    )))
}

/// Serves one port-forward session on an upgraded connection until the client hangs up.
pub async fn run<IO>(io: IO, transport: Transport) -> Result<(), ExecError>
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let result = match transport {
        Transport::Spdy => serve_spdy(io).await,
        Transport::WebSocketTunnel => serve_tunnel(io).await,
    };
    match result {
        Err(err) if err.is_disconnect() => {
            tracing::debug!(error = %err, "port-forward client disconnected");
            Ok(())
        }
        other => other,
    }
}

/// Unwraps the WebSocket tunnel into a byte pipe and runs the SPDY session on the other end.
async fn serve_tunnel<IO>(io: IO) -> Result<(), ExecError>
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let ws = WebSocketStream::from_raw_socket(io, Role::Server, None).await;
    let (mut sink, mut messages) = ws.split();
    let (inner, outer) = tokio::io::duplex(2 * TUNNEL_CHUNK);
    let (mut from_session, mut to_session) = tokio::io::split(outer);

    let inbound = async {
        while let Some(message) = messages.next().await {
            match message? {
                Message::Binary(data) => to_session.write_all(&data).await?,
                Message::Close(_) => break,
                _ => {}
            }
        }
        // EOF tells the session the client is gone.
        to_session.shutdown().await?;
        Ok::<_, ExecError>(())
    };
    let outbound = async {
        let mut buf = vec![0u8; TUNNEL_CHUNK];
        loop {
            let n = from_session.read(&mut buf).await?;
            if n == 0 {
                break;
            }
            sink.send(Message::Binary(Bytes::copy_from_slice(&buf[..n])))
                .await?;
        }
        // Best effort: the client may have closed first.
        let _ = sink.close().await;
        Ok::<_, ExecError>(())
    };
    let pumps = async {
        let (session, outbound) = tokio::join!(serve_spdy(inner), outbound);
        session?;
        outbound
    };
    tokio::pin!(pumps, inbound);
    let inbound_result = tokio::select! {
        result = &mut pumps => {
            result?;
            // The session is over; give the client a moment to answer our close, but do not wait on it forever.
            timeout(CLOSE_GRACE, &mut inbound).await.unwrap_or(Ok(()))
        }
        result = &mut inbound => {
            pumps.await?;
            result
        }
    };
    // The inbound pump fails with a broken pipe when the session ended first; that is not the client's fault.
    match inbound_result {
        Err(ExecError::Io(err)) if err.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        other => other,
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Error,
    Data,
    Other,
}

struct Stream {
    kind: Kind,
    request_id: String,
    /// We sent FIN, or either side reset the stream.
    local_closed: bool,
    recv_unacked: u32,
}

struct Session<W> {
    io: W,
    frames: FrameWriter,
    buf: BytesMut,
    streams: HashMap<u32, Stream>,
    last_client_stream: u32,
    /// spdystream never sends WINDOW_UPDATE and ignores ours; only a client that shows it does flow control gets
    /// window updates.
    flow_control: bool,
    session_recv_unacked: u32,
}

impl<W: AsyncWrite + Unpin> Session<W> {
    async fn send(&mut self, frame: &Frame) -> Result<(), ExecError> {
        self.buf.clear();
        self.frames.encode(frame, &mut self.buf)?;
        self.io.write_all(&self.buf).await?;
        self.io.flush().await?;
        Ok(())
    }

    async fn finish(&mut self, stream_id: u32) -> Result<(), ExecError> {
        match self.streams.get_mut(&stream_id) {
            Some(stream) if !stream.local_closed => stream.local_closed = true,
            _ => return Ok(()),
        }
        self.send(&Frame::Data {
            stream_id,
            flags: FLAG_FIN,
            data: Bytes::new(),
        })
        .await
    }

    /// The client half-closed `stream_id`. A data stream's "connection" ends then, and so does its error stream:
    /// nothing went wrong forwarding to an echo port.
    async fn remote_finished(&mut self, stream_id: u32) -> Result<(), ExecError> {
        let Some(stream) = self.streams.get(&stream_id) else {
            return Ok(());
        };
        if stream.kind != Kind::Data {
            // client-go closes its side of the error stream right away; ours stays open while the data flows.
            if stream.kind == Kind::Other {
                self.finish(stream_id).await?;
            }
            return Ok(());
        }
        let request_id = stream.request_id.clone();
        self.finish(stream_id).await?;
        let paired: Vec<u32> = self
            .streams
            .iter()
            .filter(|(_, s)| s.kind == Kind::Error && s.request_id == request_id)
            .map(|(id, _)| *id)
            .collect();
        for id in paired {
            self.finish(id).await?;
        }
        Ok(())
    }

    /// Handles one frame; returns false once the client said GOAWAY.
    async fn handle(&mut self, frame: Frame) -> Result<bool, ExecError> {
        match frame {
            Frame::SynStream {
                stream_id,
                flags,
                headers,
                ..
            } => {
                if stream_id % 2 == 0 || stream_id <= self.last_client_stream {
                    self.send(&Frame::RstStream {
                        stream_id,
                        status: super::spdy::frame::rst::PROTOCOL_ERROR,
                    })
                    .await?;
                    return Ok(true);
                }
                self.last_client_stream = stream_id;
                let kind = match header_value(&headers, "streamtype") {
                    Some("error") => Kind::Error,
                    Some("data") => Kind::Data,
                    _ => Kind::Other,
                };
                let port = header_value(&headers, "port").unwrap_or_default();
                let request_id = header_value(&headers, "requestid")
                    .unwrap_or_default()
                    .to_owned();
                tracing::debug!(stream_id, ?kind, port, %request_id, "port-forward stream");
                self.streams.insert(
                    stream_id,
                    Stream {
                        kind,
                        request_id,
                        local_closed: false,
                        recv_unacked: 0,
                    },
                );
                self.send(&Frame::SynReply {
                    stream_id,
                    flags: 0,
                    headers: Vec::new(),
                })
                .await?;
                if flags & FLAG_FIN != 0 {
                    self.remote_finished(stream_id).await?;
                }
            }
            Frame::Data {
                stream_id,
                flags,
                data,
            } => {
                let len = u32::try_from(data.len()).unwrap_or(u32::MAX);
                let Some(stream) = self.streams.get_mut(&stream_id) else {
                    return Ok(true);
                };
                stream.recv_unacked = stream.recv_unacked.saturating_add(len);
                let stream_grant =
                    if stream.recv_unacked >= WINDOW_UPDATE_THRESHOLD && flags & FLAG_FIN == 0 {
                        std::mem::take(&mut stream.recv_unacked)
                    } else {
                        0
                    };
                let echo = stream.kind == Kind::Data && !stream.local_closed && !data.is_empty();
                self.session_recv_unacked = self.session_recv_unacked.saturating_add(len);
                if echo {
                    self.send(&Frame::Data {
                        stream_id,
                        flags: 0,
                        data,
                    })
                    .await?;
                }
                if self.flow_control {
                    if stream_grant > 0 {
                        self.send(&Frame::WindowUpdate {
                            stream_id,
                            delta: stream_grant,
                        })
                        .await?;
                    }
                    if self.session_recv_unacked >= WINDOW_UPDATE_THRESHOLD {
                        let delta = std::mem::take(&mut self.session_recv_unacked);
                        self.send(&Frame::WindowUpdate {
                            stream_id: 0,
                            delta,
                        })
                        .await?;
                    }
                }
                if flags & FLAG_FIN != 0 {
                    self.remote_finished(stream_id).await?;
                }
            }
            Frame::RstStream { stream_id, .. } => {
                if let Some(stream) = self.streams.get_mut(&stream_id) {
                    stream.local_closed = true;
                }
            }
            Frame::Settings { entries, .. } => {
                if entries.iter().any(|s| s.id == SETTINGS_INITIAL_WINDOW_SIZE) {
                    self.flow_control = true;
                }
            }
            Frame::WindowUpdate { .. } => self.flow_control = true,
            Frame::Ping { id } => {
                // Only answer the client's pings (odd ids); an even id would be the echo of one of ours.
                if id % 2 == 1 {
                    self.send(&Frame::Ping { id }).await?;
                }
            }
            Frame::GoAway { .. } => return Ok(false),
            Frame::SynReply { .. } | Frame::Headers { .. } | Frame::Unknown { .. } => {}
        }
        Ok(true)
    }
}

async fn serve_spdy<IO>(io: IO) -> Result<(), ExecError>
where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    let (mut read, write) = tokio::io::split(io);
    let mut session = Session {
        io: write,
        frames: FrameWriter::default(),
        buf: BytesMut::new(),
        streams: HashMap::new(),
        last_client_stream: 0,
        flow_control: false,
        session_recv_unacked: 0,
    };
    let mut reader = FrameReader::default();
    let mut buf = BytesMut::with_capacity(16 * 1024);
    loop {
        let frame = match reader.decode(&mut buf) {
            Ok(Some(frame)) => frame,
            Ok(None) => {
                if read.read_buf(&mut buf).await? == 0 {
                    break;
                }
                continue;
            }
            Err(err) => {
                let _ = session
                    .send(&Frame::GoAway {
                        last_good_stream_id: session.last_client_stream,
                        status: super::spdy::frame::goaway::PROTOCOL_ERROR,
                    })
                    .await;
                return Err(err.into());
            }
        };
        if !session.handle(frame).await? {
            break;
        }
    }
    let _ = session.io.shutdown().await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use tokio::io::DuplexStream;

    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(
                http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_str(value).unwrap(),
            );
        }
        map
    }

    /// A minimal spdystream stand-in on the codec, over any byte pipe.
    struct Client<IO> {
        io: IO,
        reader: FrameReader,
        writer: FrameWriter,
        buf: BytesMut,
    }

    impl<IO: AsyncRead + AsyncWrite + Unpin> Client<IO> {
        fn new(io: IO) -> Self {
            Self {
                io,
                reader: FrameReader::default(),
                writer: FrameWriter::default(),
                buf: BytesMut::new(),
            }
        }

        async fn send(&mut self, frame: Frame) {
            let mut bytes = BytesMut::new();
            self.writer.encode(&frame, &mut bytes).unwrap();
            self.io.write_all(&bytes).await.unwrap();
        }

        async fn recv(&mut self) -> Option<Frame> {
            loop {
                if let Some(frame) = self.reader.decode(&mut self.buf).unwrap() {
                    return Some(frame);
                }
                if self.io.read_buf(&mut self.buf).await.unwrap() == 0 {
                    return None;
                }
            }
        }

        async fn open(&mut self, stream_id: u32, kind: &str, port: &str, request_id: &str) {
            self.send(Frame::SynStream {
                stream_id,
                associated_to: 0,
                priority: 0,
                slot: 0,
                flags: 0,
                headers: vec![
                    ("streamtype".into(), kind.into()),
                    ("port".into(), port.into()),
                    ("requestid".into(), request_id.into()),
                ],
            })
            .await;
        }
    }

    /// Drives one forwarded connection: error + data stream, a payload in two frames, half-close; returns the
    /// bytes echoed on the data stream and the streams the server finished.
    async fn forward_once<IO: AsyncRead + AsyncWrite + Unpin>(
        client: &mut Client<IO>,
        first_id: u32,
        request_id: &str,
    ) -> (Vec<u8>, Vec<u32>) {
        let (error_id, data_id) = (first_id, first_id + 2);
        client.open(error_id, "error", "8080", request_id).await;
        client
            .send(Frame::Data {
                stream_id: error_id,
                flags: FLAG_FIN,
                data: Bytes::new(),
            })
            .await;
        client.open(data_id, "data", "8080", request_id).await;
        for part in ["hello, ", "port-forward"] {
            client
                .send(Frame::Data {
                    stream_id: data_id,
                    flags: 0,
                    data: Bytes::from(part),
                })
                .await;
        }
        client
            .send(Frame::Data {
                stream_id: data_id,
                flags: FLAG_FIN,
                data: Bytes::new(),
            })
            .await;
        let (mut echoed, mut fins, mut replies) = (Vec::new(), Vec::new(), Vec::new());
        while fins.len() < 2 {
            match client.recv().await.expect("session ended early") {
                Frame::SynReply { stream_id, .. } => replies.push(stream_id),
                Frame::Data {
                    stream_id,
                    flags,
                    data,
                } => {
                    if stream_id == data_id {
                        echoed.extend_from_slice(&data);
                    } else {
                        assert_eq!(stream_id, error_id, "no data on the error stream");
                        assert!(data.is_empty());
                    }
                    if flags & FLAG_FIN != 0 {
                        fins.push(stream_id);
                    }
                }
                other => panic!("unexpected frame {other:?}"),
            }
        }
        assert_eq!(replies, vec![error_id, data_id]);
        (echoed, fins)
    }

    async fn two_connections<IO: AsyncRead + AsyncWrite + Unpin>(client: &mut Client<IO>) {
        let (echoed, fins) = forward_once(client, 1, "0").await;
        assert_eq!(echoed, b"hello, port-forward");
        assert_eq!(fins, vec![3, 1], "data stream first, then its error stream");
        let (echoed, _) = forward_once(client, 5, "1").await;
        assert_eq!(echoed, b"hello, port-forward");
        client.send(Frame::Ping { id: 1 }).await;
        assert_eq!(client.recv().await, Some(Frame::Ping { id: 1 }));
    }

    #[tokio::test]
    async fn echoes_over_spdy() {
        let (client_io, server_io) = tokio::io::duplex(64 * 1024);
        let server = tokio::spawn(run(server_io, Transport::Spdy));
        let mut client = Client::new(client_io);
        two_connections(&mut client).await;
        client
            .send(Frame::GoAway {
                last_good_stream_id: 0,
                status: 0,
            })
            .await;
        assert_eq!(client.recv().await, None);
        drop(client);
        server.await.unwrap().unwrap();
    }

    /// Adapts a client-side WebSocket to a byte pipe, like client-go's tunneling connection.
    async fn tunnel_client(io: DuplexStream) -> DuplexStream {
        let ws = WebSocketStream::from_raw_socket(io, Role::Client, None).await;
        let (mut sink, mut messages) = ws.split();
        let (mine, theirs) = tokio::io::duplex(64 * 1024);
        let (mut read, mut write) = tokio::io::split(theirs);
        tokio::spawn(async move {
            let mut buf = vec![0u8; 7];
            // Tiny messages so SPDY frames straddle message boundaries.
            while let Ok(n) = read.read(&mut buf).await {
                if n == 0 {
                    break;
                }
                let data = Bytes::copy_from_slice(&buf[..n]);
                if sink.send(Message::Binary(data)).await.is_err() {
                    return;
                }
            }
            let _ = sink.close().await;
        });
        tokio::spawn(async move {
            while let Some(Ok(message)) = messages.next().await {
                match message {
                    Message::Binary(data) if write.write_all(&data).await.is_err() => return,
                    Message::Close(_) => break,
                    _ => {}
                }
            }
            let _ = write.shutdown().await;
        });
        mine
    }

    #[tokio::test]
    async fn echoes_over_the_websocket_tunnel() {
        let (client_io, server_io) = tokio::io::duplex(64 * 1024);
        let server = tokio::spawn(run(server_io, Transport::WebSocketTunnel));
        let mut client = Client::new(tunnel_client(client_io).await);
        two_connections(&mut client).await;
        client
            .send(Frame::GoAway {
                last_good_stream_id: 0,
                status: 0,
            })
            .await;
        assert_eq!(client.recv().await, None);
        drop(client);
        server.await.unwrap().unwrap();
    }

    #[test]
    fn negotiates() {
        let (response, transport) = negotiate(&headers(&[
            ("connection", "Upgrade"),
            ("upgrade", "SPDY/3.1"),
            ("x-stream-protocol-version", "portforward.k8s.io"),
        ]))
        .unwrap();
        assert_eq!(transport, Transport::Spdy);
        assert_eq!(response[X_STREAM_PROTOCOL_VERSION], "portforward.k8s.io");
        assert_eq!(response[UPGRADE], "SPDY/3.1");

        let (response, transport) = negotiate(&headers(&[
            ("connection", "Upgrade"),
            ("upgrade", "websocket"),
            ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="),
            ("sec-websocket-protocol", "SPDY/3.1+portforward.k8s.io"),
        ]))
        .unwrap();
        assert_eq!(transport, Transport::WebSocketTunnel);
        assert_eq!(response[SEC_WEBSOCKET_PROTOCOL], TUNNEL_PROTOCOL);
        assert_eq!(
            response[SEC_WEBSOCKET_ACCEPT],
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );

        let err = negotiate(&headers(&[
            ("connection", "Upgrade"),
            ("upgrade", "SPDY/3.1"),
            ("x-stream-protocol-version", "v4.channel.k8s.io"),
        ]))
        .unwrap_err();
        assert_eq!(err.status(), StatusCode::FORBIDDEN);
        let err = negotiate(&headers(&[
            ("connection", "Upgrade"),
            ("upgrade", "websocket"),
            ("sec-websocket-key", "x"),
            ("sec-websocket-protocol", "v5.channel.k8s.io"),
        ]))
        .unwrap_err();
        assert_eq!(err.status(), StatusCode::BAD_REQUEST);
    }
}
