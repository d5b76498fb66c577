//! Exec and attach for the Kubernetes API test double: parses `pods/NAME/exec|attach` requests, negotiates the
//! streaming protocol (WebSocket channel protocol v1/v4/v5, or SPDY/3.1 with channel protocol v1..v5), and serves
//! one session against an imaginary container (see `commands`), ending with the exit status on the error channel.
//!
//! Owns everything after the 101 response; the HTTP server (helper A's `server.rs`) owns routing, pod lookup and
//! writing the 101. This module must never run anything on the host, and never leave a session's task behind once
//! the connection is gone.

mod channel;
mod commands;
pub mod portforward;
mod spdy;
mod websocket;

use http::header::{CONNECTION, UPGRADE};
use http::{HeaderMap, HeaderValue, StatusCode};
use serde_json::json;

pub use spdy::frame::FrameError;

/// The SPDY channel protocol versions this double speaks, in server preference order.
const SPDY_PROTOCOLS: &[(&str, ChannelVersion)] = &[
    ("v5.channel.k8s.io", ChannelVersion::V5),
    ("v4.channel.k8s.io", ChannelVersion::V4),
    ("v3.channel.k8s.io", ChannelVersion::V3),
    ("v2.channel.k8s.io", ChannelVersion::V2),
    ("channel.k8s.io", ChannelVersion::V1),
];

const SEC_WEBSOCKET_KEY: &str = "sec-websocket-key";
const SEC_WEBSOCKET_ACCEPT: &str = "sec-websocket-accept";
const SEC_WEBSOCKET_PROTOCOL: &str = "sec-websocket-protocol";
const SEC_WEBSOCKET_VERSION: &str = "sec-websocket-version";
const X_STREAM_PROTOCOL_VERSION: &str = "x-stream-protocol-version";

/// The streaming protocol negotiated for one exec/attach request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StreamProtocol {
    /// RFC 6455 WebSocket carrying the channel protocol; `subprotocol` is the negotiated Sec-WebSocket-Protocol:
    /// "v5.channel.k8s.io", "v4.channel.k8s.io", the base64 variants, "channel.k8s.io", or "" if none was offered.
    WebSocket { subprotocol: String },
    /// SPDY/3.1 with the negotiated X-Stream-Protocol-Version (e.g. "v4.channel.k8s.io"; "" if none was offered).
    Spdy { version: String },
}

/// One exec or attach request, as the query string and the authenticated user describe it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExecRequest {
    pub namespace: String,
    pub pod: String,
    pub container: Option<String>,
    /// Empty for attach.
    pub command: Vec<String>,
    pub stdin: bool,
    pub stdout: bool,
    pub stderr: bool,
    pub tty: bool,
    /// pods/attach instead of pods/exec.
    pub attach: bool,
    /// The effective (impersonated) user, e.g. what `whoami` answers.
    pub user: String,
}

