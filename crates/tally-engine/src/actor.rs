//! The account actor: one per resident account, handling that account's messages one at a time.
//!
//! The actor struct is empty; its state is the slot it serves. Each handler is a few lines that
//! delegate to [`Shared`] and to tally-core. Domain errors travel in the reply; a handler returns
//! `Err` (which stops the actor) only for bugs, and a panic is caught by ractor and reported to
//! the supervisor, which retires the slot so the next request reloads the account from the
//! store.

use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tally_core::{Account, Amount, Balance, Hold, Outcome, Request};

use crate::shared::{Reply, Shared, Slot};

/// Queries answered from the account's state.
pub(crate) enum Query {
    Balance,
    Check(Amount),
    Hold(u64),
    Op(tally_core::OpId),
    State,
    /// The app's price catalog.
    Catalog,
    /// The room for one more hold or charge (see `Account::spend_room`).
    Room {
        app: tally_core::AccountId,
        endpoint: String,
        token: Option<u64>,
        caps: tally_core::SpendCaps,
        now: tally_core::Timestamp,
        /// A period-tiered price's period: the answer carries the account's use in it.
        period: Option<tally_core::Period>,
    },
    /// Its grants and allowance, as of `now`.
    Grants(tally_core::Timestamp),
    /// Its use of a period-tiered price in the period of `now`.
    PeriodUse {
        app: tally_core::AccountId,
        endpoint: String,
        period: tally_core::Period,
        now: tally_core::Timestamp,
    },
}

/// Answers to [`Query`].
pub(crate) enum Answer {
    Balance(Balance),
    Check(bool),
    Hold(Option<Hold>),
    Op(Option<Outcome>),
    State(Box<Account>),
    Room(
        Result<(Amount, tally_core::Limiter), tally_core::Error>,
        Option<tally_core::PeriodUse>,
    ),
    Catalog(Box<crate::shared::Catalog>),
    PeriodUse(tally_core::PeriodUse),
    Grants(Box<crate::grants::Grants>),
}

/// Messages an account actor handles.
pub(crate) enum AccountMsg {
    /// A write.
    Execute {
        request: Request,
        reply: RpcReplyPort<Reply<Outcome>>,
    },
    /// A read (after expiring due holds).
    Read {
        query: Query,
        reply: RpcReplyPort<Reply<Answer>>,
    },
    /// The expiry timer fired.
    Expire,
    /// A leg was appended for the account: take it in now (a threshold watches it).
    Legs,
    /// Leave memory if idle: snapshot, leave the routing map, stop.
    Passivate,
    /// Test hook: panic inside the handler, as a bug would.
    #[cfg(feature = "test-hooks")]
    Panic,
}

pub(crate) struct AccountActor;

pub(crate) struct ActorState {
    shared: Arc<Shared>,
    slot: Arc<Slot>,
}

impl Actor for AccountActor {
    type Msg = AccountMsg;
    type State = ActorState;
    type Arguments = (Arc<Shared>, Arc<Slot>);

    async fn pre_start(
        &self,
        _myself: ActorRef<Self::Msg>,
        (shared, slot): Self::Arguments,
    ) -> Result<Self::State, ActorProcessingErr> {
        Ok(ActorState { shared, slot })
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        message: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        if state.slot.state.lock().retired {
            // Passivated or retired while this message waited: drop it (its reply port with it),
            // and the caller re-routes to the account's new actor.
            return Ok(());
        }
        match message {
            AccountMsg::Execute { request, reply } => {
                state.shared.expire_due(&state.slot);
                let answer = state.shared.execute(&state.slot, &request);
                let _ = reply.send(answer);
            }
            AccountMsg::Read { query, reply } => {
                state.shared.expire_due(&state.slot);
                let _ = reply.send(read(&state.shared, &state.slot, query));
            }
            AccountMsg::Expire => {
                state.slot.timer_at_ms.store(0, Ordering::Release);
                state.shared.expire_due(&state.slot);
            }
            AccountMsg::Legs => {
                let mut slot = state.slot.state.lock();
                if let Err(e) = state.shared.take_in_legs(&mut slot.account) {
                    tracing::error!(account = %state.slot.id, error = %e, "taking in legs");
                }
            }
            AccountMsg::Passivate => {
                if passivate(&state.shared, &state.slot).await {
                    myself.stop(Some("passivated".into()));
                    return Ok(());
                }
            }
            #[cfg(feature = "test-hooks")]
            AccountMsg::Panic => panic!("injected panic in the actor of {}", state.slot.id),
        }
        arm_timer(&myself, state);
        Ok(())
    }
}

