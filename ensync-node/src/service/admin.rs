//! Run-time administration: access keys (apps) and event definitions made, changed and
//! deleted while the node runs, with effect on the next operation of every session, and
//! persisted in the backend (records `app/<id>` and `event/<id>`, JSON).
//!
//! Every change is written durably first and applied in memory after, so a failed write
//! changes nothing. Changes are serialized (one at a time). Apps of the config file are
//! listed but not changed at run time.
//!
//! On a backend several nodes share (JetStream), the changes any node makes come back
//! through [`crate::backend::Backend::watch_records`] and are applied here as if made
//! locally (a new key connects, changed permissions hold from the next operation, a
//! deleted key's sessions end, a new key pair is the identity). Each record's last
//! applied revision is kept, so this node's own changes coming back, and changes older
//! than what is applied, change nothing. Two nodes changing one key at the same moment:
//! the change the backend orders last wins everywhere (a change racing a delete of the
//! same key can bring it back).

use std::collections::HashMap;
use std::sync::{Arc, Weak};

use futures::StreamExt as _;
use futures::stream::BoxStream;
use serde::{Deserialize, Serialize};

use super::{NodeService, ServiceError, StreamEnd, now_ms, random_id, read, write};
use crate::backend::{RecordChange, Revision};
use crate::registry::{AppRecord, KeyType, RegistryError};

/// Why an administrative call was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AdminError {
    /// Bad input; the text says what (HTTP 400).
    #[error("{0}")]
    Invalid(String),
    /// No such access key or event (HTTP 404).
    #[error("{0}")]
    NotFound(String),
    /// The backend could not persist the change; nothing was changed (HTTP 503).
    #[error("{0}")]
    Storage(String),
}

impl From<RegistryError> for AdminError {
    fn from(e: RegistryError) -> Self {
        match e {
            RegistryError::Invalid(m) => AdminError::Invalid(m),
            RegistryError::NotFound(m) => AdminError::NotFound(m),
        }
    }
}

impl From<ServiceError> for AdminError {
    fn from(e: ServiceError) -> Self {
        AdminError::Storage(e.to_string())
    }
}

/// An access key (app) as the admin API shows it. Holds the access key itself (what the
/// EnSync config manager shows its admin), never a private key.
#[derive(Clone, PartialEq, Eq)]
pub struct AccessKeyInfo {
    /// Its id.
    pub id: String,
    /// The access key a client presents in `Connect`.
    pub access_key: String,
    /// Its name.
    pub name: String,
    /// `SERVICE` or `ACCOUNT`.
    pub kind: KeyType,
    /// When it was made (apps of the config file: when the node started), epoch ms.
    pub created_ms: u64,
    /// Event-name patterns it may publish.
    pub send: Vec<String>,
    /// Event-name patterns it may receive.
    pub receive: Vec<String>,
    /// Its Ed25519 public key, standard base64.
    pub public_key: String,
    /// Defined in the config file (not changed at run time).
    pub from_config: bool,
}

impl std::fmt::Debug for AccessKeyInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AccessKeyInfo")
            .field("id", &self.id)
            .field("name", &self.name)
            .field("public_key", &self.public_key)
            .finish_non_exhaustive()
    }
}

/// An event definition (the EnSync config manager's events: a name and a payload schema,
/// `{field: type}`). Informational: routing and permissions go by name only.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventDefinition {
    /// Its id (path-safe).
    pub id: String,
    /// The event name.
    pub name: String,
    /// The payload schema as given.
    pub payload: serde_json::Map<String, serde_json::Value>,
    /// Epoch ms.
    pub created_ms: u64,
    /// Epoch ms.
    pub updated_ms: u64,
}

const APP: &str = "app/";
const EVENT: &str = "event/";

