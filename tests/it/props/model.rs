//! Invariant 7, model equivalence: random sequential histories of every operation (valid and
//! invalid, retries with the same id and the same or other content, expiry by moving the clock)
//! give the same answer from the engine as from the reference ledger, call by call: the same
//! value or the exact same error. After every step every account's state (as its store would
//! rebuild it: balance, holds, postings, remembered ids) equals the model's, the engine's audit
//! agrees with the model's totals, and the invariants hold by our own sums.
//!
//! The engine runs on a `MemStore` with a `ManualClock`, on a current-thread runtime made once
//! per case. Shrinking drops steps and simplifies amounts, so a failure is reported as a short
//! history.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use proptest::prelude::*;
use proptest::sample::select;
use proptest::strategy::Union;
use proptest_state_machine::{prop_state_machine, ReferenceStateMachine, StateMachineTest};
use tally::{
    AccountFlags, AccountId, AccountSpec, Amount, EngineConfig, HoldId, ManualClock, MemStore,
    OpId, PostingId, Store, Tally, Timestamp,
};

use super::calls::{write_to, Answer, Res, View, Write};
use super::reference::Ledger;

pub const BANK: AccountId = AccountId(1);
pub const APP: AccountId = AccountId(2);
pub const APP2: AccountId = AccountId(3);
pub const ALICE: AccountId = AccountId(10);
/// A user with a credit limit of 1,000.
pub const BOB: AccountId = AccountId(11);
/// A user that may overdraw.
pub const CAROL: AccountId = AccountId(12);
/// Not opened at first; `Open` steps may open them with any spec.
pub const LATER: [AccountId; 2] = [AccountId(20), AccountId(21)];
pub const ALL: [AccountId; 8] = [BANK, APP, APP2, ALICE, BOB, CAROL, LATER[0], LATER[1]];
pub const USERS: [AccountId; 3] = [ALICE, BOB, CAROL];
pub const START: Timestamp = Timestamp(1_700_000_000_000);

/// How the recovery test closes an engine before reopening it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Close {
    /// Drop everything at once (the runtime too): a `kill -9`.
    Crash,
    /// `Tally::shutdown`: drain, snapshot, stop.
    Shutdown,
}

/// One step of a history.
#[derive(Clone, Debug)]
pub enum Step {
    Open(AccountId, AccountSpec),
    Write(OpId, Write),
    /// A step that names a hold or a posting the history made.
    Named(Named),
    Check(AccountId, Option<u64>),
    Balance(AccountId),
    GetHold(HoldId),
    FindOp(AccountId, OpId),
    /// Read the whole account.
    Inspect(AccountId),
    /// Move the clock.
    Advance(u64),
    ExpireDue,
    /// Recovery only: close the engine and reopen it on the same store; with a crash, possibly
    /// with one write step in flight, sent `turns` scheduler turns before the crash.
    Reopen {
        close: Close,
        inflight: Option<(Box<Step>, u8)>,
    },
}

/// A commit, void, refund or read of a hold or posting named by its place in the history, not by
/// its id: when shrinking drops an earlier step, the ids of the holds and postings made after it
/// change, but "the latest one" still exists.
#[derive(Clone, Debug)]
pub enum Named {
    Commit(OpId, Pick, Share),
    Void(OpId, Pick),
    /// Extend by a share of what the hold holds now, with a timeout (0: keep the deadline).
    Extend(OpId, Pick, Share, u64),
    /// Settle a share of what the hold still holds.
    Settle(OpId, Pick, Share),
    Refund(OpId, Pick, Share),
    GetHold(Pick),
}

/// The hold (or posting) made n-th most recently (0: the latest), counted modulo how many there
/// are; or one of a few that do not exist. Counting back from the latest keeps the name pointing
/// at the same hold when shrinking drops an earlier step.
#[derive(Clone, Copy, Debug)]
pub enum Pick {
    Made(usize),
    Unknown(u8),
}

impl Pick {
    /// The index in a list of `len` things made, oldest first.
    fn index(n: usize, len: usize) -> usize {
        len - 1 - n % len
    }
}

/// An amount relative to a base (what a hold holds, what remains refundable of a posting).
#[derive(Clone, Copy, Debug)]
pub enum Share {
    All,
    Percent(u8),
    OneMore,
    Zero,
    Max,
}

