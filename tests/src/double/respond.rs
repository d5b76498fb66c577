//! Response construction: the body type every handler returns, JSON / text / Status answers with the headers the
//! API server sends, media types for Table and PartialObjectMetadata, and streaming bodies fed from a task.
//! It must never decide *what* to answer; handlers do.

use std::convert::Infallible;

use bytes::Bytes;
use http::{header, HeaderValue, Response, StatusCode};
use http_body_util::{combinators::BoxBody, BodyExt, Full, StreamBody};
use hyper::body::Frame;
use serde_json::Value;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use super::status::ApiError;

pub type Body = BoxBody<Bytes, Infallible>;

pub const JSON: &str = "application/json";
pub const TABLE: &str = "application/json;as=Table;v=v1;g=meta.k8s.io";
pub const PARTIAL: &str = "application/json;as=PartialObjectMetadata;v=v1;g=meta.k8s.io";
pub const PARTIAL_LIST: &str = "application/json;as=PartialObjectMetadataList;v=v1;g=meta.k8s.io";

pub fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into()).boxed()
}

pub fn empty() -> Body {
    full(Bytes::new())
}

fn base(code: StatusCode, content_type: &str, body: Body) -> Response<Body> {
    let mut response = Response::new(body);
    *response.status_mut() = code;
    let headers = response.headers_mut();
    if let Ok(ct) = HeaderValue::from_str(content_type) {
        headers.insert(header::CONTENT_TYPE, ct);
    }
    headers.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("no-cache, private"),
    );
    if let Ok(id) = HeaderValue::from_str(&uuid::Uuid::new_v4().to_string()) {
        headers.insert("audit-id", id);
    }
    response
}

/// A JSON document with the given media type.
pub fn json_as(code: StatusCode, content_type: &str, value: &Value) -> Response<Body> {
    let mut bytes = serde_json::to_vec(value).unwrap_or_default();
    bytes.push(b'\n');
    base(code, content_type, full(bytes))
}

pub fn json(code: StatusCode, value: &Value) -> Response<Body> {
    json_as(code, JSON, value)
}

pub fn text(code: StatusCode, body: impl Into<Bytes>) -> Response<Body> {
    base(code, "text/plain; charset=utf-8", full(body))
}

pub fn bytes_as(code: StatusCode, content_type: &str, body: impl Into<Bytes>) -> Response<Body> {
    base(code, content_type, full(body))
}

pub fn error(err: &ApiError) -> Response<Body> {
    let code = StatusCode::from_u16(err.code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    json(code, &err.to_status())
}

/// A 200 response whose body is fed, frame by frame, through the returned sender. Dropping the sender ends the
/// body; the sender's `closed()` resolves once the client has gone away.
pub fn streaming(
    content_type: &str,
) -> (
    mpsc::Sender<Result<Frame<Bytes>, Infallible>>,
    Response<Body>,
) {
    let (tx, rx) = mpsc::channel(16);
    let body = StreamBody::new(ReceiverStream::new(rx)).boxed();
    (tx, base(StatusCode::OK, content_type, body))
}

/// The representation a client asked for in `Accept`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Output {
    /// Plain JSON objects (also the answer when only protobuf was asked for: the double does not encode protobuf).
    Json,
    /// meta.k8s.io/v1 Table, with rows carrying the object per `includeObject`.
    Table(super::table::IncludeObject),
    /// meta.k8s.io/v1 PartialObjectMetadata(List): metadata only.
    PartialMetadata,
}

impl Output {
    pub fn negotiate(accept: Option<&str>, include_object: Option<&str>) -> Self {
        if super::table::wants_table(accept) {
            return Output::Table(super::table::IncludeObject::from_query(include_object));
        }
        let partial = accept
            .unwrap_or_default()
            .split(',')
            .next()
            .is_some_and(|first| {
                first.contains("as=PartialObjectMetadata") && first.contains("g=meta.k8s.io")
            });
        if partial {
            Output::PartialMetadata
        } else {
            Output::Json
        }
    }
}

/// The PartialObjectMetadata form of a full object.
pub fn partial_metadata(obj: &Value) -> Value {
    serde_json::json!({
        "kind": "PartialObjectMetadata",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": obj.get("metadata").cloned().unwrap_or(Value::Null),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::double::table::IncludeObject;

    #[test]
    fn negotiation() {
        assert_eq!(Output::negotiate(None, None), Output::Json);
        assert_eq!(
            Output::negotiate(Some("application/vnd.kubernetes.protobuf"), None),
            Output::Json
        );
        assert_eq!(
            Output::negotiate(
                Some("application/json;as=Table;v=v1;g=meta.k8s.io,application/json"),
                Some("Object")
            ),
            Output::Table(IncludeObject::Object)
        );
        assert_eq!(
            Output::negotiate(Some("application/json;as=PartialObjectMetadataList;v=v1;g=meta.k8s.io,application/json"), None),
            Output::PartialMetadata
        );
    }
}
