//! The received legs of every account, summed as records are appended (see
//! [`tally_core::legs`]).
//!
//! Every store keeps a [`LegBook`]: `append` folds the record's leg into its counterparty's
//! [`LegTotals`] before it returns the record's sequence number, so the counterparty sees the
//! leg on its next turn after the record is acknowledged (the sums are commutative: the order
//! two appends fold in does not matter). A load gives an account its own records and takes in
//! the book's sums. The durable store saves the changed sums with the journal point they cover
//! at each checkpoint (under the append gate, as the usage aggregates) and, when it opens, folds
//! the journal after that point again.

use dashmap::DashMap;
use tally_core::{AccountId, LegTotals, Record};

use crate::snapdb::{self, SnapshotDb, Table};
use crate::StoreError;

/// Gives `account` what `totals` (a store's sums of its legs) hold beyond what it took in; a
/// store whose sums went backwards is damaged.
pub(crate) fn give(
    account: &mut tally_core::Account,
    totals: &LegTotals,
) -> Result<(), StoreError> {
    account
        .absorb_legs(totals)
        .map(drop)
        .map_err(|e| StoreError::Corrupt(e.to_string().into()))
}

/// The meta key of the journal point the saved sums cover (account keys are 8 bytes).
const SEQ_KEY: &[u8] = b"\xffseq";

/// One account's sums and whether they changed since the last save.
#[derive(Clone, Copy, Default)]
struct Entry {
    totals: LegTotals,
    changed: bool,
}

/// The sums of the legs every account received.
#[derive(Default)]
pub(crate) struct LegBook {
    sums: DashMap<AccountId, Entry, foldhash::fast::RandomState>,
    /// The journal point the saved sums cover (0: none saved).
    saved_seq: u64,
}

/// Sums changed since the last save, to save with the point they cover.
pub(crate) type LegChanges = Vec<(AccountId, LegTotals)>;

impl LegBook {
    /// Folds the leg of record `seq`, if it carries one. Called after the record is
    /// journaled, so it cannot be refused: fewer than 2^64 records of at most
    /// [`tally_core::Amount::MAX`] (< 2^63) each sum below 2^127, so a sum passing `u128` means
    /// the memory is damaged, and the store stops loudly rather than keep a wrong sum.
    pub(crate) fn fold(&self, record: &Record, seq: u64) {
        let Some((id, leg)) = tally_core::legs::leg_of(record) else {
            return;
        };
        let mut entry = self.sums.entry(id).or_default();
        if let Err(e) = entry.totals.add(leg, seq) {
            panic!("account {}: {e}: the leg sums are damaged", id.0);
        }
        entry.changed = true;
    }

    /// Folds a record replayed at open, unless the saved sums cover it already.
    pub(crate) fn replay(&self, record: &Record, seq: u64) {
        if seq > self.saved_seq {
            self.fold(record, seq);
        }
    }

    /// What `id` received so far.
    pub(crate) fn get(&self, id: AccountId) -> LegTotals {
        self.sums.get(&id).map(|e| e.totals).unwrap_or_default()
    }

    /// Gives `account` the legs it received that it has not taken in yet.
    pub(crate) fn give(&self, account: &mut tally_core::Account) -> Result<(), StoreError> {
        give(account, &self.get(account.id))
    }

    /// The sums changed since the last call (call it where no append folds meanwhile).
    pub(crate) fn take_changes(&self) -> LegChanges {
        let mut changes = Vec::new();
        for mut entry in self.sums.iter_mut() {
            if entry.changed {
                entry.changed = false;
                changes.push((*entry.key(), entry.totals));
            }
        }
        changes
    }

    /// Marks sums taken by [`LegBook::take_changes`] changed again (their save failed).
    pub(crate) fn return_changes(&self, changes: &LegChanges) {
        for (id, _) in changes {
            if let Some(mut entry) = self.sums.get_mut(id) {
                entry.changed = true;
            }
        }
    }

    /// Loads the saved sums of `db`.
    pub(crate) fn open(db: &SnapshotDb) -> Result<LegBook, StoreError> {
        let mut book = LegBook::default();
        db.scan(Table::Legs, snapdb::ALL, |k, v| {
            if k == SEQ_KEY {
                book.saved_seq = <[u8; 8]>::try_from(v)
                    .map(u64::from_be_bytes)
                    .map_err(|_| StoreError::Corrupt("legs: bad sequence number".into()))?;
                return Ok(true);
            }
            let id = <[u8; 8]>::try_from(k)
                .map(u64::from_be_bytes)
                .map_err(|_| StoreError::Corrupt("legs: key is not 8 bytes".into()))?;
            let totals: LegTotals = postcard::from_bytes(v)
                .map_err(|e| StoreError::Corrupt(format!("legs: entry: {e}").into()))?;
            book.sums.insert(
                AccountId(id),
                Entry {
                    totals,
                    changed: false,
                },
            );
            Ok(true)
        })?;
        Ok(book)
    }

    /// Saves `changes` as covering the journal up to `seq` (durable up to it already), in one
    /// transaction; a save covering less than the one saved is put back for the next.
    pub(crate) fn save(
        &self,
        db: &SnapshotDb,
        seq: u64,
        changes: LegChanges,
    ) -> Result<(), StoreError> {
        if seq < db.get_u64(Table::Legs, SEQ_KEY)? {
            self.return_changes(&changes);
            return Ok(());
        }
        let result = db.write(|w| {
            for (id, totals) in &changes {
                let v = postcard::to_allocvec(totals)
                    .map_err(|e| StoreError::Io(format!("encoding: {e}").into()))?;
                w.insert(Table::Legs, &id.0.to_be_bytes(), &v)?;
            }
            w.insert(Table::Legs, SEQ_KEY, &seq.to_be_bytes())
        });
        if result.is_err() {
            self.return_changes(&changes);
        }
        result
    }
}
