//! Well-formed SPDY/3.1 sessions (real zlib header blocks, so the stream table, FIN/RST
//! handling, status and resize decoding are reached) with arbitrary operations, stream ids,
//! payloads and raw garbage mixed in, optionally inside the WebSocket tunnel, pushed in
//! arbitrary piece sizes.
#![no_main]

use flate2::{Compress, Compression, FlushCompress};
use libfuzzer_sys::arbitrary::{self, Arbitrary};
use libfuzzer_sys::fuzz_target;
use portcullis_fuzz::frames::{spdy_dictionary, Direction, SessionDecoder, StreamProtocol};

const KINDS: [&str; 7] = [
    "stdin", "stdout", "stderr", "error", "resize", "data", "bogus",
];

#[derive(Arbitrary, Debug)]
enum Op {
    Syn {
        server: bool,
        stream: u8,
        kind: u8,
        port: u16,
        request: u8,
        fin: bool,
    },
    Reply {
        server: bool,
        stream: u8,
        fin: bool,
    },
    Data {
        server: bool,
        stream: u8,
        fin: bool,
        data: Vec<u8>,
    },
    Resize {
        stream: u8,
        width: u32,
        height: u16,
    },
    Status {
        stream: u8,
        code: i32,
        split: u8,
    },
    Rst {
        server: bool,
        stream: u8,
    },
    GoAway {
        server: bool,
    },
    Ping {
        server: bool,
    },
    Raw {
        server: bool,
        bytes: Vec<u8>,
    },
}

#[derive(Arbitrary, Debug)]
struct Input {
    port_forward: bool,
    tunnel: bool,
    piece: u8,
    ops: Vec<Op>,
}

struct Writer {
    deflater: Compress,
}

impl Writer {
    fn new() -> Self {
        let mut deflater = Compress::new(Compression::fast(), true);
        deflater
            .set_dictionary(spdy_dictionary())
            .expect("priming zlib");
        Self { deflater }
    }

    fn block(&mut self, headers: &[(&str, &str)]) -> Vec<u8> {
        let mut raw = (headers.len() as u32).to_be_bytes().to_vec();
        for (name, value) in headers {
            for part in [name, value] {
                raw.extend_from_slice(&(part.len() as u32).to_be_bytes());
                raw.extend_from_slice(part.as_bytes());
            }
        }
        let mut out = Vec::with_capacity(raw.len() + 128);
        let mut consumed = 0;
        loop {
            if out.capacity() - out.len() < 64 {
                out.reserve(1024);
            }
            let before = self.deflater.total_in();
            self.deflater
                .compress_vec(&raw[consumed..], &mut out, FlushCompress::Sync)
                .expect("deflating");
            consumed += (self.deflater.total_in() - before) as usize;
            if consumed >= raw.len() && out.len() < out.capacity() {
                return out;
            }
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

fn data_frame(stream: u32, fin: bool, data: &[u8]) -> Vec<u8> {
    let mut out = stream.to_be_bytes().to_vec();
    out.extend_from_slice(&((u32::from(fin) << 24) | data.len() as u32).to_be_bytes());
    out.extend_from_slice(data);
    out
}

/// One binary WebSocket frame; clients mask.
fn ws_binary(payload: &[u8], masked: bool) -> Vec<u8> {
    let mut out = vec![0x82];
    let mask_bit = if masked { 0x80 } else { 0 };
    match payload.len() {
        n if n < 126 => out.push(mask_bit | n as u8),
        n if n <= 0xffff => {
            out.push(mask_bit | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(mask_bit | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    let key = [0x11, 0x22, 0x33, 0x44];
    if masked {
        out.extend_from_slice(&key);
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
    } else {
        out.extend_from_slice(payload);
    }
    out
}

fuzz_target!(|input: Input| {
    let protocol = match (input.port_forward, input.tunnel) {
        (false, _) => StreamProtocol::Spdy31,
        (true, false) => StreamProtocol::SpdyPortForward,
        (true, true) => StreamProtocol::WebSocketTunnelSpdyPortForward,
    };
    let tunnel = protocol == StreamProtocol::WebSocketTunnelSpdyPortForward;
    let mut decoder = SessionDecoder::new(protocol);
    let mut writers = [Writer::new(), Writer::new()];
    let piece = usize::from(input.piece % 64) + 1;
    for op in input.ops {
        let (server, bytes) = match op {
            Op::Syn {
                server,
                stream,
                kind,
                port,
                request,
                fin,
            } => {
                let port = port.to_string();
                let request = request.to_string();
                let headers = [
                    ("streamtype", KINDS[usize::from(kind) % KINDS.len()]),
                    ("port", port.as_str()),
                    ("requestid", request.as_str()),
                ];
                let mut payload = u32::from(stream).to_be_bytes().to_vec();
                payload.extend_from_slice(&[0; 6]);
                payload.extend(writers[usize::from(server)].block(&headers));
                (server, control(1, u8::from(fin), &payload))
            }
            Op::Reply {
                server,
                stream,
                fin,
            } => {
                let mut payload = u32::from(stream).to_be_bytes().to_vec();
                payload.extend(writers[usize::from(server)].block(&[]));
                (server, control(2, u8::from(fin), &payload))
            }
            Op::Data {
                server,
                stream,
                fin,
                data,
            } => (server, data_frame(u32::from(stream), fin, &data)),
            Op::Resize {
                stream,
                width,
                height,
            } => {
                let json = format!(r#"{{"Width":{width},"Height":{height}}}"#);
                (false, data_frame(u32::from(stream), false, json.as_bytes()))
            }
            Op::Status {
                stream,
                code,
                split,
            } => {
                let json = format!(
                    r#"{{"status":"Failure","reason":"NonZeroExitCode","details":{{"causes":[{{"reason":"ExitCode","message":"{code}"}}]}}}}"#
                );
                let at = usize::from(split) % json.len();
                let mut bytes = data_frame(u32::from(stream), false, &json.as_bytes()[..at]);
                bytes.extend(data_frame(u32::from(stream), true, &json.as_bytes()[at..]));
                (true, bytes)
            }
            Op::Rst { server, stream } => {
                let payload = [u32::from(stream).to_be_bytes(), 5u32.to_be_bytes()].concat();
                (server, control(3, 0, &payload))
            }
            Op::GoAway { server } => (server, control(7, 0, &[0; 8])),
            Op::Ping { server } => (server, control(6, 0, &[0, 0, 0, 1])),
            Op::Raw { server, bytes } => (server, bytes),
        };
        let (dir, bytes) = if server {
            (Direction::ServerToClient, bytes)
        } else {
            (Direction::ClientToServer, bytes)
        };
        let bytes = if tunnel {
            ws_binary(&bytes, dir == Direction::ClientToServer)
        } else {
            bytes
        };
        for chunk in bytes.chunks(piece) {
            if decoder.push(dir, chunk).is_err() {
                return;
            }
        }
    }
});
