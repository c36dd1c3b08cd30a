//! Account state: posted and pending totals, holds, postings, remembered idempotency keys.

use serde::{Deserialize, Serialize};
use std::collections::{BTreeSet, VecDeque};

use crate::FastMap;
use std::fmt;

use crate::command::{Digest, Outcome};
use crate::{AccountId, Amount, HoldId, OpId, PostingId, Timestamp, TokenId};

/// What an account is for. The kind decides which operations it may take part in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum AccountKind {
    /// A customer's account: funded, holds reserved against it, never below `−credit_limit`.
    User,
    /// An app's (provider's) account: commits and charges are credited to it, refunds are debited
    /// from it. A refund reverses a posting and is applied even if the revenue account has paid
    /// out since; transfers out of it (payouts) are checked against its available balance.
    Revenue,
    /// Where money enters: the source of every funding. It may overdraw without limit; its
    /// balance is minus the total funded.
    Funding,
}

impl AccountKind {
    /// The kind's name, as used in errors.
    pub fn name(self) -> &'static str {
        match self {
            AccountKind::User => "user",
            AccountKind::Revenue => "revenue",
            AccountKind::Funding => "funding",
        }
    }
}

/// Account flags.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct AccountFlags {
    /// Debits may exceed credits plus the credit limit (always true for funding accounts).
    pub may_overdraw: bool,
}

/// What an account is opened with.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct AccountSpec {
    /// Its kind.
    pub kind: AccountKind,
    /// How far below zero its available balance may go (default 0).
    pub credit_limit: Amount,
    /// Its flags.
    pub flags: AccountFlags,
}

impl AccountSpec {
    /// A user account with no credit.
    pub fn user() -> Self {
        AccountSpec {
            kind: AccountKind::User,
            credit_limit: Amount::ZERO,
            flags: AccountFlags::default(),
        }
    }
    /// A revenue account for an app.
    pub fn revenue() -> Self {
        AccountSpec {
            kind: AccountKind::Revenue,
            ..Self::user()
        }
    }
    /// A funding account (may overdraw).
    pub fn funding() -> Self {
        AccountSpec {
            kind: AccountKind::Funding,
            credit_limit: Amount::ZERO,
            flags: AccountFlags { may_overdraw: true },
        }
    }
    /// The same spec with a credit limit.
    pub fn with_credit_limit(mut self, credit_limit: Amount) -> Self {
        self.credit_limit = credit_limit;
        self
    }

    /// Whether debits of this account are checked against its available balance.
    pub fn may_overdraw(&self) -> bool {
        self.flags.may_overdraw || self.kind == AccountKind::Funding
    }
}

/// Where a hold stands. `Pending` moves to exactly one of the other three, once.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum HoldStatus {
    /// Funds are held.
    Pending,
    /// Committed: part or all of the hold was posted, the rest released.
    Posted,
    /// Released by request.
    Voided,
    /// Released because its timeout passed.
    Expired,
}

impl fmt::Display for HoldStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            HoldStatus::Pending => "pending",
            HoldStatus::Posted => "posted",
            HoldStatus::Voided => "voided",
            HoldStatus::Expired => "expired",
        })
    }
}

/// A reservation of funds for work in progress (the seeds' delegated transfer).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hold {
    /// Its id.
    pub id: HoldId,
    /// The amount held in all: what was reserved plus every extension.
    pub amount: Amount,
    /// The app (revenue account) a commit credits.
    pub app: AccountId,
    /// The app's endpoint that does the work (shared with the posting a commit makes).
    pub endpoint: std::sync::Arc<str>,
    /// Caller's metadata.
    pub metadata: String,
    /// When it was reserved.
    pub created_at: Timestamp,
    /// When it expires if still pending.
    pub expires_at: Timestamp,
    /// Where it stands.
    pub status: HoldStatus,
    /// The amount posted so far: every settlement, then the commit.
    pub amount_posted: Amount,
    /// The posting a commit made (settlements make postings of their own).
    pub posting: Option<PostingId>,
    /// When it was resolved.
    pub resolved_at: Option<Timestamp>,
    /// The spend token it was made with (its sequence number in the account), if any.
    pub token: Option<u64>,
    /// For a metered hold, the price it was quoted at, which finishing it uses.
    pub price: Option<crate::PinnedPrice>,
    /// The usage of the parts settled so far (a metered hold's cost is that of all its usage,
    /// rounded once: each part posts the cost so far minus what was posted).
    pub usage_settled: crate::Usage,
    /// What each grant of the account holds for it, in the order drawn (the rest of what it
    /// holds is the account's general balance).
    #[serde(default)]
    pub grants: crate::GrantShares,
}

