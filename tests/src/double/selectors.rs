//! Label and field selectors as the API server parses and applies them (`labelSelector`, `fieldSelector` query
//! parameters). Pure functions over JSON objects; this module must never touch the store or the network.

use std::collections::BTreeSet;

use serde_json::{Map, Value};

use super::resources::ResourceDef;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SelectorError {
    #[error("unable to parse requirement: {0}")]
    Label(String),
    #[error("invalid selector: {0}")]
    Field(String),
    #[error("\"{field}\" is not a known field selector: only {allowed}")]
    UnknownField { field: String, allowed: String },
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum LabelOp {
    Equals(String),
    NotEquals(String),
    In(BTreeSet<String>),
    NotIn(BTreeSet<String>),
    Exists,
    DoesNotExist,
    GreaterThan(i64),
    LessThan(i64),
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct LabelRequirement {
    key: String,
    op: LabelOp,
}

/// A parsed `labelSelector`; the empty selector matches everything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LabelSelector {
    requirements: Vec<LabelRequirement>,
}

impl LabelSelector {
    pub fn parse(text: &str) -> Result<Self, SelectorError> {
        let mut requirements = Vec::new();
        for part in split_outside_parens(text) {
            let part = part.trim();
            if part.is_empty() {
                if text.trim().is_empty() {
                    continue;
                }
                return Err(SelectorError::Label(format!(
                    "empty requirement in {text:?}"
                )));
            }
            requirements.push(parse_requirement(part)?);
        }
        Ok(Self { requirements })
    }

    pub fn is_empty(&self) -> bool {
        self.requirements.is_empty()
    }

    /// Applies the selector to `metadata.labels` of `object`.
    pub fn matches(&self, object: &Value) -> bool {
        let empty = Map::new();
        let labels = object
            .pointer("/metadata/labels")
            .and_then(Value::as_object)
            .unwrap_or(&empty);
        self.requirements.iter().all(|r| {
            let value = labels.get(&r.key).and_then(Value::as_str);
            match &r.op {
                LabelOp::Equals(v) => value == Some(v.as_str()),
                LabelOp::NotEquals(v) => value != Some(v.as_str()),
                LabelOp::In(set) => value.is_some_and(|x| set.contains(x)),
                LabelOp::NotIn(set) => !value.is_some_and(|x| set.contains(x)),
                LabelOp::Exists => value.is_some(),
                LabelOp::DoesNotExist => value.is_none(),
                LabelOp::GreaterThan(n) => value
                    .and_then(|x| x.parse::<i64>().ok())
                    .is_some_and(|x| x > *n),
                LabelOp::LessThan(n) => value
                    .and_then(|x| x.parse::<i64>().ok())
                    .is_some_and(|x| x < *n),
            }
        })
    }
}

/// Splits on commas that are not inside `( ... )`, so `a in (x,y),b` gives two requirements.
fn split_outside_parens(text: &str) -> Vec<&str> {
    let mut parts = Vec::new();
    let mut depth = 0usize;
    let mut start = 0;
    for (i, c) in text.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth = depth.saturating_sub(1),
            ',' if depth == 0 => {
                parts.push(&text[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&text[start..]);
    parts
}

fn is_key_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '/')
}

fn validate_key(key: &str, whole: &str) -> Result<(), SelectorError> {
    let (prefix, name) = match key.split_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, key),
    };
    let name_ok = !name.is_empty()
        && name.len() <= 63
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name.ends_with(|c: char| c.is_ascii_alphanumeric())
        && !name.contains('/');
    let prefix_ok = prefix.is_none_or(|p| !p.is_empty() && p.len() <= 253 && !p.contains('_'));
    if name_ok && prefix_ok {
        Ok(())
    } else {
        Err(SelectorError::Label(format!(
            "invalid label key {key:?} in {whole:?}: name part must consist of alphanumeric characters, '-', '_' \
             or '.', and must start and end with an alphanumeric character"
        )))
    }
}

fn validate_value(value: &str, whole: &str) -> Result<String, SelectorError> {
    let ok = value.len() <= 63
        && value
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        && (value.is_empty()
            || (value.starts_with(|c: char| c.is_ascii_alphanumeric())
                && value.ends_with(|c: char| c.is_ascii_alphanumeric())));
    if ok {
        Ok(value.to_string())
    } else {
        Err(SelectorError::Label(format!(
            "invalid label value {value:?} in {whole:?}"
        )))
    }
}

