//! SPDY/3.1 framing, one direction of a connection, sans-IO: 8-byte frame headers, DATA frames
//! streamed by stream id, control frames (SYN_STREAM, SYN_REPLY, RST_STREAM, SETTINGS, PING,
//! GOAWAY, HEADERS, WINDOW_UPDATE) parsed whole, and header blocks inflated with this direction's
//! persistent zlib context primed with the SPDY/3 dictionary.
//!
//! Owns framing and header blocks only; [`super::spdy_session`] gives streams their meaning.
//! Buffers one header and one control frame at a time, both capped; DATA payloads stream through.

use std::sync::OnceLock;

use flate2::{Decompress, FlushDecompress, Status};

use super::{Direction, FrameError};

const HEADER_LEN: usize = 8;
/// Control frames of exec and port-forward are tiny (a SYN_STREAM is ~50 bytes compressed).
const MAX_CONTROL_FRAME: usize = 64 * 1024;
/// An inflated header block larger than this is a zlib bomb, not headers.
const MAX_HEADER_BLOCK: usize = 64 * 1024;
const STREAM_ID_MASK: u32 = 0x7fff_ffff;
pub(super) const FLAG_FIN: u8 = 0x01;

const TYPE_SYN_STREAM: u16 = 1;
const TYPE_SYN_REPLY: u16 = 2;
const TYPE_RST_STREAM: u16 = 3;
const TYPE_SETTINGS: u16 = 4;
const TYPE_PING: u16 = 6;
const TYPE_GOAWAY: u16 = 7;
const TYPE_HEADERS: u16 = 8;
const TYPE_WINDOW_UPDATE: u16 = 9;

/// Header name/value pairs in wire order; names lowercase.
pub(super) type Headers = Vec<(String, String)>;

/// The first value of header `name` (SPDY joins repeated values with NUL).
pub(super) fn header_value<'a>(headers: &'a Headers, name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(n, _)| n == name)
        .and_then(|(_, v)| v.split('\0').next())
}

/// A parsed control frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Control {
    SynStream {
        stream_id: u32,
        fin: bool,
        headers: Headers,
    },
    SynReply {
        stream_id: u32,
        fin: bool,
    },
    Headers {
        stream_id: u32,
        fin: bool,
    },
    RstStream {
        stream_id: u32,
        status: u32,
    },
    GoAway {
        last_good_stream_id: u32,
        status: u32,
    },
    /// SETTINGS, PING, WINDOW_UPDATE and unknown types: valid, and nothing to record.
    Ignored,
}

/// Receives the frames of one direction.
pub(super) trait FrameSink {
    fn control(&mut self, frame: Control) -> Result<(), FrameError>;
    /// The next payload bytes of a DATA frame on `stream_id` (never empty).
    fn data(&mut self, stream_id: u32, bytes: &[u8]) -> Result<(), FrameError>;
    /// A DATA frame on `stream_id` is complete; `fin` if it half-closes the stream.
    fn data_end(&mut self, stream_id: u32, fin: bool) -> Result<(), FrameError>;
}

