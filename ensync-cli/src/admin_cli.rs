//! `ensync admin ...`: the node's admin API (EnSync's config-manager REST API) from a
//! terminal. SDK-free: HTTP or HTTPS (`--url https://...`; a node with a private CA or a
//! self-signed certificate: `--ca-cert FILE`). Prints the node's JSON answer; exit status
//! 2 for bad input (refused by the node with 400/401/404, or by the argument parser, or an
//! unreadable `--ca-cert`), 1 for other failures (node unreachable, TLS refused, 5xx).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Subcommand};
use serde_json::{Value, json};

/// Where the admin API is and the key it wants.
#[derive(Args)]
pub struct AdminArgs {
    /// The node's admin endpoint (its `admin_listen`): `http://HOST:PORT`, or
    /// `https://HOST:PORT` for a node with TLS.
    #[arg(
        long,
        env = "ENSYNC_ADMIN_URL",
        default_value = "http://127.0.0.1:8080"
    )]
    url: String,
    /// The node's `admin_key` (sent as X-ACCESS-KEY).
    #[arg(long, env = "ENSYNC_ADMIN_KEY", hide_env_values = true)]
    admin_key: String,
    /// Trust only this PEM CA certificate for `https://` (a node with a private CA or a
    /// self-signed certificate); without it, the web PKI roots.
    #[arg(long, env = "ENSYNC_ADMIN_CA_CERT", value_name = "FILE")]
    ca_cert: Option<PathBuf>,
    #[command(subcommand)]
    what: What,
}

#[derive(Subcommand)]
enum What {
    /// Access keys (apps).
    #[command(subcommand)]
    Keys(Keys),
    /// Event definitions.
    #[command(subcommand)]
    Events(Events),
}

#[derive(Subcommand)]
enum Keys {
    /// List the access keys.
    List {
        /// Only keys with this name.
        #[arg(long)]
        name: Option<String>,
        /// Only the key with this access key.
        #[arg(long)]
        access_key: Option<String>,
    },
    /// Make an access key with a generated key pair (printed once, with its secret key).
    Create {
        /// Its name.
        #[arg(long)]
        name: String,
        /// SERVICE or ACCOUNT.
        #[arg(long = "type", default_value = "SERVICE")]
        kind: String,
        /// Event-name patterns it may publish (repeat, or comma-separate).
        #[arg(long, value_delimiter = ',')]
        send: Vec<String>,
        /// Event-name patterns it may receive.
        #[arg(long, value_delimiter = ',')]
        receive: Vec<String>,
    },
    /// Show one access key by id.
    Get {
        /// Its id.
        id: String,
    },
    /// Delete an access key by id (its live sessions end).
    Delete {
        /// Its id.
        id: String,
    },
    /// Show the permissions of an access key, or replace them with --set.
    Permissions {
        /// The access key.
        access_key: String,
        /// Replace both lists with --send / --receive (an absent list becomes empty).
        #[arg(long)]
        set: bool,
        /// Event-name patterns it may publish.
        #[arg(long, value_delimiter = ',', requires = "set")]
        send: Vec<String>,
        /// Event-name patterns it may receive.
        #[arg(long, value_delimiter = ',', requires = "set")]
        receive: Vec<String>,
    },
    /// Give an access key a new generated key pair (printed once).
    Rotate {
        /// The access key.
        access_key: String,
    },
}

#[derive(Subcommand)]
enum Events {
    /// List the event definitions.
    List,
    /// Show one by id or name.
    Get {
        /// Its id or name.
        id: String,
    },
    /// Define an event.
    Create {
        /// The event name.
        name: String,
        /// The payload schema, a JSON object `{"field": "type", ...}`.
        #[arg(long, default_value = "{}")]
        payload: String,
    },
    /// Change an event definition (what is not given stays).
    Update {
        /// Its id.
        id: String,
        /// A new name.
        #[arg(long, default_value = "")]
        name: String,
        /// A new payload schema (JSON object).
        #[arg(long, default_value = "{}")]
        payload: String,
    },
}

