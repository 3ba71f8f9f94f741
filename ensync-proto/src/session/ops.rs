//! The operation table: validating commands, queueing and sending their calls (one per
//! recipient for a publish), matching replies to them, and completing each operation
//! exactly once.

use super::*;

impl Session {
    /// Publishes `payload` (a JSON object) to each recipient (base64 public keys): one
    /// request per recipient. Completes with [`OpOutcome::Published`] (ids in
    /// recipient order) once every reply is in.
    pub fn publish(
        &mut self,
        event_name: &str,
        recipients: &[impl AsRef<str>],
        payload: &serde_json::Value,
        metadata: Option<&serde_json::Value>,
        opts: PublishOptions,
        now: Instant,
    ) -> Result<OpId, SessionError> {
        let now = self.clock(now);
        self.check_command()?;
        validate::event_name(event_name)?;
        if recipients.is_empty() {
            return Err(validate::ValidationError::NoRecipients.into());
        }
        if !payload.is_object() {
            return Err(validate::ValidationError::PayloadNotObject.into());
        }
        let metadata = match metadata {
            None => "{}".to_owned(),
            Some(m) if m.is_object() => m.to_string(),
            Some(_) => return Err(validate::ValidationError::MetadataNotObject.into()),
        };
        let keys = recipients
            .iter()
            .enumerate()
            .map(|(index, r)| {
                self.recipients
                    .get_or_parse(r.as_ref())
                    .map_err(|source| InvalidInput::RecipientKey { index, source })
            })
            .collect::<Result<Vec<PublicKey>, _>>()?;
        let plaintext = serde_json::to_vec(payload)
            .map_err(|e| SessionError::Validation(InvalidInput::Payload(e.to_string())))?;
        let payload_metadata = Some(
            crate::payload_meta::payload_metadata(&plaintext)
                .map_err(|e| SessionError::Validation(InvalidInput::Payload(e.to_string())))?,
        );
        let mut rng = &mut *self.rng;
        let shared = opts
            .hybrid
            .then(|| envelope::encrypt_hybrid(&plaintext, &keys, &mut rng));
        let parts = recipients
            .iter()
            .zip(&keys)
            .map(|(recipient, key)| {
                let payload = match &shared {
                    Some(p) => p.clone(),
                    None => envelope::encrypt_single(&plaintext, key, &mut rng),
                };
                Part {
                    request: Request::Publish(wire::PublishEventRequest {
                        client_id: String::new(),
                        event_name: event_name.to_owned(),
                        payload,
                        delivery_to: recipient.as_ref().to_owned(),
                        metadata: metadata.clone(),
                        payload_metadata: payload_metadata.clone(),
                    }),
                    state: PartState::Queued,
                }
            })
            .collect();
        Ok(self.submit(OpKind::Publish, parts, None, now))
    }

    pub(super) fn check_command(&self) -> Result<(), SessionError> {
        if self.is_closed() || self.closing.is_some() {
            return Err(SessionError::Closed);
        }
        if self.app_ops >= self.config.max_in_flight {
            return Err(SessionError::Overloaded {
                limit: self.config.max_in_flight,
            });
        }
        Ok(())
    }

    pub(super) fn check_event_command(
        &self,
        event_name: &str,
        idem: &str,
    ) -> Result<(), SessionError> {
        self.check_command()?;
        validate::event_name(event_name)?;
        if idem.is_empty() {
            return Err(SessionError::Validation(InvalidInput::EmptyIdem));
        }
        Ok(())
    }

    pub(super) fn insert_op(
        &mut self,
        id: OpId,
        kind: OpKind,
        deadline: Option<Instant>,
        parts: Vec<Part>,
        internal: Option<InternalInfo>,
    ) {
        if internal.is_none() {
            self.app_ops += 1;
        }
        if let Some(deadline) = deadline {
            self.op_deadlines.insert(deadline, id);
        }
        self.ops.insert(
            id,
            Op {
                kind,
                deadline,
                parts,
                internal,
            },
        );
    }

    pub(super) fn submit_one(&mut self, kind: OpKind, request: Request, now: Instant) -> OpId {
        let parts = vec![Part {
            request,
            state: PartState::Queued,
        }];
        self.submit(kind, parts, None, now)
    }

    pub(super) fn submit(
        &mut self,
        kind: OpKind,
        parts: Vec<Part>,
        internal: Option<InternalInfo>,
        now: Instant,
    ) -> OpId {
        let id = self.alloc_op();
        let n = parts.len();
        let deadline = Some(deadline_after(now, self.config.request_timeout));
        self.insert_op(id, kind, deadline, parts, internal);
        for part in 0..n {
            self.queue.push_back((id, part));
        }
        if self.is_connected() {
            self.flush_queue();
        }
        id
    }

