//! ensync-h2 with the `tls` feature: rustls over async-std's TCP, against a node serving
//! TLS with a self-signed certificate.

mod h2_support;

use ensync_h2::{ClientOptions, EnSyncEngine, ErrorKind};
use futures::StreamExt;
use h2_support::{NodeThread, async_std_runtime, bounded, h2_options};
use serde_json::json;

#[test]
fn h2_over_tls() {
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).expect("cert");
    let dir = tempfile::tempdir().expect("tempdir");
    let cert_pem = cert.cert.pem();
    std::fs::write(dir.path().join("cert.pem"), &cert_pem).expect("write cert");
    std::fs::write(dir.path().join("key.pem"), cert.signing_key.serialize_pem())
        .expect("write key");
    let node = NodeThread::start_with(1, |c| {
        c.tls_cert = Some(dir.path().join("cert.pem"));
        c.tls_key = Some(dir.path().join("key.pem"));
    });
    let url = format!("grpcs://localhost:{}", node.addr.port());
    let (key, secret) = node.app(0);
    async_std::task::block_on(async {
        // Without the node's CA the certificate is refused.
        let untrusted = EnSyncEngine::with_options(&url, h2_options(), async_std_runtime())
            .expect("engine")
            .create_client(&key, ClientOptions::default())
            .await
            .unwrap_err();
        assert_eq!(untrusted.kind(), ErrorKind::Connection, "{untrusted}");

        let options = h2_options().ca_certificate_pem(cert_pem.as_bytes());
        let engine =
            EnSyncEngine::with_options(&url, options, async_std_runtime()).expect("engine");
        assert!(engine.uses_tls());
        let client = engine
            .create_client(&key, ClientOptions::default().app_secret_key(secret))
            .await
            .expect("TLS client");
        let me = [client.public_key().to_owned()];
        let mut sub = client.subscribe("tls/h2").await.expect("subscribe");
        let ids = client
            .publish("tls/h2", &me, &json!({"secure": true}))
            .await
            .expect("publish");
        let event = bounded("the event over TLS", sub.next())
            .await
            .expect("event");
        assert_eq!(event.idem, ids[0]);
        assert_eq!(event.payload, json!({"secure": true}));
        drop(event);
        client.close().await.expect("close");
    });
}
