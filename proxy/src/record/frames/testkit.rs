//! Test-only encoders producing real wire bytes: WebSocket frames and messages through
//! tungstenite (the library the API double and kubectl's peers speak), SPDY/3.1 frames with a
//! flate2 zlib context primed with the SPDY/3 dictionary and sync-flushed per header block, the
//! way moby/spdystream (client-go) writes them. Also helpers to re-chunk inputs and compare the
//! events of differently chunked runs.

use std::io::{Read, Write};

use flate2::{Compress, Compression, FlushCompress};
use tungstenite::protocol::frame::coding::{CloseCode, Control, Data, OpCode};
use tungstenite::protocol::frame::{Frame, FrameHeader};
use tungstenite::protocol::{CloseFrame, Role, WebSocket};
use tungstenite::Message;

use super::{Direction, SessionDecoder, StreamEvent};

#[derive(Clone, Copy, Debug)]
pub(super) enum Opcode {
    Continuation,
    Text,
    Binary,
    Close,
    Ping,
    Pong,
}

/// One frame, formatted by tungstenite; `masked` uses a fixed non-trivial key.
pub(super) fn ws_frame(opcode: Opcode, fin: bool, payload: &[u8], masked: bool) -> Vec<u8> {
    let opcode = match opcode {
        Opcode::Continuation => OpCode::Data(Data::Continue),
        Opcode::Text => OpCode::Data(Data::Text),
        Opcode::Binary => OpCode::Data(Data::Binary),
        Opcode::Close => OpCode::Control(Control::Close),
        Opcode::Ping => OpCode::Control(Control::Ping),
        Opcode::Pong => OpCode::Control(Control::Pong),
    };
    let header = FrameHeader {
        is_final: fin,
        opcode,
        mask: masked.then_some([0x37, 0xfa, 0x21, 0x3d]),
        ..FrameHeader::default()
    };
    let mut out = Vec::new();
    Frame::from_payload(header, payload.to_vec().into())
        .format(&mut out)
        .expect("formatting into a Vec cannot fail");
    out
}

/// A socket that only collects what is written to it.
#[derive(Default)]
struct Capture(Vec<u8>);

impl Read for Capture {
    fn read(&mut self, _buf: &mut [u8]) -> std::io::Result<usize> {
        Err(std::io::ErrorKind::WouldBlock.into())
    }
}

impl Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// What one side of a tungstenite WebSocket writes for `messages` (clients mask with random
/// keys, as tungstenite does on a real connection).
pub(super) fn ws_messages(dir: Direction, messages: Vec<Message>) -> Vec<u8> {
    let role = match dir {
        Direction::ClientToServer => Role::Client,
        Direction::ServerToClient => Role::Server,
    };
    let mut ws = WebSocket::from_raw_socket(Capture::default(), role, None);
    for message in messages {
        ws.send(message).expect("writing to memory cannot fail");
    }
    ws.get_ref().0.clone()
}

/// tungstenite's close message with a code and reason.
pub(super) fn ws_close(code: u16, reason: &str) -> Message {
    Message::Close(Some(CloseFrame {
        code: CloseCode::from(code),
        reason: reason.to_owned().into(),
    }))
}

/// `[channel] ++ data`, a binary channel-protocol message.
pub(super) fn channel_message(channel: u8, data: &[u8]) -> Message {
    let mut payload = vec![channel];
    payload.extend_from_slice(data);
    Message::Binary(payload.into())
}

/// Encodes the frames one SPDY peer writes, with that peer's persistent zlib context.
pub(super) struct SpdyWriter {
    deflater: Compress,
    primed: bool,
}

impl Default for SpdyWriter {
    fn default() -> Self {
        Self {
            deflater: Compress::new(Compression::default(), true),
            primed: false,
        }
    }
}

impl SpdyWriter {
    fn header_block(&mut self, headers: &[(&str, &str)]) -> Vec<u8> {
        if !self.primed {
            self.deflater
                .set_dictionary(super::spdy::dictionary())
                .expect("priming the deflater");
            self.primed = true;
        }
        let mut block = (headers.len() as u32).to_be_bytes().to_vec();
        for (name, value) in headers {
            for part in [name, value] {
                block.extend_from_slice(&(part.len() as u32).to_be_bytes());
                block.extend_from_slice(part.as_bytes());
            }
        }
        let mut out = Vec::with_capacity(block.len() + 64);
        let mut consumed = 0;
        loop {
            if out.capacity() - out.len() < 64 {
                out.reserve(4096);
            }
            let before = self.deflater.total_in();
            self.deflater
                .compress_vec(&block[consumed..], &mut out, FlushCompress::Sync)
                .expect("deflating a header block");
            consumed += (self.deflater.total_in() - before) as usize;
            if consumed >= block.len() && out.len() < out.capacity() {
                return out;
            }
        }
    }

    fn control(frame_type: u16, flags: u8, payload: &[u8]) -> Vec<u8> {
        let mut out = vec![0x80, 0x03];
        out.extend_from_slice(&frame_type.to_be_bytes());
        out.extend_from_slice(&((u32::from(flags) << 24) | payload.len() as u32).to_be_bytes());
        out.extend_from_slice(payload);
        out
    }

