//! TLS (feature `tls`): rustls over the caller's connection, with ALPN `h2`.

use std::sync::Arc;

use ensync_proto::url;
use tokio_rustls::TlsConnector;
use tokio_rustls::rustls::{self, pki_types};

use crate::runtime::BoxIo;
use ensync_client::EngineOptions;
use ensync_client::{EnSyncError, ErrorKind, Result};

/// A TLS client configuration and the name to check the node's certificate against.
#[derive(Clone)]
pub(crate) struct Tls {
    connector: TlsConnector,
    name: pki_types::ServerName<'static>,
}

fn tls_error(e: impl std::fmt::Display) -> EnSyncError {
    EnSyncError::new(ErrorKind::Validation, format!("TLS configuration: {e}"))
}

impl Tls {
    /// The web PKI roots, plus the engine's extra CA certificate if any.
    pub(crate) fn new(endpoint: &url::Endpoint, options: &EngineOptions) -> Result<Self> {
        use pki_types::pem::PemObject;
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
        config.alpn_protocols = vec![b"h2".to_vec()];
        let domain = options
            .tls_domain
            .clone()
            .unwrap_or_else(|| endpoint.host.trim_matches(['[', ']']).to_owned());
        let name = pki_types::ServerName::try_from(domain).map_err(tls_error)?;
        Ok(Tls {
            connector: TlsConnector::from(Arc::new(config)),
            name,
        })
    }

    /// Performs the TLS handshake over `io`.
    pub(crate) async fn wrap(&self, io: BoxIo) -> std::result::Result<BoxIo, String> {
        let stream = self
            .connector
            .connect(self.name.clone(), io)
            .await
            .map_err(|e| format!("TLS handshake failed: {e}"))?;
        Ok(Box::new(stream))
    }
}