    /// Sends every queued part (only while connected).
    pub(super) fn flush_queue(&mut self) {
        while let Some((op, part)) = self.queue.pop_front() {
            self.send_part(op, part);
        }
    }

    pub(super) fn send_part(&mut self, op_id: OpId, part: usize) {
        let call = self.next_call();
        let generation = self.generation;
        let client_id = self.client_id.clone();
        let Some(op) = self.ops.get_mut(&op_id) else {
            return;
        };
        let Some(p) = op.parts.get_mut(part) else {
            return;
        };
        if !matches!(p.state, PartState::Queued) {
            return;
        }
        p.state = PartState::InFlight(call);
        let request = with_client_id(&p.request, client_id);
        self.calls.insert(
            call,
            CallEntry {
                purpose: CallPurpose::Op { op: op_id, part },
                generation,
            },
        );
        self.outputs.push_back(Output::Call(Call {
            id: call,
            generation,
            request,
        }));
    }

    pub(super) fn published_ids(&self, op: OpId) -> Vec<String> {
        let Some(o) = self.ops.get(&op) else {
            return Vec::new();
        };
        if !matches!(o.kind, OpKind::Publish) {
            return Vec::new();
        }
        o.parts
            .iter()
            .filter_map(|p| match &p.state {
                PartState::Done(Ok(id)) => Some(id.clone()),
                _ => None,
            })
            .collect()
    }

    /// Removes an op and reports its result (internal ops: only refusals, as
    /// `AutoAckFailed`). Forgets its calls; a pending subscribe forgets its subscription.
    pub(super) fn finish_op(&mut self, op_id: OpId, result: Result<OpOutcome, SessionError>) {
        let Some(op) = self.ops.remove(&op_id) else {
            return;
        };
        if let Some(deadline) = op.deadline {
            self.op_deadlines.remove(deadline, op_id);
        }
        for p in &op.parts {
            if let PartState::InFlight(call) = p.state {
                self.calls.remove(&call);
            }
        }
        if let OpKind::Subscribe = op.kind {
            if result.is_err() {
                let name = self
                    .subs
                    .iter()
                    .find(|(_, s)| s.pending_op == Some(op_id))
                    .map(|(n, _)| n.clone());
                if let Some(name) = name {
                    if let Some(sub) = self.subs.remove(&name) {
                        if let Some(call) = sub.call {
                            if self.calls.remove(&call).is_some() {
                                self.outputs.push_back(Output::CancelStream(call));
                            }
                        }
                    }
                }
            } else {
                for sub in self.subs.values_mut() {
                    if sub.pending_op == Some(op_id) {
                        sub.pending_op = None;
                    }
                }
            }
        }
        if let OpKind::Unsubscribe { name, cancel } = &op.kind {
            if let Some(call) = cancel {
                self.outputs.push_back(Output::CancelStream(*call));
            }
            let unblocked = self
                .subs
                .get_mut(name)
                .is_some_and(|s| s.blocked_by == Some(op_id));
            if unblocked {
                if let Some(sub) = self.subs.get_mut(name) {
                    sub.blocked_by = None;
                }
            }
            let name = name.clone();
            if op.internal.is_none() {
                self.app_ops = self.app_ops.saturating_sub(1);
                self.complete(op_id, result);
            }
            if unblocked && self.is_connected() {
                self.send_subscribe(&name);
            }
            return;
        }
        match op.internal {
            None => {
                self.app_ops = self.app_ops.saturating_sub(1);
                let settled = match op.parts.first().map(|p| &p.request) {
                    Some(Request::Ack(r)) => Some((r.event_name.clone(), r.event_idem.clone())),
                    Some(Request::Discard(r)) => Some((r.event_name.clone(), r.event_idem.clone())),
                    _ => None,
                };
                let ok = result.is_ok();
                self.complete(op_id, result);
                if let Some((name, idem)) = settled {
                    self.app_settle_answered(&name, &idem, ok);
                }
            }
            Some(info) => {
                if let Err(error) = result {
                    if let SessionError::Ack { .. } = error {
                        // The node refused the automatic ack (for instance the event was
                        // deferred meanwhile and is no longer in flight): it has not been
                        // acked in this connection, so its next delivery here is acked.
                        let key = (info.event_name.clone(), info.idem.clone());
                        let epoch = self.epoch;
                        if let Some(e) = self.dedup.get_mut(&key) {
                            if e.acked_epoch == Some(epoch) {
                                e.acked_epoch = None;
                            }
                        }
                    }
                    if !matches!(
                        error,
                        SessionError::Connection { .. } | SessionError::Closed
                    ) {
                        self.emit(SessionEvent::AutoAckFailed {
                            event_name: info.event_name,
                            idem: info.idem,
                            error,
                        });
                    }
                }
            }
        }
    }

