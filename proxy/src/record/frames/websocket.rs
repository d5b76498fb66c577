//! RFC 6455 framing, one direction of a connection, sans-IO: frame headers (7/16/64-bit
//! lengths, masking), fragmentation with continuation frames, and the control frames that may
//! interleave with fragments (close, ping, pong).
//!
//! Owns framing only: message payloads stream to a [`MessageSink`] chunk by chunk as they arrive,
//! unmasked. It buffers at most one frame header and one control-frame payload (125 bytes), and
//! never interprets what the messages carry.

use super::{Direction, FrameError};

/// The longest header: 2 bytes, 8 of extended length, 4 of mask key.
const MAX_HEADER: usize = 14;
/// RFC 6455 5.5: control frames carry at most 125 bytes.
const MAX_CONTROL_PAYLOAD: usize = 125;

const OP_CONTINUATION: u8 = 0x0;
const OP_TEXT: u8 = 0x1;
const OP_BINARY: u8 = 0x2;
const OP_CLOSE: u8 = 0x8;
const OP_PING: u8 = 0x9;
const OP_PONG: u8 = 0xA;

/// Receives the messages of one direction.
pub(super) trait MessageSink {
    /// A text or binary message begins.
    fn start(&mut self, text: bool) -> Result<(), FrameError>;
    /// The next unmasked payload bytes of the current message (never empty).
    fn data(&mut self, bytes: &[u8]) -> Result<(), FrameError>;
    /// The current message is complete.
    fn end(&mut self) -> Result<(), FrameError>;
    /// A close frame: status code and reason, if the frame had them.
    fn close(&mut self, code: Option<u16>, reason: &str) -> Result<(), FrameError>;
}

#[derive(Clone, Copy)]
enum State {
    Header,
    Payload {
        opcode: u8,
        fin: bool,
        remaining: u64,
        mask: Option<[u8; 4]>,
        /// Payload bytes unmasked so far, modulo 4: where in the key the next byte starts.
        mask_offset: usize,
    },
    /// A close frame was received; nothing may follow it.
    Closed,
}

/// Parses the frames one peer writes.
pub(super) struct FrameReader {
    peer: &'static str,
    /// RFC 6455 5.1: clients mask every frame, servers none.
    masked: bool,
    state: State,
    header: [u8; MAX_HEADER],
    header_len: usize,
    control: Vec<u8>,
    unmasked: Vec<u8>,
    in_message: bool,
}

impl FrameReader {
    pub(super) fn new(dir: Direction) -> Self {
        Self {
            peer: dir.peer(),
            masked: dir == Direction::ClientToServer,
            state: State::Header,
            header: [0; MAX_HEADER],
            header_len: 0,
            control: Vec::new(),
            unmasked: Vec::new(),
            in_message: false,
        }
    }

    fn error(&self, problem: &'static str) -> FrameError {
        FrameError::WebSocket {
            peer: self.peer,
            problem,
        }
    }

    pub(super) fn push(
        &mut self,
        mut input: &[u8],
        sink: &mut impl MessageSink,
    ) -> Result<(), FrameError> {
        while !input.is_empty() {
            match self.state {
                State::Closed => return Err(self.error("bytes after the close frame")),
                State::Header => {
                    let taken = self.take_header(input, sink)?;
                    input = &input[taken..];
                }
                State::Payload {
                    opcode,
                    fin,
                    remaining,
                    mask,
                    mask_offset,
                } => {
                    let n = usize::try_from(remaining)
                        .unwrap_or(usize::MAX)
                        .min(input.len());
                    let (chunk, rest) = input.split_at(n);
                    input = rest;
                    // Server frames are not masked: their payload is used where it lies.
                    let payload = match mask {
                        Some(key) => {
                            self.unmasked.clear();
                            self.unmasked.extend_from_slice(chunk);
                            unmask(&mut self.unmasked, key, mask_offset);
                            &self.unmasked[..]
                        }
                        None => chunk,
                    };
                    if is_control(opcode) {
                        self.control.extend_from_slice(payload);
                    } else {
                        sink.data(payload)?;
                    }
                    let remaining = remaining - n as u64;
                    self.state = State::Payload {
                        opcode,
                        fin,
                        remaining,
                        mask,
                        mask_offset: (mask_offset + n) % 4,
                    };
                    if remaining == 0 {
                        self.finish_frame(opcode, fin, sink)?;
                    }
                }
            }
        }
        Ok(())
    }

