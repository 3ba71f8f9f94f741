//! What every gRPC engine of the adapters holds.

use std::fmt;

use ensync_proto::url::Endpoint;

use crate::{EngineOptions, Result, driver};

/// The part every gRPC engine shares (ensync-tokio's and ensync-h2's `EnSyncEngine`,
/// ensync-blocking's `Engine`): the nodes' endpoints by the gRPC URL rules, and the
/// options. The adapters wrap it and add how to connect.
#[derive(Clone)]
pub struct GrpcEngineCore {
    /// Never empty; all with the same TLS setting.
    endpoints: Vec<Endpoint>,
    options: EngineOptions,
}

impl GrpcEngineCore {
    /// The endpoints of `url` (one URL, or several separated by commas) and of the
    /// options' [`extra_urls`](EngineOptions::extra_urls), by the gRPC URL rules
    /// (plaintext when the options disable TLS). A malformed URL, a WebSocket URL among
    /// them or a mix of TLS and plaintext is an [`ErrorKind::Validation`](crate::ErrorKind)
    /// error.
    pub fn new(url: &str, options: EngineOptions) -> Result<Self> {
        let endpoints = driver::grpc_endpoints(url, &options)?;
        Ok(GrpcEngineCore { endpoints, options })
    }

    /// The first node's endpoint.
    pub fn endpoint(&self) -> &Endpoint {
        &self.endpoints[0]
    }

    /// Every node's endpoint, in the order they are tried.
    pub fn endpoints(&self) -> &[Endpoint] {
        &self.endpoints
    }

    /// Whether connections use TLS.
    pub fn uses_tls(&self) -> bool {
        self.endpoint().tls
    }

    /// The first node's `host:port`.
    pub fn authority(&self) -> String {
        self.endpoint().authority()
    }

    /// Every node's `host:port`, in the order they are tried.
    pub fn authorities(&self) -> Vec<String> {
        self.endpoints.iter().map(Endpoint::authority).collect()
    }

    /// The engine's options.
    pub fn options(&self) -> &EngineOptions {
        &self.options
    }

    /// Formats an engine of type `name` (its `Debug`): authority, TLS and options.
    pub fn fmt_as(&self, name: &str, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct(name)
            .field("authorities", &self.authorities())
            .field("tls", &self.uses_tls())
            .field("options", &self.options)
            .finish()
    }
}

impl fmt::Debug for GrpcEngineCore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.fmt_as("GrpcEngineCore", f)
    }
}
