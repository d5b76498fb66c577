//! Compiled profiles: per kind, what to mask; per request, whether the response needs it.

use std::collections::HashMap;
use std::sync::Arc;

use globset::{GlobBuilder, GlobSet, GlobSetBuilder};
use regex::RegexSet;
use serde_json::{Map, Value};

use super::path::FieldPath;
use super::schema::{FieldRuleConfig, MaskConfig, ProfileConfig};
use super::{MaskError, DEFAULT_PROFILE, MARKER, MARKER_BASE64};
use crate::classify::{RequestInfo, Verb};

/// Resources whose kind the gateway knows, so a field rule need not name it.
const KNOWN_KINDS: &[(&str, &str, &str)] = &[
    ("", "secrets", "Secret"),
    ("", "configmaps", "ConfigMap"),
    ("", "pods", "Pod"),
    ("", "podtemplates", "PodTemplate"),
    ("", "replicationcontrollers", "ReplicationController"),
    ("", "services", "Service"),
    ("", "serviceaccounts", "ServiceAccount"),
    ("", "endpoints", "Endpoints"),
    ("", "events", "Event"),
    ("", "namespaces", "Namespace"),
    ("", "nodes", "Node"),
    ("", "persistentvolumes", "PersistentVolume"),
    ("", "persistentvolumeclaims", "PersistentVolumeClaim"),
    ("apps", "deployments", "Deployment"),
    ("apps", "statefulsets", "StatefulSet"),
    ("apps", "daemonsets", "DaemonSet"),
    ("apps", "replicasets", "ReplicaSet"),
    ("apps", "controllerrevisions", "ControllerRevision"),
    ("batch", "jobs", "Job"),
    ("batch", "cronjobs", "CronJob"),
];

/// Subresources whose responses are not API objects the masker could read: upgraded streams
/// and relayed backends. Policy decides about those; masking cannot apply.
const OPAQUE_SUBRESOURCES: &[&str] = &["exec", "attach", "portforward", "proxy"];

/// All compiled profiles by name; `default` always present.
#[derive(Debug)]
pub struct Masker {
    profiles: HashMap<String, Arc<MaskProfile>>,
}

impl Masker {
    pub fn from_config(config: &MaskConfig) -> Result<Masker, MaskError> {
        config.validate()?;
        let limits = Limits {
            max_body_bytes: config.max_body_bytes,
            max_event_bytes: config.max_event_bytes,
            max_log_line_bytes: config.max_log_line_bytes,
        };
        let mut profiles = HashMap::new();
        for (name, profile) in &config.profiles {
            let mut compiled = MaskProfile::compile(name, profile)?;
            compiled.limits = limits;
            profiles.insert(name.clone(), Arc::new(compiled));
        }
        if !profiles.contains_key(DEFAULT_PROFILE) {
            let mut default = MaskProfile::compile(DEFAULT_PROFILE, &ProfileConfig::default())?;
            default.limits = limits;
            profiles.insert(DEFAULT_PROFILE.to_owned(), Arc::new(default));
        }
        Ok(Masker { profiles })
    }

    pub fn profile(&self, name: &str) -> Option<Arc<MaskProfile>> {
        self.profiles.get(name).cloned()
    }

    /// The built-in `default` profile (or the configured one of that name).
    pub fn default_profile(&self) -> Arc<MaskProfile> {
        match self.profiles.get(DEFAULT_PROFILE) {
            Some(profile) => profile.clone(),
            // from_config always inserts it; this keeps the accessor total without a panic.
            None => Arc::new(MaskProfile::secrets_only(DEFAULT_PROFILE)),
        }
    }

    pub fn profile_names(&self) -> impl Iterator<Item = &str> {
        self.profiles.keys().map(String::as_str)
    }
}

#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    pub max_body_bytes: usize,
    pub max_event_bytes: usize,
    pub max_log_line_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_body_bytes: super::DEFAULT_MAX_BODY_BYTES,
            max_event_bytes: super::DEFAULT_MAX_EVENT_BYTES,
            max_log_line_bytes: super::DEFAULT_MAX_LOG_LINE_BYTES,
        }
    }
}

