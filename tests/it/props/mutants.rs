//! Scenarios that pin down rules the random histories reach rarely or cannot observe, found by
//! mutation testing (see README, "Mutation testing"): with an in-memory store every record is
//! durable the moment it is appended, so "no answer before durability" needs a store whose
//! durable point the test moves by hand.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tally::{
    Account, AccountId, AccountSpec, DurablePoint, Error, HistoryEntry, MemStore, OpId, Record,
    Store, StoreError, Tally,
};
use tokio::sync::watch;

use super::model::{engine_config, runtime, START};

const BANK: AccountId = AccountId(1);
const APP: AccountId = AccountId(2);
const ALICE: AccountId = AccountId(10);

/// A `MemStore` whose durable point moves only when the test says so (while held).
#[derive(Clone)]
struct GatedStore {
    inner: MemStore,
    held: Arc<AtomicBool>,
    durable: Arc<watch::Sender<DurablePoint>>,
}

impl GatedStore {
    fn new() -> GatedStore {
        GatedStore {
            inner: MemStore::new(super::small_limits()),
            held: Arc::new(AtomicBool::new(false)),
            durable: Arc::new(watch::channel(DurablePoint::default()).0),
        }
    }

    fn last_seq(&self) -> u64 {
        self.inner.records().len() as u64
    }

    /// From now on, appended records are not durable until `release`.
    fn hold(&self) {
        self.held.store(true, Ordering::SeqCst);
    }

    /// Everything appended so far is durable, and so is what comes next.
    fn release(&self) {
        self.held.store(false, Ordering::SeqCst);
        let seq = self.last_seq();
        self.durable.send_modify(|d| d.seq = seq);
    }

    /// Making the held records durable failed: the store is fail-stopped.
    fn fail(&self) {
        self.durable
            .send_modify(|d| d.failed = Some(Arc::from("the disk failed")));
    }
}

impl Store for GatedStore {
    fn append(&self, record: &Record) -> Result<u64, StoreError> {
        let seq = self.inner.append(record)?;
        if !self.held.load(Ordering::SeqCst) {
            self.durable.send_modify(|d| d.seq = d.seq.max(seq));
        }
        Ok(seq)
    }
    fn durable(&self) -> watch::Receiver<DurablePoint> {
        self.durable.subscribe()
    }
    fn accounts(&self) -> Result<Vec<(AccountId, AccountSpec)>, StoreError> {
        self.inner.accounts()
    }
    fn load(&self, id: AccountId) -> Result<Option<Account>, StoreError> {
        self.inner.load(id)
    }
    fn save(&self, account: &Account) -> Result<(), StoreError> {
        self.inner.save(account)
    }
    fn checkpoint(&self) -> Result<usize, StoreError> {
        self.inner.checkpoint()
    }
    fn history(
        &self,
        id: AccountId,
        after_seq: u64,
        limit: usize,
    ) -> Result<Vec<HistoryEntry>, StoreError> {
        self.inner.history(id, after_seq, limit)
    }
}

async fn gated_world(dispatch: tally::Dispatch) -> (Tally, GatedStore) {
    let store = GatedStore::new();
    let clock = tally::ManualClock::new(START);
    let config = engine_config(&clock, dispatch);
    let tally = Tally::open(Arc::new(store.clone()), config).await.unwrap();
    tally
        .open_account(BANK, AccountSpec::funding())
        .await
        .unwrap();
    tally
        .open_account(APP, AccountSpec::revenue())
        .await
        .unwrap();
    tally
        .open_account(ALICE, AccountSpec::user())
        .await
        .unwrap();
    tally.fund(OpId(1), ALICE, BANK, 1_000).await.unwrap();
    (tally, store)
}

/// Lets every other task run for a while.
async fn let_others_run() {
    for _ in 0..200 {
        tokio::task::yield_now().await;
    }
    tokio::time::sleep(Duration::from_millis(20)).await;
}

const DISPATCHES: [tally::Dispatch; 2] = [tally::Dispatch::Inline, tally::Dispatch::Actor];

#[test]
fn no_answer_and_no_read_before_the_record_is_durable() {
    for dispatch in DISPATCHES {
        runtime().block_on(no_answer_before_durable(dispatch));
    }
}

async fn no_answer_before_durable(dispatch: tally::Dispatch) {
    let (tally, store) = gated_world(dispatch).await;
    store.hold();
    let charge = tokio::spawn({
        let tally = tally.clone();
        async move { tally.charge(OpId(2), ALICE, APP, 300, "/x").await }
    });
    let_others_run().await;
    assert!(
        !charge.is_finished(),
        "a charge was answered before it was durable"
    );
    // The record is in the journal and applied, but no read may show it yet.
    assert_eq!(store.last_seq(), 5);
    let read = tokio::spawn({
        let tally = tally.clone();
        async move { tally.balance(ALICE).await }
    });
    let_others_run().await;
    assert!(
        !read.is_finished(),
        "a read showed state that is not durable"
    );
    // A retry of the pending request waits for the same record.
    let retry = tokio::spawn({
        let tally = tally.clone();
        async move { tally.charge(OpId(2), ALICE, APP, 300, "/x").await }
    });
    let_others_run().await;
    assert!(
        !retry.is_finished(),
        "a retry was answered before the first was durable"
    );

    store.release();
    let posting = charge.await.unwrap().unwrap();
    assert_eq!(retry.await.unwrap().unwrap(), posting);
    assert_eq!(read.await.unwrap().unwrap().available, 700);
}

#[test]
fn a_failed_sync_answers_storage_failed_not_ok() {
    for dispatch in DISPATCHES {
        runtime().block_on(failed_sync(dispatch));
    }
}

async fn failed_sync(dispatch: tally::Dispatch) {
    let (tally, store) = gated_world(dispatch).await;
    store.hold();
    let fund = tokio::spawn({
        let tally = tally.clone();
        async move { tally.fund(OpId(2), ALICE, BANK, 5).await }
    });
    let_others_run().await;
    store.fail();
    assert!(
        matches!(fund.await.unwrap(), Err(Error::StorageFailed { .. })),
        "a write whose sync failed must not be acknowledged"
    );
}
