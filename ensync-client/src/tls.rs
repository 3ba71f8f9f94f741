//! The TLS client configuration every adapter's rustls connections use (feature `tls`):
//! the web PKI roots plus the engine's extra CA certificate, rustls' safe defaults on
//! the `ring` provider, and the name the node's certificate is checked against.

use std::sync::Arc;

use rustls::pki_types::{self, pem::PemObject as _};

use crate::{EnSyncError, EngineOptions, ErrorKind, Result};

fn tls_error(e: impl std::fmt::Display) -> EnSyncError {
    EnSyncError::new(ErrorKind::Validation, format!("TLS configuration: {e}"))
}

/// A rustls client configuration offering `alpn` (e.g. `b"h2"`, `b"http/1.1"`), trusting
/// the web PKI roots and [`EngineOptions::ca_certificate_pem`](crate::EngineOptions)
/// if given. A malformed CA certificate is an [`ErrorKind::Validation`] error.
pub fn client_config(options: &EngineOptions, alpn: &[u8]) -> Result<Arc<rustls::ClientConfig>> {
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if let Some(pem) = &options.ca_certificate_pem {
        for cert in pki_types::CertificateDer::pem_slice_iter(pem) {
            roots.add(cert.map_err(tls_error)?).map_err(tls_error)?;
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(tls_error)?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![alpn.to_vec()];
    Ok(Arc::new(config))
}

/// The name to check the node's certificate against: the engine's `tls_domain` if set,
/// else `host` (an IPv6 literal without its brackets).
pub fn server_name(options: &EngineOptions, host: &str) -> Result<pki_types::ServerName<'static>> {
    let domain = options
        .tls_domain
        .clone()
        .unwrap_or_else(|| host.trim_matches(['[', ']']).to_owned());
    pki_types::ServerName::try_from(domain.clone())
        .map_err(|e| tls_error(format!("bad TLS server name {domain:?}: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_bad_certificates() {
        let options = EngineOptions::default();
        assert!(server_name(&options, "node.example").is_ok());
        assert!(server_name(&options, "[::1]").is_ok(), "IPv6 literal");
        let error = server_name(&options, "bad name!").unwrap_err();
        assert_eq!(error.kind(), ErrorKind::Validation);
        let config = client_config(&options, b"h2").unwrap();
        assert_eq!(config.alpn_protocols, vec![b"h2".to_vec()]);
        let bad = EngineOptions::default().ca_certificate_pem(
            b"-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n".to_vec(),
        );
        let error = client_config(&bad, b"h2").unwrap_err();
        assert_eq!(error.kind(), ErrorKind::Validation, "{error}");
    }
}
