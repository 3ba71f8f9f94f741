//! Deliveries: streamed events to the application (decryption, duplicate filtering),
//! manual and automatic acknowledgement, defer, discard and replay of events.

use super::*;

impl Session {
    /// Acknowledges an event (manual ack). If the ack fails (refused, timed out, or
    /// lost with the connection), the event counts as not handled: a redelivery of it is
    /// handed over again, also one that arrived while the answer was awaited
    /// ([`Session::discard`] likewise).
    pub fn ack(
        &mut self,
        event_name: &str,
        idem: &str,
        block: i64,
        now: Instant,
    ) -> Result<OpId, SessionError> {
        let now = self.clock(now);
        self.check_event_command(event_name, idem)?;
        self.settle(event_name, idem, false);
        let request = Request::Ack(wire::AcknowledgeRequest {
            client_id: String::new(),
            event_idem: idem.to_owned(),
            event_name: event_name.to_owned(),
            partition_block: block,
        });
        Ok(self.submit_one(OpKind::Ack, request, now))
    }

    /// Defers an event: the node delivers it again after `delay` (1 s ..= 24 h).
    pub fn defer(
        &mut self,
        event_name: &str,
        idem: &str,
        delay: Duration,
        reason: &str,
        now: Instant,
    ) -> Result<OpId, SessionError> {
        let now = self.clock(now);
        self.check_event_command(event_name, idem)?;
        let delay_ms = validate::defer_delay(delay)?;
        self.settle(event_name, idem, true);
        let request = defer_request(event_name, idem, delay_ms, reason);
        Ok(self.submit_one(OpKind::Defer, request, now))
    }

    /// Discards an event: it is never delivered again.
    pub fn discard(
        &mut self,
        event_name: &str,
        idem: &str,
        reason: &str,
        now: Instant,
    ) -> Result<OpId, SessionError> {
        let now = self.clock(now);
        self.check_event_command(event_name, idem)?;
        self.settle(event_name, idem, false);
        let request = Request::Discard(wire::DiscardRequest {
            client_id: String::new(),
            event_idem: idem.to_owned(),
            event_name: event_name.to_owned(),
            reason: reason.to_owned(),
        });
        Ok(self.submit_one(OpKind::Discard, request, now))
    }

    /// Fetches a stored event again; completes with [`OpOutcome::Replayed`] holding the
    /// payload decrypted with the subscription's key (or the session's key).
    pub fn replay(
        &mut self,
        event_name: &str,
        idem: &str,
        now: Instant,
    ) -> Result<OpId, SessionError> {
        let now = self.clock(now);
        self.check_event_command(event_name, idem)?;
        let key = self
            .subs
            .get(event_name)
            .and_then(|s| s.key.clone())
            .or_else(|| self.config.secret_key.clone());
        let request = Request::Replay(wire::ReplayRequest {
            client_id: String::new(),
            event_idem: idem.to_owned(),
            event_name: event_name.to_owned(),
        });
        Ok(self.submit_one(OpKind::Replay { key }, request, now))
    }

    /// Reports that the application's handler of a delivery finished.
    ///
    /// `Ok` on an auto-ack subscription acknowledges the event (when it has an id and a
    /// non-zero block). `Failed` never acknowledges; the event is forgotten by the
    /// duplicate filter (so a redelivery is handed over again) and, on an auto-ack
    /// subscription, deferred by `handler_failure_redelivery_delay` so the node
    /// delivers it again soon. If the connection was lost since the delivery, nothing
    /// is sent: the node delivers the event again, and a redelivery of an event whose
    /// handler finished OK is acknowledged silently. If the application acked, deferred
    /// or discarded the event itself (through [`Session::ack`], [`Session::defer`],
    /// [`Session::discard`]) nothing automatic happens; after a defer the node's
    /// redelivery is handed over again. Unknown tokens are ignored.
    pub fn handler_finished(
        &mut self,
        delivery: DeliveryToken,
        outcome: HandlerOutcome,
        now: Instant,
    ) {
        let now = self.clock(now);
        self.handler_finished_inner(delivery, outcome, now);
        self.settle_closing(now);
    }

