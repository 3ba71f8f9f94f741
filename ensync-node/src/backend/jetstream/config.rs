//! The `[jetstream]` table of the node configuration.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::config::{ConfigError, SecretString, field_err};

/// Default stream name (and subject prefix) of the JetStream backend.
pub const DEFAULT_JETSTREAM_STREAM: &str = "ENSYNC";
/// Default number of replicas of the stream and of every queue's consumer.
pub const DEFAULT_JETSTREAM_REPLICAS: usize = 3;
/// Default time JetStream waits for the ack of an event handed to a node before it
/// delivers it again (to any node), in ms. A live node extends it for what it holds.
pub const DEFAULT_JETSTREAM_ACK_WAIT_MS: u64 = 30_000;
/// Smallest accepted `ack_wait_ms`.
pub const MIN_JETSTREAM_ACK_WAIT_MS: u64 = 1_000;
/// Largest accepted `ack_wait_ms` (one hour).
pub const MAX_JETSTREAM_ACK_WAIT_MS: u64 = 3_600_000;

/// How a node reaches the NATS JetStream cluster it shares with the other nodes of a
/// deployment (`store = "jetstream"`). Every node of a deployment uses the same table.
///
/// ```toml
/// store = "jetstream"
/// [jetstream]
/// servers = ["nats://10.0.0.1:4222", "nats://10.0.0.2:4222", "nats://10.0.0.3:4222"]
/// stream = "ENSYNC"        # optional
/// replicas = 3             # optional
/// ack_wait_ms = 30000      # optional
/// credentials = "/etc/ensync/node.creds"   # or user/password, or token
/// tls_ca = "/etc/ensync/nats-ca.pem"       # optional, also tls_cert/tls_key, tls_required
/// ```
///
/// `Debug` shows `password` and `token` as `<redacted>`; they are zeroized on drop.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct JetStreamConfig {
    /// Seed servers, `nats://host:port` (or `tls://host:port`, which requires TLS). The
    /// client learns the rest of the cluster from them and reconnects to any.
    pub servers: Vec<String>,
    /// The stream holding every queue (also the subjects' first token); letters,
    /// digits, `-` and `_`, at most 64. Created when missing, with the key-value bucket
    /// `<stream>_RECORDS` beside it (the admin API's access keys and events).
    pub stream: String,
    /// Replicas of the stream, of its records bucket and of each queue's consumer
    /// (1 ..= 5). Use 3 (the default) with `sync_interval: always` in the servers'
    /// `jetstream` block: an event is answered as stored once a majority has it on disk.
    pub replicas: usize,
    /// How long JetStream waits for a node to settle an event it handed out before it
    /// hands it to another (a node that died), in ms (1 000 ..= 3 600 000). Live nodes
    /// report progress on what they hold, so a slow app is not affected.
    pub ack_wait_ms: u64,
    /// A NATS credentials file (JWT and NKey seed), as `nsc` writes it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub credentials: Option<PathBuf>,
    /// User name (with `password`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// Password of `user`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub password: Option<SecretString>,
    /// An authentication token.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token: Option<SecretString>,
    /// PEM file of the CA certificates to trust for the servers (else the system's).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_ca: Option<PathBuf>,
    /// PEM client certificate chain (with `tls_key`), for servers that verify clients.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of `tls_cert`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_key: Option<PathBuf>,
    /// Refuse servers that do not speak TLS (implied by `tls://` servers, `tls_ca` and
    /// `tls_cert`).
    pub tls_required: bool,
}

impl Default for JetStreamConfig {
    fn default() -> Self {
        Self {
            servers: Vec::new(),
            stream: DEFAULT_JETSTREAM_STREAM.to_owned(),
            replicas: DEFAULT_JETSTREAM_REPLICAS,
            ack_wait_ms: DEFAULT_JETSTREAM_ACK_WAIT_MS,
            credentials: None,
            user: None,
            password: None,
            token: None,
            tls_ca: None,
            tls_cert: None,
            tls_key: None,
            tls_required: false,
        }
    }
}

