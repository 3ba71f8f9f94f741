//! The connection's lifecycle: opening the transport, authenticating, the RPC
//! generation, heartbeats, losing the connection and reconnecting with backoff, and the
//! dispatch of transport facts (timers are dispatched in `timers.rs`).

use super::*;

impl Session {
    /// Connects and authenticates. Completes with [`OpOutcome::Opened`]; if the first
    /// connection cannot be made the operation fails and the session closes.
    pub fn open(&mut self, now: Instant) -> OpId {
        let now = self.clock(now);
        let op = self.alloc_op();
        match self.phase {
            Phase::Closed => self.complete(op, Err(SessionError::Closed)),
            Phase::Connected => {
                let outcome = OpOutcome::Opened {
                    client_id: self.client_id.clone(),
                    client_hash: self.client_hash.clone(),
                };
                self.complete(op, Ok(outcome));
            }
            Phase::Idle => {
                self.insert_op(op, OpKind::Open, None, Vec::new(), None);
                self.emit_state(ConnectionState::Connecting);
                self.start_transport(0, now);
            }
            _ => self.insert_op(op, OpKind::Open, None, Vec::new(), None),
        }
        op
    }

    pub(super) fn handle_input_inner(&mut self, input: Input, now: Instant) {
        match input {
            Input::Connected { conn } if self.transport == Some(conn) => {
                if let Phase::Opening { attempt, .. } = self.phase {
                    let call = self.next_call();
                    let request = Request::Connect(wire::ConnectRequest {
                        access_key: self.config.access_key.as_str().to_owned(),
                    });
                    self.calls.insert(
                        call,
                        CallEntry {
                            purpose: CallPurpose::Connect,
                            generation: self.generation,
                        },
                    );
                    self.outputs.push_back(Output::Call(Call {
                        id: call,
                        generation: self.generation,
                        request,
                    }));
                    self.phase = Phase::Authenticating { attempt, call };
                    self.timers.set(
                        Timer::ConnectStep,
                        deadline_after(now, self.config.request_timeout),
                    );
                }
            }
            Input::Disconnected { conn, reason } if self.transport == Some(conn) => {
                match self.phase {
                    Phase::Opening { .. } | Phase::Authenticating { .. } => {
                        self.attempt_failed(reason, false, now)
                    }
                    Phase::Connected => self.connection_lost(reason, now),
                    Phase::Idle | Phase::Backoff { .. } | Phase::Closed => {}
                }
            }
            // A fact about a transport attempt the session has moved past.
            Input::Connected { .. } | Input::Disconnected { .. } => {}
            Input::Reply { call, result } => self.handle_reply(call, result, now),
            Input::StreamOpened { call } => self.handle_stream_opened(call),
            Input::StreamItem {
                call,
                event,
                logged_at,
            } => {
                let open_stream = matches!(
                    self.calls.get(&call),
                    Some(CallEntry {
                        purpose: CallPurpose::Stream { .. },
                        ..
                    })
                );
                if open_stream {
                    self.handle_item(event, logged_at, now);
                }
            }
            Input::StreamEnded { call, error } => self.handle_stream_ended(call, error, now),
        }
    }

    pub(super) fn send_heartbeat(&mut self, now: Instant) {
        let call = self.next_call();
        self.calls.insert(
            call,
            CallEntry {
                purpose: CallPurpose::Heartbeat,
                generation: self.generation,
            },
        );
        self.heartbeat_call = Some(call);
        self.timers.set(
            Timer::HeartbeatReply,
            deadline_after(now, self.config.request_timeout),
        );
        self.outputs.push_back(Output::Call(Call {
            id: call,
            generation: self.generation,
            request: Request::Heartbeat(wire::HeartbeatRequest {
                client_id: self.client_id.clone(),
            }),
        }));
    }

    pub(super) fn start_transport(&mut self, attempt: u32, now: Instant) {
        self.phase = Phase::Opening { attempt };
        self.timers.stop(Timer::Reconnect);
        self.timers.set(
            Timer::ConnectStep,
            deadline_after(now, self.config.request_timeout),
        );
        let conn = ConnectionId(self.alloc_id());
        self.transport = Some(conn);
        self.outputs.push_back(Output::Connect {
            conn,
            endpoint: self.endpoint,
        });
    }

    /// Moves on to the next endpoint (after a failure of the current one).
    fn next_endpoint(&mut self) {
        self.endpoint = (self.endpoint + 1) % self.config.endpoints.max(1);
    }

