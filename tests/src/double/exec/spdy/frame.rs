//! SPDY/3.1 framing and header-block compression, as moby/spdystream (client-go's SPDY transport) puts them on the
//! wire: 8-byte frame headers, length-prefixed name/value header blocks, and one zlib context per direction for the
//! whole connection, primed with the SPDY/3 dictionary and sync-flushed after every header block.
//!
//! Owns the byte-level encoding and decoding only; it knows nothing about exec sessions. It must never panic on
//! malformed input and never allocate more than a bounded amount for a hostile length field.

use std::sync::OnceLock;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};

/// The protocol version written in every control frame.
pub const VERSION: u16 = 3;
/// FLAG_FIN on DATA, SYN_STREAM, SYN_REPLY and HEADERS frames.
pub const FLAG_FIN: u8 = 0x01;
/// SETTINGS id of the initial per-stream flow-control window.
pub const SETTINGS_INITIAL_WINDOW_SIZE: u32 = 7;
/// The flow-control window every stream (and, in SPDY/3.1, the session) starts with.
pub const DEFAULT_WINDOW: u32 = 64 * 1024;
/// The largest payload the 24-bit length field can describe.
pub const MAX_PAYLOAD: usize = 0x00ff_ffff;

/// RST_STREAM status codes used by this double.
pub mod rst {
    pub const PROTOCOL_ERROR: u32 = 1;
}

/// GOAWAY status codes.
pub mod goaway {
    pub const OK: u32 = 0;
    pub const PROTOCOL_ERROR: u32 = 1;
}

const TYPE_SYN_STREAM: u16 = 1;
const TYPE_SYN_REPLY: u16 = 2;
const TYPE_RST_STREAM: u16 = 3;
const TYPE_SETTINGS: u16 = 4;
const TYPE_PING: u16 = 6;
const TYPE_GOAWAY: u16 = 7;
const TYPE_HEADERS: u16 = 8;
const TYPE_WINDOW_UPDATE: u16 = 9;

/// A decompressed header block can never legitimately be this large for exec; the cap keeps a zlib bomb from
/// eating memory.
const MAX_HEADER_BLOCK: usize = 256 * 1024;
const STREAM_ID_MASK: u32 = 0x7fff_ffff;

/// Header name/value pairs in wire order. Names are lowercase; a value holding several values keeps them
/// NUL-separated, as on the wire.
pub type Headers = Vec<(String, String)>;

