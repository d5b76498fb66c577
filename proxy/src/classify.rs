//! Request classification: turns an HTTP method, path and query into the
//! Kubernetes [`RequestInfo`] the API server computes for the same request
//! (`k8s.io/apiserver/pkg/endpoints/request`, `RequestInfoFactory.NewRequestInfo`),
//! after validating the path so that the gateway and the API server cannot
//! read it differently.
//!
//! This module is pure: no I/O, no logging. It must never panic, whatever the
//! input, and never allocate more than a small multiple of its input, which is
//! itself bounded: paths over [`MAX_PATH_LEN`] bytes, queries over
//! [`MAX_QUERY_LEN`] bytes or [`MAX_QUERY_PARAMS`] parameters are refused
//! before any other work.
//!
//! What follows the API server exactly:
//! - prefixes `api` (groupless) and `apis` (grouped); fewer segments than a
//!   resource path needs means a non-resource request, whose verb is the
//!   lowercase HTTP method (`/api`, `/api/v1`, `/apis/apps/v1` discovery,
//!   `/version`, `/healthz`, `/openapi/v3/...`);
//! - the legacy `watch` and `proxy` path verbs, `proxy` taking no subresource;
//! - `namespaces/{ns}/status|finalize` as subresources of the namespace, and
//!   `PATCH /api/v1/namespaces/{ns}` (server-side apply creating a namespace)
//!   carrying no namespace;
//! - GET/HEAD without a name becoming `list` or `watch` from the `watch`
//!   query parameter, decoded as `metav1.ListOptions` are: only `0` and
//!   `false` (case-folded) mean false; if `limit`, `timeoutSeconds`,
//!   `labelSelector` or `fieldSelector` fail to parse, `watch` is still read
//!   (lower-cased) but no name is taken from the field selector;
//! - `fieldSelector` requiring `metadata.name=X` (`=` or `==`) giving a
//!   list/watch the name X, if X is a valid path segment name;
//! - DELETE without a name becoming `deletecollection`;
//! - query parsing as Go's `url.ParseQuery`: `&`-separated, pairs holding a
//!   `;` or a malformed escape are dropped, `+` is a space, the first value
//!   of a key wins.
//!
//! Deliberate departures, each refusing or narrowing, never widening:
//! - `pods/exec`, `pods/attach` and `pods/portforward` are `create` whatever
//!   the HTTP method. The API server's RequestInfo says `get` for the
//!   WebSocket upgrade (a GET) and `create` for SPDY (a POST); since 1.35 the
//!   `AuthorizePodWebsocketUpgradeCreatePermission` gate (on by default) makes
//!   the pod connect handler also require `create` on the subresource, so
//!   `create` is the verb that gates a session on either transport.
//! - Resource paths with a method the API server maps to no verb (OPTIONS,
//!   TRACE, ...) are refused instead of carrying an empty verb.
//! - A special-verb path naming no resource (`/api/v1/watch`) is an error
//!   here as it is there (the API server answers 500; this is a 400).
//! - `api_prefix` is empty for every non-resource request (the API server
//!   leaves `apis` set on `/apis/{group}/{version}`).
//! - A `fieldSelector` that is not UTF-8 on a list/watch is refused.
//! - Path validation (see [`validate_path`]) is stricter than Go's URL
//!   parser; `path` in the result is the percent-decoded path, as Go's
//!   `URL.Path`, which is what non-resource rules are matched against.
//! - One trailing slash is accepted. Like the API server's `splitPath` it is
//!   ignored for the resource fields (`/api/v1/pods/` lists pods) but kept in
//!   `path`, because non-resource rules compare the path literally.

use std::fmt;

use http::Method;
use serde::{Serialize, Serializer};

/// Longest raw (still percent-encoded) path accepted, in bytes.
pub const MAX_PATH_LEN: usize = 8 * 1024;
/// Longest raw query string accepted, in bytes. Generous because exec puts
/// the command line in the query.
pub const MAX_QUERY_LEN: usize = 64 * 1024;
/// Most `&`-separated query pieces accepted.
pub const MAX_QUERY_PARAMS: usize = 1024;

/// The Kubernetes verb of a request, as the API server's authorizer sees it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Verb {
    Get,
    List,
    Watch,
    Create,
    Update,
    Patch,
    Delete,
    DeleteCollection,
    /// The legacy `/api/v1/proxy/...` path verb. The `proxy` *subresource*
    /// (`pods/x/proxy`) carries the method's verb instead.
    Proxy,
    /// A non-resource request: the lowercase HTTP method ("get", "post", ...).
    NonResource(String),
}

impl Verb {
    /// The verb as the API server spells it.
    pub fn as_str(&self) -> &str {
        match self {
            Verb::Get => "get",
            Verb::List => "list",
            Verb::Watch => "watch",
            Verb::Create => "create",
            Verb::Update => "update",
            Verb::Patch => "patch",
            Verb::Delete => "delete",
            Verb::DeleteCollection => "deletecollection",
            Verb::Proxy => "proxy",
            Verb::NonResource(method) => method,
        }
    }

    /// `get`, `list` and `watch` (the API server's `IsReadOnly`), plus the
    /// safe methods GET, HEAD and OPTIONS for non-resource requests.
    pub fn is_read_only(&self) -> bool {
        match self {
            Verb::Get | Verb::List | Verb::Watch => true,
            Verb::NonResource(method) => matches!(method.as_str(), "get" | "head" | "options"),
            _ => false,
        }
    }
}

impl fmt::Display for Verb {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

// Serialised as the API server's string so audit records read like its own.
impl Serialize for Verb {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

/// What a request is, in the API server's terms.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RequestInfo {
    pub is_resource_request: bool,
    /// The validated, percent-decoded path (trailing slash kept).
    pub path: String,
    pub verb: Verb,
    /// "api" or "apis"; "" for non-resource requests.
    pub api_prefix: String,
    /// "" for the core group.
    pub api_group: String,
    pub api_version: String,
    /// "" for cluster-scoped resources and for lists across all namespaces.
    pub namespace: String,
    pub resource: String,
    pub subresource: String,
    pub name: String,
}

impl RequestInfo {
    /// Whether the request can change state: any verb but get/list/watch
    /// (so `proxy`, whose effect depends on the backend, counts), and for
    /// non-resource requests any method but GET, HEAD and OPTIONS.
    pub fn is_mutating(&self) -> bool {
        !self.verb.is_read_only()
    }

    /// `pods/exec`, `pods/attach` and `pods/portforward`: the requests that
    /// upgrade to a multiplexed stream protocol (SPDY/3.1 or WebSocket
    /// `v4`/`v5.channel.k8s.io`) the gateway parses and records. The `proxy`
    /// subresources can upgrade too, but what they carry is the backend's own
    /// protocol; see [`RequestInfo::is_proxy`].
    pub fn is_streaming_upgrade(&self) -> bool {
        self.is_resource_request
            && self.api_group.is_empty()
            && self.resource == "pods"
            && matches!(self.subresource.as_str(), "exec" | "attach" | "portforward")
    }