/// Checks one `servers` entry: `nats://host:port` or `tls://host:port`.
fn check_server(url: &str) -> Result<(), String> {
    let rest = url
        .strip_prefix("nats://")
        .or_else(|| url.strip_prefix("tls://"))
        .ok_or_else(|| format!("{url:?} must start with nats:// or tls://"))?;
    if rest.contains('@') {
        return Err(format!(
            "{url:?}: put credentials in user/password, token or credentials, not in the URL"
        ));
    }
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    let (host, port) = if let Some(v6) = rest.strip_prefix('[') {
        let (host, after) = v6
            .split_once(']')
            .ok_or_else(|| format!("{url:?}: unclosed [ in the host"))?;
        let port = after
            .strip_prefix(':')
            .ok_or_else(|| format!("{url:?} needs a port (nats://host:port)"))?;
        (host, port)
    } else {
        rest.rsplit_once(':')
            .ok_or_else(|| format!("{url:?} needs a port (nats://host:port)"))?
    };
    if host.is_empty() || host.contains(['/', '?', '#', ' ']) {
        return Err(format!("{url:?}: bad host {host:?}"));
    }
    match port.parse::<u16>() {
        Ok(p) if p > 0 => Ok(()),
        _ => Err(format!("{url:?}: bad port {port:?}")),
    }
}

impl JetStreamConfig {
    /// A table for these servers, everything else at its default.
    pub fn new<S: Into<String>>(servers: impl IntoIterator<Item = S>) -> Self {
        Self {
            servers: servers.into_iter().map(Into::into).collect(),
            ..Self::default()
        }
    }

    /// Whether the connection must use TLS.
    pub fn tls(&self) -> bool {
        self.tls_required
            || self.tls_ca.is_some()
            || self.tls_cert.is_some()
            || self.servers.iter().any(|s| s.starts_with("tls://"))
    }

