//! The test helper: a few accounts in a map, a journal and a fake sequence counter, run the way
//! the engine runs them (decide on the executing account; on `Apply`, apply the record there and
//! its leg on the counterparty `Record::leg` names; on `Err` or `Replay`, change nothing).

use std::collections::HashMap;

use tally_core::{
    audit, Account, AccountId, AccountSpec, Amount, AuditReport, Command, Counterparty, DecideCtx,
    Decision, Error, HoldId, Leg, Limits, OpId, Outcome, PostingId, Record, Request, Timestamp,
};

/// A customer.
pub const USER: AccountId = AccountId(1);
/// A second customer.
pub const USER2: AccountId = AccountId(2);
/// An app's revenue account.
pub const APP: AccountId = AccountId(10);
/// The funding account money enters through.
pub const BANK: AccountId = AccountId(100);
/// An account nobody opened.
pub const NOBODY: AccountId = AccountId(404);

/// When every world starts.
pub const T0: Timestamp = Timestamp(1_700_000_000_000);
/// The timeout of a plain `reserve`.
pub const TIMEOUT_MS: u64 = 60_000;
/// The endpoint of a plain `reserve` or `charge`.
pub const ENDPOINT: &str = "/v1/chat/completions";
/// The metadata of a plain `reserve` or `charge`.
pub const METADATA: &str = r#"{"model":"small"}"#;

/// A checked amount (panics above `Amount::MAX`: tests pass literals).
pub fn amt(value: u64) -> Amount {
    Amount::new(value).unwrap()
}

pub fn fund(from: AccountId, amount: u64) -> Command {
    Command::Fund {
        from,
        amount: amt(amount),
    }
}

/// A reserve for `APP` with the plain timeout, endpoint and metadata.
pub fn reserve(amount: u64) -> Command {
    reserve_with(APP, amount, TIMEOUT_MS, ENDPOINT, METADATA)
}

pub fn reserve_with(
    app: AccountId,
    amount: u64,
    timeout_ms: u64,
    endpoint: &str,
    metadata: &str,
) -> Command {
    Command::Reserve {
        app,
        amount: amt(amount),
        timeout_ms,
        endpoint: endpoint.to_owned(),
        metadata: metadata.to_owned(),
        token: None,
    }
}

pub fn commit(hold: HoldId, amount: u64) -> Command {
    Command::Commit {
        usage: Default::default(),
        hold,
        amount: amt(amount),
    }
}

pub fn void(hold: HoldId) -> Command {
    Command::Void { hold }
}

/// A charge for `APP` with the plain endpoint and metadata.
pub fn charge(amount: u64) -> Command {
    charge_with(APP, amount, ENDPOINT, METADATA)
}

pub fn charge_with(app: AccountId, amount: u64, endpoint: &str, metadata: &str) -> Command {
    Command::Charge {
        usage: Default::default(),
        app,
        amount: amt(amount),
        endpoint: endpoint.to_owned(),
        metadata: metadata.to_owned(),
        token: None,
    }
}

pub fn refund(posting: PostingId, amount: u64) -> Command {
    Command::Refund {
        posting,
        amount: amt(amount),
    }
}

pub fn transfer(to: AccountId, amount: u64) -> Command {
    Command::Transfer {
        to,
        amount: amt(amount),
    }
}

pub fn hold_of(outcome: Outcome) -> HoldId {
    match outcome {
        Outcome::Reserved { hold, .. } => hold,
        other => panic!("expected a hold, got {other:?}"),
    }
}

pub fn posting_of(outcome: Outcome) -> PostingId {
    match outcome {
        Outcome::Committed { posting, .. } | Outcome::Charged { posting } => posting,
        other => panic!("expected a posting, got {other:?}"),
    }
}

/// An account's balance as the tests compare it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Bal {
    /// credits_posted − debits_posted.
    pub posted: i128,
    /// debits_pending.
    pub pending: u128,
    /// posted − pending + credit limit.
    pub available: i128,
}

pub fn bal(posted: i128, pending: u128, available: i128) -> Bal {
    Bal {
        posted,
        pending,
        available,
    }
}

/// Accounts, a journal and a clock.
#[derive(Clone, Debug)]
pub struct World {
    pub accounts: HashMap<AccountId, Account>,
    /// Every record applied, with its sequence number, in order.
    pub journal: Vec<(u64, Record)>,
    /// The command of every request that made a record, by the record's sequence number.
    pub submitted: Vec<(u64, Command)>,
    pub limits: Limits,
    pub now: Timestamp,
    seq: u64,
    next_op: u128,
}

impl World {
    /// USER, USER2, APP and BANK, opened at `T0` with the default limits.
    pub fn new() -> World {
        World::with_limits(Limits::default())
    }

