//! The protected Kubernetes API server and the gateway's own credential for it.
//!
//! Owns: where the upstream is (address, TLS name, `Host`), which CA verifies it, and the bearer
//! token the gateway presents: a fixed token, a file re-read when it changes (like a projected
//! service-account token), or an EKS token per caller ([`eks`]). Must never: hand the credential
//! to anything but the upstream request, log it, or fall back to an unverified TLS connection.

pub mod eks;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use pingora::utils::tls::WrappedX509;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;
use secrecy::ExposeSecret;

use crate::config;

#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("upstream URL {0:?} is not an https://host[:port] URL (http:// needs `insecure_plaintext: true`)")]
    BadUrl(String),
    #[error("cannot read {what} {path}: {source}")]
    Read {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("CA bundle {0}: no usable certificate")]
    BadCa(String),
    #[error("kubeconfig: {0}")]
    Kubeconfig(String),
    #[error("upstream token file {0} is empty")]
    EmptyToken(PathBuf),
    #[error("the upstream credential has no bearer token (client certificates and exec plugins are not supported yet)")]
    NoToken,
    #[error("EKS credential: {0}")]
    Eks(#[from] eks::EksError),
}

/// Everything needed to open a verified TLS connection to the API server.
pub struct Upstream {
    /// `host:port` to connect to.
    pub address: String,
    /// TLS server name (SNI and hostname verification).
    pub sni: String,
    /// `Host` / `:authority` value the API server expects.
    pub authority: String,
    /// Trusted CAs for this upstream; `None` uses the platform's roots.
    pub ca: Option<Arc<[WrappedX509]>>,
    /// False only for an explicit `insecure_plaintext` upstream (benchmarks and tests).
    pub tls: bool,
    pub credential: UpstreamCredential,
}

/// The gateway's credential for the API server.
pub enum UpstreamCredential {
    /// One bearer token for every request.
    Bearer(BearerToken),
    /// EKS tokens, per caller when the role session name names the caller.
    Eks(Arc<eks::EksCredential>),
}

impl UpstreamCredential {
    /// The bearer token to send upstream for a request made on behalf of `user` (`None` only in
    /// the benchmark passthrough).
    pub async fn token_for(&self, user: Option<&str>) -> Result<Arc<str>, UpstreamError> {
        match self {
            Self::Bearer(token) => token.current(),
            Self::Eks(eks) => Ok(eks.token_for(user).await?),
        }
    }

    /// The API server answered 401 to a request that carried `token`: a credential that can be
    /// renewed forgets it (once, however many requests report the same token).
    pub fn rejected(&self, user: Option<&str>, token: &Arc<str>) {
        match self {
            Self::Bearer(_) => {}
            Self::Eks(eks) => eks.rejected(user, token),
        }
    }
}

/// The gateway's bearer token, from a fixed value or a file that may be rotated underneath us.
pub struct BearerToken {
    source: TokenSource,
}

enum TokenSource {
    Fixed(String),
    File {
        path: PathBuf,
        cache: Mutex<Option<(SystemTime, Arc<str>)>>,
    },
}

impl BearerToken {
    pub fn fixed(token: String) -> Self {
        Self {
            source: TokenSource::Fixed(token),
        }
    }

    pub fn file(path: PathBuf) -> Self {
        Self {
            source: TokenSource::File {
                path,
                cache: Mutex::new(None),
            },
        }
    }

    /// The current token. A file is re-read only when its modification time changed, so the hot
    /// path costs one `stat`.
    pub fn current(&self) -> Result<Arc<str>, UpstreamError> {
        match &self.source {
            TokenSource::Fixed(t) => Ok(Arc::from(t.as_str())),
            TokenSource::File { path, cache } => {
                let read_err = |source| UpstreamError::Read {
                    what: "upstream token file",
                    path: path.clone(),
                    source,
                };
                let mtime = std::fs::metadata(path)
                    .and_then(|m| m.modified())
                    .map_err(read_err)?;
                let mut guard = cache
                    .lock()
                    .unwrap_or_else(|poisoned| poisoned.into_inner());
                if let Some((seen, token)) = guard.as_ref() {
                    if *seen == mtime {
                        return Ok(Arc::clone(token));
                    }
                }
                let text = std::fs::read_to_string(path).map_err(read_err)?;
                let token = text.trim();
                if token.is_empty() {
                    return Err(UpstreamError::EmptyToken(path.clone()));
                }
                let token: Arc<str> = Arc::from(token);
                *guard = Some((mtime, Arc::clone(&token)));
                Ok(token)
            }
        }
    }
}