    pub(super) fn handle_op_reply(
        &mut self,
        op_id: OpId,
        part: usize,
        call_gen: Generation,
        result: Result<Reply, RpcError>,
    ) {
        let Some(op) = self.ops.get(&op_id) else {
            return;
        };
        let rpc = op
            .parts
            .get(part)
            .map_or("?", |p| p.request.rpc_name(call_gen));
        let kind_error = |message: String| kind_error(&op.kind, message);
        let part_result: Result<Reply, SessionError> = match result {
            Ok(reply) => Ok(reply),
            Err(e) => match e.code {
                RpcCode::Unimplemented => {
                    if self.retry_generation(call_gen) {
                        if let Some(p) =
                            self.ops.get_mut(&op_id).and_then(|o| o.parts.get_mut(part))
                        {
                            p.state = PartState::Queued;
                        }
                        if self.is_connected() {
                            self.send_part(op_id, part);
                        } else {
                            self.queue.push_front((op_id, part));
                        }
                        return;
                    }
                    Err(SessionError::Unimplemented { rpc })
                }
                RpcCode::DeadlineExceeded => Err(SessionError::Timeout {
                    published: Vec::new(),
                }),
                RpcCode::Unavailable | RpcCode::Cancelled => {
                    Err(SessionError::connection(e.message))
                }
                RpcCode::Unauthenticated => Err(SessionError::Auth { message: e.message }),
                _ => Err(kind_error(e.message)),
            },
        };
        let Some(op) = self.ops.get_mut(&op_id) else {
            return;
        };
        if let OpKind::Publish = op.kind {
            let done = match part_result {
                Ok(Reply::Publish(r)) if r.success => Ok(r.event_idem),
                Ok(Reply::Publish(r)) => Err(SessionError::Publish {
                    message: r.error_message,
                    published: Vec::new(),
                }),
                Ok(_) => Err(wrong_type()),
                Err(e) => Err(e),
            };
            if let Some(p) = op.parts.get_mut(part) {
                p.state = PartState::Done(done);
            }
            if op
                .parts
                .iter()
                .all(|p| matches!(p.state, PartState::Done(_)))
            {
                let mut ids = Vec::new();
                let mut first_err = None;
                for p in &op.parts {
                    match &p.state {
                        PartState::Done(Ok(id)) => ids.push(id.clone()),
                        PartState::Done(Err(e)) if first_err.is_none() => {
                            first_err = Some(e.clone())
                        }
                        _ => {}
                    }
                }
                let result = match first_err {
                    None => Ok(OpOutcome::Published { ids }),
                    Some(e) => Err(with_published(e, ids)),
                };
                self.finish_op(op_id, result);
            }
            return;
        }
        let outcome = match part_result {
            Err(e) => Err(e),
            Ok(reply) => self.op_outcome(op_id, reply),
        };
        self.finish_op(op_id, outcome);
    }

    /// Maps a typed reply to the op's outcome (single-request ops).
    pub(super) fn op_outcome(
        &mut self,
        op_id: OpId,
        reply: Reply,
    ) -> Result<OpOutcome, SessionError> {
        let Some(op) = self.ops.get(&op_id) else {
            return Err(wrong_type());
        };
        match (&op.kind, reply) {
            (OpKind::Unsubscribe { .. }, Reply::Unsubscribe(r)) => {
                ok_or(r.success, r.message, |m| SessionError::Subscription {
                    message: m,
                })
                .map(|()| OpOutcome::Unsubscribed)
            }
            (OpKind::Ack, Reply::Ack(r)) => {
                ok_or(r.success, r.message, |m| SessionError::Ack { message: m })
                    .map(|()| OpOutcome::Acked)
            }
            (OpKind::Defer, Reply::Defer(r)) => {
                let time = r.delivery_time;
                ok_or(r.success, r.message, |m| SessionError::Defer { message: m }).map(|()| {
                    OpOutcome::Deferred {
                        delivery_time_ms: time,
                    }
                })
            }
            (OpKind::Discard, Reply::Discard(r)) => ok_or(r.success, r.message, |m| {
                SessionError::Discard { message: m }
            })
            .map(|()| OpOutcome::Discarded),
            (OpKind::Replay { key }, Reply::Replay(r)) => {
                ok_or(r.success, r.message, |m| SessionError::Replay {
                    message: m,
                })?;
                let key = key.clone();
                // Any node's answer form (bare envelope or stream-message JSON).
                let replayed = crate::clients::decode_replay(&r.event_data).map_err(|e| {
                    SessionError::Replay {
                        message: e.to_string(),
                    }
                })?;
                let payload = decrypt_payload(&replayed.payload, key.as_deref())?;
                Ok(OpOutcome::Replayed { payload })
            }
            (OpKind::Pause { name }, Reply::Pause(r)) => {
                let name = name.clone();
                ok_or(r.success, r.message, |m| SessionError::Pause { message: m })?;
                if let Some(sub) = self.subs.get_mut(&name) {
                    sub.paused = true;
                }
                Ok(OpOutcome::Paused)
            }
            (OpKind::Resume { name }, Reply::Continue(r)) => {
                let name = name.clone();
                ok_or(r.success, r.message, |m| SessionError::Continue {
                    message: m,
                })?;
                if let Some(sub) = self.subs.get_mut(&name) {
                    sub.paused = false;
                }
                Ok(OpOutcome::Resumed)
            }
            _ => Err(wrong_type()),
        }
    }
}