impl Hold {
    /// What it still holds: `amount − amount_posted` (meaningful while pending; a resolved hold
    /// holds nothing).
    pub fn held(&self) -> Amount {
        match self.status {
            HoldStatus::Pending => self
                .amount
                .checked_sub(self.amount_posted)
                .unwrap_or(Amount::ZERO),
            _ => Amount::ZERO,
        }
    }
}

/// A user's authorization for one app (and optionally one endpoint) to hold or charge its
/// funds up to `cap`, until `expires_at`. `used` is what its pending holds hold plus what it
/// posted; a hold's released part goes back to it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SpendToken {
    /// Its id.
    pub id: TokenId,
    /// The app it lets spend.
    pub app: AccountId,
    /// The endpoint it is limited to (empty: any).
    pub endpoint: String,
    /// The most it lets be held and posted in all.
    pub cap: Amount,
    /// Held now plus posted so far (never above `cap`).
    pub used: Amount,
    /// When it was issued.
    pub issued_at: Timestamp,
    /// When it stops working.
    pub expires_at: Timestamp,
    /// Revoked by the user.
    pub revoked: bool,
}

impl SpendToken {
    /// What it still lets be spent.
    pub fn remaining(&self) -> Amount {
        self.cap.checked_sub(self.used).unwrap_or(Amount::ZERO)
    }

    /// Neither revoked nor expired at `now`.
    pub fn live(&self, now: Timestamp) -> bool {
        !self.revoked && now < self.expires_at
    }
}

/// Money moved from a user to an app, refundable in parts up to its amount.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Posting {
    /// Its id.
    pub id: PostingId,
    /// The app credited.
    pub app: AccountId,
    /// The amount posted.
    pub amount: Amount,
    /// The amount refunded so far (never above `amount`).
    pub amount_refunded: Amount,
    /// When it was posted.
    pub posted_at: Timestamp,
    /// The endpoint it paid for (a commit's shares its hold's).
    pub endpoint: std::sync::Arc<str>,
    /// Set when the posting committed a hold's estimate (the call ended without reported
    /// usage): what a correction needs, and whether it was corrected.
    /// (Boxed: most postings are not estimates, and a posting stays small.)
    #[serde(default)]
    pub estimate: Option<Box<Estimate>>,
    /// What each grant of the account paid of what is still refundable, in the order drawn
    /// (the rest was paid from the general balance).
    #[serde(default)]
    pub grants: crate::GrantShares,
}

/// What an estimated posting keeps for its one correction.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Estimate {
    /// The price the hold was quoted at (metered holds): a correction by usage prices with it.
    pub price: Option<crate::PinnedPrice>,
    /// The usage the hold's settled parts reported before the estimate.
    pub usage_before: crate::Usage,
    /// What the hold's settled parts posted before the estimate.
    pub posted_before: Amount,
    /// The amount the estimate posted.
    pub estimated: Amount,
    /// Whether the one correction was made.
    pub corrected: bool,
    /// The spend token the hold was made with: a correction up draws on it, down gives back.
    #[serde(default)]
    pub token: Option<u64>,
}

impl Posting {
    /// What remains refundable.
    pub fn refundable(&self) -> Amount {
        self.amount
            .checked_sub(self.amount_refunded)
            .unwrap_or(Amount::ZERO)
    }
}