impl Upstream {
    /// Resolve the configured upstream: URL, CA and credential, loading a kubeconfig or the
    /// in-cluster config through the `kube` crate when the config names one.
    pub async fn from_config(cfg: &config::Upstream) -> Result<Self, UpstreamError> {
        let (url, ca_pem_or_der, credential) = match &cfg.credential {
            config::Credential::TokenFile(path) => {
                let url = cfg
                    .url
                    .clone()
                    .ok_or_else(|| UpstreamError::BadUrl(String::new()))?;
                (
                    url,
                    None,
                    UpstreamCredential::Bearer(BearerToken::file(path.clone())),
                )
            }
            config::Credential::Kubeconfig { path, context } => {
                let kubeconfig = kube::config::Kubeconfig::read_from(path)
                    .map_err(|e| UpstreamError::Kubeconfig(e.to_string()))?;
                let options = kube::config::KubeConfigOptions {
                    context: context.clone(),
                    ..Default::default()
                };
                let kc = kube::Config::from_custom_kubeconfig(kubeconfig, &options)
                    .await
                    .map_err(|e| UpstreamError::Kubeconfig(e.to_string()))?;
                from_kube_config(kc)?
            }
            config::Credential::InCluster => {
                let kc = kube::Config::incluster()
                    .map_err(|e| UpstreamError::Kubeconfig(e.to_string()))?;
                from_kube_config(kc)?
            }
            config::Credential::Eks(eks_cfg) => {
                let url = cfg
                    .url
                    .clone()
                    .ok_or_else(|| UpstreamError::BadUrl(String::new()))?;
                let credential = eks::EksCredential::from_config(eks_cfg).await?;
                (url, None, UpstreamCredential::Eks(Arc::new(credential)))
            }
        };
        // An explicit URL in the file wins over the one in a kubeconfig.
        let url = cfg.url.clone().unwrap_or(url);
        let (address, sni, authority, tls) = parse_url(&url, cfg.insecure_plaintext)?;
        let ca = match (&cfg.ca_file, ca_pem_or_der) {
            (Some(path), _) => Some(load_ca_file(path)?),
            (None, Some(ders)) => Some(wrap_ders(ders, "kubeconfig certificate-authority-data")?),
            (None, None) => None,
        };
        Ok(Self {
            address,
            sni,
            authority,
            ca,
            tls,
            credential,
        })
    }
}

type KubeParts = (String, Option<Vec<Vec<u8>>>, UpstreamCredential);

fn from_kube_config(kc: kube::Config) -> Result<KubeParts, UpstreamError> {
    let credential = if let Some(file) = &kc.auth_info.token_file {
        BearerToken::file(PathBuf::from(file))
    } else if let Some(token) = &kc.auth_info.token {
        BearerToken::fixed(token.expose_secret().to_string())
    } else {
        return Err(UpstreamError::NoToken);
    };
    let credential = UpstreamCredential::Bearer(credential);
    let ca = match &kc.root_cert_file {
        Some(path) => Some(read_pem_certs(path)?),
        None => kc.root_cert.clone(),
    };
    Ok((kc.cluster_url.to_string(), ca, credential))
}

/// Split `https://host[:port][/]` into (connect address, SNI, authority, tls). `http://` only
/// when plaintext was explicitly allowed.
pub fn parse_url(
    url: &str,
    allow_plaintext: bool,
) -> Result<(String, String, String, bool), UpstreamError> {
    let bad = || UpstreamError::BadUrl(url.to_string());
    let uri: http::Uri = url.parse().map_err(|_| bad())?;
    let tls = match uri.scheme_str() {
        Some("https") => true,
        Some("http") if allow_plaintext => false,
        _ => return Err(bad()),
    };
    if !matches!(uri.path(), "" | "/") || uri.query().is_some() {
        return Err(bad());
    }
    let authority = uri.authority().ok_or_else(bad)?;
    let host = authority.host();
    let port = authority.port_u16().unwrap_or(if tls { 443 } else { 80 });
    let bare_host = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_string();
    let address = if bare_host.contains(':') {
        format!("[{bare_host}]:{port}")
    } else {
        format!("{bare_host}:{port}")
    };
    Ok((address, bare_host, authority.as_str().to_string(), tls))
}

fn read_pem_certs(path: &Path) -> Result<Vec<Vec<u8>>, UpstreamError> {
    let bytes = std::fs::read(path).map_err(|source| UpstreamError::Read {
        what: "CA bundle",
        path: path.to_path_buf(),
        source,
    })?;
    let certs: Vec<Vec<u8>> = CertificateDer::pem_slice_iter(&bytes)
        .filter_map(Result::ok)
        .map(|c| c.to_vec())
        .collect();
    if certs.is_empty() {
        return Err(UpstreamError::BadCa(path.display().to_string()));
    }
    Ok(certs)
}

fn load_ca_file(path: &Path) -> Result<Arc<[WrappedX509]>, UpstreamError> {
    let ders = read_pem_certs(path)?;
    wrap_ders(ders, &path.display().to_string())
}

