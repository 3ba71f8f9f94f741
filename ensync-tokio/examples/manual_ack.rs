//! Manual acknowledgement: a subscription with `auto_ack(false)` settles each event
//! itself. One event is acknowledged, one deferred (the node delivers it again after
//! about a second, and it is acknowledged then), one discarded (never delivered again).
//!
//! ```text
//! cargo run -p ensync-tokio --example manual_ack
//! ```

mod common;

use std::time::{Duration, Instant};

use ensync_tokio::SubscribeOptions;
use futures::StreamExt;

const EVENT_NAME: &str = "examples/jobs/run";

#[tokio::main]
async fn main() -> Result<(), common::BoxError> {
    let setup = common::setup().await?;
    let client = setup.client().await?;

    let mut subscription = client
        .subscribe_with(EVENT_NAME, SubscribeOptions::default().auto_ack(false))
        .await?;

    let sender = setup.peer_client().await?;
    for job in ["ack-me", "defer-me", "discard-me"] {
        sender
            .publish(
                EVENT_NAME,
                &[client.public_key()],
                &serde_json::json!({ "job": job }),
            )
            .await?;
    }
    println!("published 3 jobs");

    let mut deferred = None;
    for _ in 0..3 {
        let event = common::within(30, "a job", subscription.next())
            .await?
            .ok_or("the subscription ended")?;
        let job = event.payload["job"].as_str().unwrap_or_default().to_owned();
        let idem = event.idem.clone();
        match job.as_str() {
            "ack-me" => {
                event.ack().await?;
                println!("acknowledged {job} ({idem})");
            }
            "defer-me" => {
                let at = event
                    .defer(Duration::from_secs(1), "Temporary unavailability")
                    .await?;
                println!("deferred {job} ({idem}) until {at} ms since the epoch");
                deferred = Some((idem, Instant::now()));
            }
            "discard-me" => {
                event.discard("Invalid data").await?;
                println!("discarded {job} ({idem})");
            }
            other => return Err(format!("unexpected job {other:?}").into()),
        }
    }

    // The deferred job comes back.
    let (deferred_idem, deferred_at) = deferred.ok_or("no job was deferred")?;
    let event = common::within(30, "the deferred job", subscription.next())
        .await?
        .ok_or("the subscription ended")?;
    if event.idem != deferred_idem {
        return Err(format!("expected the deferred job again, got {:?}", event).into());
    }
    println!(
        "the deferred job {} came back after {:.1} s",
        event.idem,
        deferred_at.elapsed().as_secs_f64()
    );
    // The seed-style acknowledgement through the subscription, by id and block.
    subscription.ack(&event.idem, event.block).await?;
    println!("acknowledged it with subscription.ack(idem, block)");
    drop(event);

    // Nothing else arrives: the discarded job is gone for good.
    match tokio::time::timeout(Duration::from_millis(1500), subscription.next()).await {
        Err(_) => println!("nothing else arrived: the discarded job is not delivered again"),
        Ok(event) => return Err(format!("unexpected delivery: {event:?}").into()),
    }

    subscription.unsubscribe().await?;
    sender.close().await?;
    client.close().await?;
    Ok(())
}