    /// Requests the API server relays to another HTTP server: the `proxy`
    /// subresource (pods, services, nodes) and the legacy `proxy` path verb.
    pub fn is_proxy(&self) -> bool {
        self.is_resource_request && (self.verb == Verb::Proxy || self.subresource == "proxy")
    }
}

/// Why a request could not be classified. Every message is meant for the
/// client, in a 400 Status.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ClassifyError {
    #[error("path is {len} bytes long; the limit is {max}")]
    PathTooLong { len: usize, max: usize },
    #[error("path must start with '/'")]
    PathNotAbsolute,
    #[error("path contains a '.' segment")]
    DotSegment,
    #[error("path contains a '..' segment")]
    DotDotSegment,
    #[error("path contains an empty segment ('//')")]
    EmptySegment,
    #[error("path contains a percent-encoded '/' (%2F)")]
    EncodedSlash,
    #[error("path contains a percent-encoded '.' (%2E)")]
    EncodedDot,
    #[error("path contains a percent-encoded '%' (%25)")]
    EncodedPercent,
    #[error("path contains a '%' not followed by two hex digits")]
    MalformedPercentEncoding,
    #[error("path contains a NUL or control character (literal or percent-encoded)")]
    ControlCharacter,
    #[error("path contains a backslash (literal or percent-encoded)")]
    Backslash,
    #[error("path contains a literal '?' or '#'")]
    QueryOrFragmentInPath,
    #[error("path is not valid UTF-8 after percent-decoding")]
    PathNotUtf8,
    #[error("query string is {len} bytes long; the limit is {max}")]
    QueryTooLong { len: usize, max: usize },
    #[error("query string has more than {max} parameters")]
    TooManyQueryParams { max: usize },
    #[error("query parameter '{param}' is not valid UTF-8 after percent-decoding")]
    QueryNotUtf8 { param: &'static str },
    #[error("path names the '{verb}' verb but no resource")]
    MissingResource { verb: &'static str },
    #[error("HTTP method {method} is not supported on Kubernetes resource paths")]
    UnsupportedMethod { method: String },
}

/// Checks a raw (percent-encoded) request path. Refused: not starting with
/// '/', longer than [`MAX_PATH_LEN`], `.` or `..` segments, empty segments
/// (a single trailing slash excepted), `%2F`, `%2E`, `%25` and `%5C`
/// (whose decoding another component might redo or read as a separator),
/// malformed escapes, NUL and control characters whether literal or encoded
/// (C1 controls included), backslashes, a literal `?` or `#`, and anything
/// that is not UTF-8 once decoded.
pub fn validate_path(raw_path: &str) -> Result<(), ClassifyError> {
    decode_path(raw_path).map(|_| ())
}

/// Classifies a request. `path` is the raw path as received (validated here
/// with [`validate_path`]); `query` the raw query string without the '?'.
pub fn classify(
    method: &Method,
    path: &str,
    query: Option<&str>,
) -> Result<RequestInfo, ClassifyError> {
    let decoded = decode_path(path)?;
    if let Some(query) = query {
        check_query_bounds(query)?;
    }

    // As the API server's splitPath: the trimmed path split on '/'. Validation
    // left no empty segment but a trailing one, which the trim removes.
    let trimmed = decoded.trim_matches('/');
    let parts: Vec<&str> = if trimmed.is_empty() {
        Vec::new()
    } else {
        trimmed.split('/').collect()
    };

    if parts.len() < 3 || !matches!(parts[0], "api" | "apis") {
        return Ok(non_resource(method, decoded));
    }
    let api_prefix = parts[0];
    let mut rest = &parts[1..];
    let mut api_group = "";
    if api_prefix == "apis" {
        if rest.len() < 3 {
            return Ok(non_resource(method, decoded));
        }
        api_group = rest[0];
        rest = &rest[1..];
    }
    let api_version = rest[0];
    rest = &rest[1..];

    let mut verb = match rest[0] {
        special @ ("watch" | "proxy") => {
            let (verb, name) = if special == "watch" {
                (Verb::Watch, "watch")
            } else {
                (Verb::Proxy, "proxy")
            };
            if rest.len() < 2 {
                return Err(ClassifyError::MissingResource { verb: name });
            }
            rest = &rest[1..];
            verb
        }
        _ => verb_from_method(method)?,
    };

    let mut namespace = "";
    if rest[0] == "namespaces" {
        // Server-side apply creates a namespace with PATCH /namespaces/{name};
        // the API server gives that request no namespace.
        if rest.len() == 2 && verb == Verb::Patch {
            namespace = "";
        } else if rest.len() > 1 {
            namespace = rest[1];
            if rest.len() > 2 && !matches!(rest[2], "status" | "finalize") {
                rest = &rest[2..];
            }
        }
    }

    let resource = rest[0];
    let name_part = rest.get(1).copied().unwrap_or("");
    let subresource = if verb == Verb::Proxy {
        ""
    } else {
        rest.get(2).copied().unwrap_or("")
    };

    let mut name = name_part.to_owned();
    if name.is_empty() && verb == Verb::Get {
        let opts = decode_list_options(query)?;
        verb = if opts.watch { Verb::Watch } else { Verb::List };
        if let Some(selected) = opts.name {
            if is_valid_path_segment_name(&selected) {
                name = selected;
            }
        }
    }
    if name.is_empty() && verb == Verb::Delete {
        verb = Verb::DeleteCollection;
    }

    if api_group.is_empty()
        && resource == "pods"
        && matches!(subresource, "exec" | "attach" | "portforward")
    {
        verb = Verb::Create;
    }

    Ok(RequestInfo {
        is_resource_request: true,
        verb,
        api_prefix: api_prefix.to_owned(),
        api_group: api_group.to_owned(),
        api_version: api_version.to_owned(),
        namespace: namespace.to_owned(),
        resource: resource.to_owned(),
        subresource: subresource.to_owned(),
        name,
        // Last: the fields above borrow from it.
        path: decoded,
    })
}

fn non_resource(method: &Method, path: String) -> RequestInfo {
    RequestInfo {
        is_resource_request: false,
        path,
        verb: Verb::NonResource(method.as_str().to_ascii_lowercase()),
        api_prefix: String::new(),
        api_group: String::new(),
        api_version: String::new(),
        namespace: String::new(),
        resource: String::new(),
        subresource: String::new(),
        name: String::new(),
    }
}

fn verb_from_method(method: &Method) -> Result<Verb, ClassifyError> {
    Ok(match *method {
        Method::GET | Method::HEAD => Verb::Get,
        Method::POST => Verb::Create,
        Method::PUT => Verb::Update,
        Method::PATCH => Verb::Patch,
        Method::DELETE => Verb::Delete,
        _ => {
            return Err(ClassifyError::UnsupportedMethod {
                // Bounded so a giant extension method cannot bloat the error.
                method: method.as_str().chars().take(32).collect(),
            });
        }
    })
}

fn hex_value(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

fn is_ascii_control(b: u8) -> bool {
    b < 0x20 || b == 0x7f
}

/// Validates a raw path and returns it percent-decoded.
fn decode_path(raw: &str) -> Result<String, ClassifyError> {
    if raw.len() > MAX_PATH_LEN {
        return Err(ClassifyError::PathTooLong {
            len: raw.len(),
            max: MAX_PATH_LEN,
        });
    }
    let bytes = raw.as_bytes();
    if bytes.first() != Some(&b'/') {
        return Err(ClassifyError::PathNotAbsolute);
    }

    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        match b {
            b'%' => {
                let hi = bytes.get(i + 1).copied().and_then(hex_value);
                let lo = bytes.get(i + 2).copied().and_then(hex_value);
                let (Some(hi), Some(lo)) = (hi, lo) else {
                    return Err(ClassifyError::MalformedPercentEncoding);
                };
                let decoded = (hi << 4) | lo;
                match decoded {
                    b'/' => return Err(ClassifyError::EncodedSlash),
                    b'.' => return Err(ClassifyError::EncodedDot),
                    b'%' => return Err(ClassifyError::EncodedPercent),
                    b'\\' => return Err(ClassifyError::Backslash),
                    c if is_ascii_control(c) => return Err(ClassifyError::ControlCharacter),
                    c => out.push(c),
                }
                i += 3;
            }
            b'\\' => return Err(ClassifyError::Backslash),
            b'?' | b'#' => return Err(ClassifyError::QueryOrFragmentInPath),
            c if is_ascii_control(c) => return Err(ClassifyError::ControlCharacter),
            c => {
                out.push(c);
                i += 1;
            }
        }
    }

    let decoded = String::from_utf8(out).map_err(|_| ClassifyError::PathNotUtf8)?;
    // Catches the C1 controls (U+0080..U+009F), which arrive as two bytes.
    if decoded.chars().any(char::is_control) {
        return Err(ClassifyError::ControlCharacter);
    }

    // Encoded '/' and '.' were refused above, so the decoded segments are the
    // raw ones.
    let mut segments = decoded[1..].split('/').peekable();
    while let Some(segment) = segments.next() {
        let is_last = segments.peek().is_none();
        match segment {
            "" if !is_last => return Err(ClassifyError::EmptySegment),
            "." => return Err(ClassifyError::DotSegment),
            ".." => return Err(ClassifyError::DotDotSegment),
            _ => {}
        }
    }
    Ok(decoded)
}

fn check_query_bounds(query: &str) -> Result<(), ClassifyError> {
    if query.len() > MAX_QUERY_LEN {
        return Err(ClassifyError::QueryTooLong {
            len: query.len(),
            max: MAX_QUERY_LEN,
        });
    }
    let pieces = query.bytes().filter(|&b| b == b'&').count() + 1;
    if pieces > MAX_QUERY_PARAMS {
        return Err(ClassifyError::TooManyQueryParams {
            max: MAX_QUERY_PARAMS,
        });
    }
    Ok(())
}

/// Go's `url.QueryUnescape` into `out`; false if an escape is malformed.
fn query_unescape(s: &str, out: &mut Vec<u8>) -> bool {
    let bytes = s.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hi = bytes.get(i + 1).copied().and_then(hex_value);
                let lo = bytes.get(i + 2).copied().and_then(hex_value);
                let (Some(hi), Some(lo)) = (hi, lo) else {
                    return false;
                };
                out.push((hi << 4) | lo);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    true
}

/// First decoded value of each `ListOptions` parameter that can change the
/// classification.
#[derive(Default)]
struct ListParams {
    watch: Option<Vec<u8>>,
    field_selector: Option<Vec<u8>>,
    label_selector: Option<Vec<u8>>,
    limit: Option<Vec<u8>>,
    timeout_seconds: Option<Vec<u8>>,
}

impl ListParams {
    fn parse(query: &str) -> Self {
        let mut params = ListParams::default();
        let mut key = Vec::new();
        for pair in query.split('&') {
            // Go drops pairs holding a ';' (once a separator) and empty ones.
            if pair.is_empty() || pair.contains(';') {
                continue;
            }
            let (raw_key, raw_value) = pair.split_once('=').unwrap_or((pair, ""));
            key.clear();
            if !query_unescape(raw_key, &mut key) {
                continue;
            }
            let slot = match key.as_slice() {
                b"watch" => &mut params.watch,
                b"fieldSelector" => &mut params.field_selector,
                b"labelSelector" => &mut params.label_selector,
                b"limit" => &mut params.limit,
                b"timeoutSeconds" => &mut params.timeout_seconds,
                _ => continue,
            };
            if slot.is_some() {
                continue;
            }
            let mut value = Vec::new();
            // A malformed value drops the whole pair, so a later one counts.
            if query_unescape(raw_value, &mut value) {
                *slot = Some(value);
            }
        }
        params
    }
}

struct ListOptions {
    watch: bool,
    name: Option<String>,
}

fn parses_as_i64(value: &[u8]) -> bool {
    std::str::from_utf8(value)
        .ok()
        .and_then(|s| s.parse::<i64>().ok())
        .is_some()
}

/// `strings.EqualFold(v, "false")`: Unicode simple folding, under which
/// U+017F (long s) equals 's'.
fn equal_fold_false(value: &[u8]) -> bool {
    let Ok(s) = std::str::from_utf8(value) else {
        return false;
    };
    let mut chars = s.chars();
    for want in ['f', 'a', 'l', 's', 'e'] {
        match chars.next() {
            Some(c) if c.to_ascii_lowercase() == want => {}
            Some('\u{17F}') if want == 's' => {}
            _ => return false,
        }
    }
    chars.next().is_none()
}

/// `strings.ToLower(v) == "false"`; no non-ASCII rune lowers into these
/// letters, so ASCII case-insensitivity is exact.
fn lower_is_false(value: &[u8]) -> bool {
    value.eq_ignore_ascii_case(b"false")
}

/// The parts of `metav1.ListOptions` decoding that classification depends on.
fn decode_list_options(query: Option<&str>) -> Result<ListOptions, ClassifyError> {
    let params = ListParams::parse(query.unwrap_or(""));

    let field_selector = match &params.field_selector {
        Some(raw) => Some(
            std::str::from_utf8(raw).map_err(|_| ClassifyError::QueryNotUtf8 {
                param: "fieldSelector",
            })?,
        ),
        None => None,
    };

    let others_decode = params.limit.as_deref().is_none_or(parses_as_i64)
        && params.timeout_seconds.as_deref().is_none_or(parses_as_i64)
        && params
            .label_selector
            .as_deref()
            .is_none_or(label_selector::is_valid);
    let field_match = match field_selector {
        Some(selector) => field_selector::exact_match(selector, "metadata.name"),
        None => Some(None),
    };

    Ok(match (others_decode, field_match) {
        (true, Some(name)) => ListOptions {
            watch: params
                .watch
                .as_deref()
                .is_some_and(|v| !(v == b"0" || equal_fold_false(v))),
            name,
        },
        // The API server's fallback when ListOptions fail to decode: watch
        // is still honoured, the field selector is not.
        _ => ListOptions {
            watch: params
                .watch
                .as_deref()
                .is_some_and(|v| !(v == b"0" || lower_is_false(v))),
            name: None,
        },
    })
}

/// apimachinery's `path.IsValidPathSegmentName`.
fn is_valid_path_segment_name(name: &str) -> bool {
    name != "." && name != ".." && !name.contains(['/', '%'])
}

/// `[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?`, the name part of a qualified
/// name and a non-empty label value.
fn is_qualified_name_body(s: &[u8]) -> bool {
    match (s.first(), s.last()) {
        (Some(first), Some(last)) => {
            first.is_ascii_alphanumeric()
                && last.is_ascii_alphanumeric()
                && s.iter()
                    .all(|&c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
        }
        _ => false,
    }
}

/// apimachinery's `IsDNS1123Subdomain`.
fn is_dns1123_subdomain(s: &[u8]) -> bool {
    s.len() <= 253
        && s.split(|&c| c == b'.')
            .all(|label| match (label.first(), label.last()) {
                (Some(first), Some(last)) => {
                    let edge = |c: &u8| c.is_ascii_lowercase() || c.is_ascii_digit();
                    edge(first)
                        && edge(last)
                        && label
                            .iter()
                            .all(|&c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-')
                }
                _ => false,
            })
}

/// apimachinery's `IsQualifiedName` (label keys): `[prefix/]name`.
fn is_qualified_name(s: &[u8]) -> bool {
    let mut parts = s.splitn(3, |&c| c == b'/');
    let (prefix, name) = match (parts.next(), parts.next(), parts.next()) {
        (Some(name), None, _) => (None, name),
        (Some(prefix), Some(name), None) => (Some(prefix), name),
        _ => return false,
    };
    if let Some(prefix) = prefix {
        if prefix.is_empty() || !is_dns1123_subdomain(prefix) {
            return false;
        }
    }
    name.len() <= 63 && is_qualified_name_body(name)
}

/// apimachinery's `IsValidLabelValue`.
fn is_label_value(s: &[u8]) -> bool {
    s.len() <= 63 && (s.is_empty() || is_qualified_name_body(s))
}

/// `fields.ParseSelector` followed by `RequiresExactMatch`, on a selector
/// already known to be UTF-8.
mod field_selector {
    /// `Some(Some(value))` if the selector requires `field` to equal a value,
    /// `Some(None)` if it parses without doing so, `None` if it does not
    /// parse.
    pub(super) fn exact_match(selector: &str, field: &str) -> Option<Option<String>> {
        let mut terms = split_terms(selector);
        // Go sorts the raw terms and returns the first exact match in order.
        terms.sort_unstable();
        let mut found = None;
        for term in terms {
            if term.is_empty() {
                continue;
            }
            let (lhs, op, rhs) = split_term(term)?;
            let value = unescape_value(rhs)?;
            if found.is_none() && op != "!=" && lhs == field {
                found = Some(value);
            }
        }
        Some(found)
    }

    /// Splits on ',' not escaped by a backslash; escapes stay in the terms.
    fn split_terms(selector: &str) -> Vec<&str> {
        if selector.is_empty() {
            return Vec::new();
        }
        let mut terms = Vec::new();
        let mut start = 0;
        let mut in_slash = false;
        for (i, c) in selector.bytes().enumerate() {
            if in_slash {
                in_slash = false;
            } else if c == b'\\' {
                in_slash = true;
            } else if c == b',' {
                terms.push(&selector[start..i]);
                start = i + 1;
            }
        }
        terms.push(&selector[start..]);
        terms
    }

    /// The first operator occurrence splits the term; "!=" and "==" are
    /// tried before "=" at each position.
    fn split_term(term: &str) -> Option<(&str, &'static str, &str)> {
        for (i, _) in term.char_indices() {
            let remaining = &term[i..];
            for op in ["!=", "==", "="] {
                if let Some(rhs) = remaining.strip_prefix(op) {
                    return Some((&term[..i], op, rhs));
                }
            }
        }
        None
    }

    /// `\\`, `\,` and `\=` are the only escapes; a bare ',' or '=' is invalid.
    fn unescape_value(s: &str) -> Option<String> {
        if !s.contains(['\\', ',', '=']) {
            return Some(s.to_owned());
        }
        let mut out = String::with_capacity(s.len());
        let mut in_slash = false;
        for c in s.chars() {
            if in_slash {
                match c {
                    '\\' | ',' | '=' => out.push(c),
                    _ => return None,
                }
                in_slash = false;
                continue;
            }
            match c {
                '\\' => in_slash = true,
                ',' | '=' => return None,
                _ => out.push(c),
            }
        }
        if in_slash {
            return None;
        }
        Some(out)
    }
}

/// Whether `labels.Parse` accepts a selector: its lexer, its recursive
/// descent parser and `NewRequirement`'s validation, reproduced on bytes.
mod label_selector {
    use super::{is_label_value, is_qualified_name};

    #[derive(Clone, Copy, PartialEq, Eq, Debug)]
    enum Tok {
        Error,
        EndOfString,
        ClosedPar,
        Comma,
        DoesNotExist,
        DoubleEquals,
        Equals,
        GreaterThan,
        Identifier,
        In,
        LessThan,
        NotEquals,
        NotIn,
        OpenPar,
    }

    fn symbol_token(s: &[u8]) -> Option<Tok> {
        Some(match s {
            b")" => Tok::ClosedPar,
            b"," => Tok::Comma,
            b"!" => Tok::DoesNotExist,
            b"==" => Tok::DoubleEquals,
            b"=" => Tok::Equals,
            b">" => Tok::GreaterThan,
            b"<" => Tok::LessThan,
            b"!=" => Tok::NotEquals,
            b"(" => Tok::OpenPar,
            _ => return None,
        })
    }

    fn is_whitespace(c: u8) -> bool {
        matches!(c, b' ' | b'\t' | b'\r' | b'\n')
    }

    fn is_special(c: u8) -> bool {
        matches!(c, b'=' | b'!' | b'(' | b')' | b',' | b'>' | b'<')
    }

    struct Lexer<'a> {
        s: &'a [u8],
        pos: usize,
    }

    impl<'a> Lexer<'a> {
        /// 0 at the end; a NUL byte also reads as 0, as in Go's lexer.
        fn read(&mut self) -> u8 {
            match self.s.get(self.pos) {
                Some(&c) => {
                    self.pos += 1;
                    c
                }
                None => 0,
            }
        }

        fn unread(&mut self) {
            self.pos = self.pos.saturating_sub(1);
        }

        fn scan_id_or_keyword(&mut self) -> (Tok, &'a [u8]) {
            let start = self.pos;
            let mut end = start;
            loop {
                let c = self.read();
                if c == 0 {
                    break;
                }
                if is_special(c) || is_whitespace(c) {
                    self.unread();
                    break;
                }
                end = self.pos;
            }
            let literal = &self.s[start..end];
            let tok = match literal {
                b"in" => Tok::In,
                b"notin" => Tok::NotIn,
                _ => Tok::Identifier,
            };
            (tok, literal)
        }

        fn scan_special_symbol(&mut self) -> (Tok, &'a [u8]) {
            let start = self.pos;
            let mut last: Option<(Tok, &'a [u8])> = None;
            loop {
                let c = self.read();
                if c == 0 {
                    break;
                }
                if !is_special(c) {
                    self.unread();
                    break;
                }
                let buffer = &self.s[start..self.pos];
                if let Some(tok) = symbol_token(buffer) {
                    last = Some((tok, buffer));
                } else if last.is_some() {
                    self.unread();
                    break;
                }
            }
            last.unwrap_or((Tok::Error, b""))
        }

        fn lex(&mut self) -> (Tok, &'a [u8]) {
            let mut c = self.read();
            while is_whitespace(c) {
                c = self.read();
            }
            if c == 0 {
                (Tok::EndOfString, b"")
            } else if is_special(c) {
                self.unread();
                self.scan_special_symbol()
            } else {
                self.unread();
                self.scan_id_or_keyword()
            }
        }
    }

    #[derive(Clone, Copy, PartialEq, Eq)]
    enum Context {
        KeyAndOperator,
        Values,
    }

    #[derive(Clone, Copy, PartialEq, Eq)]
    enum Op {
        In,
        NotIn,
        Equals,
        DoubleEquals,
        NotEquals,
        GreaterThan,
        LessThan,
        Exists,
        DoesNotExist,
    }

    struct Parser<'a> {
        items: &'a [(Tok, &'a [u8])],
        pos: usize,
    }

    impl<'a> Parser<'a> {
        fn lookahead(&self, context: Context) -> (Tok, &'a [u8]) {
            let (tok, literal) = self
                .items
                .get(self.pos)
                .copied()
                .unwrap_or((Tok::EndOfString, b""));
            // In a values position the keywords are plain identifiers.
            let tok = match tok {
                Tok::In | Tok::NotIn if context == Context::Values => Tok::Identifier,
                other => other,
            };
            (tok, literal)
        }

        fn consume(&mut self, context: Context) -> (Tok, &'a [u8]) {
            let item = self.lookahead(context);
            self.pos += 1;
            item
        }

        fn parse(&mut self) -> Option<()> {
            loop {
                match self.lookahead(Context::Values).0 {
                    Tok::Identifier | Tok::DoesNotExist => {
                        self.parse_requirement()?;
                        match self.consume(Context::Values).0 {
                            Tok::EndOfString => return Some(()),
                            Tok::Comma => {
                                let next = self.lookahead(Context::Values).0;
                                if next != Tok::Identifier && next != Tok::DoesNotExist {
                                    return None;
                                }
                            }
                            _ => return None,
                        }
                    }
                    Tok::EndOfString => return Some(()),
                    _ => return None,
                }
            }
        }

        fn parse_requirement(&mut self) -> Option<()> {
            let (_key, inferred) = self.parse_key_and_infer_operator()?;
            if matches!(inferred, Some(Op::Exists | Op::DoesNotExist)) {
                return Some(());
            }
            let op = self.parse_operator()?;
            let values = match op {
                Op::In | Op::NotIn => self.parse_values()?,
                _ => self.parse_exact_value()?,
            };
            // NewRequirement: value counts per operator, integers for Gt/Lt,
            // every value a valid label value.
            let count_ok = match op {
                Op::In | Op::NotIn => !values.is_empty(),
                _ => values.len() == 1,
            };
            let ints_ok = !matches!(op, Op::GreaterThan | Op::LessThan)
                || values.iter().all(|v| super::parses_as_i64(v));
            (count_ok && ints_ok && values.iter().all(|v| is_label_value(v))).then_some(())
        }

        fn parse_key_and_infer_operator(&mut self) -> Option<(&'a [u8], Option<Op>)> {
            let mut op = None;
            let (mut tok, mut literal) = self.consume(Context::Values);
            if tok == Tok::DoesNotExist {
                op = Some(Op::DoesNotExist);
                (tok, literal) = self.consume(Context::Values);
            }
            if tok != Tok::Identifier || !is_qualified_name(literal) {
                return None;
            }
            let next = self.lookahead(Context::Values).0;
            if (next == Tok::EndOfString || next == Tok::Comma) && op != Some(Op::DoesNotExist) {
                op = Some(Op::Exists);
            }
            Some((literal, op))
        }

        fn parse_operator(&mut self) -> Option<Op> {
            Some(match self.consume(Context::KeyAndOperator).0 {
                Tok::In => Op::In,
                Tok::Equals => Op::Equals,
                Tok::DoubleEquals => Op::DoubleEquals,
                Tok::GreaterThan => Op::GreaterThan,
                Tok::LessThan => Op::LessThan,
                Tok::NotIn => Op::NotIn,
                Tok::NotEquals => Op::NotEquals,
                _ => return None,
            })
        }

        fn parse_values(&mut self) -> Option<Vec<&'a [u8]>> {
            if self.consume(Context::Values).0 != Tok::OpenPar {
                return None;
            }
            match self.lookahead(Context::Values).0 {
                Tok::Identifier | Tok::Comma => {
                    let values = self.parse_identifiers_list()?;
                    (self.consume(Context::Values).0 == Tok::ClosedPar).then_some(values)
                }
                Tok::ClosedPar => {
                    self.consume(Context::Values);
                    Some(vec![b""])
                }
                _ => None,
            }
        }

        fn parse_identifiers_list(&mut self) -> Option<Vec<&'a [u8]>> {
            let mut values: Vec<&'a [u8]> = Vec::new();
            loop {
                let (tok, literal) = self.consume(Context::Values);
                match tok {
                    Tok::Identifier => {
                        values.push(literal);
                        match self.lookahead(Context::Values).0 {
                            Tok::Comma => continue,
                            Tok::ClosedPar => return Some(values),
                            _ => return None,
                        }
                    }
                    Tok::Comma => {
                        if values.is_empty() {
                            values.push(b"");
                        }
                        match self.lookahead(Context::Values).0 {
                            Tok::ClosedPar => {
                                values.push(b"");
                                return Some(values);
                            }
                            Tok::Comma => values.push(b""),
                            _ => {}
                        }
                    }
                    _ => return None,
                }
            }
        }