impl Share {
    fn of(self, base: u64) -> u64 {
        match self {
            Share::All => base,
            Share::Percent(p) => {
                u64::try_from(u128::from(base) * u128::from(p) / 100).map_or(base, |v| v.max(1))
            }
            Share::OneMore => base.saturating_add(1),
            Share::Zero => 0,
            Share::Max => u64::MAX,
        }
    }
}

const UNKNOWN_HOLDS: [HoldId; 3] = [
    HoldId {
        account: ALICE,
        seq: 999,
    },
    HoldId {
        account: LATER[0],
        seq: 1,
    },
    HoldId {
        account: APP,
        seq: 1,
    },
];

const UNKNOWN_POSTINGS: [PostingId; 3] = [
    PostingId {
        account: BOB,
        seq: 999,
    },
    PostingId {
        account: LATER[1],
        seq: 1,
    },
    PostingId {
        account: BANK,
        seq: 1,
    },
];

pub fn overdraw_user() -> AccountSpec {
    AccountSpec {
        flags: AccountFlags { may_overdraw: true },
        ..AccountSpec::user()
    }
}

fn credit(value: u64) -> Amount {
    Amount::new(value).expect("a small amount")
}

/// The world every history starts from.
pub fn setup() -> Vec<Step> {
    vec![
        Step::Open(BANK, AccountSpec::funding()),
        Step::Open(APP, AccountSpec::revenue()),
        Step::Open(APP2, AccountSpec::revenue()),
        Step::Open(ALICE, AccountSpec::user()),
        Step::Open(BOB, AccountSpec::user().with_credit_limit(credit(1_000))),
        Step::Open(CAROL, overdraw_user()),
        Step::Write(
            OpId(1),
            Write::Fund {
                account: ALICE,
                from: BANK,
                amount: 10_000,
            },
        ),
        Step::Write(
            OpId(2),
            Write::Fund {
                account: BOB,
                from: BANK,
                amount: 2_000,
            },
        ),
    ]
}

/// The model's state: the reference ledger, plus what the step generator draws ids from.
#[derive(Clone)]
pub struct RefState {
    pub ledger: Ledger,
    /// Every write issued (for retries), in order.
    pub issued: Vec<(OpId, Write)>,
    /// Every hold made, with its amount.
    pub holds: Vec<(HoldId, u64)>,
    /// Every posting made, with its amount.
    pub postings: Vec<(PostingId, u64)>,
    pub next_op: u128,
    /// The last step as the engine must run it (names resolved to ids) ...
    pub last_step: Option<Step>,
    /// ... and the answer it must give.
    pub last: Option<Res>,
    /// Recovery mode: moving the clock reads every account at once, so expiry never waits for
    /// a timer (whose real-time firing would make the point of expiry nondeterministic).
    pub settle_on_advance: bool,
}

impl fmt::Debug for RefState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The initial state is always the `setup()` world: say so instead of printing it.
        write!(
            f,
            "RefState {{ now: {}, accounts: {:?}, ops issued: {} }}",
            self.ledger.now,
            self.ledger.accounts.keys().collect::<Vec<_>>(),
            self.issued.len()
        )
    }
}

impl RefState {
    /// The `setup()` world.
    pub fn new(settle_on_advance: bool) -> RefState {
        let mut state = RefState::empty(settle_on_advance);
        for step in setup() {
            let result = state.apply(&step);
            assert!(result.is_ok(), "setup: {step:?}: {result:?}");
        }
        state
    }

    /// No accounts yet.
    pub fn empty(settle_on_advance: bool) -> RefState {
        RefState {
            ledger: Ledger::new(super::small_limits(), START),
            issued: Vec::new(),
            holds: Vec::new(),
            postings: Vec::new(),
            next_op: 1,
            last_step: None,
            last: None,
            settle_on_advance,
        }
    }

    /// The hold `pick` names, with its amount.
    fn hold(&self, pick: Pick) -> (HoldId, u64) {
        match pick {
            Pick::Made(n) if !self.holds.is_empty() => self.holds[Pick::index(n, self.holds.len())],
            Pick::Made(_) => (UNKNOWN_HOLDS[0], 100),
            Pick::Unknown(k) => (UNKNOWN_HOLDS[usize::from(k) % UNKNOWN_HOLDS.len()], 100),
        }
    }

