//! The double's TLS identity: a throw-away test CA and a server certificate for 127.0.0.1, ::1 and localhost signed
//! by it, written as PEM files for clients, and the rustls server configuration (ring provider passed explicitly,
//! ALPN h2 and http/1.1). It must never install a process-wide crypto provider or trust anything beyond its own CA.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use rustls::ServerConfig;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

/// Where the generated PEM files were written.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    pub ca_pem: PathBuf,
    pub server_cert_pem: PathBuf,
    pub server_key_pem: PathBuf,
}

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("generating test certificates: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("building the TLS server configuration: {0}")]
    Config(#[from] rustls::Error),
    #[error("writing {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Generated CA and server credentials, in memory.
pub struct Generated {
    pub ca_pem: String,
    pub ca_der: CertificateDer<'static>,
    pub server_pem: String,
    pub server_der: CertificateDer<'static>,
    pub server_key_pem: String,
    pub server_key_der: Vec<u8>,
}

pub fn generate() -> Result<Generated, TlsError> {
    let ca_key = KeyPair::generate()?;
    let mut ca_params = CertificateParams::default();
    let mut ca_dn = DistinguishedName::new();
    ca_dn.push(DnType::CommonName, "portcullis kube-double test CA");
    ca_params.distinguished_name = ca_dn;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca_params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca_cert = ca_params.self_signed(&ca_key)?;
    let issuer = Issuer::new(ca_params, ca_key);

    let server_key = KeyPair::generate()?;
    let mut params = CertificateParams::new(vec!["localhost".to_string()])?;
    params
        .subject_alt_names
        .push(SanType::IpAddress(std::net::Ipv4Addr::LOCALHOST.into()));
    params
        .subject_alt_names
        .push(SanType::IpAddress(std::net::Ipv6Addr::LOCALHOST.into()));
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, "kube-apiserver");
    params.distinguished_name = dn;
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let server_cert = params.signed_by(&server_key, &issuer)?;

    Ok(Generated {
        ca_pem: ca_cert.pem(),
        ca_der: ca_cert.der().clone(),
        server_pem: server_cert.pem(),
        server_der: server_cert.der().clone(),
        server_key_pem: server_key.serialize_pem(),
        server_key_der: server_key.serialize_der(),
    })
}

fn write(path: &Path, contents: &str) -> Result<(), TlsError> {
    std::fs::write(path, contents).map_err(|source| TlsError::Write {
        path: path.to_path_buf(),
        source,
    })
}

/// Writes ca.pem, server.pem (leaf then CA) and server-key.pem into `dir`.
pub fn write_files(generated: &Generated, dir: &Path) -> Result<TlsFiles, TlsError> {
    let files = TlsFiles {
        ca_pem: dir.join("ca.pem"),
        server_cert_pem: dir.join("server.pem"),
        server_key_pem: dir.join("server-key.pem"),
    };
    write(&files.ca_pem, &generated.ca_pem)?;
    write(
        &files.server_cert_pem,
        &format!("{}{}", generated.server_pem, generated.ca_pem),
    )?;
    write(&files.server_key_pem, &generated.server_key_pem)?;
    Ok(files)
}

/// The rustls server configuration: ring provider, TLS 1.2 and 1.3, ALPN h2 then http/1.1.
pub fn server_config(generated: &Generated) -> Result<Arc<ServerConfig>, TlsError> {
    let chain = vec![generated.server_der.clone(), generated.ca_der.clone()];
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(generated.server_key_der.clone()));
    let mut config =
        ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_single_cert(chain, key)?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}
