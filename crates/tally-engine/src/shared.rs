//! What every actor and every handle shares: the store, the directory of known accounts, the
//! routing map, admission, the apps' catalogs, policy and events. It holds no account: each
//! account's state belongs to its actor ([`crate::actor`]).

use dashmap::DashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use tokio::sync::{mpsc, watch, Notify, Semaphore};

use tally_core::{Account, AccountId, AccountSpec, Counterparty};
use tally_store::{DurablePoint, Store};

use crate::mailbox::{Catalog, FastHash, Routes};
use crate::{EngineConfig, Error};

/// What an actor asks of the supervisor.
pub(crate) enum SupervisorMsg {
    /// A leg was appended for `account`, which a threshold watches: have it take the leg in
    /// now (activating it if it is not resident).
    Legs(AccountId),
}

/// How many [`SupervisorMsg`]s may wait; past it a nudge is dropped (the account takes its
/// legs in on its next turn anyway).
pub(crate) const SUPERVISOR_QUEUE: usize = 4_096;

/// Account loads and passivation saves running at once (on blocking threads); more wait their
/// turn (a bound on the blocking threads activation may occupy).
pub(crate) const STORE_IO_MAX: usize = 8;

pub(crate) struct Shared {
    pub(crate) store: Arc<dyn Store>,
    pub(crate) config: EngineConfig,
    pub(crate) directory: DashMap<AccountId, AccountSpec, FastHash>,
    /// Accounts being opened now (their `Opened` record appended, not yet in the directory):
    /// one open of an id at a time, without holding the directory's lock across the append.
    pub(crate) opening: DashMap<AccountId, (), FastHash>,
    /// Account → its actor's mailbox, for every resident account.
    pub(crate) routes: Routes,
    /// Accounts whose actor failed, with the last sequence number it appended: their next
    /// activation waits until that is durable before loading (a load reads durable records).
    pub(crate) failed: DashMap<AccountId, u64, FastHash>,
    pub(crate) admission: Arc<Semaphore>,
    /// Turns at blocking store I/O for activation and passivation ([`STORE_IO_MAX`]).
    pub(crate) store_io: Semaphore,
    pub(crate) durable: watch::Receiver<DurablePoint>,
    pub(crate) shutting_down: AtomicBool,
    /// Wakes the supervisor when more accounts are resident than the cap.
    pub(crate) eviction: Notify,
    /// Stops the supervisor.
    pub(crate) stop: Notify,
    pub(crate) supervisor: OnceLock<mpsc::Sender<SupervisorMsg>>,
    /// The apps' price catalogs as their accounts last applied them (the catalog is ledger
    /// state, in each app's account): app → (its newest version, endpoint → entry). Filled
    /// when an app's catalog is first needed and on every price change it applies.
    pub(crate) catalogs: DashMap<AccountId, Arc<Catalog>, FastHash>,
    /// Catalogs of apps another node serves (a store shared by several), with when they were
    /// read: kept [`crate::metering::REMOTE_CATALOG_KEPT`].
    pub(crate) remote_catalogs: DashMap<AccountId, (std::time::Instant, Arc<Catalog>), FastHash>,
    /// Rate limits and spend caps.
    pub(crate) policy: crate::policy::Policy,
    /// Subscribers and the events waiting for durability.
    pub(crate) events: Arc<crate::events::Events>,
    /// Replies waiting for durability, sent by the durable point.
    pub(crate) acks: Arc<crate::acks::Acks>,
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
            store_io: Semaphore::new(STORE_IO_MAX),
            config,
            directory,
            opening: DashMap::with_hasher(FastHash::default()),
            routes: Routes::with_hasher(FastHash::default()),
            failed: DashMap::with_hasher(FastHash::default()),
            durable: durable.clone(),
            shutting_down: AtomicBool::new(false),
            eviction: Notify::new(),
            stop: Notify::new(),
            supervisor: OnceLock::new(),
            catalogs: DashMap::with_hasher(FastHash::default()),
            remote_catalogs: DashMap::with_hasher(FastHash::default()),
            policy: crate::policy::Policy::default(),
            events: Arc::new(crate::events::Events::default()),
            acks: Arc::new(crate::acks::Acks::new(durable.clone())),
        };
        // Every policy is in force before its account is first loaded.
        for (id, policy) in &policies {
            shared.install_policy(*id, policy, None);
        }
        Ok(shared)
    }

    pub(crate) fn now_ms(&self) -> u64 {
        self.config.clock.now().0
    }

    pub(crate) fn is_shutting_down(&self) -> bool {
        self.shutting_down.load(Ordering::Acquire)
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

    pub(crate) fn counterparty(&self, id: Option<AccountId>) -> Option<Counterparty> {
        let id = id?;
        self.directory.get(&id).map(|spec| Counterparty {
            id,
            kind: spec.kind,
        })
    }

    /// Takes in the legs other accounts' records carried to `account` since it last did.
    pub(crate) fn take_in_legs(&self, account: &mut Account) -> Result<(), Error> {
        let legs = self.store.legs(account.id)?;
        let new = account.absorb_legs(&legs).map_err(|e| Error::Internal {
            reason: e.to_string().into(),
        })?;
        if new {
            let durable = self.durable.borrow().seq;
            self.events
                .on_legs(account, self.config.clock.now(), durable);
        }
        Ok(())
    }

    /// A leg was just appended for `other`: if a threshold watches it, have it take the leg in
    /// now (otherwise it takes the leg in on its next turn).
    pub(crate) fn leg_sent(&self, other: AccountId) {
        if self.events.watches(other) {
            if let Some(supervisor) = self.supervisor.get() {
                let _ = supervisor.try_send(SupervisorMsg::Legs(other));
            }
        }
    }

    /// Waits until the journal is durable up to `seq`.
    pub(crate) async fn wait_durable(&self, seq: u64) -> Result<(), Error> {
        // Most replies come from the acknowledgement path already durable: answered without
        // a receiver of its own (a clone touches the watch's shared count).
        if seq == 0 || self.durable.borrow().seq >= seq {
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

impl Shared {
    /// Follows the policy an account has: at open (`opening`: its buckets start empty) and on
    /// every setting it applies (a new rate limit's buckets start full).
    pub(crate) fn install_policy(
        &self,
        account: AccountId,
        policy: &tally_core::AccountPolicy,
        changed: Option<&tally_core::PolicySetting>,
    ) {
        let Some(kind) = self.directory.get(&account).map(|s| s.kind) else {
            return;
        };
        let Some(scope) = crate::policy::scope_of(account, kind) else {
            return;
        };
        let now = self.now_ms();
        let opening = changed.is_none();
        if opening || matches!(changed, Some(tally_core::PolicySetting::RateLimit(_))) {
            self.policy
                .install_rate(scope, policy.rate_limit, now, !opening);
        }
        if opening || matches!(changed, Some(tally_core::PolicySetting::SpendCapPerDay(_))) {
            self.policy.install_cap(scope, policy.spend_cap_per_day);
        }
        if opening || matches!(changed, Some(tally_core::PolicySetting::LowBalance(_))) {
            self.events
                .install_threshold(account, policy.low_balance.map(tally_core::Amount::get));
        }
    }
}
