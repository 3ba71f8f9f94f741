//! TLS: with `tls_cert` / `tls_key` the endpoint serves gRPC over TLS only.

mod common;

use std::time::Duration;

use common::*;
use ensync_node::rpc::en_sync_service_client::EnSyncServiceClient;
use ensync_proto::wire;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint};

#[tokio::test]
async fn serves_tls_with_configured_certificate() {
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cert_pem = cert.cert.pem();
    std::fs::write(dir.path().join("cert.pem"), &cert_pem).unwrap();
    std::fs::write(dir.path().join("key.pem"), cert.signing_key.serialize_pem()).unwrap();
    let t = start_with(2, |c| {
        c.tls_cert = Some(dir.path().join("cert.pem"));
        c.tls_key = Some(dir.path().join("key.pem"));
    })
    .await;
    assert!(t.node.is_tls());
    let port = t.node.grpc_addr().port();

    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(&cert_pem))
        .domain_name("localhost");
    let channel = Endpoint::from_shared(format!("https://localhost:{port}"))
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .connect()
        .await
        .expect("TLS channel");
    let mut c = EnSyncServiceClient::new(channel);
    let cid = connect(&mut c, &t.dev.apps[0].access_key).await;
    let (mut sc, sid) = {
        let mut sc = c.clone();
        let sid = connect(&mut sc, &t.dev.apps[1].access_key).await;
        (sc, sid)
    };
    let mut s = subscribe(&mut sc, &sid, "secure").await;
    let id = publish(&mut c, &cid, "secure", &t.key(1), 1).await;
    assert_eq!(next(&mut s).await.event_idem, id);

    // A plaintext client gets nowhere.
    let plain = Endpoint::from_shared(format!("http://127.0.0.1:{port}"))
        .unwrap()
        .connect_timeout(Duration::from_secs(3))
        .timeout(Duration::from_secs(3))
        .connect()
        .await;
    if let Ok(channel) = plain {
        let r = EnSyncServiceClient::new(channel)
            .connect(wire::ConnectRequest {
                access_key: t.dev.apps[0].access_key.clone(),
            })
            .await;
        assert!(
            r.is_err(),
            "plaintext call succeeded against a TLS endpoint"
        );
    }
    t.node.shutdown().await;
}

#[tokio::test]
async fn unusable_certificate_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("cert.pem"), "not a certificate").unwrap();
    std::fs::write(dir.path().join("key.pem"), "not a key").unwrap();
    let mut dev = ensync_node::dev::DevSetup::generate(1).unwrap();
    dev.config.tls_cert = Some(dir.path().join("cert.pem"));
    dev.config.tls_key = Some(dir.path().join("key.pem"));
    let err = ensync_node::Node::start(dev.config.clone())
        .await
        .unwrap_err();
    assert!(matches!(err, ensync_node::NodeError::Tls(_)), "{err}");
    assert!(
        err.to_string().contains("tls_cert"),
        "names the field: {err}"
    );
    dev.config.tls_cert = Some(dir.path().join("missing.pem"));
    let err = ensync_node::Node::start(dev.config.clone())
        .await
        .unwrap_err();
    assert!(err.to_string().contains("missing.pem"), "{err}");
    assert!(
        err.to_string().contains("tls_cert"),
        "names the field: {err}"
    );
    // A good certificate with a key that is not its own.
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let other = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    std::fs::write(dir.path().join("cert.pem"), cert.cert.pem()).unwrap();
    std::fs::write(
        dir.path().join("key.pem"),
        other.signing_key.serialize_pem(),
    )
    .unwrap();
    dev.config.tls_cert = Some(dir.path().join("cert.pem"));
    let err = ensync_node::Node::start(dev.config.clone())
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("tls_key"),
        "names the field: {err}"
    );
}

/// A node serving TLS with a fresh self-signed certificate for `localhost`; returns it
/// with the certificate (DER) and the directory holding the PEM files.
async fn tls_node(
    tweak: impl FnOnce(&mut ensync_node::NodeConfig),
) -> (TestNode, Vec<u8>, tempfile::TempDir) {
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("cert.pem"), cert.cert.pem()).unwrap();
    std::fs::write(dir.path().join("key.pem"), cert.signing_key.serialize_pem()).unwrap();
    let t = start_with(1, |c| {
        c.tls_cert = Some(dir.path().join("cert.pem"));
        c.tls_key = Some(dir.path().join("key.pem"));
        tweak(c);
    })
    .await;
    (t, cert.cert.der().to_vec(), dir)
}

