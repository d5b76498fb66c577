//! Exec/attach over RFC 6455 WebSocket with the Kubernetes channel protocol, as client-go's WebSocket executor
//! (v5.channel.k8s.io), the Python client (v4.channel.k8s.io) and older clients (channel.k8s.io, base64) speak it.
//!
//! Owns one upgraded connection from the first frame to the close handshake. It must never write after the close
//! frame, and never keep the imaginary process alive once the client is gone.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::timeout;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

use super::channel::{self, Codec, Incoming, ResizeDecoder};
use super::commands::{Event, Output, Process};
use super::{error_channel_payload, ChannelVersion, ExecError, ExecRequest};

/// How long to wait for the client's half of the close handshake before dropping the connection.
const CLOSE_GRACE: Duration = Duration::from_secs(5);

pub(super) async fn serve<IO>(
    io: IO,
    subprotocol: &str,
    request: ExecRequest,
) -> Result<(), ExecError>
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (version, codec) =
        channel::websocket_protocol(subprotocol).ok_or_else(|| ExecError::Rejected {
            status: http::StatusCode::BAD_REQUEST,
            reason: "BadRequest",
            message: format!("unsupported WebSocket subprotocol {subprotocol:?}"),
        })?;
    let mut ws = WebSocketStream::from_raw_socket(io, Role::Server, None).await;
    tracing::debug!(pod = %request.pod, subprotocol, "exec session over WebSocket");

    // The kubelet announces the session with an empty message on the lowest channel it writes.
    let first = if request.stdout {
        channel::STDOUT
    } else if request.stderr {
        channel::STDERR
    } else {
        channel::ERROR
    };
    ws.send(codec.encode(first, &[])).await?;

    let mut process = Process::start(&request);
    let mut inbound = Inbound {
        codec,
        close_signal: version >= ChannelVersion::V5,
        tty: request.tty,
        resize: ResizeDecoder::default(),
    };
    let exit_code = loop {
        tokio::select! {
            message = ws.next() => match message {
                Some(Ok(Message::Binary(data))) => inbound.dispatch(&mut process, &data),
                Some(Ok(Message::Text(text))) => inbound.dispatch(&mut process, text.as_bytes()),
                Some(Ok(Message::Close(_))) => {
                    // tungstenite answers the close; keep polling so the reply gets written, then stop.
                    drain(&mut ws).await;
                    return Ok(());
                }
                Some(Ok(_)) => {}
                Some(Err(err)) => return Err(err.into()),
                None => return Ok(()),
            },
            event = process.next_event() => match event {
                Event::Output(output) => ws.send(encode_output(codec, &output)).await?,
                Event::Exited(code) => break code,
            },
        }
    };

    if let Some(payload) = error_channel_payload(version, &request, exit_code) {
        ws.send(codec.encode(channel::ERROR, &payload)).await?;
    }
    let close = CloseFrame {
        code: CloseCode::Normal,
        reason: "".into(),
    };
    ws.close(Some(close)).await?;
    drain(&mut ws).await;
    Ok(())
}

/// Where client messages go.
struct Inbound {
    codec: Codec,
    /// v5 defines `[0xFF, channel]` as a half-close; earlier versions would read it as data on channel 255.
    close_signal: bool,
    tty: bool,
    resize: ResizeDecoder,
}

impl Inbound {
    fn dispatch(&mut self, process: &mut Process, message: &[u8]) {
        match self.codec.decode(message, self.close_signal) {
            Incoming::Data {
                channel: channel::STDIN,
                payload,
            } => process.write_stdin(payload),
            Incoming::Data {
                channel: channel::RESIZE,
                payload,
            } if self.tty => {
                for size in self.resize.push(&payload) {
                    process.resize(size);
                }
            }
            Incoming::Close {
                channel: channel::STDIN,
            } => process.close_stdin(),
            Incoming::Invalid(problem) => {
                tracing::debug!(problem, "ignoring malformed channel message")
            }
            Incoming::Data { .. } | Incoming::Close { .. } | Incoming::Ignored => {}
        }
    }
}

fn encode_output(codec: Codec, output: &Output) -> Message {
    match output {
        Output::Stdout(data) => codec.encode(channel::STDOUT, data),
        Output::Stderr(data) => codec.encode(channel::STDERR, data),
    }
}

