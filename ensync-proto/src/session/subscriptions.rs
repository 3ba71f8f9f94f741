//! Subscriptions: subscribe / unsubscribe / pause / resume, their streams, and restoring
//! them after a reconnect.

use super::*;

impl Session {
    /// Subscribes to `event_name`: one `Subscribe` stream. Completes with
    /// [`OpOutcome::Subscribed`] when the stream is open.
    pub fn subscribe(
        &mut self,
        event_name: &str,
        opts: SubscribeOptions,
        now: Instant,
    ) -> Result<OpId, SessionError> {
        let now = self.clock(now);
        self.check_command()?;
        validate::event_name(event_name)?;
        if self.subs.contains_key(event_name) {
            return Err(SessionError::Subscription {
                message: format!("already subscribed to {event_name}"),
            });
        }
        // A pending unsubscribe of this name goes first: the node may handle concurrent
        // calls in any order.
        let blocked_by = self
            .ops
            .iter()
            .filter(
                |(_, o)| matches!(&o.kind, OpKind::Unsubscribe { name, .. } if name == event_name),
            )
            .map(|(id, _)| *id)
            .next_back();
        let op = self.alloc_op();
        let deadline = Some(deadline_after(now, self.config.request_timeout));
        self.insert_op(op, OpKind::Subscribe, deadline, Vec::new(), None);
        self.subs.insert(
            event_name.to_owned(),
            Sub {
                auto_ack: opts.auto_ack,
                key: opts.secret_key,
                call: None,
                opened: false,
                paused: false,
                pending_op: Some(op),
                blocked_by,
            },
        );
        if self.is_connected() {
            self.send_subscribe(event_name);
        }
        Ok(op)
    }

    /// Unsubscribes from `event_name`: its events are no longer handed over, its stream
    /// is cancelled and it is not restored after a reconnect.
    pub fn unsubscribe(&mut self, event_name: &str, now: Instant) -> Result<OpId, SessionError> {
        let now = self.clock(now);
        self.check_command()?;
        validate::event_name(event_name)?;
        let Some(sub) = self.subs.remove(event_name) else {
            return Err(SessionError::Subscription {
                message: format!("not subscribed to {event_name}"),
            });
        };
        // Items and the end of the old stream are ignored from now on; the stream itself
        // is dropped when the node has answered the `Unsubscribe`.
        if let Some(call) = sub.call {
            self.calls.remove(&call);
        }
        if let Some(op) = sub.pending_op {
            self.finish_op(
                op,
                Err(SessionError::Subscription {
                    message: "unsubscribed before the stream opened".to_owned(),
                }),
            );
        }
        let request = Request::Unsubscribe(wire::UnsubscribeRequest {
            client_id: String::new(),
            event_name: event_name.to_owned(),
        });
        let kind = OpKind::Unsubscribe {
            name: event_name.to_owned(),
            cancel: sub.call,
        };
        Ok(self.submit_one(kind, request, now))
    }

    /// Pauses delivery of `event_name`; a paused subscription is paused again after a
    /// reconnect.
    pub fn pause(
        &mut self,
        event_name: &str,
        reason: &str,
        now: Instant,
    ) -> Result<OpId, SessionError> {
        let now = self.clock(now);
        self.check_command()?;
        validate::event_name(event_name)?;
        let request = pause_request(event_name, reason);
        let kind = OpKind::Pause {
            name: event_name.to_owned(),
        };
        Ok(self.submit_one(kind, request, now))
    }

    /// Resumes delivery of `event_name`.
    pub fn resume(&mut self, event_name: &str, now: Instant) -> Result<OpId, SessionError> {
        let now = self.clock(now);
        self.check_command()?;
        validate::event_name(event_name)?;
        let request = Request::Continue(wire::ContinueRequest {
            client_id: String::new(),
            event_name: event_name.to_owned(),
        });
        let kind = OpKind::Resume {
            name: event_name.to_owned(),
        };
        Ok(self.submit_one(kind, request, now))
    }

    pub(super) fn send_subscribe(&mut self, name: &str) {
        let call = self.next_call();
        let Some(sub) = self.subs.get_mut(name) else {
            return;
        };
        if sub.blocked_by.is_some() {
            return;
        }
        sub.call = Some(call);
        sub.opened = false;
        self.calls.insert(
            call,
            CallEntry {
                purpose: CallPurpose::Stream {
                    name: name.to_owned(),
                },
                generation: self.generation,
            },
        );
        self.outputs.push_back(Output::Call(Call {
            id: call,
            generation: self.generation,
            request: Request::Subscribe(wire::SubscribeRequest {
                client_id: self.client_id.clone(),
                event_name: name.to_owned(),
            }),
        }));
    }

    pub(super) fn send_repause(&mut self, name: &str) {
        let call = self.next_call();
        self.calls.insert(
            call,
            CallEntry {
                purpose: CallPurpose::Repause {
                    name: name.to_owned(),
                },
                generation: self.generation,
            },
        );
        let request = with_client_id(&pause_request(name, ""), self.client_id.clone());
        self.outputs.push_back(Output::Call(Call {
            id: call,
            generation: self.generation,
            request,
        }));
    }

    pub(super) fn handle_stream_opened(&mut self, call: CallId) {
        let Some(CallEntry {
            purpose: CallPurpose::Stream { name },
            ..
        }) = self.calls.get(&call)
        else {
            return;
        };
        let Some(sub) = self.subs.get_mut(name.as_str()) else {
            return;
        };
        if sub.call != Some(call) || sub.opened {
            return;
        }
        sub.opened = true;
        if let Some(op) = sub.pending_op.take() {
            self.finish_op(op, Ok(OpOutcome::Subscribed));
        }
    }

    pub(super) fn handle_stream_ended(
        &mut self,
        call: CallId,
        error: Option<RpcError>,
        now: Instant,
    ) {
        let Some(entry) = self.calls.remove(&call) else {
            return;
        };
        let CallPurpose::Stream { name } = entry.purpose else {
            // Not a stream: put it back, it is still waiting for its reply.
            self.calls.insert(call, entry);
            return;
        };
        if error.as_ref().is_some_and(|e| e.code.is_connection_loss()) {
            let message = error.map(|e| e.message).unwrap_or_default();
            self.connection_lost(format!("subscribe stream failed: {message}"), now);
            return;
        }
        let Some(sub) = self.subs.get_mut(&name) else {
            return;
        };
        if sub.call != Some(call) {
            return;
        }
        sub.call = None;
        let opened = std::mem::replace(&mut sub.opened, false);
        if !opened {
            if let Some(op) = sub.pending_op {
                let message = error
                    .map(|e| e.message)
                    .unwrap_or_else(|| "subscribe stream ended before it opened".to_owned());
                // finish_op removes the subscription.
                self.finish_op(op, Err(SessionError::Subscription { message }));
                return;
            }
        }
        self.emit(SessionEvent::StreamEnded {
            event_name: name,
            error,
        });
    }
}
