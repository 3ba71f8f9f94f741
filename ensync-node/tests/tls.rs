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
    dev.config.tls_cert = Some(dir.path().join("missing.pem"));
    let err = ensync_node::Node::start(dev.config.clone())
        .await
        .unwrap_err();
    assert!(err.to_string().contains("missing.pem"), "{err}");
}
