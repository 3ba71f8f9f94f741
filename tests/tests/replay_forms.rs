//! Our Rust client's replay against a node answering in either form (issue 12): our node
//! answers the stream-message JSON to every user-agent but `grpc-python`, and the bare
//! envelope to `grpc-python`. The client (tonic: `tonic/…`, not `grpc-python`) gets the
//! JSON form from a plain node, and the bare envelope from a node that sees every request
//! as `grpc-python`; both replays decrypt to the published payload.

use std::time::Duration;

use ensync_tests::node::{TestNode, fast_options, within};
use ensync_tokio::SubscribeOptions;
use futures::StreamExt;
use serde_json::json;

/// What the node answers a replay on the wire (through tonic, as our client asks it).
async fn raw_replay_data(node: &TestNode, app: usize, idem: &str) -> String {
    use ensync_node::rpc::en_sync_service_client::EnSyncServiceClient;
    use ensync_proto::wire;
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", node.addr()))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut c = EnSyncServiceClient::new(channel);
    let cid = c
        .connect(wire::ConnectRequest {
            access_key: node.app(app).access_key.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .client_id;
    let r = c
        .replay_message(wire::ReplayRequest {
            client_id: cid,
            event_idem: idem.to_owned(),
            event_name: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(r.success, "{}", r.message);
    r.event_data
}

async fn replay_through(node: TestNode, form: &str) {
    let publisher = node.client(0, fast_options()).await;
    let receiver = node.client(1, fast_options()).await;
    let mut sub = receiver
        .subscribe_with("replay/forms", SubscribeOptions::default().auto_ack(false))
        .await
        .expect("subscribe");
    let payload = json!({"form": form, "n": [1, 2, 3]});
    let ids = publisher
        .publish("replay/forms", &[node.app(1).public_key.as_str()], &payload)
        .await
        .expect("publish");
    let ev = within("delivery", sub.next()).await.expect("an event");
    assert_eq!(ev.idem, ids[0]);
    // Before and after the ack.
    let replayed = within("replay", sub.replay(&ids[0])).await.expect("replay");
    assert_eq!(replayed, payload, "{form}");
    within("ack", sub.ack(&ev.idem, ev.block))
        .await
        .expect("ack");
    let replayed = within("replay", sub.replay(&ids[0])).await.expect("replay");
    assert_eq!(replayed, payload, "{form}");
    // The answer on the wire is in the form this node sends.
    let data = raw_replay_data(&node, 1, &ids[0]).await;
    assert_eq!(
        data.starts_with('{'),
        form == "stream-message JSON",
        "{form}: {data}"
    );
    tokio::time::sleep(Duration::from_millis(10)).await;
    publisher.close().await.expect("close");
    receiver.close().await.expect("close");
}

#[tokio::test]
async fn replay_of_a_node_answering_the_stream_message_json() {
    replay_through(TestNode::start(2).await, "stream-message JSON").await;
}

#[tokio::test]
async fn replay_of_a_node_answering_the_bare_envelope() {
    let node = TestNode::start_seeing_user_agent(2, "grpc-python/1.85.3 grpc-c/50.0.0").await;
    replay_through(node, "bare envelope").await;
}
