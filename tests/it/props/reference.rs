//! The reference ledger: a plainly correct, sequential model of tally, written from the rules in
//! the README and the design brief (not from tally-core's code). BTreeMaps of accounts, holds,
//! postings and remembered operation ids; one method per operation, each a short list of checks
//! in the order the engine reports them, then the change.
//!
//! The order of the checks: amounts (`AmountTooLarge`) before anything else; then the account
//! that executes the request must exist; its due holds expire (every request and every read
//! expires them first); the account that receives the other side of a two-account change must
//! exist; then idempotency (the same id with the same content answers the first outcome, with
//! other content names the first field that differs); then the operation's own rules.

use std::collections::{BTreeMap, VecDeque};

use tally::{
    AccountId, AccountKind, AccountSpec, Amount, Balance, Error, Hold, HoldId, HoldStatus,
    LedgerError, Limits, OpId, Outcome, Posting, PostingId, Timestamp,
};

use super::calls::{answer, Answer, Res, View, Write};

/// The largest amount one operation may carry.
pub const AMOUNT_MAX: u64 = i64::MAX as u64;
/// The default minimum of a funds check.
pub const CHECK_MINIMUM: u64 = 100;

impl Write {
    /// The request's kind and its content, field by field, in the order a conflict names them.
    fn content(&self) -> (&'static str, Vec<(&'static str, String)>) {
        let s = |v: &dyn std::fmt::Debug| format!("{v:?}");
        match self {
            Write::Fund { from, amount, .. } => {
                ("fund", vec![("from", s(from)), ("amount", s(amount))])
            }
            Write::Reserve {
                app,
                amount,
                timeout_ms,
                endpoint,
                metadata,
                ..
            } => (
                "reserve",
                vec![
                    ("app", s(app)),
                    ("amount", s(amount)),
                    ("timeout_ms", s(timeout_ms)),
                    ("endpoint", s(endpoint)),
                    ("metadata", s(metadata)),
                ],
            ),
            Write::Commit { hold, amount } => {
                ("commit", vec![("hold", s(hold)), ("amount", s(amount))])
            }
            Write::Void { hold } => ("void", vec![("hold", s(hold))]),
            Write::Extend {
                hold,
                amount,
                timeout_ms,
            } => (
                "extend",
                vec![
                    ("hold", s(hold)),
                    ("amount", s(amount)),
                    ("timeout_ms", s(timeout_ms)),
                ],
            ),
            Write::Settle { hold, amount } => (
                "settle",
                vec![("hold", s(hold)), ("amount", s(amount)), ("usage", s(&""))],
            ),
            Write::Charge {
                app,
                amount,
                endpoint,
                ..
            } => (
                "charge",
                vec![
                    ("app", s(app)),
                    ("amount", s(amount)),
                    ("endpoint", s(endpoint)),
                    ("metadata", s(&"")),
                ],
            ),
            Write::Refund { posting, amount } => (
                "refund",
                vec![("posting", s(posting)), ("amount", s(amount))],
            ),
            Write::Transfer { to, amount, .. } => {
                ("transfer", vec![("to", s(to)), ("amount", s(amount))])
            }
        }
    }

    /// The first field in which `other` differs (`operation` for another kind of request).
    fn first_difference(&self, other: &Write) -> Option<&'static str> {
        let (kind, fields) = self.content();
        let (other_kind, other_fields) = other.content();
        if kind != other_kind {
            return Some("operation");
        }
        fields
            .iter()
            .zip(other_fields.iter())
            .find(|(a, b)| a.1 != b.1)
            .map(|(a, _)| a.0)
    }
}

/// An operation id the account remembers: what was asked, what it answered, and when.
#[derive(Clone, Debug)]
pub struct Seen {
    write: Write,
    outcome: Outcome,
}

