//! A throw-away node configuration for examples, tests and people trying EnSync out:
//! apps with fresh key pairs and access keys, a temporary data directory, an ephemeral
//! port.

use zeroize::Zeroizing;

use crate::{AppConfig, NodeConfig, NodeError};

/// One generated app: what a client needs to connect as it.
#[derive(Clone)]
pub struct DevApp {
    /// Its name (`app1`, `app2`, ...).
    pub name: String,
    /// Its access key (for `Connect`).
    pub access_key: String,
    /// Its Ed25519 public key, standard base64 (its identity and recipient key).
    pub public_key: String,
    secret_key: Zeroizing<String>,
}

impl DevApp {
    /// Its Ed25519 secret key, standard base64 of 64 bytes (seed || public key): what a
    /// client needs to decrypt what it receives. The node itself never has it.
    pub fn secret_key(&self) -> &str {
        &self.secret_key
    }
}

impl std::fmt::Debug for DevApp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DevApp")
            .field("name", &self.name)
            .field("access_key", &"<redacted>")
            .field("public_key", &self.public_key)
            .field("secret_key", &"<redacted>")
            .finish()
    }
}

/// A generated configuration. The data directory lives as long as this value.
#[derive(Debug)]
pub struct DevSetup {
    /// The node configuration: the apps below (each may send and receive every event
    /// name), `grpc_listen = 127.0.0.1:0`, `ws_listen = 127.0.0.1:0`, the temporary data
    /// directory.
    pub config: NodeConfig,
    /// The apps, with their secrets.
    pub apps: Vec<DevApp>,
    dir: tempfile::TempDir,
}

impl DevSetup {
    /// Generates `n_apps` apps (named `app1` ..) with fresh key pairs and random access
    /// keys, and a config on a new temporary data directory.
    pub fn generate(n_apps: usize) -> Result<Self, NodeError> {
        let dir = tempfile::Builder::new()
            .prefix("ensync-dev-")
            .tempdir()
            .map_err(|e| NodeError::Io(format!("cannot create a temporary directory: {e}")))?;
        let mut config = NodeConfig::new(dir.path());
        config.grpc_listen = std::net::SocketAddr::from(([127, 0, 0, 1], 0));
        config.ws_listen = Some(std::net::SocketAddr::from(([127, 0, 0, 1], 0)));
        let mut apps = Vec::with_capacity(n_apps);
        for i in 1..=n_apps {
            let kp = crate::keys::generate();
            let app = DevApp {
                name: format!("app{i}"),
                access_key: crate::service::random_id(),
                public_key: kp.public_key,
                secret_key: kp.secret_key,
            };
            config.apps.push(
                AppConfig::new(&app.name, &app.access_key, &app.public_key)
                    .with_send(["*"])
                    .with_receive(["*"]),
            );
            apps.push(app);
        }
        Ok(Self { config, apps, dir })
    }

    /// The temporary data directory.
    pub fn data_dir(&self) -> &std::path::Path {
        self.dir.path()
    }
}
