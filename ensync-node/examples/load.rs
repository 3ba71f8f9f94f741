//! Publish throughput of an in-process node: concurrent publishers, 1 KB payloads, one
//! recipient, durable group commit. Run in release:
//!
//! ```text
//! cargo run --release -p ensync-node --example load -- [publishers] [seconds]
//! ```

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use base64::Engine as _;
use ensync_node::Node;
use ensync_node::dev::DevSetup;
use ensync_node::rpc::en_sync_service_client::EnSyncServiceClient;
use ensync_proto::wire;
use tonic::transport::Endpoint;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let publishers: usize = args.next().map(|a| a.parse()).transpose()?.unwrap_or(64);
    let seconds: u64 = args.next().map(|a| a.parse()).transpose()?.unwrap_or(5);

    let dev = DevSetup::generate(2)?;
    let node = Node::start(dev.config.clone()).await?;
    let addr = node.grpc_addr();
    // 1 KB of envelope text (base64 of 768 bytes).
    let payload = base64::engine::general_purpose::STANDARD.encode(vec![42u8; 768]);
    let to = dev.apps[1].public_key.clone();
    let access = dev.apps[0].access_key.clone();

    // A few HTTP/2 connections shared by the publishers.
    let mut channels = Vec::new();
    for _ in 0..4 {
        channels.push(
            Endpoint::from_shared(format!("http://{addr}"))?
                .connect()
                .await?,
        );
    }
    let mut c = EnSyncServiceClient::new(channels[0].clone());
    let cid = c
        .connect(wire::ConnectRequest { access_key: access })
        .await?
        .into_inner()
        .client_id;

    let count = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let stop = Instant::now() + Duration::from_secs(seconds);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for p in 0..publishers {
        let mut c = EnSyncServiceClient::new(channels[p % channels.len()].clone());
        let (count, failed) = (count.clone(), failed.clone());
        let (cid, to, payload) = (cid.clone(), to.clone(), payload.clone());
        tasks.push(tokio::spawn(async move {
            while Instant::now() < stop {
                let r = c
                    .publish_event(wire::PublishEventRequest {
                        client_id: cid.clone(),
                        event_name: "load/test".into(),
                        payload: payload.clone(),
                        delivery_to: to.clone(),
                        metadata: "{}".into(),
                        payload_metadata: None,
                    })
                    .await;
                match r {
                    Ok(r) if r.get_ref().success => count.fetch_add(1, Ordering::Relaxed),
                    _ => failed.fetch_add(1, Ordering::Relaxed),
                };
            }
        }));
    }
    for t in tasks {
        t.await?;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let n = count.load(Ordering::Relaxed);
    println!(
        "{n} events published in {elapsed:.2} s by {publishers} publishers: {:.0} events/s \
         (1 KB payloads, 1 recipient, durable group commit; {} failed)",
        n as f64 / elapsed,
        failed.load(Ordering::Relaxed)
    );
    node.shutdown().await;
    Ok(())
}