/// One compiled profile.
#[derive(Debug)]
pub struct MaskProfile {
    name: String,
    kinds: Vec<KindRules>,
    logs: Option<LogPatterns>,
    pub(crate) limits: Limits,
}

/// Everything masked in objects of one kind.
#[derive(Debug)]
pub(crate) struct KindRules {
    pub group: String,
    pub resource: String,
    pub kind: String,
    /// Maps whose values are masked (Secret `data`, ConfigMap `data`).
    pub maps: Vec<MapRule>,
    pub fields: Vec<FieldRule>,
    /// Table column names (lowercase) whose cells are masked.
    pub columns: Vec<String>,
    pub last_applied: LastApplied,
}

#[derive(Debug)]
pub(crate) struct MapRule {
    pub field: &'static str,
    pub marker: &'static str,
    pub keys: KeyMatcher,
}

#[derive(Debug)]
pub(crate) struct FieldRule {
    pub path: FieldPath,
    pub when: Option<(String, KeyMatcher)>,
}

/// What happens to the last-applied-configuration annotation of an object of this kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum LastApplied {
    /// Replaced by the marker: Secrets, where the manifest is the secret.
    Whole,
    /// Parsed and masked by the kind's own rules (replaced whole if it does not parse).
    Structural,
}

/// Matches a key or name: everything, or any of some globs or regexes.
#[derive(Debug, Clone)]
pub(crate) struct KeyMatcher {
    all: bool,
    globs: GlobSet,
    regexes: RegexSet,
}

impl KeyMatcher {
    fn all() -> Self {
        Self {
            all: true,
            globs: GlobSet::empty(),
            regexes: RegexSet::empty(),
        }
    }

    fn compile(globs: &[String], regexes: &[String]) -> Result<Self, String> {
        let mut set = GlobSetBuilder::new();
        for glob in globs {
            let compiled = GlobBuilder::new(glob)
                .case_insensitive(true)
                .literal_separator(false)
                .build()
                .map_err(|e| format!("glob {glob:?}: {e}"))?;
            set.add(compiled);
        }
        let globs = set.build().map_err(|e| e.to_string())?;
        let regexes = RegexSet::new(regexes).map_err(|e| format!("regex: {e}"))?;
        Ok(Self {
            all: false,
            globs,
            regexes,
        })
    }

    fn is_empty(&self) -> bool {
        !self.all && self.globs.is_empty() && self.regexes.is_empty()
    }

    pub fn matches(&self, key: &str) -> bool {
        self.all || self.globs.is_match(key) || self.regexes.is_match(key)
    }
}

/// Opt-in `pods/log` line patterns.
#[derive(Debug)]
pub(crate) struct LogPatterns {
    pub patterns: Vec<regex::bytes::Regex>,
}

impl MaskProfile {
    /// Compiles a profile. Every profile gets the Secret rules first.
    pub(crate) fn compile(name: &str, config: &ProfileConfig) -> Result<Self, MaskError> {
        let err = |message: String| MaskError::Config {
            profile: name.to_owned(),
            message,
        };
        if name.is_empty() {
            return Err(err("a profile needs a non-empty name".into()));
        }
        let mut profile = Self::secrets_only(name);
        if let Some(cm) = &config.configmaps {
            let rules = profile.kind_entry("", "configmaps", "ConfigMap");
            for (field, marker) in [("data", MARKER), ("binaryData", MARKER_BASE64)] {
                let keys = KeyMatcher::compile(&cm.keys, &cm.key_regexes)
                    .map_err(|m| err(format!("configmaps: {m}")))?;
                if keys.is_empty() {
                    return Err(err(
                        "configmaps: give at least one of `keys` or `key_regexes`".into(),
                    ));
                }
                rules.maps.push(MapRule {
                    field,
                    marker,
                    keys,
                });
            }
        }
        for (i, rule) in config.fields.iter().enumerate() {
            profile
                .add_field_rule(rule)
                .map_err(|m| err(format!("fields[{i}] ({}): {m}", rule.resource)))?;
        }
        if let Some(logs) = &config.logs {
            if logs.patterns.is_empty() {
                return Err(err("logs.patterns is empty".into()));
            }
            let patterns = logs
                .patterns
                .iter()
                .enumerate()
                .map(|(i, p)| {
                    regex::bytes::Regex::new(p).map_err(|e| err(format!("logs.patterns[{i}]: {e}")))
                })
                .collect::<Result<_, _>>()?;
            profile.logs = Some(LogPatterns { patterns });
        }
        Ok(profile)
    }

