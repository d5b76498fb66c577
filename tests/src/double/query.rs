//! Query-string parsing as the API server does it (form encoding: `+` is a space, repeated keys kept in order).
//! Pure parsing; it must never interpret parameters itself beyond their textual form.

use percent_encoding::percent_decode_str;

/// The decoded `key=value` pairs of a request's query string.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Query {
    pairs: Vec<(String, String)>,
}

fn decode(text: &str) -> String {
    percent_decode_str(&text.replace('+', " "))
        .decode_utf8_lossy()
        .into_owned()
}

impl Query {
    pub fn parse(raw: Option<&str>) -> Self {
        let pairs = raw
            .unwrap_or_default()
            .split('&')
            .filter(|p| !p.is_empty())
            .map(|p| {
                let (k, v) = p.split_once('=').unwrap_or((p, ""));
                (decode(k), decode(v))
            })
            .collect();
        Self { pairs }
    }

    /// The first value of `key`.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.pairs
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// The first non-empty value of `key`.
    pub fn non_empty(&self, key: &str) -> Option<&str> {
        self.get(key).filter(|v| !v.is_empty())
    }

    /// Every value of `key`, in order.
    pub fn all(&self, key: &str) -> Vec<&str> {
        self.pairs
            .iter()
            .filter(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
            .collect()
    }

    /// A boolean parameter as Go's strconv.ParseBool reads it (`1`, `t`, `true`, ...); absent is false.
    pub fn flag(&self, key: &str) -> bool {
        matches!(
            self.get(key),
            Some("1" | "t" | "T" | "true" | "TRUE" | "True")
        )
    }

    /// `dryRun=All` (the only value the API server accepts).
    pub fn dry_run(&self) -> bool {
        self.all("dryRun").contains(&"All")
    }

    /// A non-negative integer parameter; malformed values are an error message for a 400.
    pub fn number(&self, key: &str) -> Result<Option<u64>, String> {
        match self.non_empty(key) {
            None => Ok(None),
            // Clients send negative values (e.g. tailLines=-1) to mean "not set".
            Some(v) => v
                .parse::<i64>()
                .map(|n| u64::try_from(n).ok())
                .map_err(|_| {
                    format!("invalid value {v:?} for query parameter {key}: must be an integer")
                }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_and_decode() {
        let q = Query::parse(Some(
            "labelSelector=app+in+%28a%2Cb%29&watch=1&command=ls&command=-l&dryRun=All&x",
        ));
        assert_eq!(q.get("labelSelector"), Some("app in (a,b)"));
        assert!(q.flag("watch"));
        assert!(!q.flag("follow"));
        assert_eq!(q.all("command"), ["ls", "-l"]);
        assert!(q.dry_run());
        assert_eq!(q.get("x"), Some(""));
        assert_eq!(q.non_empty("x"), None);
        assert_eq!(Query::parse(Some("limit=5")).number("limit"), Ok(Some(5)));
        assert!(Query::parse(Some("limit=x")).number("limit").is_err());
        assert_eq!(
            Query::parse(Some("tailLines=-1")).number("tailLines"),
            Ok(None)
        );
        assert_eq!(Query::parse(None), Query::default());
    }
}
