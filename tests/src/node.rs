//! Our node, started in-process for a test: generated apps (every app may send and
//! receive every event name), a temporary data directory, 127.0.0.1 on a free port,
//! served by its own small tokio runtime so that tests can stay synchronous.

use ensync_node::dev::DevSetup;
use ensync_node::{Node, RunningNode};
use ensync_proto::keys::SecretKey;
use rand_core::OsRng;

use crate::TestApp;

/// A node serving in this process. Stop it with [`TestNode::shutdown`] (dropping it
/// stops it too, without waiting).
pub struct TestNode {
    /// `grpc://127.0.0.1:<port>`.
    pub url: String,
    /// The generated apps, named `a`, `b`, `c`, ... for the driver steps.
    pub apps: Vec<TestApp>,
    node: Option<RunningNode>,
    runtime: tokio::runtime::Runtime,
    _setup: DevSetup,
}

impl std::fmt::Debug for TestNode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestNode")
            .field("url", &self.url)
            .finish_non_exhaustive()
    }
}

impl TestNode {
    /// The runtime the node runs on (for async test code that talks to it).
    pub fn runtime(&self) -> &tokio::runtime::Runtime {
        &self.runtime
    }

    /// Stops the node and waits until it has stopped.
    pub fn shutdown(mut self) {
        if let Some(node) = self.node.take() {
            self.runtime.block_on(node.shutdown());
        }
    }
}

/// Starts a node with `n_apps` generated apps (at most 26). Panics when it cannot
/// start: every test using it needs it.
pub fn start(n_apps: usize) -> TestNode {
    let setup = DevSetup::generate(n_apps).expect("generate a dev node configuration");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("ensync-test-node")
        .enable_all()
        .build()
        .expect("tokio runtime for the node");
    let node = runtime
        .block_on(Node::start(setup.config.clone()))
        .expect("start the node");
    let url = format!("grpc://{}", node.grpc_addr());
    let apps = setup
        .apps
        .iter()
        .zip(b'a'..=b'z')
        .map(|(app, letter)| TestApp {
            name: char::from(letter).to_string(),
            access_key: app.access_key.clone(),
            secret_key: app.secret_key().to_string(),
            public_key: app.public_key.clone(),
        })
        .collect();
    TestNode {
        url,
        apps,
        node: Some(node),
        runtime,
        _setup: setup,
    }
}

/// The public key of a fresh key pair that no app of any test node has.
pub fn unregistered_public_key() -> String {
    SecretKey::generate(&mut OsRng).public_key().to_base64()
}