/// The SPDY/3 header compression dictionary (SPDY draft 3, section 2.6.10.1): length-prefixed
/// common header names, then a run of common values.
pub fn dictionary() -> &'static [u8] {
    static DICTIONARY: OnceLock<Vec<u8>> = OnceLock::new();
    DICTIONARY.get_or_init(|| {
        const NAMES: &str = "options head post put delete trace accept accept-charset \
            accept-encoding accept-language accept-ranges age allow authorization cache-control \
            connection content-base content-encoding content-language content-length \
            content-location content-md5 content-range content-type date etag expect expires \
            from host if-match if-modified-since if-none-match if-range if-unmodified-since \
            last-modified location max-forwards pragma proxy-authenticate proxy-authorization \
            range referer retry-after server te trailer transfer-encoding upgrade user-agent \
            vary via warning www-authenticate method get status";
        const AFTER_STATUS: &[&str] = &["200 OK", "version", "HTTP/1.1", "url"];
        const LAST_NAMES: &str = "public set-cookie keep-alive origin";
        const VALUES: &[&str] = &[
            "100101201202205206300302303304305306307402405406407408409410411412413414415416417502504505",
            "203 Non-Authoritative Information",
            "204 No Content",
            "301 Moved Permanently",
            "400 Bad Request",
            "401 Unauthorized",
            "403 Forbidden",
            "404 Not Found",
            "500 Internal Server Error",
            "501 Not Implemented",
            "503 Service Unavailable",
            "Jan Feb Mar Apr May Jun Jul Aug Sept Oct Nov Dec",
            " 00:00:00",
            " Mon, Tue, Wed, Thu, Fri, Sat, Sun, GMT",
            "chunked,text/html,image/png,image/jpg,image/gif,application/xml,application/xhtml+xml,",
            "text/plain,text/javascript,publicprivatemax-age=gzip,deflate,sdch",
            "charset=utf-8charset=iso-8859-1,utf-,*,enq=0.",
        ];
        let mut dictionary = Vec::with_capacity(1423);
        let words = NAMES
            .split_whitespace()
            .chain(AFTER_STATUS.iter().copied())
            .chain(LAST_NAMES.split_whitespace());
        for word in words {
            dictionary.extend_from_slice(&(word.len() as u32).to_be_bytes());
            dictionary.extend_from_slice(word.as_bytes());
        }
        for value in VALUES {
            dictionary.extend_from_slice(value.as_bytes());
        }
        dictionary
    })
}

#[derive(Clone, Copy)]
enum State {
    Header,
    Data {
        stream_id: u32,
        fin: bool,
        remaining: usize,
    },
    Control {
        frame_type: u16,
        flags: u8,
        length: usize,
    },
}

/// Parses the frames one peer writes.
pub(super) struct FrameReader {
    peer: &'static str,
    state: State,
    header: [u8; HEADER_LEN],
    header_len: usize,
    control: Vec<u8>,
    inflater: Decompress,
}

impl FrameReader {
    pub(super) fn new(dir: Direction) -> Self {
        Self {
            peer: dir.peer(),
            state: State::Header,
            header: [0; HEADER_LEN],
            header_len: 0,
            control: Vec::new(),
            inflater: Decompress::new(true),
        }
    }

    fn error(&self, problem: &'static str) -> FrameError {
        FrameError::Spdy {
            peer: self.peer,
            problem,
        }
    }

    pub(super) fn push(
        &mut self,
        mut input: &[u8],
        sink: &mut impl FrameSink,
    ) -> Result<(), FrameError> {
        while !input.is_empty() {
            match self.state {
                State::Header => {
                    let take = (HEADER_LEN - self.header_len).min(input.len());
                    self.header[self.header_len..self.header_len + take]
                        .copy_from_slice(&input[..take]);
                    self.header_len += take;
                    input = &input[take..];
                    if self.header_len == HEADER_LEN {
                        self.header_len = 0;
                        self.start_frame(sink)?;
                    }
                }
                State::Data {
                    stream_id,
                    fin,
                    remaining,
                } => {
                    let n = remaining.min(input.len());
                    let (chunk, rest) = input.split_at(n);
                    input = rest;
                    sink.data(stream_id, chunk)?;
                    let remaining = remaining - n;
                    if remaining == 0 {
                        self.state = State::Header;
                        sink.data_end(stream_id, fin)?;
                    } else {
                        self.state = State::Data {
                            stream_id,
                            fin,
                            remaining,
                        };
                    }
                }
                State::Control {
                    frame_type,
                    flags,
                    length,
                } => {
                    let n = (length - self.control.len()).min(input.len());
                    self.control.extend_from_slice(&input[..n]);
                    input = &input[n..];
                    if self.control.len() == length {
                        self.state = State::Header;
                        let frame = self.parse_control(frame_type, flags)?;
                        sink.control(frame)?;
                    }
                }
            }
        }
        Ok(())
    }

