//! URL paths to routes, the way the API server's RequestInfo resolver reads them: discovery documents, health
//! checks, and resource paths (cluster-scoped, namespaced, all-namespaces, legacy `/watch/` prefix, subresources).
//! Pure parsing; it must never look at the store.

use percent_encoding::percent_decode_str;

use super::resources::{self, ResourceDef};
use super::status::ApiError;

/// A resource path, resolved against the catalogue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResourcePath {
    pub resource: &'static ResourceDef,
    /// The namespace segment, if the path had one.
    pub namespace: Option<String>,
    pub name: Option<String>,
    pub subresource: Option<String>,
    /// The deprecated `/watch/` path prefix was used.
    pub legacy_watch: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    Version,
    Health,
    CoreVersions,
    GroupList,
    Group(String),
    ResourceList { group: String, version: String },
    Resource(ResourcePath),
}

/// Resolves `path` (as received, percent-encoded) to a route, or the 404 the API server would give.
pub fn parse(path: &str) -> Result<Route, ApiError> {
    let segments: Vec<String> = path
        .split('/')
        .filter(|s| !s.is_empty())
        .map(|s| percent_decode_str(s).decode_utf8_lossy().into_owned())
        .collect();
    let segs: Vec<&str> = segments.iter().map(String::as_str).collect();
    match segs.as_slice() {
        ["version"] => Ok(Route::Version),
        ["healthz" | "readyz" | "livez", ..] => Ok(Route::Health),
        ["api"] => Ok(Route::CoreVersions),
        ["apis"] => Ok(Route::GroupList),
        ["apis", group] if resources::GROUPS.iter().any(|(g, _)| g == group) => {
            Ok(Route::Group(group.to_string()))
        }
        ["api", version, rest @ ..] => group_version("", version, rest),
        ["apis", group, version, rest @ ..] => group_version(group, version, rest),
        _ => Err(ApiError::no_route()),
    }
}

fn group_version(group: &str, version: &str, rest: &[&str]) -> Result<Route, ApiError> {
    if !resources::serves_group_version(group, version) {
        return Err(ApiError::no_route());
    }
    let (legacy_watch, rest) = match rest {
        ["watch", tail @ ..] => (true, tail),
        other => (false, other),
    };
    if rest.is_empty() {
        return if legacy_watch {
            Err(ApiError::no_route())
        } else {
            Ok(Route::ResourceList {
                group: group.into(),
                version: version.into(),
            })
        };
    }
    let find =
        |plural: &str| resources::lookup(group, version, plural).ok_or_else(ApiError::no_route);
    let namespaces_here = group.is_empty() && rest[0] == "namespaces";
    let path = match rest {
        // /api/v1/namespaces/NAME and its own subresources are the Namespace object itself.
        ["namespaces", name] if namespaces_here => cluster(find("namespaces")?, Some(name), None)?,
        ["namespaces", name, sub @ ("status" | "finalize")] if namespaces_here => {
            cluster(find("namespaces")?, Some(name), Some(sub))?
        }
        ["namespaces", ns, plural, tail @ ..] => {
            let res = find(plural)?;
            if !res.namespaced {
                return Err(ApiError::no_route());
            }
            let (name, sub) = match tail {
                [] => (None, None),
                [name] => (Some(*name), None),
                [name, sub] => (Some(*name), Some(*sub)),
                _ => return Err(ApiError::no_route()),
            };
            check_sub(res, sub)?;
            ResourcePath {
                resource: res,
                namespace: Some(ns.to_string()),
                name: name.map(str::to_string),
                subresource: sub.map(str::to_string),
                legacy_watch,
            }
        }
        [plural] => {
            let res = find(plural)?;
            ResourcePath {
                resource: res,
                namespace: None,
                name: None,
                subresource: None,
                legacy_watch,
            }
        }
        [plural, name] => cluster(find(plural)?, Some(name), None)?,
        [plural, name, sub] => cluster(find(plural)?, Some(name), Some(sub))?,
        _ => return Err(ApiError::no_route()),
    };
    let path = ResourcePath {
        legacy_watch,
        ..path
    };
    if legacy_watch && path.subresource.is_some() {
        return Err(ApiError::no_route());
    }
    Ok(Route::Resource(path))
}