    pub(super) fn handler_finished_inner(
        &mut self,
        delivery: DeliveryToken,
        outcome: HandlerOutcome,
        now: Instant,
    ) {
        let Some(info) = self.deliveries.remove(&delivery) else {
            return;
        };
        // An event the app settled itself (ack, defer, discard) was handled, whatever
        // the handler returned afterwards: it is not handed over again, and no automatic
        // action follows (`live` below is false for it).
        let outcome = if info.settled {
            HandlerOutcome::Ok
        } else {
            outcome
        };
        let key = (info.event_name.clone(), info.idem.clone());
        let (seen_epoch, block) = match self.dedup.get(&key) {
            Some(e) if e.running == Some(delivery) => (e.seen_epoch, e.block),
            _ => (info.epoch, info.block),
        };
        let live = self.is_connected() && seen_epoch == self.epoch && !info.settled;
        match outcome {
            HandlerOutcome::Ok => {
                if let Some(e) = self.dedup.get_mut(&key) {
                    if e.running == Some(delivery) {
                        e.running = None;
                        e.done_ok = true;
                    }
                }
                let acked_here = self
                    .dedup
                    .get(&key)
                    .is_some_and(|e| e.acked_epoch == Some(self.epoch));
                if live && info.auto_ack && !info.idem.is_empty() && block != 0 && !acked_here {
                    if let Some(e) = self.dedup.get_mut(&key) {
                        e.acked_epoch = Some(self.epoch);
                    }
                    self.internal_ack(&info.event_name, &info.idem, block, now);
                }
            }
            HandlerOutcome::Failed => {
                if self
                    .dedup
                    .get(&key)
                    .is_some_and(|e| e.running == Some(delivery))
                {
                    self.dedup.remove(&key);
                }
                if live && info.auto_ack && !info.idem.is_empty() {
                    let delay = validate::defer_delay(self.config.handler_failure_redelivery_delay)
                        .unwrap_or(1000);
                    let request =
                        defer_request(&info.event_name, &info.idem, delay, "handler failed");
                    let internal = InternalInfo {
                        event_name: info.event_name,
                        idem: info.idem,
                    };
                    self.submit(
                        OpKind::Defer,
                        vec![Part {
                            request,
                            state: PartState::Queued,
                        }],
                        Some(internal),
                        now,
                    );
                }
            }
        }
    }

    /// The application acts on an event itself: its running deliveries get no automatic
    /// ack or defer; a defer also forgets it in the duplicate filter, so the node's
    /// redelivery is handed over again.
    pub(super) fn settle(&mut self, event_name: &str, idem: &str, forget: bool) {
        for info in self.deliveries.values_mut() {
            if info.event_name == event_name && info.idem == idem {
                info.settled = true;
            }
        }
        let key = (event_name.to_owned(), idem.to_owned());
        if forget {
            self.dedup.remove(&key);
        } else {
            let epoch = self.is_connected().then_some(self.epoch);
            if let Some(e) = self.dedup.get_mut(&key) {
                e.settling = true;
                if epoch.is_some() {
                    e.acked_epoch = epoch;
                }
            }
        }
    }

    /// The node answered an ack or discard the application asked for. A failure (the
    /// node refused it, or the connection was lost on the way) leaves the event
    /// unhandled: the duplicate filter forgets it, so the node's redelivery is handed
    /// over again, also one that arrived while the answer was awaited. On success such a
    /// redelivery is dropped (the settlement covered it).
    pub(super) fn app_settle_answered(&mut self, event_name: &str, idem: &str, ok: bool) {
        let key = (event_name.to_owned(), idem.to_owned());
        let Some(entry) = self.dedup.get_mut(&key) else {
            return;
        };
        entry.settling = false;
        let parked = entry.parked.take();
        if ok {
            return;
        }
        self.dedup.remove(&key);
        if let Some(p) = parked {
            let now = self.now;
            self.handle_item(p.event, p.timestamp, now);
        }
    }

    pub(super) fn internal_ack(&mut self, event_name: &str, idem: &str, block: i64, now: Instant) {
        let request = Request::Ack(wire::AcknowledgeRequest {
            client_id: String::new(),
            event_idem: idem.to_owned(),
            event_name: event_name.to_owned(),
            partition_block: block,
        });
        let internal = InternalInfo {
            event_name: event_name.to_owned(),
            idem: idem.to_owned(),
        };
        let parts = vec![Part {
            request,
            state: PartState::Queued,
        }];
        self.submit(OpKind::Ack, parts, Some(internal), now);
    }

