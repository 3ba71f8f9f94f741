//! The seed README's "Subscribing Example", in Rust: subscribe, handle each event with
//! a handler given to `subscription.on(..)` (acknowledged automatically when it returns
//! `Ok`), then unsubscribe and close.
//!
//! ```text
//! cargo run -p ensync-tokio --example subscribing
//! ```
//!
//! So that there is something to receive, a second app (the embedded node's second app,
//! or `ENSYNC_PEER_*`, or this app again) publishes a few events to this one. The example
//! stops after handling as many events (on a real node these may include events still
//! queued from earlier runs), or fails after 30 s.

mod common;

use ensync_tokio::Event;
use serde::Deserialize;

const EVENT_NAME: &str = "notifications/email/sent";
const EVENTS: usize = 3;

#[derive(Deserialize)]
struct EmailSent {
    to: String,
    subject: String,
}

#[tokio::main]
async fn main() -> Result<(), common::BoxError> {
    let setup = common::setup().await?;
    let client = setup.client().await?;

    // Subscribe to events
    let mut subscription = client.subscribe(EVENT_NAME).await?;

    // Handle events. Returning `Err` leaves the event unacknowledged (delivered again);
    // returning `Ok` acknowledges it.
    let (handled, mut handled_rx) = tokio::sync::mpsc::unbounded_channel();
    subscription.on(move |event: Event| {
        let handled = handled.clone();
        async move {
            let email: EmailSent = event.payload_as()?;
            println!("Email sent to: {}", email.to);
            println!("Subject: {}", email.subject);
            println!("  (event {} from {})", event.idem, event.sender);
            // Event is automatically acknowledged
            let _ = handled.send(event.idem.clone());
            Ok::<(), serde_json::Error>(())
        }
    });

    // Something to receive: the second app publishes a few events to this one.
    let sender = setup.peer_client().await?;
    for i in 1..=EVENTS {
        sender
            .publish(
                EVENT_NAME,
                &[client.public_key()],
                &serde_json::json!({"to": format!("user{i}@example.com"), "subject": "Welcome!"}),
            )
            .await?;
    }
    println!("(published {EVENTS} events to this app)");

    // Run until they were handled (a service would run until it is told to stop).
    for n in 1..=EVENTS {
        common::within(30, "the next event", handled_rx.recv())
            .await?
            .ok_or("the handler stopped")?;
        println!("handled {n} of {EVENTS}");
    }

    subscription.unsubscribe().await?;
    sender.close().await?;
    client.close().await?;
    Ok(())
}
