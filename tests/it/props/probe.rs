//! A store for tests that look at the engine from below: an in-memory store whose durable point
//! the test can hold back (and fail), that logs every snapshot saved and every checkpoint (with
//! the durable point at that moment), and that can be made slow (appends run under the locks of
//! the accounts they touch; snapshots under the lock of the account saved).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tally::{
    Account, AccountId, AccountSpec, DurablePoint, HistoryEntry, MemStore, Record, Store,
    StoreError,
};
use tokio::sync::watch;

/// What the store saw.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Event {
    /// A snapshot of `account` covering the journal up to `last_seq`, saved while the journal
    /// was durable up to `durable`.
    Saved {
        account: AccountId,
        last_seq: u64,
        durable: u64,
    },
    /// `Store::checkpoint`.
    Checkpoint,
}

#[derive(Clone)]
pub struct ProbeStore {
    inner: MemStore,
    held: Arc<AtomicBool>,
    durable: Arc<watch::Sender<DurablePoint>>,
    events: Arc<Mutex<Vec<Event>>>,
    append_delay_us: Arc<AtomicU64>,
    save_delay_us: Arc<AtomicU64>,
}

impl ProbeStore {
    pub fn new(limits: tally::Limits) -> ProbeStore {
        ProbeStore {
            inner: MemStore::new(limits),
            held: Arc::new(AtomicBool::new(false)),
            durable: Arc::new(watch::channel(DurablePoint::default()).0),
            events: Arc::new(Mutex::new(Vec::new())),
            append_delay_us: Arc::new(AtomicU64::new(0)),
            save_delay_us: Arc::new(AtomicU64::new(0)),
        }
    }

    /// Records appended so far (the first has sequence number 1).
    pub fn records(&self) -> Vec<Record> {
        self.inner.records()
    }

    pub fn last_seq(&self) -> u64 {
        self.inner.records().len() as u64
    }

    pub fn durable_seq(&self) -> u64 {
        self.durable.borrow().seq
    }

    /// From now on, appended records are not durable until `release`.
    pub fn hold(&self) {
        self.held.store(true, Ordering::SeqCst);
    }

    /// Everything appended so far is durable, and so is what comes next.
    pub fn release(&self) {
        self.held.store(false, Ordering::SeqCst);
        let seq = self.last_seq();
        self.durable.send_modify(|d| d.seq = d.seq.max(seq));
    }

    /// Making the held records durable failed: the store is fail-stopped.
    pub fn fail(&self) {
        self.durable
            .send_modify(|d| d.failed = Some(Arc::from("the disk failed")));
    }

    /// Every append takes this long (under the locks of the accounts it touches).
    pub fn slow_appends(&self, delay: Duration) {
        let us = u64::try_from(delay.as_micros()).unwrap_or(u64::MAX);
        self.append_delay_us.store(us, Ordering::SeqCst);
    }

    /// Every snapshot takes this long (under the lock of the account saved).
    pub fn slow_saves(&self, delay: Duration) {
        let us = u64::try_from(delay.as_micros()).unwrap_or(u64::MAX);
        self.save_delay_us.store(us, Ordering::SeqCst);
    }

    /// What happened so far, and forget it.
    pub fn take_events(&self) -> Vec<Event> {
        std::mem::take(&mut *self.events.lock().unwrap())
    }

    /// The snapshots saved so far (without forgetting them).
    pub fn saves(&self) -> Vec<(AccountId, u64, u64)> {
        self.events
            .lock()
            .unwrap()
            .iter()
            .filter_map(|e| match *e {
                Event::Saved {
                    account,
                    last_seq,
                    durable,
                } => Some((account, last_seq, durable)),
                Event::Checkpoint => None,
            })
            .collect()
    }
}

fn pause(us: &AtomicU64) {
    let us = us.load(Ordering::SeqCst);
    if us > 0 {
        std::thread::sleep(Duration::from_micros(us));
    }
}

impl Store for ProbeStore {
    fn limits(&self) -> &tally::Limits {
        self.inner.limits()
    }
    fn append(&self, record: &Record) -> Result<u64, StoreError> {
        pause(&self.append_delay_us);
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
    fn policies(&self) -> Result<Vec<(AccountId, tally::AccountPolicy)>, StoreError> {
        self.inner.policies()
    }
    fn load(&self, id: AccountId) -> Result<Option<Account>, StoreError> {
        self.inner.load(id)
    }
    fn legs(&self, id: AccountId) -> Result<tally::LegTotals, StoreError> {
        self.inner.legs(id)
    }
    fn save(&self, account: &Account) -> Result<(), StoreError> {
        pause(&self.save_delay_us);
        self.events.lock().unwrap().push(Event::Saved {
            account: account.id,
            last_seq: account.last_seq(),
            durable: self.durable_seq(),
        });
        self.inner.save(account)
    }
    fn checkpoint(&self) -> Result<usize, StoreError> {
        self.events.lock().unwrap().push(Event::Checkpoint);
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
    fn usage(&self, query: &tally::UsageQuery) -> Result<tally::UsageReport, StoreError> {
        self.inner.usage(query)
    }
    fn top_users(
        &self,
        query: &tally::UsageQuery,
        n: usize,
    ) -> Result<Vec<(AccountId, tally::UsageTotals)>, StoreError> {
        self.inner.top_users(query, n)
    }
    fn verify_trail(&self) -> Result<tally::TrailReport, StoreError> {
        self.inner.verify_trail()
    }
    fn trail_head(&self) -> (u64, [u8; 32]) {
        self.inner.trail_head()
    }
}