/// One account of the model.
#[derive(Clone, Debug)]
pub struct Acct {
    pub spec: AccountSpec,
    pub credits: u128,
    pub debits: u128,
    pub pending: u128,
    /// The next sequence number for a hold or a posting (both count from 1, one sequence).
    pub next_seq: u64,
    /// Pending holds and the retained resolved ones.
    pub holds: BTreeMap<u64, Hold>,
    resolved_order: VecDeque<u64>,
    /// Retained postings.
    pub postings: BTreeMap<u64, Posting>,
    posting_order: VecDeque<u64>,
    /// Remembered operation ids.
    pub ops: BTreeMap<OpId, Seen>,
    op_order: VecDeque<(Timestamp, OpId)>,
}

impl Acct {
    fn new(spec: AccountSpec) -> Acct {
        Acct {
            spec,
            credits: 0,
            debits: 0,
            pending: 0,
            next_seq: 1,
            holds: BTreeMap::new(),
            resolved_order: VecDeque::new(),
            postings: BTreeMap::new(),
            posting_order: VecDeque::new(),
            ops: BTreeMap::new(),
            op_order: VecDeque::new(),
        }
    }

    pub fn may_overdraw(&self) -> bool {
        self.spec.flags.may_overdraw || self.spec.kind == AccountKind::Funding
    }

    /// credits − debits − pending + credit limit.
    pub fn available(&self) -> i128 {
        self.credits as i128 + i128::from(self.spec.credit_limit.get())
            - self.debits as i128
            - self.pending as i128
    }

    pub fn pending_holds(&self) -> impl Iterator<Item = &Hold> {
        self.holds
            .values()
            .filter(|h| h.status == HoldStatus::Pending)
    }
}

/// The reference ledger.
#[derive(Clone, Debug)]
pub struct Ledger {
    pub limits: Limits,
    pub now: Timestamp,
    pub accounts: BTreeMap<AccountId, Acct>,
}

fn ledger_err(e: LedgerError) -> Error {
    Error::Ledger(e)
}

fn unknown(account: AccountId) -> Error {
    ledger_err(LedgerError::UnknownAccount { account })
}

fn kind_name(kind: AccountKind) -> &'static str {
    match kind {
        AccountKind::User => "user",
        AccountKind::Revenue => "revenue",
        AccountKind::Funding => "funding",
    }
}

fn wrong_kind(account: AccountId, kind: AccountKind, expected: &'static str) -> Error {
    ledger_err(LedgerError::WrongAccountKind {
        account,
        actual: kind_name(kind),
        expected,
    })
}

fn amount(value: u64) -> Result<Amount, Error> {
    if value > AMOUNT_MAX {
        return Err(ledger_err(LedgerError::AmountTooLarge {
            amount: value,
            max: AMOUNT_MAX,
        }));
    }
    Ok(Amount::new(value).expect("in range"))
}

fn positive(value: u64) -> Result<(), Error> {
    if value == 0 {
        return Err(ledger_err(LedgerError::ZeroAmount { field: "amount" }));
    }
    Ok(())
}

fn text(field: &'static str, value: &str, max: usize) -> Result<(), Error> {
    if value.len() > max {
        return Err(ledger_err(LedgerError::FieldTooLong {
            field,
            len: value.len(),
            max,
        }));
    }
    Ok(())
}

impl Ledger {
    pub fn new(limits: Limits, now: Timestamp) -> Ledger {
        Ledger {
            limits,
            now,
            accounts: BTreeMap::new(),
        }
    }

    fn acct(&self, id: AccountId) -> Result<&Acct, Error> {
        self.accounts.get(&id).ok_or_else(|| unknown(id))
    }

    fn acct_mut(&mut self, id: AccountId) -> &mut Acct {
        self.accounts.get_mut(&id).expect("checked before")
    }

    /// The account must exist and (if given) be of `kind`.
    fn need(
        &self,
        id: AccountId,
        kind: Option<AccountKind>,
        expected: &'static str,
    ) -> Result<(), Error> {
        let acct = self.acct(id)?;
        match kind {
            Some(kind) if acct.spec.kind != kind => Err(wrong_kind(id, acct.spec.kind, expected)),
            _ => Ok(()),
        }
    }

