//! Incremental decoders of upgraded Kubernetes streams (exec, attach, port-forward), so the
//! gateway can record what flows through a session: WebSocket (RFC 6455) carrying the channel
//! protocol `v4`/`v5.channel.k8s.io` (and the base64 variants) or `v4.portforward.k8s.io`,
//! SPDY/3.1 carrying exec streams or port-forward streams, and the SPDY-over-WebSocket
//! port-forward tunnel of kubectl 1.31+.
//!
//! Owns: turning raw bytes, in whatever chunks the proxy sees them, into [`StreamEvent`]s. It is
//! pure (no I/O, no clock, no logging of payloads): the caller timestamps events and stores them.
//!
//! Must never: panic on any input, buffer without bound (only headers, control frames and the
//! small error/resize channels are buffered, each with a cap; data payloads stream through), or
//! let a malformed stream go undetected: after the first error every later push fails too, so
//! the caller closes the session instead of forwarding bytes it cannot record.
//!
//! The WebSocket and SPDY framing parsers are written here: both formats are small, and no
//! maintained crate parses them sans-IO from raw bytes of both directions (tungstenite owns the
//! socket and buffers whole messages; no maintained SPDY/3.1 crate exists). SPDY header blocks
//! are inflated with `flate2` (zlib with the SPDY/3 preset dictionary), capped per block.

mod channel;
mod exec;
mod portforward;
mod spdy;
mod spdy_session;
mod websocket;

#[cfg(test)]
mod testkit;
#[cfg(test)]
mod tests;

use http::HeaderMap;

pub use spdy::dictionary as spdy_dictionary;

/// Which peer wrote the bytes being pushed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Direction {
    /// From kubectl (or any API client) towards the API server.
    ClientToServer,
    /// From the API server back to the client.
    ServerToClient,
}

impl Direction {
    fn index(self) -> usize {
        match self {
            Direction::ClientToServer => 0,
            Direction::ServerToClient => 1,
        }
    }

    fn peer(self) -> &'static str {
        match self {
            Direction::ClientToServer => "client",
            Direction::ServerToClient => "server",
        }
    }
}

/// The framing of one upgraded connection, as negotiated in its 101 response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamProtocol {
    /// WebSocket, binary channel protocol without the close signal: `v4.channel.k8s.io`, and the
    /// legacy `channel.k8s.io` (same framing; its error channel carries plain text).
    WebSocketChannelV4,
    /// WebSocket, `v5.channel.k8s.io`: v4 plus the `0xFF <channel>` half-close message.
    WebSocketChannelV5,
    /// WebSocket, `v4.base64.channel.k8s.io` or `base64.channel.k8s.io`: the channel as an ASCII
    /// digit, the data base64-encoded.
    WebSocketBase64V4,
    /// SPDY/3.1 exec/attach (any `X-Stream-Protocol-Version` of the channel protocol).
    Spdy31,
    /// WebSocket port-forward, `v4.portforward.k8s.io` or `portforward.k8s.io`.
    WebSocketPortForward,
    /// SPDY/3.1 port-forward, `portforward.k8s.io`.
    SpdyPortForward,
    /// SPDY/3.1 port-forward tunnelled in binary WebSocket messages,
    /// `SPDY/3.1+portforward.k8s.io` (kubectl 1.31+ default).
    WebSocketTunnelSpdyPortForward,
}

const SEC_WEBSOCKET_PROTOCOL: &str = "sec-websocket-protocol";
const SEC_WEBSOCKET_EXTENSIONS: &str = "sec-websocket-extensions";

