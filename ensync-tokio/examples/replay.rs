//! Replaying an event: after it was received and acknowledged, `subscription.replay(id)`
//! fetches it again from the node by its id and decrypts it.
//!
//! ```text
//! cargo run -p ensync-tokio --example replay
//! ```

mod common;

use futures::StreamExt;

const EVENT_NAME: &str = "examples/invoices/issued";

#[tokio::main]
async fn main() -> Result<(), common::BoxError> {
    let setup = common::setup().await?;
    let client = setup.client().await?;
    let mut subscription = client.subscribe(EVENT_NAME).await?;

    let sender = setup.peer_client().await?;
    let payload = serde_json::json!({"invoice": "INV-42", "amount": 1999});
    let ids = sender
        .publish(EVENT_NAME, &[client.public_key()], &payload)
        .await?;
    println!("published {}", ids[0]);

    let event = common::within(30, "the event", subscription.next())
        .await?
        .ok_or("the subscription ended")?;
    let idem = event.idem.clone();
    println!("received {idem}: {}", event.payload);
    event.ack().await?;
    println!("acknowledged {idem}");

    let replayed = subscription.replay(&idem).await?;
    println!("replayed {idem}: {replayed}");
    if replayed != payload {
        return Err(format!("the replayed payload differs: {replayed}").into());
    }

    subscription.unsubscribe().await?;
    sender.close().await?;
    client.close().await?;
    Ok(())
}