impl NodeService {
    /// Loads the access keys and event definitions persisted in the backend (call once,
    /// after start; [`crate::Node::start`] does). A record that cannot be read is
    /// skipped with an error logged.
    pub async fn load_admin_records(&self) -> Result<(), ServiceError> {
        let _one = self.inner.admin.lock().await;
        let records = self.inner.backend.records().await?;
        let (mut apps, mut events) = (0usize, 0usize);
        for (key, value) in records {
            if let Some(id) = key.strip_prefix(APP) {
                let added = serde_json::from_slice::<AppRecord>(&value)
                    .map_err(|e| json_error(&e))
                    .and_then(|rec| write(&self.inner.apps).add(&rec).map_err(|e| e.to_string()));
                match added {
                    Ok(_) => apps += 1,
                    Err(e) => tracing::error!(id, error = %e, "access key record skipped"),
                }
            } else if let Some(id) = key.strip_prefix(EVENT) {
                match serde_json::from_slice::<EventDefinition>(&value) {
                    Ok(def) => {
                        lock_events(self).push(def);
                        events += 1;
                    }
                    Err(e) => tracing::error!(id, error = %e, "event definition record skipped"),
                }
            }
        }
        if apps + events > 0 {
            tracing::info!(
                access_keys = apps,
                events,
                "loaded run-time access keys and events"
            );
        }
        Ok(())
    }

    /// Whether the node can serve: not shutting down, and its backend can reach its
    /// store ([`crate::backend::Backend::ready`]; the error says why not).
    pub async fn ready(&self) -> Result<(), ServiceError> {
        if super::lock(&self.inner.state).closed {
            return Err(ServiceError::ShuttingDown);
        }
        self.inner
            .backend
            .ready()
            .await
            .map_err(ServiceError::Storage)
    }

    /// Every access key, config-file ones first, then in the order they were made.
    pub fn admin_keys(&self) -> Vec<AccessKeyInfo> {
        read(&self.inner.apps)
            .apps()
            .map(|(_, a)| info(a))
            .collect()
    }

    /// The access key with this id.
    pub fn admin_key(&self, id: &str) -> Option<AccessKeyInfo> {
        let apps = read(&self.inner.apps);
        apps.by_id(id).and_then(|s| apps.get(s)).map(info)
    }

    /// The access key whose key text is `access_key`.
    pub fn admin_key_by_access(&self, access_key: &str) -> Option<AccessKeyInfo> {
        let apps = read(&self.inner.apps);
        apps.by_access_key(access_key)
            .and_then(|s| apps.get(s))
            .map(info)
    }

    /// Makes an access key with a generated key pair (its identity): it can `Connect`
    /// at once and is held to `send` / `receive`. Returns it and the pair (the only time
    /// the secret key is shown).
    pub async fn admin_create_key(
        &self,
        kind: KeyType,
        name: &str,
        send: Vec<String>,
        receive: Vec<String>,
    ) -> Result<(AccessKeyInfo, crate::keys::KeyPair), AdminError> {
        let mut applied = self.inner.admin.lock().await;
        let pair = crate::keys::generate();
        let rec = AppRecord {
            id: random_id(),
            name: name.trim().to_owned(),
            kind,
            access_key: random_id(),
            public_key: pair.public_key.clone(),
            send,
            receive,
            created_ms: now_ms(),
        };
        // Checked on a copy first: nothing is persisted for a refused key.
        check(self, &rec)?;
        let rev = self.persist_app(&rec).await?;
        let slot = write(&self.inner.apps).add(&rec)?;
        note(&mut applied, format!("{APP}{}", rec.id), rev);
        let apps = read(&self.inner.apps);
        let a = apps.get(slot).ok_or_else(|| {
            AdminError::Storage("the access key vanished while it was made".into())
        })?;
        tracing::info!(name = %a.name, id = %a.id, "access key created");
        Ok((info(a), pair))
    }

    /// Deletes the access key with this id: it can no longer connect, and its live
    /// sessions end now (their streams end with an error; held events go back to their
    /// queues). Events queued for it stay in the backend.
    pub async fn admin_delete_key(&self, id: &str) -> Result<(), AdminError> {
        let mut applied = self.inner.admin.lock().await;
        let slot = {
            let apps = read(&self.inner.apps);
            apps.editable(apps.by_id(id), &format!("{id:?}"))?
        };
        let key = format!("{APP}{id}");
        let rev = self.inner.backend.put_record(&key, None).await?;
        let removed = write(&self.inner.apps).remove(slot);
        note(&mut applied, key, rev);
        self.end_sessions_of(slot);
        if let Some(rec) = removed {
            tracing::info!(name = %rec.name, id, "access key deleted");
        }
        Ok(())
    }

