//! The node's own records (the admin API's access keys and event definitions) in a
//! JetStream key-value bucket every node of the deployment shares, and the watch that
//! tells each node what the others change.
//!
//! - The bucket is `<stream>_RECORDS` (so `KV_<stream>_RECORDS` as a stream), with the
//!   stream's replicas, file storage and a history of 1: only the latest value (or delete
//!   marker) of each key is kept. A write answers once a majority of the replicas has it.
//! - A record key becomes a bucket key with the characters a bucket key cannot hold
//!   escaped ([`encode_key`]).
//! - [`Records::snapshot`] reads every live key (one listing, then the values) and
//!   remembers the bucket's last sequence before it began and each key's revision;
//!   [`Records::watch`] starts from there, so nothing written meanwhile is missed and
//!   what the snapshot already answered is not repeated.
//! - The watch is an ordered consumer from a revision: while the cluster is unreachable
//!   it waits; once a server answers again it recreates itself from the last revision it
//!   saw and so reports, in order, every key changed meanwhile (with a history of 1, the
//!   latest state of each: the delete marker of a deleted key is kept). If the watch
//!   fails for another reason it is set up again from that same revision.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, kv};
use bytes::Bytes;
use futures::stream::BoxStream;
use futures::{StreamExt as _, TryStreamExt as _};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::{ATTEMPT, lock};
use crate::backend::{RecordChange, Revision};
use crate::service::ServiceError;

/// Values read at a time by [`Records::snapshot`].
const PARALLEL_READS: usize = 16;
/// How long [`Records::snapshot`] may take in all.
const SNAPSHOT_DEADLINE: Duration = Duration::from_secs(20);
/// Changes reported by the watch and not yet taken by the node.
const WATCH_BUFFER: usize = 256;
/// Longest pause between two attempts to set the watch up again.
const WATCH_BACKOFF_MAX: Duration = Duration::from_secs(2);
/// How often the watch looks at the connection (to start over once it is back).
const STATE_CHECK: Duration = Duration::from_millis(200);

/// The bucket of the stream `stream` (a valid bucket name for every valid stream name).
pub(crate) fn bucket_name(stream: &str) -> String {
    format!("{stream}_RECORDS")
}

/// A record key as a bucket key: letters, digits, `-`, `_` and `/` are kept, every
/// other byte is `=` and two upper-case hex digits. `None` for the empty key.
pub(crate) fn encode_key(key: &str) -> Option<String> {
    if key.is_empty() {
        return None;
    }
    let mut out = String::with_capacity(key.len());
    for b in key.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'/') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("={b:02X}"));
        }
    }
    Some(out)
}

/// The record key of a bucket key made by [`encode_key`]; `None` for any other text.
pub(crate) fn decode_key(key: &str) -> Option<String> {
    let mut bytes = Vec::with_capacity(key.len());
    let mut it = key.bytes();
    while let Some(b) = it.next() {
        if b == b'=' {
            let hi = char::from(it.next()?).to_digit(16)?;
            let lo = char::from(it.next()?).to_digit(16)?;
            bytes.push((hi * 16 + lo) as u8);
        } else if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'/') {
            bytes.push(b);
        } else {
            return None;
        }
    }
    let text = String::from_utf8(bytes).ok()?;
    // Only the one spelling encode_key makes (no lower-case hex, no escaped letters).
    (encode_key(&text).as_deref() == Some(key)).then_some(text)
}

/// Where a watch begins: the bucket's last sequence before the latest snapshot, and the
/// revision of every key that snapshot read.
struct Seed {
    after: Revision,
    seen: HashMap<String, Revision>,
}

/// The records bucket of one node.
pub(crate) struct Records {
    client: async_nats::Client,
    js: jetstream::Context,
    kv: kv::Store,
    seed: Mutex<Option<Seed>>,
    watcher: Mutex<Option<JoinHandle<()>>>,
}

