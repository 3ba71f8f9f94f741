//! Closing: the close grace for automatic acks under way, then failing what is left and
//! dropping the transport.

use super::*;

impl Session {
    /// Closes the session: every pending operation of the app fails with
    /// [`SessionError::Closed`], no more events are handed over, and every later command
    /// fails with `Closed`. Automatic acknowledgements (and deferrals of failed events)
    /// already under way are given up to [`CLOSE_GRACE`] to finish, so the events the app
    /// handled are not redelivered to its next session; then streams are cancelled, the
    /// transport dropped, and the returned op completes with [`OpOutcome::Closed`].
    pub fn close(&mut self, now: Instant) -> OpId {
        let now = self.clock(now);
        let op = self.alloc_op();
        if self.is_closed() {
            self.complete(op, Err(SessionError::Closed));
            return op;
        }
        if let Some(closing) = &mut self.closing {
            closing.ops.push(op);
            return op;
        }
        if !(self.is_connected() && self.closing_has_work()) {
            self.finish_close(vec![op]);
            return op;
        }
        let app: Vec<OpId> = self
            .ops
            .iter()
            .filter(|(_, o)| o.internal.is_none())
            .map(|(id, _)| *id)
            .collect();
        for id in app {
            let published = self.published_ids(id);
            self.finish_op(id, Err(with_published(SessionError::Closed, published)));
        }
        let grace = CLOSE_GRACE.min(self.config.request_timeout);
        self.closing = Some(Closing { ops: vec![op] });
        self.timers
            .set(Timer::CloseGrace, deadline_after(now, grace));
        op
    }

    /// What a close waits for: internal ops (automatic acks, deferrals of failed events)
    /// under way, and events of auto-ack subscriptions still in the app's hands (their
    /// handlers are running: their acks are about to come).
    pub(super) fn closing_has_work(&self) -> bool {
        self.ops.values().any(|o| o.internal.is_some())
            || self.deliveries.values().any(|d| d.auto_ack && !d.settled)
    }

    /// Whether [`close`](Session::close) is waiting for automatic acknowledgements.
    pub fn is_closing(&self) -> bool {
        self.closing.is_some()
    }

    /// Ends a close: fails what is left, cancels the streams, drops the transport.
    pub(super) fn finish_close(&mut self, ops: Vec<OpId>) {
        self.fail_all(&SessionError::Closed);
        let streams: Vec<CallId> = self.subs.values().filter_map(|s| s.call).collect();
        for call in streams {
            self.outputs.push_back(Output::CancelStream(call));
        }
        if matches!(
            self.phase,
            Phase::Opening { .. } | Phase::Authenticating { .. } | Phase::Connected
        ) {
            self.transport = None;
            self.outputs.push_back(Output::Disconnect);
        }
        self.enter_closed();
        self.emit_state(ConnectionState::Closed { error: None });
        for op in ops {
            self.complete(op, Ok(OpOutcome::Closed));
        }
    }

    /// Finishes a waiting close once nothing internal is pending or its time is up.
    pub(super) fn settle_closing(&mut self, now: Instant) {
        if self.closing.is_none() {
            return;
        }
        let done = self.timers.is_expired(Timer::CloseGrace, now)
            || !self.is_connected()
            || !self.closing_has_work();
        if done {
            if let Some(closing) = self.take_closing() {
                self.finish_close(closing.ops);
            }
        }
    }

    /// Ends the wait of a close (its grace timer with it).
    pub(super) fn take_closing(&mut self) -> Option<Closing> {
        self.timers.stop(Timer::CloseGrace);
        self.closing.take()
    }

    pub(super) fn enter_closed(&mut self) {
        self.phase = Phase::Closed;
        self.calls.clear();
        self.queue.clear();
        self.subs.clear();
        self.deliveries.clear();
        self.heartbeat_call = None;
        self.timers.stop_all();
    }

    pub(super) fn close_with_error(&mut self, error: SessionError) {
        self.fail_all(&error);
        self.enter_closed();
        self.emit_state(ConnectionState::Closed { error: Some(error) });
        if let Some(closing) = self.take_closing() {
            for op in closing.ops {
                self.complete(op, Ok(OpOutcome::Closed));
            }
        }
    }

    /// Fails every pending op with `error` (ids in order).
    pub(super) fn fail_all(&mut self, error: &SessionError) {
        let ids: Vec<OpId> = self.ops.keys().copied().collect();
        for op in ids {
            let published = self.published_ids(op);
            self.finish_op(op, Err(with_published(error.clone(), published)));
        }
    }
}
