//! The in-memory store: a journal in a `Vec`, snapshots in a map. Durable the moment a record is
//! appended (there is no disk), so it measures the engine without storage.

use parking_lot::{Mutex, RwLock};
use std::collections::HashMap;
use std::sync::Arc;
use tokio::sync::watch;

use tally_core::{
    Account, AccountId, AccountSpec, Limits, Record, UsageBook, UsageConfig, UsageQuery,
    UsageReport, UsageTotals,
};

use crate::journal::{chain_next, Chain, TrailProblem, TrailReport, GENESIS, TRAIL_PROBLEMS_MAX};
use crate::{DurablePoint, HistoryEntry, Store, StoreError};

/// An in-memory [`Store`]. Cloning gives another handle to the same data, so a test can drop an
/// engine without saving anything (as a crash would) and open a new one on the same journal.
#[derive(Clone)]
pub struct MemStore {
    inner: Arc<Inner>,
}

struct Inner {
    limits: Limits,
    journal: Mutex<Journal>,
    snapshots: RwLock<HashMap<AccountId, Account>>,
    durable: watch::Sender<DurablePoint>,
    /// Test hook: refuse appends after this many.
    fail_after: Option<u64>,
    /// The legs every account received.
    legs: crate::legs::LegBook,
}

#[derive(Default)]
struct Journal {
    records: Vec<Record>,
    /// Per account, the indexes (seq − 1) of the records that touched it.
    by_account: HashMap<AccountId, Vec<u64>>,
    failed: Option<Arc<str>>,
    /// The chain hash of each record (index seq − 1), as the durable journal computes it.
    chain: Vec<Chain>,
    /// Usage of every commit and charge appended.
    usage: UsageBook,
}

impl Default for MemStore {
    fn default() -> Self {
        Self::new(Limits::default())
    }
}

impl MemStore {
    /// An empty store whose replay uses `limits` (the engine's account limits).
    pub fn new(limits: Limits) -> Self {
        Self::build(limits, None)
    }

    /// A store that fail-stops on the append after `appends` successful ones, as a disk that
    /// fails would: for testing fail-stop (feature `testing`).
    #[cfg(feature = "testing")]
    pub fn failing_after(limits: Limits, appends: u64) -> Self {
        Self::build(limits, Some(appends))
    }

    fn build(limits: Limits, fail_after: Option<u64>) -> Self {
        let (durable, _) = watch::channel(DurablePoint::default());
        MemStore {
            inner: Arc::new(Inner {
                limits,
                journal: Mutex::new(Journal {
                    usage: UsageBook::unsaved(UsageConfig::default()),
                    ..Journal::default()
                }),
                snapshots: RwLock::new(HashMap::new()),
                durable,
                fail_after,
                legs: crate::legs::LegBook::default(),
            }),
        }
    }

    /// Every record appended so far, in sequence order (the first has sequence number 1).
    pub fn records(&self) -> Vec<Record> {
        self.inner.journal.lock().records.clone()
    }

    /// Rebuilds one account from its snapshot and the journal after it.
    fn rebuild(&self, id: AccountId) -> Result<Option<Account>, StoreError> {
        let snapshot = self.inner.snapshots.read().get(&id).cloned();
        let journal = self.inner.journal.lock();
        let mut account = snapshot;
        for &index in journal.by_account.get(&id).into_iter().flatten() {
            let seq = index + 1;
            let record = usize::try_from(index)
                .ok()
                .and_then(|i| journal.records.get(i))
                .ok_or_else(|| StoreError::Corrupt(format!("missing record {seq}").into()))?;
            // Its own records; the legs it received are in the book.
            if record.account == id {
                account = replay_one(account, record, seq, &self.inner.limits)?;
            }
        }
        if let Some(account) = account.as_mut() {
            self.inner.legs.give(account)?;
        }
        Ok(account)
    }
}

/// Applies one record to the state of account `id` (`None` until its `Opened` record).
pub(crate) fn replay_one(
    account: Option<Account>,
    record: &Record,
    seq: u64,
    limits: &Limits,
) -> Result<Option<Account>, StoreError> {
    let id = record.account;
    match account {
        Some(mut account) if seq > account.last_seq() => {
            account.apply(record, seq, limits);
            Ok(Some(account))
        }
        Some(account) => Ok(Some(account)),
        None => Account::from_open_record(record, seq)
            .map(Some)
            .ok_or_else(|| {
                StoreError::Corrupt(
                    format!("record {seq} touches {id} before it was opened").into(),
                )
            }),
    }
}

impl Store for MemStore {
    fn limits(&self) -> &Limits {
        &self.inner.limits
    }

    fn append(&self, record: &Record) -> Result<u64, StoreError> {
        // Encoded as the durable store would, for the audit trail's chain.
        let payload = crate::codec::encode_record(record)?;
        let mut journal = self.inner.journal.lock();
        if let Some(reason) = &journal.failed {
            return Err(StoreError::Failed(reason.clone()));
        }
        let index = journal.records.len() as u64;
        if self.inner.fail_after.is_some_and(|n| index >= n) {
            let reason: Arc<str> = Arc::from("injected failure: the store refuses writes");
            journal.failed = Some(reason.clone());
            self.inner
                .durable
                .send_modify(|d| d.failed = Some(reason.clone()));
            return Err(StoreError::Failed(reason));
        }
        journal.records.push(record.clone());
        let prev = journal.chain.last().copied().unwrap_or(GENESIS);
        journal.chain.push(chain_next(&prev, index + 1, &payload));
        journal.usage.fold(record);
        self.inner.legs.fold(record, index + 1);
        journal
            .by_account
            .entry(record.account)
            .or_default()
            .push(index);
        if let Some(other) = record.leg_account() {
            journal.by_account.entry(other).or_default().push(index);
        }
        let seq = index + 1;
        self.inner.durable.send_modify(|d| d.seq = seq);
        Ok(seq)
    }