    /// Replaces the permissions of the access key `access_key`; the next operation of
    /// each of its live sessions is checked against them (open subscriptions to names no
    /// longer allowed end).
    pub async fn admin_set_permissions(
        &self,
        access_key: &str,
        send: Vec<String>,
        receive: Vec<String>,
    ) -> Result<AccessKeyInfo, AdminError> {
        let mut applied = self.inner.admin.lock().await;
        let (slot, mut rec) = self.editable_by_access(access_key)?;
        rec.send = send;
        rec.receive = receive;
        crate::perm::Permissions::parse(&rec.send)
            .map_err(|e| AdminError::Invalid(format!("send: {e}")))?;
        crate::perm::Permissions::parse(&rec.receive)
            .map_err(|e| AdminError::Invalid(format!("receive: {e}")))?;
        let rev = self.persist_app(&rec).await?;
        write(&self.inner.apps).set_permissions(slot, rec.send.clone(), rec.receive.clone())?;
        note(&mut applied, format!("{APP}{}", rec.id), rev);
        self.end_forbidden_subscriptions(slot);
        self.admin_key_by_access(access_key)
            .ok_or_else(|| AdminError::NotFound("the access key was deleted meanwhile".into()))
    }

    /// Gives the access key `access_key` a new generated key pair: from now on its
    /// identity (recipient key and sender) is the new public key. Its live sessions end
    /// (a client must reconnect with the new secret key to read what is sent to it).
    /// Events queued for the old public key stay in the backend under that key: they
    /// are not delivered to the new identity (the new secret key cannot read them), and
    /// are delivered again only to an app holding the old key.
    pub async fn admin_rotate_key(
        &self,
        access_key: &str,
    ) -> Result<crate::keys::KeyPair, AdminError> {
        let mut applied = self.inner.admin.lock().await;
        let (slot, mut rec) = self.editable_by_access(access_key)?;
        let pair = crate::keys::generate();
        rec.public_key = pair.public_key.clone();
        let rev = self.persist_app(&rec).await?;
        write(&self.inner.apps).set_public_key(slot, &pair.public_key)?;
        note(&mut applied, format!("{APP}{}", rec.id), rev);
        self.end_sessions_of(slot);
        tracing::info!(id = %rec.id, "access key given a new key pair");
        Ok(pair)
    }

    /// Every event definition, in the order they were made.
    pub fn admin_events(&self) -> Vec<EventDefinition> {
        lock_events(self).clone()
    }

    /// The event definition with this id or name.
    pub fn admin_event(&self, id_or_name: &str) -> Option<EventDefinition> {
        lock_events(self)
            .iter()
            .find(|e| e.id == id_or_name || e.name == id_or_name)
            .cloned()
    }

    /// Defines an event (`name` must be a valid, new event name).
    pub async fn admin_create_event(
        &self,
        name: &str,
        payload: serde_json::Map<String, serde_json::Value>,
    ) -> Result<EventDefinition, AdminError> {
        let mut applied = self.inner.admin.lock().await;
        ensync_proto::validate::event_name(name).map_err(|e| AdminError::Invalid(e.to_string()))?;
        if lock_events(self).iter().any(|e| e.name == name) {
            return Err(AdminError::Invalid(format!(
                "event {name:?} already exists"
            )));
        }
        let now = now_ms();
        let def = EventDefinition {
            id: random_id(),
            name: name.to_owned(),
            payload,
            created_ms: now,
            updated_ms: now,
        };
        let rev = self.persist_event(&def).await?;
        lock_events(self).push(def.clone());
        note(&mut applied, format!("{EVENT}{}", def.id), rev);
        Ok(def)
    }

    /// Changes an event definition; an empty `name` or `payload` keeps the old one.
    pub async fn admin_update_event(
        &self,
        id: &str,
        name: &str,
        payload: serde_json::Map<String, serde_json::Value>,
    ) -> Result<EventDefinition, AdminError> {
        let mut applied = self.inner.admin.lock().await;
        let mut def = self
            .admin_event(id)
            .ok_or_else(|| AdminError::NotFound(format!("no event {id:?}")))?;
        if !name.is_empty() && name != def.name {
            ensync_proto::validate::event_name(name)
                .map_err(|e| AdminError::Invalid(e.to_string()))?;
            if lock_events(self).iter().any(|e| e.name == name) {
                return Err(AdminError::Invalid(format!(
                    "event {name:?} already exists"
                )));
            }
            def.name = name.to_owned();
        }
        if !payload.is_empty() {
            def.payload = payload;
        }
        def.updated_ms = now_ms();
        let rev = self.persist_event(&def).await?;
        let mut events = lock_events(self);
        if let Some(slot) = events.iter_mut().find(|e| e.id == def.id) {
            *slot = def.clone();
        }
        note(&mut applied, format!("{EVENT}{}", def.id), rev);
        Ok(def)
    }

