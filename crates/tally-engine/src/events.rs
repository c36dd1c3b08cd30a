//! Events: what happened to the ledger, for whoever subscribes ([`Tally::subscribe`]).
//!
//! Events of journal records are published only once their record is durable, in journal
//! order (a background task drains them as the durable point moves), so a subscriber never
//! hears of a change a crash could undo. `credit.check-available` (a read) is published when
//! it is answered, after the events of every record durable by then.
//!
//! **Bounds.** Each subscriber has a queue of [`EVENTS_QUEUE`] events. A subscriber that falls
//! further behind loses the oldest and is told how many ([`Missed`]) on its next receive; the
//! engine never waits for a subscriber. Events waiting for durability are bounded by the
//! journal's own queue bound. With no subscriber, no event is built.
//!
//! **Low balance.** An account's policy sets its threshold
//! ([`tally_core::PolicySetting::LowBalance`], through [`Tally::set_policy`]); `balance.low`
//! fires once when a change takes the account's available balance below it, and again only
//! after a change has taken it back to the threshold or above (once per crossing).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use dashmap::DashMap;
use parking_lot::Mutex;
use tally_core::{
    Account, AccountId, Amount, Change, HoldId, Origin, PostingId, Record, Timestamp,
};
use tokio::sync::{broadcast, watch, Notify};

use crate::Tally;

/// Events each subscriber may fall behind by before it starts losing the oldest.
pub const EVENTS_QUEUE: usize = 4_096;

/// Something that happened, with when, who asked, and the journal sequence number of its
/// record (0 for a read).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event {
    /// The journal sequence number (0: not a record).
    pub seq: u64,
    /// When.
    pub at: Timestamp,
    /// Who asked.
    pub origin: Origin,
    /// What.
    pub kind: EventKind,
}

/// What happened.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EventKind {
    /// `credit.check-available`: a funds check was answered.
    CheckAvailable {
        /// The account.
        account: AccountId,
        /// The minimum asked for.
        minimum: u64,
        /// The answer.
        allowed: bool,
    },
    /// `credit.record-cost`: a cost was charged.
    RecordCost {
        /// The account charged.
        account: AccountId,
        /// The app credited.
        app: AccountId,
        /// The endpoint.
        endpoint: String,
        /// The cost.
        amount: Amount,
        /// The posting made.
        posting: PostingId,
    },
    /// `credit.funding-update`: the account's total funding changed (a funding or an update).
    FundingUpdate {
        /// The account.
        account: AccountId,
        /// Total funding before.
        old: u128,
        /// Total funding after.
        new: u128,
    },
    /// `hold.reserved`.
    HoldReserved {
        /// The hold.
        hold: HoldId,
        /// The app.
        app: AccountId,
        /// The amount held.
        amount: Amount,
        /// When it expires.
        expires_at: Timestamp,
    },
    /// `hold.committed`.
    HoldCommitted {
        /// The hold.
        hold: HoldId,
        /// The posting made.
        posting: PostingId,
        /// Posted to the app.
        amount_posted: Amount,
        /// Released back.
        amount_released: Amount,
    },
    /// `hold.extended`.
    HoldExtended {
        /// The hold.
        hold: HoldId,
        /// The amount added (zero when only the deadline moved).
        amount: Amount,
        /// What it holds in all now.
        total: Amount,
        /// When it expires now.
        expires_at: Timestamp,
    },
    /// `hold.settled`: part of a hold posted, the hold still pending.
    HoldSettled {
        /// The hold.
        hold: HoldId,
        /// The posting made.
        posting: PostingId,
        /// Posted to the app.
        amount_posted: Amount,
        /// What the hold still holds.
        amount_held: Amount,
    },
    /// `hold.voided`.
    HoldVoided {
        /// The hold.
        hold: HoldId,
        /// Released back.
        amount_released: Amount,
    },
    /// `hold.expired`.
    HoldExpired {
        /// The hold.
        hold: HoldId,
        /// Released back.
        amount_released: Amount,
    },
    /// `refund`.
    Refund {
        /// The posting refunded.
        posting: PostingId,
        /// The amount returned.
        amount: Amount,
    },
    /// `posting.corrected`: an estimated posting was corrected to what the call cost.
    PostingCorrected {
        /// The posting.
        posting: PostingId,
        /// What the estimate posted.
        estimated: Amount,
        /// What the posting is now.
        amount: Amount,
    },
    /// `grant.issued`: a prepaid credit grant was issued (by a request, or for an allowance's
    /// period).
    GrantIssued {
        /// The grant.
        grant: tally_core::GrantId,
        /// The amount.
        amount: Amount,
        /// When it expires (`None`: never).
        expires_at: Option<Timestamp>,
    },
    /// `grant.expired`: what an expired grant had left went back to its funding account.
    GrantExpired {
        /// The grant.
        grant: tally_core::GrantId,
        /// The amount given back.
        amount: Amount,
    },
    /// `balance.low`: the available balance went below the account's threshold.
    LowBalance {
        /// The account.
        account: AccountId,
        /// Available after the change.
        available: i128,
        /// The threshold.
        threshold: u64,
    },
}

