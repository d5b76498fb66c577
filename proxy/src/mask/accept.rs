//! Media types: what a masked request asks the API server for, and which answers the masker
//! can read.

/// The `Accept` header to send upstream for a masked request: the client's JSON media ranges in
/// its order, parameters kept (`application/json;as=Table;v=v1;g=meta.k8s.io`), everything else
/// dropped (protobuf, CBOR, YAML, wildcards, ranges refused with `q=0`); `application/json` when
/// nothing is left. client-go decodes by the response's Content-Type, so a client that listed
/// protobuf first still reads the JSON answer.
pub fn rewrite_accept(accept: Option<&str>) -> String {
    let kept: Vec<&str> = accept
        .unwrap_or_default()
        .split(',')
        .map(str::trim)
        .filter(|range| is_json_media_type(range) && !refused(range))
        .collect();
    if kept.is_empty() {
        "application/json".to_owned()
    } else {
        kept.join(",")
    }
}

/// Whether a media type (or range), parameters aside, is `application/json`.
pub fn is_json_media_type(media: &str) -> bool {
    media
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .eq_ignore_ascii_case("application/json")
}

/// Whether a media type, parameters aside, is `text/plain` (what `pods/log` answers).
pub(crate) fn is_text_plain(media: &str) -> bool {
    media
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .eq_ignore_ascii_case("text/plain")
}

fn refused(range: &str) -> bool {
    range.split(';').skip(1).any(|param| {
        param.split_once('=').is_some_and(|(k, v)| {
            k.trim().eq_ignore_ascii_case("q") && v.trim().parse::<f32>().is_ok_and(|q| q <= 0.0)
        })
    })
}

/// Whether a `Content-Encoding` leaves the body as it is.
pub(crate) fn is_identity_encoding(encoding: Option<&str>) -> bool {
    encoding.is_none_or(|e| e.trim().is_empty() || e.trim().eq_ignore_ascii_case("identity"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_json_ranges_and_drops_the_rest() {
        let cases: &[(Option<&str>, &str)] = &[
            (None, "application/json"),
            (Some(""), "application/json"),
            (Some("*/*"), "application/json"),
            (Some("application/vnd.kubernetes.protobuf"), "application/json"),
            // client-go's default for typed clients.
            (
                Some("application/vnd.kubernetes.protobuf, */*"),
                "application/json",
            ),
            (
                Some("application/vnd.kubernetes.protobuf,application/json"),
                "application/json",
            ),
            // kubectl get.
            (
                Some("application/json;as=Table;v=v1;g=meta.k8s.io,application/json;as=Table;v=v1beta1;g=meta.k8s.io,application/json"),
                "application/json;as=Table;v=v1;g=meta.k8s.io,application/json;as=Table;v=v1beta1;g=meta.k8s.io,application/json",
            ),
            (
                Some("application/vnd.kubernetes.protobuf;as=Table;v=v1;g=meta.k8s.io, application/json;as=Table;v=v1;g=meta.k8s.io"),
                "application/json;as=Table;v=v1;g=meta.k8s.io",
            ),
            (
                Some("application/vnd.kubernetes.protobuf;as=PartialObjectMetadataList;v=v1;g=meta.k8s.io,application/json;as=PartialObjectMetadataList;v=v1;g=meta.k8s.io,application/json"),
                "application/json;as=PartialObjectMetadataList;v=v1;g=meta.k8s.io,application/json",
            ),
            (Some("application/yaml"), "application/json"),
            (Some("application/cbor, application/json"), "application/json"),
            (Some("Application/JSON"), "Application/JSON"),
            (Some("application/json;q=0, text/html"), "application/json"),
            (Some("application/json;q=0.5"), "application/json;q=0.5"),
        ];
        for (accept, want) in cases {
            assert_eq!(rewrite_accept(*accept), *want, "{accept:?}");
        }
    }

    #[test]
    fn media_type_checks() {
        assert!(is_json_media_type("application/json"));
        assert!(is_json_media_type(
            "application/json;as=Table;v=v1;g=meta.k8s.io"
        ));
        assert!(is_json_media_type("application/json; charset=utf-8"));
        assert!(!is_json_media_type("application/vnd.kubernetes.protobuf"));
        assert!(!is_json_media_type("application/json-seq"));
        assert!(!is_json_media_type("text/plain"));
        assert!(is_text_plain("text/plain; charset=utf-8"));
        assert!(!is_text_plain("text/html"));
        assert!(is_identity_encoding(None));
        assert!(is_identity_encoding(Some("identity")));
        assert!(is_identity_encoding(Some(" ")));
        assert!(!is_identity_encoding(Some("gzip")));
        assert!(!is_identity_encoding(Some("br")));
    }
}
