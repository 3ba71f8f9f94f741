//! `ensync publish` and `ensync subscribe`: an EnSync client at the terminal, built on
//! the `ensync-tokio` SDK.

use std::io::{Read as _, Write as _};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Args;
use ensync_tokio::{
    Client, ClientOptions, EnSyncEngine, EnSyncError, EngineOptions, ErrorKind, Event,
    PublishOptions, SubscribeOptions,
};
use futures::StreamExt;
use serde::Serialize;

/// Exit status for bad input (as clap uses for bad arguments).
const USAGE: u8 = 2;

/// Where the node is and which app connects: shared by `publish` and `subscribe`.
#[derive(Args)]
pub struct ConnectArgs {
    /// The node: `grpcs://host[:port]` (TLS, default port 443), `grpc://host[:port]`
    /// (plaintext, default port 50051), or a bare host (`localhost` and `127.0.0.1`:
    /// plaintext on 50051, any other host: TLS on 443).
    #[arg(long, env = "ENSYNC_URL", default_value = "localhost")]
    url: String,
    /// This app's access key.
    #[arg(long, env = "ENSYNC_APP_KEY", hide_env_values = true)]
    app_key: String,
    /// This app's secret key (standard base64, as `ensync keygen` prints it): needed to
    /// decrypt what the app receives.
    #[arg(long, env = "ENSYNC_SECRET_KEY", hide_env_values = true)]
    secret_key: Option<String>,
    /// Trust this PEM CA certificate too (for a node with a self-signed certificate).
    #[arg(long, value_name = "FILE")]
    ca_cert: Option<PathBuf>,
}

/// `ensync publish`.
#[derive(Args)]
pub struct PublishArgs {
    #[command(flatten)]
    connect: ConnectArgs,
    /// The event name, e.g. `orders/status/updated`.
    #[arg(long, short = 'e')]
    event: String,
    /// A recipient's public key (standard base64); repeat the flag or separate keys with
    /// commas.
    #[arg(
        long = "to",
        visible_alias = "recipient",
        value_name = "PUBLIC_KEY",
        value_delimiter = ',',
        required = true
    )]
    to: Vec<String>,
    /// The payload, a JSON object. Without it (or with `-`) JSON objects are read from
    /// standard input and each is published.
    #[arg(value_name = "JSON")]
    payload: Option<String>,
    /// Metadata sent with each event, a JSON object (not encrypted).
    #[arg(long, value_name = "JSON")]
    metadata: Option<String>,
    /// Encrypt each payload once for all recipients (the hybrid envelope).
    #[arg(long)]
    hybrid: bool,
}

/// `ensync subscribe`.
#[derive(Args)]
pub struct SubscribeArgs {
    #[command(flatten)]
    connect: ConnectArgs,
    /// The event name, e.g. `orders/status/updated`.
    #[arg(long, short = 'e')]
    event: String,
    /// Stop after this many events (acknowledged ones: an event whose ack is lost with
    /// the connection is printed again when it comes back, and counted then).
    #[arg(long, short = 'n', value_name = "N")]
    count: Option<u64>,
    /// Stop after this many seconds (with `--count`: fail if fewer events arrived).
    #[arg(long, value_name = "SECS")]
    timeout: Option<f64>,
    /// Print events without acknowledging them: the node delivers them again (to this
    /// app's next subscriber) once this one stops.
    #[arg(long)]
    no_ack: bool,
}

/// A failure of a client command: the message and the exit status.
struct Failure {
    message: String,
    status: u8,
}

impl Failure {
    fn usage(message: impl Into<String>) -> Self {
        Failure {
            message: message.into(),
            status: USAGE,
        }
    }
}

impl From<EnSyncError> for Failure {
    fn from(e: EnSyncError) -> Self {
        let status = match e.kind() {
            ErrorKind::Validation => USAGE,
            _ => 1,
        };
        Failure {
            message: e.to_string(),
            status,
        }
    }
}

/// Runs `ensync publish`.
pub fn publish(args: PublishArgs) -> ExitCode {
    finish(prepare_publish(&args).and_then(|payloads| {
        runtime()?.block_on(async {
            let metadata = args.metadata.as_deref().map(parse_metadata).transpose()?;
            let client = connect(&args.connect, false).await?;
            let result = publish_all(&client, &args, payloads, metadata).await;
            let _ = client.close().await;
            result
        })
    }))
}

