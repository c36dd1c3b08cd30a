//! The supervisor and the registry: which accounts are resident, how a message reaches an
//! account's actor, and the engine's housekeeping.
//!
//! - **Routing** ([`route`]): a message goes to the account's mailbox through the routing map;
//!   on a miss the account is activated: a mailbox is registered at once and its actor started,
//!   which loads the account on a blocking thread while messages queue. Nothing a request
//!   waits on is held during the load.
//! - **Restart**: an actor that panics leaves the map; the next message activates the account
//!   again from the store (see [`crate::actor`]).
//! - **Passivation**: every `supervisor_tick` the supervisor asks accounts idle for
//!   `idle_passivate_after` to passivate, and past `resident_max` the least recently used;
//!   each actor decides for itself (durable, mailbox empty) and saves its snapshot off the
//!   async workers.
//! - **Checkpoints** ([`checkpoint`]): every `checkpoint_interval`, a copy of each account
//!   changed since its snapshot, saved on a blocking thread in chunks of
//!   [`CHECKPOINT_CHUNK`] once durable; then the store trims its journal.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use tokio::sync::{mpsc, oneshot};

use tally_core::{Account, AccountId};

use crate::mailbox::{Msg, Route};
use crate::shared::{Shared, SupervisorMsg, SUPERVISOR_QUEUE};
use crate::Error;

/// How often a message is re-routed when it finds its account's actor gone before giving up
/// with [`Error::Unavailable`].
pub(crate) const ROUTE_ATTEMPTS: u32 = 16;

/// Accounts a checkpoint copies and saves at a time (bounds the copies held at once).
pub(crate) const CHECKPOINT_CHUNK: usize = 1_024;

/// Sends `msg` to the actor of `id`, activating the account on a miss. Refused, with the
/// message back: the account is unknown, its mailbox is full (`Overloaded { scope: "account"
/// }`), too many accounts are resident (`Overloaded { scope: "resident accounts" }`), or the
/// engine is shutting down.
pub(crate) fn route(shared: &Arc<Shared>, id: AccountId, msg: Msg) -> Result<(), Error> {
    route_or_return(shared, id, msg).map_err(|refused| refused.0)
}

/// A refused message and why (boxed: a refusal is rare, a message is large).
pub(crate) type Refused = Box<(Error, Msg)>;

/// [`route`], giving the message back with the refusal.
pub(crate) fn route_or_return(
    shared: &Arc<Shared>,
    id: AccountId,
    mut msg: Msg,
) -> Result<(), Refused> {
    for _ in 0..ROUTE_ATTEMPTS {
        if let Some(route) = shared.routes.get(&id) {
            route
                .last_access_ms
                .store(shared.now_ms(), Ordering::Relaxed);
            match route.tx.try_send(msg) {
                Ok(()) => return Ok(()),
                Err(mpsc::error::TrySendError::Full(back)) => {
                    let full = Error::Overloaded {
                        scope: "account",
                        limit: shared.config.account_inflight_max,
                    };
                    return Err(Box::new((full, back)));
                }
                Err(mpsc::error::TrySendError::Closed(back)) => {
                    // Its actor ended without leaving the map yet: drop the stale route.
                    msg = back;
                    let stale = route.clone();
                    drop(route);
                    shared.routes.remove_if(&id, |_, r| Arc::ptr_eq(r, &stale));
                    continue;
                }
            }
        }
        if let Err(e) = activate(shared, id, None) {
            return Err(Box::new((e, msg)));
        }
    }
    let gone = Error::Unavailable {
        account: id,
        attempts: ROUTE_ATTEMPTS,
    };
    Err(Box::new((gone, msg)))
}

/// Registers a mailbox for `id` and starts its actor (with `initial`, a newly opened
/// account, or loading it), unless one is registered already.
pub(crate) fn activate(
    shared: &Arc<Shared>,
    id: AccountId,
    initial: Option<Account>,
) -> Result<(), Error> {
    if shared.is_shutting_down() {
        return Err(Error::Shutdown);
    }
    if initial.is_none() && !shared.directory.contains_key(&id) {
        return Err(tally_core::Error::UnknownAccount { account: id }.into());
    }
    let cap = shared.config.resident_max;
    let hard_max = cap.saturating_add(cap / 2);
    let resident = shared.routes.len();
    if resident >= hard_max {
        shared.eviction.notify_one();
        return Err(Error::Overloaded {
            scope: "resident accounts",
            limit: hard_max,
        });
    }
    if let dashmap::Entry::Vacant(vacant) = shared.routes.entry(id) {
        // Again under the entry: a stop that cleared the map meanwhile must not be outlived
        // by an actor registered after it.
        if shared.is_shutting_down() {
            return Err(Error::Shutdown);
        }
        let (tx, rx) = mpsc::channel(shared.config.account_inflight_max.max(1));
        let route = Arc::new(Route {
            tx,
            last_access_ms: shared.now_ms().into(),
            snapshot_seq: Arc::new(0.into()),
            passivate_asked: Arc::new(false.into()),
            legs_asked: Arc::new(false.into()),
        });
        let residency = crate::actor::Residency::of(shared.clone(), id, &route);
        vacant.insert(route);
        crate::actor::spawn(residency, rx, initial);
    }
    if resident >= cap {
        shared.eviction.notify_one();
    }
    Ok(())
}