impl Event {
    /// The event's name (`credit.check-available`, `credit.record-cost`,
    /// `credit.funding-update`, `hold.reserved`, `hold.extended`, `hold.settled`,
    /// `hold.committed`, `hold.voided`, `hold.expired`, `refund`, `posting.corrected`,
    /// `grant.issued`, `grant.expired`, `balance.low`).
    pub fn name(&self) -> &'static str {
        match self.kind {
            EventKind::CheckAvailable { .. } => "credit.check-available",
            EventKind::RecordCost { .. } => "credit.record-cost",
            EventKind::FundingUpdate { .. } => "credit.funding-update",
            EventKind::HoldReserved { .. } => "hold.reserved",
            EventKind::HoldCommitted { .. } => "hold.committed",
            EventKind::HoldExtended { .. } => "hold.extended",
            EventKind::HoldSettled { .. } => "hold.settled",
            EventKind::HoldVoided { .. } => "hold.voided",
            EventKind::HoldExpired { .. } => "hold.expired",
            EventKind::Refund { .. } => "refund",
            EventKind::LowBalance { .. } => "balance.low",
            EventKind::PostingCorrected { .. } => "posting.corrected",
            EventKind::GrantIssued { .. } => "grant.issued",
            EventKind::GrantExpired { .. } => "grant.expired",
        }
    }
}

/// A subscriber fell behind and lost this many events (the oldest).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("the subscriber fell behind and missed {0} events")]
pub struct Missed(pub u64);