/// An account's balance. `available = credits_posted − debits_posted − debits_pending +
/// credit_limit`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Balance {
    /// The account.
    pub account: AccountId,
    /// Sum of posted credits.
    pub credits_posted: u128,
    /// Sum of posted debits.
    pub debits_posted: u128,
    /// Sum of pending holds.
    pub debits_pending: u128,
    /// The credit limit.
    pub credit_limit: Amount,
    /// `credits_posted − debits_posted`.
    pub posted: i128,
    /// What can be reserved or charged now.
    pub available: i128,
}

/// What the account remembers of an executed request, to answer its retry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Remembered {
    pub(crate) digest: Digest,
    pub(crate) outcome: Outcome,
    pub(crate) at: Timestamp,
    /// The journal sequence number of the record (0 until known).
    pub(crate) seq: u64,
}

/// One account's whole state, owned by exactly one actor.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Account {
    /// Its id.
    pub id: AccountId,
    /// What it was opened with.
    pub spec: AccountSpec,
    pub(crate) credits_posted: u128,
    pub(crate) debits_posted: u128,
    pub(crate) debits_pending: u128,
    /// The next sequence number for a hold or posting of this account.
    pub(crate) next_seq: u64,
    /// Pending holds and the most recent resolved ones.
    pub(crate) holds: FastMap<u64, Hold>,
    /// Pending holds by deadline, soonest first.
    pub(crate) deadlines: BTreeSet<(Timestamp, u64)>,
    /// Resolved holds, oldest first, for pruning.
    pub(crate) resolved_order: VecDeque<u64>,
    /// Postings still refundable.
    pub(crate) postings: FastMap<u64, Posting>,
    pub(crate) posting_order: VecDeque<u64>,
    /// Remembered idempotency keys. Not part of the serialized account: a store keeps them
    /// apart ([`Account::remembered_after`], [`Account::restore_remembered`]), so that an
    /// account's snapshot stays small whatever the window.
    #[serde(skip)]
    pub(crate) remembered: FastMap<OpId, Remembered>,
    /// The remembered keys in the order they were made (oldest first; their seqs ascend).
    #[serde(skip)]
    pub(crate) remembered_order: VecDeque<(Timestamp, OpId)>,
    /// Keys a store holds for this account that it has not loaded ([`Account::defer_remembered`]):
    /// older than every key in `remembered`. While there are any, nothing is forgotten and
    /// nothing may be decided.
    #[serde(skip)]
    pub(crate) keys_unloaded: Option<KeyWindow>,
    /// The seq from which the remembered keys were made without forgetting the oldest (0: none
    /// were): a store that replayed records onto an account without its keys loaded could not
    /// forget them; [`Account::restore_remembered`] forgets them as each key would have.
    #[serde(skip)]
    pub(crate) keys_untrimmed_from: u64,
    /// Journal sequence number of the last record applied to this account.
    pub(crate) last_seq: u64,
    /// Total funding: every `Fund` amount, reset by each funding update to its `new` total.
    pub(crate) funded: u128,
    /// What the account posted to apps during one UTC day (for spend caps).
    pub(crate) spend: SpendDay,
    /// Spend tokens, by sequence number (dead ones are dropped when a new one is issued).
    pub(crate) tokens: std::collections::BTreeMap<u64, SpendToken>,
    /// The app's price catalog: endpoint → its latest entry (a removed price stays as an entry
    /// without one, so versions never repeat).
    pub(crate) catalog: std::collections::BTreeMap<String, CatalogEntry>,
    /// The version of the newest catalog entry (0: none yet).
    pub(crate) catalog_version: u64,
    /// What the service allows this account (spend cap, rate limit, low-balance threshold).
    #[serde(default)]
    pub(crate) policy: crate::AccountPolicy,
    /// Its use of each period-tiered price (app, endpoint) in that price's current period.
    #[serde(default)]
    pub(crate) period_use: std::collections::BTreeMap<(AccountId, String), crate::PeriodUse>,
    /// Its prepaid credit grants, by sequence number (see [`crate::Grant`]).
    #[serde(default)]
    pub(crate) grants: std::collections::BTreeMap<u64, crate::Grant>,
    /// Its recurring allowance.
    #[serde(default)]
    pub(crate) allowance: Option<crate::AllowanceState>,
    /// The legs of other accounts' records it has taken in (see [`crate::legs`]): its totals
    /// include exactly these.
    #[serde(default)]
    pub(crate) legs: crate::LegTotals,
    /// The endpoint the last hold or posting named, shared with the next that names the same
    /// (one allocation per endpoint change, not per call). A cache, not state.
    #[serde(skip)]
    pub(crate) last_endpoint: LastEndpoint,
}

