//! Whole sessions per protocol, built from real frames (tungstenite for WebSocket, a flate2
//! spdystream-style writer for SPDY), each decoded whole and re-chunked at every split point
//! and in every piece size: the events must not change. Garbage must give errors, not panics.

use http::{HeaderMap, HeaderName, HeaderValue};
use proptest::prelude::*;
use tungstenite::Message;

use super::testkit::{
    channel_message, coalesce, decode, decode_in_pieces, decode_split_at, ws_close, ws_frame,
    ws_messages, Opcode, SpdyWriter, Transcript,
};
use super::*;

const C2S: Direction = Direction::ClientToServer;
const S2C: Direction = Direction::ServerToClient;

const SUCCESS: &[u8] = br#"{"metadata":{},"status":"Success"}"#;
const EXIT_3: &str = concat!(
    r#"{"metadata":{},"status":"Failure","#,
    r#""message":"command terminated with non-zero exit code: "#,
    r#"error executing command [sh -c exit 3], exit code 3","#,
    r#""reason":"NonZeroExitCode","details":{"causes":[{"reason":"ExitCode","message":"3"}]}}"#,
);

fn data(channel: Channel, bytes: &[u8]) -> StreamEvent {
    StreamEvent::Data {
        channel,
        bytes: bytes.to_vec(),
    }
}

fn status(exit_code: Option<i32>, message: &str) -> StreamEvent {
    StreamEvent::Status {
        exit_code,
        message: message.into(),
    }
}

fn closed(reason: &str) -> StreamEvent {
    StreamEvent::Closed {
        reason: reason.into(),
    }
}

/// Decodes whole, then at every split point of every chunk, then in pieces of every size up to
/// the longest chunk; all runs must agree. Returns the events.
fn decode_every_way(protocol: StreamProtocol, transcript: &Transcript) -> Vec<StreamEvent> {
    let whole = decode(&mut SessionDecoder::new(protocol), transcript);
    let longest = transcript.iter().map(|(_, b)| b.len()).max().unwrap_or(0);
    for at in 0..=longest {
        let split = decode_split_at(&mut SessionDecoder::new(protocol), transcript, at);
        assert_eq!(split, whole, "{protocol:?} split at {at}");
    }
    for size in 1..=longest.min(600) {
        let pieces = decode_in_pieces(&mut SessionDecoder::new(protocol), transcript, size);
        assert_eq!(pieces, whole, "{protocol:?} in pieces of {size}");
    }
    whole
}

