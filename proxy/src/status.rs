//! Kubernetes `Status` objects: the one shape of every error the gateway itself answers with.
//!
//! Owns: building the JSON body (`apiVersion: v1`, `kind: Status`, `status: Failure`, reason, code, message)
//! so kubectl and client libraries print a readable line. Must never: put a token, a credential or a
//! request body into a message.

use serde::Serialize;

/// A Kubernetes `metav1.Status` failure as the gateway answers it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Status {
    pub api_version: &'static str,
    pub kind: &'static str,
    pub metadata: Empty,
    pub status: &'static str,
    pub message: String,
    pub reason: &'static str,
    pub code: u16,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Default)]
pub struct Empty {}

impl Status {
    /// A failure with an explicit HTTP code and Kubernetes `StatusReason`.
    pub fn failure(code: u16, reason: &'static str, message: impl Into<String>) -> Self {
        Self {
            api_version: "v1",
            kind: "Status",
            metadata: Empty {},
            status: "Failure",
            message: message.into(),
            reason,
            code,
        }
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::failure(400, "BadRequest", message)
    }

    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::failure(401, "Unauthorized", message)
    }

    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::failure(403, "Forbidden", message)
    }

    /// The reason the API server itself uses for a given code, for errors that only have a code
    /// (pingora's own failures, upstream connect errors).
    pub fn from_code(code: u16, message: impl Into<String>) -> Self {
        let reason = match code {
            400 => "BadRequest",
            401 => "Unauthorized",
            403 => "Forbidden",
            404 => "NotFound",
            405 => "MethodNotAllowed",
            406 => "NotAcceptable",
            409 => "Conflict",
            413 => "RequestEntityTooLarge",
            415 => "UnsupportedMediaType",
            429 => "TooManyRequests",
            500 => "InternalError",
            502 | 503 => "ServiceUnavailable",
            504 => "Timeout",
            _ => "Unknown",
        };
        Self::failure(code, reason, message)
    }

    /// The JSON body. Serializing this struct cannot fail (only strings and integers), so the
    /// fallback is never used; it exists so the data path has no panic.
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_else(|_| {
            br#"{"apiVersion":"v1","kind":"Status","metadata":{},"status":"Failure","reason":"InternalError","code":500}"#
                .to_vec()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_json_has_the_kubernetes_shape() {
        let json: serde_json::Value =
            serde_json::from_slice(&Status::unauthorized("no bearer token").to_json()).unwrap();
        assert_eq!(json["apiVersion"], "v1");
        assert_eq!(json["kind"], "Status");
        assert_eq!(json["status"], "Failure");
        assert_eq!(json["reason"], "Unauthorized");
        assert_eq!(json["code"], 401);
        assert_eq!(json["message"], "no bearer token");
        assert!(json["metadata"].as_object().unwrap().is_empty());
    }

    #[test]
    fn codes_map_to_api_server_reasons() {
        assert_eq!(Status::from_code(502, "x").reason, "ServiceUnavailable");
        assert_eq!(Status::from_code(404, "x").reason, "NotFound");
        assert_eq!(Status::from_code(418, "x").reason, "Unknown");
    }
}
