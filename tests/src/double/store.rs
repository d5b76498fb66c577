//! The in-memory object store: every object of every stored resource, one global resourceVersion counter, a bounded
//! history of change events for watch resumption, and a broadcast channel feeding live watches. All writes happen
//! under one lock so resourceVersions, history and broadcasts stay in the same order. It must never do I/O.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};

use serde_json::{json, Value};
use tokio::sync::broadcast;

use super::objects::{self, metadata_mut, name_of};
use super::resources::{self, ResourceDef};
use super::status::ApiError;

/// How many change events are kept for watches that resume from a resourceVersion.
pub const DEFAULT_HISTORY: usize = 1024;
/// Capacity of the live broadcast channel; a watcher that falls this far behind gets a 410.
const BROADCAST_CAPACITY: usize = 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventType {
    Added,
    Modified,
    Deleted,
}

impl EventType {
    pub fn as_str(self) -> &'static str {
        match self {
            EventType::Added => "ADDED",
            EventType::Modified => "MODIFIED",
            EventType::Deleted => "DELETED",
        }
    }
}

/// One change to one object, in resourceVersion order.
#[derive(Debug, Clone)]
pub struct ChangeEvent {
    pub rv: u64,
    pub event_type: EventType,
    pub resource: &'static ResourceDef,
    pub namespace: String,
    /// The object after the change (for deletions: the last state, with the deletion's resourceVersion).
    pub object: Value,
    /// The object before a modification, so watches with selectors can turn it into ADDED/DELETED.
    pub previous: Option<Value>,
}

/// Where a watch starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WatchStart {
    /// Synthetic ADDED events for the current objects, then live events.
    Current,
    /// Replay the kept history after this resourceVersion, then live events.
    After(u64),
}

/// What a new watch needs: events to send first, and the live feed (only events after those).
pub struct WatchFeed {
    pub initial: Vec<Arc<ChangeEvent>>,
    pub live: broadcast::Receiver<Arc<ChangeEvent>>,
    /// The store's resourceVersion when the feed was taken.
    pub rv: u64,
}

type ObjectKey = (String, String);

struct Inner {
    rv: u64,
    objects: HashMap<String, BTreeMap<ObjectKey, Value>>,
    history: VecDeque<Arc<ChangeEvent>>,
    /// The highest resourceVersion whose event is no longer in `history`.
    compacted: u64,
    created: u64,
}

pub struct Store {
    inner: Mutex<Inner>,
    live: broadcast::Sender<Arc<ChangeEvent>>,
    history_limit: usize,
}

/// Options common to writes.
#[derive(Debug, Clone, Copy, Default)]
pub struct WriteOptions {
    /// `dryRun=All`: validate and answer, but store nothing and emit nothing.
    pub dry_run: bool,
}

/// `DeleteOptions.preconditions`.
#[derive(Debug, Clone, Default)]
pub struct Preconditions {
    pub uid: Option<String>,
    pub resource_version: Option<String>,
}

impl Default for Store {
    fn default() -> Self {
        Self::new(DEFAULT_HISTORY)
    }
}

