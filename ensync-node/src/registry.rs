//! The apps a node knows: those of the config file (the bootstrap, read-only at run time)
//! and those made at run time through the admin API (persisted by the backend).
//!
//! An app is an access key (what a client presents in `Connect`), an Ed25519 public key
//! (its identity: the recipient key others publish to and the `sender` of what it
//! publishes) and send/receive permission patterns. Apps are kept in slots that are never
//! reused, so a session's app index stays valid: a deleted app leaves an empty slot (its
//! sessions are ended by the service).

use std::collections::HashMap;
use std::sync::Arc;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::config::AppConfig;
use crate::perm::Permissions;

/// What kind of access key an app is (the EnSync config manager's `type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum KeyType {
    /// A service's key: it holds an Ed25519 key pair and exchanges events.
    Service,
    /// An account key.
    Account,
}

/// An app as the registry keeps it.
pub(crate) struct App {
    /// A stable id (`config:<name>` for apps of the config file).
    pub(crate) id: String,
    pub(crate) name: String,
    pub(crate) kind: KeyType,
    pub(crate) access_key: Zeroizing<String>,
    /// The public key's 32 bytes.
    pub(crate) public: [u8; 32],
    /// The public key, standard base64: the recipient part of the app's queue keys.
    pub(crate) key_text: Arc<str>,
    pub(crate) send: Permissions,
    pub(crate) receive: Permissions,
    pub(crate) send_patterns: Vec<String>,
    pub(crate) receive_patterns: Vec<String>,
    pub(crate) created_ms: u64,
    /// From the config file: not changed nor deleted at run time.
    pub(crate) from_config: bool,
}

/// What the backend persists of an app made at run time (JSON). Holds the access key:
/// the store is as secret as the config file.
#[derive(Clone, Serialize, Deserialize)]
pub(crate) struct AppRecord {
    pub(crate) id: String,
    pub(crate) name: String,
    pub(crate) kind: KeyType,
    pub(crate) access_key: String,
    pub(crate) public_key: String,
    pub(crate) send: Vec<String>,
    pub(crate) receive: Vec<String>,
    pub(crate) created_ms: u64,
}

impl std::fmt::Debug for AppRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppRecord")
            .field("id", &self.id)
            .field("name", &self.name)
            .field("public_key", &self.public_key)
            .finish_non_exhaustive()
    }
}

impl Drop for AppRecord {
    fn drop(&mut self) {
        use zeroize::Zeroize as _;
        self.access_key.zeroize();
    }
}

/// Why a registry change was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RegistryError {
    /// Bad input (the text says what).
    #[error("{0}")]
    Invalid(String),
    /// No app with this id or access key.
    #[error("{0}")]
    NotFound(String),
}

impl App {
    fn build(rec: &AppRecord, from_config: bool) -> Result<Self, (&'static str, String)> {
        let public =
            crate::keys::parse_public_key(&rec.public_key).map_err(|e| ("public_key", e))?;
        let send = Permissions::parse(&rec.send).map_err(|e| ("send", e))?;
        let receive = Permissions::parse(&rec.receive).map_err(|e| ("receive", e))?;
        Ok(App {
            id: rec.id.clone(),
            name: rec.name.clone(),
            kind: rec.kind,
            access_key: Zeroizing::new(rec.access_key.clone()),
            public,
            key_text: Arc::from(STANDARD.encode(public).as_str()),
            send,
            receive,
            send_patterns: rec.send.clone(),
            receive_patterns: rec.receive.clone(),
            created_ms: rec.created_ms,
            from_config,
        })
    }

    pub(crate) fn record(&self) -> AppRecord {
        AppRecord {
            id: self.id.clone(),
            name: self.name.clone(),
            kind: self.kind,
            access_key: self.access_key.to_string(),
            public_key: self.key_text.to_string(),
            send: self.send_patterns.clone(),
            receive: self.receive_patterns.clone(),
            created_ms: self.created_ms,
        }
    }
}

/// The apps, by slot.
#[derive(Default)]
pub(crate) struct Registry {
    slots: Vec<Option<App>>,
    by_key: HashMap<[u8; 32], usize>,
}