/// [`Account::last_endpoint`]: equal whatever it holds, so two accounts in the same state
/// compare equal however they came to it.
#[derive(Clone, Debug, Default)]
pub(crate) struct LastEndpoint(Option<std::sync::Arc<str>>);

impl PartialEq for LastEndpoint {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl Eq for LastEndpoint {}

impl LastEndpoint {
    /// `endpoint`, shared with the last one if it is the same text.
    pub(crate) fn share(&mut self, endpoint: &str) -> std::sync::Arc<str> {
        match &self.0 {
            Some(last) if &**last == endpoint => last.clone(),
            _ => {
                let shared: std::sync::Arc<str> = endpoint.into();
                self.0 = Some(shared.clone());
                shared
            }
        }
    }
}

/// One endpoint's entry in an app's price catalog.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CatalogEntry {
    /// Its version (versions count up per app).
    pub version: u64,
    /// The price (`None`: removed).
    pub price: Option<crate::Price>,
    /// When it was set.
    pub set_at: Timestamp,
}

/// Milliseconds in a day: spend caps count per UTC day of the records' timestamps.
pub const DAY_MS: u64 = 86_400_000;

/// Posted spending (commits and charges) of one UTC day, in total and per app. Only the day of
/// the newest record is kept, so its size is bounded by the apps an account uses in one day.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct SpendDay {
    /// Days since the epoch.
    pub(crate) day: u64,
    pub(crate) total: u128,
    pub(crate) by_app: Vec<(AccountId, u128)>,
}

impl SpendDay {
    /// Adds a posting of `amount` to `app` made at `at`.
    pub(crate) fn add(&mut self, at: Timestamp, app: AccountId, amount: Amount) {
        // A later day starts from zero; a record dated earlier (a clock stepped back) counts
        // in the current day, so a step back never wipes what was spent.
        let day = at.0 / DAY_MS;
        if day > self.day {
            *self = SpendDay {
                day,
                ..SpendDay::default()
            };
        }
        self.total = self.total.saturating_add(amount.wide());
        match self.by_app.iter_mut().find(|(id, _)| *id == app) {
            Some((_, spent)) => *spent = spent.saturating_add(amount.wide()),
            None => self.by_app.push((app, amount.wide())),
        }
    }

    /// Posted on the day of `now` (or on the newest day seen, if the clock is behind it), in
    /// total and to `app`.
    pub(crate) fn on(&self, now: Timestamp, app: AccountId) -> (u128, u128) {
        if now.0 / DAY_MS > self.day {
            return (0, 0);
        }
        let to_app = self
            .by_app
            .iter()
            .find(|(id, _)| *id == app)
            .map_or(0, |(_, spent)| *spent);
        (self.total, to_app)
    }
}

impl Account {
    /// A new, empty account.
    pub fn new(id: AccountId, spec: AccountSpec) -> Self {
        Account {
            id,
            spec,
            credits_posted: 0,
            debits_posted: 0,
            debits_pending: 0,
            next_seq: 1,
            holds: FastMap::default(),
            deadlines: BTreeSet::new(),
            resolved_order: VecDeque::new(),
            postings: FastMap::default(),
            posting_order: VecDeque::new(),
            remembered: FastMap::default(),
            remembered_order: VecDeque::new(),
            keys_unloaded: None,
            keys_untrimmed_from: 0,
            last_seq: 0,
            funded: 0,
            spend: SpendDay::default(),
            tokens: std::collections::BTreeMap::new(),
            catalog: std::collections::BTreeMap::new(),
            catalog_version: 0,
            policy: crate::AccountPolicy::default(),
            period_use: std::collections::BTreeMap::new(),
            grants: std::collections::BTreeMap::new(),
            allowance: None,
            legs: crate::LegTotals::default(),
            last_endpoint: LastEndpoint::default(),
        }
    }

