//! What every actor and every handle shares: the routing map, the directory of known accounts,
//! admission, and the one place where a decision becomes a journal record.
//!
//! Locking, in the only order it is ever taken: an activation stripe (for one account id), then
//! account states in increasing account id. A decision and the append of its record happen under
//! the locks of every account the record touches, so each account applies records in journal
//! order, and a snapshot taken under an account's lock covers exactly the records up to its
//! `last_seq`.

use dashmap::DashMap;

/// The hasher of the per-request maps (routing, directory): foldhash, seeded per process.
type FastHash = foldhash::fast::RandomState;
use parking_lot::{Mutex, MutexGuard};
use ractor::{ActorCell, ActorId, ActorRef};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use tokio::sync::{watch, Semaphore};

use tally_core::{
    Account, AccountId, AccountSpec, Counterparty, DecideCtx, Decision, Outcome, Request,
};
use tally_store::{DurablePoint, Store};

use crate::actor::{AccountActor, AccountMsg};
use crate::{EngineConfig, Error};

/// How long an account's grant timers wait after one failed (ms).
pub(crate) const TIMER_RETRY_MS: u64 = 1_000;

/// Number of activation stripes (a power of two).
const STRIPES: usize = 256;

/// An account's state while it is resident.
pub(crate) struct SlotState {
    pub(crate) account: Account,
    /// Set when the slot leaves the routing map (passivated or its actor failed). A retired
    /// slot is never written again; whoever finds it retired looks the account up anew.
    pub(crate) retired: bool,
}

/// A resident account: its state, its actor, and its admission counter.
pub(crate) struct Slot {
    pub(crate) id: AccountId,
    pub(crate) state: Mutex<SlotState>,
    pub(crate) actor: OnceLock<ActorRef<AccountMsg>>,
    pub(crate) inflight: AtomicUsize,
    pub(crate) last_access_ms: AtomicU64,
    /// The `last_seq` of the account's newest saved snapshot (0: none saved since activation).
    pub(crate) snapshot_seq: AtomicU64,
    /// The deadline (ms) the actor's expiry timer is armed for (0: none).
    pub(crate) timer_at_ms: AtomicU64,
    /// Until when (ms) its grant timers wait after a failure (0: they do not).
    pub(crate) timers_deferred_until_ms: AtomicU64,
}