impl Registry {
    /// The apps of the config file (field errors name `apps[i].field`).
    pub(crate) fn from_config(
        apps: &[AppConfig],
        now_ms: u64,
    ) -> Result<Self, crate::config::ConfigError> {
        let mut reg = Registry::default();
        for (i, a) in apps.iter().enumerate() {
            let rec = AppRecord {
                id: format!("config:{}", a.name),
                name: a.name.clone(),
                kind: KeyType::Service,
                access_key: a.access_key.clone(),
                public_key: a.public_key.clone(),
                send: a.send.clone(),
                receive: a.receive.clone(),
                created_ms: now_ms,
            };
            let app = App::build(&rec, true).map_err(|(field, reason)| {
                crate::config::ConfigError::Field {
                    field: format!("apps[{i}].{field}"),
                    reason,
                }
            })?;
            reg.insert(app);
        }
        Ok(reg)
    }

    fn insert(&mut self, app: App) -> usize {
        let slot = self.slots.len();
        self.by_key.insert(app.public, slot);
        self.slots.push(Some(app));
        slot
    }

    /// Adds an app made at run time (checked as the admin API checks it).
    pub(crate) fn add(&mut self, rec: &AppRecord) -> Result<usize, RegistryError> {
        if rec.name.trim().is_empty() {
            return Err(RegistryError::Invalid("name is empty".into()));
        }
        if rec.access_key.is_empty() {
            return Err(RegistryError::Invalid("access key is empty".into()));
        }
        if self
            .apps()
            .any(|(_, a)| a.access_key.as_str() == rec.access_key)
        {
            return Err(RegistryError::Invalid("access key already in use".into()));
        }
        if self.apps().any(|(_, a)| a.id == rec.id) {
            return Err(RegistryError::Invalid(format!(
                "id {:?} already in use",
                rec.id
            )));
        }
        let app = App::build(rec, false)
            .map_err(|(field, reason)| RegistryError::Invalid(format!("{field}: {reason}")))?;
        if self.by_key.contains_key(&app.public) {
            return Err(RegistryError::Invalid(
                "public key already belongs to another app".into(),
            ));
        }
        Ok(self.insert(app))
    }

    /// Every live app with its slot.
    pub(crate) fn apps(&self) -> impl Iterator<Item = (usize, &App)> {
        self.slots
            .iter()
            .enumerate()
            .filter_map(|(i, a)| a.as_ref().map(|a| (i, a)))
    }

    /// The app in `slot`, if it still exists.
    pub(crate) fn get(&self, slot: usize) -> Option<&App> {
        self.slots.get(slot).and_then(|a| a.as_ref())
    }

    /// The slot of the app whose public key is `key`.
    pub(crate) fn by_public(&self, key: &[u8; 32]) -> Option<usize> {
        self.by_key.get(key).copied()
    }

    /// The slot of the app with this access key, comparing with every app's key in
    /// constant time (no early exit on a match).
    pub(crate) fn by_access_key(&self, access_key: &str) -> Option<usize> {
        let mut found = None;
        for (i, a) in self.apps() {
            if ct_eq(a.access_key.as_bytes(), access_key.as_bytes()) {
                found = Some(i);
            }
        }
        found
    }

    /// The slot of the run-time app with this id or access key, refusing config apps.
    pub(crate) fn editable(&self, slot: Option<usize>, what: &str) -> Result<usize, RegistryError> {
        let slot = slot.ok_or_else(|| RegistryError::NotFound(format!("no access key {what}")))?;
        match self.get(slot) {
            Some(a) if a.from_config => Err(RegistryError::Invalid(format!(
                "access key {what} is defined in the node's config file; change it there"
            ))),
            Some(_) => Ok(slot),
            None => Err(RegistryError::NotFound(format!("no access key {what}"))),
        }
    }

    /// The slot of the app with this id.
    pub(crate) fn by_id(&self, id: &str) -> Option<usize> {
        self.apps().find(|(_, a)| a.id == id).map(|(i, _)| i)
    }

    /// Removes the app in `slot`; returns its record.
    pub(crate) fn remove(&mut self, slot: usize) -> Option<AppRecord> {
        let app = self.slots.get_mut(slot)?.take()?;
        self.by_key.remove(&app.public);
        Some(app.record())
    }

    /// Replaces the permissions of the app in `slot`.
    pub(crate) fn set_permissions(
        &mut self,
        slot: usize,
        send: Vec<String>,
        receive: Vec<String>,
    ) -> Result<AppRecord, RegistryError> {
        let send_p =
            Permissions::parse(&send).map_err(|e| RegistryError::Invalid(format!("send: {e}")))?;
        let receive_p = Permissions::parse(&receive)
            .map_err(|e| RegistryError::Invalid(format!("receive: {e}")))?;
        let app = self
            .slots
            .get_mut(slot)
            .and_then(|a| a.as_mut())
            .ok_or_else(|| RegistryError::NotFound("no such access key".into()))?;
        app.send = send_p;
        app.receive = receive_p;
        app.send_patterns = send;
        app.receive_patterns = receive;
        Ok(app.record())
    }

