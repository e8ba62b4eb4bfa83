//! Warnings the data plane can raise at the rate of requests — an upstream down under load, a
//! route naming a consumer that is gone — rate-limited per kind, so an outage writes a few lines
//! and a count instead of a line per request (and no disk fills up while it lasts).
//!
//! Each kind logs its first [`FIRST`] occurrences of an [`INTERVAL`]; the rest are counted, and
//! the count is logged with the next line of the kind, or by [`flush`] once the interval is
//! over when none follows.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Occurrences of a kind logged per interval.
pub const FIRST: u32 = 5;
/// How long the first occurrences stand for the rest.
pub const INTERVAL: Duration = Duration::from_secs(10);

/// One kind of warning.
#[derive(Debug)]
pub struct Warning {
    pub kind: &'static str,
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    /// When the current interval began; none before the first occurrence.
    since: Option<Instant>,
    logged: u32,
    suppressed: u64,
}

pub static ACCEPT_FAILED: Warning = Warning::new("accept failed");
pub static UPSTREAM_FAILED: Warning = Warning::new("upstream request failed");
pub static NO_ANONYMOUS_CONSUMER: Warning = Warning::new("anonymous_consumer does not exist");
pub static NO_SPLIT_UPSTREAM: Warning = Warning::new("traffic-split: no such upstream");
pub static CLIENT_CONNECTIONS: Warning = Warning::new("a client has all the connections it may");

/// Every kind, for [`flush`].
static ALL: [&Warning; 5] = [
    &ACCEPT_FAILED,
    &CLIENT_CONNECTIONS,
    &UPSTREAM_FAILED,
    &NO_ANONYMOUS_CONSUMER,
    &NO_SPLIT_UPSTREAM,
];

impl Warning {
    const fn new(kind: &'static str) -> Warning {
        Warning {
            kind,
            state: Mutex::new(State {
                since: None,
                logged: 0,
                suppressed: 0,
            }),
        }
    }

    /// Whether this occurrence is to be logged: `Some(n)` with the number of occurrences left
    /// out since the last line (to log beside it), None when it is left out itself.
    pub fn admit(&self) -> Option<u64> {
        self.admit_at(Instant::now())
    }

    fn admit_at(&self, now: Instant) -> Option<u64> {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let over = state.since.is_none_or(|since| now - since >= INTERVAL);
        if over {
            let suppressed = std::mem::take(&mut state.suppressed);
            state.since = Some(now);
            state.logged = 1;
            return Some(suppressed);
        }
        if state.logged < FIRST {
            state.logged += 1;
            return Some(0);
        }
        state.suppressed += 1;
        None
    }

    /// The occurrences left out of an interval that is over, taken (none if it is not over).
    fn take_suppressed(&self, now: Instant) -> u64 {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        match state.since {
            Some(since) if now - since >= INTERVAL && state.suppressed > 0 => {
                state.since = None;
                state.logged = 0;
                std::mem::take(&mut state.suppressed)
            }
            _ => 0,
        }
    }
}

/// Logs how many warnings of each kind were left out of intervals now over; called every few
/// seconds, so the count of an outage's last interval is not lost when the outage ends.
pub fn flush() {
    let now = Instant::now();
    for warning in ALL {
        let suppressed = warning.take_suppressed(now);
        if suppressed > 0 {
            tracing::warn!(
                suppressed,
                kind = warning.kind,
                "gateway: more warnings of this kind were left out"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_of_an_interval_are_logged_and_the_rest_counted() {
        let warning = Warning::new("test");
        let start = Instant::now();
        let logged: Vec<Option<u64>> = (0..8).map(|_| warning.admit_at(start)).collect();
        assert_eq!(
            logged,
            [
                Some(0),
                Some(0),
                Some(0),
                Some(0),
                Some(0),
                None,
                None,
                None
            ]
        );
        assert_eq!(
            warning.take_suppressed(start),
            0,
            "the interval is not over"
        );
        // The next interval's first line carries the count.
        assert_eq!(warning.admit_at(start + INTERVAL), Some(3));
        assert_eq!(warning.admit_at(start + INTERVAL), Some(0));
        // A count left when the occurrences stop is taken by the flush.
        for _ in 0..10 {
            warning.admit_at(start + INTERVAL);
        }
        assert_eq!(warning.take_suppressed(start + INTERVAL * 2), 7);
        assert_eq!(warning.take_suppressed(start + INTERVAL * 3), 0);
        assert_eq!(warning.admit_at(start + INTERVAL * 3), Some(0));
    }
}
