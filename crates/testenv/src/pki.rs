//! Certificates for a local control plane: separate CAs for serving, clients and
//! service-account signing (ECDSA P-256), as kube-apiserver expects. Writes PEM files.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose, SanType,
};

/// Paths of the PEM files written by [`Pki::write`] and the admin credentials in memory.
pub struct Pki {
    pub serving_ca: PathBuf,
    pub serving_cert: PathBuf,
    pub serving_key: PathBuf,
    pub client_ca: PathBuf,
    pub client_ca_cert_pem: String,
    client_ca_params: CertificateParams,
    client_ca_key: KeyPair,
    pub sa_key: PathBuf,
    pub sa_public_key: PathBuf,
    pub serving_ca_pem: String,
}

/// A client certificate and key, PEM-encoded.
pub struct ClientCert {
    pub cert_pem: String,
    pub key_pem: String,
}

fn ca(name: &str) -> Result<(CertificateParams, KeyPair, String)> {
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::CrlSign,
    ];
    let cert = params.self_signed(&key)?;
    Ok((params, key, cert.pem()))
}

fn write(dir: &Path, name: &str, pem: &str) -> Result<PathBuf> {
    let path = dir.join(name);
    std::fs::write(&path, pem).with_context(|| format!("writing {}", path.display()))?;
    Ok(path)
}

impl Pki {
    /// Generates every key and certificate and writes them into `dir`.
    pub fn write(dir: &Path) -> Result<Pki> {
        let (serving_ca_params, serving_ca_key, serving_ca_pem) = ca("testenv-serving-ca")?;
        let serving_issuer = CertifiedIssuer::self_signed(serving_ca_params, serving_ca_key)?;
        let serving_key = KeyPair::generate()?;
        let mut serving = CertificateParams::new(vec![
            "localhost".to_string(),
            "kubernetes".to_string(),
            "kubernetes.default".to_string(),
            "kubernetes.default.svc".to_string(),
        ])?;
        serving
            .subject_alt_names
            .push(SanType::IpAddress("127.0.0.1".parse()?));
        serving
            .subject_alt_names
            .push(SanType::IpAddress("10.0.0.1".parse()?));
        serving
            .distinguished_name
            .push(DnType::CommonName, "kube-apiserver");
        serving.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let serving_cert = serving.signed_by(&serving_key, &serving_issuer)?;

        let (client_ca_params, client_ca_key, client_ca_cert_pem) = ca("testenv-client-ca")?;
        let sa = KeyPair::generate()?;

        Ok(Pki {
            serving_ca: write(dir, "serving-ca.crt", &serving_ca_pem)?,
            serving_cert: write(dir, "apiserver.crt", &serving_cert.pem())?,
            serving_key: write(dir, "apiserver.key", &serving_key.serialize_pem())?,
            client_ca: write(dir, "client-ca.crt", &client_ca_cert_pem)?,
            client_ca_cert_pem,
            client_ca_params,
            client_ca_key,
            sa_key: write(dir, "sa.key", &sa.serialize_pem())?,
            sa_public_key: write(dir, "sa.pub", &sa.public_key_pem())?,
            serving_ca_pem,
        })
    }

    /// A client certificate for `user`, in `group` if given, signed by the client CA.
    pub fn client_cert(&self, user: &str, group: Option<&str>) -> Result<ClientCert> {
        let issuer = rcgen::Issuer::from_params(&self.client_ca_params, &self.client_ca_key);
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.distinguished_name.push(DnType::CommonName, user);
        if let Some(group) = group {
            params
                .distinguished_name
                .push(DnType::OrganizationName, group);
        }
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let cert = params.signed_by(&key, &issuer)?;
        Ok(ClientCert {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }
}