/// The first value of header `name` (SPDY joins repeated values with NUL).
pub fn header_value<'a>(headers: &'a Headers, name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.split('\0').next().unwrap_or_default())
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Setting {
    pub flags: u8,
    pub id: u32,
    pub value: u32,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Frame {
    Data {
        stream_id: u32,
        flags: u8,
        data: Bytes,
    },
    SynStream {
        stream_id: u32,
        associated_to: u32,
        priority: u8,
        slot: u8,
        flags: u8,
        headers: Headers,
    },
    SynReply {
        stream_id: u32,
        flags: u8,
        headers: Headers,
    },
    RstStream {
        stream_id: u32,
        status: u32,
    },
    Settings {
        flags: u8,
        entries: Vec<Setting>,
    },
    Ping {
        id: u32,
    },
    GoAway {
        last_good_stream_id: u32,
        status: u32,
    },
    Headers {
        stream_id: u32,
        flags: u8,
        headers: Headers,
    },
    WindowUpdate {
        stream_id: u32,
        delta: u32,
    },
    /// A control frame type this codec does not interpret; SPDY says to ignore it.
    Unknown {
        version: u16,
        frame_type: u16,
        flags: u8,
        payload: Bytes,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("{kind} frame has invalid length {length}")]
    BadLength { kind: &'static str, length: usize },
    #[error("malformed header block: {0}")]
    HeaderBlock(&'static str),
    #[error("header block decompresses to more than {MAX_HEADER_BLOCK} bytes")]
    HeaderBlockTooLarge,
    #[error("header compression failed: {0}")]
    Compression(String),
    #[error("payload of {0} bytes does not fit the 24-bit length field")]
    TooLarge(usize),
}

/// The SPDY/3 header compression dictionary (draft-mbelshe-httpbis-spdy-00, section 2.6.10.1): a run of
/// length-prefixed common header words followed by a run of common values.
pub fn dictionary() -> &'static [u8] {
    static DICT: OnceLock<Vec<u8>> = OnceLock::new();
    DICT.get_or_init(|| {
        const WORDS: &[&str] = &[
            "options",
            "head",
            "post",
            "put",
            "delete",
            "trace",
            "accept",
            "accept-charset",
            "accept-encoding",
            "accept-language",
            "accept-ranges",
            "age",
            "allow",
            "authorization",
            "cache-control",
            "connection",
            "content-base",
            "content-encoding",
            "content-language",
            "content-length",
            "content-location",
            "content-md5",
            "content-range",
            "content-type",
            "date",
            "etag",
            "expect",
            "expires",
            "from",
            "host",
            "if-match",
            "if-modified-since",
            "if-none-match",
            "if-range",
            "if-unmodified-since",
            "last-modified",
            "location",
            "max-forwards",
            "pragma",
            "proxy-authenticate",
            "proxy-authorization",
            "range",
            "referer",
            "retry-after",
            "server",
            "te",
            "trailer",
            "transfer-encoding",
            "upgrade",
            "user-agent",
            "vary",
            "via",
            "warning",
            "www-authenticate",
            "method",
            "get",
            "status",
            "200 OK",
            "version",
            "HTTP/1.1",
            "url",
            "public",
            "set-cookie",
            "keep-alive",
            "origin",
        ];
        const TAIL: &[&str] = &[
            "100101201202205206300302303304305306307",
            "402405406407408409410411412413414415416417",
            "502504505",
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
        let mut dict = Vec::with_capacity(1423);
        for word in WORDS {
            dict.extend_from_slice(&(word.len() as u32).to_be_bytes());
            dict.extend_from_slice(word.as_bytes());
        }
        for part in TAIL {
            dict.extend_from_slice(part.as_bytes());
        }
        dict
    })
}

/// Encodes a header block without compression.
fn encode_header_block(headers: &Headers) -> Vec<u8> {
    let mut block = Vec::with_capacity(4 + headers.len() * 32);
    block.extend_from_slice(&(headers.len() as u32).to_be_bytes());
    for (name, value) in headers {
        let name = name.to_ascii_lowercase();
        block.extend_from_slice(&(name.len() as u32).to_be_bytes());
        block.extend_from_slice(name.as_bytes());
        block.extend_from_slice(&(value.len() as u32).to_be_bytes());
        block.extend_from_slice(value.as_bytes());
    }
    block
}

/// Parses an uncompressed header block; lengths are checked against what is left, never trusted.
fn parse_header_block(mut block: &[u8]) -> Result<Headers, FrameError> {
    fn take<'a>(block: &mut &'a [u8], n: usize) -> Result<&'a [u8], FrameError> {
        if block.len() < n {
            return Err(FrameError::HeaderBlock("truncated"));
        }
        let (head, rest) = block.split_at(n);
        *block = rest;
        Ok(head)
    }
    fn take_u32(block: &mut &[u8]) -> Result<usize, FrameError> {
        let bytes = take(block, 4)?;
        Ok(u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]) as usize)
    }
    let count = take_u32(&mut block)?;
    // Every pair needs at least 8 bytes, so a count beyond that is a lie and must not size an allocation.
    if count > block.len() / 8 {
        return Err(FrameError::HeaderBlock("pair count exceeds block size"));
    }
    let mut headers = Vec::with_capacity(count);
    for _ in 0..count {
        let name_len = take_u32(&mut block)?;
        let name = take(&mut block, name_len)?;
        if name.is_empty() {
            return Err(FrameError::HeaderBlock("empty header name"));
        }
        let value_len = take_u32(&mut block)?;
        let value = take(&mut block, value_len)?;
        headers.push((
            String::from_utf8_lossy(name).to_ascii_lowercase(),
            String::from_utf8_lossy(value).into_owned(),
        ));
    }
    if !block.is_empty() {
        return Err(FrameError::HeaderBlock(
            "trailing bytes after the last pair",
        ));
    }
    Ok(headers)
}