/// A TLS connection (ALPN h2, trusting `cert`) and an HTTP/2 handshake over it, then one
/// `Heartbeat` call: `Ok` when answered, the h2 error of the call or the connection when
/// refused.
async fn tls_h2_call(addr: std::net::SocketAddr, cert: &[u8]) -> Result<(), h2::Error> {
    use std::sync::Arc;
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(rustls_pki_types::CertificateDer::from(cert.to_vec()))
        .unwrap();
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec()];
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(
            rustls_pki_types::ServerName::try_from("localhost").unwrap(),
            tcp,
        )
        .await
        .expect("the TLS handshake completes, also over the cap");
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (h2, connection) = h2::client::handshake(tls).await?;
    let conn = tokio::spawn(connection);
    let call = async {
        let mut h2 = h2.ready().await?;
        let request = http::Request::builder()
            .method("POST")
            .uri("https://localhost/ensync.EnSyncService/Heartbeat")
            .header("content-type", "application/grpc")
            .body(())
            .unwrap();
        let (response, _) = h2.send_request(request, true)?;
        response.await?;
        Ok::<_, h2::Error>(h2)
    };
    let called = tokio::time::timeout(Duration::from_secs(5), call)
        .await
        .expect("answered or refused in time");
    let called = match called {
        Ok(h2) => {
            // Keep it open: the caller counts it.
            std::mem::forget(h2);
            std::mem::forget(conn);
            return Ok(());
        }
        Err(e) => Err(e),
    };
    match conn.await.unwrap() {
        Err(e) => Err(e),
        Ok(()) => called,
    }
}

/// Issue 13: a TLS connection over `max_connections` completes its TLS handshake and gets
/// the HTTP/2 `GOAWAY` (`ENHANCE_YOUR_CALM`, "connection limit reached") a plaintext one
/// gets, instead of being closed before the handshake.
#[tokio::test]
async fn tls_connections_over_the_cap_get_goaway() {
    let (t, cert, _dir) = tls_node(|c| c.max_connections = 1).await;
    let addr = t.node.grpc_addr();
    tls_h2_call(addr, &cert).await.expect("the first is served");
    let err = tls_h2_call(addr, &cert)
        .await
        .expect_err("the second is refused");
    assert!(err.is_go_away(), "{err}");
    assert_eq!(err.reason(), Some(h2::Reason::ENHANCE_YOUR_CALM));
    assert!(
        err.to_string().contains("connection limit reached"),
        "{err}"
    );
    t.node.shutdown().await;
}

/// Reads until the peer closes (EOF or reset); `false` if still open after 5 s.
async fn closed_within_5s(s: &mut tokio::net::TcpStream) -> bool {
    use tokio::io::AsyncReadExt as _;
    let mut buf = [0u8; 1024];
    tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await
    .is_ok()
}

/// Issue 13: on a TLS listener, a connection that never sends its ClientHello, or sends
/// the start of one and stalls, is closed after `handshake_timeout_ms`, on every
/// endpoint (gRPC, WebSocket, and the admin endpoint's HTTPS, issue 16); a real client is
/// served meanwhile.
#[tokio::test]
async fn tls_handshakes_that_stall_are_closed_after_the_handshake_timeout() {
    use tokio::io::AsyncWriteExt as _;
    let (t, cert, _dir) = tls_node(|c| {
        c.handshake_timeout_ms = 300;
        c.ws_listen = Some("127.0.0.1:0".parse().unwrap());
        c.admin_listen = Some("127.0.0.1:0".parse().unwrap());
        c.admin_key = Some(ensync_node::config::SecretString::new(ADMIN_KEY));
    })
    .await;
    // A TLS record header and the start of a ClientHello (more than the 24 bytes the
    // gRPC endpoint's own first-bytes deadline waits for), then nothing.
    let mut partial = vec![
        0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc, 0x03, 0x03,
    ];
    partial.extend_from_slice(&[0x42; 32]);
    let admin = t.node.admin_addr().unwrap();
    for addr in [t.node.grpc_addr(), t.node.ws_addr().unwrap(), admin] {
        for send in [&[][..], &partial[..]] {
            let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
            s.write_all(send).await.unwrap();
            let started = std::time::Instant::now();
            assert!(
                closed_within_5s(&mut s).await,
                "{addr}: a stalled TLS handshake ({} bytes sent) is still open after 5 s",
                send.len()
            );
            assert!(
                started.elapsed() >= Duration::from_millis(250),
                "{addr}: closed early"
            );
        }
    }
    tls_h2_call(t.node.grpc_addr(), &cert)
        .await
        .expect("a real client is served");
    assert_eq!(https_call(admin, &cert, "/healthz").await.unwrap().0, 200);
    t.node.shutdown().await;
}

const ADMIN_KEY: &str = "the-admin-key-of-the-tls-tests";