pub(crate) fn read(shared: &Shared, slot: &Slot, query: Query) -> Reply<Answer> {
    let mut state = slot.state.lock();
    if let Err(e) = shared.take_in_legs(&mut state.account) {
        return Reply {
            result: Err(e),
            wait_seq: 0,
        };
    }
    let account = &state.account;
    let answer = match query {
        Query::Balance => Answer::Balance(account.balance()),
        Query::Check(minimum) => Answer::Check(account.check(minimum)),
        Query::Hold(seq) => Answer::Hold(account.hold(seq).cloned()),
        Query::Op(op) => Answer::Op(account.remembered(op).map(|(outcome, _)| outcome)),
        Query::State => Answer::State(Box::new(account.clone())),
        Query::Catalog => Answer::Catalog(Box::new(crate::shared::catalog_of(account))),
        Query::Room {
            app,
            endpoint,
            token,
            caps,
            now,
            period,
        } => Answer::Room(
            account.spend_room(app, &endpoint, token, caps, now),
            period.map(|p| account.period_use(app, &endpoint, &p, now)),
        ),
        Query::Grants(now) => Answer::Grants(Box::new(crate::grants::Grants::of(account, now))),
        Query::PeriodUse {
            app,
            endpoint,
            period,
            now,
        } => Answer::PeriodUse(account.period_use(app, &endpoint, &period, now)),
    };
    Reply {
        result: Ok(answer),
        // Show nothing that is not durable: wait for everything this state reflects.
        wait_seq: account.last_seq(),
    }
}

/// Arms the expiry timer for the earliest pending deadline, unless one is armed for it already.
fn arm_timer(myself: &ActorRef<AccountMsg>, state: &mut ActorState) {
    let slot = &state.slot;
    let Some(deadline) = slot.state.lock().account.next_deadline() else {
        return;
    };
    let armed = slot.timer_at_ms.load(Ordering::Acquire);
    if armed != 0 && armed <= deadline.0 {
        return;
    }
    let now = state.shared.now_ms();
    // A due deadline whose work failed waits for its retry, not 1 ms.
    let deferred = slot.timers_deferred_until_ms.load(Ordering::Acquire);
    let deadline = if deadline.0 <= now && deferred > now {
        tally_core::Timestamp(deferred)
    } else {
        deadline
    };
    let wait = Duration::from_millis(deadline.0.saturating_sub(now).max(1));
    slot.timer_at_ms.store(deadline.0.max(1), Ordering::Release);
    myself.send_after(wait, || AccountMsg::Expire);
}

/// Saves a snapshot and leaves the routing map, if the account is idle and everything its state
/// reflects is durable. Returns whether the actor should stop.
async fn passivate(shared: &Shared, slot: &Slot) -> bool {
    loop {
        if slot.inflight.load(Ordering::Acquire) > 0 {
            return false;
        }
        let seq = slot.state.lock().account.last_seq();
        if shared.wait_durable(seq).await.is_err() {
            return false;
        }
        let _stripe = shared.stripe(slot.id);
        let mut state = slot.state.lock();
        if state.retired {
            return true;
        }
        if state.account.last_seq() != seq {
            continue; // a leg arrived meanwhile; wait for it to be durable too
        }
        if slot.inflight.load(Ordering::Acquire) > 0 {
            return false;
        }
        if let Err(e) = shared.store.save(&state.account) {
            tracing::warn!(account = %slot.id, error = %e, "snapshot failed; account stays resident");
            return false;
        }
        shared.retire(slot, &mut state);
        return true;
    }
}