    /// The payee of a hold or charge: a revenue or another user account.
    fn payee(&self, id: AccountId, app: AccountId) -> Result<(), Error> {
        if app == id {
            return Err(ledger_err(LedgerError::SameAccount { account: id }));
        }
        let acct = self.acct(app)?;
        if acct.spec.kind == AccountKind::Funding {
            return Err(wrong_kind(app, acct.spec.kind, "a revenue or user account"));
        }
        Ok(())
    }

    /// A debit of `value` must keep an account that may not overdraw at `available ≥ 0`.
    fn funds(&self, id: AccountId, value: u64) -> Result<(), Error> {
        let acct = self.acct(id)?;
        let available = acct.available();
        if !acct.may_overdraw() && available < i128::from(value) {
            return Err(ledger_err(LedgerError::InsufficientFunds {
                account: id,
                available,
                requested: value,
            }));
        }
        Ok(())
    }

    pub fn advance(&mut self, ms: u64) {
        self.now = self.now.plus_ms(ms);
    }

    pub fn open(&mut self, id: AccountId, spec: AccountSpec) -> Res {
        if let Some(existing) = self.accounts.get(&id) {
            let field = if existing.spec.kind != spec.kind {
                Some("kind")
            } else if existing.spec.credit_limit != spec.credit_limit {
                Some("credit_limit")
            } else if existing.spec.flags != spec.flags {
                Some("flags")
            } else {
                None
            };
            return match field {
                None => Ok(Answer::Done),
                Some(field) => Err(ledger_err(LedgerError::AccountExists {
                    account: id,
                    field,
                })),
            };
        }
        self.accounts.insert(id, Acct::new(spec));
        Ok(Answer::Done)
    }

    /// Expires the account's pending holds whose deadline has passed, soonest first.
    pub fn expire(&mut self, id: AccountId) -> usize {
        let now = self.now;
        let Some(acct) = self.accounts.get(&id) else {
            return 0;
        };
        let mut due: Vec<(Timestamp, u64)> = acct
            .pending_holds()
            .filter(|h| h.expires_at <= now)
            .map(|h| (h.expires_at, h.id.seq))
            .collect();
        due.sort();
        for (_, seq) in &due {
            self.resolve(id, *seq, HoldStatus::Expired, |_| {});
        }
        due.len()
    }

    /// Expires due holds everywhere (every account with a hold is resident in these tests).
    pub fn expire_all(&mut self) -> usize {
        let ids: Vec<AccountId> = self.accounts.keys().copied().collect();
        ids.into_iter().map(|id| self.expire(id)).sum()
    }

    fn resolve(
        &mut self,
        id: AccountId,
        seq: u64,
        status: HoldStatus,
        update: impl FnOnce(&mut Hold),
    ) {
        let now = self.now;
        let retained = self.limits.holds_resolved_retained;
        let acct = self.acct_mut(id);
        let hold = acct.holds.get_mut(&seq).expect("a pending hold");
        assert_eq!(
            hold.status,
            HoldStatus::Pending,
            "the model resolved a hold twice"
        );
        // What it still held: the settled parts were posted already.
        let held = hold.amount.wide() - hold.amount_posted.wide();
        hold.status = status;
        hold.resolved_at = Some(now);
        update(hold);
        acct.pending -= held;
        acct.resolved_order.push_back(seq);
        while acct.resolved_order.len() > retained {
            let old = acct.resolved_order.pop_front().expect("non-empty");
            acct.holds.remove(&old);
        }
    }

    fn add_posting(
        &mut self,
        id: AccountId,
        app: AccountId,
        value: Amount,
        endpoint: &str,
    ) -> PostingId {
        let now = self.now;
        let retained = self.limits.postings_retained;
        let acct = self.acct_mut(id);
        let posting = PostingId {
            account: id,
            seq: acct.next_seq,
        };
        acct.next_seq += 1;
        acct.postings.insert(
            posting.seq,
            Posting {
                id: posting,
                app,
                amount: value,
                amount_refunded: Amount::ZERO,
                posted_at: now,
                endpoint: endpoint.into(),
                estimate: None,
                grants: Vec::new(),
            },
        );
        acct.posting_order.push_back(posting.seq);
        while acct.posting_order.len() > retained {
            let old = acct.posting_order.pop_front().expect("non-empty");
            acct.postings.remove(&old);
        }
        posting
    }