    /// The hold `pick` names, with what it still holds (as far as the model knows; its
    /// reserved amount when the model does not know it).
    fn held_now(&self, pick: Pick) -> (HoldId, u64) {
        let (id, amount) = self.hold(pick);
        let held = self
            .ledger
            .accounts
            .get(&id.account)
            .and_then(|a| a.holds.get(&id.seq))
            .map_or(amount, |h| h.amount.get() - h.amount_posted.get());
        (id, held)
    }

    /// The posting `pick` names, with what remains refundable of it (as far as the model knows).
    fn posting(&self, pick: Pick) -> (PostingId, u64) {
        let (id, amount) = match pick {
            Pick::Made(n) if !self.postings.is_empty() => {
                self.postings[Pick::index(n, self.postings.len())]
            }
            Pick::Made(_) => (UNKNOWN_POSTINGS[0], 100),
            Pick::Unknown(k) => (
                UNKNOWN_POSTINGS[usize::from(k) % UNKNOWN_POSTINGS.len()],
                100,
            ),
        };
        let refundable = self
            .ledger
            .accounts
            .get(&id.account)
            .and_then(|a| a.postings.get(&id.seq))
            .map_or(amount, |p| p.amount.get() - p.amount_refunded.get());
        (id, refundable)
    }

    /// The step with every name resolved to an id, as the engine runs it.
    pub fn resolve(&self, step: &Step) -> Step {
        let Step::Named(named) = step else {
            return step.clone();
        };
        match *named {
            Named::Commit(op, pick, share) => {
                let (hold, held) = self.hold(pick);
                Step::Write(
                    op,
                    Write::Commit {
                        hold,
                        amount: share.of(held),
                    },
                )
            }
            Named::Void(op, pick) => Step::Write(
                op,
                Write::Void {
                    hold: self.hold(pick).0,
                },
            ),
            Named::Extend(op, pick, share, timeout_ms) => {
                let (hold, held) = self.held_now(pick);
                Step::Write(
                    op,
                    Write::Extend {
                        hold,
                        amount: share.of(held),
                        timeout_ms,
                    },
                )
            }
            Named::Settle(op, pick, share) => {
                let (hold, held) = self.held_now(pick);
                Step::Write(
                    op,
                    Write::Settle {
                        hold,
                        amount: share.of(held),
                    },
                )
            }
            Named::Refund(op, pick, share) => {
                let (posting, refundable) = self.posting(pick);
                Step::Write(
                    op,
                    Write::Refund {
                        posting,
                        amount: share.of(refundable),
                    },
                )
            }
            Named::GetHold(pick) => Step::GetHold(self.hold(pick).0),
        }
    }

    /// Applies a step to the model; returns what the engine must answer.
    pub fn apply(&mut self, step: &Step) -> Res {
        let step = &self.resolve(step);
        self.last_step = Some(step.clone());
        let ledger = &mut self.ledger;
        let result = match step {
            Step::Open(id, spec) => ledger.open(*id, *spec),
            Step::Write(op, write) => {
                self.issued.push((*op, write.clone()));
                self.next_op = self.next_op.max(op.0 + 1);
                let result = ledger.write(*op, write);
                let amount = match write {
                    Write::Reserve { amount, .. } => *amount,
                    _ => 0,
                };
                match &result {
                    Ok(Answer::Held(hold)) if !self.holds.iter().any(|(h, _)| h == hold) => {
                        self.holds.push((*hold, amount));
                    }
                    Ok(Answer::Committed(c))
                        if !self.postings.iter().any(|(p, _)| *p == c.posting) =>
                    {
                        self.postings.push((c.posting, c.amount_posted.get()));
                    }
                    Ok(Answer::Settled(c))
                        if !self.postings.iter().any(|(p, _)| *p == c.posting) =>
                    {
                        self.postings.push((c.posting, c.amount_posted.get()));
                    }
                    Ok(Answer::Posted(posting))
                        if !self.postings.iter().any(|(p, _)| p == posting) =>
                    {
                        let amount = match write {
                            Write::Charge { amount, .. } => *amount,
                            _ => 0,
                        };
                        self.postings.push((*posting, amount));
                    }
                    _ => {}
                }
                result
            }
            Step::Check(id, minimum) => ledger.check(*id, *minimum),
            Step::Balance(id) => ledger.balance(*id),
            Step::GetHold(hold) => ledger.get_hold(*hold),
            Step::FindOp(id, op) => ledger.find_op(*id, *op),
            Step::Inspect(id) => ledger.inspect(*id),
            Step::Advance(ms) => {
                ledger.advance(*ms);
                if self.settle_on_advance {
                    ledger.expire_all();
                }
                Ok(Answer::Done)
            }
            Step::ExpireDue => Ok(Answer::Expired(ledger.expire_all())),
            // Generation only: the recovery test learns from the engine whether an in-flight
            // write landed; for drawing the next steps, assume it did not.
            Step::Reopen { inflight, .. } => {
                if let Some((step, _)) = inflight {
                    if let Step::Write(op, _) = self.resolve(step) {
                        self.next_op = self.next_op.max(op.0 + 1);
                    }
                }
                Ok(Answer::Done)
            }
            Step::Named(_) => unreachable!("resolved above"),
        };
        self.last = Some(result.clone());
        result
    }
}

