//! The seed README's quick start, in Rust: create a client, publish an event,
//! subscribe, handle it, clean up.
//!
//! ```text
//! cargo run -p ensync-tokio --example quickstart
//! ```
//!
//! With no `ENSYNC_URL` in the environment it starts an embedded node (see
//! `common/mod.rs`), so it runs on a fresh machine with nothing else.

mod common;

use std::time::Duration;

use futures::StreamExt;
use serde::Deserialize;

#[derive(Debug, Deserialize)]
struct OrderUpdate {
    order_id: String,
    status: String,
}

#[tokio::main]
async fn main() -> Result<(), common::BoxError> {
    // 1. Initialize engine and create client
    let setup = common::setup().await?;
    let client = setup
        .engine
        .create_client(&setup.app_key, setup.client_options())
        .await?;
    // The receiving party's public key; by default this app itself.
    let app_id = setup
        .recipient
        .clone()
        .unwrap_or_else(|| client.public_key().to_owned());

    // 2. Publish an event
    let ids = client
        .publish(
            "orders/status/updated",
            &[&app_id],
            &serde_json::json!({"order_id": "order-123", "status": "completed"}),
        )
        .await?;
    println!("Published event {}", ids.join(","));

    // 3. Subscribe to events
    let mut subscription = client.subscribe("orders/status/updated").await?;

    // 4. Handle incoming events (here: the first one, then stop)
    let event = tokio::time::timeout(Duration::from_secs(30), subscription.next())
        .await
        .map_err(|_| "no event arrived within 30 s")?
        .ok_or("the subscription ended")?;
    let update: OrderUpdate = event.payload_as()?;
    println!(
        "Received order update: {} is {} (event {} from {})",
        update.order_id, update.status, event.idem, event.sender
    );
    drop(event); // handled: acknowledged automatically

    // 5. Clean up
    subscription.unsubscribe().await?;
    client.close().await?;
    Ok(())
}