fn parse_requirement(part: &str) -> Result<LabelRequirement, SelectorError> {
    if let Some(rest) = part.strip_prefix('!') {
        let key = rest.trim();
        validate_key(key, part)?;
        return Ok(LabelRequirement {
            key: key.to_string(),
            op: LabelOp::DoesNotExist,
        });
    }
    let key_end = part.find(|c: char| !is_key_char(c)).unwrap_or(part.len());
    let key = &part[..key_end];
    validate_key(key, part)?;
    let rest = part[key_end..].trim_start();
    let op = if rest.is_empty() {
        LabelOp::Exists
    } else if let Some(v) = rest.strip_prefix("==") {
        LabelOp::Equals(validate_value(v.trim(), part)?)
    } else if let Some(v) = rest.strip_prefix("!=") {
        LabelOp::NotEquals(validate_value(v.trim(), part)?)
    } else if let Some(v) = rest.strip_prefix('=') {
        LabelOp::Equals(validate_value(v.trim(), part)?)
    } else if let Some(v) = rest.strip_prefix('>') {
        LabelOp::GreaterThan(parse_int(v, part)?)
    } else if let Some(v) = rest.strip_prefix('<') {
        LabelOp::LessThan(parse_int(v, part)?)
    } else if let Some(v) = strip_word(rest, "notin") {
        LabelOp::NotIn(parse_set(v, part)?)
    } else if let Some(v) = strip_word(rest, "in") {
        LabelOp::In(parse_set(v, part)?)
    } else {
        return Err(SelectorError::Label(format!(
            "found '{rest}', expected: in, notin, =, ==, !=, gt, lt"
        )));
    };
    Ok(LabelRequirement {
        key: key.to_string(),
        op,
    })
}

fn strip_word<'a>(text: &'a str, word: &str) -> Option<&'a str> {
    let rest = text.strip_prefix(word)?;
    (rest.starts_with(char::is_whitespace) || rest.starts_with('(')).then_some(rest)
}

fn parse_int(text: &str, whole: &str) -> Result<i64, SelectorError> {
    text.trim().parse().map_err(|_| {
        SelectorError::Label(format!(
            "for 'gt', 'lt' operators, the value must be an integer in {whole:?}"
        ))
    })
}

fn parse_set(text: &str, whole: &str) -> Result<BTreeSet<String>, SelectorError> {
    let inner = text
        .trim()
        .strip_prefix('(')
        .and_then(|t| t.strip_suffix(')'))
        .ok_or_else(|| {
            SelectorError::Label(format!(
                "found '{}', expected: '(' ... ')' in {whole:?}",
                text.trim()
            ))
        })?;
    let mut set = BTreeSet::new();
    for v in inner.split(',') {
        set.insert(validate_value(v.trim(), whole)?);
    }
    if set.iter().all(String::is_empty) {
        return Err(SelectorError::Label(format!(
            "for 'in', 'notin' operators, values set can't be empty in {whole:?}"
        )));
    }
    Ok(set)
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct FieldRequirement {
    field: String,
    equals: bool,
    value: String,
}

/// A parsed `fieldSelector` (`=`, `==`, `!=` on the fields a resource supports).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FieldSelector {
    requirements: Vec<FieldRequirement>,
}

/// The field labels a resource accepts in a field selector, beyond metadata.name and metadata.namespace.
fn extra_fields(res: &ResourceDef) -> &'static [&'static str] {
    match (res.group, res.plural) {
        ("", "pods") => &[
            "spec.nodeName",
            "spec.restartPolicy",
            "spec.schedulerName",
            "spec.serviceAccountName",
            "spec.hostNetwork",
            "status.phase",
            "status.podIP",
            "status.nominatedNodeName",
        ],
        ("", "secrets") => &["type"],
        ("", "namespaces") => &["status.phase"],
        ("", "events") => &[
            "involvedObject.kind",
            "involvedObject.namespace",
            "involvedObject.name",
            "involvedObject.uid",
            "involvedObject.apiVersion",
            "involvedObject.resourceVersion",
            "involvedObject.fieldPath",
            "reason",
            "reportingComponent",
            "source",
            "type",
        ],
        _ => &[],
    }
}

impl FieldSelector {
    /// Parses and validates `text` against the fields `res` supports.
    pub fn parse(text: &str, res: &ResourceDef) -> Result<Self, SelectorError> {
        let mut requirements = Vec::new();
        for part in split_unescaped(text, ',') {
            let part = part.trim();
            if part.is_empty() {
                continue;
            }
            let (field, equals, value) = if let Some((f, v)) = part.split_once("!=") {
                (f, false, v)
            } else if let Some((f, v)) = part.split_once("==") {
                (f, true, v)
            } else if let Some((f, v)) = part.split_once('=') {
                (f, true, v)
            } else {
                return Err(SelectorError::Field(format!(
                    "invalid selector: '{part}'; can't understand '{part}'"
                )));
            };
            let field = field.trim();
            let known = matches!(field, "metadata.name" | "metadata.namespace")
                || extra_fields(res).contains(&field);
            if !known {
                let mut allowed: Vec<String> =
                    vec!["\"metadata.name\"".into(), "\"metadata.namespace\"".into()];
                allowed.extend(extra_fields(res).iter().map(|f| format!("\"{f}\"")));
                return Err(SelectorError::UnknownField {
                    field: field.to_string(),
                    allowed: allowed.join(", "),
                });
            }
            requirements.push(FieldRequirement {
                field: field.to_string(),
                equals,
                value: unescape(value.trim()),
            });
        }
        Ok(Self { requirements })
    }

