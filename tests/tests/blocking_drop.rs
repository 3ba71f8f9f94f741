//! Dropping the last handle of a blocking client stops its thread (alone in this test
//! binary, so the thread count is this test's own).

mod h2_support;

use ensync_blocking::{ClientOptions, Engine};
use h2_support::NodeThread;

/// Threads of this process named `name` (Linux: /proc/self/task/*/comm).
fn threads_named(name: &str) -> Option<usize> {
    let tasks = std::fs::read_dir("/proc/self/task").ok()?;
    Some(
        tasks
            .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
            .filter(|comm| comm.trim() == name)
            .count(),
    )
}

fn worker_threads() -> Option<usize> {
    threads_named("ensync-blocking")
}

/// async-io spawns its reactor thread on first use, from the thread that uses it; until
/// the new thread has named itself it carries its parent's name. Started from here and
/// waited for, it is never counted as a worker thread.
fn start_async_io_thread() {
    async_io::block_on(async_io::Timer::after(std::time::Duration::from_millis(1)));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while threads_named("async-io") == Some(0) && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
}

#[test]
fn dropping_the_client_stops_its_thread() {
    start_async_io_thread();
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
