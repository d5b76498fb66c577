//! The walk over one parsed response document: which parts are objects of which kind.
//!
//! Shapes: a single object; a typed list (`SecretList`, items without `kind`); `v1.List` (items
//! with their own `kind`); `PartialObjectMetadata(List)` (metadata only; the kind is the
//! request's resource); meta.k8s.io `Table` (each row's `object`, and cells of masked columns);
//! watch events `{"type", "object"}` whose object is any of these; `Status`, which holds no
//! object and is left alone.

use std::sync::Arc;

use serde_json::{Map, Value};

use super::path::mask_value;
use super::profile::MaskProfile;
use super::MARKER;

pub(crate) struct Walker {
    profile: Arc<MaskProfile>,
    /// Rules for objects that do not name their kind (typed list items, PartialObjectMetadata,
    /// Table rows without an object): those of the request's resource.
    default: Option<usize>,
    /// Lowercase column names of the last Table with column definitions: in a Table watch only
    /// the first event carries them.
    columns: Option<Vec<String>>,
    /// Values masked so far.
    pub masked: u64,
}

impl Walker {
    pub(crate) fn new(profile: Arc<MaskProfile>, default: Option<usize>) -> Self {
        Self {
            profile,
            default,
            columns: None,
            masked: 0,
        }
    }

    /// One watch event; anything without the event shape is walked as a document.
    pub(crate) fn event(&mut self, event: &mut Value) {
        match event {
            Value::Object(map) if map.contains_key("type") && map.contains_key("object") => {
                if let Some(object) = map.get_mut("object") {
                    self.document(object);
                }
            }
            other => self.document(other),
        }
    }

    pub(crate) fn profile(&self) -> &MaskProfile {
        &self.profile
    }

    /// A whole response body.
    pub(crate) fn document(&mut self, doc: &mut Value) {
        let obj = match doc {
            Value::Object(obj) => obj,
            // Not a Kubernetes shape, but walk what is inside rather than trust it.
            Value::Array(items) => {
                for item in items {
                    self.document(item);
                }
                return;
            }
            _ => return,
        };
        let kind = obj.get("kind").and_then(Value::as_str).unwrap_or_default();
        let api_version = obj.get("apiVersion").and_then(Value::as_str);
        let meta_group = api_version.is_none_or(|v| v.starts_with("meta.k8s.io/"));
        if kind == "Table" && meta_group && obj.get("rows").is_some_and(Value::is_array) {
            self.table(obj);
        } else if kind == "Status" {
            // An API error or a delete confirmation: no object inside.
        } else if (kind.is_empty() || kind.ends_with("List"))
            && obj.get("items").is_some_and(Value::is_array)
        {
            let item_default = match kind {
                "" | "List" | "PartialObjectMetadataList" => self.default,
                typed => self
                    .profile
                    .rules_for_kind(api_version, typed.trim_end_matches("List"))
                    .or(self.default),
            };
            if let Some(Value::Array(items)) = obj.get_mut("items") {
                for item in items {
                    self.object(item, item_default);
                }
            }
        } else {
            self.object(doc, self.default);
        }
    }

    /// Masks one object by its kind (or `default` when it names none); returns the rules used.
    fn object(&mut self, value: &mut Value, default: Option<usize>) -> Option<usize> {
        let Value::Object(obj) = value else {
            return None;
        };
        let rules = match obj.get("kind").and_then(Value::as_str) {
            None | Some("") | Some("PartialObjectMetadata") => default,
            Some(kind) => {
                let api_version = obj.get("apiVersion").and_then(Value::as_str);
                self.profile.rules_for_kind(api_version, kind)
            }
        };
        if let Some(rules) = rules.and_then(|at| self.profile.kind(at)) {
            self.masked += rules.mask_object(obj);
        }
        rules
    }

    fn table(&mut self, table: &mut Map<String, Value>) {
        if let Some(Value::Array(definitions)) = table.get("columnDefinitions") {
            if !definitions.is_empty() {
                self.columns = Some(
                    definitions
                        .iter()
                        .map(|d| {
                            d.get("name")
                                .and_then(Value::as_str)
                                .unwrap_or_default()
                                .to_lowercase()
                        })
                        .collect(),
                );
            }
        }
        let Some(Value::Array(rows)) = table.get_mut("rows") else {
            return;
        };
        for row in rows {
            let Value::Object(row) = row else { continue };
            let rules = match row.get_mut("object") {
                Some(object) if object.is_object() => self.object(object, self.default),
                _ => self.default,
            };
            let masked_columns = rules
                .and_then(|at| self.profile.kind(at))
                .map(|r| r.columns.as_slice())
                .unwrap_or_default();
            if masked_columns.is_empty() {
                continue;
            }
            let Some(Value::Array(cells)) = row.get_mut("cells") else {
                continue;
            };
            match &self.columns {
                Some(names) => {
                    for (cell, name) in cells.iter_mut().zip(names) {
                        if masked_columns.contains(name) {
                            self.masked += mask_value(cell, MARKER);
                        }
                    }
                    // Cells beyond the known columns cannot be told apart: mask them.
                    for cell in cells.iter_mut().skip(names.len()) {
                        self.masked += mask_value(cell, MARKER);
                    }
                }
                // No column definitions seen: any cell could be a masked column.
                None => {
                    for cell in cells.iter_mut() {
                        self.masked += mask_value(cell, MARKER);
                    }
                }
            }
        }
    }
}