/// Starts the supervisor's task: it passivates idle accounts, evicts past the cap,
/// checkpoints, and has accounts watched by a threshold take their legs in.
pub(crate) fn start(shared: Arc<Shared>) {
    let (tx, mut rx) = mpsc::channel(SUPERVISOR_QUEUE);
    if shared.supervisor.set(tx).is_err() {
        return;
    }
    tokio::spawn(Arc::clone(&shared.acks).run());
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(shared.config.supervisor_tick);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_checkpoint = Instant::now();
        loop {
            tokio::select! {
                () = shared.stop.notified() => return,
                _ = tick.tick() => {
                    passivate_idle(&shared);
                    if last_checkpoint.elapsed() >= shared.config.checkpoint_interval {
                        last_checkpoint = Instant::now();
                        if let Err(e) = checkpoint(&shared, false).await {
                            tracing::warn!(error = %e, "checkpoint failed; the journal keeps growing until one succeeds");
                        }
                    }
                }
                () = shared.eviction.notified() => evict_least_recent(&shared),
                Some(msg) = rx.recv() => match msg {
                    SupervisorMsg::Legs(id) => {
                        let resident = shared.routes.get(&id).map(|r| r.ask_legs());
                        if resident.is_none() {
                            // Its load takes the legs in (and checks its threshold).
                            let _ = activate(&shared, id, None);
                        }
                    }
                },
            }
        }
    });
}

/// Asks every account idle since `idle_passivate_after` to passivate.
fn passivate_idle(shared: &Shared) {
    let idle_ms = u64::try_from(shared.config.idle_passivate_after.as_millis()).unwrap_or(u64::MAX);
    let horizon = shared.now_ms().saturating_sub(idle_ms);
    for route in shared.routes.iter() {
        if route.last_access_ms.load(Ordering::Relaxed) < horizon {
            route.ask_passivate();
        }
    }
}

/// Asks the least recently used accounts to passivate until residency would be 90% of the cap.
fn evict_least_recent(shared: &Shared) {
    let cap = shared.config.resident_max;
    let resident = shared.routes.len();
    if resident <= cap {
        return;
    }
    let target = resident - cap + cap / 10;
    let mut candidates: Vec<(u64, AccountId)> = shared
        .routes
        .iter()
        .map(|r| (r.last_access_ms.load(Ordering::Relaxed), *r.key()))
        .collect();
    let target = target.min(candidates.len());
    if target == 0 {
        return;
    }
    candidates.select_nth_unstable_by_key(target - 1, |(at, _)| *at);
    for (_, id) in candidates.into_iter().take(target) {
        if let Some(route) = shared.routes.get(&id) {
            route.ask_passivate();
        }
    }
}

/// Saves the snapshot of every resident account changed since its last one (every resident
/// account, with `all`), once what it reflects is durable, then lets the store trim its
/// journal. Returns how many snapshots were saved.
pub(crate) async fn checkpoint(shared: &Arc<Shared>, all: bool) -> Result<usize, Error> {
    let routes: Vec<Arc<Route>> = shared.routes.iter().map(|r| r.value().clone()).collect();
    let mut saved = 0;
    for chunk in routes.chunks(CHECKPOINT_CHUNK) {
        let mut asked = Vec::with_capacity(chunk.len());
        for route in chunk {
            let (reply, answer) = oneshot::channel();
            // An actor gone meanwhile drops the message: it saved its own snapshot.
            if route.tx.send(Msg::Snapshot { all, reply }).await.is_ok() {
                asked.push((route.clone(), answer));
            }
        }
        let mut copies = Vec::with_capacity(asked.len());
        for (route, answer) in asked {
            if let Ok(Some(account)) = answer.await {
                copies.push((route, account));
            }
        }
        let newest = copies.iter().map(|(_, a)| a.last_seq()).max().unwrap_or(0);
        shared.wait_durable(newest).await?;
        let store = shared.store.clone();
        saved += tokio::task::spawn_blocking(move || {
            for (route, account) in &copies {
                store.save(account)?;
                route
                    .snapshot_seq
                    .fetch_max(account.last_seq(), Ordering::AcqRel);
            }
            Ok::<_, tally_store::StoreError>(copies.len())
        })
        .await
        .map_err(|e| Error::Internal {
            reason: format!("saving snapshots: {e}").into(),
        })??;
    }
    let store = shared.store.clone();
    let removed = tokio::task::spawn_blocking(move || store.checkpoint())
        .await
        .map_err(|e| Error::Internal {
            reason: format!("checkpointing: {e}").into(),
        })??;
    tracing::debug!(saved, journal_files_removed = removed, "checkpoint");
    Ok(saved)
}
