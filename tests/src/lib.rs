//! Helpers shared by the cross-crate tests: finding the Python interpreters that
//! carry the published EnSync clients, and driving `tests/interop/ensync_driver.py`
//! one JSON step at a time with a timeout on every step.
//!
//! Everything here is synchronous (std processes and threads), so a test can run
//! several drivers on plain threads while the node runs on its own tokio runtime.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

pub mod interop_node;
// The NATS JetStream cluster harness of the node's tests (one copy, shared): what
// [`node::TestNode`] puts its nodes on with `ENSYNC_TEST_STORE=jetstream`.
#[path = "../../ensync-node/tests/common/nats.rs"]
mod nats;
pub mod node;
pub mod report;

/// An app configured on the node under test, as a published client sees it.
#[derive(Clone)]
pub struct TestApp {
    /// Short name used in driver steps (`"a"`, `"b"`, ...; `"@a"` as a recipient).
    pub name: String,
    /// The access key `create_client` takes.
    pub access_key: String,
    /// Standard base64 of the 64-byte Ed25519 secret key (seed || public key).
    pub secret_key: String,
    /// Standard base64 of the Ed25519 public key (the app's identity, `client_hash`).
    pub public_key: String,
}

impl std::fmt::Debug for TestApp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestApp")
            .field("name", &self.name)
            .field("public_key", &self.public_key)
            .finish_non_exhaustive()
    }
}

/// The driver's config argument: the node URL and the apps by name.
pub fn driver_config(url: &str, apps: &[TestApp]) -> Value {
    let apps: serde_json::Map<String, Value> = apps
        .iter()
        .map(|a| {
            (
                a.name.clone(),
                json!({"access_key": a.access_key, "secret_key": a.secret_key, "public_key": a.public_key}),
            )
        })
        .collect();
    json!({"url": url, "apps": apps})
}

/// The workspace root (the parent of this crate's directory).
pub fn workspace_root() -> PathBuf {
    let here = Path::new(env!("CARGO_MANIFEST_DIR"));
    here.parent().unwrap_or(here).to_path_buf()
}

/// A published EnSync Python client that the interop tests drive.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum PublishedClient {
    /// `ensync-sdk==0.4.0`: generation 1 RPC names (`PublishEvent`, ...), the seed README's API.
    Sdk040,
    /// `ensync-sdk==0.4.4`: generation 2 RPC names (`PublishMessage`, ...).
    Sdk044,
}

impl PublishedClient {
    /// Both, oldest first.
    pub const ALL: [PublishedClient; 2] = [PublishedClient::Sdk040, PublishedClient::Sdk044];

    /// The package version the interpreter must import.
    pub fn version(self) -> &'static str {
        match self {
            PublishedClient::Sdk040 => "0.4.0",
            PublishedClient::Sdk044 => "0.4.4",
        }
    }

    /// The RPC name generation this version speaks (1 = `*Event`, 2 = `*Message`).
    pub fn generation(self) -> u64 {
        match self {
            PublishedClient::Sdk040 => 1,
            PublishedClient::Sdk044 => 2,
        }
    }

    /// A short tag for event names and file names (`v040`, `v044`).
    pub fn tag(self) -> &'static str {
        match self {
            PublishedClient::Sdk040 => "v040",
            PublishedClient::Sdk044 => "v044",
        }
    }

    /// `ensync-sdk 0.4.0` etc.
    pub fn label(self) -> String {
        format!("ensync-sdk {}", self.version())
    }

    /// The environment variable naming its interpreter.
    pub fn env_var(self) -> &'static str {
        match self {
            PublishedClient::Sdk040 => "ENSYNC_PYTHON_040",
            PublishedClient::Sdk044 => "ENSYNC_PYTHON",
        }
    }

    /// The venv `scripts/python-env.sh` creates for it, relative to the workspace.
    pub fn venv_dir(self) -> &'static str {
        match self {
            PublishedClient::Sdk040 => ".venv-sdk040",
            PublishedClient::Sdk044 => ".venv",
        }
    }
}