    /// Replaces the run-time app in `slot` by `rec` (the same app as changed on another
    /// node), checked as [`Registry::add`] checks a new one; says what changed.
    pub(crate) fn replace(
        &mut self,
        slot: usize,
        rec: &AppRecord,
    ) -> Result<Replaced, RegistryError> {
        let new = App::build(rec, false)
            .map_err(|(field, reason)| RegistryError::Invalid(format!("{field}: {reason}")))?;
        let old = self
            .get(slot)
            .ok_or_else(|| RegistryError::NotFound("no such access key".into()))?;
        if old.from_config {
            return Err(RegistryError::Invalid(
                "the access key is defined in the node's config file".into(),
            ));
        }
        if rec.access_key.is_empty() {
            return Err(RegistryError::Invalid("access key is empty".into()));
        }
        if self
            .apps()
            .any(|(i, a)| i != slot && a.access_key.as_str() == rec.access_key)
        {
            return Err(RegistryError::Invalid("access key already in use".into()));
        }
        if self.by_key.get(&new.public).is_some_and(|s| *s != slot) {
            return Err(RegistryError::Invalid(
                "public key already belongs to another app".into(),
            ));
        }
        let changed = Replaced {
            identity: old.public != new.public
                || !ct_eq(old.access_key.as_bytes(), new.access_key.as_bytes()),
            permissions: old.send_patterns != new.send_patterns
                || old.receive_patterns != new.receive_patterns,
        };
        let old_public = old.public;
        self.by_key.remove(&old_public);
        self.by_key.insert(new.public, slot);
        self.slots[slot] = Some(new);
        Ok(changed)
    }

    /// Gives the app in `slot` a new public key (its identity from now on).
    pub(crate) fn set_public_key(
        &mut self,
        slot: usize,
        public_key: &str,
    ) -> Result<AppRecord, RegistryError> {
        let public = crate::keys::parse_public_key(public_key).map_err(RegistryError::Invalid)?;
        if self.by_key.get(&public).is_some_and(|s| *s != slot) {
            return Err(RegistryError::Invalid(
                "public key already belongs to another app".into(),
            ));
        }
        let app = self
            .slots
            .get_mut(slot)
            .and_then(|a| a.as_mut())
            .ok_or_else(|| RegistryError::NotFound("no such access key".into()))?;
        let old = app.public;
        app.public = public;
        app.key_text = Arc::from(STANDARD.encode(public).as_str());
        let rec = app.record();
        self.by_key.remove(&old);
        self.by_key.insert(public, slot);
        Ok(rec)
    }
}

/// What [`Registry::replace`] changed of an app.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Replaced {
    /// Its access key or public key: sessions opened as the old one must end.
    pub(crate) identity: bool,
    /// Its send or receive patterns.
    pub(crate) permissions: bool,
}

