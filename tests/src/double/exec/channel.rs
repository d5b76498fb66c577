//! The Kubernetes channel protocol carried in WebSocket messages (channel.k8s.io and its base64 and v4/v5 variants):
//! one message per write, the first byte naming the channel (0 stdin, 1 stdout, 2 stderr, 3 error, 4 resize), and in
//! v5 the close signal `0xFF <channel>`. Also the resize event decoder shared with SPDY.
//!
//! Owns message encoding/decoding only; it must never interpret the data it carries beyond resize JSON.

use base64::Engine as _;
use bytes::{BufMut, Bytes, BytesMut};
use serde::Deserialize;
use tokio_tungstenite::tungstenite::Message;

use super::commands::TermSize;
use super::ChannelVersion;

pub(crate) const STDIN: u8 = 0;
pub(crate) const STDOUT: u8 = 1;
pub(crate) const STDERR: u8 = 2;
pub(crate) const ERROR: u8 = 3;
pub(crate) const RESIZE: u8 = 4;
/// v5.channel.k8s.io: a message `[CLOSE_SIGNAL, channel]` half-closes that channel.
pub(crate) const CLOSE_SIGNAL: u8 = 0xff;

/// A resize JSON never needs more than this; a client streaming garbage without a closing brace is cut off.
const MAX_RESIZE_BUFFER: usize = 4096;

/// How channel data is framed inside WebSocket messages.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Codec {
    /// Binary messages, the channel as a raw byte.
    Binary,
    /// Text messages, the channel as an ASCII digit, the data base64-encoded.
    Base64,
}

/// The WebSocket subprotocols this double serves, in server preference order, with what they mean.
pub(crate) const WEBSOCKET_PROTOCOLS: &[(&str, ChannelVersion, Codec)] = &[
    ("v5.channel.k8s.io", ChannelVersion::V5, Codec::Binary),
    ("v4.channel.k8s.io", ChannelVersion::V4, Codec::Binary),
    (
        "v4.base64.channel.k8s.io",
        ChannelVersion::V4,
        Codec::Base64,
    ),
    ("channel.k8s.io", ChannelVersion::V1, Codec::Binary),
    ("base64.channel.k8s.io", ChannelVersion::V1, Codec::Base64),
];

/// What a negotiated subprotocol means; the empty protocol (client offered none) is binary channel.k8s.io.
pub(crate) fn websocket_protocol(name: &str) -> Option<(ChannelVersion, Codec)> {
    if name.is_empty() {
        return Some((ChannelVersion::V1, Codec::Binary));
    }
    WEBSOCKET_PROTOCOLS
        .iter()
        .find(|(n, _, _)| *n == name)
        .map(|(_, version, codec)| (*version, *codec))
}

/// One decoded client message.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Incoming {
    Data {
        channel: u8,
        payload: Bytes,
    },
    Close {
        channel: u8,
    },
    /// A message too short to carry anything, or one this protocol version does not define.
    Ignored,
    Invalid(&'static str),
}

impl Codec {
    pub(crate) fn encode(self, channel: u8, data: &[u8]) -> Message {
        match self {
            Codec::Binary => {
                let mut message = BytesMut::with_capacity(1 + data.len());
                message.put_u8(channel);
                message.put_slice(data);
                Message::Binary(message.freeze())
            }
            Codec::Base64 => {
                let mut text = String::with_capacity(1 + data.len().div_ceil(3) * 4);
                text.push(char::from(b'0' + channel));
                base64::engine::general_purpose::STANDARD.encode_string(data, &mut text);
                Message::text(text)
            }
        }
    }

    /// Decodes a data message's payload; `close_signal` is true for protocols that define the v5 close message.
    pub(crate) fn decode(self, message: &[u8], close_signal: bool) -> Incoming {
        let Some((&first, rest)) = message.split_first() else {
            return Incoming::Ignored;
        };
        if close_signal && first == CLOSE_SIGNAL {
            return match rest {
                [channel] => Incoming::Close { channel: *channel },
                _ => Incoming::Invalid("close signal must name exactly one channel"),
            };
        }
        match self {
            Codec::Binary => Incoming::Data {
                channel: first,
                payload: Bytes::copy_from_slice(rest),
            },
            Codec::Base64 => {
                let Some(channel) = first.checked_sub(b'0').filter(|c| *c <= 9) else {
                    return Incoming::Invalid("base64 channel is not a digit");
                };
                match base64::engine::general_purpose::STANDARD.decode(rest) {
                    Ok(payload) => Incoming::Data {
                        channel,
                        payload: Bytes::from(payload),
                    },
                    Err(_) => Incoming::Invalid("payload is not base64"),
                }
            }
        }
    }
}

#[derive(Deserialize)]
struct SizeJson {
    // Go's encoding/json matches field names case-insensitively; clients send "Width"/"Height".
    #[serde(default, rename = "Width", alias = "width")]
    width: u16,
    #[serde(default, rename = "Height", alias = "height")]
    height: u16,
}

