//! The hold guard: the seeds' delegated transfer as an RAII value.

use tally_core::{Amount, HoldId, OpId};

use crate::{Committed, Error, Tally};

/// A pending hold that voids itself unless committed.
///
/// Reserve with [`Tally::hold`], do the work, then [`HoldGuard::commit`] the actual cost. If the
/// guard is dropped unresolved (the work failed, returned early or panicked) a void is sent at
/// once on the current Tokio runtime, so the user is not charged and the funds do not wait for
/// the hold's timeout. Outside a runtime the hold is left to expire.
///
/// The guard's own void uses an operation id derived from the reserve's: `reserve_op` with its
/// top bit flipped ([`HoldGuard::void_op`]), so a retried void is idempotent too.
pub struct HoldGuard {
    tally: Tally,
    hold: HoldId,
    amount: Amount,
    reserve_op: OpId,
    resolved: bool,
}

impl HoldGuard {
    pub(crate) fn new(tally: Tally, hold: HoldId, amount: Amount, reserve_op: OpId) -> Self {
        HoldGuard {
            tally,
            hold,
            amount,
            reserve_op,
            resolved: false,
        }
    }

    /// The hold.
    pub fn id(&self) -> HoldId {
        self.hold
    }

    /// The amount held.
    pub fn amount(&self) -> Amount {
        self.amount
    }

    /// The operation id the guard voids with.
    pub fn void_op(&self) -> OpId {
        OpId(self.reserve_op.0 ^ (1u128 << 127))
    }

    /// Commits `actual ≤ held`. On success the guard is resolved; on error it stays pending
    /// (retry, or drop it to void).
    pub async fn commit(&mut self, op: OpId, actual: u64) -> Result<Committed, Error> {
        self.commit_with_usage(op, actual, tally_core::Usage::default())
            .await
    }

    /// [`HoldGuard::commit`] recording what the work used (for usage tracking).
    pub async fn commit_with_usage(
        &mut self,
        op: OpId,
        actual: u64,
        usage: tally_core::Usage,
    ) -> Result<Committed, Error> {
        let committed = self
            .tally
            .commit_with_usage(op, self.hold, actual, usage)
            .await?;
        self.resolved = true;
        Ok(committed)
    }

    /// Finishes a metered hold: posts the cost of `usage` at the price pinned when it was made
    /// (see [`Tally::finish`]).
    pub async fn finish(
        &mut self,
        op: OpId,
        usage: &tally_core::Usage,
    ) -> Result<Committed, Error> {
        let committed = self.tally.finish(op, self.hold, *usage).await?;
        self.resolved = true;
        Ok(committed)
    }

    /// The engine the hold is in.
    pub(crate) fn tally(&self) -> &Tally {
        &self.tally
    }

    /// Lets go of the hold without resolving it: it stays pending until committed, finished or
    /// voided by its id (from another task or process), or until it expires.
    pub fn detach(mut self) -> HoldId {
        self.resolved = true;
        self.hold
    }

    /// Voids the hold now and waits for it; returns the amount released.
    pub async fn void(mut self) -> Result<Amount, Error> {
        let released = self.tally.void(self.void_op(), self.hold).await?;
        self.resolved = true;
        Ok(released)
    }
}

impl Drop for HoldGuard {
    fn drop(&mut self) {
        if self.resolved {
            return;
        }
        let (tally, hold, op) = (self.tally.clone(), self.hold, self.void_op());
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                runtime.spawn(async move {
                    if let Err(e) = tally.void(op, hold).await {
                        tracing::warn!(%hold, error = %e, "void of a dropped hold failed; it will expire");
                    }
                });
            }
            Err(_) => tracing::warn!(%hold, "hold dropped outside a runtime; it will expire"),
        }
    }
}