#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    /// The request cannot be served; answer with this HTTP status and a v1 Status built by [`ExecError::to_status`].
    #[error("{message}")]
    Rejected {
        status: StatusCode,
        reason: &'static str,
        message: String,
    },
    #[error("exec stream I/O failed: {0}")]
    Io(#[from] std::io::Error),
    #[error("WebSocket protocol error: {0}")]
    WebSocket(Box<tokio_tungstenite::tungstenite::Error>),
    #[error("SPDY protocol error: {0}")]
    Spdy(#[from] FrameError),
    #[error("the client did not open the expected SPDY streams within {0:?}")]
    StreamCreationTimeout(std::time::Duration),
}

impl From<tokio_tungstenite::tungstenite::Error> for ExecError {
    fn from(err: tokio_tungstenite::tungstenite::Error) -> Self {
        ExecError::WebSocket(Box::new(err))
    }
}

impl ExecError {
    fn bad_request(message: impl Into<String>) -> Self {
        ExecError::Rejected {
            status: StatusCode::BAD_REQUEST,
            reason: "BadRequest",
            message: message.into(),
        }
    }

    /// The HTTP status to answer with (500 for failures after the upgrade, which cannot be answered any more).
    pub fn status(&self) -> StatusCode {
        match self {
            ExecError::Rejected { status, .. } => *status,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// True if the peer simply went away (reset, closed, broken pipe) rather than misbehaved.
    fn is_disconnect(&self) -> bool {
        use tokio_tungstenite::tungstenite::error::ProtocolError;
        use tokio_tungstenite::tungstenite::Error as WsError;
        fn io_gone(err: &std::io::Error) -> bool {
            matches!(
                err.kind(),
                std::io::ErrorKind::ConnectionReset
                    | std::io::ErrorKind::ConnectionAborted
                    | std::io::ErrorKind::BrokenPipe
                    | std::io::ErrorKind::UnexpectedEof
            )
        }
        match self {
            ExecError::Io(err) => io_gone(err),
            ExecError::WebSocket(err) => match err.as_ref() {
                WsError::ConnectionClosed | WsError::AlreadyClosed => true,
                WsError::Protocol(ProtocolError::ResetWithoutClosingHandshake) => true,
                WsError::Io(err) => io_gone(err),
                _ => false,
            },
            _ => false,
        }
    }

    /// A v1 Status object describing this error, as the API server would answer it.
    pub fn to_status(&self) -> serde_json::Value {
        let reason = match self {
            ExecError::Rejected { reason, .. } => *reason,
            _ => "InternalError",
        };
        json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.to_string(),
            "reason": reason,
            "code": self.status().as_u16(),
        })
    }
}

/// Channel protocol generations: v2 fixed v1's stream handling, v3 added resize, v4 the JSON exit status, v5 the
/// WebSocket close signal (over SPDY v5 behaves like v4).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum ChannelVersion {
    V1,
    V2,
    V3,
    V4,
    V5,
}

impl ChannelVersion {
    fn from_spdy(name: &str) -> Option<Self> {
        if name.is_empty() {
            return Some(ChannelVersion::V1);
        }
        SPDY_PROTOCOLS
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| *v)
    }

    fn supports_resize(self) -> bool {
        self >= ChannelVersion::V3
    }
}

fn parse_bool(key: &str, value: &str) -> Result<bool, ExecError> {
    // The API server decodes these with strconv.ParseBool.
    match value {
        "1" | "t" | "T" | "true" | "TRUE" | "True" => Ok(true),
        "0" | "f" | "F" | "false" | "FALSE" | "False" | "" => Ok(false),
        _ => Err(ExecError::bad_request(format!(
            "invalid value for {key}: strconv.ParseBool: parsing {value:?}: invalid syntax"
        ))),
    }
}

fn decode_component(raw: &str) -> String {
    let spaced = raw.replace('+', " ");
    percent_encoding::percent_decode_str(&spaced)
        .decode_utf8_lossy()
        .into_owned()
}

impl ExecRequest {
    /// Parses the query string of .../pods/NAME/exec|attach (repeated `command=`, stdin/stdout/stderr/tty as
    /// true|1, container).
    pub fn from_query(
        namespace: &str,
        pod: &str,
        attach: bool,
        query: Option<&str>,
        user: &str,
    ) -> Result<Self, ExecError> {
        let mut request = ExecRequest {
            namespace: namespace.to_owned(),
            pod: pod.to_owned(),
            container: None,
            command: Vec::new(),
            stdin: false,
            stdout: false,
            stderr: false,
            tty: false,
            attach,
            user: user.to_owned(),
        };
        for pair in query
            .unwrap_or_default()
            .split('&')
            .filter(|p| !p.is_empty())
        {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            let key = decode_component(key);
            let value = decode_component(value);
            match key.as_str() {
                "command" => request.command.push(value),
                "container" => request.container = Some(value).filter(|c| !c.is_empty()),
                "stdin" => request.stdin = parse_bool(&key, &value)?,
                "stdout" => request.stdout = parse_bool(&key, &value)?,
                "stderr" => request.stderr = parse_bool(&key, &value)?,
                "tty" => request.tty = parse_bool(&key, &value)?,
                _ => {}
            }
        }
        if request.tty {
            // A terminal has a single output stream; the kubelet drops stderr the same way.
            request.stderr = false;
        }
        if !request.stdin && !request.stdout && !request.stderr {
            return Err(ExecError::bad_request(
                "you must specify at least 1 of stdin, stdout, stderr",
            ));
        }
        if attach {
            request.command.clear();
        } else if request.command.is_empty() {
            return Err(ExecError::bad_request(
                "you must specify at least one command for the container",
            ));
        }
        Ok(request)
    }
}

