//! Request handling after authentication: discovery, health, and the resource verbs (get, list, watch, create,
//! update, patch, delete, deletecollection), the status/scale/log/exec/attach subresources and the self-review
//! resources, rendering JSON, Table or PartialObjectMetadata as the client asked. Every failure is an `ApiError`
//! answered as a `Status`; this module must never panic on client input.

use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use bytes::Bytes;
use http::{header, HeaderMap, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use serde_json::{json, Map, Value};

use super::auth::UserInfo;
use super::discovery;
use super::exec::{self, ExecError, ExecRequest};
use super::logs;
use super::objects::{self, metadata_mut};
use super::patch::{self, PatchError, PatchType};
use super::protobuf;
use super::query::Query;
use super::resources::{ResourceDef, Storage};
use super::respond::{self, partial_metadata, Body, Output};
use super::routes::{self, ResourcePath, Route};
use super::selectors::{FieldSelector, LabelSelector};
use super::server::State;
use super::status::ApiError;
use super::store::{Preconditions, WatchStart, WriteOptions};
use super::table;
use super::watch::{self, WatchParams};

/// Request bodies larger than this are refused (the API server's limit is 3 MiB for most writes).
const MAX_BODY: usize = 3 * 1024 * 1024;

/// Answers one authenticated request.
pub(crate) async fn handle(
    state: &Arc<State>,
    req: Request<Incoming>,
    user: &UserInfo,
) -> Response<Body> {
    match dispatch(state, req, user).await {
        Ok(response) => response,
        Err(err) => respond::error(&err),
    }
}

async fn dispatch(
    state: &Arc<State>,
    req: Request<Incoming>,
    user: &UserInfo,
) -> Result<Response<Body>, ApiError> {
    let route = routes::parse(req.uri().path())?;
    let read_only = matches!(*req.method(), Method::GET | Method::HEAD);
    let discovery_doc = |doc: Option<Value>| -> Result<Response<Body>, ApiError> {
        if !read_only {
            return Err(ApiError::method_not_allowed());
        }
        doc.map(|d| respond::json(StatusCode::OK, &d))
            .ok_or_else(ApiError::no_route)
    };
    match route {
        Route::Version => discovery_doc(Some(discovery::version())),
        Route::Health => {
            if !read_only {
                return Err(ApiError::method_not_allowed());
            }
            Ok(respond::text(StatusCode::OK, "ok"))
        }
        Route::CoreVersions => discovery_doc(Some(discovery::api_versions(&state.server_address))),
        Route::GroupList => discovery_doc(Some(discovery::api_group_list())),
        Route::Group(group) => discovery_doc(discovery::api_group(&group)),
        Route::ResourceList { group, version } => {
            discovery_doc(discovery::api_resource_list(&group, &version))
        }
        Route::Resource(path) => {
            if matches!(path.subresource.as_deref(), Some("exec" | "attach")) {
                return exec(state, req, &path, user);
            }
            if path.subresource.as_deref() == Some("portforward") {
                return port_forward(state, req, &path);
            }
            let (parts, body) = req.into_parts();
            let body = read_body(body).await?;
            let query = Query::parse(parts.uri.query());
            let ctx = Ctx {
                state,
                method: parts.method,
                headers: parts.headers,
                query,
                body,
                user,
                path,
            };
            ctx.resource().await
        }
    }
}

async fn read_body(body: Incoming) -> Result<Bytes, ApiError> {
    match Limited::new(body, MAX_BODY).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => Err(ApiError::new(
            413,
            "RequestEntityTooLarge",
            "the request body is too large",
        )),
        Err(e) => Err(ApiError::bad_request(format!(
            "reading the request body: {e}"
        ))),
    }
}

fn exec_error(err: ExecError) -> ApiError {
    match err {
        ExecError::Rejected {
            status,
            reason,
            message,
        } => ApiError::new(status.as_u16(), reason, message),
        other => ApiError::internal(other.to_string()),
    }
}

