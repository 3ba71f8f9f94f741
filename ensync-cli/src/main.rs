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

/// mimalloc instead of the system allocator: the node allocates and frees small buffers
/// for every call, frame and record, and glibc's malloc (with its per-thread arenas
/// growing and shrinking by syscalls) was ~8 % of its CPU under load (BENCHMARKS.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

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
    /// ({"public_key": ..., "secret_key": ...}, standard base64); with `--app NAME`, an
    /// `[[apps]]` block for a node's TOML file instead.
    Keygen(KeygenArgs),
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
struct KeygenArgs {
    /// Print an `[[apps]]` block for a node's config (name, a fresh access key, the new
    /// public key, `--send`/`--receive`) on stdout instead of JSON; the app's own
    /// credentials (access key and secret key, which the node never needs) go to
    /// `--env FILE`, else to stderr, as `export ENSYNC_APP_KEY=...` lines (with
    /// `ENSYNC_PUBLIC_KEY`, its address).
    #[arg(long, value_name = "NAME")]
    app: Option<String>,
    /// With `--app`: an event-name pattern it may publish (repeat, or comma-separated).
    #[arg(long, requires = "app", value_delimiter = ',')]
    send: Vec<String>,
    /// With `--app`: an event-name pattern it may subscribe to (repeat, or comma-separated).
    #[arg(long, requires = "app", value_delimiter = ',')]
    receive: Vec<String>,
    /// With `--app`: write the app's credentials here (created with mode 0600; refused if
    /// it exists), for `. FILE` before `ensync publish` / `ensync subscribe`.
    #[arg(long, requires = "app", value_name = "FILE")]
    env: Option<PathBuf>,
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
        Command::Keygen(args) => keygen(args),
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

/// `ensync keygen [--app NAME ...]`.
fn keygen(args: KeygenArgs) -> ExitCode {
    let kp = ensync_node::keys::generate();
    let Some(name) = args.app else {
        let out = serde_json::json!({
            "public_key": kp.public_key,
            "secret_key": kp.secret_key.as_str(),
        });
        println!("{out}");
        return ExitCode::SUCCESS;
    };
    let mut app =
        ensync_node::AppConfig::new(name, ensync_node::keys::random_access_key(), &kp.public_key);
    app.send = args.send;
    app.receive = args.receive;
    // The same checks as the node's (name, patterns), so the block is known good.
    let mut probe = NodeConfig::new(".");
    probe.apps.push(app.clone());
    if let Err(e) = probe.validate() {
        eprintln!("ensync keygen: {e}");
        return ExitCode::from(2);
    }
    #[derive(serde::Serialize)]
    struct Block<'a> {
        apps: [&'a ensync_node::AppConfig; 1],
    }
    let block = match toml::to_string(&Block { apps: [&app] }) {
        Ok(text) => text,
        Err(e) => {
            eprintln!("ensync keygen: {e}");
            return ExitCode::FAILURE;
        }
    };
    let env = zeroize::Zeroizing::new(format!(
        "# {}: its access key and secret key (keep them with the app, not in the node's config)\n\
         export ENSYNC_APP_KEY='{}'\nexport ENSYNC_SECRET_KEY='{}'\n\
         # its public key (its address: what others publish to)\nexport ENSYNC_PUBLIC_KEY='{}'\n",
        app.name,
        app.access_key,
        kp.secret_key.as_str(),
        kp.public_key
    ));
    match &args.env {
        Some(path) => {
            if let Err(e) = write_private(path, env.as_bytes()) {
                eprintln!("ensync keygen: cannot write {}: {e}", path.display());
                return ExitCode::FAILURE;
            }
        }
        None => eprint!("{}", env.as_str()),
    }
    print!("{block}");
    ExitCode::SUCCESS
}

/// Creates `path` (not there before) readable by its owner only, with `data`.
fn write_private(path: &std::path::Path, data: &[u8]) -> std::io::Result<()> {
    use std::io::Write as _;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        options.mode(0o600);
    }
    let mut f = options.open(path)?;
    f.write_all(data)?;
    f.sync_all()
}
