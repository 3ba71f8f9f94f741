//! The gRPC transport on tonic: opens channels and makes the calls the session asks for.

use std::time::Duration;

use ensync_proto::session::{Call, Reply, Request, RpcCode, RpcError};
use ensync_proto::{url, wire};
use futures::future::BoxFuture;
use futures::stream::BoxStream;
use futures::{FutureExt, StreamExt};
use tonic::codegen::http::uri::PathAndQuery;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};
use tonic_prost::ProstCodec;

use ensync_client::EngineOptions;
use ensync_client::{EnSyncError, ErrorKind, Result};
use ensync_client::{StreamItem, Transport};

/// Opens tonic channels to the engine's nodes (one endpoint each, in the engine's order).
pub(crate) struct GrpcTransport {
    endpoints: Vec<Endpoint>,
}

impl GrpcTransport {
    pub(crate) fn new(targets: &[url::Endpoint], options: &EngineOptions) -> Result<Self> {
        let endpoints = targets
            .iter()
            .map(|target| channel_endpoint(target, options))
            .collect::<Result<_>>()?;
        Ok(GrpcTransport { endpoints })
    }
}

/// The tonic endpoint of one node.
fn channel_endpoint(target: &url::Endpoint, options: &EngineOptions) -> Result<Endpoint> {
    let scheme = if target.tls { "https" } else { "http" };
    let uri = format!("{scheme}://{}", target.authority());
    let bad = |e: tonic::transport::Error| {
        EnSyncError::new(ErrorKind::Validation, format!("bad node address {uri}")).with_source(e)
    };
    let mut endpoint = Endpoint::from_shared(uri.clone())
        .map_err(bad)?
        .connect_timeout(options.connect_timeout)
        .tcp_nodelay(true)
        // HTTP/2's default 64 KiB windows stall a 64 KB event (its envelope is ~88 KB)
        // for a WINDOW_UPDATE round trip; the same sizes as ensync-h2's client.
        .initial_stream_window_size(1 << 20)
        .initial_connection_window_size(4 << 20)
        .http2_keep_alive_interval(Duration::from_secs(20))
        .keep_alive_while_idle(true);
    if target.tls {
        let mut tls = ClientTlsConfig::new().with_webpki_roots();
        if let Some(pem) = &options.ca_certificate_pem {
            tls = tls.ca_certificate(Certificate::from_pem(pem));
        }
        let domain = options
            .tls_domain
            .clone()
            .unwrap_or_else(|| target.host.trim_matches(['[', ']']).to_owned());
        tls = tls.domain_name(domain);
        endpoint = endpoint.tls_config(tls).map_err(bad)?;
    }
    Ok(endpoint)
}

fn rpc_error(status: tonic::Status) -> RpcError {
    let code = match status.code() {
        tonic::Code::Unimplemented => RpcCode::Unimplemented,
        tonic::Code::Unavailable => RpcCode::Unavailable,
        tonic::Code::Internal => RpcCode::Internal,
        tonic::Code::Unauthenticated => RpcCode::Unauthenticated,
        tonic::Code::DeadlineExceeded => RpcCode::DeadlineExceeded,
        tonic::Code::Cancelled => RpcCode::Cancelled,
        other => RpcCode::Other(other as i32),
    };
    RpcError {
        code,
        message: status.message().to_owned(),
    }
}

fn transport_error(e: tonic::transport::Error) -> String {
    let mut text = e.to_string();
    let mut source = std::error::Error::source(&e);
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// A gRPC client on `channel` once the channel can take a call.
async fn ready(channel: Channel) -> Result<tonic::client::Grpc<Channel>, RpcError> {
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.map_err(|e| RpcError {
        code: RpcCode::Unavailable,
        message: e.to_string(),
    })?;
    Ok(grpc)
}

async fn unary<Q, R>(channel: Channel, path: &'static str, request: Q) -> Result<R, RpcError>
where
    Q: prost::Message + Send + Sync + 'static,
    R: prost::Message + Default + Send + Sync + 'static,
{
    let response = ready(channel)
        .await?
        .unary(
            tonic::Request::new(request),
            PathAndQuery::from_static(path),
            ProstCodec::<Q, R>::default(),
        )
        .await
        .map_err(rpc_error)?;
    Ok(response.into_inner())
}

impl Transport for GrpcTransport {
    type Conn = Channel;

    fn endpoints(&self) -> usize {
        self.endpoints.len()
    }

    fn connect(&self, endpoint: usize) -> BoxFuture<'static, Result<Channel, String>> {
        let Some(endpoint) = self.endpoints.get(endpoint).cloned() else {
            return futures::future::ready(Err(format!("no node endpoint {endpoint}"))).boxed();
        };
        async move { endpoint.connect().await.map_err(transport_error) }.boxed()
    }

    fn unary(&self, conn: &Channel, call: Call) -> BoxFuture<'static, Result<Reply, RpcError>> {
        let channel = conn.clone();
        let path = call.path();
        async move {
            Ok(match call.request {
                Request::Connect(q) => Reply::Connect(unary(channel, path, q).await?),
                Request::Heartbeat(q) => Reply::Heartbeat(unary(channel, path, q).await?),
                Request::Publish(q) => Reply::Publish(unary(channel, path, q).await?),
                Request::Unsubscribe(q) => Reply::Unsubscribe(unary(channel, path, q).await?),
                Request::Ack(q) => Reply::Ack(unary(channel, path, q).await?),
                Request::Defer(q) => Reply::Defer(unary(channel, path, q).await?),
                Request::Discard(q) => Reply::Discard(unary(channel, path, q).await?),
                Request::Replay(q) => Reply::Replay(unary(channel, path, q).await?),
                Request::Pause(q) => Reply::Pause(unary(channel, path, q).await?),
                Request::Continue(q) => Reply::Continue(unary(channel, path, q).await?),
                _ => {
                    return Err(RpcError {
                        code: RpcCode::Internal,
                        message: format!("{path} is not a unary call"),
                    });
                }
            })
        }
        .boxed()
    }

    fn subscribe(
        &self,
        conn: &Channel,
        call: Call,
    ) -> BoxFuture<'static, Result<BoxStream<'static, Result<StreamItem, RpcError>>, RpcError>>
    {
        let channel = conn.clone();
        let path = call.path();
        async move {
            let Request::Subscribe(request) = call.request else {
                return Err(RpcError {
                    code: RpcCode::Internal,
                    message: "not a subscribe call".to_owned(),
                });
            };
            let response = ready(channel)
                .await?
                .server_streaming(
                    tonic::Request::new(request),
                    PathAndQuery::from_static(path),
                    ProstCodec::<wire::SubscribeRequest, wire::EventStreamResponse>::default(),
                )
                .await
                .map_err(rpc_error)?;
            Ok(response
                .into_inner()
                .map(|item| item.map(|event| (event, None)).map_err(rpc_error))
                .boxed())
        }
        .boxed()
    }
}