/// Reads until the client finishes the close handshake or drops the connection, bounded by CLOSE_GRACE.
async fn drain<IO>(ws: &mut WebSocketStream<IO>)
where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    let _ = timeout(CLOSE_GRACE, async {
        while let Some(Ok(_)) = ws.next().await {}
    })
    .await;
}

#[cfg(test)]
mod tests {
    use super::super::commands::STREAM_PATTERN;
    use super::super::{run, StreamProtocol};
    use super::*;

    #[derive(Debug, Default)]
    struct Transcript {
        stdout: Vec<u8>,
        stderr: Vec<u8>,
        error: Vec<u8>,
        /// Messages seen per channel, empty ones included.
        messages: [usize; 5],
        close: Option<CloseCode>,
    }

    fn request(command: &[&str], stdin: bool, tty: bool) -> ExecRequest {
        ExecRequest {
            namespace: "default".into(),
            pod: "web-0".into(),
            container: None,
            command: command.iter().map(|s| s.to_string()).collect(),
            stdin,
            stdout: true,
            stderr: !tty,
            tty,
            attach: false,
            user: "alice".into(),
        }
    }

    /// Plays the client: sends `input` as client messages (already framed), then reads everything until close.
    async fn session(subprotocol: &str, request: ExecRequest, input: Vec<Vec<u8>>) -> Transcript {
        let codec = channel::websocket_protocol(subprotocol).unwrap().1;
        let (client_io, server_io) = tokio::io::duplex(64 * 1024);
        let server = tokio::spawn(run(
            server_io,
            StreamProtocol::WebSocket {
                subprotocol: subprotocol.into(),
            },
            request,
        ));
        let mut ws = WebSocketStream::from_raw_socket(client_io, Role::Client, None).await;
        for message in input {
            let message = match codec {
                Codec::Binary => Message::Binary(message.into()),
                Codec::Base64 => Message::text(String::from_utf8(message).unwrap()),
            };
            ws.send(message).await.unwrap();
        }
        let mut transcript = Transcript::default();
        let read_all = async {
            while let Some(message) = ws.next().await {
                let data = match message.unwrap() {
                    Message::Binary(data) => data.to_vec(),
                    Message::Text(text) => text.as_bytes().to_vec(),
                    Message::Close(frame) => {
                        transcript.close = frame.map(|f| f.code);
                        continue;
                    }
                    _ => continue,
                };
                let Incoming::Data { channel, payload } = codec.decode(&data, false) else {
                    panic!("undecodable server message {data:?}");
                };
                transcript.messages[channel as usize] += 1;
                match channel {
                    channel::STDOUT => transcript.stdout.extend_from_slice(&payload),
                    channel::STDERR => transcript.stderr.extend_from_slice(&payload),
                    channel::ERROR => transcript.error.extend_from_slice(&payload),
                    other => panic!("server wrote on channel {other}"),
                }
            }
        };
        timeout(Duration::from_secs(20), read_all)
            .await
            .expect("session timed out");
        timeout(Duration::from_secs(5), server)
            .await
            .expect("server did not finish")
            .unwrap()
            .unwrap();
        transcript
    }

    fn framed(channel: u8, data: &[u8]) -> Vec<u8> {
        let mut message = vec![channel];
        message.extend_from_slice(data);
        message
    }

    const SUCCESS: &str = r#"{"metadata":{},"status":"Success"}"#;

    #[tokio::test]
    async fn v5_echo() {
        let t = session(
            "v5.channel.k8s.io",
            request(&["echo", "hi"], false, false),
            vec![],
        )
        .await;
        assert_eq!(t.stdout, b"hi\n");
        assert_eq!(t.stderr, b"");
        assert_eq!(String::from_utf8(t.error).unwrap(), SUCCESS);
        assert_eq!(t.close, Some(CloseCode::Normal));
        // The empty announcement on stdout, then the data.
        assert_eq!(t.messages[channel::STDOUT as usize], 2);
    }

    #[tokio::test]
    async fn v5_cat_until_close_signal() {
        let input = vec![
            framed(channel::STDIN, b"hello\n"),
            framed(channel::STDIN, b"world\n"),
            vec![channel::CLOSE_SIGNAL, channel::STDIN],
        ];
        let t = session("v5.channel.k8s.io", request(&["cat"], true, false), input).await;
        assert_eq!(t.stdout, b"hello\nworld\n");
        assert_eq!(String::from_utf8(t.error).unwrap(), SUCCESS);
    }

