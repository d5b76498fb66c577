//! Legacy discovery documents (/version, /api, /apis, /api/v1, /apis/GROUP, /apis/GROUP/VERSION) built from the
//! resource catalogue. Aggregated discovery is deliberately not offered: answering plain `application/json` makes
//! client-go fall back to these documents. It must never describe a resource the router does not serve.

use serde_json::{json, Map, Value};

use super::resources::{self, ResourceDef, GROUPS};

pub const GIT_VERSION: &str = "v1.35.0";

pub fn version() -> Value {
    json!({
        "major": "1",
        "minor": "35",
        "emulationMajor": "1",
        "emulationMinor": "35",
        "minCompatibilityMajor": "1",
        "minCompatibilityMinor": "34",
        "gitVersion": GIT_VERSION,
        "gitCommit": "66452049f3d692768c39c797b21b793dce80314e",
        "gitTreeState": "clean",
        "buildDate": "2025-12-17T12:32:06Z",
        "goVersion": "go1.25.5",
        "compiler": "gc",
        "platform": "linux/amd64",
    })
}

/// `/api`: the core group's versions. `server_address` is host:port as clients reach the double.
pub fn api_versions(server_address: &str) -> Value {
    json!({
        "kind": "APIVersions",
        "versions": ["v1"],
        "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": server_address}],
    })
}

fn group_entry(name: &str, version: &str) -> Value {
    let gv = json!({"groupVersion": format!("{name}/{version}"), "version": version});
    json!({"name": name, "versions": [gv.clone()], "preferredVersion": gv})
}

/// `/apis`.
pub fn api_group_list() -> Value {
    let groups: Vec<Value> = GROUPS.iter().map(|(g, v)| group_entry(g, v)).collect();
    json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups})
}

/// `/apis/GROUP`, if the group is served.
pub fn api_group(group: &str) -> Option<Value> {
    let (name, version) = GROUPS.iter().find(|(g, _)| *g == group)?;
    let mut doc = group_entry(name, version);
    let map = doc.as_object_mut().expect("object");
    map.insert("kind".into(), json!("APIGroup"));
    map.insert("apiVersion".into(), json!("v1"));
    Some(doc)
}

fn resource_entry(res: &ResourceDef) -> Value {
    let mut m = Map::new();
    m.insert("name".into(), json!(res.plural));
    m.insert("singularName".into(), json!(res.singular));
    m.insert("namespaced".into(), json!(res.namespaced));
    m.insert("kind".into(), json!(res.kind));
    m.insert("verbs".into(), json!(res.verbs));
    if !res.short_names.is_empty() {
        m.insert("shortNames".into(), json!(res.short_names));
    }
    if !res.categories.is_empty() {
        m.insert("categories".into(), json!(res.categories));
    }
    Value::Object(m)
}

/// `/api/v1` or `/apis/GROUP/VERSION`, if served.
pub fn api_resource_list(group: &str, version: &str) -> Option<Value> {
    if !resources::serves_group_version(group, version) {
        return None;
    }
    let mut list = Vec::new();
    for res in resources::of_group_version(group, version) {
        list.push(resource_entry(res));
        for sub in res.subresources {
            let mut m = Map::new();
            m.insert("name".into(), json!(format!("{}/{}", res.plural, sub.name)));
            m.insert("singularName".into(), json!(""));
            m.insert("namespaced".into(), json!(res.namespaced));
            if !sub.group.is_empty() {
                m.insert("group".into(), json!(sub.group));
            }
            if !sub.version.is_empty() {
                m.insert("version".into(), json!(sub.version));
            }
            m.insert("kind".into(), json!(sub.kind));
            m.insert("verbs".into(), json!(sub.verbs));
            list.push(Value::Object(m));
        }
    }
    let group_version = if group.is_empty() {
        version.to_string()
    } else {
        format!("{group}/{version}")
    };
    Some(json!({
        "kind": "APIResourceList",
        "apiVersion": "v1",
        "groupVersion": group_version,
        "resources": list,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn core_resource_list() {
        let doc = api_resource_list("", "v1").unwrap();
        assert_eq!(doc["groupVersion"], "v1");
        let names: Vec<&str> = doc["resources"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["name"].as_str().unwrap())
            .collect();
        for want in [
            "pods",
            "pods/log",
            "pods/exec",
            "pods/attach",
            "pods/status",
            "namespaces",
            "secrets",
            "configmaps",
            "serviceaccounts",
            "events",
        ] {
            assert!(names.contains(&want), "{want} in {names:?}");
        }
        let pods = doc["resources"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["name"] == "pods")
            .unwrap();
        assert_eq!(pods["shortNames"], json!(["po"]));
        assert_eq!(pods["namespaced"], true);
        assert!(pods["verbs"].as_array().unwrap().contains(&json!("watch")));
    }

    #[test]
    fn groups() {
        let list = api_group_list();
        assert_eq!(list["groups"].as_array().unwrap().len(), 3);
        assert_eq!(
            api_group("apps").unwrap()["preferredVersion"]["groupVersion"],
            "apps/v1"
        );
        assert!(api_group("batch").is_none());
        let apps = api_resource_list("apps", "v1").unwrap();
        assert_eq!(apps["groupVersion"], "apps/v1");
        let scale = apps["resources"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["name"] == "deployments/scale")
            .unwrap();
        assert_eq!(scale["group"], "autoscaling");
        assert!(api_resource_list("apps", "v2").is_none());
        assert!(api_resource_list("authentication.k8s.io", "v1").is_some());
    }
}
