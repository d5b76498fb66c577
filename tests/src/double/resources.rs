//! The static catalogue of API resources the double serves: group, version, kind, scope, verbs, short names and
//! subresources. Discovery, routing and the store all read this one table so they cannot disagree.
//! It must never hold state; objects live in the store.

/// How a resource's objects are handled.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Storage {
    /// Ordinary objects kept in the in-memory store.
    Stored,
    /// Create-only review resources answered from the caller's identity and never stored.
    Review,
}

/// One subresource listed in discovery (e.g. `pods/log`).
#[derive(Debug)]
pub struct SubresourceDef {
    pub name: &'static str,
    pub kind: &'static str,
    /// Group and version of `kind` when it differs from the parent's (e.g. autoscaling/v1 Scale); empty otherwise.
    pub group: &'static str,
    pub version: &'static str,
    pub verbs: &'static [&'static str],
}

/// One resource (plural name) of one group version.
#[derive(Debug)]
pub struct ResourceDef {
    pub group: &'static str,
    pub version: &'static str,
    pub plural: &'static str,
    pub singular: &'static str,
    pub kind: &'static str,
    pub namespaced: bool,
    pub verbs: &'static [&'static str],
    pub short_names: &'static [&'static str],
    pub categories: &'static [&'static str],
    pub subresources: &'static [SubresourceDef],
    pub storage: Storage,
}

impl ResourceDef {
    /// `v1` for the core group, `group/version` otherwise.
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.to_string()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    /// The "group resource" string the API server uses in messages: `pods`, `deployments.apps`.
    pub fn qualified(&self) -> String {
        if self.group.is_empty() {
            self.plural.to_string()
        } else {
            format!("{}.{}", self.plural, self.group)
        }
    }

    pub fn allows(&self, verb: &str) -> bool {
        self.verbs.contains(&verb)
    }

    pub fn subresource(&self, name: &str) -> Option<&'static SubresourceDef> {
        self.subresources.iter().find(|s| s.name == name)
    }

    /// True for kinds whose `metadata.generation` tracks spec changes.
    pub fn has_generation(&self) -> bool {
        matches!(self.kind, "Deployment" | "Pod")
    }
}

/// Catalogue entries are unique statics, so identity is equality.
impl PartialEq for ResourceDef {
    fn eq(&self, other: &Self) -> bool {
        std::ptr::eq(self, other)
    }
}

impl Eq for ResourceDef {}

const ALL_VERBS: &[&str] = &[
    "create",
    "delete",
    "deletecollection",
    "get",
    "list",
    "patch",
    "update",
    "watch",
];
const NAMESPACE_VERBS: &[&str] = &[
    "create", "delete", "get", "list", "patch", "update", "watch",
];
const STATUS_VERBS: &[&str] = &["get", "patch", "update"];
const CREATE_ONLY: &[&str] = &["create"];

