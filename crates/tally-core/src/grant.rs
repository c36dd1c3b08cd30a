//! Prepaid credit grants: parts of a user's balance with a priority and an expiry (promotional
//! credit, a plan's allowance, purchased credit), consumed before the rest of the balance.
//!
//! A grant is issued from a funding account (a credit of the user, like a top-up) and is then a
//! sub-balance of the user's account: `amount = used + held + expired + free`. Every debit that
//! spends (a hold, an extension, a charge, a correction up) draws on the live grants first, in
//! one documented order — **lowest priority number first, then earliest expiry (a grant that
//! never expires last), then the oldest** — and on the account's own balance (its *general*
//! part) for the rest. A hold keeps what each grant holds for it; a settlement or commit
//! consumes the hold's grant shares first, in the order they were drawn; a release gives them
//! back. A posting keeps what each grant paid for it, so a refund or a correction down gives
//! back what was taken last first: the general part of the posting, then its grants from the
//! last drawn to the first (a refund never turns granted credit into general credit).
//!
//! A transfer out of the account and a funding update down may use only the general part:
//! granted credit is not the user's to move. When a grant expires, what it has free goes back
//! to its funding account (an engine-made [`crate::Change::GrantExpired`]); what its holds held
//! goes back when they are released. An expired grant is never drawn on, whether or not its
//! sweep has run yet.
//!
//! The split is decided by the same rules in [`crate::Account::apply`], from the account's state
//! and the record's time alone, so a replay of the journal rebuilds every grant exactly.

use serde::{Deserialize, Serialize};

use crate::{Account, AccountId, Amount, Period, Timestamp};

/// The most unexpired grants one account may have; one more is `TooManyGrants`. (Expired grants
/// are kept while a retained posting or a pending hold refers to them, so refunds find them.)
pub const GRANTS_MAX: usize = 64;

/// Longest text of a grant's label (bytes).
pub const GRANT_LABEL_MAX: usize = 64;

/// A grant: the user account it belongs to and that account's sequence number of it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct GrantId {
    /// The user account credited.
    pub account: AccountId,
    /// The account's sequence number of the grant.
    pub seq: u64,
}

impl std::fmt::Display for GrantId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "grant:{}/{}", self.account.0, self.seq)
    }
}

/// One grant as the account keeps it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Grant {
    /// Its id.
    pub id: GrantId,
    /// The funding account it came from (and where what expires goes back).
    pub from: AccountId,
    /// What was granted.
    pub amount: Amount,
    /// Lower numbers are consumed first.
    pub priority: u32,
    /// When it expires (`None`: never).
    pub expires_at: Option<Timestamp>,
    /// What it is for (e.g. `promo`, `allowance`, `purchased`).
    pub label: String,
    /// When it was issued.
    pub issued_at: Timestamp,
    /// Held by pending holds.
    pub held: Amount,
    /// Posted from it (net of refunds given back to it).
    pub used: Amount,
    /// Gone back to the funding account when it expired.
    pub expired: Amount,
    /// The start (ms) of the allowance period it was issued for (`None`: issued by a request).
    pub allowance_period: Option<u64>,
}

impl Grant {
    /// What it can still pay for: neither held, nor used, nor expired.
    pub fn free(&self) -> Amount {
        self.amount
            .checked_sub(self.used)
            .and_then(|a| a.checked_sub(self.held))
            .and_then(|a| a.checked_sub(self.expired))
            .unwrap_or(Amount::ZERO)
    }

    /// Whether it expired at or before `now`.
    pub fn expired_at(&self, now: Timestamp) -> bool {
        self.expires_at.is_some_and(|at| at <= now)
    }

    /// Its place in the order grants are drawn on (priority, expiry, seq).
    fn order_key(&self) -> (u32, Timestamp, u64) {
        (
            self.priority,
            self.expires_at.unwrap_or(Timestamp(u64::MAX)),
            self.id.seq,
        )
    }
}

/// A plan's recurring allowance: a grant of `amount` issued by the engine at the start of each
/// `period`, expiring at its end.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Allowance {
    /// The funding account the grants come from.
    pub from: AccountId,
    /// Granted each period.
    pub amount: Amount,
    /// The period.
    pub period: Period,
    /// The grants' priority.
    pub priority: u32,
    /// The grants' label.
    pub label: String,
}