/// What a lost in-flight request does.
pub(super) fn survives_reconnect(kind: &OpKind) -> bool {
    matches!(
        kind,
        OpKind::Unsubscribe { .. }
            | OpKind::Replay { .. }
            | OpKind::Pause { .. }
            | OpKind::Resume { .. }
    )
}

/// Whether the node answered `success = false`.
pub(super) fn reply_refused(reply: &Reply) -> bool {
    match reply {
        Reply::Connect(r) => !r.success,
        Reply::Heartbeat(r) => !r.success,
        Reply::Publish(r) => !r.success,
        Reply::Unsubscribe(r) => !r.success,
        Reply::Ack(r) => !r.success,
        Reply::Defer(r) => !r.success,
        Reply::Discard(r) => !r.success,
        Reply::Replay(r) => !r.success,
        Reply::Pause(r) => !r.success,
        Reply::Continue(r) => !r.success,
    }
}

pub(super) fn wrong_type() -> SessionError {
    SessionError::Protocol {
        message: "reply of the wrong type for the request".to_owned(),
    }
}

pub(super) fn ok_or(
    success: bool,
    message: String,
    err: impl FnOnce(String) -> SessionError,
) -> Result<(), SessionError> {
    if success { Ok(()) } else { Err(err(message)) }
}

pub(super) fn kind_error(kind: &OpKind, message: String) -> SessionError {
    match kind {
        OpKind::Open => SessionError::connection(message),
        OpKind::Publish => SessionError::Publish {
            message,
            published: Vec::new(),
        },
        OpKind::Subscribe | OpKind::Unsubscribe { .. } => SessionError::Subscription { message },
        OpKind::Ack => SessionError::Ack { message },
        OpKind::Defer => SessionError::Defer { message },
        OpKind::Discard => SessionError::Discard { message },
        OpKind::Replay { .. } => SessionError::Replay { message },
        OpKind::Pause { .. } => SessionError::Pause { message },
        OpKind::Resume { .. } => SessionError::Continue { message },
    }
}

pub(super) fn with_published(error: SessionError, ids: Vec<String>) -> SessionError {
    match error {
        SessionError::Connection { message, .. } => SessionError::Connection {
            message,
            published: ids,
        },
        SessionError::Publish { message, .. } => SessionError::Publish {
            message,
            published: ids,
        },
        SessionError::Timeout { .. } => SessionError::Timeout { published: ids },
        other => other,
    }
}

pub(super) fn defer_request(event_name: &str, idem: &str, delay_ms: i64, reason: &str) -> Request {
    Request::Defer(wire::DeferRequest {
        client_id: String::new(),
        event_idem: idem.to_owned(),
        event_name: event_name.to_owned(),
        delay_ms,
        priority: 0,
        reason: reason.to_owned(),
    })
}

pub(super) fn pause_request(event_name: &str, reason: &str) -> Request {
    Request::Pause(wire::PauseRequest {
        client_id: String::new(),
        event_name: event_name.to_owned(),
        reason: reason.to_owned(),
    })
}

pub(super) fn with_client_id(request: &Request, client_id: String) -> Request {
    let mut r = request.clone();
    match &mut r {
        Request::Connect(_) => {}
        Request::Heartbeat(m) => m.client_id = client_id,
        Request::Publish(m) => m.client_id = client_id,
        Request::Subscribe(m) => m.client_id = client_id,
        Request::Unsubscribe(m) => m.client_id = client_id,
        Request::Ack(m) => m.client_id = client_id,
        Request::Defer(m) => m.client_id = client_id,
        Request::Discard(m) => m.client_id = client_id,
        Request::Replay(m) => m.client_id = client_id,
        Request::Pause(m) => m.client_id = client_id,
        Request::Continue(m) => m.client_id = client_id,
    }
    r
}
