//! Shared pieces of the fuzz targets: the stream decoders themselves, compiled from the proxy's
//! source so the fuzz build needs only their few dependencies, and the input formats the
//! targets share.
//!
//! Owns nothing the gateway runs; it must never hold decoder logic of its own.

#[path = "../../proxy/src/record/frames/mod.rs"]
pub mod frames;

use frames::{Direction, SessionDecoder, StreamProtocol};

/// Plays `input` as a conversation: each record is one control byte (high bit: the server
/// wrote it; low 7 bits: its length) followed by that many bytes, pushed as one chunk. After
/// the first error every later push must fail with `AlreadyFailed`.
pub fn play(protocol: StreamProtocol, input: &[u8]) {
    let mut decoder = SessionDecoder::new(protocol);
    let mut rest = input;
    let mut failed = false;
    while let Some((&control, tail)) = rest.split_first() {
        let dir = if control & 0x80 != 0 {
            Direction::ServerToClient
        } else {
            Direction::ClientToServer
        };
        let len = usize::from(control & 0x7f).min(tail.len());
        let (chunk, tail) = tail.split_at(len);
        rest = tail;
        let result = decoder.push(dir, chunk);
        if failed {
            assert_eq!(result, Err(frames::FrameError::AlreadyFailed));
        }
        failed |= result.is_err();
    }
}