/// Amounts: mostly small (so funds run out), sometimes zero or past the per-operation maximum.
fn amount() -> BoxedStrategy<u64> {
    prop_oneof![
        24 => 1..=3_000u64,
        1 => Just(0u64),
        1 => Just(u64::MAX),
        1 => Just(super::reference::AMOUNT_MAX),
        1 => Just(super::reference::AMOUNT_MAX + 1),
    ]
    .boxed()
}

/// An amount relative to a base: all of it, part of it, one more, zero or `u64::MAX`.
fn share() -> BoxedStrategy<Share> {
    prop_oneof![
        4 => Just(Share::All),
        4 => (1..=99u8).prop_map(Share::Percent),
        1 => Just(Share::OneMore),
        1 => Just(Share::Zero),
        1 => Just(Share::Max),
    ]
    .boxed()
}

fn user() -> BoxedStrategy<AccountId> {
    prop_oneof![20 => select(USERS.to_vec()), 1 => select(ALL.to_vec())].boxed()
}

fn app() -> BoxedStrategy<AccountId> {
    prop_oneof![20 => select(vec![APP, APP2]), 1 => select(ALL.to_vec())].boxed()
}

fn any_account() -> BoxedStrategy<AccountId> {
    select(ALL.to_vec()).boxed()
}

fn spec() -> BoxedStrategy<AccountSpec> {
    select(vec![
        AccountSpec::user(),
        AccountSpec::user().with_credit_limit(credit(1_000)),
        overdraw_user(),
        AccountSpec::revenue(),
        AccountSpec::funding(),
    ])
    .boxed()
}

fn timeout_ms() -> BoxedStrategy<u64> {
    let limits = super::small_limits();
    let (min, max) = (limits.hold_timeout_ms_min, limits.hold_timeout_ms_max);
    prop_oneof![
        6 => Just(min),
        6 => min..=10 * min,
        3 => Just(3_600_000u64),
        1 => Just(max),
        1 => Just(min - 1),
        1 => Just(0u64),
        1 => Just(max + 1),
        1 => Just(u64::MAX),
    ]
    .boxed()
}

/// Text fields: empty, short, exactly at the limit, one byte past it.
fn text(max: usize) -> BoxedStrategy<String> {
    prop_oneof![
        8 => Just(String::new()),
        3 => Just("/chat".to_owned()),
        1 => Just("x".repeat(max)),
        1 => Just("x".repeat(max + 1)),
    ]
    .boxed()
}

/// Picks one of `made` holds or postings (by recency): mostly one of `preferred`, sometimes
/// any, sometimes one that does not exist.
fn pick(made: usize, preferred: Vec<usize>) -> BoxedStrategy<Pick> {
    let mut choices = vec![(1, (0..3u8).prop_map(Pick::Unknown).boxed())];
    if made > 0 {
        choices.push((3, (0..made).prop_map(Pick::Made).boxed()));
    }
    if !preferred.is_empty() {
        choices.push((8, select(preferred).prop_map(Pick::Made).boxed()));
    }
    Union::new_weighted(choices).boxed()
}

