//! The payment deadline: every few seconds, orders still awaiting payment past their deadline
//! are cancelled (`axle.order.cancelled.v1`, reason "the payment deadline passed"). Several
//! nodes may run it at once: each cancellation is a versioned save, so one of them wins.

use std::time::Duration;

use axle_core::events::Outbox;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::domain::{Command, Outcome};
use crate::events;
use crate::store::{OrderStore, StoreError};

/// Orders cancelled per pass, at most.
const BATCH: u32 = 200;

pub fn spawn(
    store: OrderStore,
    outbox: Outbox,
    every: Duration,
    shutdown: CancellationToken,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {
                    match expire_overdue(&store, &outbox).await {
                        Ok(0) => {}
                        Ok(n) => tracing::info!(orders = n, "cancelled orders past their payment deadline"),
                        Err(e) => tracing::warn!(error = %e, "could not cancel overdue orders"),
                    }
                }
                _ = shutdown.cancelled() => return,
            }
        }
    })
}

/// Cancels the overdue orders of one pass; how many it cancelled.
pub async fn expire_overdue(store: &OrderStore, outbox: &Outbox) -> Result<usize, StoreError> {
    let now = axle_core::time::now();
    let mut cancelled = 0;
    for order in store.overdue(now, BATCH).await? {
        let Ok(Outcome::Changed {
            order: next,
            event_type,
        }) = order.apply(Command::Expire, "system", now)
        else {
            continue;
        };
        let Ok(event) = events::changed(&next, event_type, "system") else {
            continue;
        };
        match store.save(&next, order.version, &event).await {
            Ok(()) => cancelled += 1,
            // Paid or cancelled meanwhile: nothing to do.
            Err(StoreError::Conflict) => {}
            Err(e) => return Err(e),
        }
    }
    if cancelled > 0 {
        outbox.wake();
    }
    Ok(cancelled)
}