    /// Copies header bytes from `input` until the header is complete; returns how many it took.
    fn take_header(
        &mut self,
        input: &[u8],
        sink: &mut impl MessageSink,
    ) -> Result<usize, FrameError> {
        let mut taken = 0;
        let mut needed = header_size(&self.header[..self.header_len]);
        while self.header_len < needed {
            let Some(&byte) = input.get(taken) else {
                return Ok(taken);
            };
            self.header[self.header_len] = byte;
            self.header_len += 1;
            taken += 1;
            needed = header_size(&self.header[..self.header_len]);
        }
        self.header_len = 0;
        self.start_frame(sink)?;
        Ok(taken)
    }

    /// Validates a complete header (in `self.header`) and enters its payload.
    fn start_frame(&mut self, sink: &mut impl MessageSink) -> Result<(), FrameError> {
        let [first, second, ..] = self.header;
        let fin = first & 0x80 != 0;
        if first & 0x70 != 0 {
            return Err(self.error("reserved bits set (no extension was negotiated)"));
        }
        let opcode = first & 0x0f;
        let masked = second & 0x80 != 0;
        if masked != self.masked {
            return Err(self.error(if self.masked {
                "client frame is not masked"
            } else {
                "server frame is masked"
            }));
        }
        let (length, rest) = match second & 0x7f {
            126 => (
                u64::from(u16::from_be_bytes([self.header[2], self.header[3]])),
                4,
            ),
            127 => {
                let mut word = [0u8; 8];
                word.copy_from_slice(&self.header[2..10]);
                let length = u64::from_be_bytes(word);
                if length >> 63 != 0 {
                    return Err(self.error("64-bit length has its top bit set"));
                }
                (length, 10)
            }
            short => (u64::from(short), 2),
        };
        let mask = masked.then(|| {
            let mut key = [0u8; 4];
            key.copy_from_slice(&self.header[rest..rest + 4]);
            key
        });
        match opcode {
            OP_CLOSE | OP_PING | OP_PONG => {
                if !fin {
                    return Err(self.error("fragmented control frame"));
                }
                if length > MAX_CONTROL_PAYLOAD as u64 {
                    return Err(self.error("control frame longer than 125 bytes"));
                }
                self.control.clear();
            }
            OP_TEXT | OP_BINARY => {
                if self.in_message {
                    return Err(self.error("new message before the previous one ended"));
                }
                self.in_message = true;
                sink.start(opcode == OP_TEXT)?;
            }
            OP_CONTINUATION => {
                if !self.in_message {
                    return Err(self.error("continuation frame outside a message"));
                }
            }
            _ => return Err(self.error("reserved opcode")),
        }
        self.state = State::Payload {
            opcode,
            fin,
            remaining: length,
            mask,
            mask_offset: 0,
        };
        if length == 0 {
            self.finish_frame(opcode, fin, sink)?;
        }
        Ok(())
    }

