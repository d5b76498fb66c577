//! `pods/NAME/log`: synthetic container logs ("<time> log line N from POD/CONTAINER"), with container choice,
//! `tailLines`, `sinceSeconds`, `limitBytes`, `timestamps`, and `follow` streaming one new line every 300 ms until the
//! client goes away. It never reads real logs and never keeps a task alive after the client or the double is gone.

use std::time::Duration;

use bytes::Bytes;
use chrono::{DateTime, SecondsFormat, Utc};
use http::StatusCode;
use hyper::body::Frame;
use serde_json::Value;

use super::query::Query;
use super::respond::{self, Body};
use super::status::ApiError;

/// Lines every container has logged by the time anyone asks.
pub const INITIAL_LINES: u64 = 20;
/// The pace of new lines under `follow=true`.
pub const FOLLOW_INTERVAL: Duration = Duration::from_millis(300);

const TEXT: &str = "text/plain";

/// The container a log request is about, or the 400 the API server gives.
pub fn choose_container(pod: &Value, requested: Option<&str>) -> Result<String, ApiError> {
    let pod_name = pod["metadata"]["name"].as_str().unwrap_or_default();
    let names = |key: &str| -> Vec<String> {
        pod["spec"][key]
            .as_array()
            .map(|l| {
                l.iter()
                    .filter_map(|c| c["name"].as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default()
    };
    let containers = names("containers");
    let mut all = names("initContainers");
    all.extend(containers.iter().cloned());
    match requested {
        Some(c) if all.iter().any(|n| n == c) => Ok(c.to_string()),
        Some(c) => Err(ApiError::bad_request(format!(
            "container {c} is not valid for pod {pod_name}"
        ))),
        None => match containers.as_slice() {
            [only] => Ok(only.clone()),
            [] => Err(ApiError::bad_request(format!(
                "pod {pod_name} has no containers"
            ))),
            many => {
                let default = pod["metadata"]["annotations"]
                    ["kubectl.kubernetes.io/default-container"]
                    .as_str();
                match default.filter(|d| many.iter().any(|n| n == d)) {
                    Some(d) => Ok(d.to_string()),
                    None => Err(ApiError::bad_request(format!(
                        "a container name must be specified for pod {pod_name}, choose one of: [{}]",
                        many.join(" ")
                    ))),
                }
            }
        },
    }
}

fn line(pod: &str, container: &str, n: u64, at: DateTime<Utc>, timestamps: bool) -> String {
    let text = format!(
        "{} log line {n} from {pod}/{container}",
        at.to_rfc3339_opts(SecondsFormat::Secs, true)
    );
    if timestamps {
        format!(
            "{} {text}\n",
            at.to_rfc3339_opts(SecondsFormat::Nanos, true)
        )
    } else {
        format!("{text}\n")
    }
}

/// Answers a log request for `pod` (a stored Pod object).
pub fn serve(
    pod: &Value,
    query: &Query,
    shutdown: tokio::sync::watch::Receiver<bool>,
) -> Result<http::Response<Body>, ApiError> {
    let container = choose_container(pod, query.non_empty("container"))?;
    let pod_name = pod["metadata"]["name"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    if query.flag("previous") {
        return Err(ApiError::bad_request(format!(
            "previous terminated container \"{container}\" in pod \"{pod_name}\" not found"
        )));
    }
    let bad = ApiError::bad_request;
    let tail = query.number("tailLines").map_err(bad)?;
    let since_seconds = query.number("sinceSeconds").map_err(bad)?;
    let limit_bytes = query.number("limitBytes").map_err(bad)?;
    let since_time = match query.non_empty("sinceTime") {
        Some(t) => Some(
            DateTime::parse_from_rfc3339(t)
                .map_err(|_| bad(format!("invalid value {t:?} for sinceTime")))?
                .with_timezone(&Utc),
        ),
        None => None,
    };
    let timestamps = query.flag("timestamps");
    let started = pod["status"]["startTime"]
        .as_str()
        .or(pod["metadata"]["creationTimestamp"].as_str())
        .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
        .map(|t| t.with_timezone(&Utc))
        .unwrap_or_else(Utc::now);
    let now = Utc::now();
    let cutoff = match (since_seconds, since_time) {
        (Some(s), _) => Some(now - chrono::Duration::seconds(s as i64)),
        (None, t) => t,
    };
    let mut lines: Vec<String> = (1..=INITIAL_LINES)
        .map(|n| (n, started + chrono::Duration::seconds(n as i64)))
        .filter(|(_, at)| cutoff.is_none_or(|c| *at >= c))
        .map(|(n, at)| line(&pod_name, &container, n, at, timestamps))
        .collect();
    if let Some(t) = tail {
        let skip = lines.len().saturating_sub(t as usize);
        lines.drain(..skip);
    }
    let mut existing = lines.concat().into_bytes();
    if let Some(limit) = limit_bytes.filter(|l| *l > 0) {
        existing.truncate(limit as usize);
    }
    if !query.flag("follow") || limit_bytes.is_some_and(|l| l > 0 && existing.len() as u64 >= l) {
        return Ok(respond::bytes_as(StatusCode::OK, TEXT, existing));
    }
    let (tx, response) = respond::streaming(TEXT);
    tokio::spawn(async move {
        let mut shutdown = shutdown;
        if tx
            .send(Ok(Frame::data(Bytes::from(existing))))
            .await
            .is_err()
        {
            return;
        }
        let mut ticker = tokio::time::interval(FOLLOW_INTERVAL);
        ticker.tick().await;
        for n in INITIAL_LINES + 1.. {
            tokio::select! {
                _ = tx.closed() => return,
                _ = shutdown.changed() => return,
                _ = ticker.tick() => {
                    let text = line(&pod_name, &container, n, Utc::now(), timestamps);
                    if tx.send(Ok(Frame::data(Bytes::from(text)))).await.is_err() {
                        return;
                    }
                }
            }
        }
    });
    Ok(response)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(containers: &[&str]) -> Value {
        let list: Vec<Value> = containers
            .iter()
            .map(|c| json!({"name": c, "image": "x"}))
            .collect();
        json!({"metadata": {"name": "web-0"}, "spec": {"containers": list}})
    }

    #[test]
    fn container_choice() {
        assert_eq!(choose_container(&pod(&["main"]), None).unwrap(), "main");
        assert_eq!(choose_container(&pod(&["a", "b"]), Some("b")).unwrap(), "b");
        assert_eq!(
            choose_container(&pod(&["a", "b"]), None)
                .unwrap_err()
                .message,
            "a container name must be specified for pod web-0, choose one of: [a b]"
        );
        assert_eq!(
            choose_container(&pod(&["main"]), Some("x"))
                .unwrap_err()
                .message,
            "container x is not valid for pod web-0"
        );
    }

    #[test]
    fn line_format() {
        let at = DateTime::parse_from_rfc3339("2026-01-02T03:04:05Z")
            .unwrap()
            .with_timezone(&Utc);
        assert_eq!(
            line("web-0", "main", 3, at, false),
            "2026-01-02T03:04:05Z log line 3 from web-0/main\n"
        );
        assert!(line("web-0", "main", 3, at, true)
            .starts_with("2026-01-02T03:04:05.000000000Z 2026-01-02T03:04:05Z"));
    }
}
