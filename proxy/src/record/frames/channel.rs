//! The Kubernetes channel protocol inside WebSocket messages (exec/attach): the first byte of
//! each message names the channel (0 stdin, 1 stdout, 2 stderr, 3 error, 4 resize), the rest is
//! that channel's data; v5 adds the half-close message `0xFF <channel>`; the base64 variants
//! write the channel as an ASCII digit and the data base64-encoded.
//!
//! Owns turning messages into events. Data streams through as the frames arrive (base64 keeps at
//! most 3 undecoded characters); only the error and resize channels buffer, in [`super::exec`].

use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig};
use base64::engine::DecodePaddingMode;
use base64::Engine as _;

use super::exec::{ResizeDecoder, StatusDecoder};
use super::websocket::MessageSink;
use super::{Channel, Direction, EventSink, FrameError, StreamEvent};

/// v5.channel.k8s.io: a message `[CLOSE_SIGNAL, channel]` half-closes that channel.
const CLOSE_SIGNAL: u8 = 0xff;

/// Go's encoder always pads; accepting unpadded input too costs nothing and loses no data.
const BASE64: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// How channel data is framed inside messages.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Codec {
    /// The channel as a raw byte, raw data.
    Binary,
    /// The channel as an ASCII digit, base64 data.
    Base64,
}

/// Where the current message of one direction goes.
#[derive(Clone, Copy, Debug, Default)]
enum Target {
    /// Between messages.
    #[default]
    Idle,
    /// A message began; its first byte (the channel) has not arrived yet.
    AwaitingChannel,
    Channel(Channel),
    /// A v5 close message; the channel byte it names, once seen.
    CloseSignal(Option<u8>),
}

#[derive(Default)]
struct MessageState {
    target: Target,
    /// Base64 characters not yet forming a 4-character group.
    carry: Vec<u8>,
    decoded: Vec<u8>,
}

/// Channel-protocol state of one WebSocket exec/attach connection.
pub(super) struct ChannelSession {
    codec: Codec,
    close_signal: bool,
    messages: [MessageState; 2],
    status: StatusDecoder,
    resize: ResizeDecoder,
}

impl ChannelSession {
    pub(super) fn new(codec: Codec, close_signal: bool) -> Self {
        Self {
            codec,
            close_signal,
            messages: Default::default(),
            status: StatusDecoder::default(),
            resize: ResizeDecoder::default(),
        }
    }

    pub(super) fn sink<'a>(
        &'a mut self,
        dir: Direction,
        events: &'a mut dyn EventSink,
    ) -> ChannelSink<'a> {
        ChannelSink {
            session: self,
            dir,
            events,
        }
    }
}

/// Receives one direction's messages.
pub(super) struct ChannelSink<'a> {
    session: &'a mut ChannelSession,
    dir: Direction,
    events: &'a mut dyn EventSink,
}

impl ChannelSink<'_> {
    fn error(&self, problem: &'static str) -> FrameError {
        FrameError::Channel {
            peer: self.dir.peer(),
            problem,
        }
    }

    fn state(&mut self) -> &mut MessageState {
        &mut self.session.messages[self.dir.index()]
    }

    /// Reads the channel from a message's first byte.
    fn open(&mut self, first: u8) -> Result<Target, FrameError> {
        if self.session.close_signal && first == CLOSE_SIGNAL {
            return Ok(Target::CloseSignal(None));
        }
        let index = match self.session.codec {
            Codec::Binary => first,
            Codec::Base64 => first
                .checked_sub(b'0')
                .ok_or_else(|| self.error("base64 channel is not a digit"))?,
        };
        Channel::from_index(index)
            .map(Target::Channel)
            .ok_or_else(|| self.error("unknown channel"))
    }

    fn deliver(&mut self, channel: Channel, data: &[u8]) -> Result<(), FrameError> {
        let peer = self.dir.peer();
        match channel {
            Channel::Stdin | Channel::Stdout | Channel::Stderr => {
                self.events.data(channel, data);
                Ok(())
            }
            Channel::Error => self.session.status.push(data, peer, self.events),
            Channel::Resize => self.session.resize.push(data, peer, self.events),
        }
    }

    /// Decodes as many whole base64 groups as `data` completes; `last` flushes the remainder.
    fn deliver_base64(
        &mut self,
        channel: Channel,
        data: &[u8],
        last: bool,
    ) -> Result<(), FrameError> {
        let mut state = std::mem::take(self.state());
        state.carry.extend_from_slice(data);
        let whole = if last {
            state.carry.len()
        } else {
            state.carry.len() / 4 * 4
        };
        state.decoded.clear();
        let decoded = BASE64.decode_vec(&state.carry[..whole], &mut state.decoded);
        state.carry.drain(..whole);
        let result = match decoded {
            Ok(()) => {
                let decoded = std::mem::take(&mut state.decoded);
                let delivered = self.deliver(channel, &decoded);
                state.decoded = decoded;
                delivered
            }
            Err(_) => Err(self.error("payload is not base64")),
        };
        *self.state() = state;
        result
    }
}

