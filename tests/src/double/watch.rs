//! Watch responses: a chunked stream of `{"type": ..., "object": ...}` lines (JSON, Table or PartialObjectMetadata
//! objects), starting with synthetic ADDED events or a replay from a resourceVersion, then live changes, with
//! selectors, bookmarks, `timeoutSeconds`, and 410 Gone as an ERROR event. It never holds the store lock while
//! writing, and every stream ends when the client goes away or the double shuts down.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use hyper::body::Frame;
use serde_json::{json, Value};
use tokio::sync::{broadcast, mpsc};

use super::resources::ResourceDef;
use super::respond::{self, partial_metadata, Body, Output};
use super::selectors::{FieldSelector, LabelSelector};
use super::status::ApiError;
use super::store::{ChangeEvent, EventType, Store, WatchStart};
use super::table;

/// How often an idle watch that allows bookmarks gets one.
const BOOKMARK_INTERVAL: Duration = Duration::from_secs(10);

/// Everything that shapes one watch.
pub struct WatchParams {
    pub resource: &'static ResourceDef,
    pub namespace: Option<String>,
    pub labels: LabelSelector,
    pub fields: FieldSelector,
    pub start: WatchStart,
    pub timeout: Option<Duration>,
    pub bookmarks: bool,
    /// `sendInitialEvents=true`: mark the end of the initial ADDED events with an annotated BOOKMARK.
    pub send_initial_events: bool,
    pub output: Output,
}

type Sender = mpsc::Sender<Result<Frame<Bytes>, Infallible>>;

/// Starts the stream; the response is returned at once and events follow as they happen.
pub fn serve(
    store: &Store,
    params: WatchParams,
    shutdown: tokio::sync::watch::Receiver<bool>,
) -> http::Response<Body> {
    let content_type = match params.output {
        Output::Json => respond::JSON,
        Output::Table(_) => respond::TABLE,
        Output::PartialMetadata => respond::PARTIAL,
    };
    let (tx, response) = respond::streaming(content_type);
    let feed = store.watch(params.resource, params.namespace.as_deref(), params.start);
    tokio::spawn(async move {
        match feed {
            Ok(feed) => {
                let mut writer = EventWriter::new(&params, tx);
                let ended = run(
                    &mut writer,
                    &params,
                    feed.initial,
                    feed.live,
                    feed.rv,
                    shutdown,
                )
                .await;
                if let Err(gone) = ended {
                    writer.error(&gone).await;
                }
            }
            // A watch from a compacted resourceVersion is answered 200 with one ERROR event, as the watch cache
            // does; clients then relist.
            Err(err) => {
                EventWriter::new(&params, tx).error(&err).await;
            }
        }
    });
    response
}

struct EventWriter {
    tx: Sender,
    output: Output,
    plural: &'static str,
    kind: &'static str,
    api_version: String,
    columns_sent: bool,
}

impl EventWriter {
    fn new(params: &WatchParams, tx: Sender) -> Self {
        Self {
            tx,
            output: params.output,
            plural: params.resource.plural,
            kind: params.resource.kind,
            api_version: params.resource.api_version(),
            columns_sent: false,
        }
    }

    /// Sends one event line; false when the client is gone.
    async fn send(&mut self, event_type: &str, object: Value) -> bool {
        let mut line =
            serde_json::to_vec(&json!({"type": event_type, "object": object})).unwrap_or_default();
        line.push(b'\n');
        self.tx
            .send(Ok(Frame::data(Bytes::from(line))))
            .await
            .is_ok()
    }

    async fn object(&mut self, event_type: EventType, obj: &Value) -> bool {
        let object = match self.output {
            Output::Json => obj.clone(),
            Output::PartialMetadata => partial_metadata(obj),
            Output::Table(include) => {
                let meta = json!({"resourceVersion": obj["metadata"]["resourceVersion"]});
                let first = !self.columns_sent;
                self.columns_sent = true;
                table::to_table(self.plural, std::slice::from_ref(obj), meta, include, first)
            }
        };
        self.send(event_type.as_str(), object).await
    }

    async fn bookmark(&mut self, rv: u64, initial_events_end: bool) -> bool {
        let mut metadata = json!({"resourceVersion": rv.to_string(), "creationTimestamp": null});
        if initial_events_end {
            metadata["annotations"] = json!({"k8s.io/initial-events-end": "true"});
        }
        let object = match self.output {
            Output::PartialMetadata => {
                json!({"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1",
                                              "metadata": metadata})
            }
            _ => json!({"kind": self.kind, "apiVersion": self.api_version, "metadata": metadata}),
        };
        self.send("BOOKMARK", object).await
    }

    async fn error(&mut self, err: &ApiError) {
        let _ = self.send("ERROR", err.to_status()).await;
    }
}

