//! Throw-away PKI for tests and the demo: a CA and server certificates it signs.
//!
//! Owns: generating keys and certificates with rcgen. Must never: be used for anything but local
//! test endpoints (keys are written unencrypted to the test's own directory).

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType,
};

pub struct TestCa {
    issuer: Issuer<'static, KeyPair>,
    pub cert_pem: String,
}

/// PEM files of one server certificate, written under a directory.
pub struct ServerCertFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub ca: PathBuf,
}

impl TestCa {
    pub fn new(name: &str) -> anyhow::Result<Self> {
        let mut params = CertificateParams::default();
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let key = KeyPair::generate()?;
        let cert = params.self_signed(&key)?;
        Ok(Self {
            cert_pem: cert.pem(),
            issuer: Issuer::new(params, key),
        })
    }

    /// A server certificate for `names` (DNS names or IP addresses), signed by this CA.
    pub fn issue_server(&self, names: &[&str]) -> anyhow::Result<(String, String)> {
        let mut params = CertificateParams::default();
        params.distinguished_name.push(
            DnType::CommonName,
            names.first().copied().unwrap_or("localhost"),
        );
        params.subject_alt_names = names
            .iter()
            .map(|n| match n.parse::<std::net::IpAddr>() {
                Ok(ip) => Ok(SanType::IpAddress(ip)),
                Err(_) => Ok(SanType::DnsName((*n).try_into()?)),
            })
            .collect::<anyhow::Result<_>>()?;
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok((cert.pem(), key.serialize_pem()))
    }

    /// Issue a server certificate and write cert, key and this CA's certificate into `dir`.
    pub fn write_server(
        &self,
        dir: &Path,
        stem: &str,
        names: &[&str],
    ) -> anyhow::Result<ServerCertFiles> {
        let (cert, key) = self.issue_server(names)?;
        let files = ServerCertFiles {
            cert: dir.join(format!("{stem}.crt")),
            key: dir.join(format!("{stem}.key")),
            ca: dir.join(format!("{stem}-ca.crt")),
        };
        std::fs::write(&files.cert, cert)?;
        std::fs::write(&files.key, key)?;
        std::fs::write(&files.ca, &self.cert_pem)?;
        Ok(files)
    }
}
