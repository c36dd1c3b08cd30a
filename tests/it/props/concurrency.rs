//! Invariants 1 to 5 under concurrency: many tasks on a multi-thread runtime hammer few
//! accounts. Every acknowledged answer is recorded; afterwards the books must be exactly what
//! the acknowledged operations say (and nothing else happened), no account that may not
//! overdraw was ever seen below zero, every hold resolved exactly once and as acknowledged,
//! refunds stayed within their postings, and replaying every acknowledged request returns the
//! same answer and changes nothing.
//!
//! The second property sets up the classic races, each on its own account: two commits of one
//! hold, a commit and a void, a commit and the expiry (the clock moved from another task), two
//! refunds of one posting, two reserves for the last funds.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use proptest::prelude::*;
use tally::{
    AccountId, AccountSpec, Amount, Error, HoldId, HoldStatus, LedgerError, ManualClock, MemStore,
    OpId, PostingId, Tally,
};

use super::calls::{write_to, Answer, Write};
use super::model::{engine_config, START};

const BANK: AccountId = AccountId(1);
const APP: AccountId = AccountId(2);
const USERS: [AccountId; 2] = [AccountId(10), AccountId(11)];
/// Longest hold timeout here; the clock moves at most this much plus a little in a case.
const TIMEOUT_MS_MAX: u64 = 600_000;

/// What one task does, one action after another.
#[derive(Clone, Debug)]
enum Action {
    Charge {
        user: usize,
        amount: u64,
    },
    /// Reserve, then commit `commit` (possibly more than held).
    ReserveCommit {
        user: usize,
        amount: u64,
        commit: u64,
    },
    ReserveVoid {
        user: usize,
        amount: u64,
    },
    /// Reserve and leave the hold to the other tasks (shared commits and voids) or to expiry.
    Reserve {
        user: usize,
        amount: u64,
        timeout_ms: u64,
    },
    /// Commit or void a hold some task made (racing its owner and each other).
    CommitShared {
        pick: usize,
        amount: u64,
    },
    VoidShared {
        pick: usize,
    },
    /// Refund part of a posting some task made (racing other refunds of it).
    RefundShared {
        pick: usize,
        amount: u64,
    },
    Transfer {
        from: usize,
        to: usize,
        amount: u64,
    },
    Fund {
        user: usize,
        amount: u64,
    },
    /// Move the clock and expire what is due.
    Advance {
        ms: u64,
    },
    /// Retry one of this task's acknowledged requests.
    Replay {
        pick: usize,
    },
}

fn action() -> impl Strategy<Value = Action> {
    let user = 0..USERS.len();
    let amount = 1..=1_500u64;
    prop_oneof![
        4 => (user.clone(), amount.clone()).prop_map(|(user, amount)| Action::Charge { user, amount }),
        4 => (user.clone(), amount.clone(), 1..=1_700u64)
            .prop_map(|(user, amount, commit)| Action::ReserveCommit { user, amount, commit }),
        2 => (user.clone(), amount.clone()).prop_map(|(user, amount)| Action::ReserveVoid { user, amount }),
        3 => (user.clone(), amount.clone(), 1..=TIMEOUT_MS_MAX)
            .prop_map(|(user, amount, timeout_ms)| Action::Reserve { user, amount, timeout_ms }),
        3 => (any::<usize>(), 1..=1_500u64).prop_map(|(pick, amount)| Action::CommitShared { pick, amount }),
        2 => any::<usize>().prop_map(|pick| Action::VoidShared { pick }),
        3 => (any::<usize>(), 1..=800u64).prop_map(|(pick, amount)| Action::RefundShared { pick, amount }),
        2 => (user.clone(), user.clone(), amount.clone())
            .prop_map(|(from, to, amount)| Action::Transfer { from, to, amount }),
        1 => (user, 1..=3_000u64).prop_map(|(user, amount)| Action::Fund { user, amount }),
        1 => (1..=TIMEOUT_MS_MAX / 4).prop_map(|ms| Action::Advance { ms }),
        2 => any::<usize>().prop_map(|pick| Action::Replay { pick }),
    ]
}

#[derive(Clone, Debug)]
struct Workload {
    workers: usize,
    funds: [u64; 2],
    credit_limit: u64,
    /// Passivate accounts idle for a minute (of the manual clock, which `Advance` moves), so
    /// accounts leave memory and come back while other tasks use them.
    passivation: bool,
    tasks: Vec<Vec<Action>>,
}