/// A subscription: events in publication order. Dropping it unsubscribes.
pub struct Subscription {
    rx: broadcast::Receiver<Event>,
    events: Arc<Events>,
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.events.subscribers.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Subscription {
    /// The next event; `Ok(None)` once the engine is gone; `Err(Missed(n))` once after falling
    /// behind by `n` events (the next call goes on with the oldest still kept).
    pub async fn recv(&mut self) -> Result<Option<Event>, Missed> {
        match self.rx.recv().await {
            Ok(event) => Ok(Some(event)),
            Err(broadcast::error::RecvError::Closed) => Ok(None),
            Err(broadcast::error::RecvError::Lagged(n)) => Err(Missed(n)),
        }
    }

    /// The next event if one is ready (`Ok(None)`: none now).
    pub fn try_recv(&mut self) -> Result<Option<Event>, Missed> {
        match self.rx.try_recv() {
            Ok(event) => Ok(Some(event)),
            Err(broadcast::error::TryRecvError::Lagged(n)) => Err(Missed(n)),
            Err(_) => Ok(None),
        }
    }
}

struct Threshold {
    amount: u64,
    below: AtomicBool,
}

/// An appender's share of the append gate, held from before its append until its record's
/// events are held.
pub(crate) type Held<'a> = parking_lot::RwLockReadGuard<'a, ()>;

/// The engine's side: events waiting for durability, the channel, the thresholds.
pub(crate) struct Events {
    tx: broadcast::Sender<Event>,
    pending: Mutex<BTreeMap<u64, Vec<Event>>>,
    /// Shared by appenders between their append and the holding of its events; a drain takes
    /// it exclusively for a moment, so that every record it may publish has its events held.
    appending: parking_lot::RwLock<()>,
    thresholds: DashMap<AccountId, Threshold>,
    any_thresholds: AtomicBool,
    /// Live subscriptions (read on every write; the channel's own count takes a lock).
    subscribers: AtomicUsize,
    /// Held while a threshold changes and `any_thresholds` is recomputed.
    settings: Mutex<()>,
    pub(crate) stop: Notify,
}

impl Default for Events {
    fn default() -> Self {
        Events {
            tx: broadcast::channel(EVENTS_QUEUE).0,
            pending: Mutex::new(BTreeMap::new()),
            appending: parking_lot::RwLock::new(()),
            thresholds: DashMap::new(),
            any_thresholds: AtomicBool::new(false),
            subscribers: AtomicUsize::new(0),
            settings: Mutex::new(()),
            stop: Notify::new(),
        }
    }
}

impl Events {
    /// Sets (replacing) the low-balance threshold of an account, or removes it (`None`).
    pub(crate) fn install_threshold(&self, account: AccountId, threshold: Option<u64>) {
        let events = self;
        let _settings = events.settings.lock();
        match threshold {
            Some(amount) => {
                events.thresholds.insert(
                    account,
                    Threshold {
                        amount,
                        below: AtomicBool::new(false),
                    },
                );
            }
            None => {
                events.thresholds.remove(&account);
            }
        }
        events
            .any_thresholds
            .store(!events.thresholds.is_empty(), Ordering::Release);
    }

    fn listening(&self) -> bool {
        self.subscribers.load(Ordering::Acquire) > 0
    }

    /// Publishes a read's event, after the events of every record durable now (`durable`).
    pub(crate) fn publish_read(&self, durable: u64, event: Event) {
        if self.listening() {
            self.pending.lock().entry(durable).or_default().push(event);
            self.drain(durable);
        }
    }

    /// Called before a record is appended: while anyone listens, the appender shares the
    /// append gate from before the append (which fixes the record's sequence number) until its
    /// events are held, so no drain can pass the record before its events are held. Appenders
    /// never wait for each other on it.
    pub(crate) fn before_append(&self) -> Option<Held<'_>> {
        self.listening().then(|| self.appending.read())
    }

    /// The events of `record` (journal sequence number `seq`), applied to `own` (the account
    /// that made it), held until durable. Called right after applying, with what
    /// [`Events::before_append`] returned. (The counterparty's `balance.low` comes when it takes
    /// the leg in: [`Events::on_legs`].)
    pub(crate) fn on_record(
        &self,
        held: Option<Held<'_>>,
        record: &Record,
        seq: u64,
        own: &Account,
    ) {
        let mut events = Vec::new();
        if held.is_some() {
            if let Some(kind) = kind_of(record, own) {
                events.push(kind);
            }
        }
        if self.any_thresholds.load(Ordering::Acquire) {
            if let Some(kind) = self.crossing(own) {
                events.push(kind);
            }
        }
        let Some(_held) = held else {
            return;
        };
        if events.is_empty() {
            return;
        }
        let events: Vec<Event> = events
            .into_iter()
            .map(|kind| Event {
                seq,
                at: record.at,
                origin: record.origin.clone(),
                kind,
            })
            .collect();
        // Others may be held at this seq already (a read's, a counterparty's `balance.low`):
        // the record's own go first.
        let mut pending = self.pending.lock();
        pending.entry(seq).or_default().splice(0..0, events);
    }

    /// Whether `account` has a low-balance threshold (a leg to it should be taken in at once,
    /// so that a crossing is heard when it happens).
    pub(crate) fn watches(&self, account: AccountId) -> bool {
        self.any_thresholds.load(Ordering::Acquire) && self.thresholds.contains_key(&account)
    }