/// Runs `ensync subscribe`.
pub fn subscribe(args: SubscribeArgs) -> ExitCode {
    finish(runtime().and_then(|rt| rt.block_on(run_subscribe(&args))))
}

fn finish(result: Result<(), Failure>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => {
            eprintln!("ensync: {}", failure.message);
            ExitCode::from(failure.status)
        }
    }
}

fn runtime() -> Result<tokio::runtime::Runtime, Failure> {
    tokio::runtime::Runtime::new().map_err(|e| Failure {
        message: format!("cannot start the runtime: {e}"),
        status: 1,
    })
}

/// The payloads to publish: the argument, or every JSON value on standard input.
fn prepare_publish(args: &PublishArgs) -> Result<Vec<serde_json::Value>, Failure> {
    if args.to.iter().any(|r| r.trim().is_empty()) {
        return Err(Failure::usage("--to: an empty recipient"));
    }
    let payloads = match args.payload.as_deref() {
        Some(text) if text != "-" => vec![parse_object(text, "the payload")?],
        _ => {
            let mut text = String::new();
            std::io::stdin()
                .read_to_string(&mut text)
                .map_err(|e| Failure::usage(format!("cannot read the payload from stdin: {e}")))?;
            let mut payloads = Vec::new();
            for (n, value) in serde_json::Deserializer::from_str(&text)
                .into_iter::<serde_json::Value>()
                .enumerate()
            {
                let value = value.map_err(|e| {
                    Failure::usage(format!("payload {} on stdin is not valid JSON: {e}", n + 1))
                })?;
                payloads.push(object(value, &format!("payload {} on stdin", n + 1))?);
            }
            if payloads.is_empty() {
                return Err(Failure::usage(
                    "no payload: give a JSON object as an argument or on stdin",
                ));
            }
            payloads
        }
    };
    Ok(payloads)
}

fn parse_object(text: &str, what: &str) -> Result<serde_json::Value, Failure> {
    let value = serde_json::from_str(text)
        .map_err(|e| Failure::usage(format!("{what} is not valid JSON: {e}")))?;
    object(value, what)
}

fn object(value: serde_json::Value, what: &str) -> Result<serde_json::Value, Failure> {
    if value.is_object() {
        Ok(value)
    } else {
        Err(Failure::usage(format!("{what} must be a JSON object")))
    }
}

fn parse_metadata(text: &str) -> Result<serde_json::Value, Failure> {
    parse_object(text, "--metadata")
}

async fn connect(args: &ConnectArgs, need_secret: bool) -> Result<Client, Failure> {
    let mut options = EngineOptions::default()
        .enable_logging(true)
        // A person at a terminal waits a few seconds, not minutes, for a node that is down.
        .reconnect_interval(Duration::from_secs(1))
        .max_reconnect_attempts(5);
    if let Some(path) = &args.ca_cert {
        let pem = std::fs::read(path)
            .map_err(|e| Failure::usage(format!("--ca-cert {}: {e}", path.display())))?;
        options = options.ca_certificate_pem(pem);
    }
    let engine = EnSyncEngine::with_options(&args.url, options)?;
    let mut client_options = ClientOptions::default();
    // An empty ENSYNC_SECRET_KEY counts as none.
    match args.secret_key.as_deref().filter(|key| !key.is_empty()) {
        Some(key) => client_options = client_options.app_secret_key(key),
        None if need_secret => {
            return Err(Failure::usage(
                "the app's secret key is needed to decrypt events: pass --secret-key or set \
                 ENSYNC_SECRET_KEY",
            ));
        }
        None => {}
    }
    let client = engine
        .create_client(&args.app_key, client_options)
        .await
        .map_err(|e| match e.kind() {
            ErrorKind::Validation => Failure::usage(e.to_string()),
            _ => Failure {
                message: format!("cannot connect to {}: {e}", engine.authority()),
                status: 1,
            },
        })?;
    Ok(client)
}

async fn publish_all(
    client: &Client,
    args: &PublishArgs,
    payloads: Vec<serde_json::Value>,
    metadata: Option<serde_json::Value>,
) -> Result<(), Failure> {
    let recipients: Vec<&str> = args.to.iter().map(|r| r.trim()).collect();
    let mut out = std::io::stdout().lock();
    for payload in payloads {
        let mut options = PublishOptions::default().hybrid(args.hybrid);
        if let Some(metadata) = &metadata {
            options = options.metadata(metadata.clone());
        }
        let ids = client
            .publish_with(&args.event, &recipients, &payload, options)
            .await
            .inspect_err(|e| {
                // Some recipients may have it already: say which, so nobody re-sends blindly.
                for id in e.published_ids() {
                    let _ = writeln!(out, "{id}");
                }
            })?;
        for id in ids {
            if writeln!(out, "{id}").is_err() {
                return Ok(()); // stdout closed: nobody is reading the ids
            }
        }
    }
    let _ = out.flush();
    Ok(())
}