fn workload() -> impl Strategy<Value = Workload> {
    (
        2..=4usize,
        [0..=6_000u64, 0..=6_000u64],
        prop_oneof![Just(0u64), 1..=2_000u64],
        any::<bool>(),
        prop::collection::vec(prop::collection::vec(action(), 1..=10), 2..=8),
    )
        .prop_map(
            |(workers, funds, credit_limit, passivation, tasks)| Workload {
                workers,
                funds,
                credit_limit,
                passivation,
                tasks,
            },
        )
}

/// Everything the engine acknowledged, by operation id.
#[derive(Default)]
struct Acks {
    acked: Mutex<BTreeMap<OpId, (Write, Answer)>>,
    holds: Mutex<Vec<(HoldId, u64)>>,
    postings: Mutex<Vec<PostingId>>,
}

struct Ctx {
    tally: Tally,
    clock: ManualClock,
    next_op: AtomicU64,
    acks: Acks,
}

impl Ctx {
    fn op(&self) -> OpId {
        OpId(u128::from(self.next_op.fetch_add(1, Ordering::Relaxed)))
    }

    /// Sends a write; records what was acknowledged; checks what a refusal says.
    async fn send(&self, op: OpId, write: Write) -> Option<Answer> {
        let result = write_to(&self.tally, op, &write).await;
        match result {
            Ok(answer) => {
                {
                    let mut acked = self.acks.acked.lock().unwrap();
                    if let Some((first, first_answer)) = acked.get(&op) {
                        assert_eq!(first, &write, "a retry must carry the same request");
                        assert_eq!(first_answer, &answer, "a retry answered differently");
                    } else {
                        acked.insert(op, (write.clone(), answer.clone()));
                    }
                }
                match (&write, &answer) {
                    (Write::Reserve { amount, .. }, Answer::Held(hold)) => {
                        self.acks.holds.lock().unwrap().push((*hold, *amount));
                    }
                    (_, Answer::Posted(posting)) => {
                        self.acks.postings.lock().unwrap().push(*posting)
                    }
                    (_, Answer::Committed(c)) => self.acks.postings.lock().unwrap().push(c.posting),
                    _ => {}
                }
                Some(answer)
            }
            Err(Error::Ledger(LedgerError::InsufficientFunds { available, .. })) => {
                assert!(available >= 0, "a refusal saw available {available} < 0");
                None
            }
            Err(Error::Ledger(
                LedgerError::HoldAlreadyResolved { .. }
                | LedgerError::HoldExpired { .. }
                | LedgerError::CommitExceedsHold { .. }
                | LedgerError::RefundExceedsPosting { .. }
                | LedgerError::SameAccount { .. },
            )) => None,
            // A final commit of zero before any part was settled.
            Err(Error::Ledger(LedgerError::ZeroAmount { .. }))
                if matches!(write, Write::Commit { amount: 0, .. }) =>
            {
                None
            }
            Err(e) => panic!("unexpected refusal of {write:?}: {e:?}"),
        }
    }

    fn pick<T: Copy>(list: &Mutex<Vec<T>>, pick: usize) -> Option<T> {
        let list = list.lock().unwrap();
        (!list.is_empty()).then(|| list[pick % list.len()])
    }

