//! TLS (feature `tls`): rustls over the caller's connection, with ALPN `h2`.

use ensync_proto::url;
use tokio_rustls::TlsConnector;
use tokio_rustls::rustls::pki_types;

use crate::runtime::BoxIo;
use ensync_client::{EngineOptions, Result};

/// A TLS client configuration and the name to check the node's certificate against.
#[derive(Clone)]
pub(crate) struct Tls {
    connector: TlsConnector,
    name: pki_types::ServerName<'static>,
}

impl Tls {
    /// The shared client configuration ([`ensync_client::tls`]) with ALPN `h2`.
    pub(crate) fn new(endpoint: &url::Endpoint, options: &EngineOptions) -> Result<Self> {
        Ok(Tls {
            connector: TlsConnector::from(ensync_client::tls::client_config(options, b"h2")?),
            name: ensync_client::tls::server_name(options, &endpoint.host)?,
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