    /// A connect attempt (transport or `Connect` call) failed.
    pub(super) fn attempt_failed(&mut self, reason: String, drop_transport: bool, now: Instant) {
        let attempt = match self.phase {
            Phase::Opening { attempt, .. } => attempt,
            Phase::Authenticating { attempt, .. } => {
                self.calls.clear();
                attempt
            }
            _ => return,
        };
        let drop_transport = drop_transport || matches!(self.phase, Phase::Authenticating { .. });
        if drop_transport {
            self.transport = None;
            self.outputs.push_back(Output::Disconnect);
        }
        let failures = attempt.saturating_add(1);
        if self.epoch > 0 {
            self.schedule_reconnect(failures, &reason, now);
            return;
        }
        // The first open: each endpoint once, in order, at once; then the open fails.
        let endpoints = self.config.endpoints;
        if failures as usize >= endpoints {
            let message = if endpoints == 1 {
                reason
            } else {
                format!("none of the {endpoints} endpoints could be reached; last: {reason}")
            };
            self.close_with_error(SessionError::connection(message));
        } else {
            self.next_endpoint();
            self.start_transport(failures, now);
        }
    }

    /// After `failures` failures in a row since the last successful connection (its loss
    /// counted): the next attempt goes to the next endpoint, at once within a round, after
    /// the backoff delay of round `failures / endpoints` once every endpoint failed.
    pub(super) fn schedule_reconnect(&mut self, failures: u32, reason: &str, now: Instant) {
        let endpoints = self.config.endpoints;
        let max = self.config.max_reconnect_attempts;
        if u64::from(failures) > u64::from(max) * endpoints as u64 {
            let message = if endpoints == 1 {
                format!("gave up after {max} reconnect attempts: {reason}")
            } else {
                format!(
                    "gave up after {max} reconnect attempts to each of the {endpoints} endpoints: {reason}"
                )
            };
            self.close_with_error(SessionError::connection(message));
            return;
        }
        self.next_endpoint();
        let attempt = failures;
        let full_round = (failures as usize) % endpoints == 0;
        if !full_round {
            self.emit_state(ConnectionState::Reconnecting {
                attempt,
                delay: Duration::ZERO,
            });
            self.start_transport(attempt, now);
            return;
        }
        let round = (failures as usize / endpoints) as u32;
        let delay = backoff_delay(&self.config, round);
        self.phase = Phase::Backoff { attempt };
        self.timers.stop(Timer::ConnectStep);
        self.timers
            .set(Timer::Reconnect, deadline_after(now, delay));
        self.emit_state(ConnectionState::Reconnecting { attempt, delay });
    }

    /// The established connection is gone.
    pub(super) fn connection_lost(&mut self, reason: String, now: Instant) {
        if !self.is_connected() {
            return;
        }
        if let Some(closing) = self.take_closing() {
            // Closing: no reconnect; what was still in flight is given up.
            self.finish_close(closing.ops);
            return;
        }
        self.transport = None;
        self.outputs.push_back(Output::Disconnect);
        self.heartbeat_call = None;
        self.timers.stop(Timer::HeartbeatReply);
        self.timers.stop(Timer::HeartbeatDue);
        let mut requeue: Vec<(OpId, usize)> = Vec::new();
        let mut failed: Vec<OpId> = Vec::new();
        let calls = std::mem::take(&mut self.calls);
        for (_, entry) in calls {
            if let CallPurpose::Op { op, part } = entry.purpose {
                let Some(o) = self.ops.get_mut(&op) else {
                    continue;
                };
                if survives_reconnect(&o.kind) {
                    if let Some(p) = o.parts.get_mut(part) {
                        p.state = PartState::Queued;
                        requeue.push((op, part));
                    }
                } else {
                    failed.push(op);
                }
            }
        }
        for sub in self.subs.values_mut() {
            sub.call = None;
            sub.opened = false;
        }
        failed.sort();
        failed.dedup();
        for op in failed {
            let published = self.published_ids(op);
            self.finish_op(
                op,
                Err(SessionError::Connection {
                    message: format!("connection lost: {reason}"),
                    published,
                }),
            );
        }
        requeue.sort();
        for item in requeue.into_iter().rev() {
            self.queue.push_front(item);
        }
        self.schedule_reconnect(1, &reason, now);
    }

    /// Whether a call that got `UNIMPLEMENTED` under `call_gen` should be re-sent
    /// (switching generation if allowed).
    pub(super) fn retry_generation(&mut self, call_gen: Generation) -> bool {
        if call_gen != self.generation {
            return true;
        }
        match self.config.generation {
            GenerationChoice::Auto(_) if !self.generation_switched => {
                self.generation = self.generation.other();
                self.generation_switched = true;
                true
            }
            _ => false,
        }
    }