    async fn act(&self, action: &Action, mine: &mut Vec<(OpId, Write)>) {
        let reserve = |user: usize, amount: u64, timeout_ms: u64| Write::Reserve {
            account: USERS[user],
            app: APP,
            amount,
            timeout_ms,
            endpoint: String::new(),
            metadata: String::new(),
        };
        let mut send = |write: Write| {
            let op = self.op();
            mine.push((op, write.clone()));
            async move { (op, self.send(op, write).await) }
        };
        match *action {
            Action::Charge { user, amount } => {
                send(Write::Charge {
                    account: USERS[user],
                    app: APP,
                    amount,
                    endpoint: String::new(),
                })
                .await;
            }
            Action::ReserveCommit {
                user,
                amount,
                commit,
            } => {
                if let (_, Some(Answer::Held(hold))) =
                    send(reserve(user, amount, TIMEOUT_MS_MAX)).await
                {
                    send(Write::Commit {
                        hold,
                        amount: commit,
                    })
                    .await;
                }
            }
            Action::ReserveVoid { user, amount } => {
                if let (_, Some(Answer::Held(hold))) =
                    send(reserve(user, amount, TIMEOUT_MS_MAX)).await
                {
                    send(Write::Void { hold }).await;
                }
            }
            Action::Reserve {
                user,
                amount,
                timeout_ms,
            } => {
                send(reserve(user, amount, timeout_ms)).await;
            }
            Action::CommitShared { pick, amount } => {
                if let Some((hold, held)) = Self::pick(&self.acks.holds, pick) {
                    send(Write::Commit {
                        hold,
                        amount: amount.min(held),
                    })
                    .await;
                }
            }
            Action::VoidShared { pick } => {
                if let Some((hold, _)) = Self::pick(&self.acks.holds, pick) {
                    send(Write::Void { hold }).await;
                }
            }
            Action::RefundShared { pick, amount } => {
                if let Some(posting) = Self::pick(&self.acks.postings, pick) {
                    send(Write::Refund { posting, amount }).await;
                }
            }
            Action::Transfer { from, to, amount } => {
                send(Write::Transfer {
                    from: USERS[from],
                    to: USERS[to],
                    amount,
                })
                .await;
            }
            Action::Fund { user, amount } => {
                send(Write::Fund {
                    account: USERS[user],
                    from: BANK,
                    amount,
                })
                .await;
            }
            Action::Advance { ms } => {
                self.clock.advance(ms);
                self.tally.expire_due().await.expect("expire_due");
            }
            Action::Replay { pick } => {
                let retry = {
                    let acked = self.acks.acked.lock().unwrap();
                    let done: Vec<_> = mine
                        .iter()
                        .filter(|(op, _)| acked.contains_key(op))
                        .collect();
                    (!done.is_empty()).then(|| done[pick % done.len()].clone())
                };
                if let Some((op, write)) = retry {
                    let answer = self.send(op, write).await;
                    assert!(
                        answer.is_some(),
                        "a retry of an acknowledged request was refused"
                    );
                }
            }
        }
    }
}

/// Opens the world: a funding account, an app, and `users` (each with its spec and funds);
/// with `passivation`, idle accounts leave memory after a minute of the manual clock.
async fn open(users: &[(AccountId, AccountSpec, u64)], passivation: bool) -> (Tally, ManualClock) {
    let clock = ManualClock::new(START);
    let mut config = tally::EngineConfig {
        limits: tally::Limits::default(),
        ..engine_config(&clock)
    };
    if passivation {
        config.idle_passivate_after = Duration::from_secs(60);
        config.supervisor_tick = Duration::from_millis(2);
    }
    let tally = Tally::open(Arc::new(MemStore::new(config.limits.clone())), config)
        .await
        .unwrap();
    tally
        .open_account(BANK, AccountSpec::funding())
        .await
        .unwrap();
    tally
        .open_account(APP, AccountSpec::revenue())
        .await
        .unwrap();
    for (user, spec, funds) in users {
        tally.open_account(*user, *spec).await.unwrap();
        if *funds > 0 {
            tally
                .fund(OpId(u128::from(user.0)), *user, BANK, *funds)
                .await
                .unwrap();
        }
    }
    (tally, clock)
}

