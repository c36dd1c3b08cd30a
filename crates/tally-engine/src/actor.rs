//! The account actor: one task per resident account, the only owner of that account's state.
//!
//! Every read and every write of the account is a message in its mailbox
//! ([`crate::mailbox`]); the actor drains what is queued (up to [`BATCH_MAX`] messages a turn)
//! and handles it in order, so "no overspend" is structural: one decider, no lock. A write is
//! decided by tally-core against the account's state, appended to the store (which hands out
//! its sequence number and sums its leg, if any, into the counterparty's received legs), and
//! applied; the reply carries the sequence number the caller waits to see durable. The actor
//! never waits for another account.
//!
//! The actor loads its account when it starts (on a blocking thread: the store's reads are
//! blocking I/O), runs the account's timers (hold expiry, grant expiry, allowances), saves a
//! snapshot and leaves the routing map when asked to passivate, and hands a copy of its state
//! to a checkpoint. If it panics (a bug), it leaves the routing map on the way out and its
//! next activation reloads the account from the store, after the records it had appended are
//! durable.

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::{Instant, Sleep};

use tally_core::{Account, AccountId, DecideCtx, Decision, Outcome, Request};

use crate::acks::Ack;
use crate::mailbox::{catalog_of, Answer, Msg, Query, Reply, Route};
use crate::shared::Shared;
use crate::Error;

/// The most messages an actor takes from its mailbox in one turn.
pub(crate) const BATCH_MAX: usize = 256;

/// The messages an actor's drain buffer keeps room for between bursts.
const IDLE_BATCH_CAPACITY: usize = 8;

/// How long an account's grant timers wait after one failed (ms).
const TIMER_RETRY_MS: u64 = 1_000;

/// Starts the actor of `id` on its mailbox `rx`: with `initial` (a newly opened account) or
/// its state loaded from the store.
pub(crate) fn spawn(residency: Residency, rx: mpsc::Receiver<Msg>, initial: Option<Account>) {
    tokio::spawn(start(residency, rx, initial.map(Box::new)));
}

/// An actor's place in the routing map, which it leaves when it ends, however it ends.
pub(crate) struct Residency {
    shared: Arc<Shared>,
    id: AccountId,
    /// Its route, not held: the route holds the mailbox's sender.
    route: Weak<Route>,
    snapshot_seq: Arc<AtomicU64>,
    passivate_asked: Arc<AtomicBool>,
    legs_asked: Arc<AtomicBool>,
}

impl Residency {
    pub(crate) fn of(shared: Arc<Shared>, id: AccountId, route: &Arc<Route>) -> Self {
        Residency {
            shared,
            id,
            route: Arc::downgrade(route),
            snapshot_seq: route.snapshot_seq.clone(),
            passivate_asked: route.passivate_asked.clone(),
            legs_asked: route.legs_asked.clone(),
        }
    }

    fn is(&self, route: &Arc<Route>) -> bool {
        std::ptr::eq(Arc::as_ptr(route), self.route.as_ptr())
    }

    /// Leaves the routing map if this actor is still the account's.
    fn leave(&self) {
        self.shared.routes.remove_if(&self.id, |_, r| self.is(r));
    }
}

impl Drop for Residency {
    fn drop(&mut self) {
        self.leave();
    }
}

/// Every resident account is one of these tasks, so its future is kept small (see the test
/// `an_idle_actor_is_small`): the account is boxed, and the rare, large steps (the load, a
/// passivation) are boxed futures of their own.
async fn start(residency: Residency, mut rx: mpsc::Receiver<Msg>, initial: Option<Box<Account>>) {
    let shared = residency.shared.clone();
    let id = residency.id;
    let appended = Arc::new(AtomicU64::new(0));
    let loaded = match initial {
        Some(account) => Ok(account),
        None => Box::pin(load(&shared, id)).await,
    };
    match loaded {
        Ok(account) => {
            let actor = AccountActor {
                shared,
                id,
                account,
                residency,
                appended: appended.clone(),
                timers_deferred_until_ms: 0,
                evicted: None,
            };
            let inbox = Inbox {
                rx,
                shared: actor.shared.clone(),
                id,
                appended,
            };
            actor.run(inbox).await;
        }
        Err(e) => {
            // Nothing more reaches this mailbox once it has left the map; answer what is in it.
            residency.leave();
            rx.close();
            while let Ok(msg) = rx.try_recv() {
                msg.refuse(&e);
            }
        }
    }
}

