//! Arbitrary bytes, in arbitrary chunks of both directions, into every WebSocket decoder.
#![no_main]

use libfuzzer_sys::fuzz_target;
use portcullis_fuzz::frames::StreamProtocol;
use portcullis_fuzz::play;

const PROTOCOLS: [StreamProtocol; 5] = [
    StreamProtocol::WebSocketChannelV4,
    StreamProtocol::WebSocketChannelV5,
    StreamProtocol::WebSocketBase64V4,
    StreamProtocol::WebSocketPortForward,
    StreamProtocol::WebSocketTunnelSpdyPortForward,
];

fuzz_target!(|data: &[u8]| {
    let Some((&which, input)) = data.split_first() else {
        return;
    };
    play(PROTOCOLS[usize::from(which) % PROTOCOLS.len()], input);
});