/// An account's allowance and the last period it was issued for.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AllowanceState {
    /// The allowance.
    pub allowance: Allowance,
    /// When it was set.
    pub set_at: Timestamp,
    /// The start (ms) of the period it was last issued for (`None`: not yet).
    pub issued_for: Option<u64>,
}

impl AllowanceState {
    /// When its next grant is due: at once if none was issued, else the next period's start.
    pub fn next_at(&self) -> Timestamp {
        match self.issued_for {
            None => self.set_at,
            Some(start) => Timestamp(self.allowance.period.end(start)),
        }
    }
}

/// What each grant contributes to one hold or posting: (grant seq, amount), in the order drawn.
pub type GrantShares = Vec<(u64, Amount)>;

/// The total of some shares.
pub(crate) fn shares_total(shares: &GrantShares) -> u128 {
    shares.iter().map(|(_, a)| a.wide()).sum()
}

impl crate::Account {
    /// Its grants, by sequence number (live and expired ones still referred to).
    pub fn grants(&self) -> impl Iterator<Item = &Grant> {
        self.grants.values()
    }

    /// One of its grants.
    pub fn grant(&self, seq: u64) -> Option<&Grant> {
        self.grants.get(&seq)
    }

    /// Its recurring allowance, if one is set.
    pub fn allowance(&self) -> Option<&AllowanceState> {
        self.allowance.as_ref()
    }

    /// What its grants have free: (live at `now`, expired and not yet swept back).
    pub fn granted_free(&self, now: Timestamp) -> (u128, u128) {
        self.grants.values().fold((0, 0), |(live, dead), g| {
            if g.expired_at(now) {
                (live, dead + g.free().wide())
            } else {
                (live + g.free().wide(), dead)
            }
        })
    }

    /// What can be spent now: the available balance less what expired grants still have free
    /// (never drawn on, whether or not swept back yet).
    pub fn spendable(&self, now: Timestamp) -> i128 {
        let available = self.available();
        if self.grants.is_empty() {
            return available;
        }
        let (_, dead) = self.granted_free(now);
        available.saturating_sub(i128::try_from(dead).unwrap_or(i128::MAX))
    }

    /// The general part of what can be spent now: the available balance less what every grant
    /// has free (what a transfer out or a funding update down may take).
    pub fn general_available(&self, now: Timestamp) -> i128 {
        let available = self.available();
        if self.grants.is_empty() {
            return available;
        }
        let (live, dead) = self.granted_free(now);
        available.saturating_sub(i128::try_from(live + dead).unwrap_or(i128::MAX))
    }

    /// The live grants with something free at `at`, in the order they are drawn on.
    fn drawable(&self, at: Timestamp) -> Vec<u64> {
        let mut live: Vec<&Grant> = self
            .grants
            .values()
            .filter(|g| !g.expired_at(at) && !g.free().is_zero())
            .collect();
        live.sort_by_key(|g| g.order_key());
        live.into_iter().map(|g| g.id.seq).collect()
    }

    /// Draws up to `amount` from the live grants in order, holding it (`consume`: using it at
    /// once, for a charge or a correction up); returns the shares drawn (the rest is general).
    pub(crate) fn grants_draw(
        &mut self,
        amount: Amount,
        at: Timestamp,
        consume: bool,
    ) -> GrantShares {
        let mut shares = GrantShares::new();
        if self.grants.is_empty() {
            return shares;
        }
        let mut left = amount;
        for seq in self.drawable(at) {
            if left.is_zero() {
                break;
            }
            let Some(g) = self.grants.get_mut(&seq) else {
                continue;
            };
            let take = g.free().min(left);
            let field = if consume { &mut g.used } else { &mut g.held };
            *field = grant_add(*field, take, g.id);
            left = left.checked_sub(take).unwrap_or(Amount::ZERO);
            shares.push((seq, take));
        }
        shares
    }

    /// Turns `amount` of a hold's grant shares into used, first drawn first (a settlement or
    /// commit posting that much); returns the shares the posting paid with.
    pub(crate) fn grants_consume(
        &mut self,
        shares: &mut GrantShares,
        amount: Amount,
    ) -> GrantShares {
        let mut paid = GrantShares::new();
        let mut left = amount;
        for (seq, share) in shares.iter_mut() {
            if left.is_zero() {
                break;
            }
            let take = (*share).min(left);
            if take.is_zero() {
                continue;
            }
            if let Some(g) = self.grants.get_mut(seq) {
                g.held = grant_sub(g.held, take, g.id);
                g.used = grant_add(g.used, take, g.id);
            }
            *share = share.checked_sub(take).unwrap_or(Amount::ZERO);
            left = left.checked_sub(take).unwrap_or(Amount::ZERO);
            paid.push((*seq, take));
        }
        shares.retain(|(_, a)| !a.is_zero());
        paid
    }