/// After the work: settle every hold (move the clock past every deadline), then check the books
/// against what was acknowledged, every hold and posting, and replays.
async fn check_books(ctx: &Ctx, users: &[(AccountId, AccountSpec, u64)]) {
    let tally = &ctx.tally;
    ctx.clock.advance(TIMEOUT_MS_MAX + 1);
    tally.expire_due().await.unwrap();
    let acked = ctx.acks.acked.lock().unwrap().clone();

    // The books are what the acknowledged operations say, and nothing else.
    let mut credits: BTreeMap<AccountId, u128> = BTreeMap::new();
    let mut debits: BTreeMap<AccountId, u128> = BTreeMap::new();
    for (user, _, funds) in users {
        *credits.entry(*user).or_default() += u128::from(*funds);
        *debits.entry(BANK).or_default() += u128::from(*funds);
    }
    let ids: Vec<AccountId> = [BANK, APP]
        .into_iter()
        .chain(users.iter().map(|(id, _, _)| *id))
        .collect();
    let mut move_money = |from: AccountId, to: AccountId, amount: u64| {
        *debits.entry(from).or_default() += u128::from(amount);
        *credits.entry(to).or_default() += u128::from(amount);
    };
    let mut resolutions: BTreeMap<HoldId, Vec<(&Write, &Answer)>> = BTreeMap::new();
    let mut refunded: BTreeMap<PostingId, u64> = BTreeMap::new();
    let mut posted: BTreeMap<PostingId, u64> = BTreeMap::new();
    // Per hold: settled parts and extensions acknowledged.
    let mut settled: BTreeMap<HoldId, u64> = BTreeMap::new();
    let mut extended: BTreeMap<HoldId, u64> = BTreeMap::new();
    for (write, answer) in acked.values() {
        match (write, answer) {
            (
                Write::Fund {
                    account,
                    from,
                    amount,
                },
                _,
            ) => move_money(*from, *account, *amount),
            (
                Write::Charge {
                    account,
                    app,
                    amount,
                    ..
                },
                Answer::Posted(posting),
            ) => {
                move_money(*account, *app, *amount);
                posted.insert(*posting, *amount);
            }
            (Write::Commit { hold, .. }, Answer::Committed(c)) => {
                move_money(hold.account, APP, c.amount_posted.get());
                posted.insert(c.posting, c.amount_posted.get());
                resolutions.entry(*hold).or_default().push((write, answer));
            }
            (Write::Void { hold }, _) => {
                resolutions.entry(*hold).or_default().push((write, answer))
            }
            (Write::Settle { hold, amount }, Answer::Settled(s)) => {
                move_money(hold.account, APP, *amount);
                posted.insert(s.posting, *amount);
                *settled.entry(*hold).or_default() += amount;
            }
            (Write::Extend { hold, amount, .. }, _) => {
                *extended.entry(*hold).or_default() += amount;
            }
            (Write::Refund { posting, amount }, _) => {
                move_money(APP, posting.account, *amount);
                *refunded.entry(*posting).or_default() += amount;
            }
            (Write::Transfer { from, to, amount }, _) => move_money(*from, *to, *amount),
            (Write::Reserve { .. }, _) => {}
            other => panic!("unexpected acknowledgement {other:?}"),
        }
    }
    let all = super::all_accounts(tally, ids.iter().copied()).await;
    for account in &all {
        let balance = account.balance();
        let id = account.id;
        assert_eq!(
            (
                balance.credits_posted,
                balance.debits_posted,
                balance.debits_pending
            ),
            (
                credits.get(&id).copied().unwrap_or(0),
                debits.get(&id).copied().unwrap_or(0),
                0
            ),
            "{id:?}: the books differ from what was acknowledged"
        );
        if id != BANK {
            // Successful holds, charges and transfers out never exceed funds plus credit.
            assert!(
                balance.debits_posted
                    <= balance.credits_posted + u128::from(balance.credit_limit.get()),
                "{id:?} spent more than it had: {balance:?}"
            );
        }
    }
    let seq_max = ctx.next_op.load(Ordering::Relaxed) * 2;
    super::assert_invariants(&all, seq_max.min(10_000));
    let report = tally.audit().await.unwrap();
    assert!(report.ok(), "{report:?}");
    assert_eq!(report.funded, report.revenue + report.user_balances);

    // Every hold resolved exactly once, as acknowledged.
    let holds = ctx.acks.holds.lock().unwrap().clone();
    for (hold, reserved) in holds {
        let found = tally.get_hold(hold).await.unwrap();
        let amount = reserved + extended.get(&hold).copied().unwrap_or(0);
        let parts = settled.get(&hold).copied().unwrap_or(0);
        assert_eq!(found.amount.get(), amount, "{found:?}");
        let won = resolutions.get(&hold).cloned().unwrap_or_default();
        assert!(
            won.len() <= 1,
            "{hold:?} resolved {} times: {won:?}",
            won.len()
        );
        match won.first() {
            Some((Write::Commit { .. }, Answer::Committed(c))) => {
                assert_eq!(found.status, HoldStatus::Posted, "{found:?}");
                assert_eq!(found.amount_posted.get(), parts + c.amount_posted.get());
                assert_eq!(found.posting, Some(c.posting));
                assert_eq!(
                    c.amount_posted.get() + c.amount_released.get(),
                    amount - parts
                );
            }
            Some((Write::Void { .. }, Answer::Released(released))) => {
                assert_eq!(found.status, HoldStatus::Voided, "{found:?}");
                assert_eq!(released.get(), amount - parts);
                assert_eq!(found.amount_posted.get(), parts);
            }
            Some(other) => panic!("unexpected resolution {other:?}"),
            None => {
                assert_eq!(found.status, HoldStatus::Expired, "{found:?}");
                assert_eq!(found.amount_posted.get(), parts);
            }
        }
    }

    // Refunds stayed within what was posted, and are what was acknowledged.
    let by_id: BTreeMap<AccountId, &tally::Account> = all.iter().map(|a| (a.id, a)).collect();
    for (posting, amount) in &posted {
        let found = by_id[&posting.account]
            .posting(posting.seq)
            .expect("retained");
        assert_eq!(found.amount.get(), *amount);
        let refunds = refunded.get(posting).copied().unwrap_or(0);
        assert!(
            refunds <= *amount,
            "{posting:?}: refunded {refunds} of {amount}"
        );
        assert_eq!(found.amount_refunded.get(), refunds, "{posting:?}");
    }
    assert!(refunded.keys().all(|p| posted.contains_key(p)));

    // Replaying every acknowledged request (concurrently) answers the same and changes nothing.
    let before = super::all_accounts(tally, ids.iter().copied()).await;
    let replays: Vec<_> = acked
        .into_iter()
        .map(|(op, (write, answer))| {
            let tally = tally.clone();
            tokio::spawn(async move {
                let again = write_to(&tally, op, &write).await;
                assert_eq!(
                    again,
                    Ok(answer),
                    "the retry of {op:?} {write:?} answered differently"
                );
            })
        })
        .collect();
    for replay in replays {
        replay.await.unwrap();
    }
    assert_eq!(
        super::all_accounts(tally, ids.iter().copied()).await,
        before,
        "a retry changed the books"
    );
}