    /// The price this app's catalog has for `endpoint` now, with its version.
    pub fn price(&self, endpoint: &str) -> Option<crate::PinnedPrice> {
        let entry = self.catalog.get(endpoint)?;
        entry.price.as_ref().map(|price| crate::PinnedPrice {
            version: entry.version,
            price: price.clone(),
        })
    }

    /// Its use of a period-tiered price of `app` at `endpoint` in the period that contains
    /// `at` (none yet, or only in an earlier period: all zero in that period).
    pub fn period_use(
        &self,
        app: AccountId,
        endpoint: &str,
        period: &crate::Period,
        at: Timestamp,
    ) -> crate::PeriodUse {
        let start = period.start(at);
        self.period_use
            .get(&(app, endpoint.to_owned()))
            .filter(|u| u.start == start)
            .copied()
            .unwrap_or(crate::PeriodUse {
                start,
                ..crate::PeriodUse::default()
            })
    }

    /// Every period-tiered price's use this account has: (app, endpoint) → its last period.
    pub fn period_uses(&self) -> impl Iterator<Item = (AccountId, &str, &crate::PeriodUse)> {
        self.period_use
            .iter()
            .map(|((app, endpoint), u)| (*app, endpoint.as_str(), u))
    }

    /// What the service allows this account: its spend cap, rate limit and low-balance
    /// threshold, with the version of the newest change.
    pub fn policy(&self) -> &crate::AccountPolicy {
        &self.policy
    }

    /// The version of the newest entry of the app's price catalog (0: none).
    pub fn catalog_version(&self) -> u64 {
        self.catalog_version
    }

    /// The app's catalog: every endpoint's latest entry, removed ones included.
    pub fn catalog(&self) -> impl Iterator<Item = (&str, &CatalogEntry)> {
        self.catalog.iter().map(|(e, entry)| (e.as_str(), entry))
    }

    /// A spend token of this account.
    pub fn token(&self, seq: u64) -> Option<&SpendToken> {
        self.tokens.get(&seq)
    }

    /// Its spend tokens, oldest first.
    pub fn tokens(&self) -> impl Iterator<Item = &SpendToken> {
        self.tokens.values()
    }

    /// The account's balance.
    pub fn balance(&self) -> Balance {
        Balance {
            account: self.id,
            credits_posted: self.credits_posted,
            debits_posted: self.debits_posted,
            debits_pending: self.debits_pending,
            credit_limit: self.spec.credit_limit,
            posted: self.signed(self.credits_posted, self.debits_posted),
            available: self.available(),
        }
    }

    /// `credits_posted − debits_posted − debits_pending + credit_limit`.
    pub fn available(&self) -> i128 {
        let plus = self
            .credits_posted
            .checked_add(self.spec.credit_limit.wide());
        let minus = self.debits_posted.checked_add(self.debits_pending);
        match (plus, minus) {
            (Some(plus), Some(minus)) => self.signed(plus, minus),
            _ => self.out_of_range(),
        }
    }

    /// `a − b` for two of this account's totals; decisions keep it within `i128`, so anything
    /// else is a bug or damage and stops loudly instead of showing a clamped balance.
    fn signed(&self, a: u128, b: u128) -> i128 {
        signed_diff(a, b).unwrap_or_else(|| self.out_of_range())
    }

    fn out_of_range(&self) -> ! {
        panic!(
            "{}: totals out of range (credits {}, debits {}, pending {}, credit limit {})",
            self.id,
            self.credits_posted,
            self.debits_posted,
            self.debits_pending,
            self.spec.credit_limit
        )
    }

