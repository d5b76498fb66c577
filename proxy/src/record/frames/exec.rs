//! What the exec/attach side channels mean, whatever carries them (WebSocket channels 3 and 4,
//! or SPDY streams `error` and `resize`): the error channel's `metav1.Status` (or the plain text
//! of protocol versions before v4) and the resize channel's stream of `{"Width":W,"Height":H}`.
//!
//! Owns decoding those two byte streams into events. Both are tiny in practice, so each buffers
//! what is incomplete, with a cap: more than that is a protocol violation, never a reason to grow.

use serde::Deserialize;

use super::{EventSink, FrameError, StreamEvent};

/// A Status is a few hundred bytes; the kubelet's longest messages stay far below this.
const MAX_STATUS: usize = 64 * 1024;
/// One resize object is ~30 bytes; a client streaming more without closing a brace is hostile.
const MAX_RESIZE: usize = 4096;

#[derive(Deserialize)]
struct StatusJson {
    #[serde(default)]
    status: String,
    #[serde(default)]
    message: String,
    #[serde(default)]
    reason: String,
    #[serde(default)]
    details: Option<DetailsJson>,
}

#[derive(Deserialize)]
struct DetailsJson {
    #[serde(default)]
    causes: Vec<CauseJson>,
}

#[derive(Deserialize)]
struct CauseJson {
    #[serde(default)]
    reason: String,
    #[serde(default)]
    message: String,
}

/// The exit code a Status reports, if it reports one.
fn exit_code(status: &StatusJson) -> Option<i32> {
    if status.status == "Success" {
        return Some(0);
    }
    if status.reason != "NonZeroExitCode" {
        return None;
    }
    status
        .details
        .as_ref()?
        .causes
        .iter()
        .find(|c| c.reason == "ExitCode")
        .and_then(|c| c.message.trim().parse().ok())
}

/// The exit code in a pre-v4 error text ("... exit code 3"), if any.
fn legacy_exit_code(text: &str) -> Option<i32> {
    let (_, tail) = text.rsplit_once("exit code ")?;
    tail.trim().parse().ok()
}

/// Decodes the error channel of one session.
#[derive(Default)]
pub(super) struct StatusDecoder {
    buffer: Vec<u8>,
}

impl StatusDecoder {
    /// Appends error-channel bytes; emits every Status that is now complete. JSON (v4+) is
    /// recognised by its opening brace; anything else is pre-v4 text, reported at [`Self::finish`].
    pub(super) fn push(
        &mut self,
        data: &[u8],
        peer: &'static str,
        events: &mut dyn EventSink,
    ) -> Result<(), FrameError> {
        if self.buffer.len() + data.len() > MAX_STATUS {
            return Err(FrameError::TooLarge {
                peer,
                what: "the error channel's status",
                limit: MAX_STATUS,
            });
        }
        self.buffer.extend_from_slice(data);
        if !self.is_json() {
            return Ok(());
        }
        let mut stream = serde_json::Deserializer::from_slice(&self.buffer).into_iter();
        let mut consumed = 0;
        loop {
            match stream.next() {
                Some(Ok(status)) => {
                    consumed = stream.byte_offset();
                    let status: StatusJson = status;
                    events.push(StreamEvent::Status {
                        exit_code: exit_code(&status),
                        message: status.message,
                    });
                }
                Some(Err(err)) if err.is_eof() => break,
                Some(Err(_)) => {
                    return Err(FrameError::Channel {
                        peer,
                        problem: "the error channel carries malformed Status JSON",
                    })
                }
                None => {
                    consumed = self.buffer.len();
                    break;
                }
            }
        }
        self.buffer.drain(..consumed);
        Ok(())
    }

    fn is_json(&self) -> bool {
        self.buffer
            .iter()
            .find(|b| !b.is_ascii_whitespace())
            .is_some_and(|b| *b == b'{')
    }

    /// The writer is done with the message or the channel: report pre-v4 text, if any. An
    /// unfinished JSON Status stays buffered until the channel ends for good.
    pub(super) fn finish(&mut self, channel_ended: bool, events: &mut dyn EventSink) {
        if self.is_json() && !channel_ended {
            return;
        }
        let text = String::from_utf8_lossy(&self.buffer).trim().to_owned();
        self.buffer.clear();
        if text.is_empty() {
            return;
        }
        events.push(StreamEvent::Status {
            exit_code: if text.starts_with('{') {
                None
            } else {
                legacy_exit_code(&text)
            },
            message: text,
        });
    }
}

#[derive(Deserialize)]
struct SizeJson {
    // Go's encoding/json matches field names case-insensitively; clients send "Width"/"Height".
    #[serde(default, rename = "Width", alias = "width")]
    width: u16,
    #[serde(default, rename = "Height", alias = "height")]
    height: u16,
}

/// Decodes the resize channel: JSON objects split or coalesced arbitrarily by the transport.
#[derive(Default)]
pub(super) struct ResizeDecoder {
    buffer: Vec<u8>,
}

