//! The seed README's "WebSocket Alternative", in Rust: the same client API over the
//! node's WebSocket endpoint instead of gRPC.
//!
//! ```text
//! cargo run -p ensync-tokio --example websocket
//! ```
//!
//! With `ENSYNC_WS_URL` (e.g. `wss://node.ensync.cloud`), `ENSYNC_APP_KEY` and
//! `ENSYNC_SECRET_KEY` in the environment it talks to that node; otherwise it starts an
//! embedded node with its WebSocket endpoint on `127.0.0.1:0`, so it runs on a fresh
//! machine with nothing else.

use std::time::Duration;

use ensync_tokio::{ClientOptions, EnSyncWebSocketEngine, EngineOptions};
use futures::StreamExt;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // Where to connect: the environment, or an embedded node.
    let mut _embedded = None;
    let (url, app_key, secret_key) = match std::env::var("ENSYNC_WS_URL") {
        Ok(url) => (
            url,
            std::env::var("ENSYNC_APP_KEY").map_err(|_| "ENSYNC_APP_KEY is not set")?,
            std::env::var("ENSYNC_SECRET_KEY").map_err(|_| "ENSYNC_SECRET_KEY is not set")?,
        ),
        Err(_) => {
            let mut dev = ensync_node::dev::DevSetup::generate(1)?;
            dev.config.ws_listen = Some(std::net::SocketAddr::from(([127, 0, 0, 1], 0)));
            let node = ensync_node::Node::start(dev.config.clone()).await?;
            let ws = node.ws_addr().ok_or("the node has no WebSocket endpoint")?;
            let url = format!("ws://{ws}");
            println!("(ENSYNC_WS_URL is not set: started an embedded EnSync node at {url})");
            let app = &dev.apps[0];
            let keys = (app.access_key.clone(), app.secret_key().to_owned());
            _embedded = Some((node, dev));
            (url, keys.0, keys.1)
        }
    };

    // Initialize WebSocket client
    let engine = EnSyncWebSocketEngine::with_options(
        &url,
        EngineOptions::default().reconnect_interval(Duration::from_millis(500)),
    )?;
    let client = engine
        .create_client(
            &app_key,
            ClientOptions::default().app_secret_key(secret_key),
        )
        .await?;
    println!("Connected to {} as {}", engine.url(), client.public_key());

    // From here on, everything is the same API as the gRPC client.
    let mut subscription = client.subscribe("orders/status/updated").await?;
    let me = client.public_key().to_owned();
    let ids = client
        .publish(
            "orders/status/updated",
            &[&me],
            &serde_json::json!({"order_id": "order-123", "status": "completed"}),
        )
        .await?;
    println!("Published event {}", ids.join(","));

    let event = tokio::time::timeout(Duration::from_secs(30), subscription.next())
        .await
        .map_err(|_| "no event arrived within 30 s")?
        .ok_or("the subscription ended")?;
    println!(
        "Received order update: {} (event {}, logged at {:?})",
        event.payload["order_id"].as_str().unwrap_or_default(),
        event.idem,
        event.timestamp
    );
    drop(event); // handled: acknowledged automatically

    subscription.unsubscribe().await?;
    client.close().await?;
    Ok(())
}
