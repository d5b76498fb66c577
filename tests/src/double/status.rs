//! API errors and their wire form, the `v1` `Status` object, with the HTTP codes, reasons and messages the real API
//! server uses. Every failure the double answers goes through `ApiError`; nothing here may panic or leak secrets.

use serde_json::{json, Map, Value};

use super::resources::ResourceDef;

/// A failure answered as a `v1` `Status` with `code` as the HTTP status.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{code} {reason}: {message}")]
pub struct ApiError {
    pub code: u16,
    pub reason: &'static str,
    pub message: String,
    pub details: Option<Value>,
}

impl ApiError {
    pub fn new(code: u16, reason: &'static str, message: impl Into<String>) -> Self {
        Self {
            code,
            reason,
            message: message.into(),
            details: None,
        }
    }

    pub fn with_details(mut self, details: Value) -> Self {
        self.details = Some(details);
        self
    }

    /// The `details` object naming one object of a resource, as the API server fills it.
    pub fn object_details(res: &ResourceDef, name: &str) -> Value {
        let mut d = Map::new();
        d.insert("name".into(), json!(name));
        if !res.group.is_empty() {
            d.insert("group".into(), json!(res.group));
        }
        d.insert("kind".into(), json!(res.plural));
        Value::Object(d)
    }

    pub fn unauthorized() -> Self {
        Self::new(401, "Unauthorized", "Unauthorized")
    }

    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(403, "Forbidden", message)
    }

    pub fn not_found(res: &ResourceDef, name: &str) -> Self {
        Self::new(
            404,
            "NotFound",
            format!("{} \"{}\" not found", res.qualified(), name),
        )
        .with_details(Self::object_details(res, name))
    }

    /// The answer for a path the server has no handler for.
    pub fn no_route() -> Self {
        Self::new(
            404,
            "NotFound",
            "the server could not find the requested resource",
        )
        .with_details(json!({}))
    }

    pub fn already_exists(res: &ResourceDef, name: &str) -> Self {
        Self::new(
            409,
            "AlreadyExists",
            format!("{} \"{}\" already exists", res.qualified(), name),
        )
        .with_details(Self::object_details(res, name))
    }

    pub fn conflict(res: &ResourceDef, name: &str) -> Self {
        Self::new(
            409,
            "Conflict",
            format!(
                "Operation cannot be fulfilled on {} \"{}\": the object has been modified; please apply your \
                 changes to the latest version and try again",
                res.qualified(),
                name
            ),
        )
        .with_details(Self::object_details(res, name))
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(400, "BadRequest", message)
    }

    /// 422 with one field cause, like the API server's validation errors.
    pub fn invalid(res: &ResourceDef, name: &str, field: &str, message: impl Into<String>) -> Self {
        let message = message.into();
        let mut details = Self::object_details(res, name);
        details["kind"] = json!(res.kind);
        details["causes"] =
            json!([{ "reason": "FieldValueInvalid", "message": message, "field": field }]);
        Self::new(
            422,
            "Invalid",
            format!(
                "{} \"{}\" is invalid: {}: {}",
                res.kind, name, field, message
            ),
        )
        .with_details(details)
    }

    pub fn method_not_allowed() -> Self {
        Self::new(
            405,
            "MethodNotAllowed",
            "the server does not allow this method on the requested resource",
        )
        .with_details(json!({}))
    }

    pub fn unsupported_media_type(content_type: &str) -> Self {
        Self::new(
            415,
            "UnsupportedMediaType",
            format!("the body of the request was in an unknown format - accepted media types include: \
                     application/json, application/yaml, application/vnd.kubernetes.protobuf (got {content_type:?})"),
        )
    }

    pub fn unsupported_patch(content_type: &str) -> Self {
        Self::new(
            415,
            "UnsupportedMediaType",
            format!(
                "the body of the request was in an unknown format - accepted media types include: \
                 application/json-patch+json, application/merge-patch+json, \
                 application/strategic-merge-patch+json (got {content_type:?})"
            ),
        )
    }

    /// The 410 a watch gets when the requested resourceVersion is older than the kept history.
    pub fn gone(requested: u64, oldest: u64) -> Self {
        Self::new(
            410,
            "Expired",
            format!("too old resource version: {requested} ({oldest})"),
        )
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(
            500,
            "InternalError",
            format!("Internal error occurred: {}", message.into()),
        )
    }

    /// The `v1` `Status` object for this error.
    pub fn to_status(&self) -> Value {
        let mut s = json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
        });
        if let Some(d) = &self.details {
            s["details"] = d.clone();
        }
        s["code"] = json!(self.code);
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::double::resources::lookup;

    #[test]
    fn status_shapes() {
        let d = lookup("apps", "v1", "deployments").unwrap();
        let s = ApiError::not_found(d, "web").to_status();
        assert_eq!(s["kind"], "Status");
        assert_eq!(s["message"], "deployments.apps \"web\" not found");
        assert_eq!(
            s["details"],
            json!({"name": "web", "group": "apps", "kind": "deployments"})
        );
        assert_eq!(s["code"], 404);
        let s = ApiError::unauthorized().to_status();
        assert!(s.get("details").is_none());
        assert_eq!(s["metadata"], json!({}));
    }
}
