//! Pausing and resuming a subscription: while paused the node holds the events; after
//! `resume` they are delivered in order.
//!
//! ```text
//! cargo run -p ensync-tokio --example pause_resume
//! ```

mod common;

use std::time::Duration;

use futures::StreamExt;

const EVENT_NAME: &str = "examples/orders/created";

#[tokio::main]
async fn main() -> Result<(), common::BoxError> {
    let setup = common::setup().await?;
    let client = setup.client().await?;
    let mut subscription = client.subscribe(EVENT_NAME).await?;

    subscription.pause("Maintenance in progress").await?;
    println!("paused");

    let sender = setup.peer_client().await?;
    for order in 1..=2 {
        let ids = sender
            .publish(
                EVENT_NAME,
                &[client.public_key()],
                &serde_json::json!({ "order_id": order }),
            )
            .await?;
        println!("published order {order} ({})", ids[0]);
    }

    match tokio::time::timeout(Duration::from_secs(1), subscription.next()).await {
        Err(_) => println!("nothing delivered while paused (waited 1 s)"),
        Ok(event) => return Err(format!("delivered while paused: {event:?}").into()),
    }

    subscription.resume().await?;
    println!("resumed");
    for _ in 1..=2 {
        let event = common::within(30, "a held event", subscription.next())
            .await?
            .ok_or("the subscription ended")?;
        println!(
            "received order {} ({}) after resume",
            event.payload["order_id"], event.idem
        );
    }

    subscription.unsubscribe().await?;
    sender.close().await?;
    client.close().await?;
    Ok(())
}