    pub(super) fn handle_item(
        &mut self,
        event: wire::EventStreamResponse,
        timestamp: Option<i64>,
        now: Instant,
    ) {
        if !self.is_connected() {
            return;
        }
        let Some(sub) = self.subs.get(&event.event_name) else {
            return;
        };
        let auto_ack = sub.auto_ack;
        let eligible = auto_ack && !event.event_idem.is_empty() && event.partition_block != 0;
        let key = (event.event_name.clone(), event.event_idem.clone());
        if !event.event_idem.is_empty() {
            if let Some(entry) = self.dedup.get_mut(&key) {
                entry.seen_epoch = self.epoch;
                entry.block = event.partition_block;
                // The application's ack or discard of it awaits its answer: decided
                // then (handed over again if it fails).
                if entry.settling {
                    entry.parked = Some(Box::new(Parked { event, timestamp }));
                    return;
                }
                // At most one ack per event per connection: a second delivery of it in
                // this connection (a defer racing a redelivery) is not acked again.
                if entry.done_ok && eligible && entry.acked_epoch != Some(self.epoch) {
                    entry.acked_epoch = Some(self.epoch);
                    self.internal_ack(
                        &event.event_name,
                        &event.event_idem,
                        event.partition_block,
                        now,
                    );
                }
                return;
            }
        }
        let key_ref = sub.key.clone().or_else(|| self.config.secret_key.clone());
        let payload = match decrypt_payload(&event.payload, key_ref.as_deref()) {
            Ok(p) => p,
            Err(error) => {
                self.emit(SessionEvent::DeliveryFailed {
                    event_name: event.event_name,
                    idem: event.event_idem,
                    error,
                });
                return;
            }
        };
        let metadata = if event.metadata.is_empty() {
            serde_json::Value::Object(Default::default())
        } else {
            serde_json::from_str(&event.metadata)
                .unwrap_or_else(|_| serde_json::Value::Object(Default::default()))
        };
        let token = DeliveryToken(self.alloc_id());
        if !event.event_idem.is_empty() {
            self.dedup.insert(
                key,
                DedupEntry {
                    running: Some(token),
                    done_ok: false,
                    seen_epoch: self.epoch,
                    block: event.partition_block,
                    acked_epoch: None,
                    settling: false,
                    parked: None,
                    seq: 0,
                },
            );
        }
        self.deliveries.insert(
            token,
            DeliveryInfo {
                settled: false,
                event_name: event.event_name.clone(),
                idem: event.event_idem.clone(),
                block: event.partition_block,
                auto_ack,
                epoch: self.epoch,
            },
        );
        self.emit(SessionEvent::Delivery(Delivery {
            token,
            event_name: event.event_name,
            idem: event.event_idem,
            block: event.partition_block,
            payload,
            sender: event.sender,
            metadata,
            timestamp,
            auto_ack,
        }));
    }
}

/// Decrypts an envelope and parses the plaintext as JSON.
pub(super) fn decrypt_payload(
    payload: &str,
    key: Option<&SecretKey>,
) -> Result<serde_json::Value, SessionError> {
    let Some(key) = key else {
        return Err(SessionError::Decryption {
            message: "no secret key to decrypt with".to_owned(),
        });
    };
    let plaintext = envelope::decrypt(payload, key).map_err(|e| SessionError::Decryption {
        message: e.to_string(),
    })?;
    serde_json::from_slice(&plaintext).map_err(|e| SessionError::Decryption {
        message: format!("payload is not JSON: {e}"),
    })
}

pub(super) struct DedupEntry {
    /// The delivery whose handler is running, if any.
    pub(super) running: Option<DeliveryToken>,
    /// A handler finished OK.
    pub(super) done_ok: bool,
    /// The connection epoch in which the node last delivered it.
    pub(super) seen_epoch: u64,
    /// Its partition block in that delivery.
    pub(super) block: i64,
    /// The connection epoch in which the session last acknowledged it.
    pub(super) acked_epoch: Option<u64>,
    /// The application asked to ack or discard it and has no answer yet.
    pub(super) settling: bool,
    /// A redelivery that arrived meanwhile: handed over if that ack or discard fails.
    pub(super) parked: Option<Box<Parked>>,
    pub(super) seq: u64,
}

/// A delivery held back while the application's settlement of its event is answered.
pub(super) struct Parked {
    event: wire::EventStreamResponse,
    timestamp: Option<i64>,
}

/// Events handed to the application, bounded: the oldest are forgotten first.
pub(super) struct Dedup {
    capacity: usize,
    map: HashMap<(String, String), DedupEntry>,
    order: VecDeque<((String, String), u64)>,
    seq: u64,
}

impl Dedup {
    pub(super) fn new(capacity: usize) -> Self {
        Dedup {
            capacity,
            map: HashMap::new(),
            order: VecDeque::new(),
            seq: 0,
        }
    }

    pub(super) fn get(&self, key: &(String, String)) -> Option<&DedupEntry> {
        self.map.get(key)
    }

    pub(super) fn get_mut(&mut self, key: &(String, String)) -> Option<&mut DedupEntry> {
        self.map.get_mut(key)
    }

    pub(super) fn remove(&mut self, key: &(String, String)) {
        self.map.remove(key);
    }

    pub(super) fn insert(&mut self, key: (String, String), mut entry: DedupEntry) {
        if self.capacity == 0 {
            return;
        }
        self.seq += 1;
        entry.seq = self.seq;
        self.order.push_back((key.clone(), self.seq));
        self.map.insert(key, entry);
        while self.map.len() > self.capacity || self.order.len() > 2 * self.capacity + 16 {
            let Some((old, seq)) = self.order.pop_front() else {
                break;
            };
            if self.map.get(&old).is_some_and(|e| e.seq == seq) {
                self.map.remove(&old);
            }
        }
    }
}