    fn durable(&self) -> watch::Receiver<DurablePoint> {
        self.inner.durable.subscribe()
    }

    fn accounts(&self) -> Result<Vec<(AccountId, AccountSpec)>, StoreError> {
        let journal = self.inner.journal.lock();
        Ok(journal
            .records
            .iter()
            .filter_map(|r| match r.change {
                tally_core::Change::Opened { spec } => Some((r.account, spec)),
                _ => None,
            })
            .collect())
    }

    fn policies(&self) -> Result<Vec<(AccountId, tally_core::AccountPolicy)>, StoreError> {
        let journal = self.inner.journal.lock();
        let mut policies: HashMap<AccountId, tally_core::AccountPolicy> = HashMap::new();
        for r in &journal.records {
            if let tally_core::Change::PolicySet { setting, version } = &r.change {
                policies
                    .entry(r.account)
                    .or_default()
                    .apply(setting, *version, r.at);
            }
        }
        Ok(policies.into_iter().collect())
    }

    fn load(&self, id: AccountId) -> Result<Option<Account>, StoreError> {
        self.rebuild(id)
    }

    fn legs(&self, id: AccountId) -> Result<tally_core::LegTotals, StoreError> {
        Ok(self.inner.legs.get(id))
    }

    fn save(&self, account: &Account) -> Result<(), StoreError> {
        self.inner
            .snapshots
            .write()
            .insert(account.id, account.clone());
        Ok(())
    }

    fn checkpoint(&self) -> Result<usize, StoreError> {
        // The in-memory journal keeps everything: history reads it.
        Ok(0)
    }

    fn history(
        &self,
        id: AccountId,
        after_seq: u64,
        limit: usize,
    ) -> Result<Vec<HistoryEntry>, StoreError> {
        let journal = self.inner.journal.lock();
        let Some(indexes) = journal.by_account.get(&id) else {
            return Ok(Vec::new());
        };
        let start = indexes.partition_point(|&i| i < after_seq);
        Ok(indexes[start..]
            .iter()
            .take(limit)
            .filter_map(|&i| {
                let record = journal.records.get(usize::try_from(i).ok()?)?;
                Some(HistoryEntry {
                    seq: i + 1,
                    record: record.clone(),
                })
            })
            .collect())
    }

    fn usage(&self, query: &UsageQuery) -> Result<UsageReport, StoreError> {
        Ok(self.inner.journal.lock().usage.report(query))
    }

    fn top_users(
        &self,
        query: &UsageQuery,
        n: usize,
    ) -> Result<Vec<(AccountId, UsageTotals)>, StoreError> {
        Ok(self.inner.journal.lock().usage.top_users(query, n))
    }
    fn verify_trail(&self) -> Result<crate::TrailReport, StoreError> {
        MemStore::verify_trail(self)
    }

    fn trail_head(&self) -> (u64, crate::journal::Chain) {
        MemStore::trail_head(self)
    }
}

/// The audit trail: the durable journal's hash chain, over each record's encoding
/// ([`crate::codec::encode_record`]), so the same records give the same chain in both stores.
impl MemStore {
    /// The head of the chain: the last record's sequence number and chain hash
    /// (`(0, GENESIS)` while empty).
    pub fn trail_head(&self) -> (u64, Chain) {
        let journal = self.inner.journal.lock();
        let seq = journal.chain.len() as u64;
        (seq, journal.chain.last().copied().unwrap_or(GENESIS))
    }

    /// Recomputes the chain over every record and compares it with the hashes computed at
    /// append; a record changed since (only [`MemStore::tamper_record`] can) is
    /// [`TrailProblem::Altered`]. Appends wait meanwhile. Errs only if a record fails to
    /// encode.
    pub fn verify_trail(&self) -> Result<TrailReport, StoreError> {
        let journal = self.inner.journal.lock();
        let mut prev = GENESIS;
        let mut problems = Vec::new();
        let mut problems_total = 0u64;
        for (seq, (record, stored)) in (1u64..).zip(journal.records.iter().zip(&journal.chain)) {
            let payload = crate::codec::encode_record(record)?;
            if chain_next(&prev, seq, &payload) != *stored {
                problems_total += 1;
                if problems.len() < TRAIL_PROBLEMS_MAX {
                    problems.push(TrailProblem::Altered { seq });
                }
            }
            prev = *stored;
        }
        let records = journal.chain.len() as u64;
        Ok(TrailReport {
            pruned_through: 0,
            records,
            segments: 0,
            first_seq: u64::from(records > 0),
            last_seq: records,
            head: prev,
            torn_tail_bytes: 0,
            anchors_checked: 0,
            problems,
            problems_total,
        })
    }

    /// Test hook (feature `testing`): replaces record `seq` without updating its chain hash,
    /// as tampering would. Returns whether there was such a record.
    #[cfg(feature = "testing")]
    #[doc(hidden)]
    pub fn tamper_record(&self, seq: u64, record: Record) -> bool {
        let mut journal = self.inner.journal.lock();
        let slot = usize::try_from(seq.saturating_sub(1))
            .ok()
            .filter(|_| seq > 0)
            .and_then(|index| journal.records.get_mut(index));
        match slot {
            Some(slot) => {
                *slot = record;
                true
            }
            None => false,
        }
    }
}