/// Every comma-separated token of every value of header `name`, trimmed, in order.
fn header_tokens<'a>(headers: &'a HeaderMap, name: &str) -> Vec<&'a str> {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .collect()
}

fn header_value(value: &str) -> Result<HeaderValue, ExecError> {
    HeaderValue::from_str(value).map_err(|_| ExecError::bad_request("header value is not valid"))
}

/// The start every upgrade handshake shares: `Connection: Upgrade` and a non-empty `Upgrade`.
/// Returns the offered upgrade tokens and the 101 response headers begun with `Connection`.
pub(crate) fn upgrade_offer(headers: &HeaderMap) -> Result<(Vec<&str>, HeaderMap), ExecError> {
    let upgrades = header_tokens(headers, UPGRADE.as_str());
    let connection_upgrade = header_tokens(headers, CONNECTION.as_str())
        .iter()
        .any(|t| t.eq_ignore_ascii_case("upgrade"));
    if !connection_upgrade || upgrades.is_empty() {
        return Err(ExecError::bad_request("Upgrade request required"));
    }
    let mut response = HeaderMap::new();
    response.insert(CONNECTION, HeaderValue::from_static("Upgrade"));
    Ok((upgrades, response))
}

/// The client's non-empty `Sec-WebSocket-Key`.
pub(crate) fn websocket_key(headers: &HeaderMap) -> Result<&[u8], ExecError> {
    headers
        .get(SEC_WEBSOCKET_KEY)
        .map(|k| k.as_bytes())
        .filter(|k| !k.is_empty())
        .ok_or_else(|| ExecError::bad_request("missing Sec-WebSocket-Key"))
}

/// Formats a list the way Go's `%v` prints a `[]string`.
fn go_list(items: &[&str]) -> String {
    format!("[{}]", items.join(" "))
}

