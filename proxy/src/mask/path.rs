//! Field paths (`spec.containers[*].env[*].value`) and masking the values they reach.

use serde_json::Value;

use super::MARKER;

/// One step of a path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Step {
    /// An object's field.
    Field(String),
    /// Every element of an array (`[*]`).
    Each,
    /// Every value of an object (`*`).
    AnyKey,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct FieldPath {
    steps: Vec<Step>,
}

impl FieldPath {
    /// Parses `a.b[*].c`, `data.*`, `metadata.annotations["example.com/key"]`.
    pub(crate) fn parse(text: &str) -> Result<Self, String> {
        let bad = |why: &str| format!("field path {text:?}: {why}");
        let mut steps = Vec::new();
        let mut rest = text;
        loop {
            let end = rest.find(['.', '[']).unwrap_or(rest.len());
            let name = &rest[..end];
            match name {
                "" => return Err(bad("empty segment")),
                "*" => steps.push(Step::AnyKey),
                name if name.contains([']', '"', '*']) => {
                    return Err(bad("a segment contains ']', '\"' or '*'"))
                }
                name => steps.push(Step::Field(name.to_owned())),
            }
            rest = &rest[end..];
            while let Some(inner) = rest.strip_prefix('[') {
                if let Some(after) = inner.strip_prefix("*]") {
                    steps.push(Step::Each);
                    rest = after;
                } else if let Some(quoted) = inner.strip_prefix('"') {
                    let close = quoted
                        .find("\"]")
                        .ok_or_else(|| bad("unterminated [\"...\"]"))?;
                    let key = &quoted[..close];
                    if key.is_empty() {
                        return Err(bad("empty [\"\"] key"));
                    }
                    steps.push(Step::Field(key.to_owned()));
                    rest = &quoted[close + 2..];
                } else {
                    return Err(bad("expected [*] or [\"key\"]"));
                }
            }
            match rest.strip_prefix('.') {
                Some("") => return Err(bad("trailing '.'")),
                Some(after) => rest = after,
                None if rest.is_empty() => break,
                None => return Err(bad("expected '.' after ']'")),
            }
        }
        Ok(Self { steps })
    }

    /// Whether the last step names a field, the only shape a `when` condition applies to.
    pub(crate) fn ends_in_field(&self) -> bool {
        matches!(self.steps.last(), Some(Step::Field(_)))
    }

    /// Masks every value the path reaches in `root`. `when` is asked about the object holding
    /// the last field; it must say yes for that field to be masked. Returns how many values
    /// were masked.
    pub(crate) fn mask(
        &self,
        root: &mut Value,
        when: &dyn Fn(&serde_json::Map<String, Value>) -> bool,
    ) -> u64 {
        mask_steps(root, &self.steps, when)
    }
}

fn mask_steps(
    value: &mut Value,
    steps: &[Step],
    when: &dyn Fn(&serde_json::Map<String, Value>) -> bool,
) -> u64 {
    let Some((step, rest)) = steps.split_first() else {
        return mask_value(value, MARKER);
    };
    match (step, value) {
        (Step::Field(name), Value::Object(map)) => {
            if rest.is_empty() && !when(map) {
                return 0;
            }
            map.get_mut(name)
                .map_or(0, |child| mask_steps(child, rest, when))
        }
        (Step::Each, Value::Array(items)) => items
            .iter_mut()
            .map(|item| mask_steps(item, rest, when))
            .sum(),
        (Step::AnyKey, Value::Object(map)) => map
            .values_mut()
            .map(|child| mask_steps(child, rest, when))
            .sum(),
        _ => 0,
    }
}