    pub(super) fn handle_reply(
        &mut self,
        call: CallId,
        result: Result<Reply, RpcError>,
        now: Instant,
    ) {
        let Some(entry) = self.calls.remove(&call) else {
            return;
        };
        match entry.purpose {
            CallPurpose::Connect => self.handle_connect_reply(call, result, now),
            CallPurpose::Heartbeat => {
                if self.heartbeat_call != Some(call) {
                    return;
                }
                self.heartbeat_call = None;
                self.timers.stop(Timer::HeartbeatReply);
                match result {
                    Ok(Reply::Heartbeat(r)) if r.success => {}
                    Ok(Reply::Heartbeat(_)) => {
                        self.connection_lost("heartbeat refused".to_owned(), now)
                    }
                    Ok(_) => self.connection_lost(
                        "heartbeat answered with a reply of the wrong type".to_owned(),
                        now,
                    ),
                    Err(e) => self.connection_lost(format!("heartbeat failed: {}", e.message), now),
                }
            }
            CallPurpose::Stream { name } => {
                // A unary reply to a stream: protocol error, as if the stream ended.
                self.calls.insert(
                    call,
                    CallEntry {
                        purpose: CallPurpose::Stream { name },
                        generation: entry.generation,
                    },
                );
                let error = match result {
                    Err(e) => e,
                    Ok(_) => RpcError::new(RpcCode::Other(2), "unary reply to a subscribe stream"),
                };
                self.handle_stream_ended(call, Some(error), now);
            }
            CallPurpose::Repause { name } => match result {
                Err(e) if e.code == RpcCode::Unimplemented => {
                    if self.retry_generation(entry.generation)
                        && self.is_connected()
                        && self.subs.get(&name).is_some_and(|s| s.paused)
                    {
                        self.send_repause(&name);
                    }
                }
                Ok(Reply::Pause(r)) if r.success => {}
                Ok(Reply::Pause(r)) => self.emit(SessionEvent::AutoAckFailed {
                    event_name: name,
                    idem: String::new(),
                    error: SessionError::Pause { message: r.message },
                }),
                Ok(_) => {}
                Err(e) => self.emit(SessionEvent::AutoAckFailed {
                    event_name: name,
                    idem: String::new(),
                    error: SessionError::Pause { message: e.message },
                }),
            },
            CallPurpose::Op { op, part } => {
                if let Err(e) = &result {
                    if e.code == RpcCode::Unavailable && self.is_connected() {
                        // The transport failed under this call: the connection is gone,
                        // whether or not a stream or a heartbeat noticed yet. Handle this
                        // call like every other one in flight (fail or re-queue).
                        let reason = format!("call failed: {}", e.message);
                        self.calls.insert(call, entry);
                        self.connection_lost(reason, now);
                        return;
                    }
                }
                let refused = matches!(&result, Ok(reply) if reply_refused(reply));
                self.handle_op_reply(op, part, entry.generation, result);
                if refused && self.is_connected() && self.heartbeat_call.is_none() {
                    // A node that restarted no longer knows this session and refuses
                    // every call; a heartbeat finds out now instead of at its next tick.
                    self.send_heartbeat(now);
                }
            }
        }
    }

    pub(super) fn handle_connect_reply(
        &mut self,
        call: CallId,
        result: Result<Reply, RpcError>,
        now: Instant,
    ) {
        let Phase::Authenticating {
            attempt,
            call: expected,
            ..
        } = self.phase
        else {
            return;
        };
        if call != expected {
            return;
        }
        match result {
            Ok(Reply::Connect(r)) if r.success => self.authenticated(r, now),
            Ok(Reply::Connect(r)) => {
                self.transport = None;
                self.outputs.push_back(Output::Disconnect);
                let _ = attempt;
                self.close_with_error(SessionError::Auth {
                    message: r.error_message,
                });
            }
            Ok(_) => self.attempt_failed(
                "connect answered with a reply of the wrong type".to_owned(),
                true,
                now,
            ),
            Err(e) if e.code == RpcCode::Unauthenticated => {
                self.transport = None;
                self.outputs.push_back(Output::Disconnect);
                self.close_with_error(SessionError::Auth { message: e.message });
            }
            Err(e) => self.attempt_failed(format!("connect failed: {}", e.message), true, now),
        }
    }

    pub(super) fn authenticated(&mut self, r: wire::ConnectResponse, now: Instant) {
        self.client_id = r.client_id;
        self.client_hash = r.client_hash;
        self.epoch += 1;
        self.phase = Phase::Connected;
        self.timers.stop(Timer::ConnectStep);
        self.heartbeat_call = None;
        self.timers.stop(Timer::HeartbeatReply);
        match self.config.heartbeat_interval {
            Some(i) => self.timers.set(Timer::HeartbeatDue, deadline_after(now, i)),
            None => self.timers.stop(Timer::HeartbeatDue),
        }
        self.emit_state(ConnectionState::Connected {
            client_id: self.client_id.clone(),
            client_hash: self.client_hash.clone(),
        });
        let opens: Vec<OpId> = self
            .ops
            .iter()
            .filter(|(_, o)| matches!(o.kind, OpKind::Open))
            .map(|(id, _)| *id)
            .collect();
        for op in opens {
            let outcome = OpOutcome::Opened {
                client_id: self.client_id.clone(),
                client_hash: self.client_hash.clone(),
            };
            self.finish_op(op, Ok(outcome));
        }
        let names: Vec<(String, bool)> = self
            .subs
            .iter()
            .map(|(n, s)| (n.clone(), s.paused))
            .collect();
        for (name, paused) in names {
            self.send_subscribe(&name);
            if paused {
                self.send_repause(&name);
            }
        }
        self.flush_queue();
    }
}
