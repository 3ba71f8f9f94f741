//! End-to-end tests of delivery semantics through the tokio SDK against a real node:
//! auto and manual ack, failing handlers, defer / discard / pause / resume / replay,
//! unsubscribe, and the bounded subscription buffer.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ensync_tests::node::{Refuse, TestNode, eventually, fast_options, within};
use ensync_tokio::{Client, Event, SubscribeOptions, Subscription};
use futures::{FutureExt, StreamExt};
use serde_json::json;

async fn next(sub: &mut Subscription) -> Event {
    within("an event", sub.next())
        .await
        .expect("the subscription ended")
}

fn n_of(event: &Event) -> i64 {
    event.payload["n"].as_i64().expect("payload has n")
}

async fn publish_n(
    from: &Client,
    to: &str,
    name: &str,
    ns: impl IntoIterator<Item = i64>,
) -> Vec<String> {
    let mut ids = Vec::new();
    for n in ns {
        let mut id = from.publish(name, &[to], &json!({"n": n})).await.unwrap();
        ids.append(&mut id);
    }
    ids
}

/// Reads events until one with `n == sentinel`, returning the `n`s before it.
async fn until_sentinel(sub: &mut Subscription, sentinel: i64) -> Vec<i64> {
    let mut seen = Vec::new();
    loop {
        let event = next(sub).await;
        let n = n_of(&event);
        if n == sentinel {
            return seen;
        }
        seen.push(n);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_ack_empties_the_queue() {
    let node = TestNode::start(2).await;
    let alice = node.client(0, fast_options()).await;
    let bob = node.client(1, fast_options()).await;
    let to = node.app(1).public_key.clone();
    publish_n(&alice, &to, "auto/evt", 0..5).await;
    assert_eq!(node.stats().ready, 5);

    let mut sub = bob.subscribe("auto/evt").await.unwrap();
    for want in 0..5 {
        let event = next(&mut sub).await;
        assert_eq!(n_of(&event), want, "in order");
        // Dropped: handled, acknowledged automatically.
    }
    eventually("the node's queue to empty", || {
        let s = node.stats();
        s.ready == 0 && s.in_flight == 0
    })
    .await;
    drop(sub);
    bob.close().await.unwrap();

    // Nothing comes back to a new session.
    let bob = node.client(1, fast_options()).await;
    let mut sub = bob.subscribe("auto/evt").await.unwrap();
    publish_n(&alice, &to, "auto/evt", [100]).await;
    assert_eq!(until_sentinel(&mut sub, 100).await, Vec::<i64>::new());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_right_after_a_handler_keeps_its_automatic_ack() {
    let node = TestNode::start(2).await;
    let alice = node.client(0, fast_options()).await;
    let to = node.app(1).public_key.clone();
    let bob = node.client(1, fast_options()).await;
    let mut sub = bob.subscribe("close/evt").await.unwrap();
    let (handled, mut handled_rx) = futures::channel::mpsc::unbounded();
    sub.on(move |event: Event| {
        let _ = handled.unbounded_send(n_of(&event));
        async {}
    });
    publish_n(&alice, &to, "close/evt", [1]).await;
    assert_eq!(within("the handler", handled_rx.next()).await, Some(1));
    // Closing at once: the automatic ack of the event just handled is still on its way.
    bob.close().await.unwrap();
    let stats = node.stats();
    assert_eq!(
        (stats.ready, stats.in_flight),
        (0, 0),
        "the ack reached the node before the close completed"
    );

    let bob = node.client(1, fast_options()).await;
    let mut sub = bob.subscribe("close/evt").await.unwrap();
    publish_n(&alice, &to, "close/evt", [100]).await;
    assert_eq!(until_sentinel(&mut sub, 100).await, Vec::<i64>::new());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn manual_ack_unacked_events_come_back_to_the_next_session() {
    let node = TestNode::start(2).await;
    let alice = node.client(0, fast_options()).await;
    let to = node.app(1).public_key.clone();
    publish_n(&alice, &to, "manual/evt", 0..5).await;

    let bob = node.client(1, fast_options()).await;
    let mut sub = bob
        .subscribe_with("manual/evt", SubscribeOptions::default().auto_ack(false))
        .await
        .unwrap();
    let mut events = Vec::new();
    for want in 0..5 {
        let event = next(&mut sub).await;
        assert_eq!(n_of(&event), want);
        events.push(event);
    }
    let mut events = events.into_iter();
    // 0: acked on the event; 1: acked through the subscription; 2: discarded;
    // 3 and 4: dropped without an ack.
    events.next().unwrap().ack().await.unwrap();
    let e1 = events.next().unwrap();
    sub.ack(&e1.idem, e1.block).await.unwrap();
    drop(e1);
    events.next().unwrap().discard("not needed").await.unwrap();
    drop(events);
    assert_eq!(
        node.stats().in_flight,
        2,
        "3 and 4 are still unacknowledged"
    );
    drop(sub);
    bob.close().await.unwrap();

    let bob = node.client(1, fast_options()).await;
    let mut sub = bob.subscribe("manual/evt").await.unwrap();
    publish_n(&alice, &to, "manual/evt", [100]).await;
    assert_eq!(until_sentinel(&mut sub, 100).await, vec![3, 4]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_handlers_leave_the_event_unacked_and_it_comes_again() {
    let node = TestNode::start(2).await;
    let alice = node.client(0, fast_options()).await;
    let bob = node.client(1, fast_options()).await;
    let to = node.app(1).public_key.clone();

    let seen: Arc<Mutex<HashMap<i64, u32>>> = Arc::default();
    let (done_tx, mut done_rx) = tokio::sync::mpsc::unbounded_channel();
    let mut sub = bob.subscribe("fail/evt").await.unwrap();
    let counts = seen.clone();
    sub.on(move |event: Event| {
        let counts = counts.clone();
        let done = done_tx.clone();
        async move {
            let n = n_of(&event);
            let attempt = {
                let mut c = counts.lock().unwrap();
                let a = c.entry(n).or_default();
                *a += 1;
                *a
            };
            match (n, attempt) {
                (0, 1) => return Err("handler refused"),
                (1, 1) => panic!("handler panicked (on purpose)"),
                _ => {}
            }
            let _ = done.send(n);
            Ok(())
        }
    });
    publish_n(&alice, &to, "fail/evt", 0..3).await;
    let mut done = Vec::new();
    for _ in 0..3 {
        done.push(within("handled", done_rx.recv()).await.unwrap());
    }
    done.sort();
    assert_eq!(done, vec![0, 1, 2]);
    let counts = seen.lock().unwrap().clone();
    assert_eq!(counts[&0], 2, "Err: delivered again");
    assert_eq!(counts[&1], 2, "panic: delivered again");
    assert_eq!(counts[&2], 1);
    eventually("all acknowledged", || {
        let s = node.stats();
        s.ready == 0 && s.in_flight == 0 && s.deferred == 0
    })
    .await;
    assert!(
        done_rx.try_recv().is_err(),
        "nothing handled twice after success"
    );

    // `Event::fail` on a stream subscription does the same.
    let mut sub2 = bob.subscribe("fail/stream").await.unwrap();
    let ids = publish_n(&alice, &to, "fail/stream", [7]).await;
    let first = next(&mut sub2).await;
    assert_eq!(first.idem, ids[0]);
    first.fail();
    let again = next(&mut sub2).await;
    assert_eq!(again.idem, ids[0]);
    drop(again);
    eventually("acknowledged", || {
        let s = node.stats();
        s.ready == 0 && s.in_flight == 0 && s.deferred == 0
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn defer_comes_again_discard_never() {
    let node = TestNode::start(2).await;
    let alice = node.client(0, fast_options()).await;
    let bob = node.client(1, fast_options()).await;
    let to = node.app(1).public_key.clone();
    let mut sub = bob.subscribe("defer/evt").await.unwrap();

    let ids = publish_n(&alice, &to, "defer/evt", [1, 2]).await;
    let one = next(&mut sub).await;
    let two = next(&mut sub).await;
    assert_eq!((n_of(&one), n_of(&two)), (1, 2));
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let due = one.defer(Duration::from_secs(1), "later").await.unwrap();
    assert!(due >= now_ms + 1000 - 50, "due {due} vs now {now_ms}");
    two.discard("never").await.unwrap();
    assert_eq!(node.stats().deferred, 1);

    // The deferred one comes back; the discarded one does not (the sentinel, published
    // after the deferred one is back, is the next event).
    let back = next(&mut sub).await;
    assert_eq!(back.idem, ids[0]);
    assert_eq!(n_of(&back), 1);
    // Deferred again through the subscription, then acked when it comes back.
    sub.defer(&back.idem, Duration::from_secs(1), "once more")
        .await
        .unwrap();
    drop(back);
    let back = next(&mut sub).await;
    assert_eq!(back.idem, ids[0]);
    drop(back);
    publish_n(&alice, &to, "defer/evt", [100]).await;
    assert_eq!(until_sentinel(&mut sub, 100).await, Vec::<i64>::new());
    // Discard through the subscription.
    let ids = publish_n(&alice, &to, "defer/evt", [3]).await;
    let three = next(&mut sub).await;
    sub.discard(&three.idem, "no").await.unwrap();
    drop(three);
    publish_n(&alice, &to, "defer/evt", [101]).await;
    assert_eq!(until_sentinel(&mut sub, 101).await, Vec::<i64>::new());
    eventually("nothing left", || {
        let s = node.stats();
        s.ready == 0 && s.in_flight == 0 && s.deferred == 0
    })
    .await;
    // A discarded event stays replayable.
    assert_eq!(sub.replay(&ids[0]).await.unwrap(), json!({"n": 3}));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pause_holds_resume_releases_in_order_and_replay_after_ack() {
    let node = TestNode::start(2).await;
    let alice = node.client(0, fast_options()).await;
    let bob = node.client(1, fast_options()).await;
    let to = node.app(1).public_key.clone();
    let mut sub = bob.subscribe("pause/evt").await.unwrap();

    sub.pause("maintenance").await.unwrap();
    let ids = publish_n(&alice, &to, "pause/evt", 0..4).await;
    // Held on the node.
    assert_eq!(node.stats().ready, 4);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        sub.next().now_or_never().is_none(),
        "delivered while paused"
    );
    assert_eq!(node.stats().ready, 4);

    sub.resume().await.unwrap();
    let mut got = Vec::new();
    for _ in 0..4 {
        let event = next(&mut sub).await;
        got.push((n_of(&event), event.idem.clone()));
    }
    assert_eq!(
        got,
        (0..4).zip(ids.iter().cloned()).collect::<Vec<_>>(),
        "released in order"
    );
    eventually("acknowledged", || {
        let s = node.stats();
        s.ready == 0 && s.in_flight == 0
    })
    .await;

    // Replay after ack returns the payload.
    for (n, id) in got {
        assert_eq!(sub.replay(&id).await.unwrap(), json!({"n": n}));
    }

    // Unsubscribe: nothing more is delivered to this client; a new subscription gets it.
    sub.unsubscribe().await.unwrap();
    eventually("stream closed on the node", || {
        node.stats().subscriptions == 0
    })
    .await;
    publish_n(&alice, &to, "pause/evt", [9]).await;
    assert_eq!(node.stats().ready, 1);
    let mut sub = bob.subscribe("pause/evt").await.unwrap();
    assert_eq!(n_of(&next(&mut sub).await), 9);
}

/// A subscription nobody reads holds at most `subscription_buffer` events in the client;
/// the rest stays with the node (and HTTP/2 flow control), and nothing is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unread_subscription_buffers_at_most_subscription_buffer_events() {
    const BUFFER: usize = 3;
    const TOTAL: i64 = 40;
    let node = TestNode::start_with(2, Refuse::Nothing, |c| c.max_in_flight = 1000).await;
    let alice = node.client(0, fast_options()).await;
    let to = node.app(1).public_key.clone();
    publish_n(&alice, &to, "slow/evt", 0..TOTAL).await;

    let bob = node
        .client(1, fast_options().subscription_buffer(BUFFER))
        .await;
    let mut sub = bob.subscribe("slow/evt").await.unwrap();
    // The node hands everything to the stream (its own window is large) ...
    eventually("the node to hand out every event", || {
        node.stats().in_flight == TOTAL as usize
    })
    .await;
    // ... and gives the client time to read whatever it would read.
    tokio::time::sleep(Duration::from_millis(500)).await;
    // Closing the client cuts the stream: what the subscription yields now is exactly
    // what the client had buffered.
    bob.close().await.unwrap();
    let mut buffered = Vec::new();
    while let Some(Some(event)) = sub.next().now_or_never() {
        buffered.push(n_of(&event));
    }
    assert!(
        !buffered.is_empty() && buffered.len() <= BUFFER,
        "buffered {} events with subscription_buffer = {BUFFER}: {buffered:?}",
        buffered.len()
    );
    assert_eq!(buffered, (0..buffered.len() as i64).collect::<Vec<_>>());
    drop(sub);

    // Nothing was acknowledged: a new session gets all of them, in order.
    let bob = node.client(1, fast_options()).await;
    let mut sub = bob.subscribe("slow/evt").await.unwrap();
    for want in 0..TOTAL {
        assert_eq!(n_of(&next(&mut sub).await), want);
    }
}