/// Replaces every scalar in `value` by `marker`, keeping the shape of objects and arrays (so a
/// typed client still decodes them). `null` stays `null`: it holds nothing. Returns how many
/// scalars were replaced.
pub(crate) fn mask_value(value: &mut Value, marker: &str) -> u64 {
    match value {
        Value::Null => 0,
        Value::String(s) if s == marker => 0,
        Value::Bool(_) | Value::Number(_) | Value::String(_) => {
            *value = Value::String(marker.to_owned());
            1
        }
        Value::Array(items) => items.iter_mut().map(|v| mask_value(v, marker)).sum(),
        Value::Object(map) => map.values_mut().map(|v| mask_value(v, marker)).sum(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn field(name: &str) -> Step {
        Step::Field(name.to_owned())
    }

    #[test]
    fn parses_paths() {
        let p = FieldPath::parse("spec.containers[*].env[*].value").expect("valid");
        assert_eq!(
            p.steps,
            vec![
                field("spec"),
                field("containers"),
                Step::Each,
                field("env"),
                Step::Each,
                field("value")
            ]
        );
        assert!(p.ends_in_field());
        let p = FieldPath::parse("data.*").expect("valid");
        assert_eq!(p.steps, vec![field("data"), Step::AnyKey]);
        assert!(!p.ends_in_field());
        let p =
            FieldPath::parse("metadata.annotations[\"example.com/db.password\"]").expect("valid");
        assert_eq!(
            p.steps,
            vec![
                field("metadata"),
                field("annotations"),
                field("example.com/db.password")
            ]
        );
        let p = FieldPath::parse("spec.matrix[*][*].x").expect("valid");
        assert_eq!(
            p.steps,
            vec![
                field("spec"),
                field("matrix"),
                Step::Each,
                Step::Each,
                field("x")
            ]
        );
    }

    #[test]
    fn rejects_bad_paths() {
        for bad in [
            "", ".", "a.", ".a", "a..b", "a[", "a[0]", "a[*", "a[\"x", "a[\"\"]", "a[*]b", "[*]",
            "a.b*", "a]",
        ] {
            assert!(FieldPath::parse(bad).is_err(), "{bad:?} should be refused");
        }
    }

    #[test]
    fn masks_through_arrays_and_maps() {
        let mut pod = json!({"spec": {"containers": [
            {"name": "a", "env": [{"name": "DB_PASSWORD", "value": "hunter2"}, {"name": "MODE", "value": "prod"}]},
            {"name": "b", "env": [{"name": "API_TOKEN", "value": "t0k"}, {"name": "REF", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}}]},
            {"name": "c"}
        ]}});
        let path = FieldPath::parse("spec.containers[*].env[*].value").expect("valid");
        let sensitive = |m: &serde_json::Map<String, Value>| {
            m.get("name")
                .and_then(Value::as_str)
                .is_some_and(|n| n.contains("PASSWORD") || n.contains("TOKEN"))
        };
        assert_eq!(path.mask(&mut pod, &sensitive), 2);
        let env = &pod["spec"]["containers"];
        assert_eq!(env[0]["env"][0]["value"], MARKER);
        assert_eq!(env[0]["env"][1]["value"], "prod");
        assert_eq!(env[1]["env"][0]["value"], MARKER);
        assert_eq!(env[1]["env"][1]["valueFrom"]["secretKeyRef"]["key"], "k");
        assert!(
            env[1]["env"][1].get("value").is_none(),
            "no field is invented"
        );

        let mut cm = json!({"data": {"a": "1", "b": "2"}});
        let all = FieldPath::parse("data.*").expect("valid");
        assert_eq!(all.mask(&mut cm, &|_| true), 2);
        assert_eq!(cm, json!({"data": {"a": MARKER, "b": MARKER}}));
    }

    #[test]
    fn mask_value_keeps_shape() {
        let mut v = json!({"a": [1, true, "x", null, {"b": 2.5}], "c": MARKER});
        assert_eq!(mask_value(&mut v, MARKER), 4);
        assert_eq!(
            v,
            json!({"a": [MARKER, MARKER, MARKER, null, {"b": MARKER}], "c": MARKER})
        );
    }

    #[test]
    fn wrong_shapes_are_skipped() {
        let mut v = json!({"spec": {"containers": {"not": "an array"}}});
        let path = FieldPath::parse("spec.containers[*].env").expect("valid");
        assert_eq!(path.mask(&mut v, &|_| true), 0);
        assert_eq!(v, json!({"spec": {"containers": {"not": "an array"}}}));
    }
}
