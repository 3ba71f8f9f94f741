//! Every deadline of the session and the next one, after quinn-proto's `TimerTable`: the
//! connection's timers (connect step, reconnect backoff, heartbeat due, heartbeat reply,
//! close grace) are the slots of one fixed array indexed by [`Timer`], and operation
//! deadlines are kept ordered in [`OpDeadlines`]; the next deadline is the minimum of the
//! array and the first operation deadline, never a scan of every pending operation.

use std::collections::BTreeSet;

use super::*;

/// The connection's timers, one slot each in the [`TimerTable`]. At most one of each
/// runs at a time; which ones may run depends on the phase (a timer is stopped when the
/// phase it belongs to is left).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Timer {
    /// Opening the transport or waiting for the `Connect` reply takes too long
    /// (`Phase::Opening` / `Phase::Authenticating`).
    ConnectStep = 0,
    /// The backoff before the next reconnect attempt is over (`Phase::Backoff`).
    Reconnect = 1,
    /// The heartbeat in flight got no reply in time (`Phase::Connected`).
    HeartbeatReply = 2,
    /// The next heartbeat is due (`Phase::Connected`, heartbeats enabled).
    HeartbeatDue = 3,
    /// A close stops waiting for the automatic acknowledgements under way.
    CloseGrace = 4,
}

impl Timer {
    /// Every timer, in the order [`Session::handle_timeout`] handles them.
    pub(super) const ALL: [Timer; 5] = [
        Timer::ConnectStep,
        Timer::Reconnect,
        Timer::HeartbeatReply,
        Timer::HeartbeatDue,
        Timer::CloseGrace,
    ];
}

/// When each [`Timer`] fires (`None`: stopped).
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct TimerTable {
    at: [Option<Instant>; Timer::ALL.len()],
}

impl TimerTable {
    /// Starts (or moves) `timer` to fire at `at`.
    pub(super) fn set(&mut self, timer: Timer, at: Instant) {
        self.at[timer as usize] = Some(at);
    }

    /// Stops `timer`.
    pub(super) fn stop(&mut self, timer: Timer) {
        self.at[timer as usize] = None;
    }

    /// Stops every timer.
    pub(super) fn stop_all(&mut self) {
        self.at = [None; Timer::ALL.len()];
    }

    /// When `timer` fires, if it runs.
    pub(super) fn get(&self, timer: Timer) -> Option<Instant> {
        self.at[timer as usize]
    }

    /// Whether `timer` runs and is due at `now`.
    pub(super) fn is_expired(&self, timer: Timer, now: Instant) -> bool {
        self.get(timer).is_some_and(|at| at <= now)
    }

    /// The earliest time any timer fires.
    pub(super) fn next(&self) -> Option<Instant> {
        self.at.iter().flatten().min().copied()
    }