/// Decodes the resize stream: a sequence of JSON objects `{"Width":W,"Height":H}`, possibly split or coalesced
/// arbitrarily by the transport.
#[derive(Default)]
pub(crate) struct ResizeDecoder {
    buffer: Vec<u8>,
}

impl ResizeDecoder {
    pub(crate) fn push(&mut self, data: &[u8]) -> Vec<TermSize> {
        self.buffer.extend_from_slice(data);
        let mut sizes = Vec::new();
        let mut consumed = 0;
        let mut stream = serde_json::Deserializer::from_slice(&self.buffer).into_iter::<SizeJson>();
        loop {
            match stream.next() {
                Some(Ok(size)) => {
                    consumed = stream.byte_offset();
                    sizes.push(TermSize {
                        width: size.width,
                        height: size.height,
                    });
                }
                Some(Err(err)) if err.is_eof() => break,
                Some(Err(_)) => {
                    // Not JSON we understand: drop it rather than wedge every later event behind it.
                    consumed = self.buffer.len();
                    break;
                }
                None => {
                    consumed = self.buffer.len();
                    break;
                }
            }
        }
        self.buffer.drain(..consumed);
        if self.buffer.len() > MAX_RESIZE_BUFFER {
            self.buffer.clear();
        }
        sizes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn payload(message: &Message) -> Vec<u8> {
        match message {
            Message::Binary(b) => b.to_vec(),
            Message::Text(t) => t.as_bytes().to_vec(),
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn binary_round_trip() {
        let message = Codec::Binary.encode(STDOUT, b"hi\n");
        assert_eq!(payload(&message), b"\x01hi\n");
        assert_eq!(
            Codec::Binary.decode(&payload(&message), true),
            Incoming::Data {
                channel: STDOUT,
                payload: Bytes::from_static(b"hi\n")
            }
        );
        assert_eq!(payload(&Codec::Binary.encode(ERROR, b"")), b"\x03");
    }

    #[test]
    fn base64_round_trip() {
        let message = Codec::Base64.encode(STDERR, b"oops");
        assert!(matches!(message, Message::Text(_)));
        assert_eq!(payload(&message), b"2b29wcw==");
        assert_eq!(
            Codec::Base64.decode(b"0aGVsbG8=", false),
            Incoming::Data {
                channel: STDIN,
                payload: Bytes::from_static(b"hello")
            }
        );
        assert!(matches!(
            Codec::Base64.decode(b"x", false),
            Incoming::Invalid(_)
        ));
        assert!(matches!(
            Codec::Base64.decode(b"0!!", false),
            Incoming::Invalid(_)
        ));
    }

    #[test]
    fn close_signal_only_in_v5() {
        assert_eq!(
            Codec::Binary.decode(&[CLOSE_SIGNAL, STDIN], true),
            Incoming::Close { channel: STDIN }
        );
        assert!(matches!(
            Codec::Binary.decode(&[CLOSE_SIGNAL], true),
            Incoming::Invalid(_)
        ));
        assert_eq!(
            Codec::Binary.decode(&[CLOSE_SIGNAL, STDIN], false),
            Incoming::Data {
                channel: CLOSE_SIGNAL,
                payload: Bytes::from_static(&[STDIN])
            }
        );
        assert_eq!(Codec::Binary.decode(&[], true), Incoming::Ignored);
    }

    #[test]
    fn resize_events_survive_any_split() {
        let stream = b"{\"Width\":80,\"Height\":24}\n{\"Width\":120,\"Height\":40}\n{\"width\":7}";
        let expected = vec![
            TermSize {
                width: 80,
                height: 24,
            },
            TermSize {
                width: 120,
                height: 40,
            },
            TermSize {
                width: 7,
                height: 0,
            },
        ];
        for split in 1..stream.len() {
            let mut decoder = ResizeDecoder::default();
            let mut sizes = Vec::new();
            for chunk in stream.chunks(split) {
                sizes.extend(decoder.push(chunk));
            }
            assert_eq!(sizes, expected, "chunks of {split}");
        }
    }

    #[test]
    fn resize_garbage_is_dropped() {
        let mut decoder = ResizeDecoder::default();
        assert!(decoder.push(b"not json").is_empty());
        assert_eq!(
            decoder.push(b"{\"Width\":1,\"Height\":2}"),
            vec![TermSize {
                width: 1,
                height: 2
            }]
        );
        assert!(decoder.push(&[b'['; 5000]).is_empty());
        assert!(decoder.buffer.is_empty());
        assert!(decoder.push(b"{\"Width\":70000}").is_empty());
    }

    #[test]
    fn websocket_garbage_never_panics() {
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        for _ in 0..2_000 {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let len = (seed % 12) as usize;
            let bytes: Vec<u8> = (0..len).map(|i| (seed >> (i * 5)) as u8).collect();
            let _ = Codec::Binary.decode(&bytes, true);
            let _ = Codec::Base64.decode(&bytes, false);
        }
    }
}