    /// Checks every field; the error names the first bad one (`jetstream.<field>`).
    pub fn validate(&self) -> Result<(), ConfigError> {
        let at = |f: &str| format!("jetstream.{f}");
        if self.servers.is_empty() {
            return Err(field_err(
                at("servers"),
                "must list at least one nats://host:port",
            ));
        }
        for (i, s) in self.servers.iter().enumerate() {
            check_server(s).map_err(|e| field_err(format!("jetstream.servers[{i}]"), e))?;
        }
        let name_ok = !self.stream.is_empty()
            && self.stream.len() <= 64
            && self
                .stream
                .bytes()
                .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_');
        if !name_ok {
            return Err(field_err(
                at("stream"),
                format!("{:?}: 1 to 64 letters, digits, '-' or '_'", self.stream),
            ));
        }
        if !(1..=5).contains(&self.replicas) {
            return Err(field_err(
                at("replicas"),
                format!("{} is not in 1 ..= 5", self.replicas),
            ));
        }
        if !(MIN_JETSTREAM_ACK_WAIT_MS..=MAX_JETSTREAM_ACK_WAIT_MS).contains(&self.ack_wait_ms) {
            return Err(field_err(
                at("ack_wait_ms"),
                format!(
                    "{} is not in {MIN_JETSTREAM_ACK_WAIT_MS} ..= {MAX_JETSTREAM_ACK_WAIT_MS}",
                    self.ack_wait_ms
                ),
            ));
        }
        match (&self.user, &self.password) {
            (Some(u), Some(_)) if u.is_empty() => {
                return Err(field_err(at("user"), "must not be empty"));
            }
            (Some(_), None) => {
                return Err(field_err(at("password"), "user is set but password is not"));
            }
            (None, Some(_)) => {
                return Err(field_err(at("user"), "password is set but user is not"));
            }
            _ => {}
        }
        if self.token.as_ref().is_some_and(|t| t.expose().is_empty()) {
            return Err(field_err(at("token"), "must not be empty"));
        }
        let methods = [
            self.credentials.is_some(),
            self.user.is_some(),
            self.token.is_some(),
        ];
        if methods.iter().filter(|m| **m).count() > 1 {
            let field = if self.token.is_some() {
                "token"
            } else {
                "user"
            };
            return Err(field_err(
                at(field),
                "set only one of credentials, user/password and token",
            ));
        }
        match (&self.tls_cert, &self.tls_key) {
            (Some(_), None) => {
                return Err(field_err(
                    at("tls_key"),
                    "tls_cert is set but tls_key is not",
                ));
            }
            (None, Some(_)) => {
                return Err(field_err(
                    at("tls_cert"),
                    "tls_key is set but tls_cert is not",
                ));
            }
            _ => {}
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::NodeConfig;

    fn err(text: &str) -> String {
        NodeConfig::from_toml_str(text).unwrap_err().to_string()
    }

    #[test]
    fn a_full_table_parses_and_round_trips() {
        let c = NodeConfig::from_toml_str(
            r#"
store = "jetstream"
[jetstream]
servers = ["nats://127.0.0.1:4222", "tls://[::1]:4223"]
stream = "ORDERS_1"
replicas = 5
ack_wait_ms = 2000
user = "node"
password = "hunter2"
tls_ca = "/etc/ca.pem"
tls_required = true
"#,
        )
        .unwrap();
        assert_eq!(c.store, crate::config::StoreKind::Jetstream);
        let js = c.jetstream.clone().unwrap();
        assert_eq!(js.servers.len(), 2);
        assert_eq!(js.stream, "ORDERS_1");
        assert_eq!((js.replicas, js.ack_wait_ms), (5, 2000));
        assert!(js.tls());
        let debug = format!("{c:?}");
        assert!(!debug.contains("hunter2"), "{debug}");
        let back = NodeConfig::from_toml_str(&c.to_toml_string().unwrap()).unwrap();
        assert_eq!(back.jetstream, c.jetstream);
        assert_eq!(back.store, c.store);
    }

    #[test]
    fn the_example_config_is_valid() {
        let c = NodeConfig::from_toml_str(include_str!("../../../config/jetstream.example.toml"))
            .unwrap();
        assert_eq!(c.store, crate::config::StoreKind::Jetstream);
        let js = c.jetstream.as_ref().unwrap();
        assert_eq!((js.replicas, js.servers.len()), (3, 3));
        assert_eq!(c.apps.len(), 2);
    }

    #[test]
    fn defaults_and_the_embedded_default() {
        let c = NodeConfig::from_toml_str("").unwrap();
        assert_eq!(c.store, crate::config::StoreKind::Embedded);
        assert!(c.jetstream.is_none());
        let c = NodeConfig::from_toml_str(
            "store = \"jetstream\"\n[jetstream]\nservers = [\"nats://h:4222\"]\n",
        )
        .unwrap();
        let js = c.jetstream.unwrap();
        assert_eq!(js.stream, DEFAULT_JETSTREAM_STREAM);
        assert_eq!(js.replicas, DEFAULT_JETSTREAM_REPLICAS);
        assert_eq!(js.ack_wait_ms, DEFAULT_JETSTREAM_ACK_WAIT_MS);
        assert!(!js.tls());
    }

    #[test]
    fn bad_values_name_the_field() {
        let base = "store = \"jetstream\"\n[jetstream]\n";
        for (text, field) in [
            ("store = \"redis\"", "store"),
            ("store = \"jetstream\"", "jetstream"),
            ("[jetstream]\nservers = [\"nats://h:1\"]", "jetstream"),
            (
                "store = \"jetstream\"\n[jetstream]\nservers = []",
                "jetstream.servers",
            ),
            ("store = \"jetstream\"\n[jetstream]\nbogus = 1", "bogus"),
        ] {
            let e = err(text);
            assert!(e.contains(field), "{text:?}: {e}");
        }
        for (body, field) in [
            ("servers = [\"http://h:4222\"]", "jetstream.servers[0]"),
            (
                "servers = [\"nats://h:1\", \"nats://h\"]",
                "jetstream.servers[1]",
            ),
            ("servers = [\"nats://h:0\"]", "jetstream.servers[0]"),
            ("servers = [\"nats://u:p@h:4222\"]", "jetstream.servers[0]"),
            ("servers = [\"nats://:4222\"]", "jetstream.servers[0]"),
            (
                "servers = [\"nats://h:1\"]\nstream = \"a.b\"",
                "jetstream.stream",
            ),
            (
                "servers = [\"nats://h:1\"]\nstream = \"\"",
                "jetstream.stream",
            ),
            (
                "servers = [\"nats://h:1\"]\nreplicas = 0",
                "jetstream.replicas",
            ),
            (
                "servers = [\"nats://h:1\"]\nreplicas = 6",
                "jetstream.replicas",
            ),
            (
                "servers = [\"nats://h:1\"]\nack_wait_ms = 999",
                "jetstream.ack_wait_ms",
            ),
            (
                "servers = [\"nats://h:1\"]\nuser = \"u\"",
                "jetstream.password",
            ),
            (
                "servers = [\"nats://h:1\"]\npassword = \"p\"",
                "jetstream.user",
            ),
            (
                "servers = [\"nats://h:1\"]\ntoken = \"t\"\nuser = \"u\"\npassword = \"p\"",
                "jetstream.token",
            ),
            (
                "servers = [\"nats://h:1\"]\ncredentials = \"/c\"\nuser = \"u\"\npassword = \"p\"",
                "jetstream.user",
            ),
            (
                "servers = [\"nats://h:1\"]\ntls_cert = \"/c\"",
                "jetstream.tls_key",
            ),
            (
                "servers = [\"nats://h:1\"]\ntls_key = \"/k\"",
                "jetstream.tls_cert",
            ),
            ("servers = [\"nats://h:1\"]\nreplicas = \"3\"", "replicas"),
        ] {
            let e = err(&format!("{base}{body}"));
            assert!(e.contains(field), "{body:?}: {e}");
        }
    }
}
