//! Dropping the last handle of a blocking client stops its thread (alone in this test
//! binary, so the thread count is this test's own).

mod h2_support;

use ensync_blocking::{ClientOptions, Engine};
use h2_support::NodeThread;

/// Threads of this process named `ensync-blocking` (Linux: /proc/self/task/*/comm).
fn worker_threads() -> Option<usize> {
    let tasks = std::fs::read_dir("/proc/self/task").ok()?;
    Some(
        tasks
            .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
            .filter(|name| name.trim() == "ensync-blocking")
            .count(),
    )
}

#[test]
fn dropping_the_client_stops_its_thread() {
    let node = NodeThread::start(1);
    let (key, secret) = node.app(0);
    let before = worker_threads();
    let client = Engine::new(&node.url())
        .expect("engine")
        .create_client(&key, ClientOptions::default().app_secret_key(secret))
        .expect("client");
    let subscription = client.subscribe("blocking/drop").expect("subscribe");
    if let Some(before) = before {
        assert_eq!(worker_threads(), Some(before + 1));
        drop(client);
        // The subscription still holds the connection.
        assert_eq!(worker_threads(), Some(before + 1));
        drop(subscription);
        // Drop joins the thread: it is gone when drop returns.
        assert_eq!(worker_threads(), Some(before));
    }
}