/// The version of `ensync_sdk` that `python` imports, or why it cannot.
pub fn probe_sdk_version(python: &Path) -> Result<String, String> {
    let out = Command::new(python)
        .args([
            "-c",
            "import ensync_sdk, nacl; print(ensync_sdk.__version__)",
        ])
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run {}: {e}", python.display()))?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        let last = err.lines().last().unwrap_or("").to_string();
        return Err(format!(
            "{} cannot import ensync_sdk: {last}",
            python.display()
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// Finds an interpreter with `ensync-sdk` at the wanted version: the one named by
/// the client's environment variable, else `<workspace>/<venv>/bin/python`.
/// `Err` lists what was tried.
pub fn find_python(client: PublishedClient) -> Result<PathBuf, String> {
    let mut candidates = Vec::new();
    if let Some(p) = std::env::var_os(client.env_var()).filter(|p| !p.is_empty()) {
        candidates.push(PathBuf::from(p));
    }
    candidates.push(
        workspace_root()
            .join(client.venv_dir())
            .join("bin")
            .join("python"),
    );
    let mut tried = Vec::new();
    for candidate in candidates {
        if !candidate.exists() {
            tried.push(format!("{}: not found", candidate.display()));
            continue;
        }
        match probe_sdk_version(&candidate) {
            Ok(v) if v == client.version() => return Ok(candidate),
            Ok(v) => tried.push(format!("{}: has ensync-sdk {v}", candidate.display())),
            Err(e) => tried.push(e),
        }
    }
    Err(format!(
        "no Python with ensync-sdk=={} (set {} or run scripts/python-env.sh); tried: {}",
        client.version(),
        client.env_var(),
        tried.join("; ")
    ))
}

/// [`find_python`], with the project's policy for a missing interpreter: under CI
/// (env `CI` set) the test fails with the reason; elsewhere it prints a skip note
/// to stderr and the caller returns `None` and skips.
pub fn require_python(client: PublishedClient, test: &str) -> Option<PathBuf> {
    match find_python(client) {
        Ok(p) => Some(p),
        Err(why) => {
            if std::env::var_os("CI").is_some() {
                panic!("{test}: {why}");
            }
            // Straight to stderr, past the test harness's output capture.
            let _ = writeln!(
                std::io::stderr(),
                "SKIP {test} for {}: {why}",
                client.label()
            );
            None
        }
    }
}

/// Path of the driver script `tests/interop/ensync_driver.py`.
pub fn driver_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("interop")
        .join("ensync_driver.py")
}

/// Default timeout of one driver step when the step names none (the driver's own
/// default is 10 s; the harness waits a little longer so that the driver's own
/// "timeout" answer arrives first).
const DEFAULT_STEP_MS: u64 = 10_000;
/// How long the harness waits past a step's own timeout before it calls the driver hung.
const HARNESS_SLACK_MS: u64 = 5_000;

/// One running `ensync_driver.py`: send a step, get its one JSON answer.
/// The process is killed when this is dropped.
pub struct PyDriver {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: Receiver<String>,
    stderr: Arc<Mutex<String>>,
    label: String,
    /// The driver's first line: `sdk_version`, `generation`, `python`.
    pub hello: Value,
    /// Every step sent and every answer, for failure messages.
    pub transcript: Vec<String>,
}

impl PyDriver {
    /// Starts the driver under `python` with `config` (url and apps) and waits for
    /// its hello line.
    pub fn spawn(python: &Path, config: &Value, label: &str) -> Result<Self, String> {
        let mut command = Command::new(python);
        command.arg("-u").arg(driver_script());
        Self::spawn_command(command, config, label)
    }

    /// Starts another driver speaking the same step protocol (e.g. `node
    /// tests/interop/ensync_driver.js`): `command` with `config` appended as its last
    /// argument; waits for its hello line.
    pub fn spawn_command(
        mut command: Command,
        config: &Value,
        label: &str,
    ) -> Result<Self, String> {
        let program = command.get_program().to_string_lossy().into_owned();
        let mut child = command
            .arg(config.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("{label}: cannot start {program}: {e}"))?;
        let stdout = child.stdout.take().ok_or("no stdout")?;
        let stderr_pipe = child.stderr.take().ok_or("no stderr")?;
        let (tx, rx) = mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let stderr = Arc::new(Mutex::new(String::new()));
        let sink = Arc::clone(&stderr);
        thread::spawn(move || {
            for line in BufReader::new(stderr_pipe).lines() {
                let Ok(line) = line else { break };
                if let Ok(mut s) = sink.lock() {
                    s.push_str(&line);
                    s.push('\n');
                }
            }
        });
        let stdin = child.stdin.take();
        let mut driver = PyDriver {
            child,
            stdin,
            lines: rx,
            stderr,
            label: label.to_string(),
            hello: Value::Null,
            transcript: Vec::new(),
        };
        // Importing grpc on a busy 2-core machine can take a few seconds.
        let hello = driver.read_line(Duration::from_secs(30))?;
        driver.hello = hello;
        Ok(driver)
    }

    fn stderr_tail(&self) -> String {
        let s = self.stderr.lock().map(|s| s.clone()).unwrap_or_default();
        let lines: Vec<&str> = s.lines().collect();
        lines[lines.len().saturating_sub(15)..].join("\n")
    }

    fn read_line(&mut self, timeout: Duration) -> Result<Value, String> {
        match self.lines.recv_timeout(timeout) {
            Ok(line) => {
                self.transcript.push(format!("<- {line}"));
                serde_json::from_str(&line)
                    .map_err(|e| format!("{}: driver printed non-JSON {line:?}: {e}", self.label))
            }
            Err(RecvTimeoutError::Timeout) => Err(format!(
                "{}: driver gave no answer within {timeout:?} (hung)\nstderr:\n{}",
                self.label,
                self.stderr_tail()
            )),
            Err(RecvTimeoutError::Disconnected) => {
                let status = self.child.wait().ok();
                Err(format!(
                    "{}: driver exited ({status:?})\nstderr:\n{}",
                    self.label,
                    self.stderr_tail()
                ))
            }
        }
    }

    /// Sends one step and returns the driver's answer (`ok` may be false: that is
    /// the published client's failure, for the caller to judge). `Err` only when
    /// the driver itself broke or hung.
    pub fn step(&mut self, step: Value) -> Result<Value, String> {
        let ms = step
            .get("timeout_ms")
            .and_then(Value::as_u64)
            .unwrap_or(DEFAULT_STEP_MS);
        let line = step.to_string();
        self.transcript.push(format!("-> {line}"));
        let stdin = self.stdin.as_mut().ok_or("driver stdin closed")?;
        writeln!(stdin, "{line}")
            .and_then(|()| stdin.flush())
            .map_err(|e| {
                format!(
                    "{}: cannot write to driver: {e}\nstderr:\n{}",
                    self.label,
                    self.stderr_tail()
                )
            })?;
        self.read_line(Duration::from_millis(ms + HARNESS_SLACK_MS))
    }

    /// [`PyDriver::step`] that also requires `ok: true`.
    pub fn ok(&mut self, step: Value) -> Result<Value, String> {
        let answer = self.step(step)?;
        if answer.get("ok") == Some(&Value::Bool(true)) {
            Ok(answer)
        } else {
            Err(format!("{}: step failed: {answer}", self.label))
        }
    }

    /// The last lines of the step transcript, for failure messages.
    pub fn transcript_tail(&self, n: usize) -> String {
        self.transcript[self.transcript.len().saturating_sub(n)..].join("\n")
    }

    /// Closes stdin so the driver closes its clients and exits; kills it if it has
    /// not exited within 10 s.
    pub fn finish(mut self) {
        self.stdin.take();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for PyDriver {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