    fn finish_frame(
        &mut self,
        opcode: u8,
        fin: bool,
        sink: &mut impl MessageSink,
    ) -> Result<(), FrameError> {
        self.state = State::Header;
        match opcode {
            OP_CLOSE => {
                let (code, reason) = match self.control.as_slice() {
                    [] => (None, String::new()),
                    [_] => return Err(self.error("close frame with a 1-byte payload")),
                    [hi, lo, reason @ ..] => (
                        Some(u16::from_be_bytes([*hi, *lo])),
                        String::from_utf8_lossy(reason).into_owned(),
                    ),
                };
                self.state = State::Closed;
                sink.close(code, &reason)
            }
            // Keep-alives carry nothing worth recording.
            OP_PING | OP_PONG => Ok(()),
            _ if fin => {
                self.in_message = false;
                sink.end()
            }
            _ => Ok(()),
        }
    }
}

/// XORs `bytes` with the key, starting `offset` bytes into it; a word at a time, since client
/// frames (stdin, port-forward uploads) can be large.
fn unmask(bytes: &mut [u8], mut key: [u8; 4], offset: usize) {
    key.rotate_left(offset % 4);
    let word = u32::from_ne_bytes(key);
    let mut words = bytes.chunks_exact_mut(4);
    for chunk in &mut words {
        let value = u32::from_ne_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]) ^ word;
        chunk.copy_from_slice(&value.to_ne_bytes());
    }
    for (byte, k) in words.into_remainder().iter_mut().zip(key) {
        *byte ^= k;
    }
}

fn is_control(opcode: u8) -> bool {
    opcode & 0x08 != 0
}

/// How long the header that starts with `partial` is, as far as `partial` tells: at least 2,
/// then exact once the second byte (length format and mask bit) is known.
fn header_size(partial: &[u8]) -> usize {
    let Some(&second) = partial.get(1) else {
        return 2;
    };
    let extended = match second & 0x7f {
        126 => 2,
        127 => 8,
        _ => 0,
    };
    let mask = if second & 0x80 != 0 { 4 } else { 0 };
    2 + extended + mask
}

#[cfg(test)]
mod tests {
    use super::super::testkit::{ws_frame, Opcode};
    use super::*;

    #[derive(Default, Debug, PartialEq)]
    struct Recorder {
        log: Vec<String>,
        /// The current message's payload so far.
        payload: Vec<u8>,
        /// Every payload byte ever delivered.
        all: Vec<u8>,
    }

    impl MessageSink for Recorder {
        fn start(&mut self, text: bool) -> Result<(), FrameError> {
            self.log.push(format!("start text={text}"));
            Ok(())
        }
        fn data(&mut self, bytes: &[u8]) -> Result<(), FrameError> {
            assert!(!bytes.is_empty());
            self.payload.extend_from_slice(bytes);
            self.all.extend_from_slice(bytes);
            Ok(())
        }
        fn end(&mut self) -> Result<(), FrameError> {
            let text = String::from_utf8_lossy(&std::mem::take(&mut self.payload)).into_owned();
            self.log.push(format!("end {text}"));
            Ok(())
        }
        fn close(&mut self, code: Option<u16>, reason: &str) -> Result<(), FrameError> {
            self.log.push(format!("close {code:?} {reason}"));
            Ok(())
        }
    }

    fn decode_in_chunks(dir: Direction, bytes: &[u8], chunk: usize) -> Vec<String> {
        let mut reader = FrameReader::new(dir);
        let mut sink = Recorder::default();
        for piece in bytes.chunks(chunk) {
            reader.push(piece, &mut sink).unwrap();
        }
        sink.log
    }

    #[test]
    fn fragmented_messages_with_interleaved_control_frames() {
        let masked = true;
        let mut wire = Vec::new();
        wire.extend(ws_frame(Opcode::Binary, false, b"hel", masked));
        wire.extend(ws_frame(Opcode::Ping, true, b"are you there", masked));
        wire.extend(ws_frame(Opcode::Continuation, false, b"lo ", masked));
        wire.extend(ws_frame(Opcode::Pong, true, b"", masked));
        wire.extend(ws_frame(Opcode::Continuation, true, b"world", masked));
        wire.extend(ws_frame(Opcode::Text, true, b"", masked));
        wire.extend(ws_frame(Opcode::Close, true, b"\x03\xe8bye", masked));
        let expected = vec![
            "start text=false",
            "end hello world",
            "start text=true",
            "end ",
            "close Some(1000) bye",
        ];
        for chunk in 1..=wire.len() {
            assert_eq!(
                decode_in_chunks(Direction::ClientToServer, &wire, chunk),
                expected,
                "chunks of {chunk}"
            );
        }
    }