    /// USER, USER2, APP and BANK, opened at `T0`.
    pub fn with_limits(limits: Limits) -> World {
        let mut world = World {
            accounts: HashMap::new(),
            journal: Vec::new(),
            submitted: Vec::new(),
            limits,
            now: T0,
            seq: 0,
            next_op: 1,
        };
        world.open(USER, AccountSpec::user());
        world.open(USER2, AccountSpec::user());
        world.open(APP, AccountSpec::revenue());
        world.open(BANK, AccountSpec::funding());
        world
    }

    /// Opens (or re-opens with another spec, replacing it) an account.
    pub fn open(&mut self, id: AccountId, spec: AccountSpec) {
        let record = Account::open_record(id, spec, self.now);
        self.seq += 1;
        let account = Account::from_open_record(&record, self.seq).expect("an open record");
        self.accounts.insert(id, account);
        self.journal.push((self.seq, record));
    }

    pub fn account(&self, id: AccountId) -> &Account {
        self.accounts
            .get(&id)
            .unwrap_or_else(|| panic!("{id} is not in the world"))
    }

    pub fn bal(&self, id: AccountId) -> Bal {
        let b = self.account(id).balance();
        Bal {
            posted: b.posted,
            pending: b.debits_pending,
            available: b.available,
        }
    }

    /// The sequence number of the last record journaled.
    pub fn last_seq(&self) -> u64 {
        self.seq
    }

    pub fn advance(&mut self, ms: u64) {
        self.now = self.now.plus_ms(ms);
    }

    /// A fresh operation id.
    pub fn op(&mut self) -> OpId {
        self.next_op += 1;
        OpId(self.next_op)
    }

    /// What the engine's directory tells `decide` about the account a command names.
    pub fn ctx(&self, command: &Command) -> DecideCtx<'_> {
        self.ctx_for(None, command)
    }

    /// The context the engine gives `command` decided by `account`: the counterparty the
    /// command names, or, for a refund, a correction or a metered part, the payee of its
    /// posting or hold.
    pub fn ctx_for(&self, account: Option<AccountId>, command: &Command) -> DecideCtx<'_> {
        let leg = matches!(
            command,
            Command::Refund { .. }
                | Command::Correct { .. }
                | Command::Finish { .. }
                | Command::Progress { .. }
        );
        let named = if leg {
            account
                .and_then(|id| self.accounts.get(&id))
                .and_then(|a| a.leg_counterparty(command))
        } else {
            command.counterparty()
        };
        DecideCtx {
            caps: Default::default(),
            now: self.now,
            limits: &self.limits,
            counterparty: named
                .and_then(|id| self.accounts.get(&id))
                .map(|a| Counterparty {
                    id: a.id,
                    kind: a.spec.kind,
                }),
        }
    }

    /// Decides `request` on `account`, changing nothing.
    pub fn decide(&self, account: AccountId, request: &Request) -> Result<Decision, Error> {
        self.account(account)
            .decide(request, &self.ctx_for(Some(account), &request.command))
    }

    /// Decides `request` on `account` and, on `Apply`, journals and applies the record.
    pub fn submit(&mut self, account: AccountId, request: Request) -> Result<Decision, Error> {
        let decision = self.decide(account, &request)?;
        if let Decision::Apply { record, outcome } = &decision {
            assert_eq!(record.account, account, "a record for another account");
            assert_eq!(*outcome, record.outcome(), "the outcome is the record's");
            let seq = self.append(record.clone());
            self.submitted.push((seq, request.command));
        }
        Ok(decision)
    }

    /// Runs `command` on `account` under operation id `op`; the outcome, first or replayed.
    pub fn exec_op(
        &mut self,
        account: AccountId,
        op: OpId,
        command: Command,
    ) -> Result<Outcome, Error> {
        self.submit(
            account,
            Request {
                origin: Default::default(),
                op,
                command,
            },
        )
        .map(|decision| match decision {
            Decision::Apply { outcome, .. } | Decision::Replay { outcome, .. } => outcome,
        })
    }

    /// Runs `command` on `account` under a fresh operation id.
    pub fn exec(&mut self, account: AccountId, command: Command) -> Result<Outcome, Error> {
        let op = self.op();
        self.exec_op(account, op, command)
    }

    /// Runs `command` on `account`, which must succeed.
    pub fn ok(&mut self, account: AccountId, command: Command) -> Outcome {
        let shown = format!("{command:?} on {account}");
        self.exec(account, command)
            .unwrap_or_else(|e| panic!("{shown} failed: {e}"))
    }

    /// Runs `command` on `account`, which must fail and leave every account and the journal
    /// as they were; the error.
    pub fn reject(&mut self, account: AccountId, command: Command) -> Error {
        let accounts = self.accounts.clone();
        let journal_len = self.journal.len();
        let shown = format!("{command:?} on {account}");
        let error = match self.exec(account, command) {
            Err(error) => error,
            Ok(outcome) => panic!("{shown} succeeded: {outcome:?}"),
        };
        assert_eq!(
            self.accounts, accounts,
            "the rejected {shown} changed an account"
        );
        assert_eq!(
            self.journal.len(),
            journal_len,
            "the rejected {shown} was journaled"
        );
        error
    }

    /// Journals `record` with the next sequence number, applies it to its account and its leg to
    /// the counterparty; the sequence number.
    pub fn append(&mut self, record: Record) -> u64 {
        self.seq += 1;
        let seq = self.seq;
        apply_record(&mut self.accounts, &record, seq, &self.limits);
        self.journal.push((seq, record));
        seq
    }

    /// Expires every hold of `account` whose deadline has passed, as the engine's timer does;
    /// the outcomes.
    pub fn expire_due(&mut self, account: AccountId) -> Vec<Outcome> {
        let due: Vec<HoldId> = self.account(account).due_holds(self.now).collect();
        due.into_iter()
            .map(|hold| {
                let record = self
                    .account(account)
                    .expire_record(hold.seq, self.now)
                    .expect("a due hold has an expiry record");
                let outcome = record.outcome();
                self.append(record);
                outcome
            })
            .collect()
    }

    /// Runs the grant records due for `account` now, as the engine's timer does (expired
    /// grants swept back, the allowance's period issued); the outcomes.
    pub fn grant_timers(&mut self, account: AccountId) -> Vec<Outcome> {
        let mut outcomes = Vec::new();
        while let Some(record) = self.account(account).grant_timer_record(self.now) {
            outcomes.push(record.outcome());
            self.append(record);
            assert!(outcomes.len() < 1_000, "grant timers never settle");
        }
        outcomes
    }

    /// The accounts rebuilt from the journal alone, as recovery does.
    pub fn recover(&self) -> HashMap<AccountId, Account> {
        let mut accounts = HashMap::new();
        for (seq, record) in &self.journal {
            match Account::from_open_record(record, *seq) {
                Some(account) => {
                    accounts.insert(record.account, account);
                }
                None => apply_record(&mut accounts, record, *seq, &self.limits),
            }
        }
        accounts
    }

    pub fn audit(&self) -> AuditReport {
        audit(self.accounts.values())
    }

    pub fn fund(&mut self, account: AccountId, amount: u64) {
        assert_eq!(self.ok(account, fund(BANK, amount)), Outcome::Funded);
    }

    /// A plain reserve on `account`; the hold.
    pub fn reserve(&mut self, account: AccountId, amount: u64) -> HoldId {
        hold_of(self.ok(account, reserve(amount)))
    }

    /// A reserve with a timeout on `account`; the hold.
    pub fn reserve_for(&mut self, account: AccountId, amount: u64, timeout_ms: u64) -> HoldId {
        let command = reserve_with(APP, amount, timeout_ms, ENDPOINT, METADATA);
        hold_of(self.ok(account, command))
    }

    /// Commits `amount` of `hold`; the posting.
    pub fn commit(&mut self, hold: HoldId, amount: u64) -> PostingId {
        posting_of(self.ok(hold.account, commit(hold, amount)))
    }

    /// A plain charge on `account`; the posting.
    pub fn charge(&mut self, account: AccountId, amount: u64) -> PostingId {
        posting_of(self.ok(account, charge(amount)))
    }
}