    fn editable_by_access(&self, access_key: &str) -> Result<(usize, AppRecord), AdminError> {
        let apps = read(&self.inner.apps);
        let slot = apps.editable(apps.by_access_key(access_key), "given")?;
        let rec = apps
            .get(slot)
            .map(|a| a.record())
            .ok_or_else(|| AdminError::NotFound("no such access key".into()))?;
        Ok((slot, rec))
    }

    async fn persist_app(&self, rec: &AppRecord) -> Result<Revision, AdminError> {
        let value = serde_json::to_vec(rec).map_err(|e| AdminError::Storage(e.to_string()))?;
        let value = zeroize::Zeroizing::new(value);
        Ok(self
            .inner
            .backend
            .put_record(&format!("{APP}{}", rec.id), Some(value.to_vec()))
            .await?)
    }

    async fn persist_event(&self, def: &EventDefinition) -> Result<Revision, AdminError> {
        let value = serde_json::to_vec(def).map_err(|e| AdminError::Storage(e.to_string()))?;
        Ok(self
            .inner
            .backend
            .put_record(&format!("{EVENT}{}", def.id), Some(value))
            .await?)
    }

    /// Applies a record change reported by the backend's watch (made by this node or
    /// another), unless what is applied of that record is as new or newer.
    async fn apply_change(&self, change: RecordChange) {
        let mut applied = self.inner.admin.lock().await;
        if applied
            .get(&change.key)
            .is_some_and(|r| *r >= change.revision)
        {
            return;
        }
        let RecordChange {
            key,
            value,
            revision,
        } = change;
        let value = value.map(zeroize::Zeroizing::new);
        if let Some(id) = key.strip_prefix(APP) {
            self.apply_app(id, value.as_ref().map(|v| v.as_slice()));
        } else if let Some(id) = key.strip_prefix(EVENT) {
            self.apply_event(id, value.as_ref().map(|v| v.as_slice()));
        }
        note(&mut applied, key, revision);
    }

    /// An access key made, changed (`Some`) or deleted (`None`) through the admin API of
    /// any node of the deployment.
    fn apply_app(&self, id: &str, value: Option<&[u8]>) {
        let Some(value) = value else {
            let slot = {
                let apps = read(&self.inner.apps);
                apps.by_id(id)
                    .filter(|s| apps.get(*s).is_some_and(|a| !a.from_config))
            };
            if let Some(slot) = slot {
                let removed = write(&self.inner.apps).remove(slot);
                self.end_sessions_of(slot);
                if let Some(rec) = removed {
                    tracing::info!(name = %rec.name, id, "access key deleted (by another node)");
                }
            }
            return;
        };
        let rec = match serde_json::from_slice::<AppRecord>(value) {
            Ok(rec) if rec.id == id => rec,
            Ok(_) => {
                tracing::error!(id, "access key record under another id; skipped");
                return;
            }
            Err(e) => {
                let error = json_error(&e);
                tracing::error!(id, error, "access key record cannot be read; skipped");
                return;
            }
        };
        let slot = read(&self.inner.apps).by_id(id);
        match slot {
            None => {
                let added = write(&self.inner.apps).add(&rec);
                match added {
                    Ok(_) => {
                        tracing::info!(name = %rec.name, id, "access key created (by another node)");
                    }
                    Err(e) => tracing::error!(id, error = %e, "access key record skipped"),
                }
            }
            Some(slot) => {
                let replaced = write(&self.inner.apps).replace(slot, &rec);
                match replaced {
                    Ok(r) if r.identity => {
                        self.end_sessions_of(slot);
                        tracing::info!(id, "access key given a new identity (by another node)");
                    }
                    Ok(r) if r.permissions => {
                        self.end_forbidden_subscriptions(slot);
                        tracing::info!(id, "access key permissions changed (by another node)");
                    }
                    Ok(_) => {}
                    Err(e) => tracing::error!(id, error = %e, "access key record skipped"),
                }
            }
        }
    }