    /// `account` took in legs of other accounts' records: `balance.low` if they took it below
    /// its threshold, held until the newest of those records is durable (`durable` is the
    /// durable point now).
    pub(crate) fn on_legs(&self, account: &Account, at: Timestamp, durable: u64) {
        if !self.any_thresholds.load(Ordering::Acquire) {
            return;
        }
        let Some(kind) = self.crossing(account) else {
            return;
        };
        if !self.listening() {
            return;
        }
        let seq = account.legs().last_seq;
        let event = Event {
            seq,
            at,
            origin: Origin::default(),
            kind,
        };
        self.pending.lock().entry(seq).or_default().push(event);
        self.drain(durable);
    }

    /// `balance.low` if this change took `account` below its threshold.
    fn crossing(&self, account: &Account) -> Option<EventKind> {
        let threshold = self.thresholds.get(&account.id)?;
        let available = account.available();
        let below = available < i128::from(threshold.amount);
        let was_below = threshold.below.swap(below, Ordering::AcqRel);
        (below && !was_below).then_some(EventKind::LowBalance {
            account: account.id,
            available,
            threshold: threshold.amount,
        })
    }

    /// Publishes, in journal order, every held event whose record is durable up to `durable`.
    /// Sends under the lock, so two drains never interleave their events.
    fn drain(&self, durable: u64) {
        // No appender is between its append and the holding of its events: every record up
        // to `durable` has its events held (a later append gets a later sequence number).
        let all_in = self.appending.write();
        let mut pending = self.pending.lock();
        drop(all_in);
        let later = pending.split_off(&durable.saturating_add(1));
        let ready = std::mem::replace(&mut *pending, later);
        for event in ready.into_values().flatten() {
            let _ = self.tx.send(event);
        }
    }

    /// Drops held events of records that will never be durable (the store fail-stopped).
    fn discard(&self) {
        self.pending.lock().clear();
    }
}

fn kind_of(record: &Record, own: &Account) -> Option<EventKind> {
    let account = record.account;
    let hold = |seq: u64| HoldId { account, seq };
    let posting = |seq: u64| PostingId { account, seq };
    Some(match &record.change {
        Change::Opened { .. }
        | Change::PolicySet { .. }
        | Change::Transferred { .. }
        | Change::TokenIssued { .. }
        | Change::TokenRevoked { .. }
        | Change::AllowanceSet { .. }
        | Change::PriceSet { .. } => return None,
        Change::GrantIssued {
            grant,
            amount,
            expires_at,
            ..
        } => EventKind::GrantIssued {
            grant: tally_core::GrantId {
                account,
                seq: *grant,
            },
            amount: *amount,
            expires_at: *expires_at,
        },
        Change::GrantExpired { grant, amount, .. } => EventKind::GrantExpired {
            grant: tally_core::GrantId {
                account,
                seq: *grant,
            },
            amount: *amount,
        },
        Change::Funded { amount, .. } => {
            let new = own.funded();
            EventKind::FundingUpdate {
                account,
                old: new.saturating_sub(amount.wide()),
                new,
            }
        }
        Change::FundingUpdated { old, new, .. } => EventKind::FundingUpdate {
            account,
            old: *old,
            new: *new,
        },
        Change::Reserved {
            hold: seq,
            app,
            amount,
            expires_at,
            ..
        } => EventKind::HoldReserved {
            hold: hold(*seq),
            app: *app,
            amount: *amount,
            expires_at: *expires_at,
        },
        Change::Committed {
            hold: seq,
            amount_posted,
            amount_released,
            posting: p,
            ..
        } => EventKind::HoldCommitted {
            hold: hold(*seq),
            posting: posting(*p),
            amount_posted: *amount_posted,
            amount_released: *amount_released,
        },
        Change::Extended {
            hold: seq,
            amount,
            expires_at,
            total,
            ..
        } => EventKind::HoldExtended {
            hold: hold(*seq),
            amount: *amount,
            total: *total,
            expires_at: *expires_at,
        },
        Change::Settled {
            hold: seq,
            amount,
            posting: p,
            amount_held,
            ..
        } => EventKind::HoldSettled {
            hold: hold(*seq),
            posting: posting(*p),
            amount_posted: *amount,
            amount_held: *amount_held,
        },
        Change::Voided {
            hold: seq,
            amount_released,
        } => EventKind::HoldVoided {
            hold: hold(*seq),
            amount_released: *amount_released,
        },
        Change::Expired {
            hold: seq,
            amount_released,
        } => EventKind::HoldExpired {
            hold: hold(*seq),
            amount_released: *amount_released,
        },
        Change::Charged {
            app,
            amount,
            endpoint,
            posting: p,
            ..
        } => EventKind::RecordCost {
            account,
            app: *app,
            endpoint: endpoint.clone(),
            amount: *amount,
            posting: posting(*p),
        },
        Change::Corrected {
            posting: p,
            old,
            new,
            ..
        } => EventKind::PostingCorrected {
            posting: posting(*p),
            estimated: *old,
            amount: *new,
        },
        Change::Refunded {
            posting: p, amount, ..
        } => EventKind::Refund {
            posting: posting(*p),
            amount: *amount,
        },
    })
}

