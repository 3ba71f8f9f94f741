//! Shared set-up of the examples: connect to the node named by the environment, or
//! start an embedded node with generated apps when there is none.
//!
//! - `ENSYNC_URL`: the node (e.g. `node.ensync.cloud`, `grpc://localhost:50051`);
//! - `ENSYNC_APP_KEY`, `ENSYNC_SECRET_KEY`: this app's access key and secret key;
//! - `ENSYNC_RECIPIENT`: the public key to publish to (default: this app itself);
//! - `ENSYNC_PEER_APP_KEY`, `ENSYNC_PEER_SECRET_KEY`: a second app, for the examples
//!   where two apps talk (default: this app again, on a second connection).
//!
//! A `.env` file is not read: export the variables, as with the seed's dotenv.
#![allow(dead_code)]

use std::future::Future;
use std::time::Duration;

use ensync_tokio::{Client, ClientOptions, EnSyncEngine, EngineOptions};

/// The examples' error type: anything, printed by `main` on the way out.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A second app: what a client needs to connect as it.
pub struct Peer {
    /// Its access key.
    pub app_key: String,
    /// Its secret key.
    pub secret_key: String,
}

/// Where to connect and as whom.
pub struct Setup {
    /// The engine for the node.
    pub engine: EnSyncEngine,
    /// This app's access key.
    pub app_key: String,
    /// This app's secret key.
    pub secret_key: String,
    /// Who to publish to (`None`: this app itself, known once connected).
    pub recipient: Option<String>,
    /// A second app (the embedded node's second app, or `ENSYNC_PEER_*`).
    pub peer: Option<Peer>,
    /// The embedded node, if one was started; it stops when this is dropped.
    _node: Option<(ensync_node::RunningNode, ensync_node::dev::DevSetup)>,
}

impl Setup {
    /// The client options for this app.
    pub fn client_options(&self) -> ClientOptions {
        ClientOptions::default().app_secret_key(self.secret_key.clone())
    }

    /// Connects as this app.
    pub async fn client(&self) -> ensync_tokio::Result<Client> {
        self.engine
            .create_client(&self.app_key, self.client_options())
            .await
    }

    /// Connects as the second app, or as this app again when there is no second app.
    pub async fn peer_client(&self) -> ensync_tokio::Result<Client> {
        match &self.peer {
            Some(peer) => {
                self.engine
                    .create_client(
                        &peer.app_key,
                        ClientOptions::default().app_secret_key(peer.secret_key.clone()),
                    )
                    .await
            }
            None => self.client().await,
        }
    }
}

/// Waits for `future` at most `secs` seconds; on time-out fails saying what was awaited.
pub async fn within<T>(
    secs: u64,
    what: &str,
    future: impl Future<Output = T>,
) -> Result<T, BoxError> {
    tokio::time::timeout(Duration::from_secs(secs), future)
        .await
        .map_err(|_| format!("timed out after {secs} s waiting for {what}").into())
}

/// Reads the environment, or starts an embedded node with two generated apps.
pub async fn setup() -> Result<Setup, BoxError> {
    if let Ok(url) = std::env::var("ENSYNC_URL") {
        let app_key = std::env::var("ENSYNC_APP_KEY")
            .map_err(|_| "ENSYNC_URL is set, so ENSYNC_APP_KEY must be too")?;
        let secret_key = std::env::var("ENSYNC_SECRET_KEY")
            .map_err(|_| "ENSYNC_URL is set, so ENSYNC_SECRET_KEY must be too")?;
        let peer = match (
            std::env::var("ENSYNC_PEER_APP_KEY"),
            std::env::var("ENSYNC_PEER_SECRET_KEY"),
        ) {
            (Ok(app_key), Ok(secret_key)) => Some(Peer {
                app_key,
                secret_key,
            }),
            _ => None,
        };
        return Ok(Setup {
            engine: EnSyncEngine::new(&url)?,
            app_key,
            secret_key,
            recipient: std::env::var("ENSYNC_RECIPIENT").ok(),
            peer,
            _node: None,
        });
    }
    let dev = ensync_node::dev::DevSetup::generate(2)?;
    let node = ensync_node::Node::start(dev.config.clone()).await?;
    let url = format!("grpc://{}", node.grpc_addr());
    println!("(ENSYNC_URL is not set: started an embedded EnSync node at {url})");
    let me = &dev.apps[0];
    let peer = &dev.apps[1];
    // Short reconnect delays suit a local node.
    let options = EngineOptions::default().reconnect_interval(Duration::from_millis(500));
    Ok(Setup {
        engine: EnSyncEngine::with_options(&url, options)?,
        app_key: me.access_key.clone(),
        secret_key: me.secret_key().to_owned(),
        recipient: None,
        peer: Some(Peer {
            app_key: peer.access_key.clone(),
            secret_key: peer.secret_key().to_owned(),
        }),
        _node: Some((node, dev)),
    })
}
