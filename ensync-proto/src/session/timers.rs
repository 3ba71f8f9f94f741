//! Every deadline of the session and the next one: the connection's timers live in its
//! phase (connect step, reconnect backoff) and beside it (heartbeat due, heartbeat
//! reply, close grace), one each; operation deadlines are kept ordered in
//! [`OpDeadlines`], so the next deadline is a handful of comparisons, never a scan of
//! every pending operation.

use std::collections::BTreeSet;

use super::*;

/// The deadlines of pending operations, ordered by time.
#[derive(Debug, Default)]
pub(super) struct OpDeadlines(BTreeSet<(Instant, OpId)>);

impl OpDeadlines {
    pub(super) fn insert(&mut self, deadline: Instant, op: OpId) {
        self.0.insert((deadline, op));
    }

    pub(super) fn remove(&mut self, deadline: Instant, op: OpId) {
        self.0.remove(&(deadline, op));
    }

    /// The earliest deadline.
    pub(super) fn first(&self) -> Option<Instant> {
        self.0.first().map(|(t, _)| *t)
    }

    /// The operations whose deadline is at or before `now`, in operation order.
    pub(super) fn expired(&self, now: Instant) -> Vec<OpId> {
        let mut ops: Vec<OpId> = self
            .0
            .iter()
            .take_while(|(t, _)| *t <= now)
            .map(|(_, op)| *op)
            .collect();
        ops.sort();
        ops
    }
}

impl Session {
    /// When [`Session::handle_timeout`] must be called next (`None`: no timer).
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        let mut t: Option<Instant> = None;
        let mut consider = |x: Option<Instant>| {
            if let Some(x) = x {
                t = Some(t.map_or(x, |t| t.min(x)));
            }
        };
        match self.phase {
            Phase::Closed => return None,
            Phase::Opening { deadline, .. } | Phase::Authenticating { deadline, .. } => {
                consider(Some(deadline))
            }
            Phase::Backoff { at, .. } => consider(Some(at)),
            Phase::Connected => {
                consider(self.heartbeat_call.map(|(_, d)| d));
                if self.config.heartbeat_interval.is_some() {
                    consider(self.next_heartbeat);
                }
            }
            Phase::Idle => {}
        }
        consider(self.op_deadlines.first());
        if let Some(closing) = &self.closing {
            consider(Some(closing.deadline));
        }
        t
    }
}
