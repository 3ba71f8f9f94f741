//! gRPC over the `h2` crate: the HTTP/2 handshake, unary calls and the server-streaming
//! `Subscribe`, framed with the core's codec. No tonic, tower or hyper.

use bytes::{Bytes, BytesMut};
use ensync_proto::framing::{self, FrameDecoder};
use ensync_proto::session::{Call, Reply, RpcCode, RpcError};
use ensync_proto::wire;
use h2::RecvStream;
use h2::client::{Connection, SendRequest};
use http::{HeaderMap, Method, Request, StatusCode};

use crate::runtime::BoxIo;

/// An open HTTP/2 connection to the node; cheap to clone.
#[derive(Clone)]
pub(crate) struct Conn {
    send: SendRequest<Bytes>,
    base: String,
}

/// Performs the HTTP/2 handshake on `io`. The returned [`Connection`] must be polled
/// (spawned) for any call to make progress; it completes when the connection closes.
pub(crate) async fn handshake(
    io: BoxIo,
    tls: bool,
    authority: &str,
) -> Result<(Conn, Connection<BoxIo, Bytes>), String> {
    let (send, connection) = h2::client::Builder::new()
        .initial_window_size(1 << 20)
        .initial_connection_window_size(4 << 20)
        .handshake::<BoxIo, Bytes>(io)
        .await
        .map_err(|e| format!("HTTP/2 handshake failed: {e}"))?;
    let scheme = if tls { "https" } else { "http" };
    Ok((
        Conn {
            send,
            base: format!("{scheme}://{authority}"),
        },
        connection,
    ))
}

fn unavailable(e: impl std::fmt::Display) -> RpcError {
    RpcError::new(RpcCode::Unavailable, e.to_string())
}

fn internal(e: impl std::fmt::Display) -> RpcError {
    RpcError::new(RpcCode::Internal, e.to_string())
}

fn h2_error(e: h2::Error) -> RpcError {
    match e.reason() {
        Some(h2::Reason::CANCEL) if e.is_reset() => {
            RpcError::new(RpcCode::Cancelled, e.to_string())
        }
        _ => unavailable(e),
    }
}

/// The gRPC status in `headers` (trailers, or the headers of a trailers-only reply):
/// `None` without a `grpc-status`, `Some(Ok(()))` for OK.
fn status(headers: &HeaderMap) -> Option<Result<(), RpcError>> {
    let code = headers.get("grpc-status")?;
    let code = code
        .to_str()
        .ok()
        .and_then(|c| c.trim().parse::<i32>().ok())
        .unwrap_or(2); // UNKNOWN
    if code == 0 {
        return Some(Ok(()));
    }
    let message = headers
        .get("grpc-message")
        .map(|m| percent_decode(m.as_bytes()))
        .unwrap_or_default();
    Some(Err(RpcError::new(RpcCode::from_i32(code), message)))
}