    /// The rules every profile starts from: Secret `data` (base64 marker) and `stringData`
    /// (plain marker), keys kept, and the whole last-applied annotation.
    pub(crate) fn secrets_only(name: &str) -> Self {
        Self {
            name: name.to_owned(),
            kinds: vec![KindRules {
                group: String::new(),
                resource: "secrets".into(),
                kind: "Secret".into(),
                maps: vec![
                    MapRule {
                        field: "data",
                        marker: MARKER_BASE64,
                        keys: KeyMatcher::all(),
                    },
                    MapRule {
                        field: "stringData",
                        marker: MARKER,
                        keys: KeyMatcher::all(),
                    },
                ],
                fields: Vec::new(),
                columns: Vec::new(),
                last_applied: LastApplied::Whole,
            }],
            logs: None,
            limits: Limits::default(),
        }
    }

    fn kind_entry(&mut self, group: &str, resource: &str, kind: &str) -> &mut KindRules {
        let at = match self
            .kinds
            .iter()
            .position(|k| k.group == group && k.resource == resource)
        {
            Some(at) => at,
            None => {
                self.kinds.push(KindRules {
                    group: group.to_owned(),
                    resource: resource.to_owned(),
                    kind: kind.to_owned(),
                    maps: Vec::new(),
                    fields: Vec::new(),
                    columns: Vec::new(),
                    last_applied: LastApplied::Structural,
                });
                self.kinds.len() - 1
            }
        };
        &mut self.kinds[at]
    }

