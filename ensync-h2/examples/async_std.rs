//! The seed README's quick start on **async-std**, with no tokio runtime in the client:
//! create a client, publish, subscribe, receive one decrypted event, close.
//!
//! ```text
//! cargo run -p ensync-h2 --example async_std
//! ```
//!
//! The client side runs in `async_std::task::block_on`; `ensync-h2` gets async-std's
//! spawner, timer and TCP connector (wrapped with `tokio_util::compat` into the IO traits
//! `h2` uses). No tokio runtime is started for it.
//!
//! With `ENSYNC_URL`, `ENSYNC_APP_KEY` and `ENSYNC_SECRET_KEY` set, it talks to that node
//! and nothing else runs. Without them it needs a node to talk to, and the EnSync node of
//! this workspace (`ensync-node`) is built on tokio + tonic: it is started on a thread of
//! its own with its own tokio runtime, clearly apart from the client. That thread is the
//! node's, not the client's; the client would run the same against a remote node.

use std::time::Duration;

use ensync_h2::{ClientOptions, EnSyncEngine, EngineOptions, Runtime};
use futures::StreamExt;
use serde::Deserialize;
use tokio_util::compat::FuturesAsyncReadCompatExt;

#[derive(Debug, Deserialize)]
struct OrderUpdate {
    order_id: String,
    status: String,
}

/// ensync-h2 on async-std: its spawner, its timer, its TCP streams.
fn async_std_runtime() -> Runtime {
    Runtime::new(
        |task| {
            async_std::task::spawn(task);
        },
        async_std::task::sleep,
        |authority: String| async move {
            let stream = async_std::net::TcpStream::connect(authority).await?;
            stream.set_nodelay(true)?;
            Ok(stream.compat())
        },
    )
}

/// The embedded node: its own thread, its own tokio runtime. Stops when dropped.
struct EmbeddedNode {
    stop: Option<futures::channel::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl EmbeddedNode {
    fn start(
        config: ensync_node::NodeConfig,
    ) -> Result<(Self, std::net::SocketAddr), Box<dyn std::error::Error>> {
        let (addr_tx, addr_rx) = std::sync::mpsc::channel();
        let (stop, stopped) = futures::channel::oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("ensync-node".into())
            .spawn(move || {
                // The `tokio` crate is named `tokio_io` in this package (ensync-h2 uses
                // it for h2's IO traits only); here it runs the *node*.
                let runtime = match tokio_io::runtime::Builder::new_multi_thread()
                    .worker_threads(1)
                    .enable_all()
                    .build()
                {
                    Ok(runtime) => runtime,
                    Err(e) => {
                        let _ = addr_tx.send(Err(e.to_string()));
                        return;
                    }
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
            })?;
        let addr = addr_rx.recv()??;
        Ok((
            EmbeddedNode {
                stop: Some(stop),
                thread: Some(thread),
            },
            addr,
        ))
    }
}

impl Drop for EmbeddedNode {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // Where to connect and as whom: the environment, or an embedded node.
    let mut _node = None;
    let (url, app_key, secret_key) = match std::env::var("ENSYNC_URL") {
        Ok(url) => (
            url,
            std::env::var("ENSYNC_APP_KEY")?,
            std::env::var("ENSYNC_SECRET_KEY")?,
        ),
        Err(_) => {
            let dev = ensync_node::dev::DevSetup::generate(1)?;
            let (node, addr) = EmbeddedNode::start(dev.config.clone())?;
            println!(
                "(ENSYNC_URL is not set: started an embedded node at {addr} on its own thread)"
            );
            let app = &dev.apps[0];
            let keys = (app.access_key.clone(), app.secret_key().to_owned());
            _node = Some((node, dev));
            (format!("grpc://{addr}"), keys.0, keys.1)
        }
    };

    async_std::task::block_on(async move {
        // 1. Initialize engine and create client
        let options = EngineOptions::default().reconnect_interval(Duration::from_millis(500));
        let engine = EnSyncEngine::with_options(&url, options, async_std_runtime())?;
        let client = engine
            .create_client(
                &app_key,
                ClientOptions::default().app_secret_key(secret_key),
            )
            .await?;
        let app_id = client.public_key().to_owned();

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
        let next = subscription.next();
        let event = async_std::future::timeout(Duration::from_secs(30), next)
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
        Ok::<_, Box<dyn std::error::Error>>(())
    })
}
