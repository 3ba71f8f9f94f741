//! The seed README's "Publishing Example", in Rust: publish an event (the call returns
//! its id), publish with metadata, publish a typed payload, publish to several recipients.
//!
//! ```text
//! cargo run -p ensync-tokio --example publishing
//! ```
//!
//! With no `ENSYNC_URL` it starts an embedded node with two apps and publishes to the
//! second; with `ENSYNC_URL` it publishes to `ENSYNC_RECIPIENT` (default: this app).

mod common;

use serde::Serialize;

/// A typed payload: any `Serialize` value that is a JSON object can be published.
#[derive(Serialize)]
struct EmailSent<'a> {
    to: &'a str,
    subject: &'a str,
}

#[tokio::main]
async fn main() -> Result<(), common::BoxError> {
    // Create client
    let setup = common::setup().await?;
    let client = setup.client().await?;

    // The receiving party's public key (its "appId").
    let app_id = match &setup.recipient {
        Some(recipient) => recipient.clone(),
        None => match &setup.peer {
            // The embedded node's second app.
            Some(_) => setup.peer_client().await?.public_key().to_owned(),
            None => client.public_key().to_owned(),
        },
    };

    // Basic publish: returns the event id (one per recipient).
    let ids = client
        .publish(
            "notifications/email/sent",
            &[&app_id],
            &serde_json::json!({"to": "user@example.com", "subject": "Welcome!"}),
        )
        .await?;
    println!("Published event: {}", ids[0]);

    // With metadata (sent unencrypted: routing information, never secrets).
    let ids = client
        .publish_with_metadata(
            "notifications/email/sent",
            &[&app_id],
            &serde_json::json!({"to": "user@example.com", "subject": "Welcome!"}),
            &serde_json::json!({"source": "email-service", "priority": "high"}),
        )
        .await?;
    println!("Published event with metadata: {}", ids[0]);

    // A typed payload.
    let ids = client
        .publish(
            "notifications/email/sent",
            &[&app_id],
            &EmailSent {
                to: "ops@example.com",
                subject: "Daily report",
            },
        )
        .await?;
    println!("Published typed event: {}", ids[0]);

    // Several recipients: the payload is encrypted for each, and each gets its own id.
    let me = client.public_key().to_owned();
    let ids = client
        .publish(
            "notifications/email/sent",
            &[app_id.as_str(), me.as_str()],
            &serde_json::json!({"to": "team@example.com", "subject": "Release notes"}),
        )
        .await?;
    println!("Published to {} recipients: {}", ids.len(), ids.join(", "));

    client.close().await?;
    Ok(())
}