/// The receiving zlib context of one connection direction.
pub struct HeaderInflater {
    z: Decompress,
}

impl Default for HeaderInflater {
    fn default() -> Self {
        Self {
            z: Decompress::new(true),
        }
    }
}

impl HeaderInflater {
    /// Inflates one sync-flushed header block, continuing the connection's zlib stream.
    pub fn inflate(&mut self, input: &[u8]) -> Result<Vec<u8>, FrameError> {
        let mut out = Vec::with_capacity((input.len() * 4).clamp(64, 16 * 1024));
        let mut consumed = 0usize;
        loop {
            if out.capacity() - out.len() < 256 {
                out.reserve(out.len().max(1024));
            }
            let (in_before, out_before) = (self.z.total_in(), self.z.total_out());
            let result = self
                .z
                .decompress_vec(&input[consumed..], &mut out, FlushDecompress::Sync);
            consumed += (self.z.total_in() - in_before) as usize;
            if out.len() > MAX_HEADER_BLOCK {
                return Err(FrameError::HeaderBlockTooLarge);
            }
            let progressed = self.z.total_in() != in_before || self.z.total_out() != out_before;
            match result {
                Ok(Status::StreamEnd) => {
                    return Err(FrameError::Compression("peer ended its zlib stream".into()))
                }
                Ok(_) => {
                    let room_left = out.len() < out.capacity();
                    if consumed >= input.len() && room_left {
                        return Ok(out);
                    }
                    if !progressed && room_left {
                        return Err(FrameError::Compression("header block is truncated".into()));
                    }
                }
                Err(err) => match err.needs_dictionary() {
                    Some(id) if id == adler32(dictionary()) => {
                        self.z
                            .set_dictionary(dictionary())
                            .map_err(|e| FrameError::Compression(e.to_string()))?;
                    }
                    Some(id) => {
                        return Err(FrameError::Compression(format!(
                            "peer wants unknown dictionary {id:#010x}"
                        )))
                    }
                    None => return Err(FrameError::Compression(err.to_string())),
                },
            }
        }
    }
}

/// The sending zlib context of one connection direction.
pub struct HeaderDeflater {
    z: Compress,
    primed: bool,
}

impl Default for HeaderDeflater {
    fn default() -> Self {
        Self {
            z: Compress::new(Compression::default(), true),
            primed: false,
        }
    }
}

impl HeaderDeflater {
    /// Deflates one header block and sync-flushes, so the peer can decode it without waiting for more.
    pub fn deflate(&mut self, input: &[u8]) -> Result<Vec<u8>, FrameError> {
        if !self.primed {
            self.z
                .set_dictionary(dictionary())
                .map_err(|e| FrameError::Compression(e.to_string()))?;
            self.primed = true;
        }
        let mut out = Vec::with_capacity(input.len() + 64);
        let mut consumed = 0usize;
        loop {
            if out.capacity() - out.len() < 64 {
                out.reserve(1024);
            }
            let before = self.z.total_in();
            self.z
                .compress_vec(&input[consumed..], &mut out, FlushCompress::Sync)
                .map_err(|e| FrameError::Compression(e.to_string()))?;
            consumed += (self.z.total_in() - before) as usize;
            if consumed >= input.len() && out.len() < out.capacity() {
                return Ok(out);
            }
        }
    }
}

