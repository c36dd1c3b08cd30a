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
        if report.debits_posted != report.credits_posted {
            report.violations.push(Violation::Unbalanced {
                debits_posted: report.debits_posted,
                credits_posted: report.credits_posted,
            });
        }
        report
    }
}
