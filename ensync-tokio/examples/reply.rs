//! Replying to an event's sender (the seed README's "Replying to Events"): a service app
//! answers requests by publishing to `event.sender`; a caller app sends a request and
//! waits for the reply.
//!
//! ```text
//! cargo run -p ensync-tokio --example reply
//! ```
//!
//! With the embedded node the caller and the service are two different apps. With
//! `ENSYNC_URL` the service is `ENSYNC_PEER_*` if set, else this app again.

mod common;

use ensync_tokio::Event;
use futures::StreamExt;

const REQUEST: &str = "examples/echo/request";
const REPLY: &str = "examples/echo/reply";

#[tokio::main]
async fn main() -> Result<(), common::BoxError> {
    let setup = common::setup().await?;

    // The service: answers every request by publishing back to its sender.
    let service = setup.peer_client().await?;
    let mut requests = service.subscribe(REQUEST).await?;
    let replier = service.clone();
    requests.on(move |event: Event| {
        let replier = replier.clone();
        async move {
            println!(
                "service: received request {}: {}",
                event.idem, event.payload
            );
            // Reply back to the original sender.
            replier
                .publish(
                    REPLY,
                    &[&event.sender],
                    &serde_json::json!({
                        "status": "received",
                        "response": "Processing complete",
                        "request_id": event.idem,
                    }),
                )
                .await
                .map(|_| ()) // an Err leaves the request unacknowledged: it comes again
        }
    });

    // The caller: listens for replies, then sends a request to the service.
    let caller = setup.client().await?;
    let mut replies = caller.subscribe(REPLY).await?;
    let ids = caller
        .publish(
            REQUEST,
            &[service.public_key()],
            &serde_json::json!({"question": "ping"}),
        )
        .await?;
    println!("caller: sent request {}", ids[0]);

    let reply = common::within(30, "the reply", replies.next())
        .await?
        .ok_or("the reply subscription ended")?;
    println!(
        "caller: reply {} from {}: {}",
        reply.idem, reply.sender, reply.payload
    );
    if reply.payload["request_id"] != ids[0].as_str() {
        return Err(format!("the reply answers another request: {}", reply.payload).into());
    }
    drop(reply); // acknowledged

    replies.unsubscribe().await?;
    requests.unsubscribe().await?;
    caller.close().await?;
    service.close().await?;
    Ok(())
}