    /// A selector matching one object by name (legacy watch paths and `watch` on an item URL).
    pub fn for_name(name: &str) -> Self {
        Self {
            requirements: vec![FieldRequirement {
                field: "metadata.name".into(),
                equals: true,
                value: name.into(),
            }],
        }
    }

    pub fn and(mut self, other: FieldSelector) -> Self {
        self.requirements.extend(other.requirements);
        self
    }

    pub fn matches(&self, object: &Value) -> bool {
        self.requirements.iter().all(|r| {
            let actual = field_value(object, &r.field);
            (actual == r.value) == r.equals
        })
    }
}

/// The string the API server compares for a field label; missing fields compare as "".
fn field_value(object: &Value, field: &str) -> String {
    if field == "source" {
        return object
            .pointer("/source/component")
            .or_else(|| object.get("reportingComponent"))
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
    }
    let pointer = format!("/{}", field.replace('.', "/"));
    match object.pointer(&pointer) {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Bool(b)) => b.to_string(),
        Some(Value::Number(n)) => n.to_string(),
        _ => String::new(),
    }
}

fn split_unescaped(text: &str, sep: char) -> Vec<&str> {
    let mut parts = Vec::new();
    let mut start = 0;
    let mut escaped = false;
    for (i, c) in text.char_indices() {
        if escaped {
            escaped = false;
        } else if c == '\\' {
            escaped = true;
        } else if c == sep {
            parts.push(&text[start..i]);
            start = i + 1;
        }
    }
    parts.push(&text[start..]);
    parts
}

fn unescape(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    let mut chars = value.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            if let Some(n) = chars.next() {
                out.push(n);
            }
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::double::resources::lookup;
    use serde_json::json;

    fn obj(labels: Value) -> Value {
        json!({"metadata": {"name": "x", "namespace": "default", "labels": labels}})
    }

    #[test]
    fn label_operators() {
        let o = obj(json!({"app": "web", "tier": "front", "n": "5"}));
        let cases = [
            ("", true),
            ("app=web", true),
            ("app==web", true),
            ("app!=web", false),
            ("app!=db", true),
            ("missing!=x", true),
            ("app in (web, db)", true),
            ("app in (db)", false),
            ("app notin (db)", true),
            ("app notin (web)", false),
            ("missing notin (web)", true),
            ("tier", true),
            ("!tier", false),
            ("!missing", true),
            ("app=web,tier=front", true),
            ("app=web,tier=back", false),
            ("app in (web,db),!missing", true),
            ("n>4", true),
            ("n<4", false),
        ];
        for (sel, want) in cases {
            let s = LabelSelector::parse(sel).unwrap_or_else(|e| panic!("{sel}: {e}"));
            assert_eq!(s.matches(&o), want, "{sel}");
        }
        assert!(LabelSelector::parse("").unwrap().is_empty());
    }

    #[test]
    fn label_errors() {
        for bad in [
            "app in web",
            "app=we b",
            "=x",
            "app in ()",
            "app ~ x",
            "a,,b",
            "-x=y",
        ] {
            assert!(LabelSelector::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn object_without_labels() {
        let o = json!({"metadata": {"name": "x"}});
        assert!(LabelSelector::parse("!app").unwrap().matches(&o));
        assert!(!LabelSelector::parse("app").unwrap().matches(&o));
    }

    #[test]
    fn field_selectors() {
        let pods = lookup("", "v1", "pods").unwrap();
        let pod = json!({"metadata": {"name": "web-0", "namespace": "default"},
                         "spec": {"nodeName": "node-1"}, "status": {"phase": "Running"}});
        let ok = |s: &str| FieldSelector::parse(s, pods).unwrap().matches(&pod);
        assert!(ok("metadata.name=web-0"));
        assert!(ok("metadata.name==web-0,metadata.namespace=default"));
        assert!(!ok("metadata.name!=web-0"));
        assert!(ok("status.phase=Running"));
        assert!(!ok("status.phase!=Running"));
        assert!(ok("spec.nodeName=node-1"));
        assert!(ok("status.podIP="));
        let err = FieldSelector::parse("spec.foo=bar", pods).unwrap_err();
        assert!(
            err.to_string().contains("is not a known field selector"),
            "{err}"
        );
        let secrets = lookup("", "v1", "secrets").unwrap();
        let s = json!({"metadata": {"name": "a"}, "type": "Opaque"});
        assert!(FieldSelector::parse("type=Opaque", secrets)
            .unwrap()
            .matches(&s));
        assert!(FieldSelector::parse("status.phase=Running", secrets).is_err());
        assert!(FieldSelector::parse("nonsense", secrets).is_err());
        assert!(FieldSelector::for_name("a").matches(&s));
    }

    #[test]
    fn field_selector_escapes() {
        let cms = lookup("", "v1", "configmaps").unwrap();
        let o = json!({"metadata": {"name": "a,b"}});
        assert!(FieldSelector::parse(r"metadata.name=a\,b", cms)
            .unwrap()
            .matches(&o));
    }
}