/// Decides the protocol from the request headers (Upgrade: websocket + Sec-WebSocket-Key + Sec-WebSocket-Protocol,
/// or Upgrade: SPDY/3.1 + X-Stream-Protocol-Version list). Returns the headers of the 101 response to send.
/// Errors carry the HTTP status (400, or 403 when no SPDY protocol version matches, as the kubelet answers) and the
/// message to answer with.
pub fn negotiate(headers: &HeaderMap) -> Result<(HeaderMap, StreamProtocol), ExecError> {
    let (upgrades, mut response) = upgrade_offer(headers)?;

    if upgrades.iter().any(|u| u.eq_ignore_ascii_case("websocket")) {
        let key = websocket_key(headers)?;
        if let Some(version) = headers.get(SEC_WEBSOCKET_VERSION) {
            if version.as_bytes() != b"13" {
                return Err(ExecError::bad_request(
                    "unsupported Sec-WebSocket-Version; supports 13",
                ));
            }
        }
        let offered = header_tokens(headers, SEC_WEBSOCKET_PROTOCOL);
        let subprotocol = if offered.is_empty() {
            String::new()
        } else {
            let chosen = offered
                .iter()
                .find(|p| channel::websocket_protocol(p).is_some())
                .ok_or_else(|| {
                    let supported: Vec<&str> = channel::WEBSOCKET_PROTOCOLS
                        .iter()
                        .map(|(n, _, _)| *n)
                        .collect();
                    ExecError::bad_request(format!(
                        "requested protocol(s) are not supported: {}; supports {}",
                        go_list(&offered),
                        go_list(&supported)
                    ))
                })?;
            (*chosen).to_owned()
        };
        response.insert(UPGRADE, HeaderValue::from_static("websocket"));
        let accept = tokio_tungstenite::tungstenite::handshake::derive_accept_key(key);
        response.insert(SEC_WEBSOCKET_ACCEPT, header_value(&accept)?);
        if !subprotocol.is_empty() {
            response.insert(SEC_WEBSOCKET_PROTOCOL, header_value(&subprotocol)?);
        }
        return Ok((response, StreamProtocol::WebSocket { subprotocol }));
    }

    if upgrades.iter().any(|u| u.eq_ignore_ascii_case("SPDY/3.1")) {
        let offered = header_tokens(headers, X_STREAM_PROTOCOL_VERSION);
        let version = if offered.is_empty() {
            String::new()
        } else {
            let chosen = offered
                .iter()
                .find(|p| SPDY_PROTOCOLS.iter().any(|(n, _)| n == *p))
                .ok_or_else(|| {
                    let supported: Vec<&str> = SPDY_PROTOCOLS.iter().map(|(n, _)| *n).collect();
                    ExecError::Rejected {
                        status: StatusCode::FORBIDDEN,
                        reason: "Forbidden",
                        message: format!(
                            "unable to upgrade: unable to negotiate protocol: client supports {}, server supports {}",
                            go_list(&offered),
                            go_list(&supported)
                        ),
                    }
                })?;
            (*chosen).to_owned()
        };
        response.insert(UPGRADE, HeaderValue::from_static("SPDY/3.1"));
        if !version.is_empty() {
            response.insert(X_STREAM_PROTOCOL_VERSION, header_value(&version)?);
        }
        return Ok((response, StreamProtocol::Spdy { version }));
    }

    Err(ExecError::bad_request(format!(
        "unsupported upgrade {}; expected websocket or SPDY/3.1",
        go_list(&upgrades)
    )))
}

/// Serves one exec/attach session on an already-upgraded connection until the command ends; then sends the exit
/// status on the error channel and closes cleanly (WebSocket close frame; SPDY FIN on every stream, then GOAWAY).
/// A client that goes away early ends the session (and the imaginary process) with `Ok`.
pub async fn run<IO>(
    io: IO,
    protocol: StreamProtocol,
    request: ExecRequest,
) -> Result<(), ExecError>
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let result = match protocol {
        StreamProtocol::WebSocket { subprotocol } => {
            websocket::serve(io, &subprotocol, request).await
        }
        StreamProtocol::Spdy { version } => spdy::serve(io, &version, request).await,
    };
    match result {
        // client-go hangs up as soon as it has the status; whatever was still being written then is moot.
        Err(err) if err.is_disconnect() => {
            tracing::debug!(error = %err, "exec client disconnected");
            Ok(())
        }
        other => other,
    }
}