/// The task that publishes held events as the durable point moves; ends when the engine stops
/// or the store goes away.
pub(crate) async fn publisher(
    events: Arc<Events>,
    mut durable: watch::Receiver<tally_store::DurablePoint>,
) {
    loop {
        let point = durable.borrow_and_update().clone();
        // What is durable is published even after a failure; the rest never will be.
        events.drain(point.seq);
        if point.failed.is_some() {
            events.discard();
        }
        tokio::select! {
            changed = durable.changed() => if changed.is_err() { return },
            () = events.stop.notified() => return,
        }
    }
}

impl Tally {
    /// Every account's low-balance threshold (its policy's), without loading any account.
    pub fn low_balance_thresholds(&self) -> Vec<(AccountId, u64)> {
        self.shared
            .events
            .thresholds
            .iter()
            .map(|t| (*t.key(), t.value().amount))
            .collect()
    }

    /// Subscribes to the engine's events (see [`Event::name`] for the list). Events of records
    /// are delivered once durable, in journal order.
    pub fn subscribe(&self) -> Subscription {
        let events = self.shared.events.clone();
        events.subscribers.fetch_add(1, Ordering::AcqRel);
        Subscription {
            rx: events.tx.subscribe(),
            events,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tally_core::AccountSpec;

    /// Between an append and the holding of its record's events, a read's event (held at the
    /// durable point, which may already be the record's seq) or a counterparty's `balance.low`
    /// (held at the seq of the record whose leg it took in) can be held under the same seq:
    /// the record's events join them, first, and none is lost.
    #[test]
    fn events_held_at_a_records_seq_before_its_own_are_all_published() {
        let events = Events::default();
        events.subscribers.fetch_add(1, Ordering::AcqRel);
        let mut rx = events.tx.subscribe();
        let record = Record {
            account: AccountId(1),
            op: None,
            at: Timestamp(1),
            origin: Origin::default(),
            change: Change::Funded {
                from: AccountId(2),
                amount: Amount::from_const(5),
            },
        };
        let account = Account::new(AccountId(1), AccountSpec::user());
        let held = events.before_append();
        // The record got seq 5 and is durable at once; a read's event is held at 5 meanwhile
        // (what `publish_read` holds before it drains).
        let read = Event {
            seq: 5,
            at: Timestamp(1),
            origin: Origin::default(),
            kind: EventKind::CheckAvailable {
                account: AccountId(3),
                minimum: 1,
                allowed: true,
            },
        };
        events.pending.lock().entry(5).or_default().push(read);
        events.on_record(held, &record, 5, &account);
        events.drain(5);
        let mut published = Vec::new();
        while let Ok(event) = rx.try_recv() {
            published.push(event.kind);
        }
        assert_eq!(published.len(), 2, "published: {published:?}");
        assert!(matches!(published[1], EventKind::CheckAvailable { .. }));
    }
}
