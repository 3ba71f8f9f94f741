//! The seed README's quick start with the blocking client, from a plain `fn main()`:
//! create a client, publish, subscribe, receive one decrypted event, close.
//!
//! ```text
//! cargo run -p ensync-blocking --example blocking_quickstart
//! ```
//!
//! With `ENSYNC_URL`, `ENSYNC_APP_KEY` and `ENSYNC_SECRET_KEY` set it talks to that node.
//! Without them it starts the workspace's EnSync node (built on tokio) on a thread of its
//! own with its own tokio runtime; the client side has no async anywhere.

use std::time::Duration;

use ensync_blocking::{ClientOptions, Engine, EngineOptions};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut _node = None;
    let (url, app_key, secret_key) = match std::env::var("ENSYNC_URL") {
        Ok(url) => (
            url,
            std::env::var("ENSYNC_APP_KEY")?,
            std::env::var("ENSYNC_SECRET_KEY")?,
        ),
        Err(_) => {
            let (node, url, app) = embedded_node()?;
            println!("(ENSYNC_URL is not set: started an embedded node at {url})");
            _node = Some(node);
            (url, app.0, app.1)
        }
    };

    // 1. Initialize engine and create client
    let options = EngineOptions::default().reconnect_interval(Duration::from_millis(500));
    let engine = Engine::with_options(&url, options)?;
    let client = engine.create_client(
        &app_key,
        ClientOptions::default().app_secret_key(secret_key),
    )?;
    let app_id = client.public_key().to_owned();

    // 2. Publish an event
    let ids = client.publish(
        "orders/status/updated",
        &[&app_id],
        &serde_json::json!({"order_id": "order-123", "status": "completed"}),
    )?;
    println!("Published event {}", ids.join(","));

    // 3. Subscribe to events
    let mut subscription = client.subscribe("orders/status/updated")?;

    // 4. Handle incoming events (here: the first one, then stop)
    let event = subscription
        .recv_timeout(Duration::from_secs(30))
        .map_err(|e| format!("no event: {e}"))?;
    println!(
        "Received order update: {} is {} (event {} from {})",
        event.payload["order_id"].as_str().unwrap_or_default(),
        event.payload["status"].as_str().unwrap_or_default(),
        event.idem,
        event.sender
    );
    drop(event); // handled: acknowledged automatically

    // 5. Clean up
    subscription.unsubscribe()?;
    client.close()?;
    Ok(())
}

/// The node of this workspace on its own thread and tokio runtime; stops when the
/// returned guard is dropped.
#[allow(clippy::type_complexity)]
fn embedded_node() -> Result<(NodeGuard, String, (String, String)), Box<dyn std::error::Error>> {
    let dev = ensync_node::dev::DevSetup::generate(1)?;
    let app = (
        dev.apps[0].access_key.clone(),
        dev.apps[0].secret_key().to_owned(),
    );
    let (addr_tx, addr_rx) = std::sync::mpsc::channel();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let config = dev.config.clone();
    let thread = std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build();
        let Ok(runtime) = runtime else {
            let _ = addr_tx.send(Err("cannot start a tokio runtime".to_owned()));
            return;
        };
        runtime.block_on(async move {
            match ensync_node::Node::start(config).await {
                Ok(node) => {
                    let _ = addr_tx.send(Ok(node.grpc_addr()));
                    let _ = stopped.await;
                    node.shutdown().await;
                }
                Err(e) => {
                    let _ = addr_tx.send(Err(e.to_string()));
                }
            }
        });
    });
    let addr = addr_rx.recv()??;
    Ok((
        NodeGuard {
            stop: Some(stop),
            thread: Some(thread),
            _dev: dev,
        },
        format!("grpc://{addr}"),
        app,
    ))
}

struct NodeGuard {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
    _dev: ensync_node::dev::DevSetup,
}

impl Drop for NodeGuard {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