/// Decodes gRPC's percent-encoded `grpc-message`.
fn percent_decode(bytes: &[u8]) -> String {
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        match (bytes[i], bytes.get(i + 1), bytes.get(i + 2)) {
            (b'%', Some(&h), Some(&l)) if hex(h).is_some() && hex(l).is_some() => {
                let value = hex(h).unwrap_or(0) * 16 + hex(l).unwrap_or(0);
                out.push(value as u8);
                i += 3;
            }
            (b, _, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The gRPC code for an HTTP status other than 200 (the gRPC spec's mapping).
fn http_status_error(status: StatusCode) -> RpcError {
    let code = match status.as_u16() {
        400 => RpcCode::Internal,
        401 => RpcCode::Unauthenticated,
        403 => RpcCode::Other(7), // PERMISSION_DENIED
        404 => RpcCode::Unimplemented,
        429 | 502..=504 => RpcCode::Unavailable,
        _ => RpcCode::Other(2), // UNKNOWN
    };
    RpcError::new(code, format!("HTTP status {status}"))
}

/// The response side of one call.
pub(crate) struct Response {
    body: Option<RecvStream>,
    decoder: FrameDecoder,
    /// The status of a trailers-only reply.
    status: Option<Result<(), RpcError>>,
}

/// Sends the request of `call` and waits for the response headers.
pub(crate) async fn start(conn: &Conn, call: &Call) -> Result<Response, RpcError> {
    let mut send = conn.send.clone().ready().await.map_err(h2_error)?;
    let request = Request::builder()
        .method(Method::POST)
        .uri(format!("{}{}", conn.base, call.path()))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .header(
            "user-agent",
            concat!("ensync-h2/", env!("CARGO_PKG_VERSION")),
        )
        .body(())
        .map_err(internal)?;
    let mut body = BytesMut::new();
    framing::encode_frame_bytes(&call.request.encode_to_vec(), &mut body).map_err(internal)?;
    let (response, mut stream) = send.send_request(request, false).map_err(h2_error)?;
    // More than the flow-control window is buffered by h2 and sent as the window opens.
    stream.send_data(body.freeze(), true).map_err(h2_error)?;
    let (parts, body) = response.await.map_err(h2_error)?.into_parts();
    if parts.status != StatusCode::OK {
        return Err(http_status_error(parts.status));
    }
    Ok(Response {
        status: status(&parts.headers),
        body: Some(body),
        decoder: FrameDecoder::new(),
    })
}

impl Response {
    /// The next message, or `None` after the last one (then read [`Response::finish`]).
    pub(crate) async fn next_message(&mut self) -> Result<Option<Bytes>, RpcError> {
        if self.status.is_some() {
            return Ok(None);
        }
        let Some(body) = self.body.as_mut() else {
            return Ok(None);
        };
        loop {
            if let Some(frame) = self.decoder.next_frame().map_err(internal)? {
                return Ok(Some(frame));
            }
            match body.data().await {
                Some(Ok(chunk)) => {
                    let _ = body.flow_control().release_capacity(chunk.len());
                    self.decoder.push(&chunk);
                }
                Some(Err(e)) => return Err(h2_error(e)),
                None => {
                    self.decoder.finish().map_err(internal)?;
                    return Ok(None);
                }
            }
        }
    }

    /// The call's final status, from the trailers (or the trailers-only headers).
    pub(crate) async fn finish(mut self) -> Result<(), RpcError> {
        if let Some(status) = self.status.take() {
            return status;
        }
        let Some(mut body) = self.body.take() else {
            return Ok(());
        };
        match body.trailers().await.map_err(h2_error)? {
            Some(trailers) => status(&trailers)
                .unwrap_or_else(|| Err(internal("the reply's trailers carry no grpc-status"))),
            None => Err(internal("the reply ended without trailers")),
        }
    }
}

/// Makes a unary call.
pub(crate) async fn unary(conn: Conn, call: Call) -> Result<Reply, RpcError> {
    let mut response = start(&conn, &call).await?;
    let message = response.next_message().await?;
    response.finish().await?;
    let message = message.ok_or_else(|| internal("the reply carried no message"))?;
    Reply::decode(call.request.kind(), &message).map_err(internal)
}

/// Decodes one item of a `Subscribe` stream.
pub(crate) fn stream_item(bytes: &[u8]) -> Result<wire::EventStreamResponse, RpcError> {
    Reply::decode_stream_item(bytes).map_err(internal)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_from_headers() {
        let mut headers = HeaderMap::new();
        assert!(status(&headers).is_none());
        headers.insert("grpc-status", "0".parse().unwrap());
        assert_eq!(status(&headers), Some(Ok(())));
        headers.insert("grpc-status", "12".parse().unwrap());
        headers.insert("grpc-message", "no such method: a%20b%25".parse().unwrap());
        let error = status(&headers).unwrap().unwrap_err();
        assert_eq!(error.code, RpcCode::Unimplemented);
        assert_eq!(error.message, "no such method: a b%");
        headers.insert("grpc-status", "x".parse().unwrap());
        assert_eq!(
            status(&headers).unwrap().unwrap_err().code,
            RpcCode::Other(2)
        );
    }

    #[test]
    fn percent_decoding_keeps_bad_escapes() {
        assert_eq!(percent_decode(b"100%"), "100%");
        assert_eq!(percent_decode(b"%zz%41"), "%zzA");
        assert_eq!(percent_decode(b"%C3%A9"), "\u{e9}");
    }

    #[test]
    fn http_status_mapping() {
        assert_eq!(
            http_status_error(StatusCode::NOT_FOUND).code,
            RpcCode::Unimplemented
        );
        assert_eq!(
            http_status_error(StatusCode::SERVICE_UNAVAILABLE).code,
            RpcCode::Unavailable
        );
    }
}
