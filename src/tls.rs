//! TLS plumbing shared by every client we have: the Kubernetes client, the SSM client and the
//! proxy's upstream pool. One crypto provider (ring: small, builds for musl and aarch64 with a
//! plain C cross compiler), one way to load PEM bundles, one way to name a server.

use std::fmt;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, RootCertStore};

/// Why a trust bundle or a server name could not be used.
#[derive(Debug)]
pub enum TlsError {
    /// The PEM file could not be read at all.
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The file was read but holds no usable certificate.
    NoCertificates { path: PathBuf, detail: String },
    /// The host is neither a DNS name nor an IP address rustls can verify.
    BadServerName(String),
    /// rustls refused the configuration (should not happen with the ring provider).
    Config(String),
}

impl fmt::Display for TlsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TlsError::Read { path, source } => {
                write!(f, "cannot read CA bundle {}: {source}", path.display())
            }
            TlsError::NoCertificates { path, detail } => write!(
                f,
                "CA bundle {} holds no usable PEM certificate ({detail}); it must contain \
                 -----BEGIN CERTIFICATE----- blocks",
                path.display()
            ),
            TlsError::BadServerName(h) => {
                write!(f, "{h:?} is not a valid host name or IP address for TLS")
            }
            TlsError::Config(e) => write!(f, "TLS configuration rejected: {e}"),
        }
    }
}

impl std::error::Error for TlsError {}

/// The crypto provider every TLS config of ours uses.
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Reads every certificate in a PEM file. Fails if the file has none, so that a wrong path
/// (a key file, an empty ConfigMap) is reported instead of silently trusting nothing.
pub fn load_pem_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let bytes = std::fs::read(path).map_err(|source| TlsError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    parse_pem_certs(&bytes).map_err(|detail| TlsError::NoCertificates {
        path: path.to_path_buf(),
        detail,
    })
}

/// Parses PEM bytes into certificates; an error names what was wrong.
pub fn parse_pem_certs(bytes: &[u8]) -> Result<Vec<CertificateDer<'static>>, String> {
    let mut certs = Vec::new();
    for item in CertificateDer::pem_slice_iter(bytes) {
        match item {
            Ok(c) => certs.push(c),
            Err(e) => return Err(format!("bad PEM: {e}")),
        }
    }
    if certs.is_empty() {
        return Err("no certificate found".into());
    }
    Ok(certs)
}

/// A root store holding exactly these certificates.
pub fn root_store(certs: &[CertificateDer<'static>]) -> Result<RootCertStore, String> {
    let mut store = RootCertStore::empty();
    let (added, _ignored) = store.add_parsable_certificates(certs.iter().cloned());
    if added == 0 {
        return Err("none of the certificates could be used as a trust anchor".into());
    }
    Ok(store)
}

/// Mozilla's roots, compiled in: public AWS endpoints verify in a scratch image.
pub fn mozilla_roots() -> RootCertStore {
    RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    }
}

/// A client config trusting exactly `roots`, offering `alpn` (empty for none).
pub fn client_config(roots: RootCertStore, alpn: &[&[u8]]) -> Result<Arc<ClientConfig>, TlsError> {
    let mut config = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(Arc::new(config))
}

/// The name to verify a server by: IP literals (with or without brackets) verify against IP SANs,
/// everything else against DNS SANs.
pub fn server_name(host: &str) -> Result<ServerName<'static>, TlsError> {
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    if let Ok(ip) = bare.parse::<IpAddr>() {
        return Ok(ServerName::IpAddress(ip.into()));
    }
    ServerName::try_from(bare.to_string()).map_err(|_| TlsError::BadServerName(host.to_string()))
}

/// Certificates in ureq's own type, for the clients built on ureq.
pub fn to_ureq_roots(certs: &[CertificateDer<'static>]) -> ureq::tls::RootCerts {
    ureq::tls::RootCerts::new_with_certs(
        &certs
            .iter()
            .map(|c| ureq::tls::Certificate::from_der(c.as_ref()).to_owned())
            .collect::<Vec<_>>(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ip_literals_become_ip_server_names() {
        assert!(matches!(
            server_name("127.0.0.1"),
            Ok(ServerName::IpAddress(_))
        ));
        assert!(matches!(server_name("[::1]"), Ok(ServerName::IpAddress(_))));
        assert!(matches!(server_name("::1"), Ok(ServerName::IpAddress(_))));
        assert!(matches!(
            server_name("kubernetes.default.svc"),
            Ok(ServerName::DnsName(_))
        ));
        assert!(server_name("bad host").is_err());
    }

    #[test]
    fn pem_without_certificates_is_an_error() {
        assert!(parse_pem_certs(b"").is_err());
        assert!(parse_pem_certs(b"hello").is_err());
        let key_only = b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n";
        assert!(parse_pem_certs(key_only).is_err());
    }

    #[test]
    fn mozilla_roots_are_compiled_in() {
        assert!(mozilla_roots().len() > 100);
    }
}