    fn start_frame(&mut self, sink: &mut impl FrameSink) -> Result<(), FrameError> {
        let h = self.header;
        let first = u32::from_be_bytes([h[0], h[1], h[2], h[3]]);
        let flags = h[4];
        let length = u32::from_be_bytes([0, h[5], h[6], h[7]]) as usize;
        if first & 0x8000_0000 == 0 {
            let stream_id = first & STREAM_ID_MASK;
            let fin = flags & FLAG_FIN != 0;
            if length == 0 {
                return sink.data_end(stream_id, fin);
            }
            self.state = State::Data {
                stream_id,
                fin,
                remaining: length,
            };
            return Ok(());
        }
        let version = (first >> 16) & 0x7fff;
        if version != 3 {
            return Err(self.error("control frame version is not 3"));
        }
        if length > MAX_CONTROL_FRAME {
            return Err(FrameError::TooLarge {
                peer: self.peer,
                what: "a SPDY control frame",
                limit: MAX_CONTROL_FRAME,
            });
        }
        let frame_type = (first & 0xffff) as u16;
        self.control.clear();
        self.state = State::Control {
            frame_type,
            flags,
            length,
        };
        if length == 0 {
            self.state = State::Header;
            let frame = self.parse_control(frame_type, flags)?;
            sink.control(frame)?;
        }
        Ok(())
    }

    fn parse_control(&mut self, frame_type: u16, flags: u8) -> Result<Control, FrameError> {
        let payload = std::mem::take(&mut self.control);
        let result = self.parse_control_payload(frame_type, flags, &payload);
        // Keep the allocation for the next control frame.
        self.control = payload;
        result
    }

    fn parse_control_payload(
        &mut self,
        frame_type: u16,
        flags: u8,
        p: &[u8],
    ) -> Result<Control, FrameError> {
        let word = |at: usize| u32::from_be_bytes([p[at], p[at + 1], p[at + 2], p[at + 3]]);
        let fin = flags & FLAG_FIN != 0;
        Ok(match frame_type {
            TYPE_SYN_STREAM => {
                if p.len() < 10 {
                    return Err(self.error("SYN_STREAM shorter than 10 bytes"));
                }
                let headers = self.header_block(&p[10..])?;
                Control::SynStream {
                    stream_id: word(0) & STREAM_ID_MASK,
                    fin,
                    headers,
                }
            }
            TYPE_SYN_REPLY | TYPE_HEADERS => {
                if p.len() < 4 {
                    return Err(self.error("SYN_REPLY or HEADERS shorter than 4 bytes"));
                }
                // Nothing in them is recorded, but they must be inflated to keep the zlib
                // context in step with the peer's.
                self.header_block(&p[4..])?;
                let stream_id = word(0) & STREAM_ID_MASK;
                if frame_type == TYPE_HEADERS {
                    Control::Headers { stream_id, fin }
                } else {
                    Control::SynReply { stream_id, fin }
                }
            }
            TYPE_RST_STREAM => {
                if p.len() != 8 {
                    return Err(self.error("RST_STREAM is not 8 bytes"));
                }
                Control::RstStream {
                    stream_id: word(0) & STREAM_ID_MASK,
                    status: word(4),
                }
            }
            TYPE_GOAWAY => {
                // SPDY/2 peers omit the status word.
                if p.len() != 8 && p.len() != 4 {
                    return Err(self.error("GOAWAY is neither 4 nor 8 bytes"));
                }
                Control::GoAway {
                    last_good_stream_id: word(0) & STREAM_ID_MASK,
                    status: if p.len() == 8 { word(4) } else { 0 },
                }
            }
            TYPE_SETTINGS => {
                if p.len() < 4
                    || (p.len() - 4) / 8 != word(0) as usize
                    || !(p.len() - 4).is_multiple_of(8)
                {
                    return Err(self.error("SETTINGS length does not match its entry count"));
                }
                Control::Ignored
            }
            TYPE_PING => {
                if p.len() != 4 {
                    return Err(self.error("PING is not 4 bytes"));
                }
                Control::Ignored
            }
            TYPE_WINDOW_UPDATE => {
                if p.len() != 8 {
                    return Err(self.error("WINDOW_UPDATE is not 8 bytes"));
                }
                Control::Ignored
            }
            // SPDY says to ignore control frames of unknown types (e.g. CREDENTIAL).
            _ => Control::Ignored,
        })
    }