    /// Gives every share a hold still has back to its grant (the hold released).
    pub(crate) fn grants_release(&mut self, shares: &mut GrantShares) {
        for (seq, share) in shares.drain(..) {
            if let Some(g) = self.grants.get_mut(&seq) {
                g.held = grant_sub(g.held, share, g.id);
            }
        }
    }

    /// Gives `amount` returned on a posting (a refund, a correction down, a volume rebate)
    /// back where it was taken from, last taken first: the posting's general part (`general`
    /// of it), then its grant shares from the last drawn to the first.
    pub(crate) fn grants_restore(
        &mut self,
        shares: &mut GrantShares,
        general: u128,
        amount: Amount,
    ) {
        let mut left = amount.wide().saturating_sub(general);
        for (seq, share) in shares.iter_mut().rev() {
            if left == 0 {
                break;
            }
            let take = share.wide().min(left);
            let take_amount =
                Amount::new(u64::try_from(take).unwrap_or(u64::MAX)).unwrap_or(*share);
            if let Some(g) = self.grants.get_mut(seq) {
                g.used = grant_sub(g.used, take_amount, g.id);
            }
            *share = share.checked_sub(take_amount).unwrap_or(Amount::ZERO);
            left -= take;
        }
        shares.retain(|(_, a)| !a.is_zero());
    }

    /// Drops expired grants that hold nothing and no retained posting refers to, so that the
    /// map stays bounded by the live grants and the retained postings.
    pub(crate) fn grants_prune(&mut self, at: Timestamp) {
        if self.grants.is_empty() {
            return;
        }
        let dead: Vec<u64> = self
            .grants
            .values()
            .filter(|g| g.expired_at(at) && g.held.is_zero() && g.free().is_zero())
            .map(|g| g.id.seq)
            .collect();
        for seq in dead {
            let referred = self
                .postings
                .values()
                .any(|p| p.grants.iter().any(|(s, _)| *s == seq));
            if !referred {
                self.grants.remove(&seq);
            }
        }
    }

    /// The earliest time a grant must be swept back or an allowance issued.
    pub(crate) fn grants_next_deadline(&self) -> Option<Timestamp> {
        let sweep = self
            .grants
            .values()
            .filter(|g| !g.free().is_zero())
            .filter_map(|g| g.expires_at)
            .min();
        let allowance = self.allowance.as_ref().map(AllowanceState::next_at);
        match (sweep, allowance) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }
}

/// `a + b` for a grant's counters: decided within the grant, so past `u64` is a bug that stops
/// the account loudly.
fn grant_add(a: Amount, b: Amount, id: GrantId) -> Amount {
    a.checked_add(b)
        .unwrap_or_else(|| panic!("{id}: {a} + {b} passes the largest amount"))
}

/// `a − b` for a grant's counters: below zero is a bug that stops the account loudly.
fn grant_sub(a: Amount, b: Amount, id: GrantId) -> Amount {
    a.checked_sub(b)
        .unwrap_or_else(|| panic!("{id}: {b} taken from {a}"))
}

/// An account's grants as of a moment: each grant, its allowance, and how its available
/// balance splits.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Grants {
    /// Its grants (unexpired ones, and expired ones still referred to), by id.
    pub grants: Vec<Grant>,
    /// Its recurring allowance.
    pub allowance: Option<AllowanceState>,
    /// What can be spent now (live grants and the general balance).
    pub spendable: i128,
    /// The general part of it (what a transfer out may take).
    pub general: i128,
    /// What the live grants have free.
    pub granted: u128,
}

impl Grants {
    /// The grants of `account` as of `now`.
    pub fn of(account: &Account, now: Timestamp) -> Grants {
        Grants {
            grants: account.grants().cloned().collect(),
            allowance: account.allowance().cloned(),
            spendable: account.spendable(now),
            general: account.general_available(now),
            granted: account.granted_free(now).0,
        }
    }
}
