//! A small world: a funding account, an app, two users.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use std::time::Duration;

use tally::{
    AccountId, AccountSpec, DurableConfig, DurableRecovery, DurableStore, EngineConfig,
    ManualClock, MemStore, OpId, Tally, Timestamp,
};

pub const BANK: AccountId = AccountId(1);
pub const APP: AccountId = AccountId(2);
pub const ALICE: AccountId = AccountId(10);
pub const BOB: AccountId = AccountId(11);

/// A fresh operation id per call.
pub fn op() -> OpId {
    static NEXT: AtomicU64 = AtomicU64::new(1_000_000);
    OpId(u128::from(NEXT.fetch_add(1, Ordering::Relaxed)))
}

pub struct World {
    pub tally: Tally,
    pub store: MemStore,
    pub clock: ManualClock,
    pub config: EngineConfig,
}

pub fn config(clock: &ManualClock) -> EngineConfig {
    EngineConfig {
        clock: Arc::new(clock.clone()),
        ..EngineConfig::default()
    }
}

/// Opens the world's accounts: the bank (funding), the app (revenue), Alice and Bob (users).
pub async fn open_accounts(tally: &Tally) {
    open_accounts_with(tally, &[ALICE, BOB]).await;
}

/// Opens the bank (funding), the app (revenue) and `users`.
pub async fn open_accounts_with(tally: &Tally, users: &[AccountId]) {
    tally
        .open_account(BANK, AccountSpec::funding())
        .await
        .unwrap();
    tally
        .open_account(APP, AccountSpec::revenue())
        .await
        .unwrap();
    for &user in users {
        tally.open_account(user, AccountSpec::user()).await.unwrap();
    }
}

/// An engine on the durable store `store_config` names. A store dropped a moment ago may still
/// be closing (its actors stop asynchronously): retry while its directory is locked.
pub async fn open_durable(
    mut store_config: DurableConfig,
    config: EngineConfig,
) -> (Tally, DurableStore, DurableRecovery) {
    store_config.limits = config.limits.clone();
    for _ in 0..500 {
        match DurableStore::open(store_config.clone()) {
            Ok((store, recovery)) => {
                let tally = Tally::open(Arc::new(store.clone()), config).await.unwrap();
                return (tally, store, recovery);
            }
            Err(tally::StoreError::Locked { .. }) => {
                tokio::time::sleep(Duration::from_millis(10)).await
            }
            Err(e) => panic!("{e}"),
        }
    }
    panic!("the data directory stayed locked");
}

impl World {
    /// Bank, app, Alice funded with `alice_funds`, Bob with nothing.
    pub async fn new(alice_funds: u64) -> World {
        let clock = ManualClock::new(Timestamp(1_700_000_000_000));
        World::with_config(alice_funds, config(&clock), clock).await
    }

    pub async fn with_config(alice_funds: u64, config: EngineConfig, clock: ManualClock) -> World {
        let store = MemStore::new(config.limits.clone());
        let tally = Tally::open(Arc::new(store.clone()), config.clone())
            .await
            .unwrap();
        open_accounts(&tally).await;
        if alice_funds > 0 {
            tally.fund(op(), ALICE, BANK, alice_funds).await.unwrap();
        }
        World {
            tally,
            store,
            clock,
            config,
        }
    }

    /// A new engine on the same store, as after a crash (nothing saved on the way down).
    pub async fn reopen(self) -> World {
        let World {
            tally,
            store,
            clock,
            config,
        } = self;
        drop(tally);
        let tally = Tally::open(Arc::new(store.clone()), config.clone())
            .await
            .unwrap();
        World {
            tally,
            store,
            clock,
            config,
        }
    }

    pub async fn available(&self, account: AccountId) -> i128 {
        self.tally.balance(account).await.unwrap().available
    }

    pub async fn assert_books_balance(&self) {
        let report = self.tally.audit().await.unwrap();
        assert!(report.ok(), "audit failed: {report:?}");
    }
}

/// The ledger error inside an engine error.
pub fn ledger(e: tally::Error) -> tally::LedgerError {
    match e {
        tally::Error::Ledger(e) => e,
        other => panic!("expected a ledger error, got {other:?}"),
    }
}

/// Sets an account's rate limit (a user's own, or an app's for all its users) through its
/// policy.
pub async fn set_rate(t: &Tally, account: AccountId, limit: tally::RateLimit) -> u64 {
    t.set_policy(op(), account, tally::PolicySetting::RateLimit(limit))
        .await
        .unwrap()
}

/// Sets an account's spend cap per UTC day (on an app: per user of it) through its policy.
pub async fn set_cap(t: &Tally, account: AccountId, per_day: Option<u64>) -> u64 {
    let cap = per_day.map(|c| tally::Amount::new(c).unwrap());
    t.set_policy(op(), account, tally::PolicySetting::SpendCapPerDay(cap))
        .await
        .unwrap()
}