    fn add_field_rule(&mut self, rule: &FieldRuleConfig) -> Result<(), String> {
        let resource = rule.resource.trim();
        if resource.is_empty() || resource.contains('/') {
            return Err("`resource` must be a plural resource name without a subresource".into());
        }
        let known = KNOWN_KINDS
            .iter()
            .find(|(g, r, _)| *g == rule.group && *r == resource)
            .map(|(_, _, k)| *k);
        let kind = match (&rule.kind, known) {
            (Some(given), Some(known)) if given != known => {
                return Err(format!("`kind` {given:?} is not the kind of this resource ({known})"))
            }
            (Some(given), _) if !given.is_empty() => given.clone(),
            (_, Some(known)) => known.to_owned(),
            _ => {
                return Err(
                    "`kind` is required for a resource the gateway does not know (e.g. a custom resource)"
                        .into(),
                )
            }
        };
        if rule.paths.is_empty() && rule.columns.is_empty() {
            return Err("give at least one of `paths` or `columns`".into());
        }
        let when = match &rule.when {
            Some(when) => {
                if when.field.is_empty() {
                    return Err("`when.field` is empty".into());
                }
                let matcher = KeyMatcher::compile(&when.matches, &when.regexes)
                    .map_err(|m| format!("when: {m}"))?;
                if matcher.is_empty() {
                    return Err("`when` needs at least one of `matches` or `regexes`".into());
                }
                Some((when.field.clone(), matcher))
            }
            None => None,
        };
        let mut fields = Vec::new();
        for text in &rule.paths {
            let path = FieldPath::parse(text)?;
            if when.is_some() && !path.ends_in_field() {
                return Err(format!(
                    "field path {text:?}: `when` needs a path that ends in a field name"
                ));
            }
            fields.push(path);
        }
        let entry = self.kind_entry(&rule.group, resource, &kind);
        for path in fields {
            entry.fields.push(FieldRule {
                path,
                when: when.clone(),
            });
        }
        entry
            .columns
            .extend(rule.columns.iter().map(|c| c.to_lowercase()));
        Ok(())
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Whether responses to this request must go through a [`super::ResponseMasker`]: any verb
    /// on a covered resource (reads, lists and watches across namespaces, and the objects that
    /// create/update/patch/delete return), its subresources that return objects (`status`,
    /// `ephemeralcontainers`, ...), and `pods/log` when the profile has log patterns. Never the
    /// upgraded or relayed subresources (exec, attach, portforward, proxy), which carry no API
    /// objects; policy must decide about those.
    pub fn applies_to(&self, info: &RequestInfo) -> bool {
        if !info.is_resource_request || info.verb == Verb::Proxy {
            return false;
        }
        if OPAQUE_SUBRESOURCES.contains(&info.subresource.as_str()) {
            return false;
        }
        if is_pod_log(info) {
            return self.logs.is_some();
        }
        self.rules_for_resource(&info.api_group, &info.resource)
            .is_some()
    }

    /// Whether this profile masks `pods/log` lines.
    pub fn masks_logs(&self) -> bool {
        self.logs.is_some()
    }

    pub(crate) fn log_patterns(&self) -> &[regex::bytes::Regex] {
        self.logs.as_ref().map_or(&[], |l| l.patterns.as_slice())
    }

    pub(crate) fn rules_for_resource(&self, group: &str, resource: &str) -> Option<usize> {
        self.kinds
            .iter()
            .position(|k| k.group == group && k.resource == resource)
    }

    /// The rules for an object's `kind`; `api_version` narrows by group when present.
    pub(crate) fn rules_for_kind(&self, api_version: Option<&str>, kind: &str) -> Option<usize> {
        let group = api_version.map(|v| v.rsplit_once('/').map_or("", |(g, _)| g));
        self.kinds
            .iter()
            .position(|k| k.kind == kind && group.is_none_or(|g| g == k.group))
    }

    pub(crate) fn kind(&self, at: usize) -> Option<&KindRules> {
        self.kinds.get(at)
    }
}

pub(crate) fn is_pod_log(info: &RequestInfo) -> bool {
    info.api_group.is_empty() && info.resource == "pods" && info.subresource == "log"
}

impl KindRules {
    /// Masks one object of this kind in place; returns how many values were masked.
    pub(crate) fn mask_object(&self, obj: &mut Map<String, Value>) -> u64 {
        let mut masked = 0;
        for rule in &self.maps {
            masked += match obj.get_mut(rule.field) {
                None | Some(Value::Null) => 0,
                Some(Value::Object(map)) => map
                    .iter_mut()
                    .filter(|(key, _)| rule.keys.matches(key))
                    .map(|(_, value)| super::path::mask_value(value, rule.marker))
                    .sum(),
                // Not a map: nothing a client could use should survive either.
                Some(other) => super::path::mask_value(other, rule.marker),
            };
        }
        if !self.fields.is_empty() {
            let mut root = Value::Object(std::mem::take(obj));
            for rule in &self.fields {
                masked += match &rule.when {
                    None => rule.path.mask(&mut root, &|_| true),
                    Some((field, matcher)) => rule.path.mask(&mut root, &|holder| {
                        // Fail toward masking: a holder without the field (or with a non-string
                        // one) is masked.
                        holder
                            .get(field)
                            .and_then(Value::as_str)
                            .is_none_or(|v| matcher.matches(v))
                    }),
                };
            }
            if let Value::Object(back) = root {
                *obj = back;
            }
        }
        masked + self.mask_last_applied(obj)
    }

