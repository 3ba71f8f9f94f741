//! The `ensync` command-line tool: `ensync keygen`, `ensync node --config FILE`,
//! `ensync node --dev`, the client commands `ensync publish` and `ensync subscribe`, and
//! `ensync admin ...` for a node's admin API.

mod admin_cli;
mod cli_client;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use ensync_node::{Node, NodeConfig, NodeError};

#[derive(Parser)]
#[command(
    name = "ensync",
    version,
    about = "EnSync: end-to-end encrypted event streaming"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Print a fresh Ed25519 key pair for an app as JSON
    /// ({"public_key": ..., "secret_key": ...}, standard base64).
    Keygen,
    /// Run an EnSync node.
    Node(NodeArgs),
    /// Publish events: prints each event's id (one line per recipient and payload).
    Publish(cli_client::PublishArgs),
    /// Subscribe to an event name: prints each event as a JSON line
    /// ({"idem","eventName","block","timestamp","payload","sender","metadata"}).
    Subscribe(cli_client::SubscribeArgs),
    /// Administer a node through its admin API (access keys, permissions, key pairs,
    /// event definitions); prints the node's JSON answers.
    Admin(admin_cli::AdminArgs),
}

#[derive(Args)]
struct NodeArgs {
    /// The TOML configuration file.
    #[arg(
        long,
        value_name = "FILE",
        required_unless_present = "dev",
        conflicts_with = "dev"
    )]
    config: Option<PathBuf>,
    /// Listen address of the gRPC endpoint (overrides the file's `grpc_listen`).
    #[arg(long, value_name = "ADDR")]
    grpc_listen: Option<SocketAddr>,
    /// Data directory (overrides the file's `data_dir`).
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// Start with a generated two-app configuration in a temporary directory and print
    /// both apps' keys (for trying EnSync out; everything is gone when it stops).
    #[arg(long)]
    dev: bool,
    /// Open the store even if it is older than its commit record (`events.redb.commit`)
    /// says: the writes of the missing commits (publishes and acks already answered) are
    /// lost. Also accepts an unreadable record, and a missing store file whose record
    /// exists (an empty store is created). The record is rewritten, so later starts need
    /// no flag.
    #[arg(long)]
    accept_store_rollback: bool,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Keygen => {
            let kp = ensync_node::keys::generate();
            let out = serde_json::json!({
                "public_key": kp.public_key,
                "secret_key": kp.secret_key.as_str(),
            });
            println!("{out}");
            ExitCode::SUCCESS
        }
        Command::Publish(args) => {
            init_logging("warn");
            cli_client::publish(args)
        }
        Command::Subscribe(args) => {
            init_logging("warn");
            cli_client::subscribe(args)
        }
        Command::Admin(args) => admin_cli::run(args),
        Command::Node(args) => {
            init_logging("info");
            let runtime = match tokio::runtime::Runtime::new() {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("ensync: cannot start the runtime: {e}");
                    return ExitCode::FAILURE;
                }
            };
            match runtime.block_on(run_node(args)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!(error = %e, "node failed");
                    eprintln!("ensync: {e}");
                    match e {
                        // A bad setting, or a certificate or key file that cannot be used.
                        NodeError::Config(_) | NodeError::Tls(_) => ExitCode::from(2),
                        _ => ExitCode::FAILURE,
                    }
                }
            }
        }
    }
}

fn init_logging(default: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

async fn run_node(args: NodeArgs) -> Result<(), NodeError> {
    let mut _dev = None;
    let mut config = if args.dev {
        let dev = ensync_node::dev::DevSetup::generate(2)?;
        let mut config = dev.config.clone();
        config.grpc_listen = ensync_node::config::DEFAULT_GRPC_LISTEN
            .parse()
            .map_err(|_| NodeError::Io("bad default listen address".into()))?;
        println!(
            "ensync dev node: a throw-away configuration; data in {}",
            dev.data_dir().display()
        );
        for app in &dev.apps {
            let line = serde_json::json!({
                "app": app.name,
                "access_key": app.access_key,
                "public_key": app.public_key,
                "secret_key": app.secret_key(),
            });
            println!("{line}");
        }
        _dev = Some(dev);
        config
    } else {
        let path = args
            .config
            .as_deref()
            .ok_or_else(|| NodeError::Io("--config FILE is required".into()))?;
        NodeConfig::from_file(path)?
    };
    if let Some(addr) = args.grpc_listen {
        config.grpc_listen = addr;
    }
    if let Some(dir) = args.data_dir {
        config.data_dir = dir;
    }
    config.accept_store_rollback = args.accept_store_rollback;
    let apps = config.apps.len();
    let data_dir = config.data_dir.clone();
    let store = config.store;
    let node = Node::start(config).await?;
    let scheme = if node.is_tls() { "grpcs" } else { "grpc" };
    tracing::info!(%scheme, apps, ?store, data_dir = %data_dir.display(), "serving");
    let mut ready = format!("ensync node ready grpc={}", node.grpc_addr());
    if let Some(ws) = node.ws_addr() {
        ready += &format!(" ws={ws}");
    }
    if let Some(admin) = node.admin_addr() {
        ready += &format!(" admin={admin}");
    }
    println!("{ready}");
    use std::io::Write as _;
    let _ = std::io::stdout().flush();

    wait_for_signal().await;
    tracing::info!("stopping");
    node.shutdown().await;
    Ok(())
}

/// Ctrl-C, or SIGTERM on Unix (`ensync node` and `ensync subscribe` stop on either).
async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        if let Ok(mut term) = signal(SignalKind::terminate()) {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            return;
        }
    }
    let _ = tokio::signal::ctrl_c().await;
}