impl MessageSink for ChannelSink<'_> {
    fn start(&mut self, _text: bool) -> Result<(), FrameError> {
        // Text and binary messages mean the same here: the codec is the subprotocol's.
        let state = self.state();
        state.target = Target::AwaitingChannel;
        state.carry.clear();
        Ok(())
    }

    fn data(&mut self, mut bytes: &[u8]) -> Result<(), FrameError> {
        if let (Target::AwaitingChannel, Some((&first, rest))) =
            (self.state().target, bytes.split_first())
        {
            let target = self.open(first)?;
            self.state().target = target;
            bytes = rest;
        }
        match self.state().target {
            Target::Idle | Target::AwaitingChannel => Ok(()),
            Target::CloseSignal(named) => match (named, bytes) {
                (_, []) => Ok(()),
                (None, [channel]) => {
                    self.state().target = Target::CloseSignal(Some(*channel));
                    Ok(())
                }
                _ => Err(self.error("close signal must name exactly one channel")),
            },
            Target::Channel(channel) => match self.session.codec {
                Codec::Binary => self.deliver(channel, bytes),
                Codec::Base64 => self.deliver_base64(channel, bytes, false),
            },
        }
    }

    fn end(&mut self) -> Result<(), FrameError> {
        let target = std::mem::take(&mut self.state().target);
        match target {
            Target::Idle | Target::AwaitingChannel => Ok(()),
            Target::CloseSignal(None) => {
                Err(self.error("close signal must name exactly one channel"))
            }
            Target::CloseSignal(Some(index)) => {
                let channel = Channel::from_index(index)
                    .ok_or_else(|| self.error("close signal names an unknown channel"))?;
                if channel == Channel::Error {
                    self.session.status.finish(true, self.events);
                }
                self.events.push(StreamEvent::ChannelClosed { channel });
                Ok(())
            }
            Target::Channel(channel) => {
                if self.session.codec == Codec::Base64 {
                    self.deliver_base64(channel, &[], true)?;
                }
                if channel == Channel::Error {
                    // Each error-channel message is one write: pre-v4 text is complete now.
                    self.session.status.finish(false, self.events);
                }
                Ok(())
            }
        }
    }

    fn close(&mut self, code: Option<u16>, reason: &str) -> Result<(), FrameError> {
        if self.dir == Direction::ServerToClient {
            self.session.status.finish(true, self.events);
        }
        self.events.push(StreamEvent::Closed {
            reason: close_reason(self.dir, code, reason),
        });
        Ok(())
    }
}

/// "server closed the WebSocket (1000: bye)".
pub(super) fn close_reason(dir: Direction, code: Option<u16>, reason: &str) -> String {
    match (code, reason) {
        (None, _) => format!("{} closed the WebSocket", dir.peer()),
        (Some(code), "") => format!("{} closed the WebSocket ({code})", dir.peer()),
        (Some(code), reason) => format!("{} closed the WebSocket ({code}: {reason})", dir.peer()),
    }
}