    fn remember(&mut self, id: AccountId, op: OpId, write: Write, outcome: Outcome) {
        let now = self.now;
        let (max, retention) = (
            self.limits.idempotency_keys_max,
            self.limits.idempotency_retention_ms,
        );
        let acct = self.acct_mut(id);
        acct.ops.insert(op, Seen { write, outcome });
        acct.op_order.push_back((now, op));
        // Keys are forgotten when a newer operation is remembered: the oldest past the count,
        // and every one older than the retention measured from the newest.
        let horizon = now.0.saturating_sub(retention);
        while let Some(&(at, first)) = acct.op_order.front() {
            if acct.op_order.len() > max || at.0 < horizon {
                acct.op_order.pop_front();
                acct.ops.remove(&first);
            } else {
                break;
            }
        }
    }

    /// The account that receives the other side of a two-account change, if not `id` itself.
    fn leg(&self, id: AccountId, write: &Write) -> Option<AccountId> {
        let acct = self.accounts.get(&id)?;
        let other = match write {
            Write::Fund { from, .. } => Some(*from),
            Write::Charge { app, .. } => Some(*app),
            Write::Transfer { to, .. } => Some(*to),
            Write::Commit { hold, .. } | Write::Settle { hold, .. } => {
                acct.holds.get(&hold.seq).map(|h| h.app)
            }
            Write::Refund { posting, .. } => acct.postings.get(&posting.seq).map(|p| p.app),
            Write::Reserve { .. } | Write::Void { .. } | Write::Extend { .. } => None,
        };
        other.filter(|other| *other != id)
    }

    /// Executes a write request.
    pub fn write(&mut self, op: OpId, write: &Write) -> Res {
        if let Some(value) = write.amount() {
            amount(value)?;
        }
        let id = write.executor();
        self.acct(id)?;
        self.expire(id);
        if let Some(other) = self.leg(id, write) {
            self.acct(other)?;
        }
        if let Some(seen) = self.accounts[&id].ops.get(&op) {
            return match seen.write.first_difference(write) {
                None => Ok(answer(seen.outcome)),
                Some(field) => Err(ledger_err(LedgerError::IdempotencyConflict { op, field })),
            };
        }
        let outcome = self.execute(id, write)?;
        self.remember(id, op, write.clone(), outcome);
        Ok(answer(outcome))
    }

    /// A hold of `id` that may be committed or voided now.
    fn pending_hold(&self, hold: HoldId) -> Result<Hold, Error> {
        let found = self.accounts[&hold.account]
            .holds
            .get(&hold.seq)
            .ok_or(ledger_err(LedgerError::UnknownHold { hold }))?;
        match found.status {
            HoldStatus::Pending => Ok(found.clone()),
            HoldStatus::Expired => Err(ledger_err(LedgerError::HoldExpired {
                hold,
                expired_at: found.expires_at,
            })),
            status => Err(ledger_err(LedgerError::HoldAlreadyResolved {
                hold,
                status,
            })),
        }
    }