    pub(super) fn syn_stream(
        &mut self,
        stream_id: u32,
        headers: &[(&str, &str)],
        fin: bool,
    ) -> Vec<u8> {
        let mut payload = stream_id.to_be_bytes().to_vec();
        payload.extend_from_slice(&[0, 0, 0, 0, 0, 0]);
        payload.extend(self.header_block(headers));
        Self::control(1, u8::from(fin), &payload)
    }

    pub(super) fn syn_reply(&mut self, stream_id: u32, fin: bool) -> Vec<u8> {
        let mut payload = stream_id.to_be_bytes().to_vec();
        payload.extend(self.header_block(&[]));
        Self::control(2, u8::from(fin), &payload)
    }

    pub(super) fn headers(
        &mut self,
        stream_id: u32,
        headers: &[(&str, &str)],
        fin: bool,
    ) -> Vec<u8> {
        let mut payload = stream_id.to_be_bytes().to_vec();
        payload.extend(self.header_block(headers));
        Self::control(8, u8::from(fin), &payload)
    }

    pub(super) fn data(&mut self, stream_id: u32, data: &[u8], fin: bool) -> Vec<u8> {
        let mut out = stream_id.to_be_bytes().to_vec();
        out.extend_from_slice(&((u32::from(fin) << 24) | data.len() as u32).to_be_bytes());
        out.extend_from_slice(data);
        out
    }

    pub(super) fn rst_stream(&mut self, stream_id: u32, status: u32) -> Vec<u8> {
        Self::control(
            3,
            0,
            &[stream_id.to_be_bytes(), status.to_be_bytes()].concat(),
        )
    }

    pub(super) fn settings(&mut self, entries: &[(u32, u32)]) -> Vec<u8> {
        let mut payload = (entries.len() as u32).to_be_bytes().to_vec();
        for (id, value) in entries {
            payload.extend_from_slice(&id.to_be_bytes());
            payload.extend_from_slice(&value.to_be_bytes());
        }
        Self::control(4, 0, &payload)
    }

    pub(super) fn ping(&mut self, id: u32) -> Vec<u8> {
        Self::control(6, 0, &id.to_be_bytes())
    }

    pub(super) fn goaway(&mut self, last_good: u32, status: u32) -> Vec<u8> {
        Self::control(
            7,
            0,
            &[last_good.to_be_bytes(), status.to_be_bytes()].concat(),
        )
    }

    pub(super) fn window_update(&mut self, stream_id: u32, delta: u32) -> Vec<u8> {
        Self::control(
            9,
            0,
            &[stream_id.to_be_bytes(), delta.to_be_bytes()].concat(),
        )
    }

    pub(super) fn unknown(&mut self, frame_type: u16, payload: &[u8]) -> Vec<u8> {
        Self::control(frame_type, 0, payload)
    }
}

/// A recorded conversation: who wrote which bytes, in order.
pub(super) type Transcript = Vec<(Direction, Vec<u8>)>;

/// Merges adjacent data events of the same channel (and port-forward payload of the same port,
/// request and direction): how a frame is split into pushes must not matter beyond that.
pub(super) fn coalesce(events: Vec<StreamEvent>) -> Vec<StreamEvent> {
    let mut merged: Vec<StreamEvent> = Vec::new();
    for event in events {
        match (merged.last_mut(), event) {
            (
                Some(StreamEvent::Data {
                    channel: last,
                    bytes: acc,
                }),
                StreamEvent::Data { channel, bytes },
            ) if *last == channel => acc.extend(bytes),
            (
                Some(StreamEvent::PortForward {
                    port: p0,
                    request_id: r0,
                    dir: d0,
                    bytes: n0,
                    data: acc,
                }),
                StreamEvent::PortForward {
                    port,
                    request_id,
                    dir,
                    bytes,
                    data,
                },
            ) if *p0 == port && *r0 == request_id && *d0 == dir => {
                *n0 += bytes;
                acc.extend(data);
            }
            (_, event) => merged.push(event),
        }
    }
    merged
}

/// Decodes `transcript` whole-chunk by whole-chunk.
pub(super) fn decode(decoder: &mut SessionDecoder, transcript: &Transcript) -> Vec<StreamEvent> {
    let mut events = Vec::new();
    for (dir, bytes) in transcript {
        events.extend(decoder.push(*dir, bytes).expect("the transcript decodes"));
    }
    coalesce(events)
}

/// Decodes `transcript` with every chunk cut into pieces of `size` bytes.
pub(super) fn decode_in_pieces(
    decoder: &mut SessionDecoder,
    transcript: &Transcript,
    size: usize,
) -> Vec<StreamEvent> {
    let mut events = Vec::new();
    for (dir, bytes) in transcript {
        for piece in bytes.chunks(size.max(1)) {
            events.extend(decoder.push(*dir, piece).expect("the transcript decodes"));
        }
    }
    coalesce(events)
}

/// Decodes `transcript` with each chunk split in two at `at` (clamped).
pub(super) fn decode_split_at(
    decoder: &mut SessionDecoder,
    transcript: &Transcript,
    at: usize,
) -> Vec<StreamEvent> {
    let mut events = Vec::new();
    for (dir, bytes) in transcript {
        let (a, b) = bytes.split_at(at.min(bytes.len()));
        for piece in [a, b] {
            events.extend(decoder.push(*dir, piece).expect("the transcript decodes"));
        }
    }
    coalesce(events)
}