    #[tokio::test]
    async fn v5_exit_code() {
        let t = session(
            "v5.channel.k8s.io",
            request(&["exit", "3"], false, false),
            vec![],
        )
        .await;
        let status: serde_json::Value = serde_json::from_slice(&t.error).unwrap();
        assert_eq!(status["status"], "Failure");
        assert_eq!(status["reason"], "NonZeroExitCode");
        assert_eq!(
            status["details"]["causes"][0],
            serde_json::json!({"reason": "ExitCode", "message": "3"})
        );
    }

    #[tokio::test]
    async fn v5_stream_a_megabyte() {
        let t = session(
            "v5.channel.k8s.io",
            request(&["stream", "1000000"], false, false),
            vec![],
        )
        .await;
        assert_eq!(t.stdout.len(), 1_000_000);
        assert!(t
            .stdout
            .iter()
            .enumerate()
            .all(|(i, b)| *b == STREAM_PATTERN[i % 64]));
        assert_eq!(String::from_utf8(t.error).unwrap(), SUCCESS);
    }

    #[tokio::test]
    async fn v4_stderr_and_exit() {
        let t = session(
            "v4.channel.k8s.io",
            request(&["sh", "-c", "stderr boom; exit 2"], false, false),
            vec![],
        )
        .await;
        assert_eq!(t.stderr, b"boom\n");
        let status: serde_json::Value = serde_json::from_slice(&t.error).unwrap();
        assert_eq!(status["details"]["causes"][0]["message"], "2");
    }

    #[tokio::test]
    async fn base64_protocol() {
        use base64::Engine as _;
        // v4 has no close signal, so the shell ends by `exit`, not by EOF.
        let script = base64::engine::general_purpose::STANDARD.encode("echo hi\nexit 4\n");
        let t = session(
            "v4.base64.channel.k8s.io",
            request(&["sh"], true, false),
            vec![format!("0{script}").into_bytes()],
        )
        .await;
        assert_eq!(t.stdout, b"hi\n");
        let status: serde_json::Value = serde_json::from_slice(&t.error).unwrap();
        assert_eq!(status["details"]["causes"][0]["message"], "4");
    }

    #[tokio::test]
    async fn legacy_protocol_reports_only_failures() {
        let t = session("channel.k8s.io", request(&["true"], false, false), vec![]).await;
        assert!(t.error.is_empty());
        let t = session("", request(&["false"], false, false), vec![]).await;
        assert_eq!(
            String::from_utf8(t.error).unwrap(),
            "command terminated with non-zero exit code: error executing command [false], exit code 1"
        );
    }

    #[tokio::test]
    async fn tty_shell_with_resize() {
        let input = vec![
            framed(channel::RESIZE, br#"{"Width":100,"Height":30}"#),
            framed(channel::STDIN, b"stty size\r"),
            framed(channel::STDIN, b"exit 5\r"),
        ];
        let t = session("v5.channel.k8s.io", request(&["sh"], true, true), input).await;
        let out = String::from_utf8(t.stdout).unwrap();
        assert_eq!(out, "$ stty size\r\n30 100\r\n$ exit 5\r\n");
        assert_eq!(t.messages[channel::STDERR as usize], 0);
        let status: serde_json::Value = serde_json::from_slice(&t.error).unwrap();
        assert_eq!(status["details"]["causes"][0]["message"], "5");
    }

    #[tokio::test]
    async fn client_hanging_up_ends_the_session() {
        let (client_io, server_io) = tokio::io::duplex(1024);
        let server = tokio::spawn(run(
            server_io,
            StreamProtocol::WebSocket {
                subprotocol: "v5.channel.k8s.io".into(),
            },
            request(&["sleep", "3600"], false, false),
        ));
        let mut ws = WebSocketStream::from_raw_socket(client_io, Role::Client, None).await;
        assert!(ws.next().await.is_some());
        drop(ws);
        timeout(Duration::from_secs(5), server)
            .await
            .unwrap()
            .unwrap()
            .unwrap();
    }

    #[tokio::test]
    async fn garbage_from_the_client_is_survived() {
        let input = vec![
            vec![],
            vec![7, 1, 2],
            vec![channel::CLOSE_SIGNAL],
            vec![channel::CLOSE_SIGNAL, 9, 9],
        ];
        let t = session(
            "v5.channel.k8s.io",
            request(&["echo", "ok"], true, false),
            input,
        )
        .await;
        assert_eq!(t.stdout, b"ok\n");
        assert_eq!(String::from_utf8(t.error).unwrap(), SUCCESS);
    }
}