    fn header_block(&mut self, compressed: &[u8]) -> Result<Headers, FrameError> {
        let block = self.inflate(compressed)?;
        parse_header_block(&block).map_err(|problem| self.error(problem))
    }

    fn block_error(&self, problem: impl Into<String>) -> FrameError {
        FrameError::HeaderBlock {
            peer: self.peer,
            problem: problem.into(),
        }
    }

    /// Inflates one sync-flushed header block, continuing this direction's zlib stream.
    fn inflate(&mut self, input: &[u8]) -> Result<Vec<u8>, FrameError> {
        let mut out = Vec::with_capacity((input.len() * 4).clamp(256, 4096));
        let mut consumed = 0usize;
        loop {
            if out.len() == out.capacity() {
                // One byte past the cap is enough to know the block is too large.
                let room = (MAX_HEADER_BLOCK + 1 - out.len()).min(out.len().max(1024));
                out.reserve_exact(room);
            }
            let (in_before, out_before) = (self.inflater.total_in(), self.inflater.total_out());
            let result =
                self.inflater
                    .decompress_vec(&input[consumed..], &mut out, FlushDecompress::Sync);
            consumed += (self.inflater.total_in() - in_before) as usize;
            let progressed =
                self.inflater.total_in() != in_before || self.inflater.total_out() != out_before;
            if out.len() > MAX_HEADER_BLOCK {
                return Err(FrameError::TooLarge {
                    peer: self.peer,
                    what: "an inflated SPDY header block",
                    limit: MAX_HEADER_BLOCK,
                });
            }
            match result {
                Ok(Status::StreamEnd) => {
                    return Err(self.block_error("the peer ended its zlib stream"))
                }
                Ok(_) => {
                    let room_left = out.len() < out.capacity();
                    if consumed >= input.len() && room_left {
                        return Ok(out);
                    }
                    if !progressed && room_left {
                        return Err(self.block_error("truncated"));
                    }
                }
                Err(err) => match err.needs_dictionary() {
                    Some(id) if id == adler32(dictionary()) => self
                        .inflater
                        .set_dictionary(dictionary())
                        .map(drop)
                        .map_err(|e| self.block_error(e.to_string()))?,
                    Some(_) => return Err(self.block_error("unknown preset dictionary")),
                    None => return Err(self.block_error(err.to_string())),
                },
            }
        }
    }
}

/// Parses an inflated header block; lengths are checked against what is left, never trusted.
fn parse_header_block(mut block: &[u8]) -> Result<Headers, &'static str> {
    fn take<'a>(block: &mut &'a [u8], n: usize) -> Result<&'a [u8], &'static str> {
        if block.len() < n {
            return Err("header block is truncated");
        }
        let (head, rest) = block.split_at(n);
        *block = rest;
        Ok(head)
    }
    fn take_len(block: &mut &[u8]) -> Result<usize, &'static str> {
        let bytes = take(block, 4)?;
        Ok(u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]) as usize)
    }
    let count = take_len(&mut block)?;
    // Every pair takes at least 8 bytes: a larger count is a lie and must not size anything.
    if count > block.len() / 8 {
        return Err("header pair count exceeds the block");
    }
    let mut headers = Vec::with_capacity(count);
    for _ in 0..count {
        let name_len = take_len(&mut block)?;
        let name = take(&mut block, name_len)?;
        if name.is_empty() {
            return Err("empty header name");
        }
        let value_len = take_len(&mut block)?;
        let value = take(&mut block, value_len)?;
        headers.push((
            String::from_utf8_lossy(name).to_ascii_lowercase(),
            String::from_utf8_lossy(value).into_owned(),
        ));
    }
    if !block.is_empty() {
        return Err("trailing bytes after the last header pair");
    }
    Ok(headers)
}