/// pods/exec and pods/attach: validate, answer 101 with the negotiated headers, and serve the session on the
/// upgraded connection in its own task.
fn exec(
    state: &Arc<State>,
    mut req: Request<Incoming>,
    path: &ResourcePath,
    user: &UserInfo,
) -> Result<Response<Body>, ApiError> {
    if !matches!(*req.method(), Method::GET | Method::POST) {
        return Err(ApiError::method_not_allowed());
    }
    let namespace = path.namespace.clone().unwrap_or_default();
    let name = path.name.clone().unwrap_or_default();
    let pod = state
        .store
        .get(path.resource, &namespace, &name)
        .ok_or_else(|| ApiError::not_found(path.resource, &name))?;
    let attach = path.subresource.as_deref() == Some("attach");
    let request =
        ExecRequest::from_query(&namespace, &name, attach, req.uri().query(), &user.username)
            .map_err(exec_error)?;
    if let Some(container) = &request.container {
        logs::choose_container(&pod, Some(container))?;
    }
    let (headers, protocol) = exec::negotiate(req.headers()).map_err(exec_error)?;
    let on_upgrade = hyper::upgrade::on(&mut req);
    let mut shutdown = state.shutdown.clone();
    tokio::spawn(async move {
        let upgraded = match on_upgrade.await {
            Ok(u) => u,
            Err(e) => {
                tracing::debug!(error = %e, "exec upgrade did not complete");
                return;
            }
        };
        tokio::select! {
            result = exec::run(TokioIo::new(upgraded), protocol, request) => {
                if let Err(e) = result {
                    tracing::debug!(error = %e, "exec session ended with an error");
                }
            }
            _ = shutdown.changed() => {}
        }
    });
    let mut response = Response::new(respond::empty());
    *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    response.headers_mut().extend(headers);
    Ok(response)
}

/// pods/portforward: answer 101 and serve the echo "pod ports" on the upgraded connection in its own task.
fn port_forward(
    state: &Arc<State>,
    mut req: Request<Incoming>,
    path: &ResourcePath,
) -> Result<Response<Body>, ApiError> {
    if !matches!(*req.method(), Method::GET | Method::POST) {
        return Err(ApiError::method_not_allowed());
    }
    let namespace = path.namespace.clone().unwrap_or_default();
    let name = path.name.clone().unwrap_or_default();
    state
        .store
        .get(path.resource, &namespace, &name)
        .ok_or_else(|| ApiError::not_found(path.resource, &name))?;
    let (headers, transport) = exec::portforward::negotiate(req.headers()).map_err(exec_error)?;
    let on_upgrade = hyper::upgrade::on(&mut req);
    let mut shutdown = state.shutdown.clone();
    tokio::spawn(async move {
        let upgraded = match on_upgrade.await {
            Ok(u) => u,
            Err(e) => {
                tracing::debug!(error = %e, "port-forward upgrade did not complete");
                return;
            }
        };
        tokio::select! {
            result = exec::portforward::run(TokioIo::new(upgraded), transport) => {
                if let Err(e) = result {
                    tracing::debug!(error = %e, "port-forward session ended with an error");
                }
            }
            _ = shutdown.changed() => {}
        }
    });
    let mut response = Response::new(respond::empty());
    *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    response.headers_mut().extend(headers);
    Ok(response)
}

/// One resource request with its body read.
struct Ctx<'a> {
    state: &'a Arc<State>,
    method: Method,
    headers: HeaderMap,
    query: Query,
    body: Bytes,
    user: &'a UserInfo,
    path: ResourcePath,
}

fn header(headers: &HeaderMap, name: header::HeaderName) -> Option<&str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