    fn execute(&mut self, id: AccountId, write: &Write) -> Result<Outcome, Error> {
        let kind = self.accounts[&id].spec.kind;
        let limits = self.limits.clone();
        match write {
            Write::Fund {
                from,
                amount: value,
                ..
            } => {
                positive(*value)?;
                if kind == AccountKind::Funding {
                    return Err(wrong_kind(id, kind, "a user or revenue account"));
                }
                self.need(*from, Some(AccountKind::Funding), "a funding account")?;
                self.acct_mut(id).credits += u128::from(*value);
                self.acct_mut(*from).debits += u128::from(*value);
                Ok(Outcome::Funded)
            }
            Write::Reserve {
                app,
                amount: value,
                timeout_ms,
                endpoint,
                metadata,
                ..
            } => {
                positive(*value)?;
                if kind != AccountKind::User {
                    return Err(wrong_kind(id, kind, "a user account"));
                }
                self.payee(id, *app)?;
                if *timeout_ms < limits.hold_timeout_ms_min
                    || *timeout_ms > limits.hold_timeout_ms_max
                {
                    return Err(ledger_err(LedgerError::InvalidTimeout {
                        timeout_ms: *timeout_ms,
                        min_ms: limits.hold_timeout_ms_min,
                        max_ms: limits.hold_timeout_ms_max,
                    }));
                }
                text("endpoint", endpoint, limits.endpoint_bytes_max)?;
                text("metadata", metadata, limits.metadata_bytes_max)?;
                if self.accounts[&id].pending_holds().count() >= limits.holds_pending_max {
                    return Err(ledger_err(LedgerError::TooManyHolds {
                        account: id,
                        limit: limits.holds_pending_max,
                    }));
                }
                self.funds(id, *value)?;
                let now = self.now;
                let acct = self.acct_mut(id);
                let hold = HoldId {
                    account: id,
                    seq: acct.next_seq,
                };
                acct.next_seq += 1;
                acct.pending += u128::from(*value);
                let expires_at = now.plus_ms(*timeout_ms);
                acct.holds.insert(
                    hold.seq,
                    Hold {
                        id: hold,
                        amount: amount(*value)?,
                        app: *app,
                        endpoint: endpoint.as_str().into(),
                        metadata: metadata.clone(),
                        created_at: now,
                        expires_at,
                        status: HoldStatus::Pending,
                        amount_posted: Amount::ZERO,
                        posting: None,
                        resolved_at: None,
                        token: None,
                        price: None,
                        usage_settled: tally::Usage::default(),
                        grants: Vec::new(),
                    },
                );
                Ok(Outcome::Reserved {
                    hold,
                    expires_at,
                    amount: amount(*value)?,
                })
            }
            Write::Commit {
                hold,
                amount: value,
            } => {
                let held = self.pending_hold(*hold)?;
                // Zero finishes a hold whose parts were settled; otherwise it is refused.
                if held.amount_posted.is_zero() {
                    positive(*value)?;
                }
                let holding = held.amount.get() - held.amount_posted.get();
                if *value > holding {
                    return Err(ledger_err(LedgerError::CommitExceedsHold {
                        hold: *hold,
                        held: holding,
                        requested: *value,
                    }));
                }
                let posted = amount(*value)?;
                let posting = PostingId {
                    account: id,
                    seq: self.accounts[&id].next_seq,
                };
                self.resolve(id, hold.seq, HoldStatus::Posted, |h| {
                    h.amount_posted = amount(h.amount_posted.get() + value).expect("within");
                    h.posting = Some(posting);
                });
                self.acct_mut(id).debits += posted.wide();
                self.acct_mut(held.app).credits += posted.wide();
                let made = self.add_posting(id, held.app, posted, &held.endpoint);
                assert_eq!(made, posting);
                Ok(Outcome::Committed {
                    posting,
                    amount_posted: posted,
                    amount_released: amount(holding - value)?,
                })
            }
            Write::Void { hold } => {
                let held = self.pending_hold(*hold)?;
                self.resolve(id, hold.seq, HoldStatus::Voided, |_| {});
                Ok(Outcome::Voided {
                    amount_released: amount(held.amount.get() - held.amount_posted.get())?,
                })
            }
            Write::Extend {
                hold,
                amount: value,
                timeout_ms,
            } => {
                if *value == 0 && *timeout_ms == 0 {
                    return Err(ledger_err(LedgerError::ZeroAmount { field: "amount" }));
                }
                let held = self.pending_hold(*hold)?;
                if *timeout_ms != 0
                    && (*timeout_ms < limits.hold_timeout_ms_min
                        || *timeout_ms > limits.hold_timeout_ms_max)
                {
                    return Err(ledger_err(LedgerError::InvalidTimeout {
                        timeout_ms: *timeout_ms,
                        min_ms: limits.hold_timeout_ms_min,
                        max_ms: limits.hold_timeout_ms_max,
                    }));
                }
                let total = held
                    .amount
                    .get()
                    .checked_add(*value)
                    .filter(|t| *t <= AMOUNT_MAX);
                let Some(total) = total else {
                    return Err(ledger_err(LedgerError::AmountTooLarge {
                        amount: *value,
                        max: AMOUNT_MAX - held.amount.get(),
                    }));
                };
                if *value > 0 {
                    self.funds(id, *value)?;
                }
                let now = self.now;
                let acct = self.acct_mut(id);
                acct.pending += u128::from(*value);
                let h = acct.holds.get_mut(&hold.seq).expect("pending");
                h.amount = amount(total)?;
                if *timeout_ms != 0 {
                    h.expires_at = h.expires_at.max(now.plus_ms(*timeout_ms));
                }
                Ok(Outcome::Extended {
                    amount: h.amount,
                    expires_at: h.expires_at,
                })
            }
            Write::Settle {
                hold,
                amount: value,
            } => {
                positive(*value)?;
                let held = self.pending_hold(*hold)?;
                let holding = held.amount.get() - held.amount_posted.get();
                if *value > holding {
                    return Err(ledger_err(LedgerError::CommitExceedsHold {
                        hold: *hold,
                        held: holding,
                        requested: *value,
                    }));
                }
                let posted = amount(*value)?;
                let acct = self.acct_mut(id);
                acct.debits += posted.wide();
                acct.pending -= posted.wide();
                let h = acct.holds.get_mut(&hold.seq).expect("pending");
                h.amount_posted = amount(h.amount_posted.get() + value)?;
                self.acct_mut(held.app).credits += posted.wide();
                let posting = self.add_posting(id, held.app, posted, &held.endpoint);
                Ok(Outcome::Settled {
                    posting,
                    amount_posted: posted,
                    amount_held: amount(holding - value)?,
                })
            }
            Write::Charge {
                app,
                amount: value,
                endpoint,
                ..
            } => {
                positive(*value)?;
                if kind != AccountKind::User {
                    return Err(wrong_kind(id, kind, "a user account"));
                }
                self.payee(id, *app)?;
                text("endpoint", endpoint, limits.endpoint_bytes_max)?;
                self.funds(id, *value)?;
                self.acct_mut(id).debits += u128::from(*value);
                self.acct_mut(*app).credits += u128::from(*value);
                let posting = self.add_posting(id, *app, amount(*value)?, endpoint);
                Ok(Outcome::Charged { posting })
            }
            Write::Refund {
                posting,
                amount: value,
            } => {
                positive(*value)?;
                let found = self.accounts[&id]
                    .postings
                    .get(&posting.seq)
                    .cloned()
                    .ok_or(ledger_err(LedgerError::UnknownPosting {
                        posting: *posting,
                    }))?;
                let payee_kind = self.accounts[&found.app].spec.kind;
                if payee_kind == AccountKind::User {
                    return Err(wrong_kind(
                        found.app,
                        payee_kind,
                        "a revenue account (a payment to a user is returned by a transfer)",
                    ));
                }
                let refundable = found.amount.get() - found.amount_refunded.get();
                if *value > refundable {
                    return Err(ledger_err(LedgerError::RefundExceedsPosting {
                        posting: *posting,
                        refundable,
                        requested: *value,
                    }));
                }
                let acct = self.acct_mut(id);
                acct.credits += u128::from(*value);
                let p = acct.postings.get_mut(&posting.seq).expect("found above");
                p.amount_refunded = amount(p.amount_refunded.get() + value)?;
                self.acct_mut(found.app).debits += u128::from(*value);
                Ok(Outcome::Refunded { posting: *posting })
            }
            Write::Transfer {
                to, amount: value, ..
            } => {
                positive(*value)?;
                if *to == id {
                    return Err(ledger_err(LedgerError::SameAccount { account: id }));
                }
                self.need(*to, None, "an account")?;
                self.funds(id, *value)?;
                self.acct_mut(id).debits += u128::from(*value);
                self.acct_mut(*to).credits += u128::from(*value);
                Ok(Outcome::Transferred)
            }
        }
    }