    /// An event definition made or changed (`Some`) or deleted (`None`) by any node.
    fn apply_event(&self, id: &str, value: Option<&[u8]>) {
        let mut events = lock_events(self);
        let Some(value) = value else {
            events.retain(|e| e.id != id);
            return;
        };
        match serde_json::from_slice::<EventDefinition>(value) {
            Ok(def) if def.id == id => match events.iter_mut().find(|e| e.id == def.id) {
                Some(slot) => *slot = def,
                None => events.push(def),
            },
            Ok(_) => tracing::error!(id, "event definition record under another id; skipped"),
            Err(e) => {
                let error = json_error(&e);
                tracing::error!(id, error, "event definition record skipped");
            }
        }
    }

    /// Ends every live session of the app in `slot`.
    fn end_sessions_of(&self, slot: usize) {
        let sessions: Vec<Arc<str>> = super::lock(&self.inner.state)
            .sessions
            .iter()
            .filter(|(_, s)| s.app == slot)
            .map(|(id, _)| id.clone())
            .collect();
        for id in sessions {
            self.inner.end_session(&id, StreamEnd::SessionEnded);
        }
    }

    /// Ends the subscriptions of the app in `slot` to names it may no longer receive.
    fn end_forbidden_subscriptions(&self, slot: usize) {
        let mut st = super::lock(&self.inner.state);
        let forbidden: Vec<u64> = st
            .subs
            .iter()
            .filter(|(_, sub)| {
                st.sessions.get(&sub.session).is_some_and(|s| s.app == slot)
                    && self.inner.check_receive(slot, &sub.key.name).is_err()
            })
            .map(|(stream, _)| *stream)
            .collect();
        for stream in forbidden {
            st.remove_sub(stream, Some(StreamEnd::Unsubscribed));
            st.return_where(&*self.inner.backend, |f| {
                f.stream == stream || f.sub == stream
            });
        }
    }
}

/// Why a record is not JSON of its kind, without any of its text (an access key record
/// holds a secret, which serde's messages may quote).
fn json_error(e: &serde_json::Error) -> String {
    format!(
        "{:?} error at line {} column {}",
        e.classify(),
        e.line(),
        e.column()
    )
}

/// Records that the change at `rev` of `key` is applied (revisions only go up).
fn note(applied: &mut HashMap<String, Revision>, key: String, rev: Revision) {
    let r = applied.entry(key).or_insert(rev);
    *r = (*r).max(rev);
}

/// Applies the record changes of `changes` (the backend's watch) for as long as the
/// service lives.
pub(super) async fn follow_records(
    inner: Weak<super::Inner>,
    mut changes: BoxStream<'static, RecordChange>,
) {
    while let Some(change) = changes.next().await {
        let Some(inner) = inner.upgrade() else { return };
        NodeService { inner }.apply_change(change).await;
    }
}

fn lock_events(svc: &NodeService) -> std::sync::MutexGuard<'_, Vec<EventDefinition>> {
    super::lock(&svc.inner.events)
}

/// Whether `rec` would be accepted, without changing anything.
fn check(svc: &NodeService, rec: &AppRecord) -> Result<(), AdminError> {
    let apps = read(&svc.inner.apps);
    if apps.by_access_key(&rec.access_key).is_some() || apps.by_id(&rec.id).is_some() {
        return Err(AdminError::Invalid(
            "generated key collided; try again".into(),
        ));
    }
    if rec.name.is_empty() {
        return Err(AdminError::Invalid("name is empty".into()));
    }
    crate::perm::Permissions::parse(&rec.send)
        .map_err(|e| AdminError::Invalid(format!("permissions.send: {e}")))?;
    crate::perm::Permissions::parse(&rec.receive)
        .map_err(|e| AdminError::Invalid(format!("permissions.receive: {e}")))?;
    Ok(())
}

fn info(a: &crate::registry::App) -> AccessKeyInfo {
    AccessKeyInfo {
        id: a.id.clone(),
        access_key: a.access_key.to_string(),
        name: a.name.clone(),
        kind: a.kind,
        created_ms: a.created_ms,
        send: a.send_patterns.clone(),
        receive: a.receive_patterns.clone(),
        public_key: a.key_text.to_string(),
        from_config: a.from_config,
    }
}