/// Every resource the double knows, in discovery order.
pub static RESOURCES: &[ResourceDef] = &[
    ResourceDef {
        group: "",
        version: "v1",
        plural: "configmaps",
        singular: "configmap",
        kind: "ConfigMap",
        namespaced: true,
        verbs: ALL_VERBS,
        short_names: &["cm"],
        categories: &[],
        subresources: &[],
        storage: Storage::Stored,
    },
    ResourceDef {
        group: "",
        version: "v1",
        plural: "events",
        singular: "event",
        kind: "Event",
        namespaced: true,
        verbs: ALL_VERBS,
        short_names: &["ev"],
        categories: &[],
        subresources: &[],
        storage: Storage::Stored,
    },
    ResourceDef {
        group: "",
        version: "v1",
        plural: "namespaces",
        singular: "namespace",
        kind: "Namespace",
        namespaced: false,
        verbs: NAMESPACE_VERBS,
        short_names: &["ns"],
        categories: &[],
        subresources: &[
            SubresourceDef {
                name: "finalize",
                kind: "Namespace",
                group: "",
                version: "",
                verbs: &["update"],
            },
            SubresourceDef {
                name: "status",
                kind: "Namespace",
                group: "",
                version: "",
                verbs: STATUS_VERBS,
            },
        ],
        storage: Storage::Stored,
    },
    ResourceDef {
        group: "",
        version: "v1",
        plural: "pods",
        singular: "pod",
        kind: "Pod",
        namespaced: true,
        verbs: ALL_VERBS,
        short_names: &["po"],
        categories: &["all"],
        subresources: &[
            SubresourceDef {
                name: "attach",
                kind: "PodAttachOptions",
                group: "",
                version: "",
                verbs: &["create", "get"],
            },
            SubresourceDef {
                name: "exec",
                kind: "PodExecOptions",
                group: "",
                version: "",
                verbs: &["create", "get"],
            },
            SubresourceDef {
                name: "log",
                kind: "Pod",
                group: "",
                version: "",
                verbs: &["get"],
            },
            SubresourceDef {
                name: "portforward",
                kind: "PodPortForwardOptions",
                group: "",
                version: "",
                verbs: &["create", "get"],
            },
            SubresourceDef {
                name: "status",
                kind: "Pod",
                group: "",
                version: "",
                verbs: STATUS_VERBS,
            },
        ],
        storage: Storage::Stored,
    },
    ResourceDef {
        group: "",
        version: "v1",
        plural: "secrets",
        singular: "secret",
        kind: "Secret",
        namespaced: true,
        verbs: ALL_VERBS,
        short_names: &[],
        categories: &[],
        subresources: &[],
        storage: Storage::Stored,
    },
    ResourceDef {
        group: "",
        version: "v1",
        plural: "serviceaccounts",
        singular: "serviceaccount",
        kind: "ServiceAccount",
        namespaced: true,
        verbs: ALL_VERBS,
        short_names: &["sa"],
        categories: &[],
        subresources: &[],
        storage: Storage::Stored,
    },
    ResourceDef {
        group: "apps",
        version: "v1",
        plural: "deployments",
        singular: "deployment",
        kind: "Deployment",
        namespaced: true,
        verbs: ALL_VERBS,
        short_names: &["deploy"],
        categories: &["all"],
        subresources: &[
            SubresourceDef {
                name: "scale",
                kind: "Scale",
                group: "autoscaling",
                version: "v1",
                verbs: STATUS_VERBS,
            },
            SubresourceDef {
                name: "status",
                kind: "Deployment",
                group: "",
                version: "",
                verbs: STATUS_VERBS,
            },
        ],
        storage: Storage::Stored,
    },
    ResourceDef {
        group: "authentication.k8s.io",
        version: "v1",
        plural: "selfsubjectreviews",
        singular: "selfsubjectreview",
        kind: "SelfSubjectReview",
        namespaced: false,
        verbs: CREATE_ONLY,
        short_names: &[],
        categories: &[],
        subresources: &[],
        storage: Storage::Review,
    },
    ResourceDef {
        group: "authorization.k8s.io",
        version: "v1",
        plural: "selfsubjectaccessreviews",
        singular: "selfsubjectaccessreview",
        kind: "SelfSubjectAccessReview",
        namespaced: false,
        verbs: CREATE_ONLY,
        short_names: &[],
        categories: &[],
        subresources: &[],
        storage: Storage::Review,
    },
    ResourceDef {
        group: "authorization.k8s.io",
        version: "v1",
        plural: "selfsubjectrulesreviews",
        singular: "selfsubjectrulesreview",
        kind: "SelfSubjectRulesReview",
        namespaced: false,
        verbs: CREATE_ONLY,
        short_names: &[],
        categories: &[],
        subresources: &[],
        storage: Storage::Review,
    },
];

/// The API groups under /apis, each with its single served version.
pub static GROUPS: &[(&str, &str)] = &[
    ("apps", "v1"),
    ("authentication.k8s.io", "v1"),
    ("authorization.k8s.io", "v1"),
];

/// Finds a resource by group, version and plural name.
pub fn lookup(group: &str, version: &str, plural: &str) -> Option<&'static ResourceDef> {
    RESOURCES
        .iter()
        .find(|r| r.group == group && r.version == version && r.plural == plural)
}

/// Finds a stored resource by group and kind (used for objects seeded or decoded without a path).
pub fn by_kind(group: &str, kind: &str) -> Option<&'static ResourceDef> {
    RESOURCES
        .iter()
        .find(|r| r.group == group && r.kind == kind)
}

/// All resources of one group version, in discovery order.
pub fn of_group_version<'a>(
    group: &'a str,
    version: &'a str,
) -> impl Iterator<Item = &'static ResourceDef> + 'a {
    RESOURCES
        .iter()
        .filter(move |r| r.group == group && r.version == version)
}

/// True if `group/version` is served.
pub fn serves_group_version(group: &str, version: &str) -> bool {
    if group.is_empty() {
        return version == "v1";
    }
    GROUPS.iter().any(|(g, v)| *g == group && *v == version)
}

pub fn namespaces() -> &'static ResourceDef {
    lookup("", "v1", "namespaces").expect("namespaces is in the catalogue")
}

pub fn pods() -> &'static ResourceDef {
    lookup("", "v1", "pods").expect("pods is in the catalogue")
}

pub fn serviceaccounts() -> &'static ResourceDef {
    lookup("", "v1", "serviceaccounts").expect("serviceaccounts is in the catalogue")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lookup_and_naming() {
        let d = lookup("apps", "v1", "deployments").unwrap();
        assert_eq!(d.api_version(), "apps/v1");
        assert_eq!(d.qualified(), "deployments.apps");
        assert_eq!(pods().api_version(), "v1");
        assert_eq!(pods().qualified(), "pods");
        assert!(pods().subresource("exec").is_some());
        assert!(lookup("", "v1", "nodes").is_none());
        assert!(serves_group_version("apps", "v1"));
        assert!(!serves_group_version("batch", "v1"));
        assert_eq!(by_kind("", "Secret").unwrap().plural, "secrets");
    }

    #[test]
    fn every_served_group_has_resources() {
        for (g, v) in GROUPS {
            assert!(of_group_version(g, v).next().is_some(), "{g}/{v}");
        }
    }
}
