//! Structural masking of sensitive values in API responses (Secrets, configured ConfigMap keys,
//! field paths, log lines), in every response shape.
//!
//! Owns: mask profiles (the `mask:` config section and its compiled form), the choice of what a
//! request's response needs ([`MaskProfile::applies_to`], [`rewrite_accept`]), and the rewriting
//! of response bodies ([`ResponseMasker`]): single objects, typed lists, `v1.List`, meta.k8s.io
//! `Table`s, `PartialObjectMetadata(List)`, watch event streams (event by event, never the whole
//! stream) and `pods/log` lines.
//!
//! Must never: pass through a body it could not parse where a profile applies (every failure is
//! a [`MaskError`], which the gateway turns into a 502 Status), buffer more than the configured
//! limits, or put a response value into a log line or an error.
//!
//! Everything here is pure: plain data in, plain data out, no I/O. The gateway wires it into
//! pingora's response filters. See `docs/masking.md` for the profile language.

mod accept;
mod path;
mod profile;
mod response;
mod schema;
#[cfg(test)]
mod shapes;
mod walk;

pub use accept::{is_json_media_type, rewrite_accept};
pub use profile::{MaskProfile, Masker};
pub use response::{Mode, ResponseMasker};
pub use schema::{
    ConfigMapKeysConfig, FieldRuleConfig, LogMaskConfig, MaskConfig, ProfileConfig, WhenConfig,
    DEFAULT_MAX_BODY_BYTES, DEFAULT_MAX_EVENT_BYTES, DEFAULT_MAX_LOG_LINE_BYTES,
};

/// What every masked value becomes: in `stringData`, ConfigMap `data`, configured field paths,
/// Table cells and log lines. No `<`, `>` or `&` (Go's JSON encoder, and so `kubectl get -o
/// json`, would print those as `\u003c` etc.), no spaces, greppable.
pub const MARKER: &str = "[masked-by-portcullis]";

/// What base64-carrying values become (Secret `data`, ConfigMap `binaryData`): the base64 of
/// [`MARKER`], so a client that decodes them (`kubectl describe`, `base64 -d`, client-go's
/// `[]byte` fields, the Python client's `b64decode`) gets the marker instead of an error.
pub const MARKER_BASE64: &str = "W21hc2tlZC1ieS1wb3J0Y3VsbGlzXQ==";

/// The annotation `kubectl apply` leaves on an object: a JSON copy of the applied manifest,
/// which for a Secret holds its values (often as plaintext `stringData`).
pub const LAST_APPLIED_ANNOTATION: &str = "kubectl.kubernetes.io/last-applied-configuration";

/// The profile that always exists (Secrets only, unless the config defines `default` too).
pub const DEFAULT_PROFILE: &str = "default";

/// Why a response could not be masked, or a profile not compiled. Messages never contain
/// response content.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MaskError {
    #[error("mask profile {profile:?}: {message}")]
    Config { profile: String, message: String },
    #[error("mask config: {0}")]
    Limits(String),
    #[error("the response body exceeds the {limit}-byte masking limit")]
    BodyTooLarge { limit: usize },
    #[error("a watch event exceeds the {limit}-byte masking limit")]
    EventTooLarge { limit: usize },
    #[error("a log line exceeds the {limit}-byte masking limit")]
    LogLineTooLong { limit: usize },
    #[error("the response has content encoding {0:?}, which the masker cannot read")]
    ContentEncoding(String),
    #[error("the response has content type {0:?}, which the masker cannot read")]
    ContentType(String),
    /// Only the position is kept: serde_json's messages do not quote the input, but a position
    /// is all anyone needs.
    #[error("the response body is not valid JSON (line {line}, column {column})")]
    InvalidJson { line: usize, column: usize },
    #[error("a watch stream element is not a JSON object")]
    NotAnEvent,
    #[error("the watch stream ended inside an event")]
    TruncatedEvent,
    #[error("the masker already failed on this response")]
    Failed,
}

impl MaskError {
    fn json(error: &serde_json::Error) -> Self {
        MaskError::InvalidJson {
            line: error.line(),
            column: error.column(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine;

    #[test]
    fn base64_marker_decodes_to_the_marker() {
        let encoded = base64::engine::general_purpose::STANDARD.encode(MARKER);
        assert_eq!(encoded, MARKER_BASE64);
        assert!(!MARKER.contains(['<', '>', '&', ' ']));
    }

    #[test]
    fn json_errors_carry_no_content() {
        let err = serde_json::from_slice::<serde_json::Value>(b"{\"password\": s3cr3t}")
            .expect_err("invalid");
        let message = MaskError::json(&err).to_string();
        assert!(!message.contains("s3cr3t"), "{message}");
        assert!(message.contains("line 1"), "{message}");
    }
}