/// One HTTP/1.1 request over TLS to `addr` (name `localhost`), trusting only `ca` (DER):
/// the answer's status code and body, or the TLS error.
async fn https_call(
    addr: std::net::SocketAddr,
    ca: &[u8],
    path: &str,
) -> Result<(u16, String), std::io::Error> {
    use std::sync::Arc;
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(rustls_pki_types::CertificateDer::from(ca.to_vec()))
        .unwrap();
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    let call = async {
        let mut tls = tokio_rustls::TlsConnector::from(Arc::new(config))
            .connect(
                rustls_pki_types::ServerName::try_from("localhost").unwrap(),
                tcp,
            )
            .await?;
        let request = format!(
            "GET {path} HTTP/1.1\r\nHost: localhost\r\nX-ACCESS-KEY: {ADMIN_KEY}\r\nConnection: close\r\n\r\n"
        );
        tls.write_all(request.as_bytes()).await?;
        let mut answer = Vec::new();
        // The server closes after the answer (`Connection: close`); a TLS peer that
        // closes without close_notify is an error here only if nothing came.
        if let Err(e) = tls.read_to_end(&mut answer).await {
            if answer.is_empty() {
                return Err(e);
            }
        }
        Ok::<_, std::io::Error>(answer)
    };
    let answer = tokio::time::timeout(Duration::from_secs(10), call)
        .await
        .expect("answered in time")?;
    let text = String::from_utf8_lossy(&answer).into_owned();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP answer: {text:?}"));
    let body = text.split("\r\n\r\n").nth(1).unwrap_or_default().to_owned();
    Ok((status, body))
}

/// Issue 16: with `tls_cert`/`tls_key` the admin endpoint serves HTTPS with the node's
/// certificate, as gRPC does: a client trusting that certificate is answered, one
/// trusting another CA is refused in the handshake, and plain HTTP gets no answer.
#[tokio::test]
async fn the_admin_endpoint_serves_https_with_the_node_certificate() {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let (t, cert, _dir) = tls_node(|c| {
        c.admin_listen = Some("127.0.0.1:0".parse().unwrap());
        c.admin_key = Some(ensync_node::config::SecretString::new(ADMIN_KEY));
    })
    .await;
    assert!(t.node.admin_is_tls());
    let admin = t.node.admin_addr().unwrap();
    let (status, body) = https_call(admin, &cert, "/api/v1/ensync/access-key")
        .await
        .expect("served over HTTPS");
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"resultsLength\":1"), "{body}");
    let (status, text) = https_call(admin, &cert, "/metrics").await.unwrap();
    assert_eq!(status, 200);
    assert!(text.contains("ensync_sessions"), "{text}");

    let other = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let err = https_call(admin, other.cert.der(), "/healthz")
        .await
        .expect_err("a client trusting another CA is refused");
    assert!(
        err.to_string().to_lowercase().contains("certificate"),
        "{err}"
    );

    let mut plain = tokio::net::TcpStream::connect(admin).await.unwrap();
    plain
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .unwrap();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), plain.read_to_end(&mut answer)).await;
    assert!(
        !String::from_utf8_lossy(&answer).contains("200 OK"),
        "plain HTTP answered on the HTTPS admin endpoint"
    );
    t.node.shutdown().await;
}

/// Issue 16: `admin_tls = false` keeps the admin endpoint on plain HTTP on a loopback
/// address while gRPC serves TLS; on another address it is refused naming the field, as
/// is `admin_tls = true` without a certificate.
#[tokio::test]
async fn admin_tls_false_keeps_plain_http_on_loopback_only() {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let (t, _cert, dir) = tls_node(|c| {
        c.admin_listen = Some("127.0.0.1:0".parse().unwrap());
        c.admin_key = Some(ensync_node::config::SecretString::new(ADMIN_KEY));
        c.admin_tls = Some(false);
    })
    .await;
    assert!(t.node.is_tls());
    assert!(!t.node.admin_is_tls());
    let mut plain = tokio::net::TcpStream::connect(t.node.admin_addr().unwrap())
        .await
        .unwrap();
    plain
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut answer = String::new();
    tokio::time::timeout(Duration::from_secs(5), plain.read_to_string(&mut answer))
        .await
        .expect("answered in time")
        .unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    t.node.shutdown().await;

    let mut config = t.dev.config.clone();
    config.admin_listen = Some("0.0.0.0:0".parse().unwrap());
    let err = config.validate().unwrap_err();
    assert!(err.to_string().contains("admin_tls"), "{err}");
    config.admin_tls = Some(true);
    config.tls_cert = None;
    config.tls_key = None;
    let err = config.validate().unwrap_err();
    assert!(err.to_string().contains("admin_tls"), "{err}");
    drop(dir);
}