/// Adler-32, as zlib names a preset dictionary.
fn adler32(data: &[u8]) -> u32 {
    const MOD: u32 = 65_521;
    let (mut a, mut b) = (1u32, 0u32);
    // 5552 bytes is the most that can be summed before `b` could overflow.
    for chunk in data.chunks(5_552) {
        for &byte in chunk {
            a += u32::from(byte);
            b += a;
        }
        a %= MOD;
        b %= MOD;
    }
    (b << 16) | a
}

#[cfg(test)]
mod tests {
    use super::super::testkit::SpdyWriter;
    use super::*;

    #[test]
    fn dictionary_is_the_spdy3_one() {
        let dictionary = dictionary();
        assert_eq!(dictionary.len(), 1423);
        assert_eq!(adler32(dictionary), 0xe3c6_a7c2);
        assert!(dictionary.starts_with(b"\0\0\0\x07options"));
        assert!(dictionary.ends_with(b",enq=0."));
    }

    #[derive(Default)]
    struct Recorder {
        controls: Vec<Control>,
        data: Vec<(u32, Vec<u8>, bool)>,
        open: Vec<u8>,
    }

    impl FrameSink for Recorder {
        fn control(&mut self, frame: Control) -> Result<(), FrameError> {
            self.controls.push(frame);
            Ok(())
        }
        fn data(&mut self, _stream_id: u32, bytes: &[u8]) -> Result<(), FrameError> {
            assert!(!bytes.is_empty());
            self.open.extend_from_slice(bytes);
            Ok(())
        }
        fn data_end(&mut self, stream_id: u32, fin: bool) -> Result<(), FrameError> {
            self.data
                .push((stream_id, std::mem::take(&mut self.open), fin));
            Ok(())
        }
    }