    /// `available ≥ minimum` (default 100).
    pub fn check(&mut self, id: AccountId, minimum: Option<u64>) -> Res {
        let minimum = amount(minimum.unwrap_or(CHECK_MINIMUM))?;
        self.acct(id)?;
        self.expire(id);
        Ok(Answer::Check(
            self.accounts[&id].available() >= minimum.wide() as i128,
        ))
    }

    pub fn balance_of(&self, id: AccountId) -> Option<Balance> {
        let acct = self.accounts.get(&id)?;
        Some(Balance {
            account: id,
            credits_posted: acct.credits,
            debits_posted: acct.debits,
            debits_pending: acct.pending,
            credit_limit: acct.spec.credit_limit,
            posted: acct.credits as i128 - acct.debits as i128,
            available: acct.available(),
        })
    }

    pub fn balance(&mut self, id: AccountId) -> Res {
        self.acct(id)?;
        self.expire(id);
        Ok(Answer::Balance(self.balance_of(id).expect("exists")))
    }

    pub fn get_hold(&mut self, hold: HoldId) -> Res {
        self.acct(hold.account)?;
        self.expire(hold.account);
        self.accounts[&hold.account]
            .holds
            .get(&hold.seq)
            .map(|h| Answer::Hold(Box::new(h.clone())))
            .ok_or(ledger_err(LedgerError::UnknownHold { hold }))
    }