/// Adler-32 as zlib uses it to name a preset dictionary.
pub fn adler32(data: &[u8]) -> u32 {
    const MOD: u32 = 65_521;
    let (mut a, mut b) = (1u32, 0u32);
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

/// Decodes frames from one direction of a connection.
#[derive(Default)]
pub struct FrameReader {
    inflater: HeaderInflater,
}

impl FrameReader {
    /// Takes one complete frame off the front of `buf`, or returns `Ok(None)` if more bytes are needed. After an
    /// error the connection is unusable (the zlib context may be out of step with the peer's).
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Frame>, FrameError> {
        if buf.len() < 8 {
            return Ok(None);
        }
        let length = u32::from_be_bytes([0, buf[5], buf[6], buf[7]]) as usize;
        if buf.len() < 8 + length {
            return Ok(None);
        }
        let head = buf.split_to(8);
        let payload = buf.split_to(length).freeze();
        let first = u32::from_be_bytes([head[0], head[1], head[2], head[3]]);
        let flags = head[4];
        if first & 0x8000_0000 == 0 {
            return Ok(Some(Frame::Data {
                stream_id: first & STREAM_ID_MASK,
                flags,
                data: payload,
            }));
        }
        let version = ((first >> 16) & 0x7fff) as u16;
        let frame_type = (first & 0xffff) as u16;
        self.control(version, frame_type, flags, payload).map(Some)
    }

    fn control(
        &mut self,
        version: u16,
        frame_type: u16,
        flags: u8,
        mut p: Bytes,
    ) -> Result<Frame, FrameError> {
        let length = p.len();
        let bad = |kind| FrameError::BadLength { kind, length };
        Ok(match frame_type {
            TYPE_SYN_STREAM => {
                if length < 10 {
                    return Err(bad("SYN_STREAM"));
                }
                let stream_id = p.get_u32() & STREAM_ID_MASK;
                let associated_to = p.get_u32() & STREAM_ID_MASK;
                let priority = p.get_u8() >> 5;
                let slot = p.get_u8();
                let headers = parse_header_block(&self.inflater.inflate(&p)?)?;
                Frame::SynStream {
                    stream_id,
                    associated_to,
                    priority,
                    slot,
                    flags,
                    headers,
                }
            }
            TYPE_SYN_REPLY | TYPE_HEADERS => {
                if length < 4 {
                    return Err(bad(if frame_type == TYPE_HEADERS {
                        "HEADERS"
                    } else {
                        "SYN_REPLY"
                    }));
                }
                let stream_id = p.get_u32() & STREAM_ID_MASK;
                let headers = parse_header_block(&self.inflater.inflate(&p)?)?;
                if frame_type == TYPE_HEADERS {
                    Frame::Headers {
                        stream_id,
                        flags,
                        headers,
                    }
                } else {
                    Frame::SynReply {
                        stream_id,
                        flags,
                        headers,
                    }
                }
            }
            TYPE_RST_STREAM => {
                if length != 8 {
                    return Err(bad("RST_STREAM"));
                }
                Frame::RstStream {
                    stream_id: p.get_u32() & STREAM_ID_MASK,
                    status: p.get_u32(),
                }
            }
            TYPE_SETTINGS => {
                if length < 4 {
                    return Err(bad("SETTINGS"));
                }
                let count = p.get_u32() as usize;
                if count > p.len() / 8 || p.len() != count * 8 {
                    return Err(bad("SETTINGS"));
                }
                let entries = (0..count)
                    .map(|_| {
                        let word = p.get_u32();
                        Setting {
                            flags: (word >> 24) as u8,
                            id: word & 0x00ff_ffff,
                            value: p.get_u32(),
                        }
                    })
                    .collect();
                Frame::Settings { flags, entries }
            }
            TYPE_PING => {
                if length != 4 {
                    return Err(bad("PING"));
                }
                Frame::Ping { id: p.get_u32() }
            }
            TYPE_GOAWAY => {
                // SPDY/2 peers send no status word; accept both shapes.
                if length != 8 && length != 4 {
                    return Err(bad("GOAWAY"));
                }
                let last_good_stream_id = p.get_u32() & STREAM_ID_MASK;
                let status = if p.remaining() >= 4 {
                    p.get_u32()
                } else {
                    goaway::OK
                };
                Frame::GoAway {
                    last_good_stream_id,
                    status,
                }
            }
            TYPE_WINDOW_UPDATE => {
                if length != 8 {
                    return Err(bad("WINDOW_UPDATE"));
                }
                Frame::WindowUpdate {
                    stream_id: p.get_u32() & STREAM_ID_MASK,
                    delta: p.get_u32() & STREAM_ID_MASK,
                }
            }
            _ => Frame::Unknown {
                version,
                frame_type,
                flags,
                payload: p,
            },
        })
    }
}

/// Encodes frames for one direction of a connection.
#[derive(Default)]
pub struct FrameWriter {
    deflater: HeaderDeflater,
}

impl FrameWriter {
    pub fn encode(&mut self, frame: &Frame, out: &mut BytesMut) -> Result<(), FrameError> {
        match frame {
            Frame::Data {
                stream_id,
                flags,
                data,
            } => {
                let length = checked_length(data.len())?;
                out.reserve(8 + data.len());
                out.put_u32(stream_id & STREAM_ID_MASK);
                out.put_u32((u32::from(*flags) << 24) | length);
                out.put_slice(data);
            }
            Frame::SynStream {
                stream_id,
                associated_to,
                priority,
                slot,
                flags,
                headers,
            } => {
                let block = self.deflater.deflate(&encode_header_block(headers))?;
                let mut payload = Vec::with_capacity(10 + block.len());
                payload.extend_from_slice(&(stream_id & STREAM_ID_MASK).to_be_bytes());
                payload.extend_from_slice(&(associated_to & STREAM_ID_MASK).to_be_bytes());
                payload.push((priority & 0x07) << 5);
                payload.push(*slot);
                payload.extend_from_slice(&block);
                control(out, TYPE_SYN_STREAM, *flags, &payload)?;
            }
            Frame::SynReply {
                stream_id,
                flags,
                headers,
            }
            | Frame::Headers {
                stream_id,
                flags,
                headers,
            } => {
                let block = self.deflater.deflate(&encode_header_block(headers))?;
                let mut payload = Vec::with_capacity(4 + block.len());
                payload.extend_from_slice(&(stream_id & STREAM_ID_MASK).to_be_bytes());
                payload.extend_from_slice(&block);
                let frame_type = if matches!(frame, Frame::Headers { .. }) {
                    TYPE_HEADERS
                } else {
                    TYPE_SYN_REPLY
                };
                control(out, frame_type, *flags, &payload)?;
            }
            Frame::RstStream { stream_id, status } => {
                control(
                    out,
                    TYPE_RST_STREAM,
                    0,
                    &two_words(stream_id & STREAM_ID_MASK, *status),
                )?;
            }
            Frame::Settings { flags, entries } => {
                let mut payload = Vec::with_capacity(4 + entries.len() * 8);
                payload.extend_from_slice(&(entries.len() as u32).to_be_bytes());
                for entry in entries {
                    let word = (u32::from(entry.flags) << 24) | (entry.id & 0x00ff_ffff);
                    payload.extend_from_slice(&two_words(word, entry.value));
                }
                control(out, TYPE_SETTINGS, *flags, &payload)?;
            }
            Frame::Ping { id } => control(out, TYPE_PING, 0, &id.to_be_bytes())?,
            Frame::GoAway {
                last_good_stream_id,
                status,
            } => {
                let payload = two_words(last_good_stream_id & STREAM_ID_MASK, *status);
                control(out, TYPE_GOAWAY, 0, &payload)?;
            }
            Frame::WindowUpdate { stream_id, delta } => {
                let payload = two_words(stream_id & STREAM_ID_MASK, delta & STREAM_ID_MASK);
                control(out, TYPE_WINDOW_UPDATE, 0, &payload)?;
            }
            Frame::Unknown {
                version,
                frame_type,
                flags,
                payload,
            } => {
                let length = checked_length(payload.len())?;
                out.put_u16(0x8000 | version);
                out.put_u16(*frame_type);
                out.put_u32((u32::from(*flags) << 24) | length);
                out.put_slice(payload);
            }
        }
        Ok(())
    }
}

fn checked_length(len: usize) -> Result<u32, FrameError> {
    if len > MAX_PAYLOAD {
        return Err(FrameError::TooLarge(len));
    }
    Ok(len as u32)
}

fn two_words(a: u32, b: u32) -> [u8; 8] {
    let mut bytes = [0u8; 8];
    bytes[..4].copy_from_slice(&a.to_be_bytes());
    bytes[4..].copy_from_slice(&b.to_be_bytes());
    bytes
}

fn control(
    out: &mut BytesMut,
    frame_type: u16,
    flags: u8,
    payload: &[u8],
) -> Result<(), FrameError> {
    let length = checked_length(payload.len())?;
    out.reserve(8 + payload.len());
    out.put_u16(0x8000 | VERSION);
    out.put_u16(frame_type);
    out.put_u32((u32::from(flags) << 24) | length);
    out.put_slice(payload);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A small deterministic generator, so failures reproduce without a `rand` dependency.
    pub(crate) struct XorShift(pub u64);

    impl XorShift {
        pub fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
        pub fn below(&mut self, n: usize) -> usize {
            (self.next() % n.max(1) as u64) as usize
        }
    }

    fn headers(pairs: &[(&str, &str)]) -> Headers {
        pairs
            .iter()
            .map(|(n, v)| (n.to_string(), v.to_string()))
            .collect()
    }

    fn sample_frames() -> Vec<Frame> {
        vec![
            Frame::SynStream {
                stream_id: 1,
                associated_to: 0,
                priority: 0,
                slot: 0,
                flags: 0,
                headers: headers(&[("streamtype", "error")]),
            },
            Frame::SynStream {
                stream_id: 3,
                associated_to: 0,
                priority: 2,
                slot: 0,
                flags: 0,
                headers: headers(&[("streamtype", "stdin"), ("x-multi", "a\0b")]),
            },
            Frame::SynReply {
                stream_id: 1,
                flags: 0,
                headers: Vec::new(),
            },
            Frame::Data {
                stream_id: 3,
                flags: 0,
                data: Bytes::from_static(b"hello\n"),
            },
            Frame::Data {
                stream_id: 3,
                flags: FLAG_FIN,
                data: Bytes::new(),
            },
            Frame::Headers {
                stream_id: 5,
                flags: FLAG_FIN,
                headers: headers(&[("a", "b")]),
            },
            Frame::RstStream {
                stream_id: 7,
                // CANCEL, what spdystream sends when client-go tears a stream down.
                status: 5,
            },
            Frame::Settings {
                flags: 0,
                entries: vec![Setting {
                    flags: 1,
                    id: SETTINGS_INITIAL_WINDOW_SIZE,
                    value: 16_384,
                }],
            },
            Frame::Ping { id: 1 },
            Frame::GoAway {
                last_good_stream_id: 9,
                status: goaway::OK,
            },
            Frame::WindowUpdate {
                stream_id: 0,
                delta: 32_768,
            },
            Frame::Unknown {
                version: 3,
                frame_type: 10,
                flags: 0,
                payload: Bytes::from_static(b"cred"),
            },
        ]
    }

    fn encode_all(frames: &[Frame]) -> BytesMut {
        let mut writer = FrameWriter::default();
        let mut out = BytesMut::new();
        for frame in frames {
            writer.encode(frame, &mut out).unwrap();
        }
        out
    }

    #[test]
    fn dictionary_is_the_spdy3_one() {
        let dict = dictionary();
        assert_eq!(dict.len(), 1423);
        assert_eq!(adler32(dict), 0xe3c6_a7c2);
        assert!(dict.starts_with(b"\0\0\0\x07options"));
        assert!(dict.ends_with(b",enq=0."));
    }

    #[test]
    fn first_header_block_names_the_dictionary() {
        let mut deflater = HeaderDeflater::default();
        let block = deflater.deflate(&encode_header_block(&Vec::new())).unwrap();
        // zlib header with FDICT set, then the dictionary's Adler-32, as Go's zlib.NewReaderDict expects.
        assert_eq!(block[0] & 0x0f, 8);
        assert_ne!(block[1] & 0x20, 0);
        assert_eq!(u16::from_be_bytes([block[0], block[1]]) % 31, 0);
        assert_eq!(&block[2..6], &0xe3c6_a7c2u32.to_be_bytes());
        // Sync flush ends with the empty stored block marker.
        assert!(block.ends_with(&[0, 0, 0xff, 0xff]));
    }

    #[test]
    fn decodes_a_header_block_compressed_by_another_zlib() {
        // SYN_STREAM {streamtype: error} for stream 1 as Python's zlib (zdict = SPDY/3 dictionary, Z_SYNC_FLUSH)
        // compresses it: an independent implementation of what Go's compress/zlib produces.
        let block: &[u8] = &[
            0x78, 0xf9, 0xe3, 0xc6, 0xa7, 0xc2, 0x02, 0xa6, 0x23, 0x46, 0x70, 0x3a, 0x2b, 0x29,
            0x4a, 0x4d, 0xcc, 0x85, 0x16, 0x25, 0xac, 0xa9, 0xa0, 0x80, 0x06, 0x00, 0x00, 0x00,
            0xff, 0xff,
        ];
        let mut raw = BytesMut::new();
        raw.put_u16(0x8000 | VERSION);
        raw.put_u16(TYPE_SYN_STREAM);
        raw.put_u32(10 + block.len() as u32);
        raw.put_u32(1);
        raw.put_u32(0);
        raw.put_u16(0);
        raw.put_slice(block);
        let frame = FrameReader::default().decode(&mut raw).unwrap().unwrap();
        assert_eq!(
            frame,
            Frame::SynStream {
                stream_id: 1,
                associated_to: 0,
                priority: 0,
                slot: 0,
                flags: 0,
                headers: headers(&[("streamtype", "error")]),
            }
        );
        assert!(raw.is_empty());
    }

    #[test]
    fn frames_round_trip() {
        let frames = sample_frames();
        let mut bytes = encode_all(&frames);
        let mut reader = FrameReader::default();
        for expected in &frames {
            assert_eq!(reader.decode(&mut bytes).unwrap().as_ref(), Some(expected));
        }
        assert_eq!(reader.decode(&mut bytes).unwrap(), None);
    }

    #[test]
    fn survives_arbitrary_chunk_boundaries() {
        let frames: Vec<Frame> = (0..4).flat_map(|_| sample_frames()).collect();
        let bytes = encode_all(&frames).freeze();
        let mut rng = XorShift(0x9e37_79b9_7f4a_7c15);
        for round in 0..50 {
            let mut reader = FrameReader::default();
            let mut buf = BytesMut::new();
            let mut decoded = Vec::new();
            let mut offset = 0;
            while offset < bytes.len() {
                let step = if round == 0 { 1 } else { 1 + rng.below(40) };
                let end = (offset + step).min(bytes.len());
                buf.extend_from_slice(&bytes[offset..end]);
                offset = end;
                while let Some(frame) = reader.decode(&mut buf).unwrap() {
                    decoded.push(frame);
                }
            }
            assert_eq!(decoded, frames, "round {round}");
        }
    }

    #[test]
    fn garbage_never_panics() {
        let mut rng = XorShift(0x1234_5678_9abc_def1);
        for _ in 0..2_000 {
            let len = rng.below(300);
            let mut garbage: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
            // Bias towards plausible control frames with small lengths, so the payload parsers are reached.
            if garbage.len() >= 8 && rng.below(2) == 0 {
                garbage[0] = 0x80;
                garbage[1] = 3;
                garbage[2] = 0;
                garbage[3] = (1 + rng.below(10)) as u8;
                garbage[5] = 0;
                garbage[6] = 0;
                garbage[7] = rng.below(len - 7) as u8;
            }
            let mut reader = FrameReader::default();
            let mut buf = BytesMut::from(&garbage[..]);
            while let Ok(Some(_)) = reader.decode(&mut buf) {}
        }
    }

    #[test]
    fn rejects_lying_lengths() {
        let mut block = Vec::new();
        block.extend_from_slice(&u32::MAX.to_be_bytes());
        assert!(parse_header_block(&block).is_err());
        let mut block = 1u32.to_be_bytes().to_vec();
        block.extend_from_slice(&100u32.to_be_bytes());
        block.extend_from_slice(b"short");
        assert!(parse_header_block(&block).is_err());
        assert!(matches!(
            FrameWriter::default().encode(
                &Frame::Data {
                    stream_id: 1,
                    flags: 0,
                    data: Bytes::from(vec![0; MAX_PAYLOAD + 1]),
                },
                &mut BytesMut::new(),
            ),
            Err(FrameError::TooLarge(_))
        ));
    }

    #[test]
    fn header_bombs_are_capped() {
        let huge = vec![(String::from("x"), "a".repeat(MAX_HEADER_BLOCK))];
        let frame = Frame::SynReply {
            stream_id: 1,
            flags: 0,
            headers: huge,
        };
        let mut bytes = encode_all(&[frame]);
        assert!(matches!(
            FrameReader::default().decode(&mut bytes),
            Err(FrameError::HeaderBlockTooLarge)
        ));
    }
}