impl Slot {
    /// Asks the actor to arm its expiry timer if the account now has a deadline earlier than
    /// the one armed (after a request executed outside the actor).
    pub(crate) fn nudge_timer(&self) {
        let Some(deadline) = self.state.lock().account.next_deadline() else {
            return;
        };
        let armed = self.timer_at_ms.load(Ordering::Acquire);
        if armed == 0 || deadline.0 < armed {
            if let Some(actor) = self.actor.get() {
                let _ = actor.send_message(AccountMsg::Expire);
            }
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

/// A reply from an account actor: the result and the journal sequence number the caller must
/// see durable before it is answered (0: nothing to wait for).
pub(crate) struct Reply<T> {
    pub(crate) result: Result<T, Error>,
    pub(crate) wait_seq: u64,
}

pub(crate) struct Shared {
    pub(crate) store: Arc<dyn Store>,
    pub(crate) config: EngineConfig,
    pub(crate) directory: DashMap<AccountId, AccountSpec, FastHash>,
    pub(crate) resident: DashMap<AccountId, Arc<Slot>, FastHash>,
    stripes: Box<[Mutex<()>]>,
    pub(crate) admission: Arc<Semaphore>,
    pub(crate) durable: watch::Receiver<DurablePoint>,
    pub(crate) supervisor: OnceLock<ActorCell>,
    pub(crate) actors: DashMap<ActorId, AccountId>,
    pub(crate) shutting_down: AtomicBool,
    eviction_requested: AtomicBool,
    /// The apps' price catalogs as their accounts last applied them (the catalog is ledger
    /// state, in each app's account): app → (its newest version, endpoint → entry). Filled
    /// when an app's catalog is first needed and on every price change it applies.
    pub(crate) catalogs: DashMap<AccountId, Arc<Catalog>, FastHash>,
    /// Rate limits and spend caps.
    pub(crate) policy: crate::policy::Policy,
    /// Subscribers and the events waiting for durability.
    pub(crate) events: Arc<crate::events::Events>,
}

impl Shared {
    pub(crate) fn new(store: Arc<dyn Store>, config: EngineConfig) -> Result<Self, Error> {
        if store.limits() != &config.limits {
            return Err(Error::Internal {
                reason: format!(
                    "the store replays records under other account limits than the engine's \
                     (store {:?}, engine {:?}): open the store with the engine's limits",
                    store.limits(),
                    config.limits
                )
                .into(),
            });
        }
        let directory = DashMap::with_hasher(FastHash::default());
        for (id, spec) in store.accounts()? {
            directory.insert(id, spec);
        }
        let policies = store.policies()?;
        let durable = store.durable();
        let shared = Shared {
            store,
            admission: Arc::new(Semaphore::new(config.inflight_max)),
            config,
            directory,
            resident: DashMap::with_hasher(FastHash::default()),
            stripes: (0..STRIPES).map(|_| Mutex::new(())).collect(),
            durable,
            supervisor: OnceLock::new(),
            actors: DashMap::new(),
            shutting_down: AtomicBool::new(false),
            eviction_requested: AtomicBool::new(false),
            catalogs: DashMap::with_hasher(FastHash::default()),
            policy: crate::policy::Policy::default(),
            events: Arc::new(crate::events::Events::default()),
        };
        // Every policy is in force before its account is first loaded.
        for (id, policy) in &policies {
            shared.install_policy(*id, policy, None);
        }
        Ok(shared)
    }

    pub(crate) fn stripe(&self, id: AccountId) -> MutexGuard<'_, ()> {
        let index = (id.0 as usize).wrapping_mul(0x9E37_79B9) % STRIPES;
        // The index is in range by construction; fall back to the first stripe regardless.
        self.stripes.get(index).unwrap_or(&self.stripes[0]).lock()
    }

    pub(crate) fn now_ms(&self) -> u64 {
        self.config.clock.now().0
    }

    /// The resident slot of `id`, activating it (load + spawn) on a miss.
    pub(crate) fn slot(self: &Arc<Self>, id: AccountId) -> Result<Arc<Slot>, Error> {
        if let Some(slot) = self.resident.get(&id) {
            slot.last_access_ms.store(self.now_ms(), Ordering::Relaxed);
            return Ok(slot.clone());
        }
        if !self.directory.contains_key(&id) {
            return Err(tally_core::Error::UnknownAccount { account: id }.into());
        }
        self.activate(id)
    }

    fn activate(self: &Arc<Self>, id: AccountId) -> Result<Arc<Slot>, Error> {
        if self.shutting_down.load(Ordering::Acquire) {
            return Err(Error::Shutdown);
        }
        let hard_max = self
            .config
            .resident_max
            .saturating_add(self.config.resident_max / 2);
        if self.resident.len() >= hard_max {
            // Make room now rather than wait for the supervisor (before taking our stripe:
            // passivation takes the stripes of the accounts it passivates).
            self.evict_least_recent();
        }
        let _stripe = self.stripe(id);
        if let Some(slot) = self.resident.get(&id) {
            return Ok(slot.clone());
        }
        if self.resident.len() >= hard_max {
            self.request_eviction();
            return Err(Error::Overloaded {
                scope: "resident accounts",
                limit: hard_max,
            });
        }
        let account = self
            .store
            .load(id)?
            .ok_or(tally_core::Error::UnknownAccount { account: id })?;
        let supervisor = self.supervisor.get().cloned().ok_or(Error::Shutdown)?;
        let slot = Arc::new(Slot {
            id,
            state: Mutex::new(SlotState {
                account,
                retired: false,
            }),
            actor: OnceLock::new(),
            inflight: AtomicUsize::new(0),
            last_access_ms: AtomicU64::new(self.now_ms()),
            snapshot_seq: AtomicU64::new(0),
            timer_at_ms: AtomicU64::new(0),
            timers_deferred_until_ms: AtomicU64::new(0),
        });
        let (actor, _) = ractor::ActorRuntime::spawn_linked_instant(
            None,
            AccountActor,
            (self.clone(), slot.clone()),
            supervisor,
        )
        .map_err(|e| Error::Storage {
            reason: format!("spawning the actor of {id}: {e}").into(),
        })?;
        self.actors.insert(actor.get_id(), id);
        let _ = slot.actor.set(actor);
        self.resident.insert(id, slot.clone());
        if self.resident.len() > self.config.resident_max {
            self.request_eviction();
        }
        Ok(slot)
    }

    fn request_eviction(&self) {
        if !self.eviction_requested.swap(true, Ordering::AcqRel) {
            if let Some(supervisor) = self.supervisor.get() {
                let _ = supervisor.send_message(crate::supervisor::SupervisorMsg::Evict);
            }
        }
    }

    /// Passivates the least recently used idle accounts until residency is 90% of the cap.
    /// Returns how many were passivated.
    pub(crate) fn evict_least_recent(&self) -> usize {
        let cap = self.config.resident_max;
        let resident = self.resident.len();
        if resident <= cap {
            return 0;
        }
        let target = resident - cap + cap / 10;
        let mut candidates: Vec<(u64, Arc<Slot>)> = self
            .resident
            .iter()
            .filter(|e| e.value().inflight.load(Ordering::Relaxed) == 0)
            .map(|e| {
                (
                    e.value().last_access_ms.load(Ordering::Relaxed),
                    e.value().clone(),
                )
            })
            .collect();
        let target = target.min(candidates.len());
        if target == 0 {
            return 0;
        }
        candidates.select_nth_unstable_by_key(target.saturating_sub(1), |(at, _)| *at);
        candidates
            .into_iter()
            .take(target)
            .filter(|(_, slot)| self.passivate_now(slot))
            .count()
    }

    /// Passivates an account now if it is idle and everything its state reflects is durable:
    /// snapshot, leave the routing map, stop its actor. Returns whether it was passivated.
    pub(crate) fn passivate_now(&self, slot: &Slot) -> bool {
        let durable = self.durable.borrow().seq;
        let _stripe = self.stripe(slot.id);
        let mut state = slot.state.lock();
        if state.retired {
            return true;
        }
        if slot.inflight.load(Ordering::Acquire) > 0 || state.account.last_seq() > durable {
            return false;
        }
        if let Err(e) = self.store.save(&state.account) {
            tracing::warn!(account = %slot.id, error = %e, "snapshot failed; account stays resident");
            return false;
        }
        self.retire(slot, &mut state);
        if let Some(actor) = slot.actor.get() {
            actor.stop(Some("passivated".into()));
        }
        true
    }

    pub(crate) fn eviction_done(&self) {
        self.eviction_requested.store(false, Ordering::Release);
    }

    /// Removes a slot from the routing map, if it is still the one routed to.
    pub(crate) fn retire(&self, slot: &Slot, state: &mut SlotState) {
        state.retired = true;
        self.resident
            .remove_if(&slot.id, |_, routed| std::ptr::eq(routed.as_ref(), slot));
    }

    /// Caches `catalog` for `app` unless a newer one is cached already.
    pub(crate) fn cache_catalog(&self, app: AccountId, catalog: Catalog) {
        match self.catalogs.entry(app) {
            dashmap::Entry::Occupied(mut cached) => {
                if catalog.0 > cached.get().0 {
                    cached.insert(Arc::new(catalog));
                }
            }
            dashmap::Entry::Vacant(slot) => {
                slot.insert(Arc::new(catalog));
            }
        }
    }

    fn counterparty(&self, id: Option<AccountId>) -> Option<Counterparty> {
        let id = id?;
        self.directory.get(&id).map(|spec| Counterparty {
            id,
            kind: spec.kind,
        })
    }

    /// Decides `request` on the account of `slot`, journals the record and applies it (to the
    /// counterparty too). Runs inside the account's actor, one request at a time.
    pub(crate) fn execute(self: &Arc<Self>, slot: &Slot, request: &Request) -> Reply<Outcome> {
        let (leg_id, caps) = {
            let state = slot.state.lock();
            (
                state.account.leg_counterparty(&request.command),
                // Spend caps follow the app the command spends at (a hold, a charge, an
                // extension, a correction up), whatever the command names.
                self.policy
                    .caps_of(slot.id, &state.account, &request.command),
            )
        };
        // The named counterparty; a refund, a correction or a metered part names none, and
        // needs its posting's or hold's payee (money taken back from a user payee is refused),
        // so it gets the leg's.
        let counterparty = match request.command {
            tally_core::Command::Refund { .. }
            | tally_core::Command::Correct { .. }
            | tally_core::Command::Finish { .. }
            | tally_core::Command::Progress { .. } => self.counterparty(leg_id),
            _ => self.counterparty(request.command.counterparty()),
        };
        let reply =
            self.decide_and_append(slot, leg_id, counterparty, caps, &mut |account, ctx| {
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

    /// Decides on the account of `slot` (with `decide`, under the locks of it and of `leg_id`,
    /// the account its record's leg changes), journals the record and applies it to both:
    /// the one place a decision becomes a record. `Ok(None)`: `decide` found nothing to do.
    fn decide_and_append(
        self: &Arc<Self>,
        slot: &Slot,
        leg_id: Option<AccountId>,
        counterparty: Option<Counterparty>,
        caps: tally_core::SpendCaps,
        decide: &mut DecideFn<'_>,
    ) -> Reply<Option<Outcome>> {
        // The counterparty must exist (it is never locked nor waited for: its leg goes to the
        // store's book).
        if let Some(id) = leg_id.filter(|id| !self.directory.contains_key(id)) {
            return reply_err(tally_core::Error::UnknownAccount { account: id }.into());
        }
        let mut own = slot.state.lock();
        if own.retired {
            return reply_err(Error::Unavailable {
                account: slot.id,
                attempts: 1,
            });
        }
        if let Err(e) = self.take_in_legs(&mut own.account) {
            return reply_err(e);
        }
        let ctx = DecideCtx {
            now: self.config.clock.now(),
            limits: &self.config.limits,
            counterparty,
            caps,
        };
        let reply = match decide(&own.account, &ctx) {
            Err(e) => reply_err(e.into()),
            Ok(None) => Reply {
                result: Ok(None),
                wait_seq: 0,
            },
            Ok(Some(Decision::Replay { outcome, seq })) => Reply {
                result: Ok(Some(outcome)),
                wait_seq: seq,
            },
            Ok(Some(Decision::Apply { record, outcome })) => {
                let spend = self.policy.spend_of(&own.account, &record);
                if let Err(e) = self.policy.take(slot.id, spend, ctx.now.0) {
                    return reply_err(e);
                }
                let held = self.events.before_append();
                match self.store.append(&record) {
                    Err(e) => {
                        self.policy.give_back(slot.id, spend);
                        reply_err(e.into())
                    }
                    Ok(seq) => {
                        own.account.apply(&record, seq, &self.config.limits);
                        match &record.change {
                            tally_core::Change::PriceSet { .. } => {
                                self.cache_catalog(slot.id, catalog_of(&own.account));
                            }
                            tally_core::Change::PolicySet { setting, .. } => {
                                let policy = *own.account.policy();
                                self.install_policy(slot.id, &policy, Some(setting));
                            }
                            _ => {}
                        }
                        self.events.on_record(held, &record, seq, &own.account);
                        Reply {
                            result: Ok(Some(outcome)),
                            wait_seq: seq,
                        }
                    }
                }
            }
        };
        drop(own);
        if let (Some(other), Ok(Some(_)), true) = (leg_id, &reply.result, reply.wait_seq > 0) {
            self.leg_sent(other);
        }
        reply
    }

    /// Runs what is due for the account by itself: every pending hold whose deadline has passed
    /// expires, every expired grant gives what it has free back to its funding account, and its
    /// allowance's grant for the current period is issued. Returns how many records it made.
    pub(crate) fn expire_due(self: &Arc<Self>, slot: &Slot) -> usize {
        match self.expire_holds(slot) {
            // Nothing was due (the earliest deadline covers the grants' too).
            None => 0,
            Some(expired) => expired + self.grant_timers(slot),
        }
    }

    /// Makes the grant records due for the account now (see [`Account::grant_timer_record`]),
    /// each through the two-account path (its leg is the funding account's); returns how many.
    fn grant_timers(self: &Arc<Self>, slot: &Slot) -> usize {
        let mut made = 0;
        // Each record settles one grant or issues one period's allowance: bounded by the grants.
        for _ in 0..=tally_core::GRANTS_MAX.saturating_mul(2) {
            let now = self.config.clock.now();
            if slot.timers_deferred_until_ms.load(Ordering::Acquire) > now.0 {
                return made;
            }
            let leg_id = {
                let state = slot.state.lock();
                if state.retired {
                    return made;
                }
                match state.account.grant_timer_record(now) {
                    None => return made,
                    Some(record) => record.leg_account(),
                }
            };
            // Decided again under the locks, at a later time: if another grant became due
            // meanwhile the record may name another funding account than the one locked; it is
            // then made on the next turn of the loop, with the right lock.
            let mut other_leg = false;
            let reply = self.decide_and_append(
                slot,
                leg_id,
                None,
                tally_core::SpendCaps::default(),
                &mut |account, ctx| {
                    let Some(record) = account.grant_timer_record(ctx.now) else {
                        return Ok(None);
                    };
                    if record.leg_account() != leg_id {
                        other_leg = true;
                        return Ok(None);
                    }
                    let outcome = record.outcome();
                    Ok(Some(Decision::Apply { record, outcome }))
                },
            );
            match reply.result {
                Ok(Some(_)) => made += 1,
                Ok(None) if other_leg => {}
                Ok(None) => return made,
                Err(e) => {
                    // Not again for a second: a failing store or an unavailable funding
                    // account must not spin the account's timer.
                    let until = self.now_ms().saturating_add(TIMER_RETRY_MS);
                    slot.timers_deferred_until_ms
                        .store(until, Ordering::Release);
                    tracing::warn!(account = %slot.id, error = %e, "grant timer deferred 1 s");
                    return made;
                }
            }
        }
        made
    }

    /// Takes in the legs other accounts' records carried to `account` since it last did.
    pub(crate) fn take_in_legs(&self, account: &mut Account) -> Result<(), Error> {
        let new = account
            .absorb_legs(&self.store.legs(account.id))
            .map_err(|e| Error::Internal {
                reason: e.to_string().into(),
            })?;
        if new {
            let durable = self.durable.borrow().seq;
            self.events
                .on_legs(account, self.config.clock.now(), durable);
        }
        Ok(())
    }

    /// Has `other` take in the leg just appended for it, if a threshold watches it (otherwise
    /// it takes the leg in on its next turn).
    fn leg_sent(self: &Arc<Self>, other: AccountId) {
        if !self.events.watches(other) {
            return;
        }
        if let Ok(slot) = self.slot(other) {
            if let Some(actor) = slot.actor.get() {
                let _ = actor.send_message(AccountMsg::Legs);
            }
        }
    }

    /// Expires every pending hold of the account whose deadline has passed; returns how many,
    /// or `None` when nothing at all was due.
    fn expire_holds(&self, slot: &Slot) -> Option<usize> {
        let now = self.config.clock.now();
        let mut state = slot.state.lock();
        if state.retired || state.account.next_deadline().is_none_or(|d| d > now) {
            return None;
        }
        let due: Vec<_> = state.account.due_holds(now).collect();
        let mut expired = 0;
        for hold in due {
            let Some(record) = state.account.expire_record(hold.seq, now) else {
                continue;
            };
            let held = self.events.before_append();
            match self.store.append(&record) {
                Ok(seq) => {
                    state.account.apply(&record, seq, &self.config.limits);
                    self.events.on_record(held, &record, seq, &state.account);
                    expired += 1;
                }
                Err(e) => {
                    tracing::warn!(account = %slot.id, error = %e, "expiry deferred");
                    break;
                }
            }
        }
        Some(expired)
    }

    /// Saves the snapshot of every resident account changed since its last one (and durable),
    /// then lets the store trim its journal. Returns how many snapshots were saved.
    pub(crate) fn checkpoint(&self) -> Result<usize, Error> {
        let durable = self.durable.borrow().seq;
        let slots: Vec<_> = self.resident.iter().map(|e| e.value().clone()).collect();
        let mut saved = 0;
        for slot in slots {
            let state = slot.state.lock();
            let seq = state.account.last_seq();
            if state.retired || seq <= slot.snapshot_seq.load(Ordering::Relaxed) || seq > durable {
                continue;
            }
            self.store.save(&state.account)?;
            slot.snapshot_seq.store(seq, Ordering::Relaxed);
            saved += 1;
        }
        let removed = self.store.checkpoint()?;
        tracing::debug!(saved, journal_files_removed = removed, "checkpoint");
        Ok(saved)
    }

    /// Waits until the journal is durable up to `seq`.
    pub(crate) async fn wait_durable(&self, seq: u64) -> Result<(), Error> {
        if seq == 0 {
            return Ok(());
        }
        let mut rx = self.durable.clone();
        let point = rx
            .wait_for(|d| d.seq >= seq || d.failed.is_some())
            .await
            .map_err(|_| Error::Shutdown)?;
        if point.seq >= seq {
            return Ok(());
        }
        Err(Error::StorageFailed {
            reason: point
                .failed
                .clone()
                .unwrap_or_else(|| Arc::from("unknown failure")),
        })
    }
}

/// What [`Shared::decide_and_append`] decides with: the record to make on the account, if any.
type DecideFn<'a> =
    dyn FnMut(&Account, &DecideCtx<'_>) -> Result<Option<Decision>, tally_core::Error> + 'a;

fn reply_err<T>(e: Error) -> Reply<T> {
    Reply {
        result: Err(e),
        wait_seq: 0,
    }
}