impl Store {
    pub fn new(history_limit: usize) -> Self {
        let (live, _) = broadcast::channel(BROADCAST_CAPACITY);
        Self {
            inner: Mutex::new(Inner {
                rv: 0,
                objects: HashMap::new(),
                history: VecDeque::new(),
                compacted: 0,
                created: 0,
            }),
            live,
            history_limit: history_limit.max(1),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock cannot leave a half-written object (writes are single inserts), so a
        // poisoned lock is still consistent.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn current_rv(&self) -> u64 {
        self.lock().rv
    }

    pub fn get(&self, res: &ResourceDef, namespace: &str, name: &str) -> Option<Value> {
        let inner = self.lock();
        inner
            .objects
            .get(&res.qualified())
            .and_then(|m| m.get(&(scope(res, namespace), name.to_string())))
            .cloned()
    }

    /// All objects of `res` (in `namespace` if given), in namespace/name order, and the current resourceVersion.
    pub fn list(&self, res: &ResourceDef, namespace: Option<&str>) -> (Vec<Value>, u64) {
        let inner = self.lock();
        (collect(&inner, res, namespace), inner.rv)
    }

    pub fn namespace_exists(&self, namespace: &str) -> bool {
        self.get(resources::namespaces(), "", namespace).is_some()
    }

    /// Stores a new object. `namespace` comes from the request path ("" for cluster-scoped resources).
    pub fn create(
        &self,
        res: &'static ResourceDef,
        namespace: &str,
        obj: Value,
        opts: WriteOptions,
    ) -> Result<Value, ApiError> {
        self.create_inner(res, namespace, obj, opts, false)
    }

    /// Like `create`, but keeps a creationTimestamp given in the object (seed data with a believable age).
    pub(crate) fn seed(
        &self,
        res: &'static ResourceDef,
        namespace: &str,
        obj: Value,
    ) -> Result<Value, ApiError> {
        self.create_inner(res, namespace, obj, WriteOptions::default(), true)
    }

    fn create_inner(
        &self,
        res: &'static ResourceDef,
        namespace: &str,
        mut obj: Value,
        opts: WriteOptions,
        keep_timestamp: bool,
    ) -> Result<Value, ApiError> {
        let mut inner = self.lock();
        let namespace = scope(res, namespace);
        if res.namespaced && !namespace_in(&inner, &namespace) {
            return Err(ApiError::not_found(resources::namespaces(), &namespace));
        }
        let table = inner.objects.entry(res.qualified()).or_default();
        let meta = metadata_mut(&mut obj);
        let mut name = meta
            .get("name")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        if name.is_empty() {
            let prefix = meta
                .get("generateName")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string();
            if prefix.is_empty() {
                return Err(ApiError::invalid(
                    res,
                    "",
                    "metadata.name",
                    "Required value: name or generateName is required",
                ));
            }
            name = loop {
                let candidate = format!("{prefix}{}", random_suffix());
                if !table.contains_key(&(namespace.clone(), candidate.clone())) {
                    break candidate;
                }
            };
            meta.insert("name".into(), json!(name));
        }
        objects::validate_name(res, &name)?;
        if table.contains_key(&(namespace.clone(), name.clone())) {
            return Err(ApiError::already_exists(res, &name));
        }
        if res.namespaced {
            meta.insert("namespace".into(), json!(namespace));
        } else {
            meta.remove("namespace");
        }
        meta.insert("uid".into(), json!(uuid::Uuid::new_v4().to_string()));
        let timestamp = meta
            .get("creationTimestamp")
            .and_then(Value::as_str)
            .filter(|_| keep_timestamp)
            .map(str::to_string)
            .unwrap_or_else(objects::now_rfc3339);
        meta.insert("creationTimestamp".into(), json!(timestamp));
        for transient in [
            "deletionTimestamp",
            "deletionGracePeriodSeconds",
            "selfLink",
            "managedFields",
        ] {
            meta.remove(transient);
        }
        if res.has_generation() {
            meta.insert("generation".into(), json!(1));
        } else {
            meta.remove("generation");
        }
        set_type_meta(res, &mut obj);
        inner.created += 1;
        let ordinal = inner.created;
        objects::on_create(res, &mut obj, ordinal);
        objects::validate(res, &obj)?;
        if opts.dry_run {
            metadata_mut(&mut obj).remove("resourceVersion");
            return Ok(obj);
        }
        let stored = self.commit(&mut inner, res, &namespace, EventType::Added, obj, None);
        if res.plural == "namespaces" && res.group.is_empty() {
            // The service-account controller gives every new namespace its "default" account.
            let sa = json!({"metadata": {"name": "default", "namespace": name}});
            let sa_res = resources::serviceaccounts();
            let mut sa = sa;
            metadata_mut(&mut sa).insert("uid".into(), json!(uuid::Uuid::new_v4().to_string()));
            metadata_mut(&mut sa).insert(
                "creationTimestamp".into(),
                stored["metadata"]["creationTimestamp"].clone(),
            );
            set_type_meta(sa_res, &mut sa);
            self.commit(&mut inner, sa_res, &name, EventType::Added, sa, None);
        }
        Ok(stored)
    }

    /// Read-modify-write of one object under the store lock. `change` gets the current object and returns the
    /// desired one; identity fields are carried over, a stale `metadata.resourceVersion` in the result is a 409,
    /// and an unchanged object is not rewritten (no new resourceVersion, no event), as the API server does.
    pub fn modify<F>(
        &self,
        res: &'static ResourceDef,
        namespace: &str,
        name: &str,
        opts: WriteOptions,
        status_write: bool,
        change: F,
    ) -> Result<Value, ApiError>
    where
        F: FnOnce(&Value) -> Result<Value, ApiError>,
    {
        let mut inner = self.lock();
        let namespace = scope(res, namespace);
        let key = (namespace.clone(), name.to_string());
        let current = inner
            .objects
            .get(&res.qualified())
            .and_then(|m| m.get(&key))
            .cloned()
            .ok_or_else(|| ApiError::not_found(res, name))?;
        let mut next = change(&current)?;
        if !next.is_object() {
            return Err(ApiError::bad_request("the object must be a JSON object"));
        }
        let given_name = name_of(&next).to_string();
        if !given_name.is_empty() && given_name != name {
            return Err(ApiError::bad_request(format!(
                "the name of the object ({given_name}) does not match the name on the URL ({name})"
            )));
        }
        let given_ns = objects::namespace_of(&next).to_string();
        if res.namespaced && !given_ns.is_empty() && given_ns != namespace {
            return Err(ApiError::bad_request(
                "the namespace of the provided object does not match the namespace sent on the request",
            ));
        }
        let current_rv = current["metadata"]["resourceVersion"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let meta = metadata_mut(&mut next);
        match meta.get("resourceVersion").and_then(Value::as_str) {
            Some(rv) if !rv.is_empty() && rv != current_rv => {
                return Err(ApiError::conflict(res, name))
            }
            _ => {}
        }
        meta.insert("name".into(), json!(name));
        if res.namespaced {
            meta.insert("namespace".into(), json!(namespace));
        }
        for keep in [
            "uid",
            "creationTimestamp",
            "generation",
            "deletionTimestamp",
        ] {
            match current["metadata"].get(keep) {
                Some(v) => meta.insert(keep.into(), v.clone()),
                None => meta.remove(keep),
            };
        }
        meta.insert("resourceVersion".into(), json!(current_rv));
        set_type_meta(res, &mut next);
        objects::on_update(res, &current, &mut next, status_write)?;
        objects::validate(res, &next)?;
        if next == current || opts.dry_run {
            return Ok(next);
        }
        Ok(self.commit(
            &mut inner,
            res,
            &namespace,
            EventType::Modified,
            next,
            Some(current),
        ))
    }

    /// Deletes one object and returns its last state. Deleting a namespace deletes everything in it first.
    pub fn delete(
        &self,
        res: &'static ResourceDef,
        namespace: &str,
        name: &str,
        preconditions: &Preconditions,
        opts: WriteOptions,
    ) -> Result<Value, ApiError> {
        let mut inner = self.lock();
        let namespace = scope(res, namespace);
        let key = (namespace.clone(), name.to_string());
        let current = inner
            .objects
            .get(&res.qualified())
            .and_then(|m| m.get(&key))
            .cloned()
            .ok_or_else(|| ApiError::not_found(res, name))?;
        check_preconditions(res, name, &current, preconditions)?;
        if opts.dry_run {
            return Ok(current);
        }
        if res.plural == "namespaces" && res.group.is_empty() {
            self.delete_namespace_contents(&mut inner, name);
        }
        Ok(self.remove(&mut inner, res, &key).unwrap_or(current))
    }

    /// Deletes every object of `res` (in `namespace` if given) that `keep` accepts; returns them.
    pub fn delete_collection<F>(
        &self,
        res: &'static ResourceDef,
        namespace: Option<&str>,
        opts: WriteOptions,
        mut selected: F,
    ) -> Vec<Value>
    where
        F: FnMut(&Value) -> bool,
    {
        let mut inner = self.lock();
        let victims: Vec<Value> = collect(&inner, res, namespace)
            .into_iter()
            .filter(|o| selected(o))
            .collect();
        if opts.dry_run {
            return victims;
        }
        victims
            .iter()
            .filter_map(|o| {
                let key = (objects::namespace_of(o).to_string(), name_of(o).to_string());
                if res.plural == "namespaces" && res.group.is_empty() {
                    self.delete_namespace_contents(&mut inner, &key.1);
                }
                self.remove(&mut inner, res, &key)
            })
            .collect()
    }

    /// Events to start a watch of `res` (in `namespace` if given) from `start`, plus the live feed after them.
    /// Errors with 410 Gone when `start` is older than the kept history.
    pub fn watch(
        &self,
        res: &'static ResourceDef,
        namespace: Option<&str>,
        start: WatchStart,
    ) -> Result<WatchFeed, ApiError> {
        let inner = self.lock();
        // Subscribing under the lock means the feed holds exactly the events committed after this snapshot.
        let live = self.live.subscribe();
        let initial = match start {
            WatchStart::Current => collect(&inner, res, namespace)
                .into_iter()
                .map(|object| {
                    Arc::new(ChangeEvent {
                        rv: object_rv(&object),
                        event_type: EventType::Added,
                        resource: res,
                        namespace: objects::namespace_of(&object).to_string(),
                        object,
                        previous: None,
                    })
                })
                .collect(),
            WatchStart::After(rv) => {
                if rv < inner.compacted {
                    return Err(ApiError::gone(rv, inner.compacted + 1));
                }
                inner
                    .history
                    .iter()
                    .filter(|e| e.rv > rv && std::ptr::eq(e.resource, res))
                    .filter(|e| namespace.is_none_or(|ns| e.namespace == ns))
                    .cloned()
                    .collect()
            }
        };
        Ok(WatchFeed {
            initial,
            live,
            rv: inner.rv,
        })
    }

    fn delete_namespace_contents(&self, inner: &mut Inner, namespace: &str) {
        for res in resources::RESOURCES.iter().filter(|r| r.namespaced) {
            let keys: Vec<ObjectKey> = inner
                .objects
                .get(&res.qualified())
                .map(|m| {
                    m.keys()
                        .filter(|(ns, _)| ns == namespace)
                        .cloned()
                        .collect()
                })
                .unwrap_or_default();
            for key in keys {
                self.remove(inner, res, &key);
            }
        }
    }

    fn remove(
        &self,
        inner: &mut Inner,
        res: &'static ResourceDef,
        key: &ObjectKey,
    ) -> Option<Value> {
        let removed = inner.objects.get_mut(&res.qualified())?.remove(key)?;
        inner.rv += 1;
        let mut last = removed;
        metadata_mut(&mut last).insert("resourceVersion".into(), json!(inner.rv.to_string()));
        let event = ChangeEvent {
            rv: inner.rv,
            event_type: EventType::Deleted,
            resource: res,
            namespace: key.0.clone(),
            object: last.clone(),
            previous: None,
        };
        self.publish(inner, event);
        Some(last)
    }

    /// Assigns the next resourceVersion, stores the object, records and broadcasts the event.
    fn commit(
        &self,
        inner: &mut Inner,
        res: &'static ResourceDef,
        namespace: &str,
        event_type: EventType,
        mut obj: Value,
        previous: Option<Value>,
    ) -> Value {
        inner.rv += 1;
        metadata_mut(&mut obj).insert("resourceVersion".into(), json!(inner.rv.to_string()));
        let key = (namespace.to_string(), name_of(&obj).to_string());
        inner
            .objects
            .entry(res.qualified())
            .or_default()
            .insert(key, obj.clone());
        let event = ChangeEvent {
            rv: inner.rv,
            event_type,
            resource: res,
            namespace: namespace.to_string(),
            object: obj.clone(),
            previous,
        };
        self.publish(inner, event);
        obj
    }

    fn publish(&self, inner: &mut Inner, event: ChangeEvent) {
        let event = Arc::new(event);
        inner.history.push_back(event.clone());
        while inner.history.len() > self.history_limit {
            if let Some(old) = inner.history.pop_front() {
                inner.compacted = old.rv;
            }
        }
        // No receivers is normal (no watch open).
        let _ = self.live.send(event);
    }
}

fn scope(res: &ResourceDef, namespace: &str) -> String {
    if res.namespaced {
        namespace.to_string()
    } else {
        String::new()
    }
}

fn namespace_in(inner: &Inner, namespace: &str) -> bool {
    inner
        .objects
        .get(&resources::namespaces().qualified())
        .is_some_and(|m| m.contains_key(&(String::new(), namespace.to_string())))
}

fn collect(inner: &Inner, res: &ResourceDef, namespace: Option<&str>) -> Vec<Value> {
    let Some(table) = inner.objects.get(&res.qualified()) else {
        return Vec::new();
    };
    match namespace.filter(|_| res.namespaced) {
        Some(ns) => table
            .range((ns.to_string(), String::new())..)
            .take_while(|((n, _), _)| n == ns)
            .map(|(_, v)| v.clone())
            .collect(),
        None => table.values().cloned().collect(),
    }
}

pub fn object_rv(obj: &Value) -> u64 {
    obj.pointer("/metadata/resourceVersion")
        .and_then(Value::as_str)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

/// Sets `kind` and `apiVersion` as stored objects carry them.
pub fn set_type_meta(res: &ResourceDef, obj: &mut Value) {
    if let Some(map) = obj.as_object_mut() {
        map.insert("kind".into(), json!(res.kind));
        map.insert("apiVersion".into(), json!(res.api_version()));
    }
}

fn check_preconditions(
    res: &ResourceDef,
    name: &str,
    current: &Value,
    pre: &Preconditions,
) -> Result<(), ApiError> {
    let meta = &current["metadata"];
    if let Some(uid) = pre.uid.as_deref().filter(|u| !u.is_empty()) {
        let actual = meta["uid"].as_str().unwrap_or_default();
        if uid != actual {
            return Err(ApiError::new(
                409,
                "Conflict",
                format!(
                    "Operation cannot be fulfilled on {} \"{}\": Precondition failed: UID in precondition: {}, UID \
                     in object meta: {}",
                    res.qualified(),
                    name,
                    uid,
                    actual
                ),
            )
            .with_details(ApiError::object_details(res, name)));
        }
    }
    if let Some(rv) = pre.resource_version.as_deref().filter(|r| !r.is_empty()) {
        let actual = meta["resourceVersion"].as_str().unwrap_or_default();
        if rv != actual {
            return Err(ApiError::new(
                409,
                "Conflict",
                format!(
                    "Operation cannot be fulfilled on {} \"{}\": Precondition failed: ResourceVersion in \
                     precondition: {}, ResourceVersion in object meta: {}",
                    res.qualified(),
                    name,
                    rv,
                    actual
                ),
            )
            .with_details(ApiError::object_details(res, name)));
        }
    }
    Ok(())
}

/// Five characters from the alphabet the API server uses for generateName (no vowels, no look-alikes).
fn random_suffix() -> String {
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    uuid::Uuid::new_v4()
        .as_bytes()
        .iter()
        .take(5)
        .map(|b| ALPHABET[*b as usize % ALPHABET.len()] as char)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::double::resources::lookup;

    fn cms() -> &'static ResourceDef {
        lookup("", "v1", "configmaps").unwrap()
    }

    fn store_with_ns() -> Store {
        let s = Store::new(8);
        s.create(
            resources::namespaces(),
            "",
            json!({"metadata": {"name": "default"}}),
            WriteOptions::default(),
        )
        .unwrap();
        s
    }

    #[test]
    fn create_get_list_and_rv() {
        let s = store_with_ns();
        let sa = s
            .get(resources::serviceaccounts(), "default", "default")
            .unwrap();
        assert_eq!(sa["kind"], "ServiceAccount");
        let created = s
            .create(
                cms(),
                "default",
                json!({"metadata": {"name": "a"}, "data": {"k": "v"}}),
                WriteOptions::default(),
            )
            .unwrap();
        assert_eq!(created["kind"], "ConfigMap");
        assert_eq!(created["apiVersion"], "v1");
        assert_eq!(created["metadata"]["resourceVersion"], "3");
        assert!(created["metadata"]["uid"].as_str().unwrap().len() == 36);
        assert_eq!(s.get(cms(), "default", "a").unwrap(), created);
        let err = s.create(
            cms(),
            "default",
            json!({"metadata": {"name": "a"}}),
            WriteOptions::default(),
        );
        assert_eq!(err.unwrap_err().reason, "AlreadyExists");
        let err = s.create(
            cms(),
            "nope",
            json!({"metadata": {"name": "a"}}),
            WriteOptions::default(),
        );
        assert_eq!(err.unwrap_err().message, "namespaces \"nope\" not found");
        let (items, rv) = s.list(cms(), Some("default"));
        assert_eq!(items.len(), 1);
        assert_eq!(rv, 3);
        assert!(s.list(cms(), Some("other")).0.is_empty());
    }

    #[test]
    fn generate_name_and_dry_run() {
        let s = store_with_ns();
        let o = s
            .create(
                cms(),
                "default",
                json!({"metadata": {"generateName": "job-"}}),
                WriteOptions::default(),
            )
            .unwrap();
        let name = o["metadata"]["name"].as_str().unwrap();
        assert!(name.starts_with("job-") && name.len() == 9, "{name}");
        let before = s.current_rv();
        let d = s
            .create(
                cms(),
                "default",
                json!({"metadata": {"name": "dry"}}),
                WriteOptions { dry_run: true },
            )
            .unwrap();
        assert_eq!(d["metadata"]["name"], "dry");
        assert!(s.get(cms(), "default", "dry").is_none());
        assert_eq!(s.current_rv(), before);
    }

    #[test]
    fn modify_conflicts_and_noop() {
        let s = store_with_ns();
        let o = s
            .create(
                cms(),
                "default",
                json!({"metadata": {"name": "a"}, "data": {"k": "v"}}),
                WriteOptions::default(),
            )
            .unwrap();
        let rv = s.current_rv();
        let same = s
            .modify(cms(), "default", "a", WriteOptions::default(), false, |c| {
                Ok(c.clone())
            })
            .unwrap();
        assert_eq!(same, o);
        assert_eq!(
            s.current_rv(),
            rv,
            "a no-op write keeps the resourceVersion"
        );
        let updated = s
            .modify(cms(), "default", "a", WriteOptions::default(), false, |c| {
                let mut n = c.clone();
                n["data"]["k"] = json!("w");
                Ok(n)
            })
            .unwrap();
        assert_eq!(updated["metadata"]["uid"], o["metadata"]["uid"]);
        assert_ne!(
            updated["metadata"]["resourceVersion"],
            o["metadata"]["resourceVersion"]
        );
        let stale = s.modify(cms(), "default", "a", WriteOptions::default(), false, |_| {
            Ok(json!({"metadata": {"name": "a", "resourceVersion": o["metadata"]["resourceVersion"]}}))
        });
        assert_eq!(stale.unwrap_err().reason, "Conflict");
        let renamed = s.modify(
            cms(),
            "default",
            "a",
            WriteOptions::default(),
            false,
            |_| Ok(json!({"metadata": {"name": "b"}})),
        );
        assert_eq!(renamed.unwrap_err().code, 400);
        let missing = s.modify(
            cms(),
            "default",
            "zz",
            WriteOptions::default(),
            false,
            |c| Ok(c.clone()),
        );
        assert_eq!(missing.unwrap_err().code, 404);
    }

    #[test]
    fn delete_namespace_cascades() {
        let s = store_with_ns();
        s.create(
            resources::namespaces(),
            "",
            json!({"metadata": {"name": "dev"}}),
            WriteOptions::default(),
        )
        .unwrap();
        s.create(
            cms(),
            "dev",
            json!({"metadata": {"name": "a"}}),
            WriteOptions::default(),
        )
        .unwrap();
        let gone = s
            .delete(
                resources::namespaces(),
                "",
                "dev",
                &Preconditions::default(),
                WriteOptions::default(),
            )
            .unwrap();
        assert_eq!(gone["metadata"]["name"], "dev");
        assert!(s.get(cms(), "dev", "a").is_none());
        assert!(s
            .get(resources::serviceaccounts(), "dev", "default")
            .is_none());
        assert!(s
            .get(resources::serviceaccounts(), "default", "default")
            .is_some());
    }

    #[test]
    fn delete_preconditions() {
        let s = store_with_ns();
        s.create(
            cms(),
            "default",
            json!({"metadata": {"name": "a"}}),
            WriteOptions::default(),
        )
        .unwrap();
        let pre = Preconditions {
            uid: Some("wrong".into()),
            resource_version: None,
        };
        assert_eq!(
            s.delete(cms(), "default", "a", &pre, WriteOptions::default())
                .unwrap_err()
                .code,
            409
        );
        let all = s.delete_collection(cms(), Some("default"), WriteOptions::default(), |_| true);
        assert_eq!(all.len(), 1);
        assert!(s.list(cms(), None).0.is_empty());
    }

    #[tokio::test]
    async fn watch_feed_history_and_compaction() {
        let s = store_with_ns();
        let start = s.current_rv();
        s.create(
            cms(),
            "default",
            json!({"metadata": {"name": "a"}}),
            WriteOptions::default(),
        )
        .unwrap();
        let feed = s
            .watch(cms(), Some("default"), WatchStart::After(start))
            .unwrap();
        assert_eq!(feed.initial.len(), 1);
        assert_eq!(feed.initial[0].event_type, EventType::Added);
        let mut live = feed.live;
        s.create(
            cms(),
            "default",
            json!({"metadata": {"name": "b"}}),
            WriteOptions::default(),
        )
        .unwrap();
        let ev = live.recv().await.unwrap();
        assert_eq!(name_of(&ev.object), "b");
        let current = s.watch(cms(), None, WatchStart::Current).unwrap();
        assert_eq!(current.initial.len(), 2);
        for i in 0..10 {
            s.create(
                cms(),
                "default",
                json!({"metadata": {"name": format!("x{i}")}}),
                WriteOptions::default(),
            )
            .unwrap();
        }
        let err = s
            .watch(cms(), None, WatchStart::After(start))
            .err()
            .unwrap();
        assert_eq!(err.code, 410);
        assert!(s
            .watch(cms(), None, WatchStart::After(s.current_rv()))
            .unwrap()
            .initial
            .is_empty());
    }
}