/// A hold to name: mostly a pending one.
fn pick_hold(s: &RefState) -> BoxedStrategy<Pick> {
    let pending = (0..s.holds.len())
        .filter(|n| {
            let id = s.hold(Pick::Made(*n)).0;
            s.ledger
                .accounts
                .get(&id.account)
                .and_then(|a| a.holds.get(&id.seq))
                .is_some_and(|h| h.status == tally::HoldStatus::Pending)
        })
        .collect();
    pick(s.holds.len(), pending)
}

/// A posting to name: mostly one with something left to refund.
fn pick_posting(s: &RefState) -> BoxedStrategy<Pick> {
    let open = (0..s.postings.len())
        .filter(|n| s.posting(Pick::Made(*n)).1 > 0)
        .collect();
    pick(s.postings.len(), open)
}

/// A fund, reserve, charge or transfer: requests that name no hold or posting.
fn plain_write() -> BoxedStrategy<Write> {
    let limits = super::small_limits();
    let fund = (
        user(),
        prop_oneof![12 => Just(BANK), 1 => any_account()],
        amount(),
    )
        .prop_map(|(account, from, amount)| Write::Fund {
            account,
            from,
            amount,
        })
        .boxed();
    let reserve = (
        user(),
        app(),
        amount(),
        timeout_ms(),
        text(limits.endpoint_bytes_max),
        text(limits.metadata_bytes_max),
    )
        .prop_map(
            |(account, app, amount, timeout_ms, endpoint, metadata)| Write::Reserve {
                account,
                app,
                amount,
                timeout_ms,
                endpoint,
                metadata,
            },
        )
        .boxed();
    let charge = (user(), app(), amount(), text(limits.endpoint_bytes_max))
        .prop_map(|(account, app, amount, endpoint)| Write::Charge {
            account,
            app,
            amount,
            endpoint,
        })
        .boxed();
    let transfer = (
        prop_oneof![8 => user(), 1 => select(vec![APP, BANK])],
        prop_oneof![8 => user(), 1 => any_account()],
        amount(),
    )
        .prop_map(|(from, to, amount)| Write::Transfer { from, to, amount })
        .boxed();
    Union::new_weighted(vec![(5, fund), (10, reserve), (5, charge), (3, transfer)]).boxed()
}

/// A write step of any kind, with a fresh operation id or (rarely) one used before, with
/// whatever content: a conflict, or a retry.
pub fn write_step(s: &RefState) -> BoxedStrategy<Step> {
    let fresh = OpId(s.next_op);
    let used: Vec<OpId> = s.issued.iter().map(|(op, _)| *op).collect();
    let op = || prop_oneof![10 => Just(fresh), 1 => select(used.clone())];
    let plain = (op(), plain_write())
        .prop_map(|(op, w)| Step::Write(op, w))
        .boxed();
    let commit = (op(), pick_hold(s), share())
        .prop_map(|(op, pick, share)| Step::Named(Named::Commit(op, pick, share)))
        .boxed();
    let void = (op(), pick_hold(s))
        .prop_map(|(op, pick)| Step::Named(Named::Void(op, pick)))
        .boxed();
    let refund = (op(), pick_posting(s), share())
        .prop_map(|(op, pick, share)| Step::Named(Named::Refund(op, pick, share)))
        .boxed();
    let extend = (
        op(),
        pick_hold(s),
        share(),
        prop_oneof![3 => Just(0u64), 1 => timeout_ms()],
    )
        .prop_map(|(op, pick, share, timeout_ms)| {
            Step::Named(Named::Extend(op, pick, share, timeout_ms))
        })
        .boxed();
    let settle = (op(), pick_hold(s), share())
        .prop_map(|(op, pick, share)| Step::Named(Named::Settle(op, pick, share)))
        .boxed();
    Union::new_weighted(vec![
        (23, plain),
        (8, commit),
        (3, void),
        (5, refund),
        (3, extend),
        (4, settle),
    ])
    .boxed()
}

