//! What every gRPC engine of the adapters holds.

use std::fmt;

use ensync_proto::url::Endpoint;

use crate::{EngineOptions, Result, driver};

/// The part every gRPC engine shares (ensync-tokio's and ensync-h2's `EnSyncEngine`,
/// ensync-blocking's `Engine`): the node's endpoint by the gRPC URL rules, and the
/// options. The adapters wrap it and add how to connect.
#[derive(Clone)]
pub struct GrpcEngineCore {
    endpoint: Endpoint,
    options: EngineOptions,
}

impl GrpcEngineCore {
    /// The endpoint of `url` by the gRPC URL rules (plaintext when the options disable
    /// TLS). A malformed URL is an [`ErrorKind::Validation`](crate::ErrorKind) error.
    pub fn new(url: &str, options: EngineOptions) -> Result<Self> {
        let endpoint = driver::grpc_endpoint(url, &options)?;
        Ok(GrpcEngineCore { endpoint, options })
    }

    /// The node's endpoint.
    pub fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    /// Whether connections use TLS.
    pub fn uses_tls(&self) -> bool {
        self.endpoint.tls
    }

    /// The node's `host:port`.
    pub fn authority(&self) -> String {
        self.endpoint.authority()
    }

    /// The engine's options.
    pub fn options(&self) -> &EngineOptions {
        &self.options
    }

    /// Formats an engine of type `name` (its `Debug`): authority, TLS and options.
    pub fn fmt_as(&self, name: &str, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct(name)
            .field("authority", &self.endpoint.authority())
            .field("tls", &self.endpoint.tls)
            .field("options", &self.options)
            .finish()
    }
}

impl fmt::Debug for GrpcEngineCore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.fmt_as("GrpcEngineCore", f)
    }
}
