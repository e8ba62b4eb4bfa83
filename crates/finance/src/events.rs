//! Events finance publishes (through its outbox). Types are in [`crate::domain::receivable`]
//! and [`crate::domain::ledger`].

use axle_core::events::{CloudEvent, EventError};
use serde::Serialize;
use uuid::Uuid;

use crate::domain::ledger::Hold;
use crate::domain::receivable::Receivable;
use crate::store::Account;

#[derive(Serialize)]
struct ReceivableChanged<'a> {
    receivable: &'a Receivable,
    actor: &'a str,
}

pub fn receivable(r: &Receivable, ty: &str, actor: &str) -> Result<CloudEvent, EventError> {
    let data = ReceivableChanged {
        receivable: r,
        actor,
    };
    CloudEvent::new(crate::NAME, ty, r.id, r.version, &data)
}

#[derive(Serialize)]
struct AccountOpened<'a> {
    account: &'a Account,
    actor: &'a str,
}

pub fn account_opened(account: &Account, actor: &str) -> Result<CloudEvent, EventError> {
    let data = AccountOpened { account, actor };
    CloudEvent::new(
        crate::NAME,
        crate::domain::ledger::ACCOUNT_OPENED,
        account.id,
        account.version,
        &data,
    )
}

#[derive(Serialize)]
struct TopUp<'a> {
    account_id: Uuid,
    amount: i64,
    reference: &'a str,
    actor: &'a str,
}

pub fn topped_up(
    account: Uuid,
    version: i64,
    amount: i64,
    reference: &str,
    actor: &str,
) -> Result<CloudEvent, EventError> {
    let data = TopUp {
        account_id: account,
        amount,
        reference,
        actor,
    };
    CloudEvent::new(
        crate::NAME,
        crate::domain::ledger::TOPPED_UP,
        account,
        version,
        &data,
    )
}

#[derive(Serialize)]
struct HoldChanged<'a> {
    hold: &'a Hold,
    actor: &'a str,
}

/// A hold placed, released or captured; the subject is its account, at the account's version.
pub fn hold(hold: &Hold, ty: &str, version: i64, actor: &str) -> Result<CloudEvent, EventError> {
    CloudEvent::new(
        crate::NAME,
        ty,
        hold.account_id,
        version,
        &HoldChanged { hold, actor },
    )
}