impl Ctx<'_> {
    fn res(&self) -> &'static ResourceDef {
        self.path.resource
    }

    fn namespace(&self) -> &str {
        self.path.namespace.as_deref().unwrap_or_default()
    }

    fn name(&self) -> &str {
        self.path.name.as_deref().unwrap_or_default()
    }

    fn output(&self) -> Output {
        Output::negotiate(
            header(&self.headers, header::ACCEPT),
            self.query.get("includeObject"),
        )
    }

    fn write_options(&self) -> WriteOptions {
        WriteOptions {
            dry_run: self.query.dry_run(),
        }
    }

    fn require(&self, verb: &str) -> Result<(), ApiError> {
        if self.res().allows(verb) {
            Ok(())
        } else {
            Err(ApiError::method_not_allowed())
        }
    }

    fn watching(&self) -> bool {
        self.path.legacy_watch || self.query.flag("watch")
    }

    async fn resource(&self) -> Result<Response<Body>, ApiError> {
        let res = self.res();
        if res.storage == Storage::Review {
            return match (&self.method, &self.path.name) {
                (&Method::POST, None) => self.review(),
                _ => Err(ApiError::method_not_allowed()),
            };
        }
        if let Some(sub) = self.path.subresource.clone() {
            return self.subresource(&sub);
        }
        let has_name = self.path.name.is_some();
        match (&self.method, has_name) {
            (&Method::GET | &Method::HEAD, _) if self.watching() => {
                self.require("watch")?;
                self.watch()
            }
            (&Method::GET | &Method::HEAD, false) => {
                self.require("list")?;
                self.list()
            }
            (&Method::GET | &Method::HEAD, true) => {
                self.require("get")?;
                self.get()
            }
            (&Method::POST, false) if self.path.namespace.is_some() || !res.namespaced => {
                self.require("create")?;
                self.create()
            }
            (&Method::PUT, true) => {
                self.require("update")?;
                self.update()
            }
            (&Method::PATCH, true) => {
                self.require("patch")?;
                self.patch()
            }
            (&Method::DELETE, true) => {
                self.require("delete")?;
                self.delete()
            }
            (&Method::DELETE, false) if self.path.namespace.is_some() || !res.namespaced => {
                self.require("deletecollection")?;
                self.delete_collection()
            }
            _ => Err(ApiError::method_not_allowed()),
        }
    }

    fn render_object(&self, code: StatusCode, obj: &Value) -> Response<Body> {
        match self.output() {
            Output::Json => respond::json(code, obj),
            Output::PartialMetadata => {
                respond::json_as(code, respond::PARTIAL, &partial_metadata(obj))
            }
            Output::Table(include) => {
                let meta = json!({"resourceVersion": obj["metadata"]["resourceVersion"]});
                let t = table::to_table(
                    self.res().plural,
                    std::slice::from_ref(obj),
                    meta,
                    include,
                    true,
                );
                respond::json_as(code, respond::TABLE, &t)
            }
        }
    }

    fn render_list(&self, items: Vec<Value>, metadata: Value) -> Response<Body> {
        let res = self.res();
        match self.output() {
            Output::Json => {
                // The API server's list items carry no kind/apiVersion; clients know them from the list.
                let items: Vec<Value> = items
                    .into_iter()
                    .map(|mut o| {
                        if let Some(m) = o.as_object_mut() {
                            m.remove("kind");
                            m.remove("apiVersion");
                        }
                        o
                    })
                    .collect();
                let list = json!({
                    "kind": format!("{}List", res.kind),
                    "apiVersion": res.api_version(),
                    "metadata": metadata,
                    "items": items,
                });
                respond::json(StatusCode::OK, &list)
            }
            Output::PartialMetadata => {
                let items: Vec<Value> = items.iter().map(partial_metadata).collect();
                let list = json!({
                    "kind": "PartialObjectMetadataList",
                    "apiVersion": "meta.k8s.io/v1",
                    "metadata": metadata,
                    "items": items,
                });
                respond::json_as(StatusCode::OK, respond::PARTIAL_LIST, &list)
            }
            Output::Table(include) => {
                let t = table::to_table(res.plural, &items, metadata, include, true);
                respond::json_as(StatusCode::OK, respond::TABLE, &t)
            }
        }
    }

    fn selectors(&self) -> Result<(LabelSelector, FieldSelector), ApiError> {
        let labels = LabelSelector::parse(self.query.get("labelSelector").unwrap_or_default())
            .map_err(|e| ApiError::bad_request(e.to_string()))?;
        let mut fields = FieldSelector::parse(
            self.query.get("fieldSelector").unwrap_or_default(),
            self.res(),
        )
        .map_err(|e| ApiError::bad_request(e.to_string()))?;
        if let Some(name) = &self.path.name {
            fields = fields.and(FieldSelector::for_name(name));
        }
        Ok((labels, fields))
    }

    /// The object in the request body: JSON, or Kubernetes protobuf decoded by `protobuf`.
    fn body_object(&self) -> Result<Value, ApiError> {
        if self.body.is_empty() {
            return Err(ApiError::bad_request("the body of the request was empty"));
        }
        let content_type =
            header(&self.headers, header::CONTENT_TYPE).unwrap_or("application/json");
        let obj: Value = if protobuf::is_protobuf(content_type) {
            protobuf::decode_object(&self.body).map_err(|e| {
                ApiError::new(
                    415,
                    "UnsupportedMediaType",
                    format!("the body of the request could not be decoded: {e}"),
                )
            })?
        } else if is_json_like(content_type) {
            serde_json::from_slice(&self.body).map_err(|e| {
                ApiError::bad_request(format!(
                    "the body of the request could not be decoded as JSON: {e}"
                ))
            })?
        } else {
            return Err(ApiError::unsupported_media_type(content_type));
        };
        if !obj.is_object() {
            return Err(ApiError::bad_request(
                "the body of the request must be a JSON object",
            ));
        }
        Ok(obj)
    }

    /// The body object, checked to be of this resource's kind.
    fn typed_body(&self, kind: &str, api_version: &str) -> Result<Value, ApiError> {
        let obj = self.body_object()?;
        if let Some(v) = obj
            .get("apiVersion")
            .and_then(Value::as_str)
            .filter(|v| !v.is_empty())
        {
            if v != api_version {
                return Err(ApiError::bad_request(format!(
                    "the API version in the data ({v}) does not match the expected API version ({api_version})"
                )));
            }
        }
        if let Some(k) = obj
            .get("kind")
            .and_then(Value::as_str)
            .filter(|k| !k.is_empty())
        {
            if k != kind {
                return Err(ApiError::bad_request(format!(
                    "{k} in version \"{api_version}\" cannot be handled as a {kind}: the kind in the data does not \
                     match the expected kind"
                )));
            }
        }
        Ok(obj)
    }

    fn get(&self) -> Result<Response<Body>, ApiError> {
        let obj = self.load()?;
        Ok(self.render_object(StatusCode::OK, &obj))
    }

    fn load(&self) -> Result<Value, ApiError> {
        self.state
            .store
            .get(self.res(), self.namespace(), self.name())
            .ok_or_else(|| ApiError::not_found(self.res(), self.name()))
    }

    fn list(&self) -> Result<Response<Body>, ApiError> {
        let (labels, fields) = self.selectors()?;
        let (items, rv) = self
            .state
            .store
            .list(self.res(), self.path.namespace.as_deref());
        let mut items: Vec<Value> = items
            .into_iter()
            .filter(|o| labels.matches(o) && fields.matches(o))
            .collect();
        let mut metadata = json!({"resourceVersion": rv.to_string()});
        if let Some(token) = self.query.non_empty("continue") {
            let after = decode_continue(token)?;
            items.retain(|o| object_key(o) > after);
        }
        let limit = self
            .query
            .number("limit")
            .map_err(ApiError::bad_request)?
            .filter(|l| *l > 0);
        if let Some(limit) = limit.map(|l| l as usize) {
            if items.len() > limit {
                let remaining = items.len() - limit;
                items.truncate(limit);
                let last = items.last().map(object_key).unwrap_or_default();
                metadata["continue"] = json!(encode_continue(rv, &last));
                metadata["remainingItemCount"] = json!(remaining);
            }
        }
        Ok(self.render_list(items, metadata))
    }

    fn watch(&self) -> Result<Response<Body>, ApiError> {
        let (labels, fields) = self.selectors()?;
        let send_initial_events = self.query.flag("sendInitialEvents");
        let start = match self.query.non_empty("resourceVersion") {
            _ if send_initial_events => WatchStart::Current,
            None | Some("0") => WatchStart::Current,
            Some(rv) => WatchStart::After(rv.parse().map_err(|_| {
                ApiError::bad_request(format!(
                    "resourceVersion: Invalid value: {rv:?}: must be a number"
                ))
            })?),
        };
        let timeout = self
            .query
            .number("timeoutSeconds")
            .map_err(ApiError::bad_request)?
            .filter(|t| *t > 0)
            .map(Duration::from_secs);
        let params = WatchParams {
            resource: self.res(),
            namespace: self.path.namespace.clone(),
            labels,
            fields,
            start,
            timeout,
            bookmarks: self.query.flag("allowWatchBookmarks"),
            send_initial_events,
            output: self.output(),
        };
        Ok(watch::serve(
            &self.state.store,
            params,
            self.state.shutdown.clone(),
        ))
    }

    fn create(&self) -> Result<Response<Body>, ApiError> {
        let res = self.res();
        if self
            .query
            .get("fieldValidation")
            .is_some_and(|v| !matches!(v, "Ignore" | "Warn" | "Strict" | ""))
        {
            return Err(ApiError::bad_request(
                "fieldValidation must be one of Ignore, Warn, Strict",
            ));
        }
        let obj = self.typed_body(res.kind, &res.api_version())?;
        self.check_body_namespace(&obj)?;
        let created = self
            .state
            .store
            .create(res, self.namespace(), obj, self.write_options())?;
        Ok(self.render_object(StatusCode::CREATED, &created))
    }

    fn check_body_namespace(&self, obj: &Value) -> Result<(), ApiError> {
        let body_ns = objects::namespace_of(obj);
        if self.res().namespaced && !body_ns.is_empty() && body_ns != self.namespace() {
            return Err(ApiError::bad_request(
                "the namespace of the provided object does not match the namespace sent on the request",
            ));
        }
        Ok(())
    }

    /// Whether writes to the main resource leave `.status` alone (resources with a status subresource).
    fn has_status(&self) -> bool {
        self.res().subresource("status").is_some()
    }

    fn update(&self) -> Result<Response<Body>, ApiError> {
        let res = self.res();
        let obj = self.typed_body(res.kind, &res.api_version())?;
        self.check_body_namespace(&obj)?;
        let keep_status = self.has_status();
        let updated = self.state.store.modify(
            res,
            self.namespace(),
            self.name(),
            self.write_options(),
            false,
            |current| {
                let mut next = obj;
                if keep_status {
                    copy_field(current, &mut next, "status");
                }
                Ok(next)
            },
        )?;
        Ok(self.render_object(StatusCode::OK, &updated))
    }

    fn patch_type(&self) -> Result<PatchType, ApiError> {
        let content_type = header(&self.headers, header::CONTENT_TYPE).unwrap_or_default();
        PatchType::from_content_type(content_type)
            .ok_or_else(|| ApiError::unsupported_patch(content_type))
    }

    fn patch(&self) -> Result<Response<Body>, ApiError> {
        let res = self.res();
        let kind = self.patch_type()?;
        if kind == PatchType::Apply {
            let applied: Value = serde_json::from_slice(&self.body).map_err(|_| {
                ApiError::new(
                    415,
                    "UnsupportedMediaType",
                    "the test double only accepts apply patches written as JSON",
                )
            })?;
            if self
                .state
                .store
                .get(res, self.namespace(), self.name())
                .is_none()
            {
                let mut obj = applied;
                self.check_body_namespace(&obj)?;
                metadata_mut(&mut obj).insert("name".into(), json!(self.name()));
                let created =
                    self.state
                        .store
                        .create(res, self.namespace(), obj, self.write_options())?;
                return Ok(self.render_object(StatusCode::CREATED, &created));
            }
        }
        let keep_status = self.has_status();
        let body = &self.body;
        let updated = self.state.store.modify(
            res,
            self.namespace(),
            self.name(),
            self.write_options(),
            false,
            |current| {
                let mut next = patch::apply(kind, current, body).map_err(patch_error)?;
                if keep_status {
                    copy_field(current, &mut next, "status");
                }
                Ok(next)
            },
        )?;
        Ok(self.render_object(StatusCode::OK, &updated))
    }

    fn delete_options(&self) -> Result<(Preconditions, bool), ApiError> {
        let mut dry_run = self.query.dry_run();
        if self.body.is_empty() {
            return Ok((Preconditions::default(), dry_run));
        }
        let content_type =
            header(&self.headers, header::CONTENT_TYPE).unwrap_or("application/json");
        // DeleteOptions only tune the deletion; a body the double cannot decode is accepted and ignored, so a
        // client sending protobuf DeleteOptions still gets its object deleted.
        let options: Value = if protobuf::is_protobuf(content_type) {
            protobuf::decode_object(&self.body).unwrap_or(Value::Null)
        } else {
            serde_json::from_slice(&self.body).map_err(|e| {
                ApiError::bad_request(format!("the body of the request could not be decoded: {e}"))
            })?
        };
        let pre = Preconditions {
            uid: options
                .pointer("/preconditions/uid")
                .and_then(Value::as_str)
                .map(str::to_string),
            resource_version: options
                .pointer("/preconditions/resourceVersion")
                .and_then(Value::as_str)
                .map(str::to_string),
        };
        if options["dryRun"]
            .as_array()
            .is_some_and(|a| a.iter().any(|v| v == "All"))
        {
            dry_run = true;
        }
        Ok((pre, dry_run))
    }

    fn delete(&self) -> Result<Response<Body>, ApiError> {
        let (pre, dry_run) = self.delete_options()?;
        let deleted = self.state.store.delete(
            self.res(),
            self.namespace(),
            self.name(),
            &pre,
            WriteOptions { dry_run },
        )?;
        Ok(self.render_object(StatusCode::OK, &deleted))
    }

    fn delete_collection(&self) -> Result<Response<Body>, ApiError> {
        let (labels, fields) = self.selectors()?;
        let (_, dry_run) = self.delete_options()?;
        let deleted = self.state.store.delete_collection(
            self.res(),
            self.path.namespace.as_deref(),
            WriteOptions { dry_run },
            |o| labels.matches(o) && fields.matches(o),
        );
        let rv = self.state.store.current_rv();
        Ok(self.render_list(deleted, json!({"resourceVersion": rv.to_string()})))
    }

    fn subresource(&self, sub: &str) -> Result<Response<Body>, ApiError> {
        let res = self.res();
        let allowed = res.subresource(sub).map(|s| s.verbs).unwrap_or_default();
        let verb = match self.method {
            Method::GET | Method::HEAD => "get",
            Method::PUT => "update",
            Method::PATCH => "patch",
            Method::POST => "create",
            _ => "",
        };
        if !allowed.contains(&verb) {
            return Err(ApiError::method_not_allowed());
        }
        match (sub, verb) {
            ("log", _) => {
                let pod = self.load()?;
                logs::serve(&pod, &self.query, self.state.shutdown.clone())
            }
            ("status", "get") => self.get(),
            ("status", _) | ("finalize", _) => self.write_status(sub == "finalize"),
            ("scale", _) => self.scale(),
            _ => Err(ApiError::method_not_allowed()),
        }
    }

    /// PUT/PATCH on `status` (or a namespace's `finalize`): only `.status` (or `.spec.finalizers`) changes.
    fn write_status(&self, finalize: bool) -> Result<Response<Body>, ApiError> {
        let res = self.res();
        let given = if self.method == Method::PUT {
            let obj = self.typed_body(res.kind, &res.api_version())?;
            self.check_body_namespace(&obj)?;
            Some(obj)
        } else {
            None
        };
        let kind = if given.is_none() {
            Some(self.patch_type()?)
        } else {
            None
        };
        let body = &self.body;
        let updated = self.state.store.modify(
            res,
            self.namespace(),
            self.name(),
            self.write_options(),
            true,
            |current| {
                let desired = match (&given, kind) {
                    (Some(obj), _) => obj.clone(),
                    (None, Some(kind)) => patch::apply(kind, current, body).map_err(patch_error)?,
                    (None, None) => current.clone(),
                };
                let mut next = current.clone();
                if finalize {
                    let finalizers = desired
                        .pointer("/spec/finalizers")
                        .cloned()
                        .unwrap_or(json!([]));
                    next["spec"]["finalizers"] = finalizers;
                } else {
                    copy_field(&desired, &mut next, "status");
                }
                copy_resource_version(&desired, &mut next);
                Ok(next)
            },
        )?;
        Ok(self.render_object(StatusCode::OK, &updated))
    }

    /// deployments/scale: an autoscaling/v1 Scale view of `.spec.replicas`.
    fn scale(&self) -> Result<Response<Body>, ApiError> {
        let res = self.res();
        if self.method == Method::GET || self.method == Method::HEAD {
            let obj = self.load()?;
            return Ok(respond::json(StatusCode::OK, &scale_of(&obj)));
        }
        let given = if self.method == Method::PUT {
            Some(self.typed_body("Scale", "autoscaling/v1")?)
        } else {
            None
        };
        let kind = if given.is_none() {
            Some(self.patch_type()?)
        } else {
            None
        };
        let body = &self.body;
        let updated = self.state.store.modify(
            res,
            self.namespace(),
            self.name(),
            self.write_options(),
            false,
            |current| {
                let desired = match (&given, kind) {
                    (Some(obj), _) => obj.clone(),
                    (None, Some(kind)) => {
                        patch::apply(kind, &scale_of(current), body).map_err(patch_error)?
                    }
                    (None, None) => scale_of(current),
                };
                let replicas = desired
                    .pointer("/spec/replicas")
                    .and_then(Value::as_i64)
                    .unwrap_or(0);
                if replicas < 0 {
                    return Err(ApiError::invalid(
                        res,
                        objects::name_of(current),
                        "spec.replicas",
                        format!("Invalid value: {replicas}: must be greater than or equal to 0"),
                    ));
                }
                let mut next = current.clone();
                next["spec"]["replicas"] = json!(replicas);
                copy_resource_version(&desired, &mut next);
                Ok(next)
            },
        )?;
        Ok(respond::json(StatusCode::OK, &scale_of(&updated)))
    }

    fn review(&self) -> Result<Response<Body>, ApiError> {
        let res = self.res();
        let body = if self.body.is_empty() {
            json!({})
        } else {
            self.typed_body(res.kind, &res.api_version())?
        };
        let mut review = json!({
            "kind": res.kind,
            "apiVersion": res.api_version(),
            "metadata": {"creationTimestamp": null},
        });
        match res.kind {
            "SelfSubjectReview" => {
                review["status"] = json!({"userInfo": user_info_json(self.user)});
            }
            "SelfSubjectAccessReview" => {
                review["spec"] = body.get("spec").cloned().unwrap_or(json!({}));
                review["status"] = json!({
                    "allowed": true,
                    "reason": "the Kubernetes API test double allows every request",
                });
            }
            "SelfSubjectRulesReview" => {
                review["spec"] = body.get("spec").cloned().unwrap_or(json!({}));
                review["status"] = json!({
                    "resourceRules": [{"verbs": ["*"], "apiGroups": ["*"], "resources": ["*"]}],
                    "nonResourceRules": [{"verbs": ["*"], "nonResourceURLs": ["*"]}],
                    "incomplete": false,
                });
            }
            _ => return Err(ApiError::method_not_allowed()),
        }
        Ok(respond::json(StatusCode::CREATED, &review))
    }
}