/// Applies `record` to its account and its leg, if any, to the counterparty.
pub fn apply_record(
    accounts: &mut HashMap<AccountId, Account>,
    record: &Record,
    seq: u64,
    limits: &Limits,
) {
    accounts
        .get_mut(&record.account)
        .unwrap_or_else(|| panic!("a record of unknown {}", record.account))
        .apply(record, seq, limits);
    if let Some(Leg::Credit(other, _) | Leg::Debit(other, _)) = record.leg() {
        accounts
            .get_mut(&other)
            .unwrap_or_else(|| panic!("a leg for unknown {other}"))
            .apply_leg(record, seq);
    }
}

/// A history that touches every operation and every account: funding, holds committed in full
/// and in part, voided and expired, charges, refunds in parts, transfers and a payout.
pub fn mixed_history(w: &mut World) {
    w.fund(USER, 10_000);
    w.fund(USER2, 3_000);
    w.ok(APP, fund(BANK, 50));
    let full = w.reserve(USER, 1_000);
    w.commit(full, 1_000);
    let part = w.reserve(USER, 800);
    let posting = w.commit(part, 300);
    w.ok(USER, refund(posting, 100));
    let voided = w.reserve(USER2, 500);
    w.ok(USER2, void(voided));
    w.reserve_for(USER, 200, 5_000);
    w.advance(5_000);
    assert_eq!(w.expire_due(USER).len(), 1);
    let charged = w.charge(USER2, 700);
    w.ok(USER2, refund(charged, 200));
    w.ok(USER2, refund(charged, 500));
    w.ok(USER, transfer(USER2, 1_500));
    w.ok(APP, transfer(USER, 400));
    w.reserve(USER, 250);
    w.reserve(USER2, 125);
    w.advance(1_000);
}
