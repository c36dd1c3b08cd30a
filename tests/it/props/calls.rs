//! What a test says to tally and what tally answers, in types shared by the engine side and the
//! model side: a write request (`Write`), an answer (`Answer`, `Res`), everything observable of
//! one account (`View`), and `write_to`, which makes a write through the `Tally` API.

use std::time::Duration;

use tally::{
    AccountId, Amount, Balance, Committed, Error, Extended, Hold, HoldId, OpId, Outcome, Posting,
    PostingId, ReserveRequest, Settled, Tally,
};

use super::reference::Acct;

/// A write request, as a caller makes it through the `Tally` API.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Write {
    Fund {
        account: AccountId,
        from: AccountId,
        amount: u64,
    },
    Reserve {
        account: AccountId,
        app: AccountId,
        amount: u64,
        timeout_ms: u64,
        endpoint: String,
        metadata: String,
    },
    Commit {
        hold: HoldId,
        amount: u64,
    },
    Void {
        hold: HoldId,
    },
    Extend {
        hold: HoldId,
        amount: u64,
        /// 0: keep the deadline.
        timeout_ms: u64,
    },
    Settle {
        hold: HoldId,
        amount: u64,
    },
    Charge {
        account: AccountId,
        app: AccountId,
        amount: u64,
        endpoint: String,
    },
    Refund {
        posting: PostingId,
        amount: u64,
    },
    Transfer {
        from: AccountId,
        to: AccountId,
        amount: u64,
    },
}

impl Write {
    /// The account that executes the request (and scopes its idempotency key).
    pub fn executor(&self) -> AccountId {
        match self {
            Write::Fund { account, .. }
            | Write::Reserve { account, .. }
            | Write::Charge { account, .. } => *account,
            Write::Commit { hold, .. }
            | Write::Void { hold }
            | Write::Extend { hold, .. }
            | Write::Settle { hold, .. } => hold.account,
            Write::Refund { posting, .. } => posting.account,
            Write::Transfer { from, .. } => *from,
        }
    }

    /// The amount it carries (a void carries none).
    pub fn amount(&self) -> Option<u64> {
        match self {
            Write::Fund { amount, .. }
            | Write::Reserve { amount, .. }
            | Write::Commit { amount, .. }
            | Write::Extend { amount, .. }
            | Write::Settle { amount, .. }
            | Write::Charge { amount, .. }
            | Write::Refund { amount, .. }
            | Write::Transfer { amount, .. } => Some(*amount),
            Write::Void { .. } => None,
        }
    }
}

/// What a call answered, in one type for the engine and the model.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Answer {
    Done,
    Held(HoldId),
    Committed(Committed),
    Extended(Extended),
    Settled(Settled),
    Released(Amount),
    Posted(PostingId),
    Check(bool),
    Expired(usize),
    Balance(Balance),
    Hold(Box<Hold>),
    Op(Option<Outcome>),
    View(Box<View>),
}

/// A call's result: the value, or the exact error.
pub type Res = Result<Answer, Error>;

/// Everything observable of one account, probed the same way on the engine and the model.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct View {
    pub balance: Balance,
    /// `hold(seq)` for every sequence number the account has used (and one beyond).
    pub holds: Vec<Option<Hold>>,
    /// The retained postings, oldest first.
    pub postings: Vec<Posting>,
    /// How many operation ids it remembers ...
    pub ops_remembered: usize,
    /// ... and the outcome it remembers for each id the model remembers.
    pub outcomes: Vec<(OpId, Option<Outcome>)>,
}

impl View {
    /// The view of an engine (or store) account, probed at the model's sequence numbers and ids.
    pub fn of(account: &tally::Account, probe: &Acct) -> View {
        View {
            balance: account.balance(),
            holds: (1..=probe.next_seq)
                .map(|seq| account.hold(seq).cloned())
                .collect(),
            postings: account.postings().cloned().collect(),
            ops_remembered: account.remembered_keys(),
            outcomes: probe
                .ops
                .keys()
                .map(|op| (*op, account.remembered(*op).map(|(outcome, _)| outcome)))
                .collect(),
        }
    }
}

/// What a caller of the `Tally` API gets for an outcome.
pub fn answer(outcome: Outcome) -> Answer {
    match outcome {
        Outcome::Funded | Outcome::Refunded { .. } | Outcome::Transferred | Outcome::Opened => {
            Answer::Done
        }
        Outcome::Reserved { hold, .. } => Answer::Held(hold),
        Outcome::Committed {
            posting,
            amount_posted,
            amount_released,
        } => Answer::Committed(Committed {
            posting,
            amount_posted,
            amount_released,
        }),
        Outcome::Voided { amount_released } | Outcome::Expired { amount_released } => {
            Answer::Released(amount_released)
        }
        Outcome::Charged { posting } => Answer::Posted(posting),
        Outcome::Extended { amount, expires_at } => {
            Answer::Extended(Extended { amount, expires_at })
        }
        Outcome::Settled {
            posting,
            amount_posted,
            amount_held,
        } => Answer::Settled(Settled {
            posting,
            amount_posted,
            amount_held,
        }),
        Outcome::PriceSet { .. }
        | Outcome::PolicySet { .. }
        | Outcome::Corrected { .. }
        | Outcome::FundingUpdated { .. }
        | Outcome::TokenIssued { .. }
        | Outcome::TokenRevoked { .. }
        | Outcome::GrantIssued { .. }
        | Outcome::GrantExpired { .. }
        | Outcome::AllowanceSet => Answer::Done,
    }
}

/// Makes a write through the `Tally` API.
pub async fn write_to(tally: &Tally, op: OpId, write: &Write) -> Res {
    match write.clone() {
        Write::Fund {
            account,
            from,
            amount,
        } => tally
            .fund(op, account, from, amount)
            .await
            .map(|()| Answer::Done),
        Write::Reserve {
            account,
            app,
            amount,
            timeout_ms,
            endpoint,
            metadata,
        } => {
            let request = ReserveRequest::new(account, app, amount)
                .timeout(Duration::from_millis(timeout_ms))
                .endpoint(endpoint)
                .metadata(metadata);
            tally.reserve(op, request).await.map(Answer::Held)
        }
        Write::Commit { hold, amount } => {
            tally.commit(op, hold, amount).await.map(Answer::Committed)
        }
        Write::Void { hold } => tally.void(op, hold).await.map(Answer::Released),
        Write::Extend {
            hold,
            amount,
            timeout_ms,
        } => {
            let timeout = (timeout_ms > 0).then(|| Duration::from_millis(timeout_ms));
            tally
                .extend(op, hold, amount, timeout)
                .await
                .map(Answer::Extended)
        }
        Write::Settle { hold, amount } => tally
            .settle(op, hold, amount, tally::Usage::default())
            .await
            .map(Answer::Settled),
        Write::Charge {
            account,
            app,
            amount,
            endpoint,
        } => tally
            .charge(op, account, app, amount, endpoint)
            .await
            .map(Answer::Posted),
        Write::Refund { posting, amount } => tally
            .refund(op, posting, amount)
            .await
            .map(|()| Answer::Done),
        Write::Transfer { from, to, amount } => tally
            .transfer(op, from, to, amount)
            .await
            .map(|()| Answer::Done),
    }
}