/// Loads the account's last durable state, off the async workers; first waits until the
/// records a failed actor of the account appended are durable (a load reads durable records).
async fn load(shared: &Arc<Shared>, id: AccountId) -> Result<Box<Account>, Error> {
    let failed_at = shared.failed.get(&id).map(|seq| *seq);
    if let Some(seq) = failed_at {
        shared.wait_durable(seq).await?;
    }
    let store = shared.store.clone();
    let _turn = shared
        .store_io
        .acquire()
        .await
        .map_err(|_| Error::Shutdown)?;
    let loaded = tokio::task::spawn_blocking(move || store.load(id))
        .await
        .map_err(|e| Error::Internal {
            reason: format!("loading {id}: {e}").into(),
        })??;
    let account = Box::new(loaded.ok_or(tally_core::Error::UnknownAccount { account: id })?);
    if let Some(seq) = failed_at {
        shared.failed.remove_if(&id, |_, s| *s <= seq);
    }
    // The load took in the legs that arrived while it was not resident: a crossing of its
    // threshold by them is heard now.
    if shared.events.watches(id) {
        let durable = shared.durable.borrow().seq;
        shared
            .events
            .on_legs(&account, shared.config.clock.now(), durable);
    }
    Ok(account)
}

pub(crate) struct AccountActor {
    shared: Arc<Shared>,
    id: AccountId,
    account: Box<Account>,
    residency: Residency,
    /// The last sequence number it appended (what a successor waits for if this one fails).
    appended: Arc<AtomicU64>,
    /// Until when (engine ms) its grant timers wait after a failure (0: they do not).
    timers_deferred_until_ms: u64,
    /// Set when the store said the account's shard is no longer this node's: the actor
    /// answers what is queued with it and stops, saving nothing (its state may be stale).
    evicted: Option<Box<Error>>,
}

impl Drop for AccountActor {
    fn drop(&mut self) {
        if std::thread::panicking() {
            // Before the residency leaves the map (fields drop after this): the next
            // activation must find the failure.
            let seq = self
                .appended
                .load(Ordering::Acquire)
                .max(self.account.last_seq());
            record_failure(&self.shared, self.id, seq);
        }
    }
}

/// The actor's mailbox, which records a failure before it closes: a sender finding it closed
/// starts a successor, which must find the failure (whichever of the mailbox and the actor
/// unwinds first).
struct Inbox {
    rx: mpsc::Receiver<Msg>,
    shared: Arc<Shared>,
    id: AccountId,
    appended: Arc<AtomicU64>,
}

impl Drop for Inbox {
    fn drop(&mut self) {
        if std::thread::panicking() {
            record_failure(&self.shared, self.id, self.appended.load(Ordering::Acquire));
        }
    }
}

/// Records that the actor of `id` failed having appended up to `seq`: its successor waits for
/// `seq` to be durable before loading.
fn record_failure(shared: &Shared, id: AccountId, seq: u64) {
    let mut entry = shared.failed.entry(id).or_insert(0);
    if seq > *entry {
        *entry = seq;
        tracing::error!(account = %id, "account actor failed; the account reloads from the store on next use");
    }
}

/// What a turn asks of the loop.
#[derive(PartialEq, Eq)]
enum Flow {
    Continue,
    Stop,
}