impl StreamProtocol {
    /// The protocol of an upgraded connection, from the request's offer and the 101 response's
    /// choice (`Upgrade`, `Sec-WebSocket-Protocol`; SPDY needs no version to be decoded).
    /// `subresource` is the request's subresource: `exec`, `attach` or `portforward`.
    ///
    /// `None` means the stream cannot be decoded (unknown subresource or subprotocol, a
    /// subprotocol the client never offered, or a negotiated WebSocket extension such as
    /// permessage-deflate): a recording gateway should refuse such a session.
    pub fn negotiated(
        request_headers: &HeaderMap,
        response_headers: &HeaderMap,
        subresource: &str,
    ) -> Option<StreamProtocol> {
        let upgrade = header_tokens(response_headers, http::header::UPGRADE.as_str());
        let port_forward = match subresource {
            "exec" | "attach" => false,
            "portforward" => true,
            _ => return None,
        };
        if upgrade.iter().any(|u| u.eq_ignore_ascii_case("SPDY/3.1")) {
            return Some(if port_forward {
                StreamProtocol::SpdyPortForward
            } else {
                StreamProtocol::Spdy31
            });
        }
        if !upgrade.iter().any(|u| u.eq_ignore_ascii_case("websocket")) {
            return None;
        }
        // Extensions (permessage-deflate) change the framing; nothing here decodes them.
        if !header_tokens(response_headers, SEC_WEBSOCKET_EXTENSIONS).is_empty() {
            return None;
        }
        let chosen = header_tokens(response_headers, SEC_WEBSOCKET_PROTOCOL);
        let chosen = match chosen.as_slice() {
            [] => "",
            [one] => *one,
            _ => return None,
        };
        let offered = header_tokens(request_headers, SEC_WEBSOCKET_PROTOCOL);
        if !chosen.is_empty() && !offered.contains(&chosen) {
            return None;
        }
        match (port_forward, chosen) {
            (false, "v5.channel.k8s.io") => Some(StreamProtocol::WebSocketChannelV5),
            // No subprotocol means the legacy binary channel.k8s.io.
            (false, "v4.channel.k8s.io" | "channel.k8s.io" | "") => {
                Some(StreamProtocol::WebSocketChannelV4)
            }
            (false, "v4.base64.channel.k8s.io" | "base64.channel.k8s.io") => {
                Some(StreamProtocol::WebSocketBase64V4)
            }
            (true, "v4.portforward.k8s.io" | "portforward.k8s.io" | "") => {
                Some(StreamProtocol::WebSocketPortForward)
            }
            (true, "SPDY/3.1+portforward.k8s.io") => {
                Some(StreamProtocol::WebSocketTunnelSpdyPortForward)
            }
            _ => None,
        }
    }
}

/// Every comma-separated token of every value of header `name`, trimmed.
fn header_tokens<'a>(headers: &'a HeaderMap, name: &str) -> Vec<&'a str> {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .collect()
}

/// An exec/attach channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Channel {
    Stdin,
    Stdout,
    Stderr,
    /// The status channel (3 / `streamtype: error`); its content arrives as [`StreamEvent::Status`].
    Error,
    /// Terminal size changes (4 / `streamtype: resize`); arrive as [`StreamEvent::Resize`].
    Resize,
}

impl Channel {
    /// The channel of a channel-protocol byte (0..=4).
    fn from_index(index: u8) -> Option<Channel> {
        Some(match index {
            0 => Channel::Stdin,
            1 => Channel::Stdout,
            2 => Channel::Stderr,
            3 => Channel::Error,
            4 => Channel::Resize,
            _ => return None,
        })
    }
}

/// Something that happened on the session, in wire order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StreamEvent {
    /// Bytes on stdin, stdout or stderr. Consecutive data on one channel within a push is
    /// merged; a frame split across pushes yields several events.
    Data { channel: Channel, bytes: Vec<u8> },
    /// A terminal resize.
    Resize { width: u16, height: u16 },
    /// The error channel's verdict: `metav1.Status` JSON (Success is exit code 0;
    /// NonZeroExitCode carries the code in `details.causes[reason=ExitCode]`), or the plain text
    /// of protocol versions before v4 (exit code parsed from "exit code N" when present).
    Status {
        exit_code: Option<i32>,
        message: String,
    },
    /// The writing side of a channel closed it: v5 close message, SPDY FIN or RST_STREAM.
    ChannelClosed { channel: Channel },
    /// A port-forward data stream was opened (SPDY SYN_STREAM; WebSocket: port announced).
    PortForwardOpened {
        port: u16,
        request_id: Option<String>,
    },
    /// Port-forward payload. `bytes` is its length; `data` is empty when the decoder was built
    /// [`SessionDecoder::without_port_forward_data`].
    PortForward {
        port: u16,
        request_id: Option<String>,
        dir: Direction,
        bytes: usize,
        data: Vec<u8>,
    },
    /// The kubelet reported a port-forward failure on the port's error stream.
    PortForwardError { port: u16, message: String },
    /// `dir`'s side of a port-forward data stream ended (FIN or RST_STREAM).
    PortForwardClosed {
        port: u16,
        request_id: Option<String>,
        dir: Direction,
    },
    /// The connection is ending: a WebSocket close frame or a SPDY GOAWAY. `reason` names who
    /// sent it and why.
    Closed { reason: String },
}