/// Constant-time equality of two byte strings (the length is not secret).
pub(crate) fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(id: &str, access: &str) -> AppRecord {
        AppRecord {
            id: id.into(),
            name: format!("app {id}"),
            kind: KeyType::Service,
            access_key: access.into(),
            public_key: crate::keys::generate().public_key,
            send: vec!["*".into()],
            receive: vec!["orders/*".into()],
            created_ms: 1,
        }
    }

    #[test]
    fn run_time_apps_are_added_changed_and_removed_config_apps_are_not() {
        let kp = crate::keys::generate();
        let boot = AppConfig::new("boot", "boot-access", kp.public_key.clone()).with_send(["*"]);
        let mut reg = Registry::from_config(&[boot], 0).unwrap();
        let a = reg.add(&rec("a", "a-access")).unwrap();
        assert_eq!(reg.by_access_key("a-access"), Some(a));
        assert_eq!(reg.by_access_key("boot-access"), Some(0));
        assert_eq!(reg.by_access_key("nope"), None);

        // Duplicates refused, nothing changed.
        assert!(matches!(
            reg.add(&rec("b", "a-access")),
            Err(RegistryError::Invalid(_))
        ));
        assert!(matches!(
            reg.add(&rec("a", "other")),
            Err(RegistryError::Invalid(_))
        ));
        let mut same_key = rec("c", "c-access");
        same_key.public_key = kp.public_key.clone();
        assert!(reg.add(&same_key).is_err());
        let mut bad = rec("d", "d-access");
        bad.send = vec!["a/*/b".into()];
        assert!(reg.add(&bad).is_err());
        assert_eq!(reg.apps().count(), 2);

        // Permissions replaced; bad patterns refused.
        reg.set_permissions(a, vec![], vec!["x".into()]).unwrap();
        assert!(!reg.get(a).unwrap().send.allows("x"));
        assert!(reg.get(a).unwrap().receive.allows("x"));
        assert!(reg.set_permissions(a, vec!["".into()], vec![]).is_err());

        // A new identity.
        let new = crate::keys::generate();
        reg.set_public_key(a, &new.public_key).unwrap();
        let key = crate::keys::parse_public_key(&new.public_key).unwrap();
        assert_eq!(reg.by_public(&key), Some(a));
        assert!(
            reg.set_public_key(a, &kp.public_key).is_err(),
            "the boot app's key"
        );

        // Config apps are not editable; removed apps leave their slot empty.
        assert!(matches!(
            reg.editable(Some(0), "boot"),
            Err(RegistryError::Invalid(_))
        ));
        assert_eq!(reg.editable(reg.by_id("a"), "a"), Ok(a));
        assert!(reg.remove(a).is_some());
        assert!(reg.get(a).is_none());
        assert_eq!(reg.by_access_key("a-access"), None);
        assert_eq!(reg.by_public(&key), None);
        assert!(matches!(
            reg.editable(reg.by_id("a"), "a"),
            Err(RegistryError::NotFound(_))
        ));
        let b = reg.add(&rec("b", "b-access")).unwrap();
        assert_ne!(a, b, "slots are never reused");
    }

    #[test]
    fn replace_says_what_changed_and_refuses_what_add_refuses() {
        let kp = crate::keys::generate();
        let boot = AppConfig::new("boot", "boot-access", kp.public_key.clone());
        let mut reg = Registry::from_config(&[boot], 0).unwrap();
        let first = rec("a", "a-access");
        let a = reg.add(&first).unwrap();
        let other = reg.add(&rec("b", "b-access")).unwrap();

        // The same record again: nothing changed.
        let same = reg.replace(a, &first).unwrap();
        assert_eq!(
            same,
            Replaced {
                identity: false,
                permissions: false
            }
        );

        let mut perms = first.clone();
        perms.send = vec![];
        perms.name = "renamed".into();
        let r = reg.replace(a, &perms).unwrap();
        assert!(r.permissions && !r.identity, "{r:?}");
        assert!(!reg.get(a).unwrap().send.allows("x"));
        assert_eq!(reg.get(a).unwrap().name, "renamed");

        let mut rotated = perms.clone();
        rotated.public_key = crate::keys::generate().public_key;
        let r = reg.replace(a, &rotated).unwrap();
        assert!(r.identity && !r.permissions, "{r:?}");
        let new_key = crate::keys::parse_public_key(&rotated.public_key).unwrap();
        let old_key = crate::keys::parse_public_key(&first.public_key).unwrap();
        assert_eq!(reg.by_public(&new_key), Some(a));
        assert_eq!(reg.by_public(&old_key), None);

        // Refused, nothing changed: another app's access key or public key, a bad
        // pattern, a config app.
        let mut taken = rotated.clone();
        taken.access_key = "b-access".into();
        assert!(reg.replace(a, &taken).is_err());
        let mut taken = rotated.clone();
        taken.public_key = reg.get(other).unwrap().key_text.to_string();
        assert!(reg.replace(a, &taken).is_err());
        taken.public_key = kp.public_key.clone();
        assert!(reg.replace(a, &taken).is_err());
        let mut bad = rotated.clone();
        bad.receive = vec!["a/*/b".into()];
        assert!(reg.replace(a, &bad).is_err());
        assert!(reg.replace(0, &rotated).is_err(), "config app");
        assert_eq!(reg.by_access_key("a-access"), Some(a));
        assert_eq!(reg.by_public(&new_key), Some(a));
    }

    #[test]
    fn records_do_not_show_their_access_key() {
        let r = rec("a", "very-secret-access");
        assert!(!format!("{r:?}").contains("very-secret-access"));
    }
}