fn v5_exec_transcript() -> Transcript {
    vec![
        // The kubelet announces the session with an empty stdout message.
        (S2C, ws_messages(S2C, vec![channel_message(1, b"")])),
        (
            C2S,
            ws_messages(
                C2S,
                vec![
                    channel_message(4, br#"{"Width":100,"Height":30}"#),
                    channel_message(0, b"echo hi\r"),
                ],
            ),
        ),
        (
            S2C,
            ws_messages(
                S2C,
                vec![
                    channel_message(1, b"$ echo hi\r\n"),
                    channel_message(1, b"hi\r\n"),
                    channel_message(2, b"warning\n"),
                ],
            ),
        ),
        (
            C2S,
            ws_messages(
                C2S,
                vec![
                    channel_message(0, b"exit 3\r"),
                    Message::Binary(vec![0xff, 0].into()),
                ],
            ),
        ),
        (
            S2C,
            ws_messages(
                S2C,
                vec![channel_message(3, EXIT_3.as_bytes()), ws_close(1000, "")],
            ),
        ),
        (C2S, ws_messages(C2S, vec![ws_close(1000, "done")])),
    ]
}

#[test]
fn websocket_v5_exec_session() {
    let events = decode_every_way(StreamProtocol::WebSocketChannelV5, &v5_exec_transcript());
    assert_eq!(
        events,
        vec![
            StreamEvent::Resize {
                width: 100,
                height: 30
            },
            data(Channel::Stdin, b"echo hi\r"),
            data(Channel::Stdout, b"$ echo hi\r\nhi\r\n"),
            data(Channel::Stderr, b"warning\n"),
            data(Channel::Stdin, b"exit 3\r"),
            StreamEvent::ChannelClosed {
                channel: Channel::Stdin
            },
            status(
                Some(3),
                "command terminated with non-zero exit code: error executing command [sh -c exit 3], exit code 3"
            ),
            closed("server closed the WebSocket (1000)"),
            closed("client closed the WebSocket (1000: done)"),
        ]
    );
}

#[test]
fn websocket_v4_has_no_close_signal() {
    let transcript: Transcript = vec![
        (S2C, ws_messages(S2C, vec![channel_message(1, b"ok\n")])),
        (
            S2C,
            ws_messages(S2C, vec![channel_message(3, SUCCESS), ws_close(1000, "")]),
        ),
    ];
    let events = decode_every_way(StreamProtocol::WebSocketChannelV4, &transcript);
    assert_eq!(
        events,
        vec![
            data(Channel::Stdout, b"ok\n"),
            status(Some(0), ""),
            closed("server closed the WebSocket (1000)"),
        ]
    );
    let mut decoder = SessionDecoder::new(StreamProtocol::WebSocketChannelV4);
    let close_signal = ws_messages(C2S, vec![Message::Binary(vec![0xff, 0].into())]);
    assert_eq!(
        decoder.push(C2S, &close_signal),
        Err(FrameError::Channel {
            peer: "client",
            problem: "unknown channel"
        })
    );
    assert_eq!(decoder.push(C2S, b""), Err(FrameError::AlreadyFailed));
}

#[test]
fn websocket_large_and_fragmented_messages() {
    // 70 000 bytes needs the 64-bit length; gorilla-style fragmentation with a ping between
    // fragments, and a masked client message fragmented the same way.
    let big: Vec<u8> = (0..70_000u32).map(|i| (i % 253) as u8).collect();
    let mut server = ws_messages(S2C, vec![channel_message(1, &big)]);
    server.extend(ws_frame(Opcode::Binary, false, b"\x02par", false));
    server.extend(ws_frame(Opcode::Ping, true, b"", false));
    server.extend(ws_frame(Opcode::Continuation, false, b"t one, ", false));
    server.extend(ws_frame(Opcode::Continuation, true, b"part two", false));
    let mut client = ws_frame(Opcode::Binary, false, b"", true);
    client.extend(ws_frame(Opcode::Continuation, false, b"\x00", true));
    client.extend(ws_frame(Opcode::Pong, true, b"pong", true));
    client.extend(ws_frame(Opcode::Continuation, true, b"typed", true));
    let transcript: Transcript = vec![(S2C, server), (C2S, client)];
    let whole = decode(
        &mut SessionDecoder::new(StreamProtocol::WebSocketChannelV5),
        &transcript,
    );
    assert_eq!(
        whole,
        vec![
            data(Channel::Stdout, &big),
            data(Channel::Stderr, b"part one, part two"),
            data(Channel::Stdin, b"typed"),
        ]
    );
    for size in [1, 2, 3, 7, 125, 126, 4096, 65_536] {
        let pieces = decode_in_pieces(
            &mut SessionDecoder::new(StreamProtocol::WebSocketChannelV5),
            &transcript,
            size,
        );
        assert_eq!(pieces, whole, "pieces of {size}");
    }
}

#[test]
fn websocket_base64_session() {
    let transcript: Transcript = vec![
        (
            C2S,
            ws_messages(
                C2S,
                vec![
                    Message::text("0ZWNobyBoaQpleGl0IDQK"), // "echo hi\nexit 4\n"
                    Message::text("4eyJXaWR0aCI6MSwiSGVpZ2h0IjoyfQ=="), // resize 1x2
                ],
            ),
        ),
        (
            S2C,
            ws_messages(
                S2C,
                vec![
                    Message::text("1"),
                    Message::text("1aGkK"),     // "hi\n"
                    Message::text("2b29wcw=="), // "oops"
                    Message::text(format!(
                        "3{}",
                        base64::Engine::encode(&base64::engine::general_purpose::STANDARD, EXIT_3)
                    )),
                    ws_close(1000, ""),
                ],
            ),
        ),
    ];
    let events = decode_every_way(StreamProtocol::WebSocketBase64V4, &transcript);
    assert_eq!(
        events,
        vec![
            data(Channel::Stdin, b"echo hi\nexit 4\n"),
            StreamEvent::Resize {
                width: 1,
                height: 2
            },
            data(Channel::Stdout, b"hi\n"),
            data(Channel::Stderr, b"oops"),
            status(
                Some(3),
                "command terminated with non-zero exit code: error executing command [sh -c exit 3], exit code 3"
            ),
            closed("server closed the WebSocket (1000)"),
        ]
    );
    let mut decoder = SessionDecoder::new(StreamProtocol::WebSocketBase64V4);
    let bad = ws_messages(S2C, vec![Message::text("1!!!!")]);
    assert!(decoder.push(S2C, &bad).is_err());
}

#[test]
fn websocket_legacy_text_error_channel() {
    // channel.k8s.io (decoded as v4): the error channel carries text, only on failure.
    let text =
        "command terminated with non-zero exit code: error executing command [false], exit code 1";
    let transcript: Transcript = vec![(
        S2C,
        ws_messages(
            S2C,
            vec![channel_message(3, text.as_bytes()), ws_close(1000, "")],
        ),
    )];
    let events = decode_every_way(StreamProtocol::WebSocketChannelV4, &transcript);
    assert_eq!(
        events,
        vec![
            status(Some(1), text),
            closed("server closed the WebSocket (1000)")
        ]
    );
}

#[test]
fn websocket_port_forward_session() {
    let transcript: Transcript = vec![
        // The client may write before the server announced the port: it waits.
        (C2S, ws_messages(C2S, vec![channel_message(0, b"GET / ")])),
        (
            S2C,
            ws_messages(
                S2C,
                vec![
                    channel_message(0, &8080u16.to_le_bytes()),
                    channel_message(1, &8080u16.to_le_bytes()),
                    // The port may arrive split across messages.
                    channel_message(2, &[0x82]),
                    channel_message(2, &[0x23, b'x']),
                    channel_message(3, &9090u16.to_le_bytes()),
                ],
            ),
        ),
        (
            C2S,
            ws_messages(
                C2S,
                vec![
                    channel_message(0, b"HTTP/1.1\r\n"),
                    channel_message(2, b"y"),
                ],
            ),
        ),
        (S2C, ws_messages(S2C, vec![channel_message(0, b"200 OK")])),
        (
            S2C,
            ws_messages(
                S2C,
                vec![
                    channel_message(3, b"connection refused"),
                    ws_close(1000, ""),
                ],
            ),
        ),
    ];
    let events = decode_every_way(StreamProtocol::WebSocketPortForward, &transcript);
    let forward = |port: u16, dir: Direction, bytes: &[u8]| StreamEvent::PortForward {
        port,
        request_id: None,
        dir,
        bytes: bytes.len(),
        data: bytes.to_vec(),
    };
    assert_eq!(
        events,
        vec![
            StreamEvent::PortForwardOpened {
                port: 8080,
                request_id: None
            },
            forward(8080, C2S, b"GET / "),
            StreamEvent::PortForwardOpened {
                port: 9090,
                request_id: None
            },
            forward(9090, S2C, b"x"),
            forward(8080, C2S, b"HTTP/1.1\r\n"),
            forward(9090, C2S, b"y"),
            forward(8080, S2C, b"200 OK"),
            StreamEvent::PortForwardError {
                port: 9090,
                message: "connection refused".into()
            },
            closed("server closed the WebSocket (1000)"),
        ]
    );
}

/// An exec session as client-go's SPDY executor and the kubelet write it.
fn spdy_exec_transcript() -> Transcript {
    let mut client = SpdyWriter::default();
    let mut server = SpdyWriter::default();
    let mut opening = Vec::new();
    for (id, kind) in [(1, "error"), (3, "stdin"), (5, "stdout"), (7, "resize")] {
        opening.extend(client.syn_stream(id, &[("streamtype", kind)], false));
    }
    let mut replies = Vec::new();
    for id in [1, 3, 5, 7] {
        replies.extend(server.syn_reply(id, false));
    }
    replies.extend(server.settings(&[(7, 65_536)]));
    let mut typing = client.data(7, br#"{"Width":80,"Height":24}"#, false);
    typing.extend(client.data(3, b"cat\r", false));
    typing.extend(client.ping(1));
    typing.extend(client.data(3, b"", true));
    // The client half-closes the streams it only reads from; that closes no channel.
    typing.extend(client.data(5, b"", true));
    let mut output = server.data(5, b"$ cat\r\n", false);
    output.extend(server.window_update(3, 4));
    output.extend(server.data(5, b"bye\r\n", true));
    output.extend(server.data(1, &EXIT_3.as_bytes()[..40], false));
    output.extend(server.data(1, &EXIT_3.as_bytes()[40..], true));
    output.extend(server.goaway(7, 0));
    vec![
        (C2S, opening),
        (S2C, replies),
        (C2S, typing),
        (S2C, output),
        (C2S, client.rst_stream(7, 5)),
    ]
}

#[test]
fn spdy_exec_session() {
    let events = decode_every_way(StreamProtocol::Spdy31, &spdy_exec_transcript());
    assert_eq!(
        events,
        vec![
            StreamEvent::Resize {
                width: 80,
                height: 24
            },
            data(Channel::Stdin, b"cat\r"),
            StreamEvent::ChannelClosed {
                channel: Channel::Stdin
            },
            data(Channel::Stdout, b"$ cat\r\nbye\r\n"),
            StreamEvent::ChannelClosed {
                channel: Channel::Stdout
            },
            status(
                Some(3),
                "command terminated with non-zero exit code: error executing command [sh -c exit 3], exit code 3"
            ),
            StreamEvent::ChannelClosed {
                channel: Channel::Error
            },
            closed("server sent GOAWAY (status 0)"),
            StreamEvent::ChannelClosed {
                channel: Channel::Resize
            },
        ]
    );
}

#[test]
fn spdy_stream_table_violations() {
    let mut client = SpdyWriter::default();
    let mut decoder = SessionDecoder::new(StreamProtocol::Spdy31);
    let open = client.syn_stream(1, &[("streamtype", "stdin")], false);
    assert!(decoder.push(C2S, &open).unwrap().is_empty());
    // Data on a stream nobody opened reaches no process and is not recorded.
    assert!(decoder
        .push(C2S, &client.data(9, b"x", false))
        .unwrap()
        .is_empty());
    let again = client.syn_stream(1, &[("streamtype", "stdout")], false);
    assert_eq!(
        decoder.push(C2S, &again),
        Err(FrameError::Spdy {
            peer: "client",
            problem: "SYN_STREAM reuses an open stream id"
        })
    );

    let mut client = SpdyWriter::default();
    let mut decoder = SessionDecoder::new(StreamProtocol::SpdyPortForward);
    let no_port = client.syn_stream(1, &[("streamtype", "data")], false);
    assert!(decoder.push(C2S, &no_port).is_err());

    let mut client = SpdyWriter::default();
    let mut decoder = SessionDecoder::new(StreamProtocol::Spdy31);
    let mut flood = Vec::new();
    for id in 0..1100u32 {
        flood.extend(client.syn_stream(2 * id + 1, &[("streamtype", "stdin")], false));
    }
    assert!(matches!(
        decoder.push(C2S, &flood),
        Err(FrameError::TooLarge { .. })
    ));
}

/// Two forwarded connections as kubectl port-forward and the kubelet run them over SPDY.
fn spdy_port_forward_transcript() -> Transcript {
    let mut client = SpdyWriter::default();
    let mut server = SpdyWriter::default();
    let headers = |kind, request| {
        [
            ("streamtype", kind),
            ("port", "8080"),
            ("requestid", request),
        ]
    };
    let mut c1 = client.syn_stream(1, &headers("error", "0"), false);
    c1.extend(client.data(1, b"", true));
    c1.extend(client.syn_stream(3, &headers("data", "0"), false));
    c1.extend(client.data(3, b"hello, ", false));
    c1.extend(client.data(3, b"port-forward", false));
    c1.extend(client.data(3, b"", true));
    let mut s1 = server.syn_reply(1, false);
    s1.extend(server.syn_reply(3, false));
    s1.extend(server.data(3, b"hello, port-forward", false));
    s1.extend(server.data(3, b"", true));
    s1.extend(server.data(1, b"", true));
    let mut c2 = client.syn_stream(5, &headers("error", "1"), false);
    c2.extend(client.syn_stream(7, &headers("data", "1"), false));
    c2.extend(client.data(7, b"second", false));
    let mut s2 = server.data(5, b"error forwarding port 8080: connection refused", false);
    s2.extend(server.rst_stream(7, 5));
    s2.extend(server.goaway(7, 0));
    vec![(C2S, c1), (S2C, s1), (C2S, c2), (S2C, s2)]
}

fn spdy_port_forward_events(with_data: bool) -> Vec<StreamEvent> {
    let id = |s: &str| Some(s.to_owned());
    let forward = |request: &str, dir, bytes: &[u8]| StreamEvent::PortForward {
        port: 8080,
        request_id: id(request),
        dir,
        bytes: bytes.len(),
        data: if with_data {
            bytes.to_vec()
        } else {
            Vec::new()
        },
    };
    let closed_pf = |request: &str, dir| StreamEvent::PortForwardClosed {
        port: 8080,
        request_id: id(request),
        dir,
    };
    vec![
        StreamEvent::PortForwardOpened {
            port: 8080,
            request_id: id("0"),
        },
        forward("0", C2S, b"hello, port-forward"),
        closed_pf("0", C2S),
        forward("0", S2C, b"hello, port-forward"),
        closed_pf("0", S2C),
        StreamEvent::PortForwardOpened {
            port: 8080,
            request_id: id("1"),
        },
        forward("1", C2S, b"second"),
        StreamEvent::PortForwardError {
            port: 8080,
            message: "error forwarding port 8080: connection refused".into(),
        },
        closed_pf("1", C2S),
        closed_pf("1", S2C),
        closed("server sent GOAWAY (status 0)"),
    ]
}

#[test]
fn spdy_port_forward_session() {
    let transcript = spdy_port_forward_transcript();
    let events = decode_every_way(StreamProtocol::SpdyPortForward, &transcript);
    assert_eq!(events, spdy_port_forward_events(true));
    let mut counted =
        SessionDecoder::new(StreamProtocol::SpdyPortForward).without_port_forward_data();
    assert_eq!(
        decode(&mut counted, &transcript),
        spdy_port_forward_events(false)
    );
}

#[test]
fn websocket_tunnel_port_forward_session() {
    // The same SPDY session in binary WebSocket messages of 7 bytes, so frames straddle them.
    let tunnel: Transcript = spdy_port_forward_transcript()
        .into_iter()
        .map(|(dir, bytes)| {
            let messages = bytes
                .chunks(7)
                .map(|c| Message::Binary(c.to_vec().into()))
                .collect();
            (dir, ws_messages(dir, messages))
        })
        .chain([(C2S, ws_messages(C2S, vec![ws_close(1000, "")]))])
        .collect();
    let events = decode_every_way(StreamProtocol::WebSocketTunnelSpdyPortForward, &tunnel);
    let mut expected = spdy_port_forward_events(true);
    expected.push(closed("client closed the WebSocket (1000)"));
    assert_eq!(events, expected);
}

fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
    let mut map = HeaderMap::new();
    for (name, value) in pairs {
        map.append(
            HeaderName::from_bytes(name.as_bytes()).unwrap(),
            HeaderValue::from_str(value).unwrap(),
        );
    }
    map
}

#[test]
fn negotiated_protocols() {
    let ws_request = headers(&[
        ("upgrade", "websocket"),
        (
            "sec-websocket-protocol",
            "v5.channel.k8s.io, v4.channel.k8s.io, v4.base64.channel.k8s.io",
        ),
    ]);
    let chosen = |protocol: &str| {
        headers(&[
            ("upgrade", "websocket"),
            ("sec-websocket-protocol", protocol),
        ])
    };
    let cases = [
        (
            "v5.channel.k8s.io",
            "exec",
            Some(StreamProtocol::WebSocketChannelV5),
        ),
        (
            "v4.channel.k8s.io",
            "attach",
            Some(StreamProtocol::WebSocketChannelV4),
        ),
        (
            "v4.base64.channel.k8s.io",
            "exec",
            Some(StreamProtocol::WebSocketBase64V4),
        ),
        // Not offered by the client.
        ("channel.k8s.io", "exec", None),
        ("v5.channel.k8s.io", "log", None),
        ("v5.channel.k8s.io", "portforward", None),
    ];
    for (protocol, subresource, expected) in cases {
        assert_eq!(
            StreamProtocol::negotiated(&ws_request, &chosen(protocol), subresource),
            expected,
            "{protocol} {subresource}"
        );
    }
    let tunnel_request = headers(&[
        ("upgrade", "websocket"),
        ("sec-websocket-protocol", "SPDY/3.1+portforward.k8s.io"),
    ]);
    assert_eq!(
        StreamProtocol::negotiated(
            &tunnel_request,
            &chosen("SPDY/3.1+portforward.k8s.io"),
            "portforward"
        ),
        Some(StreamProtocol::WebSocketTunnelSpdyPortForward)
    );
    let pf_request = headers(&[("sec-websocket-protocol", "v4.portforward.k8s.io")]);
    assert_eq!(
        StreamProtocol::negotiated(&pf_request, &chosen("v4.portforward.k8s.io"), "portforward"),
        Some(StreamProtocol::WebSocketPortForward)
    );
    let spdy = headers(&[
        ("connection", "Upgrade"),
        ("upgrade", "SPDY/3.1"),
        ("x-stream-protocol-version", "v4.channel.k8s.io"),
    ]);
    assert_eq!(
        StreamProtocol::negotiated(&spdy, &spdy, "exec"),
        Some(StreamProtocol::Spdy31)
    );
    assert_eq!(
        StreamProtocol::negotiated(&spdy, &spdy, "portforward"),
        Some(StreamProtocol::SpdyPortForward)
    );
    // permessage-deflate changes the framing: refuse rather than misread it.
    let mut deflate = chosen("v5.channel.k8s.io");
    deflate.insert(
        "sec-websocket-extensions",
        HeaderValue::from_static("permessage-deflate"),
    );
    assert_eq!(
        StreamProtocol::negotiated(&ws_request, &deflate, "exec"),
        None
    );
    assert_eq!(
        StreamProtocol::negotiated(&ws_request, &headers(&[("upgrade", "h2c")]), "exec"),
        None
    );
}

const ALL_PROTOCOLS: [StreamProtocol; 7] = [
    StreamProtocol::WebSocketChannelV4,
    StreamProtocol::WebSocketChannelV5,
    StreamProtocol::WebSocketBase64V4,
    StreamProtocol::Spdy31,
    StreamProtocol::WebSocketPortForward,
    StreamProtocol::SpdyPortForward,
    StreamProtocol::WebSocketTunnelSpdyPortForward,
];

fn valid_transcript(protocol: StreamProtocol) -> Transcript {
    match protocol {
        StreamProtocol::Spdy31 => spdy_exec_transcript(),
        StreamProtocol::SpdyPortForward => spdy_port_forward_transcript(),
        _ => v5_exec_transcript(),
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn garbage_never_panics(
        protocol in 0..ALL_PROTOCOLS.len(),
        chunks in proptest::collection::vec((any::<bool>(), proptest::collection::vec(any::<u8>(), 0..300)), 0..12),
    ) {
        let mut decoder = SessionDecoder::new(ALL_PROTOCOLS[protocol]);
        for (server, bytes) in chunks {
            let dir = if server { S2C } else { C2S };
            if decoder.push(dir, &bytes).is_err() {
                prop_assert_eq!(decoder.push(dir, b"x"), Err(FrameError::AlreadyFailed));
                break;
            }
        }
    }

    #[test]
    fn corrupted_sessions_never_panic(
        which in 0..3usize,
        flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
    ) {
        let protocol = [StreamProtocol::WebSocketChannelV5, StreamProtocol::Spdy31, StreamProtocol::SpdyPortForward][which];
        let mut transcript = valid_transcript(protocol);
        let total: usize = transcript.iter().map(|(_, b)| b.len()).sum();
        for (index, value) in flips {
            let mut at = index.index(total);
            for (_, bytes) in transcript.iter_mut() {
                if at < bytes.len() {
                    bytes[at] ^= value | 1;
                    break;
                }
                at -= bytes.len();
            }
        }
        let mut decoder = SessionDecoder::new(protocol);
        for (dir, bytes) in &transcript {
            if decoder.push(*dir, bytes).is_err() {
                break;
            }
        }
    }

    #[test]
    fn random_chunking_never_changes_events(
        which in 0..3usize,
        cuts in proptest::collection::vec(1usize..200, 1..40),
    ) {
        let protocol = [StreamProtocol::WebSocketChannelV5, StreamProtocol::Spdy31, StreamProtocol::SpdyPortForward][which];
        let transcript = valid_transcript(protocol);
        let whole = decode(&mut SessionDecoder::new(protocol), &transcript);
        let mut decoder = SessionDecoder::new(protocol);
        let mut events = Vec::new();
        let mut cut = cuts.iter().cycle();
        for (dir, bytes) in &transcript {
            let mut rest = bytes.as_slice();
            while !rest.is_empty() {
                let n = (*cut.next().unwrap_or(&1)).min(rest.len());
                let (piece, tail) = rest.split_at(n);
                events.extend(decoder.push(*dir, piece).unwrap());
                rest = tail;
            }
        }
        prop_assert_eq!(coalesce(events), whole);
    }
}

#[test]
fn decoder_can_live_in_a_request_context() {
    // pingora keeps per-request state across awaits on a multi-threaded runtime.
    fn assert_send<T: Send + Sync + 'static>() {}
    assert_send::<SessionDecoder>();
    assert_send::<StreamEvent>();
    assert_send::<FrameError>();
}