fn user_info_json(user: &UserInfo) -> Value {
    let mut info = Map::new();
    info.insert("username".into(), json!(user.username));
    if let Some(uid) = &user.uid {
        info.insert("uid".into(), json!(uid));
    }
    info.insert("groups".into(), json!(user.groups));
    if !user.extra.is_empty() {
        info.insert("extra".into(), json!(user.extra));
    }
    Value::Object(info)
}

fn is_json_like(content_type: &str) -> bool {
    let media = content_type
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    media == "application/json" || media.ends_with("+json") || media == "*/*"
}

fn patch_error(err: PatchError) -> ApiError {
    match err {
        PatchError::Malformed(m) => ApiError::bad_request(m),
        PatchError::NotApplicable(m) => ApiError::new(422, "Invalid", m),
    }
}

fn copy_field(from: &Value, to: &mut Value, key: &str) {
    if let Some(map) = to.as_object_mut() {
        match from.get(key) {
            Some(v) => map.insert(key.into(), v.clone()),
            None => map.remove(key),
        };
    }
}

/// Carries the client's `metadata.resourceVersion` (the optimistic-concurrency precondition) into the object the
/// store will check, or drops it when the client sent none.
fn copy_resource_version(from: &Value, to: &mut Value) {
    let rv = from.pointer("/metadata/resourceVersion").cloned();
    let meta = metadata_mut(to);
    match rv {
        Some(v) => meta.insert("resourceVersion".into(), v),
        None => meta.remove("resourceVersion"),
    };
}