impl AccountActor {
    async fn run(mut self, mut inbox: Inbox) {
        // Grown by a burst, given back after it: an idle actor keeps a small buffer.
        let mut batch = Vec::new();
        let mut timer: Pin<Box<Sleep>> = Box::pin(tokio::time::sleep(Duration::ZERO));
        let mut armed: Option<u64> = None;
        loop {
            self.arm(&mut timer, &mut armed);
            tokio::select! {
                biased;
                received = inbox.rx.recv_many(&mut batch, BATCH_MAX) => {
                    if received == 0 {
                        return; // the engine stopped: every sender is gone
                    }
                    if self.turn(&mut batch, &inbox.rx).await == Flow::Stop {
                        if let Some(e) = self.evicted.take() {
                            // Out of the map first: what is sent from now on starts a
                            // successor, whose load the store refuses the same way.
                            self.residency.leave();
                            inbox.rx.close();
                            while let Ok(msg) = inbox.rx.try_recv() {
                                msg.refuse(&e);
                            }
                        }
                        return;
                    }
                    batch.shrink_to(IDLE_BATCH_CAPACITY);
                }
                () = &mut timer, if armed.is_some() => {
                    armed = None;
                    self.run_due();
                }
            }
        }
    }

    /// Handles a batch of messages in order.
    async fn turn(&mut self, batch: &mut Vec<Msg>, rx: &mpsc::Receiver<Msg>) -> Flow {
        let mut passivate = false;
        for msg in batch.drain(..) {
            match msg {
                Msg::Execute { request, reply } => {
                    self.run_due();
                    let done = self.execute(&request);
                    self.shared.acks.answer(self.id, reply, done, Ack::Outcome);
                }
                Msg::ExecuteMany { requests, reply } => {
                    let replies = requests
                        .iter()
                        .map(|request| {
                            self.run_due();
                            self.execute(request)
                        })
                        .collect();
                    self.shared.acks.answer_many(self.id, reply, replies);
                }
                Msg::Read { query, reply } => {
                    if !matches!(*query, Query::AsItStands) {
                        self.run_due();
                    }
                    let answer = self.read(*query);
                    self.shared.acks.answer(self.id, reply, answer, Ack::answer);
                }
                Msg::Due { reply } => {
                    let made = Reply {
                        result: Ok(self.run_due()),
                        wait_seq: self.account.last_seq(),
                    };
                    self.shared.acks.answer(self.id, reply, made, Ack::Made);
                }
                Msg::Legs => {
                    self.residency.legs_asked.store(false, Ordering::Release);
                    if let Err(e) = self.take_in_legs() {
                        tracing::error!(account = %self.id, error = %e, "taking in legs");
                    }
                }
                Msg::Passivate => passivate = true,
                Msg::Snapshot { all, reply, .. } => {
                    let saved = self.residency.snapshot_seq.load(Ordering::Acquire);
                    let copy =
                        (all || self.account.last_seq() > saved).then(|| self.account.clone());
                    let _ = reply.send(copy);
                }
                #[cfg(feature = "testing")]
                Msg::Panic => panic!("injected panic in the actor of {}", self.id),
            }
        }
        if self.evicted.is_some() {
            return Flow::Stop;
        }
        if passivate {
            if Box::pin(self.passivate(rx)).await {
                return Flow::Stop;
            }
            // Asked again only after this attempt: one asked meanwhile would have kept it from
            // finding the mailbox empty.
            self.residency
                .passivate_asked
                .store(false, Ordering::Release);
        }
        Flow::Continue
    }

    /// Arms the timer for the account's earliest deadline, unless it is armed for it already.
    fn arm(&self, timer: &mut Pin<Box<Sleep>>, armed: &mut Option<u64>) {
        let Some(deadline) = self.account.next_deadline() else {
            return;
        };
        let now = self.shared.now_ms();
        // A due deadline whose work failed waits for its retry, not 1 ms.
        let at = if deadline.0 <= now && self.timers_deferred_until_ms > now {
            self.timers_deferred_until_ms
        } else {
            deadline.0
        };
        if armed.is_some_and(|a| a <= at) {
            return;
        }
        let wait = Duration::from_millis(at.saturating_sub(now).max(1));
        timer.as_mut().reset(Instant::now() + wait);
        *armed = Some(at);
    }