/// One received event as `ensync subscribe` prints it: the seed README's event structure.
#[derive(Serialize)]
struct EventLine<'a> {
    idem: &'a str,
    #[serde(rename = "eventName")]
    event_name: &'a str,
    block: i64,
    timestamp: Option<i64>,
    payload: &'a serde_json::Value,
    sender: &'a str,
    metadata: &'a serde_json::Value,
}

impl<'a> From<&'a Event> for EventLine<'a> {
    fn from(event: &'a Event) -> Self {
        EventLine {
            idem: &event.idem,
            event_name: &event.event_name,
            block: event.block,
            timestamp: event.timestamp,
            payload: &event.payload,
            sender: &event.sender,
            metadata: &event.metadata,
        }
    }
}

/// Why the receive loop ended.
enum Stop {
    Done,
    Interrupted,
    TimedOut,
    StdoutClosed,
    Ended,
}

async fn run_subscribe(args: &SubscribeArgs) -> Result<(), Failure> {
    if args.count == Some(0) {
        return Err(Failure::usage("--count must be at least 1"));
    }
    let deadline = match args.timeout {
        Some(secs) if secs.is_finite() && secs > 0.0 => {
            Some(tokio::time::Instant::now() + Duration::from_secs_f64(secs.min(1e9)))
        }
        Some(_) => return Err(Failure::usage("--timeout must be a positive number")),
        None => None,
    };
    let client = connect(&args.connect, true).await?;
    // Acknowledged explicitly, once the event's line is written: an event whose line
    // was not printed is delivered again.
    let mut subscription = client
        .subscribe_with(&args.event, SubscribeOptions::default().auto_ack(false))
        .await?;
    eprintln!(
        "ensync: subscribed to {} as {}",
        args.event,
        client.public_key()
    );
    let shutdown = crate::wait_for_signal();
    tokio::pin!(shutdown);
    let timer = sleep_until(deadline);
    tokio::pin!(timer);
    let mut received = 0u64;
    let stop = loop {
        if args.count.is_some_and(|n| received >= n) {
            break Stop::Done;
        }
        let next = tokio::select! {
            event = subscription.next() => event,
            () = &mut shutdown => break Stop::Interrupted,
            () = &mut timer => break Stop::TimedOut,
        };
        let Some(event) = next else {
            break Stop::Ended;
        };
        let line = serde_json::to_string(&EventLine::from(&event)).map_err(|e| Failure {
            message: format!("cannot print event {}: {e}", event.idem),
            status: 1,
        })?;
        let mut out = std::io::stdout().lock();
        if writeln!(out, "{line}").and_then(|()| out.flush()).is_err() {
            break Stop::StdoutClosed;
        }
        drop(out);
        if args.no_ack {
            received += 1;
            continue;
        }
        let idem = event.idem.clone();
        match event.ack().await {
            Ok(()) => received += 1,
            // The connection went (the client reconnects, possibly to another node):
            // the event is not acknowledged and comes again, so it is not counted yet;
            // its line will be printed once more (at-least-once).
            Err(e) if e.is_retryable() => eprintln!(
                "ensync: the ack of {idem} did not reach the node ({e}); it will be delivered again"
            ),
            Err(e) => return Err(e.into()),
        }
    };
    let result = match stop {
        Stop::Done | Stop::Interrupted | Stop::StdoutClosed => Ok(()),
        Stop::TimedOut => match args.count {
            Some(n) => Err(Failure {
                message: format!("timed out: {received} of {n} events arrived"),
                status: 1,
            }),
            None => Ok(()),
        },
        Stop::Ended => Err(Failure {
            message: match client.state() {
                ensync_tokio::ConnectionState::Closed {
                    reason: Some(reason),
                } => format!("the subscription ended: {reason}"),
                _ => "the subscription ended".to_owned(),
            },
            status: 1,
        }),
    };
    let _ = subscription.unsubscribe().await;
    let _ = client.close().await;
    result
}

async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