    #[test]
    fn all_three_length_formats() {
        for len in [0usize, 125, 126, 65_535, 65_536, 70_000] {
            let payload: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
            for masked in [false, true] {
                let wire = ws_frame(Opcode::Binary, true, &payload, masked);
                let dir = if masked {
                    Direction::ClientToServer
                } else {
                    Direction::ServerToClient
                };
                let mut reader = FrameReader::new(dir);
                let mut sink = Recorder::default();
                for piece in wire.chunks(4093) {
                    reader.push(piece, &mut sink).unwrap();
                }
                assert_eq!(sink.all, payload, "length {len} masked {masked}");
                assert_eq!(sink.log.len(), 2, "one message, length {len}");
            }
        }
    }

    fn first_error(dir: Direction, wire: &[u8]) -> FrameError {
        FrameReader::new(dir)
            .push(wire, &mut Recorder::default())
            .unwrap_err()
    }

    #[test]
    fn protocol_violations_are_errors() {
        let client = Direction::ClientToServer;
        let server = Direction::ServerToClient;
        let cases: Vec<(Direction, Vec<u8>, &str)> = vec![
            (
                client,
                ws_frame(Opcode::Binary, true, b"x", false),
                "client frame is not masked",
            ),
            (
                server,
                ws_frame(Opcode::Binary, true, b"x", true),
                "server frame is masked",
            ),
            (
                server,
                ws_frame(Opcode::Continuation, true, b"x", false),
                "continuation frame outside a message",
            ),
            (
                server,
                [
                    ws_frame(Opcode::Binary, false, b"x", false),
                    ws_frame(Opcode::Text, true, b"y", false),
                ]
                .concat(),
                "new message before the previous one ended",
            ),
            (
                server,
                ws_frame(Opcode::Ping, false, b"x", false),
                "fragmented control frame",
            ),
            (
                server,
                ws_frame(Opcode::Ping, true, &[0; 126], false),
                "control frame longer than 125 bytes",
            ),
            (server, vec![0x83, 0x00], "reserved opcode"),
            (
                server,
                vec![0xc2, 0x00],
                "reserved bits set (no extension was negotiated)",
            ),
            (
                server,
                vec![0x82, 127, 0x80, 0, 0, 0, 0, 0, 0, 0],
                "64-bit length has its top bit set",
            ),
            (
                server,
                ws_frame(Opcode::Close, true, b"\x03", false),
                "close frame with a 1-byte payload",
            ),
            (
                server,
                [
                    ws_frame(Opcode::Close, true, b"", false),
                    ws_frame(Opcode::Binary, true, b"late", false),
                ]
                .concat(),
                "bytes after the close frame",
            ),
        ];
        for (dir, wire, problem) in cases {
            assert_eq!(
                first_error(dir, &wire),
                FrameError::WebSocket {
                    peer: dir.peer(),
                    problem
                }
            );
        }
    }

    #[test]
    fn huge_declared_lengths_allocate_nothing() {
        // 2^62 bytes announced, 3 delivered: the reader streams them and waits for the rest.
        let mut wire = vec![0x82, 127];
        wire.extend_from_slice(&(1u64 << 62).to_be_bytes());
        wire.extend_from_slice(b"abc");
        let mut reader = FrameReader::new(Direction::ServerToClient);
        let mut sink = Recorder::default();
        reader.push(&wire, &mut sink).unwrap();
        assert_eq!(sink.payload, b"abc");
        assert!(reader.unmasked.capacity() < 1024);
    }
}
