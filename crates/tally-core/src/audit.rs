//! The audit: totals over every account and a check of every invariant of the design brief.

use serde::{Deserialize, Serialize};

use crate::{Account, AccountId, AccountKind, HoldId, HoldStatus, PostingId};

/// One broken invariant.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Violation {
    /// Σ debits ≠ Σ credits over all accounts.
    Unbalanced {
        /// Σ posted debits.
        debits_posted: u128,
        /// Σ posted credits.
        credits_posted: u128,
    },
    /// An account that may not overdraw is below its limit.
    Overspent {
        /// The account.
        account: AccountId,
        /// Its available balance.
        available: i128,
    },
    /// An account's pending total differs from the sum of its pending holds.
    PendingMismatch {
        /// The account.
        account: AccountId,
        /// Its pending total.
        debits_pending: u128,
        /// Σ of its pending holds.
        holds_pending: u128,
    },
    /// A hold posted more than it held.
    CommitAboveHold {
        /// The hold.
        hold: HoldId,
    },
    /// A posting refunded more than it posted.
    RefundAbovePosting {
        /// The posting.
        posting: PostingId,
    },
    /// A grant's parts (used, held, expired, free) do not add up to what it granted, or what
    /// the account's holds hold of it is not what it says it has held.
    GrantMismatch {
        /// The grant.
        grant: crate::GrantId,
    },
    /// What a user's grants have free is more than it has available: its general part went
    /// below zero.
    GrantedPastBalance {
        /// The account.
        account: AccountId,
        /// Its general part of the available balance.
        general: i128,
    },
}

/// Totals over all accounts and the invariants that failed (none, when all is well).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditReport {
    /// Accounts audited.
    pub accounts: u64,
    /// Σ posted debits.
    pub debits_posted: u128,
    /// Σ posted credits.
    pub credits_posted: u128,
    /// Σ pending debits.
    pub debits_pending: u128,
    /// Pending holds.
    pub holds_pending: u64,
    /// Money funded: minus the funding accounts' posted balance.
    pub funded: i128,
    /// Money earned: the revenue accounts' posted balance.
    pub revenue: i128,
    /// Σ user accounts' posted balances.
    pub user_balances: i128,
    /// What broke.
    pub violations: Vec<Violation>,
    /// Accounts left out because another node serves them (a cluster): their invariants are
    /// that node's to check, and conservation (Σ debits = Σ credits, a property of all the
    /// accounts at once) is not checked over a part.
    pub elsewhere: u64,
}

impl AuditReport {
    /// Whether every invariant holds.
    pub fn ok(&self) -> bool {
        self.violations.is_empty()
    }
}

/// Audits a set of accounts (all of them, at a quiescent point: no change in flight).
///
/// Checks: conservation (Σ debits = Σ credits, so funded = revenue + user balances); no account
/// that may not overdraw is below zero available (revenue accounts are exempt only by refunds,
/// which reverse what they earned); every account's pending total equals its pending holds;
/// no hold posted more than it held; no posting refunded more than it posted.
pub fn audit<'a>(accounts: impl IntoIterator<Item = &'a Account>) -> AuditReport {
    let mut auditor = Auditor::default();
    for account in accounts {
        auditor.add(account);
    }
    auditor.finish()
}

/// The audit one account at a time, so a caller can stream accounts through it (load, add,
/// drop) instead of holding them all in memory.
#[derive(Debug, Default)]
pub struct Auditor {
    report: AuditReport,
}

impl Auditor {
    /// Counts an account left out because another node serves it: conservation is then not
    /// checked (see [`AuditReport::elsewhere`]).
    pub fn elsewhere(&mut self) {
        self.report.elsewhere += 1;
    }

    /// Adds one account's totals and checks its own invariants.
    pub fn add(&mut self, account: &Account) {
        let report = &mut self.report;
        report.accounts += 1;
        report.debits_posted = report.debits_posted.saturating_add(account.debits_posted);
        report.credits_posted = report.credits_posted.saturating_add(account.credits_posted);
        report.debits_pending = report.debits_pending.saturating_add(account.debits_pending);
        let posted = account.balance().posted;
        match account.spec.kind {
            AccountKind::Funding => report.funded = report.funded.saturating_sub(posted),
            AccountKind::Revenue => report.revenue = report.revenue.saturating_add(posted),
            AccountKind::User => report.user_balances = report.user_balances.saturating_add(posted),
        }
        if account.spec.kind == AccountKind::User
            && !account.spec.may_overdraw()
            && account.available() < 0
        {
            report.violations.push(Violation::Overspent {
                account: account.id,
                available: account.available(),
            });
        }
        let mut holds_pending: u128 = 0;
        for hold in account.holds.values() {
            if hold.status == HoldStatus::Pending {
                holds_pending = holds_pending.saturating_add(hold.held().wide());
                report.holds_pending += 1;
            }
            if hold.amount_posted > hold.amount {
                report
                    .violations
                    .push(Violation::CommitAboveHold { hold: hold.id });
            }
        }
        if holds_pending != account.debits_pending {
            report.violations.push(Violation::PendingMismatch {
                account: account.id,
                debits_pending: account.debits_pending,
                holds_pending,
            });
        }
        if !account.grants.is_empty() {
            audit_grants(account, &mut report.violations);
        }
        for posting in account.postings.values() {
            if posting.amount_refunded > posting.amount {
                report.violations.push(Violation::RefundAbovePosting {
                    posting: posting.id,
                });
            }
        }
    }

    /// The report: the totals, and conservation checked over everything added.
    pub fn finish(self) -> AuditReport {
        let mut report = self.report;
        if report.elsewhere == 0 && report.debits_posted != report.credits_posted {
            report.violations.push(Violation::Unbalanced {
                debits_posted: report.debits_posted,
                credits_posted: report.credits_posted,
            });
        }
        report
    }
}

/// A user's grants: each one's parts add up to its amount, its held part is what the pending
/// holds hold of it, and together they have no more free than the account has available.
fn audit_grants(account: &Account, violations: &mut Vec<Violation>) {
    let mut free: u128 = 0;
    for g in account.grants.values() {
        let held_by_holds: u128 = account
            .holds
            .values()
            .filter(|h| h.status == HoldStatus::Pending)
            .flat_map(|h| h.grants.iter())
            .filter(|(seq, _)| *seq == g.id.seq)
            .map(|(_, a)| a.wide())
            .sum();
        let parts = g.used.wide() + g.held.wide() + g.expired.wide() + g.free().wide();
        if parts != g.amount.wide() || held_by_holds != g.held.wide() {
            violations.push(Violation::GrantMismatch { grant: g.id });
        }
        free += g.free().wide();
    }
    let general = account
        .available()
        .saturating_sub(i128::try_from(free).unwrap_or(i128::MAX));
    if !account.spec.may_overdraw() && general < 0 {
        violations.push(Violation::GrantedPastBalance {
            account: account.id,
            general,
        });
    }
}