    pub fn find_op(&mut self, id: AccountId, op: OpId) -> Res {
        self.acct(id)?;
        self.expire(id);
        Ok(Answer::Op(
            self.accounts[&id].ops.get(&op).map(|s| s.outcome),
        ))
    }

    /// The outcome `id` remembers for `op` (no expiry: not an access).
    pub fn remembered(&self, id: AccountId, op: OpId) -> Option<Outcome> {
        self.accounts.get(&id)?.ops.get(&op).map(|s| s.outcome)
    }

    /// The account's view as of now, without expiring anything.
    pub fn view_of(&self, id: AccountId) -> Option<View> {
        let acct = self.accounts.get(&id)?;
        Some(View {
            balance: self.balance_of(id)?,
            holds: (1..=acct.next_seq)
                .map(|seq| acct.holds.get(&seq).cloned())
                .collect(),
            postings: acct
                .posting_order
                .iter()
                .map(|seq| acct.postings[seq].clone())
                .collect(),
            ops_remembered: acct.ops.len(),
            outcomes: acct
                .ops
                .iter()
                .map(|(op, s)| (*op, Some(s.outcome)))
                .collect(),
        })
    }

    /// Reads the whole account (expiring its due holds first, as every read does).
    pub fn inspect(&mut self, id: AccountId) -> Res {
        self.acct(id)?;
        self.expire(id);
        Ok(Answer::View(Box::new(self.view_of(id).expect("exists"))))
    }

    /// Σ over every account: (debits posted, credits posted, pending, pending holds, funded,
    /// revenue, user balances), as the audit reports them.
    pub fn totals(&self) -> (u128, u128, u128, u64, i128, i128, i128) {
        let mut t = (0u128, 0u128, 0u128, 0u64, 0i128, 0i128, 0i128);
        for acct in self.accounts.values() {
            t.0 += acct.debits;
            t.1 += acct.credits;
            t.2 += acct.pending;
            t.3 += acct.pending_holds().count() as u64;
            let posted = acct.credits as i128 - acct.debits as i128;
            match acct.spec.kind {
                AccountKind::Funding => t.4 -= posted,
                AccountKind::Revenue => t.5 += posted,
                AccountKind::User => t.6 += posted,
            }
        }
        t
    }
}