    /// Takes in the legs the account received; notes an eviction (the store says its shard
    /// is no longer this node's).
    fn take_in_legs(&mut self) -> Result<(), Error> {
        let taken = self.shared.take_in_legs(&mut self.account);
        if let Err(e @ Error::NotOwner { .. }) = &taken {
            if self.evicted.is_none() {
                tracing::info!(account = %self.id, error = %e, "the account's shard moved; its actor stops");
                self.evicted = Some(Box::new(e.clone()));
            }
        }
        taken
    }

    /// Answers a query from the account's state, with the legs it received taken in.
    fn read(&mut self, query: Query) -> Reply<Answer> {
        if let Err(e) = self.take_in_legs() {
            return Reply::err(e);
        }
        let account: &Account = &self.account;
        let answer = match query {
            Query::Balance => Answer::Balance(account.balance()),
            Query::Check(minimum) => Answer::Check(account.check(minimum)),
            Query::Hold(seq) => Answer::Hold(account.hold(seq).cloned()),
            Query::Op(op) => Answer::Op(account.remembered(op).map(|(outcome, _)| outcome)),
            Query::State | Query::AsItStands => Answer::State(Box::new(account.clone())),
            Query::Catalog => Answer::Catalog(Box::new(catalog_of(account))),
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
            Query::Grants(now) => Answer::Grants(Box::new(tally_core::Grants::of(account, now))),
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
            wait_seq: self.account.last_seq(),
        }
    }

    /// Decides `request` on the account, journals the record and applies it.
    fn execute(&mut self, request: &Request) -> Reply<Outcome> {
        let leg_id = self.account.leg_counterparty(&request.command);
        // Spend caps follow the app the command spends at (a hold, a charge, an extension, a
        // correction up), whatever the command names.
        let caps = self
            .shared
            .policy
            .caps_of(self.id, &self.account, &request.command);
        // The named counterparty; a refund, a correction or a metered part names none, and
        // needs its posting's or hold's payee (money taken back from a user payee is refused),
        // so it gets the leg's.
        let counterparty = match request.command {
            tally_core::Command::Refund { .. }
            | tally_core::Command::Correct { .. }
            | tally_core::Command::Finish { .. }
            | tally_core::Command::Progress { .. } => self.shared.counterparty(leg_id),
            _ => self.shared.counterparty(request.command.counterparty()),
        };
        let reply = self.decide_and_append(leg_id, counterparty, caps, &mut |account, ctx| {
            account.decide(request, ctx).map(Some)
        });
        Reply {
            result: reply.result.and_then(|outcome| {
                outcome.ok_or_else(|| Error::Internal {
                    reason: "a request decided nothing".into(),
                })
            }),
            wait_seq: reply.wait_seq,
        }
    }