fn cluster(
    res: &'static ResourceDef,
    name: Option<&str>,
    sub: Option<&str>,
) -> Result<ResourcePath, ApiError> {
    if res.namespaced && name.is_some() {
        return Err(ApiError::no_route());
    }
    check_sub(res, sub)?;
    Ok(ResourcePath {
        resource: res,
        namespace: None,
        name: name.map(str::to_string),
        subresource: sub.map(str::to_string),
        legacy_watch: false,
    })
}

fn check_sub(res: &ResourceDef, sub: Option<&str>) -> Result<(), ApiError> {
    match sub {
        Some(s) if res.subresource(s).is_none() => Err(ApiError::no_route()),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::double::resources::lookup;

    fn res(path: &str) -> ResourcePath {
        match parse(path).unwrap() {
            Route::Resource(r) => r,
            other => panic!("{path}: {other:?}"),
        }
    }

    #[test]
    fn discovery_routes() {
        assert_eq!(parse("/version").unwrap(), Route::Version);
        assert_eq!(parse("/version/").unwrap(), Route::Version);
        assert_eq!(parse("/readyz/ping").unwrap(), Route::Health);
        assert_eq!(parse("/api").unwrap(), Route::CoreVersions);
        assert_eq!(parse("/apis").unwrap(), Route::GroupList);
        assert_eq!(parse("/apis/apps").unwrap(), Route::Group("apps".into()));
        assert_eq!(
            parse("/api/v1").unwrap(),
            Route::ResourceList {
                group: "".into(),
                version: "v1".into()
            }
        );
        for missing in [
            "/openapi/v3",
            "/openapi/v2",
            "/apis/batch",
            "/apis/batch/v1",
            "/api/v2",
            "/",
            "/api/v1/nodes",
        ] {
            assert_eq!(parse(missing).unwrap_err().code, 404, "{missing}");
        }
    }

    #[test]
    fn resource_routes() {
        let p = res("/api/v1/namespaces/default/pods/web-0/exec");
        assert_eq!(p.resource, lookup("", "v1", "pods").unwrap());
        assert_eq!(p.namespace.as_deref(), Some("default"));
        assert_eq!(p.name.as_deref(), Some("web-0"));
        assert_eq!(p.subresource.as_deref(), Some("exec"));

        let p = res("/api/v1/namespaces/dev");
        assert_eq!(p.resource.plural, "namespaces");
        assert_eq!(p.name.as_deref(), Some("dev"));
        assert_eq!(p.namespace, None);

        let p = res("/api/v1/namespaces/dev/status");
        assert_eq!(p.subresource.as_deref(), Some("status"));

        let p = res("/api/v1/namespaces");
        assert_eq!(p.name, None);

        let p = res("/api/v1/pods");
        assert_eq!(p.namespace, None);
        assert_eq!(p.name, None);

        let p = res("/apis/apps/v1/namespaces/default/deployments/web/scale");
        assert_eq!(p.resource.qualified(), "deployments.apps");
        assert_eq!(p.subresource.as_deref(), Some("scale"));

        let p = res("/api/v1/watch/namespaces/default/configmaps/x");
        assert!(p.legacy_watch);
        assert_eq!(p.name.as_deref(), Some("x"));

        let p = res("/apis/authentication.k8s.io/v1/selfsubjectreviews");
        assert_eq!(p.resource.kind, "SelfSubjectReview");

        let p = res("/api/v1/namespaces/default/configmaps/a%20b");
        assert_eq!(p.name.as_deref(), Some("a b"));

        for bad in [
            "/api/v1/pods/web-0",
            "/api/v1/namespaces/default/namespaces",
            "/api/v1/namespaces/default/pods/web-0/nope",
            "/api/v1/namespaces/default/pods/web-0/log/extra",
            "/api/v1/watch/namespaces/default/pods/web-0/log",
            "/apis/apps/v1/namespaces/default/nothings",
        ] {
            assert_eq!(parse(bad).unwrap_err().code, 404, "{bad}");
        }
    }
}