fn multi_thread(workers: usize) -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .enable_all()
        .build()
        .unwrap()
}

fn run_workload(w: Workload) {
    let rt = multi_thread(w.workers);
    rt.block_on(async {
        let limit = Amount::new(w.credit_limit).unwrap();
        let users = [
            (USERS[0], AccountSpec::user(), w.funds[0]),
            (
                USERS[1],
                AccountSpec::user().with_credit_limit(limit),
                w.funds[1],
            ),
        ];
        let (tally, clock) = open(&users, w.passivation).await;
        let ctx = Arc::new(Ctx {
            tally,
            clock,
            next_op: AtomicU64::new(1_000),
            acks: Acks::default(),
        });
        // An observer: no account that may not overdraw is ever seen below zero.
        let done = Arc::new(AtomicBool::new(false));
        let observer = {
            let (ctx, done) = (ctx.clone(), done.clone());
            tokio::spawn(async move {
                while !done.load(Ordering::Acquire) {
                    for user in USERS {
                        let balance = ctx.tally.balance(user).await.unwrap();
                        assert!(
                            balance.available >= 0,
                            "{user:?} seen overspent: {balance:?}"
                        );
                    }
                    tokio::task::yield_now().await;
                }
            })
        };
        let tasks: Vec<_> = w
            .tasks
            .iter()
            .cloned()
            .map(|actions| {
                let ctx = ctx.clone();
                tokio::spawn(async move {
                    let mut mine = Vec::new();
                    for action in &actions {
                        ctx.act(action, &mut mine).await;
                    }
                })
            })
            .collect();
        for task in tasks {
            task.await.unwrap();
        }
        done.store(true, Ordering::Release);
        observer.await.unwrap();
        check_books(&ctx, &users).await;
    });
    rt.shutdown_timeout(Duration::from_secs(10));
}

/// One race, on its own hold or posting; each side waits `turns` scheduler turns before it
/// sends, so either side may go first.
#[derive(Clone, Debug)]
struct Race {
    kind: RaceKind,
    turns: (u8, u8),
}

#[derive(Clone, Debug)]
enum RaceKind {
    /// Two commits (different ids) of one hold.
    CommitCommit { held: u64, a: u64, b: u64 },
    /// A commit and a void of one hold.
    CommitVoid { held: u64, commit: u64 },
    /// A commit, and the clock moved past the hold's deadline (and `expire_due`) from
    /// another task.
    CommitExpiry {
        held: u64,
        commit: u64,
        timeout_ms: u64,
    },
    /// Two refunds of one posting.
    RefundRefund { posted: u64, a: u64, b: u64 },
    /// Two reserves for the same funds (`held` is all the account has).
    ReserveReserve { held: u64, a: u64, b: u64 },
    /// Two settlements of one hold racing its final commit.
    SettleSettleCommit {
        held: u64,
        a: u64,
        b: u64,
        commit: u64,
    },
    /// A settlement and a void of one hold.
    SettleVoid { held: u64, settle: u64 },
    /// An extension (of `more`, which the account has besides the hold) and the clock moved past
    /// the hold's deadline (and `expire_due`) from another task.
    ExtendExpiry {
        held: u64,
        more: u64,
        timeout_ms: u64,
    },
}