    #[test]
    fn decodes_a_header_block_compressed_by_another_zlib() {
        // SYN_STREAM {streamtype: error} for stream 1 as Python's zlib (zdict = SPDY/3
        // dictionary, Z_SYNC_FLUSH) compresses it: an implementation independent of flate2.
        let block: &[u8] = &[
            0x78, 0xf9, 0xe3, 0xc6, 0xa7, 0xc2, 0x02, 0xa6, 0x23, 0x46, 0x70, 0x3a, 0x2b, 0x29,
            0x4a, 0x4d, 0xcc, 0x85, 0x16, 0x25, 0xac, 0xa9, 0xa0, 0x80, 0x06, 0x00, 0x00, 0x00,
            0xff, 0xff,
        ];
        let mut wire = vec![0x80, 0x03, 0x00, 0x01, 0x00, 0x00, 0x00];
        wire.push(10 + block.len() as u8);
        wire.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 0, 0, 0]);
        wire.extend_from_slice(block);
        let mut reader = FrameReader::new(Direction::ClientToServer);
        let mut sink = Recorder::default();
        reader.push(&wire, &mut sink).unwrap();
        assert_eq!(
            sink.controls,
            vec![Control::SynStream {
                stream_id: 1,
                fin: false,
                headers: vec![("streamtype".into(), "error".into())],
            }]
        );
    }

    #[test]
    fn frames_survive_every_split() {
        let mut writer = SpdyWriter::default();
        let mut wire = Vec::new();
        wire.extend(writer.syn_stream(1, &[("streamtype", "error")], false));
        wire.extend(writer.syn_stream(3, &[("streamtype", "stdin"), ("x", "a\0b")], false));
        wire.extend(writer.data(3, b"hello\n", false));
        wire.extend(writer.settings(&[(7, 16_384)]));
        wire.extend(writer.ping(1));
        wire.extend(writer.data(3, b"", true));
        wire.extend(writer.headers(3, &[("a", "b")], false));
        wire.extend(writer.window_update(0, 32_768));
        wire.extend(writer.rst_stream(7, 5));
        wire.extend(writer.unknown(10, b"cred"));
        wire.extend(writer.goaway(9, 0));
        for chunk in 1..=wire.len() {
            let mut reader = FrameReader::new(Direction::ClientToServer);
            let mut sink = Recorder::default();
            for piece in wire.chunks(chunk) {
                reader.push(piece, &mut sink).unwrap();
            }
            assert_eq!(
                sink.data,
                vec![(3, b"hello\n".to_vec(), false), (3, Vec::new(), true)]
            );
            assert_eq!(
                sink.controls,
                vec![
                    Control::SynStream {
                        stream_id: 1,
                        fin: false,
                        headers: vec![("streamtype".into(), "error".into())],
                    },
                    Control::SynStream {
                        stream_id: 3,
                        fin: false,
                        headers: vec![
                            ("streamtype".into(), "stdin".into()),
                            ("x".into(), "a\0b".into())
                        ],
                    },
                    Control::Ignored,
                    Control::Ignored,
                    Control::Headers {
                        stream_id: 3,
                        fin: false
                    },
                    Control::Ignored,
                    Control::RstStream {
                        stream_id: 7,
                        status: 5
                    },
                    Control::Ignored,
                    Control::GoAway {
                        last_good_stream_id: 9,
                        status: 0
                    },
                ],
                "chunks of {chunk}"
            );
        }
    }

    #[test]
    fn header_bombs_are_capped() {
        let mut writer = SpdyWriter::default();
        let value = "a".repeat(4 * MAX_HEADER_BLOCK);
        let wire = writer.syn_stream(1, &[("x", value.as_str())], false);
        // Highly compressible: the frame itself is small, its block is not.
        assert!(wire.len() < MAX_CONTROL_FRAME);
        let err = FrameReader::new(Direction::ClientToServer)
            .push(&wire, &mut Recorder::default())
            .unwrap_err();
        assert!(matches!(err, FrameError::TooLarge { .. }), "{err}");
    }

    #[test]
    fn malformed_frames_are_errors() {
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (
                vec![0x80, 0x02, 0, 1, 0, 0, 0, 0],
                "control frame version is not 3",
            ),
            (
                vec![0x80, 0x03, 0, 3, 0, 0, 0, 4, 0, 0, 0, 1],
                "RST_STREAM is not 8 bytes",
            ),
            (
                vec![0x80, 0x03, 0, 1, 0, 0, 0, 2, 0, 0],
                "SYN_STREAM shorter than 10 bytes",
            ),
            (
                vec![0x80, 0x03, 0, 4, 0, 0, 0, 4, 0, 0, 0, 9],
                "SETTINGS length does not match its entry count",
            ),
        ];
        for (wire, problem) in cases {
            let err = FrameReader::new(Direction::ServerToClient)
                .push(&wire, &mut Recorder::default())
                .unwrap_err();
            assert_eq!(
                err,
                FrameError::Spdy {
                    peer: "server",
                    problem
                }
            );
        }
        // A control frame over the cap is refused from its header, before any buffering.
        let err = FrameReader::new(Direction::ServerToClient)
            .push(
                &[0x80, 0x03, 0, 1, 0, 0xff, 0xff, 0xff],
                &mut Recorder::default(),
            )
            .unwrap_err();
        assert!(matches!(err, FrameError::TooLarge { .. }));
        // A header block that is not zlib.
        let err = FrameReader::new(Direction::ServerToClient)
            .push(
                &[0x80, 0x03, 0, 2, 0, 0, 0, 8, 0, 0, 0, 1, 1, 2, 3, 4],
                &mut Recorder::default(),
            )
            .unwrap_err();
        assert!(matches!(err, FrameError::HeaderBlock { .. }), "{err}");
    }

    #[test]
    fn lying_header_block_lengths() {
        assert!(parse_header_block(&u32::MAX.to_be_bytes()).is_err());
        let mut block = 1u32.to_be_bytes().to_vec();
        block.extend_from_slice(&100u32.to_be_bytes());
        block.extend_from_slice(b"short");
        assert!(parse_header_block(&block).is_err());
        let mut block = 0u32.to_be_bytes().to_vec();
        block.push(0);
        assert!(parse_header_block(&block).is_err());
    }
}
