//! What travels to an account's actor: the messages, the answers, and the routing map that
//! leads to each actor's mailbox.
//!
//! Every read and every write of an account is a message in its mailbox, handled by its actor
//! alone. A mailbox holds at most [`crate::EngineConfig::account_inflight_max`] messages; one
//! more is refused as `Overloaded { scope: "account" }` at once (nothing waits for room).
//!
//! **Sending.** A message is sent only while holding the routing map's entry for the account
//! (`Routes::get`, a shard read lock, never held across an await), and an actor leaves the map
//! only under the shard's write lock and only with an empty mailbox: so once an actor has left,
//! no message can reach it, and a message that found it is handled.

use dashmap::DashMap;
use std::sync::atomic::AtomicU64;
use tokio::sync::{mpsc, oneshot};

use tally_core::{Account, AccountId, Amount, Balance, Hold, Outcome, Request};

use crate::Error;

/// The hasher of the per-request maps (routing, directory): foldhash, seeded per process.
pub(crate) type FastHash = foldhash::fast::RandomState;

/// A resident account's way in: its actor's mailbox and what the supervisor reads of it.
pub(crate) struct Route {
    pub(crate) tx: mpsc::Sender<Msg>,
    /// When a request last came (the engine clock's ms), for idle passivation and eviction.
    pub(crate) last_access_ms: AtomicU64,
    /// The `last_seq` of the account's newest saved snapshot (0: none since activation),
    /// moved by whoever saved it (shared with the actor, which holds no `Route`: a route holds
    /// the mailbox's sender, and the actor ends when the last sender is gone).
    pub(crate) snapshot_seq: std::sync::Arc<AtomicU64>,
    /// A `Passivate` is in its mailbox or being tried (at most one is: a second would keep the
    /// first from finding the mailbox empty); the actor clears it after a try that kept it.
    pub(crate) passivate_asked: std::sync::Arc<std::sync::atomic::AtomicBool>,
    /// A `Legs` is in its mailbox (one is enough: it takes in every leg summed so far).
    pub(crate) legs_asked: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl Route {
    /// Asks the actor to take its legs in now, unless it was asked already.
    pub(crate) fn ask_legs(&self) {
        self.ask_once(&self.legs_asked, Msg::Legs);
    }

    /// Asks the actor to passivate, unless it was asked already.
    pub(crate) fn ask_passivate(&self) {
        self.ask_once(&self.passivate_asked, Msg::Passivate);
    }

    /// Sends `msg` unless `asked` says one is waiting already (the actor clears it).
    fn ask_once(&self, asked: &std::sync::atomic::AtomicBool, msg: Msg) {
        use std::sync::atomic::Ordering;
        if !asked.swap(true, Ordering::AcqRel) && self.tx.try_send(msg).is_err() {
            asked.store(false, Ordering::Release);
        }
    }
}

/// Account id → its actor's route.
pub(crate) type Routes = DashMap<AccountId, std::sync::Arc<Route>, FastHash>;

/// A reply from an account actor: the result and the journal sequence number the caller must
/// see durable before it is answered (0: nothing to wait for).
pub(crate) struct Reply<T> {
    pub(crate) result: Result<T, Error>,
    pub(crate) wait_seq: u64,
}

impl<T> Reply<T> {
    pub(crate) fn err(e: Error) -> Self {
        Reply {
            result: Err(e),
            wait_seq: 0,
        }
    }
}

/// An app's catalog as cached: its newest version and every endpoint's entry.
pub(crate) type Catalog = (
    u64,
    std::collections::BTreeMap<String, tally_core::CatalogEntry>,
);

/// The catalog of `account`, for the cache.
pub(crate) fn catalog_of(account: &Account) -> Catalog {
    let entries = account
        .catalog()
        .map(|(endpoint, entry)| (endpoint.to_owned(), entry.clone()))
        .collect();
    (account.catalog_version(), entries)
}

/// Queries answered from the account's state.
pub(crate) enum Query {
    Balance,
    Check(Amount),
    Hold(u64),
    Op(tally_core::OpId),
    State,
    /// Its state as it stands, due work not run (for an audit at a quiescent point).
    AsItStands,
    /// The app's price catalog.
    Catalog,
    /// The room for one more hold or charge (see `Account::spend_room`).
    Room {
        app: AccountId,
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
        app: AccountId,
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
    Catalog(Box<Catalog>),
    PeriodUse(tally_core::PeriodUse),
    Grants(Box<tally_core::Grants>),
}

/// Messages an account actor handles, in the order they arrive.
pub(crate) enum Msg {
    /// A write (due work runs first).
    Execute {
        request: Box<Request>,
        reply: oneshot::Sender<Reply<Outcome>>,
    },
    /// Writes of one batch on this account, executed in order (one message however many).
    ExecuteMany {
        requests: Vec<Request>,
        reply: oneshot::Sender<Vec<Reply<Outcome>>>,
    },
    /// A read (due work runs first).
    Read {
        query: Box<Query>,
        reply: oneshot::Sender<Reply<Answer>>,
    },
    /// Run what is due now (for a moved test clock); answers how many records it made.
    Due {
        reply: oneshot::Sender<Reply<usize>>,
    },
    /// A leg was appended for the account: take it in now (a threshold watches it).
    Legs,
    /// Leave memory if idle and durable: snapshot, leave the routing map, stop.
    Passivate,
    /// A copy of the account for a checkpoint, if it changed since its last snapshot (or
    /// always, with `all`); the checkpoint saves it once it is durable.
    Snapshot {
        all: bool,
        reply: oneshot::Sender<Option<Box<Account>>>,
    },
    /// Test hook: panic inside the actor, as a bug would.
    #[cfg(feature = "testing")]
    Panic,
}

impl Msg {
    /// Answers the message with `e` without handling it (its account could not be loaded).
    pub(crate) fn refuse(self, e: &Error) {
        match self {
            Msg::Execute { reply, .. } => drop(reply.send(Reply::err(e.clone()))),
            Msg::ExecuteMany { requests, reply } => {
                drop(reply.send(requests.iter().map(|_| Reply::err(e.clone())).collect()))
            }
            Msg::Read { reply, .. } => drop(reply.send(Reply::err(e.clone()))),
            Msg::Due { reply } => drop(reply.send(Reply::err(e.clone()))),
            Msg::Snapshot { reply, .. } => drop(reply.send(None)),
            Msg::Legs | Msg::Passivate => {}
            #[cfg(feature = "testing")]
            Msg::Panic => {}
        }
    }
}

#[cfg(test)]
mod tests {
    /// A mailbox allocates its slots 32 at a time, one block per resident account at least:
    /// a small message keeps an idle account's mailbox near 1 KiB (the largest variants, a
    /// request and a query, are boxed).
    #[test]
    fn a_message_is_a_few_words() {
        assert!(std::mem::size_of::<super::Msg>() <= 32);
    }
}