/// A step of a sequential history.
pub fn step(s: &RefState) -> BoxedStrategy<Step> {
    let used: Vec<OpId> = s.issued.iter().map(|(op, _)| *op).collect();
    let steps: Vec<(u32, BoxedStrategy<Step>)> = vec![
        (39, write_step(s)),
        // A retry of an earlier request: the same id, the same content.
        (
            5,
            select(s.issued.clone())
                .prop_map(|(op, w)| Step::Write(op, w))
                .boxed(),
        ),
        (
            2,
            (any_account(), spec())
                .prop_map(|(id, spec)| Step::Open(id, spec))
                .boxed(),
        ),
        (
            3,
            (
                user(),
                prop_oneof![
                    Just(None),
                    Just(Some(0u64)),
                    Just(Some(100u64)),
                    (1..=20_000u64).prop_map(Some),
                    Just(Some(u64::MAX)),
                ],
            )
                .prop_map(|(id, minimum)| Step::Check(id, minimum))
                .boxed(),
        ),
        (2, any_account().prop_map(Step::Balance).boxed()),
        (
            2,
            pick_hold(s)
                .prop_map(|pick| Step::Named(Named::GetHold(pick)))
                .boxed(),
        ),
        (
            1,
            (user(), select(used))
                .prop_map(|(id, op)| Step::FindOp(id, op))
                .boxed(),
        ),
        (2, any_account().prop_map(Step::Inspect).boxed()),
        (
            4,
            prop_oneof![
                3 => 1..=2_000u64,
                2 => 59_000..=61_000u64,
                2 => 60_000..=700_000u64,
                1 => Just(3_600_000u64),
            ]
            .prop_map(Step::Advance)
            .boxed(),
        ),
        (1, Just(Step::ExpireDue).boxed()),
    ];
    Union::new_weighted(steps).boxed()
}

/// The `setup()` world.
pub fn initial(settle_on_advance: bool) -> BoxedStrategy<RefState> {
    Just(RefState::new(settle_on_advance)).boxed()
}

/// The engine's configuration in these tests: the small limits, the manual clock, and no
/// passivation (an idle account keeps its actor, as the model assumes for `expire_due`).
pub fn engine_config(clock: &ManualClock) -> EngineConfig {
    EngineConfig {
        limits: super::small_limits(),
        clock: Arc::new(clock.clone()),
        idle_passivate_after: Duration::from_secs(10 * 365 * 24 * 3_600),
        ..EngineConfig::default()
    }
}

/// Runs a step on the engine (not `Reopen`, which the recovery test handles). `ledger` is the
/// model after the step: it says which sequence numbers and ids an `Inspect` probes.
pub async fn run(
    tally: &Tally,
    clock: &ManualClock,
    step: &Step,
    ledger: &Ledger,
    settle: bool,
) -> Res {
    match step {
        Step::Open(id, spec) => tally.open_account(*id, *spec).await.map(|()| Answer::Done),
        Step::Write(op, w) => write_to(tally, *op, w).await,
        Step::Check(id, minimum) => tally.check(*id, *minimum).await.map(Answer::Check),
        Step::Balance(id) => tally.balance(*id).await.map(Answer::Balance),
        Step::GetHold(hold) => tally
            .get_hold(*hold)
            .await
            .map(|h| Answer::Hold(Box::new(h))),
        Step::FindOp(id, op) => tally.find_op(*id, *op).await.map(Answer::Op),
        Step::Inspect(id) => {
            let account = tally.account(*id).await?;
            let probe = ledger.accounts.get(id).expect("the model knows it too");
            Ok(Answer::View(Box::new(View::of(&account, probe))))
        }
        Step::Advance(ms) => {
            clock.advance(*ms);
            if settle {
                for id in ledger.accounts.keys() {
                    tally.balance(*id).await?;
                }
            }
            Ok(Answer::Done)
        }
        Step::ExpireDue => tally.expire_due().await.map(Answer::Expired),
        Step::Named(_) => unreachable!("the model resolves names before the engine runs a step"),
        Step::Reopen { .. } => unreachable!("the recovery test reopens engines itself"),
    }
}

/// The store's view of every account the model knows equals the model's (no expiry: a store
/// read is not an access), and the invariants hold on it.
pub fn assert_store_matches(store: &dyn Store, ledger: &Ledger) {
    let mut accounts = Vec::new();
    for (id, probe) in &ledger.accounts {
        let account = store
            .load(*id)
            .expect("the store reads")
            .unwrap_or_else(|| panic!("the store lost {id:?}"));
        assert_eq!(
            View::of(&account, probe),
            ledger.view_of(*id).expect("known"),
            "the store's {id:?} differs from the model"
        );
        accounts.push(account);
    }
    let seq_max = ledger
        .accounts
        .values()
        .map(|a| a.next_seq)
        .max()
        .unwrap_or(0);
    super::assert_invariants(&accounts, seq_max);
}