    /// Whether `available ≥ minimum`: the seeds' `get_funding_allowed`.
    pub fn check(&self, minimum: Amount) -> bool {
        self.available() >= minimum.wide() as i128
    }

    /// A hold of this account (pending, or resolved and still retained).
    pub fn hold(&self, seq: u64) -> Option<&Hold> {
        self.holds.get(&seq)
    }

    /// The pending holds, soonest deadline first.
    pub fn pending_holds(&self) -> impl Iterator<Item = &Hold> {
        self.deadlines
            .iter()
            .filter_map(|(_, seq)| self.holds.get(seq))
    }

    /// A posting of this account, if still retained.
    pub fn posting(&self, seq: u64) -> Option<&Posting> {
        self.postings.get(&seq)
    }

    /// The retained postings, oldest first.
    pub fn postings(&self) -> impl Iterator<Item = &Posting> {
        self.posting_order
            .iter()
            .filter_map(|seq| self.postings.get(seq))
    }

    /// Holds whose deadline is at or before `now` (to be expired, soonest first).
    pub fn due_holds(&self, now: Timestamp) -> impl Iterator<Item = HoldId> + '_ {
        let id = self.id;
        self.deadlines
            .iter()
            .take_while(move |(deadline, _)| *deadline <= now)
            .map(move |(_, seq)| HoldId {
                account: id,
                seq: *seq,
            })
    }

    /// The earliest time the engine has something to do for this account by itself: a pending
    /// hold's deadline, a grant's expiry (while it has something free to give back), or its
    /// allowance's next issue.
    pub fn next_deadline(&self) -> Option<Timestamp> {
        let hold = self.deadlines.first().map(|(deadline, _)| *deadline);
        match (hold, self.grants_next_deadline()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Journal sequence number of the last record applied to this account or of the last leg
    /// it took in, whichever is newer (0 if none): every record of its own up to it is applied,
    /// and a replay applies its own records after it.
    pub fn last_seq(&self) -> u64 {
        self.last_seq
    }

    /// The legs of other accounts' records it has taken in.
    pub fn legs(&self) -> &crate::LegTotals {
        &self.legs
    }

    /// Takes in the legs other accounts' records carried to it since it last did: `store` is
    /// what its store sums for it now ([`crate::legs`]). Returns whether anything was new.
    /// Refused, changing nothing, if the store's sums are behind what it took in already or
    /// its totals would pass `u128`: both mean damage, never a clamp.
    pub fn absorb_legs(&mut self, store: &crate::LegTotals) -> Result<bool, crate::LegsError> {
        if *store == self.legs {
            return Ok(false);
        }
        let (credits, debits) = store.since(&self.legs).ok_or(crate::LegsError::Behind {
            account: self.id,
            taken: self.legs,
            store: *store,
        })?;
        let overflow = crate::LegsError::TotalsOverflow { account: self.id };
        let credits_posted = self
            .credits_posted
            .checked_add(credits)
            .ok_or(overflow.clone())?;
        let debits_posted = self.debits_posted.checked_add(debits).ok_or(overflow)?;
        self.credits_posted = credits_posted;
        self.debits_posted = debits_posted;
        self.legs = *store;
        self.last_seq = self.last_seq.max(store.last_seq);
        Ok(true)
    }

    /// Total funding: the sum of every `Fund`, set to `new` by each funding update (the seeds'
    /// `record_funding_update({ old_amount, new_amount })` checks `old_amount` against it).
    pub fn funded(&self) -> u128 {
        self.funded
    }

    /// What the account posted to apps (commits and charges) on the UTC day of `now`: in total,
    /// and to `app`.
    pub fn spent_on_day(&self, now: Timestamp, app: AccountId) -> (u128, u128) {
        self.spend.on(now, app)
    }

    /// Remembered idempotency keys held in memory (for memory accounting and tests).
    pub fn remembered_keys(&self) -> usize {
        self.remembered.len()
    }

    /// The remembered keys' window: every key this account made from seq `first` on (keys are
    /// forgotten oldest first), held in memory or, for an account read without them, by its
    /// store.
    pub fn remembered_window(&self) -> KeyWindow {
        let resident_first = self
            .remembered_order
            .front()
            .and_then(|(_, op)| self.remembered.get(op))
            .map_or(0, |r| r.seq);
        let resident = self.remembered_order.len() as u64;
        let (first, count) = match self.keys_unloaded {
            Some(stored) if stored.count > 0 => {
                (stored.first, stored.count.saturating_add(resident))
            }
            _ => (resident_first, resident),
        };
        KeyWindow {
            first,
            count,
            untrimmed_from: self.keys_untrimmed_from,
        }
    }

    /// Whether keys of this account are held by its store and not loaded: such an account may
    /// have records applied (recovery replays onto it without reading its keys) but decides
    /// nothing until [`Account::restore_remembered`] gives them back.
    pub fn keys_unloaded(&self) -> bool {
        self.keys_unloaded.is_some()
    }

    /// The remembered keys held in memory made by records after `after_seq`, oldest first.
    pub fn remembered_after(&self, after_seq: u64) -> Vec<RememberedKey> {
        let newer = self
            .remembered_order
            .iter()
            .rev()
            .filter_map(|(_, op)| self.remembered.get(op).map(|r| (*op, r)))
            .take_while(|(_, r)| r.seq > after_seq);
        let mut keys: Vec<RememberedKey> = newer
            .map(|(op, r)| RememberedKey {
                op,
                remembered: r.clone(),
            })
            .collect();
        keys.reverse();
        keys
    }

    /// Marks an account read back without its keys as having the keys of `window` in its
    /// store, not loaded: records can then be applied to it (their keys are remembered in
    /// memory, nothing is forgotten) and a store writes back only the new keys, without reading
    /// the old ones. Refused unless it holds no keys yet.
    pub fn defer_remembered(&mut self, window: KeyWindow) -> Result<(), String> {
        if !self.remembered_order.is_empty() || self.keys_unloaded.is_some() {
            return Err(format!(
                "account {} already has its keys ({} in memory)",
                self.id.0,
                self.remembered_order.len()
            ));
        }
        self.keys_unloaded = Some(window);
        self.keys_untrimmed_from = window.untrimmed_from;
        Ok(())
    }

    /// Gives an account read back without its keys (see [`Account::remembered_after`]) the
    /// keys of its window, oldest first; the keys made from `untrimmed_from` on forget the
    /// oldest ones as they would have when made. Refused, leaving the account as it was, unless
    /// it remembers none yet and the keys' seqs ascend, none is past the account's last record,
    /// and no operation id repeats.
    pub fn restore_remembered(
        &mut self,
        keys: Vec<RememberedKey>,
        untrimmed_from: u64,
        limits: &crate::Limits,
    ) -> Result<(), String> {
        if !self.remembered_order.is_empty() {
            return Err(format!(
                "account {} already remembers {} keys",
                self.id.0,
                self.remembered_order.len()
            ));
        }
        let mut previous = 0;
        for key in &keys {
            let seq = key.remembered.seq;
            if seq <= previous || seq > self.last_seq {
                return Err(format!(
                    "account {}: key of seq {seq} out of order (after seq {previous}, account at \
                     seq {})",
                    self.id.0, self.last_seq
                ));
            }
            previous = seq;
        }
        // Sized once: restoring a large window rehashes nothing.
        let mut remembered: FastMap<OpId, Remembered> =
            FastMap::with_capacity_and_hasher(keys.len(), Default::default());
        let mut order = VecDeque::with_capacity(keys.len());
        for key in keys {
            let (at, seq) = (key.remembered.at, key.remembered.seq);
            let untrimmed = untrimmed_from > 0 && seq >= untrimmed_from;
            if remembered.contains_key(&key.op) {
                if !untrimmed {
                    return Err(format!(
                        "account {}: operation {} remembered twice",
                        self.id.0, key.op
                    ));
                }
                // Used again: its first use had been forgotten when it was, and every older key.
                forget_through(&mut remembered, &mut order, key.op);
            }
            order.push_back((at, key.op));
            remembered.insert(key.op, key.remembered);
            if untrimmed {
                forget_oldest(&mut remembered, &mut order, at, limits);
            }
        }
        self.remembered = remembered;
        self.remembered_order = order;
        self.keys_unloaded = None;
        self.keys_untrimmed_from = 0;
        Ok(())
    }
}

/// Forgets the oldest remembered keys while there are more than the limit or the oldest was
/// made more than the retention before `at` (the time of the key just made).
pub(crate) fn forget_oldest(
    remembered: &mut FastMap<OpId, Remembered>,
    order: &mut VecDeque<(Timestamp, OpId)>,
    at: Timestamp,
    limits: &crate::Limits,
) {
    let horizon = at.0.saturating_sub(limits.idempotency_retention_ms);
    while let Some(&(first_at, first_op)) = order.front() {
        if order.len() > limits.idempotency_keys_max || first_at.0 < horizon {
            order.pop_front();
            remembered.remove(&first_op);
        } else {
            break;
        }
    }
}

/// Forgets the oldest remembered keys up to and including the one of `op`.
pub(crate) fn forget_through(
    remembered: &mut FastMap<OpId, Remembered>,
    order: &mut VecDeque<(Timestamp, OpId)>,
    op: OpId,
) {
    while let Some((_, oldest)) = order.pop_front() {
        remembered.remove(&oldest);
        if oldest == op {
            break;
        }
    }
}

/// An account's remembered keys as a store describes them without holding them: the seq of the
/// oldest (0 if none), how many, and the seq from which they were made without forgetting any
/// (0: none were).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KeyWindow {
    /// The seq of the oldest key (0 if none).
    pub first: u64,
    /// How many keys.
    pub count: u64,
    /// The seq from which keys were made without forgetting the oldest (0: none were).
    pub untrimmed_from: u64,
}