/// Why a stream cannot be decoded. The decoder is unusable afterwards.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("malformed WebSocket frame from the {peer}: {problem}")]
    WebSocket {
        peer: &'static str,
        problem: &'static str,
    },
    #[error("malformed SPDY/3.1 frame from the {peer}: {problem}")]
    Spdy {
        peer: &'static str,
        problem: &'static str,
    },
    #[error("SPDY header block from the {peer} cannot be inflated: {problem}")]
    HeaderBlock { peer: &'static str, problem: String },
    #[error("channel protocol violation by the {peer}: {problem}")]
    Channel {
        peer: &'static str,
        problem: &'static str,
    },
    #[error("{what} from the {peer} exceeds {limit} bytes")]
    TooLarge {
        peer: &'static str,
        what: &'static str,
        limit: usize,
    },
    #[error("the stream already failed to decode")]
    AlreadyFailed,
}

/// Decodes one upgraded connection, both directions. Feed every chunk the proxy forwards, in
/// order per direction; chunks may be split anywhere.
pub struct SessionDecoder {
    protocol: StreamProtocol,
    inner: Inner,
    failed: bool,
}

enum Inner {
    WebSocketChannel {
        frames: [websocket::FrameReader; 2],
        channels: channel::ChannelSession,
    },
    WebSocketPortForward {
        frames: [websocket::FrameReader; 2],
        ports: portforward::PortForwardSession,
    },
    Spdy {
        frames: [spdy::FrameReader; 2],
        session: spdy_session::SpdySession,
    },
    Tunnel {
        // Boxed: the one variant with two layers of readers would size every other.
        messages: Box<[websocket::FrameReader; 2]>,
        frames: [spdy::FrameReader; 2],
        session: spdy_session::SpdySession,
    },
}

fn websocket_readers() -> [websocket::FrameReader; 2] {
    [
        websocket::FrameReader::new(Direction::ClientToServer),
        websocket::FrameReader::new(Direction::ServerToClient),
    ]
}

fn spdy_readers() -> [spdy::FrameReader; 2] {
    [
        spdy::FrameReader::new(Direction::ClientToServer),
        spdy::FrameReader::new(Direction::ServerToClient),
    ]
}

impl SessionDecoder {
    pub fn new(protocol: StreamProtocol) -> Self {
        let inner = match protocol {
            StreamProtocol::WebSocketChannelV4 => Inner::WebSocketChannel {
                frames: websocket_readers(),
                channels: channel::ChannelSession::new(channel::Codec::Binary, false),
            },
            StreamProtocol::WebSocketChannelV5 => Inner::WebSocketChannel {
                frames: websocket_readers(),
                channels: channel::ChannelSession::new(channel::Codec::Binary, true),
            },
            StreamProtocol::WebSocketBase64V4 => Inner::WebSocketChannel {
                frames: websocket_readers(),
                channels: channel::ChannelSession::new(channel::Codec::Base64, false),
            },
            StreamProtocol::WebSocketPortForward => Inner::WebSocketPortForward {
                frames: websocket_readers(),
                ports: portforward::PortForwardSession::default(),
            },
            StreamProtocol::Spdy31 => Inner::Spdy {
                frames: spdy_readers(),
                session: spdy_session::SpdySession::new(spdy_session::Mode::Exec),
            },
            StreamProtocol::SpdyPortForward => Inner::Spdy {
                frames: spdy_readers(),
                session: spdy_session::SpdySession::new(spdy_session::Mode::PortForward),
            },
            StreamProtocol::WebSocketTunnelSpdyPortForward => Inner::Tunnel {
                messages: Box::new(websocket_readers()),
                frames: spdy_readers(),
                session: spdy_session::SpdySession::new(spdy_session::Mode::PortForward),
            },
        };
        Self {
            protocol,
            inner,
            failed: false,
        }
    }

    /// Port-forward events carry byte counts only, not the payload.
    pub fn without_port_forward_data(mut self) -> Self {
        match &mut self.inner {
            Inner::WebSocketPortForward { ports, .. } => ports.capture_data = false,
            Inner::Spdy { session, .. } | Inner::Tunnel { session, .. } => {
                session.capture_data = false
            }
            Inner::WebSocketChannel { .. } => {}
        }
        self
    }

