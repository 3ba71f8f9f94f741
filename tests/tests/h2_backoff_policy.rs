//! No adapter re-implements reconnect policy: with the node gone, the delays each
//! adapter reports in `Reconnecting { attempt, delay }` are exactly the core's
//! `ensync_proto::session::backoff_delay`, until the client gives up and closes.

mod h2_support;

use std::time::Duration;

use ensync_proto::session::{SessionConfig, backoff_delay};
use futures::StreamExt;
use h2_support::{NodeThread, WAIT, async_std_runtime};

/// An interval no adapter would pick by accident, and few attempts to keep it short.
const INTERVAL: Duration = Duration::from_millis(37);
const ATTEMPTS: u32 = 4;

/// Checks the `(attempt, delay)` pairs an adapter reported before closing.
fn check(adapter: &str, seen: &[(u32, Duration)], closed: bool) {
    assert!(
        closed,
        "{adapter}: the client closes after {ATTEMPTS} failed attempts"
    );
    assert!(!seen.is_empty(), "{adapter}: reported no reconnect attempt");
    let config = SessionConfig::new("unused")
        .reconnect_interval(INTERVAL)
        .max_reconnect_attempts(ATTEMPTS);
    let mut last = 0;
    for &(attempt, delay) in seen {
        assert!(
            attempt > last && attempt <= ATTEMPTS,
            "{adapter}: attempt {attempt} after {last}"
        );
        assert_eq!(
            delay,
            backoff_delay(&config, attempt),
            "{adapter}: attempt {attempt}"
        );
        last = attempt;
    }
}

#[test]
fn h2_uses_the_core_backoff() {
    let mut node = NodeThread::start(1);
    let (key, secret) = node.app(0);
    let url = node.url();
    async_std::task::block_on(async {
        let options = ensync_h2::EngineOptions::default()
            .reconnect_interval(INTERVAL)
            .max_reconnect_attempts(ATTEMPTS);
        let client = ensync_h2::EnSyncEngine::with_options(&url, options, async_std_runtime())
            .expect("engine")
            .create_client(
                &key,
                ensync_h2::ClientOptions::default().app_secret_key(secret),
            )
            .await
            .expect("client");
        let _sub = client.subscribe("policy/h2").await.expect("subscribe");
        let mut states = Box::pin(client.state_changes());
        node.stop();
        let (mut seen, mut closed) = (Vec::new(), false);
        while let Ok(Some(state)) = async_std::future::timeout(WAIT, states.next()).await {
            match state {
                ensync_h2::ConnectionState::Reconnecting { attempt, delay } => {
                    seen.push((attempt, delay))
                }
                ensync_h2::ConnectionState::Closed { .. } => {
                    closed = true;
                    break;
                }
                _ => {}
            }
        }
        check("ensync-h2", &seen, closed);
        // ensync-h2's state stream is lossless: every attempt is reported.
        assert_eq!(
            seen.iter().map(|s| s.0).collect::<Vec<_>>(),
            (1..=ATTEMPTS).collect::<Vec<_>>()
        );
    });
}

#[test]
fn blocking_uses_the_core_backoff() {
    let mut node = NodeThread::start(1);
    let (key, secret) = node.app(0);
    let options = ensync_blocking::EngineOptions::default()
        .reconnect_interval(INTERVAL)
        .max_reconnect_attempts(ATTEMPTS);
    let client = ensync_blocking::Engine::with_options(&node.url(), options)
        .expect("engine")
        .create_client(
            &key,
            ensync_blocking::ClientOptions::default().app_secret_key(secret),
        )
        .expect("client");
    let _sub = client.subscribe("policy/blocking").expect("subscribe");
    let states = client.state_changes();
    node.stop();
    let (mut seen, mut closed) = (Vec::new(), false);
    for state in states {
        match state {
            ensync_blocking::ConnectionState::Reconnecting { attempt, delay } => {
                seen.push((attempt, delay))
            }
            ensync_blocking::ConnectionState::Closed { .. } => {
                closed = true;
                break;
            }
            _ => {}
        }
    }
    check("ensync-blocking", &seen, closed);
    assert_eq!(
        seen.iter().map(|s| s.0).collect::<Vec<_>>(),
        (1..=ATTEMPTS).collect::<Vec<_>>()
    );
}

#[test]
fn tokio_uses_the_core_backoff() {
    let mut node = NodeThread::start(1);
    let (key, secret) = node.app(0);
    let url = node.url();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let options = ensync_tokio::EngineOptions::default()
            .reconnect_interval(INTERVAL)
            .max_reconnect_attempts(ATTEMPTS);
        let client = ensync_tokio::EnSyncEngine::with_options(&url, options)
            .expect("engine")
            .create_client(
                &key,
                ensync_tokio::ClientOptions::default().app_secret_key(secret),
            )
            .await
            .expect("client");
        let _sub = client.subscribe("policy/tokio").await.expect("subscribe");
        let mut states = Box::pin(client.state_changes());
        // Stopping the node blocks this thread: do it on another.
        let stopper = std::thread::spawn(move || node.stop());
        let (mut seen, mut closed) = (Vec::new(), false);
        while let Ok(Some(state)) = tokio::time::timeout(WAIT, states.next()).await {
            match state {
                ensync_tokio::ConnectionState::Reconnecting { attempt, delay } => {
                    seen.push((attempt, delay))
                }
                ensync_tokio::ConnectionState::Closed { .. } => {
                    closed = true;
                    break;
                }
                _ => {}
            }
        }
        stopper.join().expect("stopper");
        // tokio's state is a watch: intermediate states may be coalesced, so only the
        // attempts observed are compared.
        check("ensync-tokio", &seen, closed);
    });
}