/// Percent-encodes a path segment (everything but unreserved characters).
fn seg(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn json_object(text: &str, what: &str) -> Result<Value, String> {
    match serde_json::from_str::<Value>(text) {
        Ok(v @ Value::Object(_)) => Ok(v),
        _ => Err(format!("{what} must be a JSON object, not {text:?}")),
    }
}

/// The certificates of a PEM file as the only roots to trust.
fn ca_roots(path: &std::path::Path) -> Result<ureq::tls::RootCerts, String> {
    let pem = std::fs::read(path).map_err(|e| e.to_string())?;
    let mut certs = Vec::new();
    for item in ureq::tls::parse_pem(&pem) {
        if let ureq::tls::PemItem::Certificate(c) = item.map_err(|e| e.to_string())? {
            certs.push(c);
        }
    }
    if certs.is_empty() {
        return Err("no PEM certificate in it".into());
    }
    Ok(ureq::tls::RootCerts::new_with_certs(&certs))
}

/// Runs `ensync admin ...`.
pub fn run(args: AdminArgs) -> ExitCode {
    let (method, path, body) = match request(&args.what) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("ensync admin: {e}");
            return ExitCode::from(2);
        }
    };
    let mut config = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(30)));
    if let Some(path) = &args.ca_cert {
        match ca_roots(path) {
            Ok(roots) => {
                config =
                    config.tls_config(ureq::tls::TlsConfig::builder().root_certs(roots).build());
            }
            Err(e) => {
                eprintln!("ensync admin: --ca-cert {}: {e}", path.display());
                return ExitCode::from(2);
            }
        }
    }
    let agent: ureq::Agent = config.build().into();
    let url = format!("{}/api/v1/ensync{path}", args.url.trim_end_matches('/'));
    let req = ureq::http::Request::builder()
        .method(method)
        .uri(&url)
        .header("X-ACCESS-KEY", &args.admin_key)
        .header("Accept", "application/json");
    let sent = match body {
        Some(b) => req
            .header("Content-Type", "application/json")
            .body(b.to_string())
            .map_err(|e| e.to_string())
            .and_then(|r| agent.run(r).map_err(|e| e.to_string())),
        None => req
            .body(())
            .map_err(|e| e.to_string())
            .and_then(|r| agent.run(r).map_err(|e| e.to_string())),
    };
    let mut resp = match sent {
        Ok(r) => r,
        Err(e) => {
            eprintln!("ensync admin: cannot reach {url}: {e}");
            return ExitCode::FAILURE;
        }
    };
    let status = resp.status().as_u16();
    let text = resp.body_mut().read_to_string().unwrap_or_default();
    let shown = serde_json::from_str::<Value>(&text)
        .ok()
        .and_then(|v| serde_json::to_string_pretty(&v).ok())
        .unwrap_or(text);
    if status < 400 {
        if !shown.is_empty() {
            println!("{shown}");
        }
        ExitCode::SUCCESS
    } else {
        eprintln!("ensync admin: the node answered {status}: {shown}");
        if status < 500 {
            ExitCode::from(2)
        } else {
            ExitCode::FAILURE
        }
    }
}

type Request = (&'static str, String, Option<Value>);

fn request(what: &What) -> Result<Request, String> {
    Ok(match what {
        What::Keys(Keys::List { name, access_key }) => {
            let mut path =
                "/access-key?limit=1000&order=ASC&orderBy=createdAt&pageIndex=0".to_owned();
            if let Some(n) = name {
                path += &format!("&name={}", seg(n));
            }
            if let Some(k) = access_key {
                path += &format!("&accessKey={}", seg(k));
            }
            ("GET", path, None)
        }
        What::Keys(Keys::Create {
            name,
            kind,
            send,
            receive,
        }) => (
            "POST",
            "/access-key".into(),
            Some(json!({"type": kind.to_ascii_uppercase(), "name": name,
                "permissions": {"send": send, "receive": receive}})),
        ),
        What::Keys(Keys::Get { id }) => ("GET", format!("/access-key/{}", seg(id)), None),
        What::Keys(Keys::Delete { id }) => ("DELETE", format!("/access-key/{}", seg(id)), None),
        What::Keys(Keys::Permissions {
            access_key,
            set,
            send,
            receive,
        }) => {
            let path = format!("/access-key/{}/permissions", seg(access_key));
            if *set {
                (
                    "POST",
                    path,
                    Some(json!({"send": send, "receive": receive})),
                )
            } else {
                ("GET", path, None)
            }
        }
        What::Keys(Keys::Rotate { access_key }) => (
            "PUT",
            "/access/service-key-pair".into(),
            Some(json!({"access_key": access_key})),
        ),
        What::Events(Events::List) => (
            "GET",
            "/event?limit=1000&order=ASC&orderBy=createdAt&pageIndex=0".into(),
            None,
        ),
        What::Events(Events::Get { id }) => ("GET", format!("/event/{}", seg(id)), None),
        What::Events(Events::Create { name, payload }) => (
            "POST",
            "/event".into(),
            Some(json!({"name": name, "payload": json_object(payload, "--payload")?})),
        ),
        What::Events(Events::Update { id, name, payload }) => (
            "PUT",
            format!("/event/{}", seg(id)),
            Some(json!({"name": name, "payload": json_object(payload, "--payload")?})),
        ),
    })
}
