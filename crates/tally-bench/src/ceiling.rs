//! Ceilings measured in the same run as the load, so the engine's figures can be read as ratios:
//!
//! - **fdatasync/s** on the data directory's disk: what a journal that synced every write alone
//!   could reach;
//! - **group-commit records/s** with groups as large as the load's concurrency allows (one write
//!   in flight per client): what the journal could reach if the engine cost nothing;
//! - **core apply ops/s**: `Account::decide` + `apply` (+ the app's `apply_leg`) of charges in a
//!   tight single-threaded loop: what the domain logic costs without actors, routing or storage.

use std::path::Path;
use std::time::{Duration, Instant};

use serde::Serialize;
use tally::{
    Account, AccountId, AccountKind, AccountSpec, Amount, Change, Command, Limits, OpId, Record,
    Request, Timestamp,
};
use tally_core::{Counterparty, DecideCtx, Decision};

/// Bytes of a journal frame header (length, checksum, sequence number, chain hash) in front of a
/// payload.
pub const FRAME_HEADER_BYTES: usize = 48;

/// The ceilings of one run. `None` where not measured.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Ceilings {
    /// Individually synced 64-byte appends per second on the data directory's disk.
    pub fdatasync_per_sec: Option<f64>,
    /// Records per second with one write + one fdatasync per group of
    /// `group_commit_group_records` records of `group_commit_record_bytes` bytes.
    pub group_commit_records_per_sec: Option<f64>,
    /// Records per group in that measurement (the load's client count).
    pub group_commit_group_records: usize,
    /// Bytes per record in that measurement (a typical encoded record plus its frame header).
    pub group_commit_record_bytes: usize,
    /// Charges decided and applied per second by one thread, without the engine.
    pub core_apply_ops_per_sec: Option<f64>,
}

/// The encoded size of a typical journal record (a commit), frame header included.
pub fn typical_record_bytes() -> usize {
    let record = Record {
        origin: Default::default(),
        account: AccountId(1_000_042),
        op: Some(OpId(u128::MAX / 3)),
        at: Timestamp(1_750_000_000_000),
        change: Change::Committed {
            endpoint: Default::default(),
            usage: Default::default(),
            hold: 12_345,
            app: AccountId(2),
            amount_posted: Amount::from_const(123_456),
            amount_released: Amount::from_const(6_544),
            posting: 12_346,
            metered: false,
            estimated: false,
            period: None,
        },
    };
    let payload = tally_store::codec::encode_record(&record)
        .map(|bytes| bytes.len())
        .unwrap_or(64);
    payload + FRAME_HEADER_BYTES
}

/// Measures the two disk ceilings in `dir` (about `each` apiece).
pub fn measure_disk(
    dir: &Path,
    group_records: usize,
    each: Duration,
) -> std::io::Result<(f64, f64, usize)> {
    use tally_store::journal::ceiling::{fdatasync_rate, group_commit_rate};
    let record_bytes = typical_record_bytes();
    let fsync = fdatasync_rate(dir, each)?;
    let group = group_commit_rate(dir, group_records.max(1), record_bytes, each)?;
    Ok((fsync, group, record_bytes))
}

/// Why the core loop stopped early.
#[derive(Debug, thiserror::Error)]
pub enum CoreLoopError {
    /// The ledger refused a charge the loop expected to succeed.
    #[error("the core apply loop was refused: {0}")]
    Refused(#[from] tally::LedgerError),
    /// A charge was answered as a replay (an operation id repeated).
    #[error("the core apply loop repeated an operation id")]
    Replayed,
}

/// One user account, richly funded, and one app, as the core loop uses them.
pub struct CoreLoop {
    user: Account,
    app: Account,
    limits: Limits,
    next_op: u128,
    seq: u64,
}

impl CoreLoop {
    /// A funded user and an app, with default limits.
    pub fn new() -> CoreLoop {
        let limits = Limits::default();
        let funding = AccountId(1);
        let mut user = Account::new(AccountId(1_000), AccountSpec::user());
        let app = Account::new(AccountId(2), AccountSpec::revenue());
        let fund = Record {
            origin: Default::default(),
            account: user.id,
            op: Some(OpId(u128::MAX)),
            at: Timestamp(1),
            change: Change::Funded {
                from: funding,
                amount: Amount::MAX,
            },
        };
        user.apply(&fund, 1, &limits);
        CoreLoop {
            user,
            app,
            limits,
            next_op: 0,
            seq: 1,
        }
    }

    /// Decides and applies one charge of `amount` (and its leg on the app).
    pub fn charge(&mut self, amount: Amount) -> Result<(), CoreLoopError> {
        self.next_op += 1;
        self.seq += 1;
        let request = Request {
            origin: Default::default(),
            op: OpId(self.next_op),
            command: Command::Charge {
                usage: Default::default(),
                app: self.app.id,
                amount,
                endpoint: String::new(),
                metadata: String::new(),
                token: None,
            },
        };
        let ctx = DecideCtx {
            caps: Default::default(),
            now: Timestamp(2),
            limits: &self.limits,
            counterparty: Some(Counterparty {
                id: self.app.id,
                kind: AccountKind::Revenue,
            }),
        };
        match self.user.decide(&request, &ctx)? {
            Decision::Apply { record, .. } => {
                self.user.apply(&record, self.seq, &self.limits);
                self.app.apply_leg(&record, self.seq);
                Ok(())
            }
            Decision::Replay { .. } => Err(CoreLoopError::Replayed),
        }
    }
}

impl Default for CoreLoop {
    fn default() -> Self {
        CoreLoop::new()
    }
}

/// Charges decided and applied per second by one thread, measured for about `duration`.
pub fn core_apply_rate(duration: Duration) -> Result<f64, CoreLoopError> {
    let mut core = CoreLoop::new();
    let amount = Amount::from_const(1_000);
    // Warm up: fill the remembered-keys and postings tables to their steady-state sizes.
    for _ in 0..20_000 {
        core.charge(amount)?;
    }
    let started = Instant::now();
    let mut done = 0u64;
    loop {
        for _ in 0..1_024 {
            core.charge(amount)?;
        }
        done += 1_024;
        if started.elapsed() >= duration {
            break;
        }
    }
    // Precision loss above 2^53 operations is irrelevant for a rate.
    #[allow(clippy::cast_precision_loss)]
    let rate = done as f64 / started.elapsed().as_secs_f64();
    Ok(rate)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn the_core_loop_charges_without_refusal() {
        let mut core = CoreLoop::new();
        for _ in 0..100 {
            core.charge(Amount::from_const(5)).unwrap();
        }
        assert_eq!(core.app.balance().posted, 500);
    }

    #[test]
    fn a_typical_record_is_small() {
        let bytes = typical_record_bytes();
        assert!(bytes > FRAME_HEADER_BYTES && bytes < 256, "{bytes}");
    }
}