        fn parse_exact_value(&mut self) -> Option<Vec<&'a [u8]>> {
            match self.lookahead(Context::Values).0 {
                Tok::EndOfString | Tok::Comma => Some(vec![b""]),
                _ => match self.consume(Context::Values) {
                    (Tok::Identifier, literal) => Some(vec![literal]),
                    _ => None,
                },
            }
        }
    }

    pub(super) fn is_valid(selector: &[u8]) -> bool {
        let mut lexer = Lexer {
            s: selector,
            pos: 0,
        };
        // Every token but the last consumes at least one byte, so this holds
        // at most len + 1 items.
        let mut items = Vec::new();
        loop {
            let item = lexer.lex();
            items.push(item);
            if item.0 == Tok::EndOfString {
                break;
            }
        }
        Parser {
            items: &items,
            pos: 0,
        }
        .parse()
        .is_some()
    }

    #[cfg(test)]
    mod tests {
        use super::is_valid;

        #[test]
        fn label_selectors_parse_as_the_api_server_does() {
            #[rustfmt::skip]
            let cases: &[(&str, bool)] = &[
                ("", true),
                ("   ", true),
                ("app", true),
                ("!app", true),
                ("app=web", true),
                ("app==web", true),
                ("app!=web", true),
                ("app = web , tier", true),
                ("app=", true),
                ("app in (a,b)", true),
                ("app notin ()", true),
                ("x in (foo,,baz),y,z notin ()", true),
                ("in in (in)", true),
                ("example.com/app=web", true),
                ("replicas>3", true),
                ("replicas<3", true),
                ("replicas<-3", false),
                ("replicas>three", false),
                ("app=web,", false),
                (",app", false),
                ("app=a=b", false),
                ("!app=web", false),
                ("app in a", false),
                ("app in (a", false),
                ("Bad_Key_=x", false),
                ("-app=x", false),
                ("a/b/c=x", false),
                ("/app=x", false),
                ("Example.com/app=x", false),
                ("app=-web", false),
                ("app===web", false),
                ("app=\u{e9}", false),
                ("app=web)", false),
                ("app=web\0 ", true),
                ("app=web \0junk", true),
                ("app=web\0junk", false),
            ];
            for (selector, want) in cases {
                assert_eq!(is_valid(selector.as_bytes()), *want, "{selector:?}");
            }
            let long_value = format!("app={}", "a".repeat(64));
            assert!(!is_valid(long_value.as_bytes()));
            let long_key = format!("{}=x", "a".repeat(64));
            assert!(!is_valid(long_key.as_bytes()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Expected classification: resource or not, verb, prefix, group,
    /// version, namespace, resource, subresource, name.
    #[derive(Debug)]
    struct Want {
        resource_request: bool,
        verb: &'static str,
        fields: [&'static str; 7],
    }

    fn res(verb: &'static str, fields: [&'static str; 7]) -> Want {
        Want {
            resource_request: true,
            verb,
            fields,
        }
    }

    fn non(verb: &'static str) -> Want {
        Want {
            resource_request: false,
            verb,
            fields: [""; 7],
        }
    }

    fn method(m: &str) -> Method {
        Method::from_bytes(m.as_bytes()).expect("test method")
    }

    fn check(m: &str, path: &str, query: Option<&str>, want: &Want) {
        let info = classify(&method(m), path, query)
            .unwrap_or_else(|e| panic!("{m} {path} {query:?}: unexpected error {e}"));
        let got = [
            info.api_prefix.as_str(),
            info.api_group.as_str(),
            info.api_version.as_str(),
            info.namespace.as_str(),
            info.resource.as_str(),
            info.subresource.as_str(),
            info.name.as_str(),
        ];
        assert_eq!(
            (info.is_resource_request, info.verb.as_str(), got),
            (want.resource_request, want.verb, want.fields),
            "{m} {path} {query:?}"
        );
    }

    #[test]
    fn resource_requests() {
        #[rustfmt::skip]
        let cases: &[(&str, &str, Option<&str>, Want)] = &[
            // Collections and objects, namespaced and not.
            ("GET", "/api/v1/namespaces", None, res("list", ["api", "", "v1", "", "namespaces", "", ""])),
            ("GET", "/api/v1/namespaces/other", None, res("get", ["api", "", "v1", "other", "namespaces", "", "other"])),
            ("GET", "/api/v1/namespaces/other/pods", None, res("list", ["api", "", "v1", "other", "pods", "", ""])),
            ("GET", "/api/v1/namespaces/other/pods/foo", None, res("get", ["api", "", "v1", "other", "pods", "", "foo"])),
            ("HEAD", "/api/v1/namespaces/other/pods/foo", None, res("get", ["api", "", "v1", "other", "pods", "", "foo"])),
            ("GET", "/api/v1/pods", None, res("list", ["api", "", "v1", "", "pods", "", ""])),
            ("HEAD", "/api/v1/pods", None, res("list", ["api", "", "v1", "", "pods", "", ""])),
            ("GET", "/api/v1/nodes/n1", None, res("get", ["api", "", "v1", "", "nodes", "", "n1"])),
            ("GET", "/apis/rbac.authorization.k8s.io/v1/clusterroles/admin", None, res("get", ["apis", "rbac.authorization.k8s.io", "v1", "", "clusterroles", "", "admin"])),
            ("GET", "/apis/batch/v1/job/foo/scale", None, res("get", ["apis", "batch", "v1", "", "job", "scale", "foo"])),
            ("GET", "/apis/apps/v1/namespaces/other/deployments/web/scale", None, res("get", ["apis", "apps", "v1", "other", "deployments", "scale", "web"])),
            // Method verbs.
            ("POST", "/api/v1/namespaces/other/pods", None, res("create", ["api", "", "v1", "other", "pods", "", ""])),
            ("POST", "/apis/apps/v1/namespaces/other/deployments", None, res("create", ["apis", "apps", "v1", "other", "deployments", "", ""])),
            ("PUT", "/api/v1/namespaces/other/configmaps/cm", None, res("update", ["api", "", "v1", "other", "configmaps", "", "cm"])),
            ("PATCH", "/api/v1/namespaces/other/pods/foo", None, res("patch", ["api", "", "v1", "other", "pods", "", "foo"])),
            ("DELETE", "/api/v1/namespaces/other/pods/foo", None, res("delete", ["api", "", "v1", "other", "pods", "", "foo"])),
            // Namespaces and their subresources.
            ("PATCH", "/api/v1/namespaces/new-namespace", None, res("patch", ["api", "", "v1", "", "namespaces", "", "new-namespace"])),
            ("PUT", "/api/v1/namespaces/other", None, res("update", ["api", "", "v1", "other", "namespaces", "", "other"])),
            ("PUT", "/api/v1/namespaces/other/finalize", None, res("update", ["api", "", "v1", "other", "namespaces", "finalize", "other"])),
            ("PUT", "/api/v1/namespaces/other/status", None, res("update", ["api", "", "v1", "other", "namespaces", "status", "other"])),
            ("GET", "/api/v1/namespaces/other/status", None, res("get", ["api", "", "v1", "other", "namespaces", "status", "other"])),
            ("PATCH", "/api/v1/namespaces/other/status", None, res("patch", ["api", "", "v1", "other", "namespaces", "status", "other"])),
            // deletecollection.
            ("DELETE", "/api/v1/nodes", None, res("deletecollection", ["api", "", "v1", "", "nodes", "", ""])),
            ("DELETE", "/api/v1/namespaces", None, res("deletecollection", ["api", "", "v1", "", "namespaces", "", ""])),
            ("DELETE", "/api/v1/namespaces/other/pods", None, res("deletecollection", ["api", "", "v1", "other", "pods", "", ""])),
            ("DELETE", "/apis/extensions/v1/namespaces/other/pods", None, res("deletecollection", ["apis", "extensions", "v1", "other", "pods", "", ""])),
            ("DELETE", "/api/v1/namespaces/other/pods", Some("fieldSelector=metadata.name%3Dfoo"), res("deletecollection", ["api", "", "v1", "other", "pods", "", ""])),
            // Subresources.
            ("GET", "/api/v1/namespaces/other/pods/foo/status", None, res("get", ["api", "", "v1", "other", "pods", "status", "foo"])),
            ("GET", "/api/v1/namespaces/other/pods/foo/log", Some("follow=true"), res("get", ["api", "", "v1", "other", "pods", "log", "foo"])),
            ("GET", "/api/v1/namespaces/other/pods/foo/proxy/subpath", None, res("get", ["api", "", "v1", "other", "pods", "proxy", "foo"])),
            ("POST", "/api/v1/namespaces/other/pods/foo/proxy", None, res("create", ["api", "", "v1", "other", "pods", "proxy", "foo"])),
            ("GET", "/api/v1/namespaces/other/services/https:web:443/proxy/a/b", None, res("get", ["api", "", "v1", "other", "services", "proxy", "https:web:443"])),
            ("GET", "/api/v1/nodes/n1/proxy/metrics", None, res("get", ["api", "", "v1", "", "nodes", "proxy", "n1"])),
            // Streaming subresources are create whatever the method.
            ("GET", "/api/v1/namespaces/other/pods/foo/exec", Some("command=sh&stdin=true"), res("create", ["api", "", "v1", "other", "pods", "exec", "foo"])),
            ("POST", "/api/v1/namespaces/other/pods/foo/exec", Some("command=sh"), res("create", ["api", "", "v1", "other", "pods", "exec", "foo"])),
            ("GET", "/api/v1/namespaces/other/pods/foo/attach", None, res("create", ["api", "", "v1", "other", "pods", "attach", "foo"])),
            ("GET", "/api/v1/namespaces/other/pods/foo/portforward", Some("ports=8080"), res("create", ["api", "", "v1", "other", "pods", "portforward", "foo"])),
            ("HEAD", "/api/v1/namespaces/other/pods/foo/exec", None, res("create", ["api", "", "v1", "other", "pods", "exec", "foo"])),
            ("GET", "/apis/example.com/v1/namespaces/other/pods/foo/exec", None, res("get", ["apis", "example.com", "v1", "other", "pods", "exec", "foo"])),
            // Legacy path verbs.
            ("GET", "/api/v1/proxy/namespaces/other/pods/foo", None, res("proxy", ["api", "", "v1", "other", "pods", "", "foo"])),
            ("GET", "/api/v1/proxy/namespaces/other/pods/foo/subpath/not/a/subresource", None, res("proxy", ["api", "", "v1", "other", "pods", "", "foo"])),
            ("GET", "/api/v1/proxy/nodes/n1", None, res("proxy", ["api", "", "v1", "", "nodes", "", "n1"])),
            ("OPTIONS", "/api/v1/proxy/nodes/n1", None, res("proxy", ["api", "", "v1", "", "nodes", "", "n1"])),
            ("GET", "/api/v1/watch/pods", None, res("watch", ["api", "", "v1", "", "pods", "", ""])),
            ("GET", "/api/v1/watch/namespaces/other/pods", None, res("watch", ["api", "", "v1", "other", "pods", "", ""])),
            ("GET", "/apis/apps/v1/watch/namespaces/other/deployments/web", None, res("watch", ["apis", "apps", "v1", "other", "deployments", "", "web"])),
            ("POST", "/api/v1/watch/pods", None, res("watch", ["api", "", "v1", "", "pods", "", ""])),
            ("GET", "/api/v1/watch/pods", Some("watch=false"), res("watch", ["api", "", "v1", "", "pods", "", ""])),
            // The watch parameter.
            ("GET", "/api/v1/pods", Some("watch=true"), res("watch", ["api", "", "v1", "", "pods", "", ""])),
            ("GET", "/api/v1/pods", Some("watch=false"), res("list", ["api", "", "v1", "", "pods", "", ""])),
            ("GET", "/api/v1/namespaces/other/pods", Some("watch=1"), res("watch", ["api", "", "v1", "other", "pods", "", ""])),
            ("GET", "/api/v1/namespaces/other/pods", Some("watch=0"), res("list", ["api", "", "v1", "other", "pods", "", ""])),
            ("GET", "/api/v1/pods", Some("watch=FALSE"), res("list", ["api", "", "v1", "", "pods", "", ""])),
            ("GET", "/api/v1/pods", Some("watch="), res("watch", ["api", "", "v1", "", "pods", "", ""])),
            ("GET", "/api/v1/pods", Some("watch"), res("watch", ["api", "", "v1", "", "pods", "", ""])),
            ("GET", "/api/v1/pods", Some("watch=yes"), res("watch", ["api", "", "v1", "", "pods", "", ""])),
            ("GET", "/api/v1/pods", Some("watch=false&watch=true"), res("list", ["api", "", "v1", "", "pods", "", ""])),
            ("GET", "/api/v1/pods", Some("watch=fal%73e"), res("list", ["api", "", "v1", "", "pods", "", ""])),
            ("GET", "/api/v1/pods", Some("watch=fal%C5%BFe"), res("list", ["api", "", "v1", "", "pods", "", ""])),
            ("GET", "/api/v1/pods", Some("watch=fal%C5%BFe&limit=x"), res("watch", ["api", "", "v1", "", "pods", "", ""])),
            ("GET", "/api/v1/pods", Some("watch=false&limit=x"), res("list", ["api", "", "v1", "", "pods", "", ""])),
            ("GET", "/api/v1/pods", Some("watch=true;x=1"), res("list", ["api", "", "v1", "", "pods", "", ""])),
            ("GET", "/api/v1/pods", Some("watch=%zz&watch=1"), res("watch", ["api", "", "v1", "", "pods", "", ""])),
            ("GET", "/api/v1/pods", Some("Watch=true"), res("list", ["api", "", "v1", "", "pods", "", ""])),
            ("GET", "/api/v1/pods", Some("w%61tch=true"), res("watch", ["api", "", "v1", "", "pods", "", ""])),
            ("GET", "/api/v1/pods", Some("&&watch=+1"), res("watch", ["api", "", "v1", "", "pods", "", ""])),
            ("GET", "/api/v1/namespaces/other/pods/foo", Some("watch=true"), res("get", ["api", "", "v1", "other", "pods", "", "foo"])),
            // fieldSelector metadata.name names a list or watch.
            ("GET", "/apis/group/version/resource", Some("fieldSelector=metadata.name=name1"), res("list", ["apis", "group", "version", "", "resource", "", "name1"])),
            ("GET", "/apis/group/version/resource", Some("watch=true&fieldSelector=metadata.name%3Dname1"), res("watch", ["apis", "group", "version", "", "resource", "", "name1"])),
            ("GET", "/api/v1/namespaces/other/secrets", Some("fieldSelector=metadata.name%3D%3Ds1"), res("list", ["api", "", "v1", "other", "secrets", "", "s1"])),
            ("GET", "/apis/group/version/resource", Some("fieldSelector=foo=bar"), res("list", ["apis", "group", "version", "", "resource", "", ""])),
            ("GET", "/apis/group/version/resource", Some("fieldSelector=metadata.name=name1,foo"), res("list", ["apis", "group", "version", "", "resource", "", ""])),
            ("GET", "/apis/group/version/resource", Some("fieldSelector=metadata.name=name1,foo&watch=true"), res("watch", ["apis", "group", "version", "", "resource", "", ""])),
            ("GET", "/apis/group/version/resource", Some("fieldSelector=metadata.name=name1,foo&watch=false"), res("list", ["apis", "group", "version", "", "resource", "", ""])),
            ("GET", "/api/v1/pods", Some("fieldSelector=metadata.name!%3Dp"), res("list", ["api", "", "v1", "", "pods", "", ""])),
            ("GET", "/api/v1/pods", Some("fieldSelector=metadata.name%3Db,metadata.name%3Da"), res("list", ["api", "", "v1", "", "pods", "", "a"])),
            ("GET", "/api/v1/pods", Some("fieldSelector=metadata.namespace%3Dx,metadata.name%3Dy"), res("list", ["api", "", "v1", "", "pods", "", "y"])),
            ("GET", "/api/v1/pods", Some("fieldSelector=metadata.name%3Da%2Fb"), res("list", ["api", "", "v1", "", "pods", "", ""])),
            ("GET", "/api/v1/pods", Some("fieldSelector=metadata.name%3D.."), res("list", ["api", "", "v1", "", "pods", "", ""])),
            ("GET", "/api/v1/pods", Some("fieldSelector=metadata.name%3Da%25b"), res("list", ["api", "", "v1", "", "pods", "", ""])),
            ("GET", "/api/v1/pods", Some("fieldSelector=metadata.name%3Da%5C,b"), res("list", ["api", "", "v1", "", "pods", "", "a,b"])),
            ("GET", "/api/v1/pods", Some("fieldSelector=metadata.name%3Da%5Cx"), res("list", ["api", "", "v1", "", "pods", "", ""])),
            ("GET", "/api/v1/pods", Some("fieldSelector=spec.nodeName%3Dn1"), res("list", ["api", "", "v1", "", "pods", "", ""])),
            ("GET", "/api/v1/pods", Some("fieldSelector=metadata.name%3Dp&labelSelector=app%3Dweb"), res("list", ["api", "", "v1", "", "pods", "", "p"])),
            ("GET", "/api/v1/pods", Some("fieldSelector=metadata.name%3Dp&labelSelector=app+in+(a,b)"), res("list", ["api", "", "v1", "", "pods", "", "p"])),
            ("GET", "/api/v1/pods", Some("fieldSelector=metadata.name%3Dp&labelSelector=!!bad"), res("list", ["api", "", "v1", "", "pods", "", ""])),
            ("GET", "/api/v1/pods", Some("fieldSelector=metadata.name%3Dp&labelSelector=Bad_Key_"), res("list", ["api", "", "v1", "", "pods", "", ""])),
            ("GET", "/api/v1/pods", Some("fieldSelector=metadata.name%3Dp&limit=500&timeoutSeconds=%2B30"), res("list", ["api", "", "v1", "", "pods", "", "p"])),
            ("GET", "/api/v1/pods", Some("fieldSelector=metadata.name%3Dp&limit=abc"), res("list", ["api", "", "v1", "", "pods", "", ""])),
            ("GET", "/api/v1/pods", Some("fieldSelector=metadata.name%3Dp&timeoutSeconds=99999999999999999999"), res("list", ["api", "", "v1", "", "pods", "", ""])),
            ("GET", "/api/v1/pods", Some("fieldSelector=metadata.name%3Dp&limit="), res("list", ["api", "", "v1", "", "pods", "", ""])),
            // Path shapes: trailing slash, decoded characters.
            ("GET", "/api/v1/pods/", None, res("list", ["api", "", "v1", "", "pods", "", ""])),
            ("GET", "/api/v1/namespaces/%64efault/pods", None, res("list", ["api", "", "v1", "default", "pods", "", ""])),
            ("GET", "/apis/group/version/resource/name/subresource/more", None, res("get", ["apis", "group", "version", "", "resource", "subresource", "name"])),
        ];
        assert!(cases.len() >= 60);
        for (m, path, query, want) in cases {
            check(m, path, *query, want);
        }
    }

    #[test]
    fn non_resource_requests() {
        #[rustfmt::skip]
        let cases: &[(&str, &str, &str)] = &[
            ("GET", "/", "get"),
            ("GET", "/version", "get"),
            ("GET", "/version/", "get"),
            ("GET", "/healthz", "get"),
            ("GET", "/healthz/etcd", "get"),
            ("GET", "/livez", "get"),
            ("GET", "/readyz", "get"),
            ("GET", "/metrics", "get"),
            ("GET", "/openapi/v2", "get"),
            ("GET", "/openapi/v3", "get"),
            ("GET", "/openapi/v3/apis/apps/v1", "get"),
            ("GET", "/api", "get"),
            ("GET", "/api/v1", "get"),
            ("GET", "/api/v1/", "get"),
            ("GET", "/apis", "get"),
            ("GET", "/apis/apps", "get"),
            ("GET", "/apis/apps/v1", "get"),
            ("GET", "/apis/apps/v1/", "get"),
            ("GET", "/apis/version/resource", "get"),
            ("GET", "/badprefix/version/resource", "get"),
            ("GET", "/logs/kube-apiserver.log", "get"),
            ("HEAD", "/healthz", "head"),
            ("POST", "/apis", "post"),
            ("OPTIONS", "/version", "options"),
            ("DELETE", "/metrics", "delete"),
        ];
        for (m, path, verb) in cases {
            check(m, path, None, &non(verb));
            let info = classify(&method(m), path, None).expect("classified");
            assert_eq!(info.path, *path, "path is kept as given");
        }
    }

    #[test]
    fn invalid_requests() {
        use ClassifyError::*;
        let long_path = format!("/{}", "a".repeat(MAX_PATH_LEN));
        let long_query = "a".repeat(MAX_QUERY_LEN + 1);
        let many_params = "a&".repeat(MAX_QUERY_PARAMS);
        #[rustfmt::skip]
        let cases: Vec<(&str, &str, Option<&str>, ClassifyError)> = vec![
            ("GET", "", None, PathNotAbsolute),
            ("GET", "api/v1/pods", None, PathNotAbsolute),
            ("GET", "*", None, PathNotAbsolute),
            ("GET", "/api/v1/namespaces/a/../b/secrets", None, DotDotSegment),
            ("GET", "/..", None, DotDotSegment),
            ("GET", "/api/v1/..", None, DotDotSegment),
            ("GET", "/api/./v1/pods", None, DotSegment),
            ("GET", "/api/v1/pods/.", None, DotSegment),
            ("GET", "/api//v1/pods", None, EmptySegment),
            ("GET", "//api/v1/pods", None, EmptySegment),
            ("GET", "/api/v1/pods//", None, EmptySegment),
            ("GET", "//", None, EmptySegment),
            ("GET", "/api/v1/namespaces/a%2Fb/pods", None, EncodedSlash),
            ("GET", "/api/v1/namespaces/a%2fb/pods", None, EncodedSlash),
            ("GET", "/api/v1/namespaces/%2E%2E/pods", None, EncodedDot),
            ("GET", "/api/v1/namespaces/%2e/pods", None, EncodedDot),
            ("GET", "/api/v1/namespaces/a%25b/pods", None, EncodedPercent),
            ("GET", "/api/v1/namespaces/a%2/pods", None, MalformedPercentEncoding),
            ("GET", "/api/v1/pods%", None, MalformedPercentEncoding),
            ("GET", "/api/v1/pods%zz", None, MalformedPercentEncoding),
            ("GET", "/api/v1/pods%00", None, ControlCharacter),
            ("GET", "/api/v1/pods%0a", None, ControlCharacter),
            ("GET", "/api/v1/pods%7F", None, ControlCharacter),
            ("GET", "/api/v1/pods%C2%85", None, ControlCharacter),
            ("GET", "/api/v1/pods\0", None, ControlCharacter),
            ("GET", "/api/v1/po\tds", None, ControlCharacter),
            ("GET", "/api/v1/pods\u{9b}", None, ControlCharacter),
            ("GET", "/api\\v1/pods", None, Backslash),
            ("GET", "/api/v1%5Cpods", None, Backslash),
            ("GET", "/api/v1/pods%FF", None, PathNotUtf8),
            ("GET", "/api/v1/pods%C0%AF", None, PathNotUtf8),
            ("GET", "/api/v1/pods%E2%82", None, PathNotUtf8),
            ("GET", "/api/v1/pods?watch=1", None, QueryOrFragmentInPath),
            ("GET", "/api/v1/pods#x", None, QueryOrFragmentInPath),
            ("GET", long_path.as_str(), None, PathTooLong { len: MAX_PATH_LEN + 1, max: MAX_PATH_LEN }),
            ("GET", "/api/v1/pods", Some(long_query.as_str()), QueryTooLong { len: MAX_QUERY_LEN + 1, max: MAX_QUERY_LEN }),
            ("GET", "/api/v1/pods", Some(many_params.as_str()), TooManyQueryParams { max: MAX_QUERY_PARAMS }),
            ("GET", "/api/v1/pods", Some("fieldSelector=metadata.name%3D%FF"), QueryNotUtf8 { param: "fieldSelector" }),
            ("GET", "/api/v1/watch", None, MissingResource { verb: "watch" }),
            ("GET", "/api/v1/proxy/", None, MissingResource { verb: "proxy" }),
            ("GET", "/apis/apps/v1/watch", None, MissingResource { verb: "watch" }),
            ("OPTIONS", "/api/v1/pods", None, UnsupportedMethod { method: "OPTIONS".into() }),
            ("TRACE", "/api/v1/namespaces/a/pods/b", None, UnsupportedMethod { method: "TRACE".into() }),
            ("CONNECT", "/apis/apps/v1/deployments", None, UnsupportedMethod { method: "CONNECT".into() }),
        ];
        for (m, path, query, want) in cases {
            let got = classify(&method(m), path, query);
            assert_eq!(got.as_ref().err(), Some(&want), "{m} {path:?} {query:?}");
            assert!(!want.to_string().is_empty());
        }
    }

    #[test]
    fn validate_path_agrees_with_classify() {
        assert_eq!(validate_path("/api/v1/pods"), Ok(()));
        assert_eq!(validate_path("/"), Ok(()));
        assert_eq!(validate_path("/apis/"), Ok(()));
        assert_eq!(validate_path("/api/v1/namespaces/caf%C3%A9"), Ok(()));
        assert_eq!(validate_path("/a/%2e%2e/b"), Err(ClassifyError::EncodedDot));
        assert_eq!(validate_path("/a/../b"), Err(ClassifyError::DotDotSegment));
        let at_limit = format!("/{}", "a".repeat(MAX_PATH_LEN - 1));
        assert_eq!(validate_path(&at_limit), Ok(()));
    }

    #[test]
    fn path_is_decoded() {
        let info = classify(
            &Method::GET,
            "/api/v1/namespaces/caf%C3%A9/pods/p%20q",
            None,
        )
        .expect("classified");
        assert_eq!(info.path, "/api/v1/namespaces/café/pods/p q");
        assert_eq!(info.namespace, "café");
        assert_eq!(info.name, "p q");
        let trailing = classify(&Method::GET, "/api/v1/pods/", None).expect("classified");
        assert_eq!(trailing.path, "/api/v1/pods/");
    }

    #[test]
    fn helpers() {
        let exec = classify(
            &Method::GET,
            "/api/v1/namespaces/a/pods/b/exec",
            Some("command=sh"),
        )
        .expect("classified");
        assert!(exec.is_streaming_upgrade() && exec.is_mutating() && !exec.is_proxy());

        let list = classify(&Method::GET, "/api/v1/pods", None).expect("classified");
        assert!(!list.is_streaming_upgrade() && !list.is_mutating());

        let watch = classify(&Method::GET, "/api/v1/pods", Some("watch=1")).expect("classified");
        assert!(!watch.is_mutating());

        let delete = classify(&Method::DELETE, "/api/v1/namespaces/a/pods", None).expect("ok");
        assert!(delete.is_mutating());

        let proxy = classify(
            &Method::GET,
            "/api/v1/namespaces/a/services/s/proxy/x",
            None,
        )
        .expect("classified");
        assert!(proxy.is_proxy() && !proxy.is_mutating() && !proxy.is_streaming_upgrade());

        let legacy = classify(&Method::GET, "/api/v1/proxy/nodes/n", None).expect("classified");
        assert!(legacy.is_proxy() && legacy.is_mutating());

        let healthz = classify(&Method::GET, "/healthz", None).expect("classified");
        assert!(!healthz.is_mutating() && !healthz.is_proxy());
        let post = classify(&Method::POST, "/apis", None).expect("classified");
        assert!(post.is_mutating());

        assert_eq!(Verb::DeleteCollection.to_string(), "deletecollection");
        assert_eq!(Verb::NonResource("head".into()).as_str(), "head");
    }

    #[test]
    fn serializes_verb_as_string() {
        let info = classify(&Method::DELETE, "/api/v1/namespaces/a/pods", None).expect("ok");
        let json = serde_json::to_value(&info).expect("serializes");
        assert_eq!(json["verb"], "deletecollection");
        assert_eq!(json["namespace"], "a");
        assert_eq!(json["is_resource_request"], true);
    }

    /// A deterministic stand-in for fuzzing: random paths and queries from
    /// an alphabet of the characters that matter must never panic.
    #[test]
    fn never_panics_on_hostile_input() {
        const PIECES: &[&str] = &[
            "/",
            "//",
            ".",
            "..",
            "%",
            "%2",
            "%2F",
            "%2e",
            "%25",
            "%00",
            "%C3",
            "%A9",
            "%FF",
            "%5C",
            "\\",
            "?",
            "#",
            "\0",
            "\u{85}",
            "é",
            "api",
            "apis",
            "v1",
            "namespaces",
            "ns",
            "pods",
            "exec",
            "watch",
            "proxy",
            "status",
            "finalize",
            "=",
            "&",
            ";",
            "+",
            ",",
            "!",
            "(",
            ")",
            "<",
            ">",
            "in",
            "notin",
            " ",
            "metadata.name",
            "fieldSelector",
            "labelSelector",
            "limit",
            "timeoutSeconds",
            "\\,",
            "\\=",
            "-1",
            "a",
        ];
        const METHODS: &[&str] = &["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"];
        let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for _ in 0..20_000 {
            let mut path = String::new();
            let mut query = String::new();
            for _ in 0..(next() % 12) {
                path.push_str(PIECES[(next() % PIECES.len() as u64) as usize]);
            }
            for _ in 0..(next() % 16) {
                query.push_str(PIECES[(next() % PIECES.len() as u64) as usize]);
            }
            let m = method(METHODS[(next() % METHODS.len() as u64) as usize]);
            let query = (next() % 4 != 0).then_some(query.as_str());
            let _ = classify(&m, &path, query);
            let _ = classify(&m, &format!("/api/v1/{path}"), query);
            let _ = classify(&m, "/api/v1/pods", query);
            let _ = label_selector::is_valid(query.unwrap_or("").as_bytes());
        }
    }
}