/// One remembered idempotency key as a store keeps it apart from the account: the operation
/// id, and what answers its retry (the request's digest, the outcome, when, and the seq of the
/// record it made).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RememberedKey {
    op: OpId,
    remembered: Remembered,
}

impl RememberedKey {
    /// The operation id.
    pub fn op(&self) -> OpId {
        self.op
    }

    /// The journal sequence number of the record the operation made.
    pub fn seq(&self) -> u64 {
        self.remembered.seq
    }
}

/// `a − b` as a signed number, `None` if it is outside `i128` (for two totals of an account:
/// its posted or available balance).
pub fn signed_diff(a: u128, b: u128) -> Option<i128> {
    if a >= b {
        i128::try_from(a - b).ok()
    } else {
        let magnitude = b - a;
        i128::try_from(magnitude)
            .map(|m| -m)
            .ok()
            .or((magnitude == i128::MIN.unsigned_abs()).then_some(i128::MIN))
    }
}

/// Whether totals keep an account's posted balance and its available balance within `i128`
/// (and their sums within `u128`): what every decision keeps true of the deciding account.
pub(crate) fn totals_fit(credits: u128, debits: u128, pending: u128, credit_limit: u128) -> bool {
    match (
        credits.checked_add(credit_limit),
        debits.checked_add(pending),
    ) {
        (Some(plus), Some(minus)) => {
            signed_diff(credits, debits).is_some() && signed_diff(plus, minus).is_some()
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    /// Calls at one endpoint share its text (one allocation, not one per hold or posting);
    /// the cache is not state: two accounts equal in state compare equal whatever it holds.
    #[test]
    fn holds_and_postings_at_one_endpoint_share_its_text() {
        let mut account = Account::new(AccountId(7), AccountSpec::user());
        let a = account.last_endpoint.share("/v1/chat");
        let b = account.last_endpoint.share("/v1/chat");
        assert!(Arc::ptr_eq(&a, &b));
        let other = account.last_endpoint.share("/v1/embed");
        assert_eq!(&*other, "/v1/embed");
        assert!(!Arc::ptr_eq(&a, &other));
        assert_eq!(account, Account::new(AccountId(7), AccountSpec::user()));
    }
}