/// What to write on the error channel when the process has ended, if anything: v4+ always a JSON Status, older
/// versions only an error text on failure. Attach reports success however the main process ended, like the kubelet.
pub(crate) fn error_channel_payload(
    version: ChannelVersion,
    request: &ExecRequest,
    exit_code: i32,
) -> Option<Vec<u8>> {
    if exit_code == 0 || request.attach {
        return (version >= ChannelVersion::V4)
            .then(|| br#"{"metadata":{},"status":"Success"}"#.to_vec());
    }
    let words: Vec<&str> = request.command.iter().map(String::as_str).collect();
    let message = format!(
        "command terminated with non-zero exit code: error executing command {}, exit code {exit_code}",
        go_list(&words)
    );
    if version < ChannelVersion::V4 {
        return Some(message.into_bytes());
    }
    // Field order as Go marshals metav1.Status, so the bytes match what a kubelet sends.
    #[derive(serde::Serialize)]
    struct Cause {
        reason: &'static str,
        message: String,
    }
    #[derive(serde::Serialize)]
    struct Details {
        causes: [Cause; 1],
    }
    #[derive(serde::Serialize)]
    struct Failure {
        metadata: serde_json::Map<String, serde_json::Value>,
        status: &'static str,
        message: String,
        reason: &'static str,
        details: Details,
    }
    let status = Failure {
        metadata: serde_json::Map::new(),
        status: "Failure",
        message,
        reason: "NonZeroExitCode",
        details: Details {
            causes: [Cause {
                reason: "ExitCode",
                message: exit_code.to_string(),
            }],
        },
    };
    serde_json::to_vec(&status).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(
                http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_str(value).unwrap(),
            );
        }
        map
    }

    #[test]
    fn parses_exec_queries() {
        let request = ExecRequest::from_query(
            "ns",
            "p",
            false,
            Some("command=sh&command=-c&command=exit%203&container=main&stdin=true&stdout=1&stderr=true&tty=false"),
            "alice",
        )
        .unwrap();
        assert_eq!(request.command, vec!["sh", "-c", "exit 3"]);
        assert_eq!(request.container.as_deref(), Some("main"));
        assert!(
            request.stdin && request.stdout && request.stderr && !request.tty && !request.attach
        );
        assert_eq!(request.user, "alice");

        let tty = ExecRequest::from_query(
            "ns",
            "p",
            false,
            Some("command=echo+a%2Bb&stdout=true&stderr=true&tty=true"),
            "u",
        )
        .unwrap();
        assert_eq!(tty.command, vec!["echo a+b"]);
        assert!(tty.tty && !tty.stderr);

        let attach = ExecRequest::from_query(
            "ns",
            "p",
            true,
            Some("stdin=true&stdout=true&tty=true&command=x"),
            "u",
        )
        .unwrap();
        assert!(attach.attach && attach.command.is_empty());
    }

    #[test]
    fn rejects_bad_exec_queries() {
        let none = ExecRequest::from_query("ns", "p", false, Some("command=ls"), "u").unwrap_err();
        assert_eq!(none.status(), StatusCode::BAD_REQUEST);
        assert_eq!(
            none.to_string(),
            "you must specify at least 1 of stdin, stdout, stderr"
        );
        let no_command =
            ExecRequest::from_query("ns", "p", false, Some("stdout=true"), "u").unwrap_err();
        assert_eq!(no_command.status(), StatusCode::BAD_REQUEST);
        let bad_bool =
            ExecRequest::from_query("ns", "p", false, Some("command=ls&stdout=yes"), "u")
                .unwrap_err();
        assert_eq!(bad_bool.to_status()["code"], 400);
        assert_eq!(bad_bool.to_status()["reason"], "BadRequest");
    }

    #[test]
    fn negotiates_websocket() {
        let (response, protocol) = negotiate(&headers(&[
            ("connection", "Upgrade"),
            ("upgrade", "websocket"),
            ("sec-websocket-version", "13"),
            ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="),
            (
                "sec-websocket-protocol",
                "v5.channel.k8s.io, v4.channel.k8s.io",
            ),
        ]))
        .unwrap();
        assert_eq!(
            protocol,
            StreamProtocol::WebSocket {
                subprotocol: "v5.channel.k8s.io".into()
            }
        );
        assert_eq!(
            response[SEC_WEBSOCKET_ACCEPT],
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
        assert_eq!(response[SEC_WEBSOCKET_PROTOCOL], "v5.channel.k8s.io");
        assert_eq!(response[UPGRADE], "websocket");

        let (_, protocol) = negotiate(&headers(&[
            ("connection", "keep-alive, Upgrade"),
            ("upgrade", "WebSocket"),
            ("sec-websocket-key", "x"),
            ("sec-websocket-protocol", "foo"),
            ("sec-websocket-protocol", "v4.base64.channel.k8s.io"),
        ]))
        .unwrap();
        assert_eq!(
            protocol,
            StreamProtocol::WebSocket {
                subprotocol: "v4.base64.channel.k8s.io".into()
            }
        );

        let (response, protocol) = negotiate(&headers(&[
            ("connection", "upgrade"),
            ("upgrade", "websocket"),
            ("sec-websocket-key", "x"),
        ]))
        .unwrap();
        assert_eq!(
            protocol,
            StreamProtocol::WebSocket {
                subprotocol: String::new()
            }
        );
        assert!(response.get(SEC_WEBSOCKET_PROTOCOL).is_none());

        let err = negotiate(&headers(&[
            ("connection", "upgrade"),
            ("upgrade", "websocket"),
            ("sec-websocket-key", "x"),
            ("sec-websocket-protocol", "SPDY/3.1+portforward.k8s.io"),
        ]))
        .unwrap_err();
        assert_eq!(err.status(), StatusCode::BAD_REQUEST);
        assert!(err.to_string().contains("not supported"));
    }

    #[test]
    fn negotiates_spdy() {
        let (response, protocol) = negotiate(&headers(&[
            ("connection", "Upgrade"),
            ("upgrade", "SPDY/3.1"),
            ("x-stream-protocol-version", "v6.channel.k8s.io"),
            ("x-stream-protocol-version", "v4.channel.k8s.io"),
            ("x-stream-protocol-version", "v3.channel.k8s.io"),
        ]))
        .unwrap();
        assert_eq!(
            protocol,
            StreamProtocol::Spdy {
                version: "v4.channel.k8s.io".into()
            }
        );
        assert_eq!(response[X_STREAM_PROTOCOL_VERSION], "v4.channel.k8s.io");
        assert_eq!(response[UPGRADE], "SPDY/3.1");
        assert_eq!(response[CONNECTION], "Upgrade");

        let err = negotiate(&headers(&[
            ("connection", "Upgrade"),
            ("upgrade", "SPDY/3.1"),
            ("x-stream-protocol-version", "portforward.k8s.io"),
        ]))
        .unwrap_err();
        assert_eq!(err.status(), StatusCode::FORBIDDEN);
        assert!(err.to_string().contains("unable to negotiate protocol"));
    }

    #[test]
    fn requires_an_upgrade() {
        let err = negotiate(&headers(&[("accept", "*/*")])).unwrap_err();
        assert_eq!(
            (err.status(), err.to_string().as_str()),
            (StatusCode::BAD_REQUEST, "Upgrade request required")
        );
        let err =
            negotiate(&headers(&[("connection", "Upgrade"), ("upgrade", "h2c")])).unwrap_err();
        assert_eq!(err.status(), StatusCode::BAD_REQUEST);
        let err = negotiate(&headers(&[
            ("connection", "Upgrade"),
            ("upgrade", "websocket"),
        ]))
        .unwrap_err();
        assert!(err.to_string().contains("Sec-WebSocket-Key"));
    }

    #[test]
    fn exit_statuses() {
        let mut request = ExecRequest::from_query(
            "ns",
            "p",
            false,
            Some("command=sh&command=-c&command=exit 3&stdout=1"),
            "u",
        )
        .unwrap();
        let success = error_channel_payload(ChannelVersion::V5, &request, 0).unwrap();
        assert_eq!(success, br#"{"metadata":{},"status":"Success"}"#);
        let failure = error_channel_payload(ChannelVersion::V4, &request, 3).unwrap();
        // Byte for byte what a kubelet marshals, field order included.
        let expected = concat!(
            r#"{"metadata":{},"status":"Failure","#,
            r#""message":"command terminated with non-zero exit code: "#,
            r#"error executing command [sh -c exit 3], exit code 3","#,
            r#""reason":"NonZeroExitCode","details":{"causes":[{"reason":"ExitCode","message":"3"}]}}"#,
        );
        assert_eq!(String::from_utf8(failure).unwrap(), expected);
        assert_eq!(error_channel_payload(ChannelVersion::V2, &request, 0), None);
        assert!(
            String::from_utf8(error_channel_payload(ChannelVersion::V1, &request, 3).unwrap())
                .unwrap()
                .ends_with("exit code 3")
        );
        request.attach = true;
        assert_eq!(
            error_channel_payload(ChannelVersion::V4, &request, 9).unwrap(),
            success
        );
    }
}