    /// The timers due at `now`, in the order of [`Timer::ALL`]. A snapshot: the table
    /// may change while they are handled.
    pub(super) fn expired(&self, now: Instant) -> impl Iterator<Item = Timer> + use<> {
        let at = self.at;
        Timer::ALL
            .into_iter()
            .filter(move |t| at[*t as usize].is_some_and(|x| x <= now))
    }
}

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
        match (self.timers.next(), self.op_deadlines.first()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Handles the operation deadlines and then the connection's timers due at `now`.
    pub(super) fn handle_timeout_inner(&mut self, now: Instant) {
        if self.is_closed() {
            return;
        }
        let expired = self.op_deadlines.expired(now);
        for op in expired {
            let published = self.published_ids(op);
            self.finish_op(op, Err(SessionError::Timeout { published }));
        }
        for timer in self.timers.expired(now) {
            // Handling one timer may stop another (a lost connection stops the
            // heartbeat timers): only a timer still due is handled.
            if !self.timers.is_expired(timer, now) {
                continue;
            }
            match timer {
                Timer::ConnectStep => {
                    self.attempt_failed("timed out while connecting".to_owned(), true, now);
                }
                Timer::Reconnect => {
                    self.timers.stop(Timer::Reconnect);
                    if let Phase::Backoff { attempt } = self.phase {
                        self.start_transport(attempt, now);
                    }
                }
                Timer::HeartbeatReply => {
                    self.connection_lost("heartbeat timed out".to_owned(), now);
                }
                Timer::HeartbeatDue => match self.config.heartbeat_interval {
                    Some(interval) => {
                        self.timers
                            .set(Timer::HeartbeatDue, deadline_after(now, interval));
                        if self.heartbeat_call.is_none() {
                            self.send_heartbeat(now);
                        }
                    }
                    None => self.timers.stop(Timer::HeartbeatDue),
                },
                Timer::CloseGrace => self.settle_closing(now),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_empty_table_has_no_next_and_nothing_expired() {
        let table = TimerTable::default();
        let now = Instant::now();
        assert_eq!(table.next(), None);
        assert_eq!(table.expired(now).count(), 0);
        assert!(Timer::ALL.iter().all(|t| table.get(*t).is_none()));
    }

    #[test]
    fn next_is_the_earliest_running_timer() {
        let t0 = Instant::now();
        let mut table = TimerTable::default();
        table.set(Timer::HeartbeatDue, t0 + Duration::from_secs(30));
        assert_eq!(table.next(), Some(t0 + Duration::from_secs(30)));
        table.set(Timer::HeartbeatReply, t0 + Duration::from_secs(5));
        table.set(Timer::CloseGrace, t0 + Duration::from_secs(7));
        assert_eq!(table.next(), Some(t0 + Duration::from_secs(5)));
        // Moving a timer replaces its deadline.
        table.set(Timer::HeartbeatReply, t0 + Duration::from_secs(60));
        assert_eq!(table.next(), Some(t0 + Duration::from_secs(7)));
        assert_eq!(
            table.get(Timer::HeartbeatReply),
            Some(t0 + Duration::from_secs(60))
        );
    }

    #[test]
    fn stop_removes_a_timer_from_next_and_expired() {
        let t0 = Instant::now();
        let mut table = TimerTable::default();
        table.set(Timer::ConnectStep, t0 + Duration::from_secs(1));
        table.set(Timer::CloseGrace, t0 + Duration::from_secs(2));
        table.stop(Timer::ConnectStep);
        assert_eq!(table.get(Timer::ConnectStep), None);
        assert_eq!(table.next(), Some(t0 + Duration::from_secs(2)));
        let later = t0 + Duration::from_secs(10);
        assert_eq!(
            table.expired(later).collect::<Vec<_>>(),
            [Timer::CloseGrace]
        );
        table.stop_all();
        assert_eq!(table.next(), None);
        assert_eq!(table.expired(later).count(), 0);
    }

    #[test]
    fn expired_lists_the_due_timers_in_handling_order() {
        let t0 = Instant::now();
        let mut table = TimerTable::default();
        table.set(Timer::CloseGrace, t0 + Duration::from_secs(1));
        table.set(Timer::HeartbeatDue, t0 + Duration::from_secs(2));
        table.set(Timer::HeartbeatReply, t0 + Duration::from_secs(3));
        assert_eq!(table.expired(t0).count(), 0);
        // A deadline equal to `now` is due.
        assert_eq!(
            table
                .expired(t0 + Duration::from_secs(2))
                .collect::<Vec<_>>(),
            [Timer::HeartbeatDue, Timer::CloseGrace]
        );
        assert!(table.is_expired(Timer::CloseGrace, t0 + Duration::from_secs(1)));
        assert!(!table.is_expired(Timer::HeartbeatReply, t0 + Duration::from_secs(2)));
        assert_eq!(
            table
                .expired(t0 + Duration::from_secs(3))
                .collect::<Vec<_>>(),
            [
                Timer::HeartbeatReply,
                Timer::HeartbeatDue,
                Timer::CloseGrace
            ]
        );
        // The snapshot does not follow later changes of the table.
        let snapshot = table.expired(t0 + Duration::from_secs(3));
        table.stop_all();
        assert_eq!(snapshot.count(), 3);
    }
}