    fn mask_last_applied(&self, obj: &mut Map<String, Value>) -> u64 {
        let Some(value) = obj
            .get_mut("metadata")
            .and_then(|m| m.get_mut("annotations"))
            .and_then(|a| a.get_mut(super::LAST_APPLIED_ANNOTATION))
        else {
            return 0;
        };
        if *value == Value::String(MARKER.to_owned()) {
            return 0;
        }
        let structural = match (self.last_applied, value.as_str()) {
            (LastApplied::Structural, Some(text)) => match serde_json::from_str::<Value>(text) {
                Ok(Value::Object(mut applied)) => {
                    let masked = self.mask_object(&mut applied);
                    serde_json::to_string(&applied).ok().map(|t| (t, masked))
                }
                _ => None,
            },
            _ => None,
        };
        match structural {
            Some((_, 0)) => 0,
            Some((text, masked)) => {
                *value = Value::String(text);
                masked
            }
            None => {
                *value = Value::String(MARKER.to_owned());
                1
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mask::schema::{ConfigMapKeysConfig, LogMaskConfig, WhenConfig};
    use http::Method;

    fn info(method: Method, path: &str, query: Option<&str>) -> RequestInfo {
        crate::classify::classify(&method, path, query).expect("classified")
    }

    pub(crate) fn env_profile() -> ProfileConfig {
        ProfileConfig {
            configmaps: Some(ConfigMapKeysConfig {
                keys: vec!["*password*".into()],
                key_regexes: vec!["^token_".into()],
            }),
            fields: vec![FieldRuleConfig {
                resource: "pods".into(),
                group: String::new(),
                kind: None,
                paths: vec!["spec.containers[*].env[*].value".into()],
                when: Some(WhenConfig {
                    field: "name".into(),
                    matches: vec!["*PASSWORD*".into(), "*TOKEN*".into()],
                    regexes: Vec::new(),
                }),
                columns: Vec::new(),
            }],
            logs: None,
        }
    }

    #[test]
    fn default_profile_covers_secrets_only() {
        let masker = Masker::from_config(&MaskConfig::default()).expect("compiles");
        let p = masker.profile(DEFAULT_PROFILE).expect("always present");
        assert!(masker.profile("other").is_none());
        let covered = [
            (Method::GET, "/api/v1/namespaces/a/secrets/s", None),
            (Method::GET, "/api/v1/secrets", None),
            (Method::GET, "/api/v1/secrets", Some("watch=true")),
            (Method::GET, "/api/v1/watch/namespaces/a/secrets", None),
            (Method::POST, "/api/v1/namespaces/a/secrets", None),
            (Method::PUT, "/api/v1/namespaces/a/secrets/s", None),
            (Method::PATCH, "/api/v1/namespaces/a/secrets/s", None),
            (Method::DELETE, "/api/v1/namespaces/a/secrets/s", None),
            (Method::DELETE, "/api/v1/namespaces/a/secrets", None),
        ];
        for (m, path, q) in covered {
            assert!(p.applies_to(&info(m.clone(), path, q)), "{m} {path}");
        }
        let not_covered = [
            (Method::GET, "/api/v1/namespaces/a/configmaps/c", None),
            (Method::GET, "/api/v1/pods", None),
            (Method::GET, "/api/v1/namespaces/a/pods/p/log", None),
            (Method::GET, "/apis/example.com/v1/secrets", None),
            (Method::GET, "/api/v1", None),
            (Method::GET, "/version", None),
            (
                Method::GET,
                "/api/v1/namespaces/a/pods/p/exec",
                Some("command=sh"),
            ),
        ];
        for (m, path, q) in not_covered {
            assert!(!p.applies_to(&info(m.clone(), path, q)), "{m} {path}");
        }
    }

    #[test]
    fn configured_profile_covers_its_resources() {
        let mut config = MaskConfig::default();
        let mut profile = env_profile();
        profile.logs = Some(LogMaskConfig {
            patterns: vec!["password=\\S+".into()],
        });
        config.profiles.insert("agents".into(), profile);
        let masker = Masker::from_config(&config).expect("compiles");
        assert!(masker.profile(DEFAULT_PROFILE).is_some());
        let p = masker.profile("agents").expect("configured");
        assert_eq!(p.name(), "agents");
        for (m, path) in [
            (Method::GET, "/api/v1/namespaces/a/secrets"),
            (Method::GET, "/api/v1/namespaces/a/configmaps/c"),
            (Method::GET, "/api/v1/pods"),
            (Method::PATCH, "/api/v1/namespaces/a/pods/p/status"),
            (
                Method::PATCH,
                "/api/v1/namespaces/a/pods/p/ephemeralcontainers",
            ),
            (Method::GET, "/api/v1/namespaces/a/pods/p/log"),
        ] {
            assert!(p.applies_to(&info(m.clone(), path, None)), "{m} {path}");
        }
        for (m, path) in [
            (Method::POST, "/api/v1/namespaces/a/pods/p/exec"),
            (Method::GET, "/api/v1/namespaces/a/pods/p/proxy/x"),
            (Method::GET, "/api/v1/proxy/namespaces/a/pods/p"),
            (Method::GET, "/apis/apps/v1/deployments"),
        ] {
            assert!(!p.applies_to(&info(m.clone(), path, None)), "{m} {path}");
        }
    }

    #[test]
    fn bad_profiles_are_refused_with_their_name() {
        let cases: Vec<(ProfileConfig, &str)> = vec![
            (
                ProfileConfig {
                    configmaps: Some(ConfigMapKeysConfig {
                        keys: vec!["[".into()],
                        key_regexes: vec![],
                    }),
                    ..Default::default()
                },
                "glob",
            ),
            (
                ProfileConfig {
                    configmaps: Some(ConfigMapKeysConfig::default()),
                    ..Default::default()
                },
                "at least one",
            ),
            (
                ProfileConfig {
                    logs: Some(LogMaskConfig {
                        patterns: vec!["(".into()],
                    }),
                    ..Default::default()
                },
                "logs.patterns[0]",
            ),
            (
                ProfileConfig {
                    fields: vec![FieldRuleConfig {
                        resource: "widgets".into(),
                        group: "example.com".into(),
                        kind: None,
                        paths: vec!["spec.x".into()],
                        when: None,
                        columns: vec![],
                    }],
                    ..Default::default()
                },
                "`kind` is required",
            ),
            (
                ProfileConfig {
                    fields: vec![FieldRuleConfig {
                        resource: "pods".into(),
                        group: String::new(),
                        kind: Some("Deployment".into()),
                        paths: vec!["spec.x".into()],
                        when: None,
                        columns: vec![],
                    }],
                    ..Default::default()
                },
                "not the kind",
            ),
            (
                ProfileConfig {
                    fields: vec![FieldRuleConfig {
                        resource: "pods".into(),
                        group: String::new(),
                        kind: None,
                        paths: vec!["spec.containers[*]".into()],
                        when: Some(WhenConfig {
                            field: "name".into(),
                            matches: vec!["x".into()],
                            regexes: vec![],
                        }),
                        columns: vec![],
                    }],
                    ..Default::default()
                },
                "ends in a field",
            ),
            (
                ProfileConfig {
                    fields: vec![FieldRuleConfig {
                        resource: "pods".into(),
                        group: String::new(),
                        kind: None,
                        paths: vec!["spec..x".into()],
                        when: None,
                        columns: vec![],
                    }],
                    ..Default::default()
                },
                "empty segment",
            ),
        ];
        for (profile, want) in cases {
            let err = MaskProfile::compile("p1", &profile).expect_err("refused");
            let text = err.to_string();
            assert!(text.contains("\"p1\"") && text.contains(want), "{text}");
        }
        assert!(MaskProfile::compile("", &ProfileConfig::default()).is_err());
    }

    #[test]
    fn kinds_resolve_by_group() {
        let p = MaskProfile::compile("p", &env_profile()).expect("compiles");
        let secret = p.rules_for_kind(Some("v1"), "Secret");
        assert!(secret.is_some());
        assert_eq!(p.rules_for_kind(None, "Secret"), secret);
        assert_eq!(p.rules_for_kind(Some("example.com/v1"), "Secret"), None);
        assert!(p.rules_for_kind(Some("v1"), "Pod").is_some());
        assert_eq!(p.rules_for_kind(Some("v1"), "Service"), None);
        assert_eq!(
            p.rules_for_resource("", "pods"),
            p.rules_for_kind(None, "Pod")
        );
    }

    #[test]
    fn env_rule_masks_only_matching_names() {
        let p = MaskProfile::compile("p", &env_profile()).expect("compiles");
        let rules = p
            .kind(p.rules_for_resource("", "pods").expect("pods"))
            .expect("rules");
        let mut pod = serde_json::json!({"spec": {"containers": [{"name": "c", "env": [
            {"name": "db_password", "value": "hunter2"},
            {"name": "LOG_LEVEL", "value": "debug"},
            {"value": "nameless"}
        ]}]}});
        let Value::Object(obj) = &mut pod else {
            unreachable!()
        };
        assert_eq!(rules.mask_object(obj), 2);
        let env = &pod["spec"]["containers"][0]["env"];
        assert_eq!(env[0]["value"], MARKER, "globs are case-insensitive");
        assert_eq!(env[1]["value"], "debug");
        assert_eq!(
            env[2]["value"], MARKER,
            "no name: masked (fail toward masking)"
        );
    }
}