impl Records {
    /// Creates the bucket of `stream` (or brings its replicas to `replicas`), retrying
    /// until `deadline` while the cluster has no JetStream leader.
    pub(crate) async fn open(
        client: async_nats::Client,
        js: jetstream::Context,
        stream: &str,
        replicas: usize,
        deadline: Instant,
    ) -> Result<Self, String> {
        let config = kv::Config {
            bucket: bucket_name(stream),
            description: format!(
                "EnSync access keys and event definitions of the nodes on stream {stream}"
            ),
            history: 1,
            max_value_size: -1,
            max_bytes: -1,
            storage: jetstream::stream::StorageType::File,
            num_replicas: replicas,
            ..Default::default()
        };
        loop {
            let err =
                match tokio::time::timeout(ATTEMPT, js.create_or_update_key_value(config.clone()))
                    .await
                {
                    Ok(Ok(kv)) => {
                        return Ok(Self {
                            client,
                            js,
                            kv,
                            seed: Mutex::new(None),
                            watcher: Mutex::new(None),
                        });
                    }
                    Ok(Err(e)) => e.to_string(),
                    Err(_) => "no answer in time".to_owned(),
                };
            if Instant::now() >= deadline {
                return Err(format!("records bucket {:?}: {err}", config.bucket));
            }
            tracing::warn!(bucket = %config.bucket, error = %err,
                "JetStream: records bucket not ready; retrying");
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// The bucket's stream answers within `wait` (for readiness).
    pub(crate) async fn answers(&self, wait: Duration) -> Result<(), String> {
        match tokio::time::timeout(wait, self.kv.stream.get_info()).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(format!("the records bucket does not answer: {e}")),
            Err(_) => Err("the records bucket does not answer in time".to_owned()),
        }
    }

    /// Every live record, in key order; also where the next [`Records::watch`] begins.
    pub(crate) async fn snapshot(&self) -> Result<Vec<(String, Vec<u8>)>, ServiceError> {
        let read = async {
            let after = self
                .kv
                .stream
                .get_info()
                .await
                .map_err(|e| e.to_string())?
                .state
                .last_sequence;
            let keys: Vec<String> = self
                .kv
                .keys()
                .await
                .map_err(|e| e.to_string())?
                .try_collect()
                .await
                .map_err(|e| e.to_string())?;
            let entries: Vec<(String, Result<Option<kv::Entry>, kv::EntryError>)> =
                futures::stream::iter(keys)
                    .map(|k| async move {
                        let entry = self.kv.entry(k.as_str()).await;
                        (k, entry)
                    })
                    .buffered(PARALLEL_READS)
                    .collect()
                    .await;
            let mut seen = HashMap::new();
            let mut out = Vec::new();
            for (raw, entry) in entries {
                let entry = entry.map_err(|e| format!("record {raw:?}: {e}"))?;
                let Some(entry) = entry else { continue };
                let Some(key) = decode_key(&raw) else {
                    tracing::warn!(
                        key = raw,
                        "JetStream: a records bucket key not ours; skipped"
                    );
                    continue;
                };
                seen.insert(key.clone(), entry.revision);
                if entry.operation == kv::Operation::Put {
                    out.push((key, entry.value.to_vec()));
                }
            }
            out.sort_by(|a, b| a.0.cmp(&b.0));
            *lock(&self.seed) = Some(Seed { after, seen });
            Ok::<_, String>(out)
        };
        match tokio::time::timeout(SNAPSHOT_DEADLINE, read).await {
            Ok(Ok(out)) => Ok(out),
            Ok(Err(e)) => Err(ServiceError::Storage(format!(
                "JetStream: cannot read the records: {e}"
            ))),
            Err(_) => Err(ServiceError::Storage(
                "JetStream: reading the records took too long".into(),
            )),
        }
    }

    /// Writes (`Some`) or deletes (`None`) `key`; answers its revision once a majority of
    /// the bucket's replicas has it.
    pub(crate) async fn put(
        &self,
        key: &str,
        value: Option<Vec<u8>>,
    ) -> Result<Revision, ServiceError> {
        let storage =
            |why: String| ServiceError::Storage(format!("JetStream: record not stored: {why}"));
        let raw = encode_key(key).ok_or_else(|| storage("empty key".into()))?;
        if self.client.connection_state() != async_nats::connection::State::Connected {
            return Err(storage("not connected to NATS".into()));
        }
        let write = async {
            match value {
                Some(v) => self
                    .kv
                    .put(raw.as_str(), Bytes::from(v))
                    .await
                    .map_err(|e| e.to_string()),
                None => {
                    // What `kv::Store::delete` sends, with the sequence kept.
                    let subject = format!(
                        "{}{raw}",
                        self.kv.put_prefix.as_ref().unwrap_or(&self.kv.prefix)
                    );
                    let mut headers = async_nats::HeaderMap::new();
                    headers.insert("KV-Operation", "DEL");
                    let ack = self
                        .js
                        .publish_with_headers(subject, headers, Bytes::new())
                        .await
                        .map_err(|e| e.to_string())?
                        .await
                        .map_err(|e| e.to_string())?;
                    Ok(ack.sequence)
                }
            }
        };
        match tokio::time::timeout(ATTEMPT, write).await {
            Ok(Ok(rev)) => Ok(rev),
            Ok(Err(e)) => Err(storage(e)),
            Err(_) => Err(storage("no ack in time".into())),
        }
    }

    /// Starts the watch (once; a second call answers `None`).
    pub(crate) fn watch(&self) -> Option<BoxStream<'static, RecordChange>> {
        let mut running = lock(&self.watcher);
        if running.is_some() {
            return None;
        }
        let (tx, rx) = mpsc::channel(WATCH_BUFFER);
        let seed = lock(&self.seed).take();
        *running = Some(tokio::spawn(watcher(
            self.client.clone(),
            self.kv.clone(),
            seed,
            tx,
        )));
        Some(tokio_stream::wrappers::ReceiverStream::new(rx).boxed())
    }