impl ResizeDecoder {
    pub(super) fn push(
        &mut self,
        data: &[u8],
        peer: &'static str,
        events: &mut dyn EventSink,
    ) -> Result<(), FrameError> {
        if self.buffer.len() + data.len() > MAX_RESIZE {
            return Err(FrameError::TooLarge {
                peer,
                what: "a resize message",
                limit: MAX_RESIZE,
            });
        }
        self.buffer.extend_from_slice(data);
        let mut stream = serde_json::Deserializer::from_slice(&self.buffer).into_iter();
        let mut consumed = 0;
        loop {
            match stream.next() {
                Some(Ok(size)) => {
                    consumed = stream.byte_offset();
                    let size: SizeJson = size;
                    events.push(StreamEvent::Resize {
                        width: size.width,
                        height: size.height,
                    });
                }
                Some(Err(err)) if err.is_eof() => break,
                Some(Err(_)) => {
                    return Err(FrameError::Channel {
                        peer,
                        problem: "the resize channel carries malformed JSON",
                    })
                }
                None => {
                    consumed = self.buffer.len();
                    break;
                }
            }
        }
        self.buffer.drain(..consumed);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn statuses(chunks: &[&[u8]], channel_ended: bool) -> Vec<StreamEvent> {
        let mut decoder = StatusDecoder::default();
        let mut events = Vec::new();
        for chunk in chunks {
            decoder.push(chunk, "server", &mut events).unwrap();
        }
        decoder.finish(channel_ended, &mut events);
        events
    }

    const FAILURE: &str = concat!(
        r#"{"metadata":{},"status":"Failure","#,
        r#""message":"command terminated with non-zero exit code: "#,
        r#"error executing command [sh -c exit 3], exit code 3","#,
        r#""reason":"NonZeroExitCode","details":{"causes":[{"reason":"ExitCode","message":"3"}]}}"#,
    );

    #[test]
    fn status_success_failure_and_other_errors() {
        assert_eq!(
            statuses(&[br#"{"metadata":{},"status":"Success"}"#], false),
            vec![StreamEvent::Status {
                exit_code: Some(0),
                message: String::new()
            }]
        );
        let bytes = FAILURE.as_bytes();
        for split in 0..bytes.len() {
            let (a, b) = bytes.split_at(split);
            assert_eq!(
                statuses(&[a, b], false),
                vec![StreamEvent::Status {
                    exit_code: Some(3),
                    message: "command terminated with non-zero exit code: error executing command [sh -c exit 3], exit code 3".into(),
                }],
                "split at {split}"
            );
        }
        assert_eq!(
            statuses(
                &[br#"{"status":"Failure","message":"container not found","reason":"InternalError"}"#],
                false
            ),
            vec![StreamEvent::Status {
                exit_code: None,
                message: "container not found".into()
            }]
        );
    }

    #[test]
    fn legacy_text_errors_report_at_the_end() {
        let text = b"command terminated with non-zero exit code: error executing command [false], exit code 1";
        let mut decoder = StatusDecoder::default();
        let mut events = Vec::new();
        decoder.push(&text[..20], "server", &mut events).unwrap();
        decoder.push(&text[20..], "server", &mut events).unwrap();
        assert!(events.is_empty());
        decoder.finish(false, &mut events);
        assert_eq!(
            events,
            vec![StreamEvent::Status {
                exit_code: Some(1),
                message: String::from_utf8(text.to_vec()).unwrap()
            }]
        );
        // An incomplete JSON status is only reported when the channel is gone for good.
        assert!(statuses(&[br#"{"status":"Succ"#], false).is_empty());
        assert_eq!(
            statuses(&[br#"{"status":"Succ"#], true),
            vec![StreamEvent::Status {
                exit_code: None,
                message: r#"{"status":"Succ"#.into()
            }]
        );
    }

    #[test]
    fn status_garbage_and_floods_are_errors() {
        let mut decoder = StatusDecoder::default();
        assert!(decoder.push(b"{nope}", "server", &mut Vec::new()).is_err());
        let mut decoder = StatusDecoder::default();
        let flood = vec![b' '; MAX_STATUS + 1];
        assert!(matches!(
            decoder.push(&flood, "server", &mut Vec::new()),
            Err(FrameError::TooLarge { .. })
        ));
    }

    #[test]
    fn resizes_survive_any_split() {
        let stream = b"{\"Width\":80,\"Height\":24}\n{\"Width\":120,\"Height\":40}{\"width\":7}";
        let expected = vec![
            StreamEvent::Resize {
                width: 80,
                height: 24,
            },
            StreamEvent::Resize {
                width: 120,
                height: 40,
            },
            StreamEvent::Resize {
                width: 7,
                height: 0,
            },
        ];
        for split in 1..stream.len() {
            let mut decoder = ResizeDecoder::default();
            let mut events = Vec::new();
            for chunk in stream.chunks(split) {
                decoder.push(chunk, "client", &mut events).unwrap();
            }
            assert_eq!(events, expected, "chunks of {split}");
        }
    }

    #[test]
    fn resize_garbage_is_an_error() {
        for garbage in [&b"not json"[..], b"{\"Width\":70000}", b"\"wide\""] {
            let mut decoder = ResizeDecoder::default();
            assert!(
                decoder.push(garbage, "client", &mut Vec::new()).is_err(),
                "{garbage:?}"
            );
        }
        let mut decoder = ResizeDecoder::default();
        assert!(decoder
            .push(&[b'['; MAX_RESIZE + 1], "client", &mut Vec::new())
            .is_err());
    }
}
