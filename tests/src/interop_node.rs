//! The node for the interop tests: a [`crate::node::TestNode`] (in-process, on
//! 127.0.0.1:0, generated apps that may send and receive every event name) served by
//! a small tokio runtime of its own, so that the interop harness itself can stay
//! synchronous (it drives Python processes from plain threads).

use ensync_proto::keys::SecretKey;
use rand_core::OsRng;

use crate::TestApp;
use crate::node::TestNode;

/// A node serving in this process for the interop tests. Stop it with
/// [`InteropNode::shutdown`] (dropping it stops it too, without waiting).
pub struct InteropNode {
    /// `grpc://127.0.0.1:<port>`.
    pub url: String,
    /// The generated apps, named `a`, `b`, `c`, ... for the driver steps.
    pub apps: Vec<TestApp>,
    node: Option<TestNode>,
    runtime: tokio::runtime::Runtime,
}

impl std::fmt::Debug for InteropNode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InteropNode")
            .field("url", &self.url)
            .finish_non_exhaustive()
    }
}

impl InteropNode {
    /// Starts a node with `n_apps` generated apps (at most 26). Panics when it cannot
    /// start: every test using it needs it.
    pub fn start(n_apps: usize) -> Self {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("ensync-interop-node")
            .enable_all()
            .build()
            .expect("tokio runtime for the node");
        let node = runtime.block_on(TestNode::start(n_apps));
        let apps = node
            .setup
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
        InteropNode {
            url: node.url(),
            apps,
            node: Some(node),
            runtime,
        }
    }

    /// The runtime the node runs on (for async test code that talks to it, such as
    /// our own Rust client).
    pub fn runtime(&self) -> &tokio::runtime::Runtime {
        &self.runtime
    }

    /// Stops the node and waits until it has stopped.
    pub fn shutdown(mut self) {
        if let Some(mut node) = self.node.take() {
            self.runtime.block_on(async move {
                node.stop().await;
                drop(node);
            });
        }
    }
}

impl Drop for InteropNode {
    fn drop(&mut self) {
        if let Some(node) = self.node.take() {
            // Dropped inside the runtime: the node's drop aborts its tasks.
            let _guard = self.runtime.enter();
            drop(node);
        }
    }
}

/// The public key of a fresh key pair that no app of any test node has.
pub fn unregistered_public_key() -> String {
    SecretKey::generate(&mut OsRng).public_key().to_base64()
}
