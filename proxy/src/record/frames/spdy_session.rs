//! What SPDY streams mean for exec/attach and port-forward: the stream table built from
//! SYN_STREAMs (`streamtype` stdin/stdout/stderr/error/resize, or data/error with `port` and
//! `requestid`), shared by both directions so a server DATA frame is named by the client's
//! SYN_STREAM; FIN and RST_STREAM close channels; GOAWAY ends the connection. Also the
//! WebSocket tunnel that carries a SPDY port-forward session in binary messages.
//!
//! Owns turning frames into events. Streams are forgotten once both sides finished them, and
//! their number is capped, so a long port-forward session does not grow without bound.

use std::collections::HashMap;

use super::channel::close_reason;
use super::exec::{ResizeDecoder, StatusDecoder};
use super::spdy::{header_value, Control, FrameReader, FrameSink, Headers};
use super::websocket::MessageSink;
use super::{Channel, Direction, EventSink, FrameError, StreamEvent};

/// Open streams at once: exec needs 5, each forwarded connection 2.
const MAX_STREAMS: usize = 1024;
/// The longest port-forward error message kept.
const MAX_ERROR_TEXT: usize = 64 * 1024;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Mode {
    Exec,
    PortForward,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Exec(Channel),
    PortData,
    PortError,
    /// A stream type this protocol does not define; the kubelet refuses it, so it carries
    /// nothing that reaches a process.
    Other,
}

struct Stream {
    kind: Kind,
    port: u16,
    request_id: Option<String>,
    /// Per direction: that side sent FIN.
    finished: [bool; 2],
    /// ChannelClosed was reported for this exec channel.
    reported: bool,
    error_text: Vec<u8>,
}

/// The stream table and side-channel decoders of one SPDY connection.
pub(super) struct SpdySession {
    mode: Mode,
    pub(super) capture_data: bool,
    streams: HashMap<u32, Stream>,
    status: StatusDecoder,
    resize: ResizeDecoder,
}

impl SpdySession {
    pub(super) fn new(mode: Mode) -> Self {
        Self {
            mode,
            capture_data: true,
            streams: HashMap::new(),
            status: StatusDecoder::default(),
            resize: ResizeDecoder::default(),
        }
    }

    pub(super) fn sink<'a>(
        &'a mut self,
        dir: Direction,
        events: &'a mut dyn EventSink,
    ) -> SessionSink<'a> {
        SessionSink {
            session: self,
            dir,
            events,
        }
    }
}

/// Receives one direction's frames.
pub(super) struct SessionSink<'a> {
    session: &'a mut SpdySession,
    dir: Direction,
    events: &'a mut dyn EventSink,
}

/// The side that writes an exec channel: only its FIN closes the channel.
fn writer(channel: Channel) -> Direction {
    match channel {
        Channel::Stdin | Channel::Resize => Direction::ClientToServer,
        Channel::Stdout | Channel::Stderr | Channel::Error => Direction::ServerToClient,
    }
}

impl SessionSink<'_> {
    fn error(&self, problem: &'static str) -> FrameError {
        FrameError::Spdy {
            peer: self.dir.peer(),
            problem,
        }
    }

    fn kind(&self, headers: &Headers) -> Kind {
        let stream_type = header_value(headers, "streamtype");
        match (self.session.mode, stream_type) {
            (Mode::Exec, Some("stdin")) => Kind::Exec(Channel::Stdin),
            (Mode::Exec, Some("stdout")) => Kind::Exec(Channel::Stdout),
            (Mode::Exec, Some("stderr")) => Kind::Exec(Channel::Stderr),
            (Mode::Exec, Some("error")) => Kind::Exec(Channel::Error),
            (Mode::Exec, Some("resize")) => Kind::Exec(Channel::Resize),
            (Mode::PortForward, Some("data")) => Kind::PortData,
            (Mode::PortForward, Some("error")) => Kind::PortError,
            _ => Kind::Other,
        }
    }

    fn open(&mut self, stream_id: u32, fin: bool, headers: &Headers) -> Result<(), FrameError> {
        if stream_id == 0 {
            return Err(self.error("SYN_STREAM for stream 0"));
        }
        if self.session.streams.contains_key(&stream_id) {
            return Err(self.error("SYN_STREAM reuses an open stream id"));
        }
        if self.session.streams.len() >= MAX_STREAMS {
            return Err(FrameError::TooLarge {
                peer: self.dir.peer(),
                what: "the number of open SPDY streams",
                limit: MAX_STREAMS,
            });
        }
        let kind = self.kind(headers);
        let mut port = 0;
        if matches!(kind, Kind::PortData | Kind::PortError) {
            port = header_value(headers, "port")
                .and_then(|p| p.parse().ok())
                .ok_or_else(|| self.error("port-forward stream without a valid port header"))?;
        }
        let request_id = header_value(headers, "requestid").map(str::to_owned);
        if kind == Kind::PortData {
            self.events.push(StreamEvent::PortForwardOpened {
                port,
                request_id: request_id.clone(),
            });
        }
        self.session.streams.insert(
            stream_id,
            Stream {
                kind,
                port,
                request_id,
                finished: [false; 2],
                reported: false,
                error_text: Vec::new(),
            },
        );
        if fin {
            self.finish(stream_id);
        }
        Ok(())
    }

    /// This direction sent FIN on `stream_id`.
    fn finish(&mut self, stream_id: u32) {
        let dir = self.dir;
        let Some(stream) = self.session.streams.get_mut(&stream_id) else {
            return;
        };
        if stream.finished[dir.index()] {
            return;
        }
        stream.finished[dir.index()] = true;
        match stream.kind {
            Kind::Exec(channel) if writer(channel) == dir && !stream.reported => {
                stream.reported = true;
                if channel == Channel::Error {
                    self.session.status.finish(true, self.events);
                }
                self.events.push(StreamEvent::ChannelClosed { channel });
            }
            Kind::PortData => self.events.push(StreamEvent::PortForwardClosed {
                port: stream.port,
                request_id: stream.request_id.clone(),
                dir,
            }),
            _ => {}
        }
        if stream.finished == [true, true] {
            self.session.streams.remove(&stream_id);
        }
    }

    /// Either side reset `stream_id`: both directions of it are over.
    fn reset(&mut self, stream_id: u32) {
        let Some(stream) = self.session.streams.remove(&stream_id) else {
            return;
        };
        match stream.kind {
            Kind::Exec(channel) if !stream.reported => {
                if channel == Channel::Error {
                    self.session.status.finish(true, self.events);
                }
                self.events.push(StreamEvent::ChannelClosed { channel });
            }
            Kind::PortData => {
                for dir in [Direction::ClientToServer, Direction::ServerToClient] {
                    if !stream.finished[dir.index()] {
                        self.events.push(StreamEvent::PortForwardClosed {
                            port: stream.port,
                            request_id: stream.request_id.clone(),
                            dir,
                        });
                    }
                }
            }
            _ => {}
        }
    }
}