    /// Decides on the account (with `decide`), journals the record and applies it: the one
    /// place a decision becomes a record. The counterparty (`leg_id`, the account its record's
    /// leg goes to) must exist; it is never waited for: its leg goes to the store's sums.
    /// `Ok(None)`: `decide` found nothing to do.
    fn decide_and_append(
        &mut self,
        leg_id: Option<AccountId>,
        counterparty: Option<tally_core::Counterparty>,
        caps: tally_core::SpendCaps,
        decide: &mut DecideFn<'_>,
    ) -> Reply<Option<Outcome>> {
        let shared = &self.shared;
        if let Some(id) = leg_id.filter(|id| !shared.directory.contains_key(id)) {
            return Reply::err(tally_core::Error::UnknownAccount { account: id }.into());
        }
        if let Err(e) = self.take_in_legs() {
            return Reply::err(e);
        }
        let shared = &self.shared;
        let ctx = DecideCtx {
            now: shared.config.clock.now(),
            limits: &shared.config.limits,
            counterparty,
            caps,
        };
        let (record, outcome) = match decide(&self.account, &ctx) {
            Err(e) => return Reply::err(e.into()),
            Ok(None) => {
                return Reply {
                    result: Ok(None),
                    wait_seq: 0,
                }
            }
            Ok(Some(Decision::Replay { outcome, seq })) => {
                return Reply {
                    result: Ok(Some(outcome)),
                    wait_seq: seq,
                }
            }
            Ok(Some(Decision::Apply { record, outcome })) => (record, outcome),
        };
        let spend = shared.policy.spend_of(&self.account, &record);
        if let Err(e) = shared.policy.take(self.id, spend, ctx.now.0) {
            return Reply::err(e);
        }
        let held = shared.events.before_append();
        let seq = match shared.store.append(&record) {
            Err(e) => {
                shared.policy.give_back(self.id, spend);
                return Reply::err(e.into());
            }
            Ok(seq) => seq,
        };
        self.appended.store(seq, Ordering::Release);
        self.account.apply(&record, seq, &shared.config.limits);
        match &record.change {
            tally_core::Change::PriceSet { .. } => {
                shared.cache_catalog(self.id, catalog_of(&self.account));
            }
            tally_core::Change::PolicySet { setting, .. } => {
                let policy = *self.account.policy();
                shared.install_policy(self.id, &policy, Some(setting));
            }
            _ => {}
        }
        shared.events.on_record(held, &record, seq, &self.account);
        if let Some(other) = record.leg_account() {
            shared.leg_sent(other);
        }
        Reply {
            result: Ok(Some(outcome)),
            wait_seq: seq,
        }
    }

    /// Runs what is due for the account by itself: every pending hold whose deadline has passed
    /// expires, every expired grant gives what it has free back to its funding account, and its
    /// allowance's grant for the current period is issued. Returns how many records it made.
    fn run_due(&mut self) -> usize {
        match self.expire_holds() {
            // Nothing was due (the earliest deadline covers the grants' too).
            None => 0,
            Some(expired) => expired + self.grant_timers(),
        }
    }

    /// Makes the grant records due for the account now (see [`Account::grant_timer_record`]);
    /// returns how many.
    fn grant_timers(&mut self) -> usize {
        let mut made = 0;
        // Each record settles one grant or issues one period's allowance: bounded by the grants.
        for _ in 0..=tally_core::GRANTS_MAX.saturating_mul(2) {
            let now = self.shared.config.clock.now();
            if self.timers_deferred_until_ms > now.0 {
                return made;
            }
            let leg_id = match self.account.grant_timer_record(now) {
                None => return made,
                Some(record) => record.leg_account(),
            };
            let reply = self.decide_and_append(
                leg_id,
                None,
                tally_core::SpendCaps::default(),
                &mut |account, ctx| {
                    Ok(account.grant_timer_record(ctx.now).map(|record| {
                        let outcome = record.outcome();
                        Decision::Apply { record, outcome }
                    }))
                },
            );
            match reply.result {
                Ok(Some(_)) => made += 1,
                Ok(None) => return made,
                Err(e) => {
                    // Not again for a second: a failing store or an unknown funding account
                    // must not spin the account's timer.
                    self.timers_deferred_until_ms =
                        self.shared.now_ms().saturating_add(TIMER_RETRY_MS);
                    tracing::warn!(account = %self.id, error = %e, "grant timer deferred 1 s");
                    return made;
                }
            }
        }
        made
    }

    /// Expires every pending hold of the account whose deadline has passed; returns how many,
    /// or `None` when nothing at all was due.
    fn expire_holds(&mut self) -> Option<usize> {
        let now = self.shared.config.clock.now();
        if self.account.next_deadline().is_none_or(|d| d > now) {
            return None;
        }
        let due: Vec<_> = self.account.due_holds(now).collect();
        let mut expired = 0;
        for hold in due {
            let Some(record) = self.account.expire_record(hold.seq, now) else {
                continue;
            };
            let held = self.shared.events.before_append();
            match self.shared.store.append(&record) {
                Ok(seq) => {
                    self.appended.store(seq, Ordering::Release);
                    self.account.apply(&record, seq, &self.shared.config.limits);
                    self.shared
                        .events
                        .on_record(held, &record, seq, &self.account);
                    expired += 1;
                }
                Err(e) => {
                    tracing::warn!(account = %self.id, error = %e, "expiry deferred");
                    break;
                }
            }
        }
        Some(expired)
    }