    pub fn protocol(&self) -> StreamProtocol {
        self.protocol
    }

    /// Decodes the next chunk `dir` wrote. Returns the events it completes, in wire order. On
    /// error the events of this chunk are dropped and every later call fails.
    pub fn push(&mut self, dir: Direction, bytes: &[u8]) -> Result<Vec<StreamEvent>, FrameError> {
        let mut events = Vec::new();
        self.push_into(dir, bytes, &mut events)?;
        Ok(events)
    }

    /// Like [`SessionDecoder::push`], handing each event to `events` as it is found. On error
    /// the sink may already hold some of this chunk's events: the caller discards them.
    pub fn push_into(
        &mut self,
        dir: Direction,
        bytes: &[u8],
        events: &mut dyn EventSink,
    ) -> Result<(), FrameError> {
        if self.failed {
            return Err(FrameError::AlreadyFailed);
        }
        let result = self.decode(dir, bytes, events);
        if result.is_err() {
            self.failed = true;
        }
        result
    }

    fn decode(
        &mut self,
        dir: Direction,
        bytes: &[u8],
        events: &mut dyn EventSink,
    ) -> Result<(), FrameError> {
        let i = dir.index();
        match &mut self.inner {
            Inner::WebSocketChannel { frames, channels } => {
                frames[i].push(bytes, &mut channels.sink(dir, events))
            }
            Inner::WebSocketPortForward { frames, ports } => {
                frames[i].push(bytes, &mut ports.sink(dir, events))
            }
            Inner::Spdy { frames, session } => {
                frames[i].push(bytes, &mut session.sink(dir, events))
            }
            Inner::Tunnel {
                messages,
                frames,
                session,
            } => {
                let mut tunnel = spdy_session::TunnelSink {
                    frames: &mut frames[i],
                    session: session.sink(dir, events),
                };
                messages[i].push(bytes, &mut tunnel)
            }
        }
    }
}

/// Where a decoder puts what it finds, in wire order. `Vec<StreamEvent>` is one (runs of data
/// merged into one event); the gateway's recorder is another, which keeps data as slices of the
/// chunk it pushed until the whole chunk decoded, then copies each run once.
pub trait EventSink {
    /// Bytes on stdin, stdout or stderr (never called with nothing). `data` may point into the
    /// pushed chunk (unmasked server frames) or into a decoder's buffer.
    fn data(&mut self, channel: Channel, data: &[u8]);
    /// Port-forward payload on one connection; with `capture` false only its length counts.
    fn port_forward(
        &mut self,
        port: u16,
        request_id: Option<&str>,
        dir: Direction,
        data: &[u8],
        capture: bool,
    );
    /// Any other event.
    fn push(&mut self, event: StreamEvent);
}

impl EventSink for Vec<StreamEvent> {
    /// Merged into the previous event if that is data on the same channel: a push of many small
    /// frames yields one event per run.
    fn data(&mut self, channel: Channel, data: &[u8]) {
        if data.is_empty() {
            return;
        }
        if let Some(StreamEvent::Data {
            channel: last,
            bytes,
        }) = self.last_mut()
        {
            if *last == channel {
                bytes.extend_from_slice(data);
                return;
            }
        }
        Vec::push(
            self,
            StreamEvent::Data {
                channel,
                bytes: data.to_vec(),
            },
        );
    }

    /// Merged like [`EventSink::data`].
    fn port_forward(
        &mut self,
        port: u16,
        request_id: Option<&str>,
        dir: Direction,
        data: &[u8],
        capture: bool,
    ) {
        if data.is_empty() {
            return;
        }
        if let Some(StreamEvent::PortForward {
            port: last_port,
            request_id: last_id,
            dir: last_dir,
            bytes,
            data: captured,
        }) = self.last_mut()
        {
            if *last_port == port && last_id.as_deref() == request_id && *last_dir == dir {
                *bytes += data.len();
                if capture {
                    captured.extend_from_slice(data);
                }
                return;
            }
        }
        Vec::push(
            self,
            StreamEvent::PortForward {
                port,
                request_id: request_id.map(str::to_owned),
                dir,
                bytes: data.len(),
                data: if capture { data.to_vec() } else { Vec::new() },
            },
        );
    }

    fn push(&mut self, event: StreamEvent) {
        Vec::push(self, event);
    }
}