impl FrameSink for SessionSink<'_> {
    fn control(&mut self, frame: Control) -> Result<(), FrameError> {
        match frame {
            Control::SynStream {
                stream_id,
                fin,
                headers,
            } => self.open(stream_id, fin, &headers)?,
            Control::SynReply { stream_id, fin } | Control::Headers { stream_id, fin } => {
                if fin {
                    self.finish(stream_id);
                }
            }
            Control::RstStream { stream_id, .. } => self.reset(stream_id),
            Control::GoAway { status, .. } => {
                if self.dir == Direction::ServerToClient {
                    self.session.status.finish(true, self.events);
                }
                self.events.push(StreamEvent::Closed {
                    reason: format!("{} sent GOAWAY (status {status})", self.dir.peer()),
                });
            }
            Control::Ignored => {}
        }
        Ok(())
    }

    fn data(&mut self, stream_id: u32, bytes: &[u8]) -> Result<(), FrameError> {
        let peer = self.dir.peer();
        // Data for a stream nobody opened (or one already reset) reaches no process: spdystream
        // drops it, and so does the recording.
        let Some(stream) = self.session.streams.get_mut(&stream_id) else {
            return Ok(());
        };
        match stream.kind {
            Kind::Exec(channel @ (Channel::Stdin | Channel::Stdout | Channel::Stderr)) => {
                self.events.data(channel, bytes);
                Ok(())
            }
            Kind::Exec(Channel::Error) => self.session.status.push(bytes, peer, self.events),
            Kind::Exec(Channel::Resize) => self.session.resize.push(bytes, peer, self.events),
            Kind::PortData => {
                self.events.port_forward(
                    stream.port,
                    stream.request_id.as_deref(),
                    self.dir,
                    bytes,
                    self.session.capture_data,
                );
                Ok(())
            }
            Kind::PortError if self.dir == Direction::ServerToClient => {
                if stream.error_text.len() + bytes.len() > MAX_ERROR_TEXT {
                    return Err(FrameError::TooLarge {
                        peer,
                        what: "a port-forward error message",
                        limit: MAX_ERROR_TEXT,
                    });
                }
                stream.error_text.extend_from_slice(bytes);
                Ok(())
            }
            Kind::PortError | Kind::Other => Ok(()),
        }
    }

    fn data_end(&mut self, stream_id: u32, fin: bool) -> Result<(), FrameError> {
        if let Some(stream) = self.session.streams.get_mut(&stream_id) {
            if !stream.error_text.is_empty() {
                let text = std::mem::take(&mut stream.error_text);
                self.events.push(StreamEvent::PortForwardError {
                    port: stream.port,
                    message: String::from_utf8_lossy(&text).into_owned(),
                });
            }
        }
        if fin {
            self.finish(stream_id);
        }
        Ok(())
    }
}

/// The SPDY/3.1 port-forward tunnel: binary WebSocket messages whose payloads, concatenated,
/// are one direction's SPDY byte stream. Message boundaries mean nothing; frames straddle them.
pub(super) struct TunnelSink<'a> {
    pub(super) frames: &'a mut FrameReader,
    pub(super) session: SessionSink<'a>,
}

impl MessageSink for TunnelSink<'_> {
    fn start(&mut self, _text: bool) -> Result<(), FrameError> {
        Ok(())
    }

    fn data(&mut self, bytes: &[u8]) -> Result<(), FrameError> {
        self.frames.push(bytes, &mut self.session)
    }

    fn end(&mut self) -> Result<(), FrameError> {
        Ok(())
    }

    fn close(&mut self, code: Option<u16>, reason: &str) -> Result<(), FrameError> {
        self.session.events.push(StreamEvent::Closed {
            reason: close_reason(self.session.dir, code, reason),
        });
        Ok(())
    }
}
