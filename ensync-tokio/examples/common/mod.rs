//! Shared set-up of the examples: connect to the node named by the environment, or
//! start an embedded node with generated apps when there is none.
//!
//! - `ENSYNC_URL`: the node (e.g. `node.ensync.cloud`, `grpc://localhost:50051`);
//! - `ENSYNC_APP_KEY`, `ENSYNC_SECRET_KEY`: this app's access key and secret key;
//! - `ENSYNC_RECIPIENT`: the public key to publish to (default: this app itself).
//!
//! A `.env` file is not read: export the variables, as with the seed's dotenv.
#![allow(dead_code)]

use ensync_tokio::{ClientOptions, EnSyncEngine, EngineOptions};

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
    /// A second app (only with the embedded node): access key and secret key.
    pub peer: Option<(String, String)>,
    /// The embedded node, if one was started; it stops when this is dropped.
    _node: Option<(ensync_node::RunningNode, ensync_node::dev::DevSetup)>,
}

impl Setup {
    /// The client options for this app.
    pub fn client_options(&self) -> ClientOptions {
        ClientOptions::default().app_secret_key(self.secret_key.clone())
    }
}

/// Reads the environment, or starts an embedded node with two generated apps.
pub async fn setup() -> Result<Setup, Box<dyn std::error::Error>> {
    if let Ok(url) = std::env::var("ENSYNC_URL") {
        let app_key = std::env::var("ENSYNC_APP_KEY")
            .map_err(|_| "ENSYNC_URL is set, so ENSYNC_APP_KEY must be too")?;
        let secret_key = std::env::var("ENSYNC_SECRET_KEY")
            .map_err(|_| "ENSYNC_URL is set, so ENSYNC_SECRET_KEY must be too")?;
        return Ok(Setup {
            engine: EnSyncEngine::new(&url)?,
            app_key,
            secret_key,
            recipient: std::env::var("ENSYNC_RECIPIENT").ok(),
            peer: None,
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
    let options =
        EngineOptions::default().reconnect_interval(std::time::Duration::from_millis(500));
    Ok(Setup {
        engine: EnSyncEngine::with_options(&url, options)?,
        app_key: me.access_key.clone(),
        secret_key: me.secret_key().to_owned(),
        recipient: None,
        peer: Some((peer.access_key.clone(), peer.secret_key().to_owned())),
        _node: Some((node, dev)),
    })
}