impl RaceKind {
    /// What the race's own account is funded with.
    fn funds(&self) -> u64 {
        match *self {
            RaceKind::CommitCommit { held, .. }
            | RaceKind::CommitVoid { held, .. }
            | RaceKind::CommitExpiry { held, .. }
            | RaceKind::ReserveReserve { held, .. }
            | RaceKind::SettleSettleCommit { held, .. }
            | RaceKind::SettleVoid { held, .. } => held,
            RaceKind::ExtendExpiry { held, more, .. } => held + more,
            RaceKind::RefundRefund { posted, .. } => posted,
        }
    }
}

fn race() -> impl Strategy<Value = Race> {
    let kind = (1..=1_000u64).prop_flat_map(|held| {
        prop_oneof![
            (1..=held, 1..=held).prop_map(move |(a, b)| RaceKind::CommitCommit { held, a, b }),
            (1..=held).prop_map(move |commit| RaceKind::CommitVoid { held, commit }),
            (1..=held, 1..=1_000u64).prop_map(move |(commit, timeout_ms)| {
                RaceKind::CommitExpiry {
                    held,
                    commit,
                    timeout_ms,
                }
            }),
            (1..=held, 1..=held).prop_map(move |(a, b)| RaceKind::RefundRefund {
                posted: held,
                a,
                b
            }),
            (1..=held, 1..=held).prop_map(move |(a, b)| RaceKind::ReserveReserve { held, a, b }),
            (1..=held, 1..=held, 0..=held).prop_map(move |(a, b, commit)| {
                RaceKind::SettleSettleCommit { held, a, b, commit }
            }),
            (1..=held).prop_map(move |settle| RaceKind::SettleVoid { held, settle }),
            (1..=held, 1..=1_000u64).prop_map(move |(more, timeout_ms)| {
                RaceKind::ExtendExpiry {
                    held,
                    more,
                    timeout_ms,
                }
            }),
        ]
    });
    (kind, (0..8u8, 0..8u8)).prop_map(|(kind, turns)| Race { kind, turns })
}

async fn turns(n: u8) {
    for _ in 0..n {
        tokio::task::yield_now().await;
    }
}