fn wrap_ders(ders: Vec<Vec<u8>>, what: &str) -> Result<Arc<[WrappedX509]>, UpstreamError> {
    // pingora's certificate wrapper parses eagerly and panics on bad DER; webpki's parse in
    // RootCertStore::add rejects those first, so a bad bundle is a startup error, not a crash.
    let mut probe = rustls::RootCertStore::empty();
    let mut wrapped = Vec::new();
    for der in ders {
        if probe.add(CertificateDer::from(der.clone())).is_ok() {
            wrapped.push(WrappedX509::new(der, pingora::utils::tls::parse_x509));
        }
    }
    if wrapped.is_empty() {
        return Err(UpstreamError::BadCa(what.to_string()));
    }
    Ok(Arc::from(wrapped))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn https_urls_split_into_address_sni_and_authority() {
        assert_eq!(
            parse_url("https://127.0.0.1:6443", false).unwrap(),
            (
                "127.0.0.1:6443".into(),
                "127.0.0.1".into(),
                "127.0.0.1:6443".into(),
                true
            )
        );
        assert_eq!(
            parse_url("https://api.example.com/", false).unwrap(),
            (
                "api.example.com:443".into(),
                "api.example.com".into(),
                "api.example.com".into(),
                true
            )
        );
        assert_eq!(
            parse_url("https://[::1]:6443", false).unwrap(),
            ("[::1]:6443".into(), "::1".into(), "[::1]:6443".into(), true)
        );
        assert!(parse_url("http://127.0.0.1:6443", false).is_err());
        assert!(!parse_url("http://127.0.0.1:8080", true).unwrap().3);
        assert!(parse_url("https://127.0.0.1:6443/prefix", false).is_err());
    }

    #[test]
    fn token_file_is_reread_when_it_changes() {
        let dir = std::env::temp_dir().join(format!("portcullis-token-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("token");
        std::fs::write(&path, "first\n").unwrap();
        let token = BearerToken::file(path.clone());
        assert_eq!(&*token.current().unwrap(), "first");
        // Make sure the mtime moves even on coarse-grained file systems.
        std::fs::write(&path, "second").unwrap();
        let later = SystemTime::now() + std::time::Duration::from_secs(5);
        std::fs::File::options()
            .write(true)
            .open(&path)
            .unwrap()
            .set_modified(later)
            .unwrap();
        assert_eq!(&*token.current().unwrap(), "second");
        std::fs::write(&path, "").unwrap();
        std::fs::File::options()
            .write(true)
            .open(&path)
            .unwrap()
            .set_modified(later + std::time::Duration::from_secs(5))
            .unwrap();
        assert!(token.current().is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[tokio::test]
    async fn kubeconfig_credential_gives_url_ca_and_token() {
        use base64::Engine as _;
        let dir =
            std::env::temp_dir().join(format!("portcullis-kubeconfig-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let ca = rcgen::CertificateParams::new(vec!["api.test".to_string()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let ca_data = base64::engine::general_purpose::STANDARD.encode(ca.pem());
        let path = dir.join("kubeconfig");
        std::fs::write(
            &path,
            format!(
                "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster:\n    server: https://api.test:6443\n    certificate-authority-data: {ca_data}\ncontexts:\n- name: ctx\n  context:\n    cluster: c\n    user: u\ncurrent-context: ctx\nusers:\n- name: u\n  user:\n    token: gateway-token\n"
            ),
        )
        .unwrap();
        let cfg = config::Upstream {
            url: None,
            ca_file: None,
            credential: config::Credential::Kubeconfig {
                path: path.clone(),
                context: Some("ctx".into()),
            },
            insecure_plaintext: false,
            connect_timeout_seconds: 5,
        };
        let upstream = Upstream::from_config(&cfg).await.unwrap();
        assert_eq!(upstream.address, "api.test:6443");
        assert_eq!(upstream.sni, "api.test");
        assert!(upstream.tls);
        assert_eq!(upstream.ca.as_ref().map(|c| c.len()), Some(1));
        assert_eq!(
            &*upstream.credential.token_for(Some("alice")).await.unwrap(),
            "gateway-token"
        );

        // A kubeconfig user without a token is refused, not silently used without credentials.
        std::fs::write(
            &path,
            format!(
                "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster:\n    server: https://api.test:6443\n    certificate-authority-data: {ca_data}\ncontexts:\n- name: ctx\n  context:\n    cluster: c\n    user: u\ncurrent-context: ctx\nusers:\n- name: u\n  user:\n    username: nobody\n"
            ),
        )
        .unwrap();
        assert!(matches!(
            Upstream::from_config(&cfg).await,
            Err(UpstreamError::NoToken)
        ));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