fn scale_of(deployment: &Value) -> Value {
    let meta = &deployment["metadata"];
    let selector: Vec<String> = deployment
        .pointer("/spec/selector/matchLabels")
        .and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default()))
                .collect()
        })
        .unwrap_or_default();
    json!({
        "kind": "Scale",
        "apiVersion": "autoscaling/v1",
        "metadata": {
            "name": meta["name"], "namespace": meta["namespace"], "uid": meta["uid"],
            "resourceVersion": meta["resourceVersion"], "creationTimestamp": meta["creationTimestamp"],
        },
        "spec": {"replicas": deployment.pointer("/spec/replicas").cloned().unwrap_or(json!(1))},
        "status": {
            "replicas": deployment.pointer("/status/replicas").cloned().unwrap_or(json!(0)),
            "selector": selector.join(","),
        },
    })
}

/// The namespace/name key list pagination resumes after.
fn object_key(obj: &Value) -> String {
    format!("{}/{}", objects::namespace_of(obj), objects::name_of(obj))
}

fn encode_continue(rv: u64, after: &str) -> String {
    let token = json!({"v": "meta.k8s.io/v1", "rv": rv, "start": after});
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(token.to_string())
}

fn decode_continue(token: &str) -> Result<String, ApiError> {
    let invalid = || {
        ApiError::bad_request("continue key is not valid: incorrect encoded start resourceVersion")
    };
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(token.trim_end_matches('='))
        .map_err(|_| invalid())?;
    let value: Value = serde_json::from_slice(&bytes).map_err(|_| invalid())?;
    value["start"]
        .as_str()
        .map(str::to_string)
        .ok_or_else(invalid)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn continue_tokens_round_trip() {
        let t = encode_continue(42, "default/web-0");
        assert_eq!(decode_continue(&t).unwrap(), "default/web-0");
        assert_eq!(decode_continue("!!").unwrap_err().code, 400);
    }

    #[test]
    fn scale_view() {
        let d = json!({"metadata": {"name": "web", "namespace": "default", "resourceVersion": "7"},
                       "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "web"}}},
                       "status": {"replicas": 2}});
        let s = scale_of(&d);
        assert_eq!(s["spec"]["replicas"], 2);
        assert_eq!(s["status"]["selector"], "app=web");
        assert_eq!(s["metadata"]["resourceVersion"], "7");
    }

    #[test]
    fn json_media_types() {
        assert!(is_json_like("application/json; charset=utf-8"));
        assert!(is_json_like("application/merge-patch+json"));
        assert!(!is_json_like("application/yaml"));
        assert!(!is_json_like("text/plain"));
    }
}