    /// Saves a snapshot and leaves the routing map, if the mailbox is empty and everything the
    /// state reflects is durable. Returns whether the actor should stop.
    async fn passivate(&mut self, rx: &mpsc::Receiver<Msg>) -> bool {
        if !rx.is_empty() {
            return false;
        }
        let seq = self.account.last_seq();
        if self.shared.wait_durable(seq).await.is_err() {
            return false;
        }
        // The snapshot is written on a blocking thread: the account goes there and comes back.
        let Ok(_turn) = self.shared.store_io.acquire().await else {
            return false;
        };
        let placeholder = Box::new(Account::new(self.id, self.account.spec));
        let account = std::mem::replace(&mut self.account, placeholder);
        let store = self.shared.store.clone();
        let saved = tokio::task::spawn_blocking(move || {
            let result = store.save(&account);
            (account, result)
        })
        .await;
        match saved {
            Ok((account, result)) => {
                self.account = account;
                if let Err(e) = result {
                    if matches!(e, tally_store::StoreError::NotOwner { .. }) {
                        // Its shard is another node's now: nothing to save, nothing to serve;
                        // the loop answers what is queued and leaves.
                        self.evicted = Some(Box::new(e.into()));
                        return true;
                    }
                    tracing::warn!(account = %self.id, error = %e, "snapshot failed; account stays resident");
                    return false;
                }
            }
            Err(e) => {
                // The state is lost with the thread; it is durable up to `seq`, so the next
                // activation reloads it exactly.
                tracing::error!(account = %self.id, error = %e, "passivation lost its thread; the account reloads");
                self.shared.failed.insert(self.id, seq);
                self.residency.leave();
                return true;
            }
        }
        let residency = &self.residency;
        residency.snapshot_seq.fetch_max(seq, Ordering::AcqRel);
        // Under the map's write lock no message is being sent: leave only with nothing queued.
        self.shared
            .routes
            .remove_if(&self.id, |_, r| residency.is(r) && rx.is_empty())
            .is_some()
    }
}

/// What [`AccountActor::decide_and_append`] decides with: the record to make, if any.
type DecideFn<'a> =
    dyn FnMut(&Account, &DecideCtx<'_>) -> Result<Option<Decision>, tally_core::Error> + 'a;

#[cfg(test)]
mod tests {
    use super::*;

    /// Every resident account is one actor task: its future (what the task keeps while the
    /// account is idle) stays a small part of the ≤ 10 KiB a resident account may cost. The
    /// account itself is boxed, and the load and a passivation are boxed futures of their own.
    #[tokio::test]
    async fn an_idle_actor_is_small() {
        let config = crate::EngineConfig::default();
        let store = Arc::new(tally_store::MemStore::new(config.limits.clone()));
        let shared = Arc::new(Shared::new(store, config).unwrap_or_else(|e| panic!("{e}")));
        let (tx, rx) = mpsc::channel(1);
        let route = Arc::new(Route {
            tx,
            last_access_ms: 0.into(),
            snapshot_seq: Arc::new(0.into()),
            passivate_asked: Arc::new(false.into()),
            legs_asked: Arc::new(false.into()),
        });
        let residency = Residency::of(shared, AccountId(1), &route);
        let future = start(residency, rx, None);
        let size = std::mem::size_of_val(&future);
        assert!(size <= 1_024, "the actor's future is {size} bytes");
        assert!(std::mem::size_of::<AccountActor>() <= 128);
    }
}
