//! Arbitrary bytes, in arbitrary chunks of both directions, into the SPDY/3.1 decoders.
#![no_main]

use libfuzzer_sys::fuzz_target;
use portcullis_fuzz::frames::StreamProtocol;
use portcullis_fuzz::play;

fuzz_target!(|data: &[u8]| {
    let Some((&which, input)) = data.split_first() else {
        return;
    };
    let protocol = if which & 1 == 0 {
        StreamProtocol::Spdy31
    } else {
        StreamProtocol::SpdyPortForward
    };
    play(protocol, input);
});