/// Runs one race and checks its own outcome: exactly one winner where the rules say so.
async fn run_race(ctx: Arc<Ctx>, race: Race, user: AccountId) {
    let tally = &ctx.tally;
    let reserve = |held: u64, timeout_ms: u64| Write::Reserve {
        account: user,
        app: APP,
        amount: held,
        timeout_ms,
        endpoint: String::new(),
        metadata: String::new(),
    };
    let (turns_a, turns_b) = race.turns;
    // Two requests at once, on two tasks.
    let both = |a: Write, b: Write| {
        let (op_a, op_b) = (ctx.op(), ctx.op());
        let (ctx_a, ctx_b) = (ctx.clone(), ctx.clone());
        async move {
            let a = tokio::spawn(async move {
                turns(turns_a).await;
                ctx_a.send(op_a, a).await
            });
            let b = tokio::spawn(async move {
                turns(turns_b).await;
                ctx_b.send(op_b, b).await
            });
            (a.await.unwrap(), b.await.unwrap())
        }
    };
    match race.kind {
        RaceKind::CommitCommit { held, a, b } => {
            let Some(Answer::Held(hold)) =
                ctx.send(ctx.op(), reserve(held, 7 * 24 * 3_600_000)).await
            else {
                panic!("the reserve was refused");
            };
            let (ra, rb) = both(
                Write::Commit { hold, amount: a },
                Write::Commit { hold, amount: b },
            )
            .await;
            assert_eq!(
                ra.is_some() as u8 + rb.is_some() as u8,
                1,
                "two commits: {ra:?} {rb:?}"
            );
            let posted = if ra.is_some() { a } else { b };
            let found = tally.get_hold(hold).await.unwrap();
            assert_eq!(
                (found.status, found.amount_posted.get()),
                (HoldStatus::Posted, posted)
            );
        }
        RaceKind::CommitVoid { held, commit } => {
            let Some(Answer::Held(hold)) =
                ctx.send(ctx.op(), reserve(held, 7 * 24 * 3_600_000)).await
            else {
                panic!("the reserve was refused");
            };
            let (rc, rv) = both(
                Write::Commit {
                    hold,
                    amount: commit,
                },
                Write::Void { hold },
            )
            .await;
            assert_eq!(
                rc.is_some() as u8 + rv.is_some() as u8,
                1,
                "commit and void: {rc:?} {rv:?}"
            );
            let found = tally.get_hold(hold).await.unwrap();
            let expected = if rc.is_some() {
                HoldStatus::Posted
            } else {
                HoldStatus::Voided
            };
            assert_eq!(found.status, expected);
        }
        RaceKind::CommitExpiry {
            held,
            commit,
            timeout_ms,
        } => {
            let Some(Answer::Held(hold)) = ctx.send(ctx.op(), reserve(held, timeout_ms)).await
            else {
                panic!("the reserve was refused");
            };
            let op = ctx.op();
            let committer = {
                let ctx = ctx.clone();
                tokio::spawn(async move {
                    turns(turns_a).await;
                    ctx.send(
                        op,
                        Write::Commit {
                            hold,
                            amount: commit,
                        },
                    )
                    .await
                })
            };
            let expirer = {
                let ctx = ctx.clone();
                tokio::spawn(async move {
                    turns(turns_b).await;
                    ctx.clock.advance(timeout_ms);
                    ctx.tally.expire_due().await.unwrap();
                })
            };
            let committed = committer.await.unwrap();
            expirer.await.unwrap();
            let found = tally.get_hold(hold).await.unwrap();
            let expected = if committed.is_some() {
                HoldStatus::Posted
            } else {
                HoldStatus::Expired
            };
            assert_eq!(found.status, expected, "commit answered {committed:?}");
        }
        RaceKind::ReserveReserve { held, a, b } => {
            let (ra, rb) = both(reserve(a, TIMEOUT_MS_MAX), reserve(b, TIMEOUT_MS_MAX)).await;
            assert!(ra.is_some() || rb.is_some(), "both reserves were refused");
            assert_eq!(ra.is_some() && rb.is_some(), a + b <= held, "{ra:?} {rb:?}");
            let pending = ra.as_ref().map_or(0, |_| a) + rb.as_ref().map_or(0, |_| b);
            let balance = tally.balance(user).await.unwrap();
            assert_eq!(balance.debits_pending, u128::from(pending));
            assert!(balance.available >= 0, "{balance:?}");
        }
        RaceKind::SettleSettleCommit { held, a, b, commit } => {
            // A hold the commit may leave pending: expired by the books' check at the end.
            let Some(Answer::Held(hold)) = ctx.send(ctx.op(), reserve(held, TIMEOUT_MS_MAX)).await
            else {
                panic!("the reserve was refused");
            };
            let (op_a, op_b, op_c) = (ctx.op(), ctx.op(), ctx.op());
            let task = |op, write: Write, n: u8| {
                let ctx = ctx.clone();
                tokio::spawn(async move {
                    turns(n).await;
                    ctx.send(op, write).await
                })
            };
            let sa = task(op_a, Write::Settle { hold, amount: a }, turns_a);
            let sb = task(op_b, Write::Settle { hold, amount: b }, turns_b);
            let fc = task(
                op_c,
                Write::Commit {
                    hold,
                    amount: commit,
                },
                turns_a.wrapping_add(turns_b) % 8,
            );
            let (ra, rb, rc) = (sa.await.unwrap(), sb.await.unwrap(), fc.await.unwrap());
            let parts = ra.as_ref().map_or(0, |_| a) + rb.as_ref().map_or(0, |_| b);
            let found = tally.get_hold(hold).await.unwrap();
            assert!(parts <= held, "settled {parts} of {held}: {ra:?} {rb:?}");
            match &rc {
                Some(Answer::Committed(c)) => {
                    // The commit came after the settlements that succeeded, and resolved the
                    // hold: what it posted and released is exactly what they left.
                    assert_eq!(found.status, HoldStatus::Posted);
                    assert_eq!(
                        c.amount_posted.get() + c.amount_released.get(),
                        held - parts
                    );
                    assert_eq!(found.amount_posted.get(), parts + c.amount_posted.get());
                }
                _ => {
                    assert_eq!(found.status, HoldStatus::Pending, "{rc:?}");
                    assert_eq!(found.amount_posted.get(), parts);
                }
            }
        }
        RaceKind::SettleVoid { held, settle } => {
            let Some(Answer::Held(hold)) =
                ctx.send(ctx.op(), reserve(held, 7 * 24 * 3_600_000)).await
            else {
                panic!("the reserve was refused");
            };
            let (rs, rv) = both(
                Write::Settle {
                    hold,
                    amount: settle,
                },
                Write::Void { hold },
            )
            .await;
            let Some(Answer::Released(released)) = rv else {
                panic!("the void was refused: {rv:?}");
            };
            let parts = rs.as_ref().map_or(0, |_| settle);
            let found = tally.get_hold(hold).await.unwrap();
            assert_eq!(found.status, HoldStatus::Voided);
            assert_eq!(found.amount_posted.get(), parts, "{rs:?}");
            assert_eq!(released.get(), held - parts, "the void released the rest");
        }
        RaceKind::ExtendExpiry {
            held,
            more,
            timeout_ms,
        } => {
            let Some(Answer::Held(hold)) = ctx.send(ctx.op(), reserve(held, timeout_ms)).await
            else {
                panic!("the reserve was refused");
            };
            let op = ctx.op();
            let extender = {
                let ctx = ctx.clone();
                tokio::spawn(async move {
                    turns(turns_a).await;
                    ctx.send(
                        op,
                        Write::Extend {
                            hold,
                            amount: more,
                            timeout_ms: 0,
                        },
                    )
                    .await
                })
            };
            let expirer = {
                let ctx = ctx.clone();
                tokio::spawn(async move {
                    turns(turns_b).await;
                    ctx.clock.advance(timeout_ms);
                    ctx.tally.expire_due().await.unwrap();
                })
            };
            let extended = extender.await.unwrap();
            expirer.await.unwrap();
            let found = tally.get_hold(hold).await.unwrap();
            // Extended before the deadline or refused after it; expired either way, releasing
            // all it held.
            assert_eq!(
                found.status,
                HoldStatus::Expired,
                "extend answered {extended:?}"
            );
            let expected = held + extended.as_ref().map_or(0, |_| more);
            assert_eq!(found.amount.get(), expected);
            let balance = tally.balance(user).await.unwrap();
            assert_eq!(balance.debits_pending, 0);
        }
        RaceKind::RefundRefund { posted, a, b } => {
            let charge = Write::Charge {
                account: user,
                app: APP,
                amount: posted,
                endpoint: String::new(),
            };
            let Some(Answer::Posted(posting)) = ctx.send(ctx.op(), charge).await else {
                panic!("the charge was refused");
            };
            let (ra, rb) = both(
                Write::Refund { posting, amount: a },
                Write::Refund { posting, amount: b },
            )
            .await;
            let refunded = ra.as_ref().map_or(0, |_| a) + rb.as_ref().map_or(0, |_| b);
            assert!(
                ra.is_some() || rb.is_some(),
                "both refunds of {posting:?} were refused"
            );
            assert_eq!(
                ra.is_some() && rb.is_some(),
                a + b <= posted,
                "{ra:?} {rb:?}"
            );
            let found = tally.account(user).await.unwrap();
            let found = found.posting(posting.seq).unwrap();
            assert_eq!(found.amount_refunded.get(), refunded);
            assert!(refunded <= posted);
        }
    }
}