    /// Stops the watch (its stream ends).
    pub(crate) fn stop(&self) {
        if let Some(w) = lock(&self.watcher).as_ref() {
            w.abort();
        }
    }
}

impl Drop for Records {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Follows the bucket from `seed` (or from now), sending every change not older than
/// what was already seen of its key, until `tx` is closed or the task is aborted.
///
/// Once the connection comes back after it was lost, the watch is set up again from the
/// last revision seen (the ordered consumer would also do it by itself, but with pauses
/// of up to 10 s once its first attempts fail while the cluster elects its leaders).
async fn watcher(
    client: async_nats::Client,
    kv: kv::Store,
    seed: Option<Seed>,
    tx: mpsc::Sender<RecordChange>,
) {
    let connected = || client.connection_state() == async_nats::connection::State::Connected;
    let mut backoff = Duration::from_millis(100);
    let (mut next, mut seen) = match seed {
        Some(s) => (s.after + 1, s.seen),
        None => loop {
            match tokio::time::timeout(ATTEMPT, kv.stream.get_info()).await {
                Ok(Ok(info)) => break (info.state.last_sequence + 1, HashMap::new()),
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "JetStream: records watch cannot start yet")
                }
                Err(_) => tracing::warn!("JetStream: records watch cannot start yet: no answer"),
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(WATCH_BACKOFF_MAX);
        },
    };
    loop {
        let why = match tokio::time::timeout(ATTEMPT, kv.watch_all_from_revision(next)).await {
            Ok(Ok(mut watch)) => {
                backoff = Duration::from_millis(100);
                let mut was_down = false;
                loop {
                    let item = tokio::select! {
                        item = watch.next() => item,
                        () = tokio::time::sleep(STATE_CHECK) => {
                            if !connected() {
                                was_down = true;
                            } else if was_down {
                                break "the connection is back".to_owned();
                            }
                            continue;
                        }
                    };
                    let entry = match item {
                        Some(Ok(e)) => e,
                        Some(Err(e)) => break e.to_string(),
                        None => break "the watch ended".to_owned(),
                    };
                    next = entry.revision + 1;
                    let Some(key) = decode_key(&entry.key) else {
                        tracing::warn!(
                            key = entry.key,
                            "JetStream: a records bucket key not ours; skipped"
                        );
                        continue;
                    };
                    if seen.get(&key).is_some_and(|r| *r >= entry.revision) {
                        continue;
                    }
                    seen.insert(key.clone(), entry.revision);
                    let value = match entry.operation {
                        kv::Operation::Put => Some(entry.value.to_vec()),
                        kv::Operation::Delete | kv::Operation::Purge => None,
                    };
                    let change = RecordChange {
                        key,
                        value,
                        revision: entry.revision,
                    };
                    if tx.send(change).await.is_err() {
                        return;
                    }
                }
            }
            Ok(Err(e)) => e.to_string(),
            Err(_) => "no answer in time".to_owned(),
        };
        if tx.is_closed() {
            return;
        }
        tracing::warn!(error = %why, from = next, "JetStream: records watch interrupted; resuming");
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(WATCH_BACKOFF_MAX);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_escape_and_come_back() {
        for key in [
            "app/0123abcd",
            "event/x",
            "config:boot",
            "a.b",
            "=",
            "sp ace",
            "é/ü",
            "..",
            "-_/",
        ] {
            let raw = encode_key(key).unwrap();
            assert!(
                raw.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_/=".contains(&b)),
                "{raw}"
            );
            assert_eq!(decode_key(&raw).as_deref(), Some(key), "{raw}");
        }
        assert_eq!(encode_key("app/ab").unwrap(), "app/ab");
        assert_eq!(encode_key("a.b").unwrap(), "a=2Eb");
        assert_eq!(encode_key(""), None);
        for bad in ["a=2eb", "a=2", "a=G0", "a.b", "a=61", "=FF"] {
            assert_eq!(decode_key(bad), None, "{bad}");
        }
    }

    #[test]
    fn every_stream_name_makes_a_bucket_name() {
        assert_eq!(bucket_name("ENSYNC"), "ENSYNC_RECORDS");
        let b = bucket_name("T1_2-x");
        assert!(
            b.bytes()
                .all(|c| c.is_ascii_alphanumeric() || b"-_".contains(&c))
        );
    }
}