/// The engine's audit agrees with the model's totals.
pub async fn assert_audit_matches(tally: &Tally, ledger: &Ledger) {
    let report = tally.audit().await.expect("audit");
    assert!(report.ok(), "audit: {report:?}");
    let (debits, credits, pending, holds_pending, funded, revenue, users) = ledger.totals();
    assert_eq!(
        (
            report.accounts,
            report.debits_posted,
            report.credits_posted,
            report.debits_pending,
            report.holds_pending,
            report.funded,
            report.revenue,
            report.user_balances
        ),
        (
            ledger.accounts.len() as u64,
            debits,
            credits,
            pending,
            holds_pending,
            funded,
            revenue,
            users
        ),
        "audit totals differ from the model's"
    );
    assert_eq!(funded, revenue + users, "funding − revenue − balances ≠ 0");
}

/// A current-thread runtime (with the timers the actors use).
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime")
}

/// The engine under test: a `Tally` on a `MemStore`, driven one call at a time.
pub struct Engine {
    rt: tokio::runtime::Runtime,
    tally: Option<Tally>,
    store: MemStore,
    clock: ManualClock,
}

impl Engine {
    fn tally(&self) -> &Tally {
        self.tally.as_ref().expect("open")
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        if let Some(tally) = self.tally.take() {
            self.rt.block_on(async move { drop(tally) });
        }
    }
}

pub struct ModelRef;

impl ReferenceStateMachine for ModelRef {
    type State = RefState;
    type Transition = Step;

    fn init_state() -> BoxedStrategy<RefState> {
        initial(false)
    }

    fn transitions(state: &RefState) -> BoxedStrategy<Step> {
        step(state)
    }

    fn apply(mut state: RefState, step: &Step) -> RefState {
        let _ = state.apply(step);
        state
    }
}

pub struct ModelTest;

impl StateMachineTest for ModelTest {
    type SystemUnderTest = Engine;
    type Reference = ModelRef;

    fn init_test(_state: &RefState) -> Engine {
        let rt = runtime();
        let clock = ManualClock::new(START);
        let store = MemStore::new(super::small_limits());
        let tally = rt.block_on(async {
            let config = engine_config(&clock);
            let tally = Tally::open(Arc::new(store.clone()), config)
                .await
                .expect("open");
            let mut model = RefState::empty(false);
            for step in setup() {
                let expected = model.apply(&step);
                let got = run(&tally, &clock, &step, &model.ledger, false).await;
                assert_eq!(got, expected, "setup: {step:?}");
            }
            tally
        });
        Engine {
            rt,
            tally: Some(tally),
            store,
            clock,
        }
    }

    fn apply(engine: Engine, state: &RefState, _: Step) -> Engine {
        let step = state.last_step.clone().expect("the model ran the step");
        let expected = state.last.clone().expect("the model ran the step");
        let got = engine.rt.block_on(run(
            engine.tally(),
            &engine.clock,
            &step,
            &state.ledger,
            false,
        ));
        assert_eq!(got, expected, "the engine and the model differ at {step:?}");
        engine
    }

    fn check_invariants(engine: &Engine, state: &RefState) {
        assert_store_matches(&engine.store, &state.ledger);
        engine
            .rt
            .block_on(assert_audit_matches(engine.tally(), &state.ledger));
    }

    fn teardown(engine: Engine, mut state: RefState) {
        // Read every account live (the engine's state, not its store's), as of the end.
        for id in ALL {
            let step = Step::Inspect(id);
            let expected = state.apply(&step);
            let got = engine.rt.block_on(run(
                engine.tally(),
                &engine.clock,
                &step,
                &state.ledger,
                false,
            ));
            assert_eq!(got, expected, "at the end, {id:?} differs");
        }
        super::case_passed("the_engine_equals_the_model_on_any_sequential_history");
    }
}

prop_state_machine! {
    #![proptest_config(super::config())]

    /// Any sequential history gives the engine's answers and state exactly as the model's.
    #[test]
    fn the_engine_equals_the_model_on_any_sequential_history(sequential 1..100 => ModelTest);
}