fn run_races(workers: usize, races: Vec<Race>) {
    let rt = multi_thread(workers);
    rt.block_on(async {
        // Each race on its own account, funded with exactly what the race needs.
        let users: Vec<(AccountId, AccountSpec, u64)> = races
            .iter()
            .enumerate()
            .map(|(i, race)| {
                (
                    AccountId(100 + i as u64),
                    AccountSpec::user(),
                    race.kind.funds(),
                )
            })
            .collect();
        let (tally, clock) = open(&users, false).await;
        let ctx = Arc::new(Ctx {
            tally,
            clock,
            next_op: AtomicU64::new(1_000),
            acks: Acks::default(),
        });
        let tasks: Vec<_> = races
            .into_iter()
            .enumerate()
            .map(|(i, race)| tokio::spawn(run_race(ctx.clone(), race, users[i].0)))
            .collect();
        for task in tasks {
            task.await.unwrap();
        }
        check_books(&ctx, &users).await;
    });
    rt.shutdown_timeout(Duration::from_secs(10));
}

proptest! {
    #![proptest_config(super::config())]

    /// Hot accounts under concurrent load: exact books, no overspend ever seen, every hold
    /// resolved once, refunds within postings, and retries that change nothing.
    #[test]
    fn concurrent_work_on_hot_accounts_keeps_every_invariant(w in workload()) {
        run_workload(w);
        super::case_passed("concurrent_work_on_hot_accounts_keeps_every_invariant");
    }

    /// Two commits of one hold, a commit and a void, a commit and the expiry, two refunds of one
    /// posting, two reserves for the last funds, two settlements and the final commit, a
    /// settlement and a void, an extension and the expiry: each resolves exactly once, with
    /// nothing lost, nothing counted twice and nothing overspent.
    #[test]
    fn races_on_one_hold_or_posting_resolve_exactly_once(
        workers in 2..=4usize,
        races in prop::collection::vec(race(), 1..=6),
    ) {
        run_races(workers, races);
        super::case_passed("races_on_one_hold_or_posting_resolve_exactly_once");
    }
}