/// What a change event looks like to a watcher with selectors: objects moving into or out of the selection become
/// ADDED or DELETED, as the API server's filtered watches report them.
fn visible(params: &WatchParams, event: &ChangeEvent) -> Option<EventType> {
    if params
        .namespace
        .as_deref()
        .is_some_and(|ns| ns != event.namespace)
    {
        return None;
    }
    let selected = |o: &Value| params.labels.matches(o) && params.fields.matches(o);
    let now = selected(&event.object);
    match (event.event_type, event.previous.as_ref().map(selected)) {
        (EventType::Modified, Some(before)) => match (before, now) {
            (true, true) => Some(EventType::Modified),
            (false, true) => Some(EventType::Added),
            (true, false) => Some(EventType::Deleted),
            (false, false) => None,
        },
        (t, _) => now.then_some(t),
    }
}

/// Streams initial then live events until the client leaves, the timeout passes or the double stops.
/// Returns the 410 to send when this watcher fell behind the live feed.
async fn run(
    writer: &mut EventWriter,
    params: &WatchParams,
    initial: Vec<Arc<ChangeEvent>>,
    mut live: broadcast::Receiver<Arc<ChangeEvent>>,
    start_rv: u64,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) -> Result<(), ApiError> {
    let deadline = params.timeout.map(|t| tokio::time::Instant::now() + t);
    let mut last_rv = match params.start {
        WatchStart::After(rv) => rv,
        WatchStart::Current => 0,
    };
    for event in &initial {
        if let Some(t) = visible(params, event) {
            if !writer.object(t, &event.object).await {
                return Ok(());
            }
        }
        last_rv = last_rv.max(event.rv);
    }
    last_rv = last_rv.max(start_rv);
    if params.send_initial_events && params.bookmarks && !writer.bookmark(last_rv, true).await {
        return Ok(());
    }
    let mut ticker = tokio::time::interval_at(
        tokio::time::Instant::now() + BOOKMARK_INTERVAL,
        BOOKMARK_INTERVAL,
    );
    loop {
        let sleep = async {
            match deadline {
                Some(d) => tokio::time::sleep_until(d).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = writer.tx.closed() => return Ok(()),
            _ = shutdown.changed() => return Ok(()),
            _ = sleep => return Ok(()),
            _ = ticker.tick(), if params.bookmarks && !matches!(params.output, Output::Table(_)) => {
                if !writer.bookmark(last_rv, false).await {
                    return Ok(());
                }
            }
            received = live.recv() => match received {
                Ok(event) => {
                    if event.rv <= last_rv || !std::ptr::eq(event.resource, params.resource) {
                        continue;
                    }
                    last_rv = event.rv;
                    if let Some(t) = visible(params, &event) {
                        if !writer.object(t, &event.object).await {
                            return Ok(());
                        }
                    }
                }
                Err(broadcast::error::RecvError::Lagged(_)) => {
                    return Err(ApiError::gone(last_rv, last_rv + 1));
                }
                Err(broadcast::error::RecvError::Closed) => return Ok(()),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::double::resources::lookup;

    fn event(event_type: EventType, labels: Value, previous: Option<Value>) -> ChangeEvent {
        ChangeEvent {
            rv: 5,
            event_type,
            resource: lookup("", "v1", "configmaps").unwrap(),
            namespace: "default".into(),
            object: json!({"metadata": {"name": "a", "labels": labels}}),
            previous: previous.map(|l| json!({"metadata": {"name": "a", "labels": l}})),
        }
    }

    fn params(selector: &str, namespace: Option<&str>) -> WatchParams {
        WatchParams {
            resource: lookup("", "v1", "configmaps").unwrap(),
            namespace: namespace.map(str::to_string),
            labels: LabelSelector::parse(selector).unwrap(),
            fields: FieldSelector::default(),
            start: WatchStart::Current,
            timeout: None,
            bookmarks: false,
            send_initial_events: false,
            output: Output::Json,
        }
    }

    #[test]
    fn selection_transitions() {
        let p = params("app=web", None);
        let web = json!({"app": "web"});
        let db = json!({"app": "db"});
        assert_eq!(
            visible(&p, &event(EventType::Added, web.clone(), None)),
            Some(EventType::Added)
        );
        assert_eq!(
            visible(&p, &event(EventType::Added, db.clone(), None)),
            None
        );
        assert_eq!(
            visible(
                &p,
                &event(EventType::Modified, web.clone(), Some(db.clone()))
            ),
            Some(EventType::Added)
        );
        assert_eq!(
            visible(
                &p,
                &event(EventType::Modified, db.clone(), Some(web.clone()))
            ),
            Some(EventType::Deleted)
        );
        assert_eq!(
            visible(
                &p,
                &event(EventType::Modified, web.clone(), Some(web.clone()))
            ),
            Some(EventType::Modified)
        );
        assert_eq!(
            visible(&p, &event(EventType::Deleted, web.clone(), None)),
            Some(EventType::Deleted)
        );
        assert_eq!(
            visible(
                &params("", Some("other")),
                &event(EventType::Added, web, None)
            ),
            None
        );
    }
}
