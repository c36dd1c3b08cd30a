//! Requests, their outcomes, and the journal record every state change is.

use serde::{Deserialize, Serialize};

use crate::{
    AccountId, AccountSpec, Amount, HoldId, OpId, PolicySetting, PostingId, Price, Timestamp,
    TokenId, Usage,
};

/// A write request: a caller-chosen operation id (the idempotency key), what to do, and who
/// asked.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Request {
    /// The idempotency key: the same id with the same command returns the first outcome.
    pub op: OpId,
    /// What to do.
    pub command: Command,
    /// Who asked (kept in the record for the audit trail; not part of the idempotency check, so
    /// a retry from another instance of the same service is still a retry).
    pub origin: Origin,
}

impl Request {
    /// A request with no origin.
    pub fn new(op: OpId, command: Command) -> Self {
        Request {
            op,
            command,
            origin: Origin::default(),
        }
    }
}

/// Who asked for a change: the calling service, the app it acted for and the end user, as the
/// caller names them (each at most [`crate::Limits::origin_bytes_max`] bytes; empty when not
/// given). Every journal record carries one.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Origin {
    /// The calling service (e.g. `"ai-router"`).
    pub service: String,
    /// The app the call was for (e.g. `"chat"`).
    pub app: String,
    /// The end user, in the caller's terms (e.g. a user id or name).
    pub user: String,
}

impl Origin {
    /// An origin from its three parts.
    pub fn new(
        service: impl Into<String>,
        app: impl Into<String>,
        user: impl Into<String>,
    ) -> Self {
        Origin {
            service: service.into(),
            app: app.into(),
            user: user.into(),
        }
    }
}

/// A write, executed by one account's actor: the user account for fund, reserve, commit, void,
/// charge and refund; the source account for a transfer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    /// Credit this account from a funding account (a top-up).
    Fund {
        /// The funding account debited.
        from: AccountId,
        /// The amount.
        amount: Amount,
    },
    /// Hold `amount` of this account's available funds for work an app is about to do.
    Reserve {
        /// The app's revenue account, credited by the commit.
        app: AccountId,
        /// The amount to hold (the estimate, or the most the work can cost).
        amount: Amount,
        /// How long the hold lives before it is voided automatically.
        timeout_ms: u64,
        /// The app's endpoint.
        endpoint: String,
        /// Caller's metadata (opaque).
        metadata: String,
        /// The spend token (its sequence number in this account) the app presents, whose cap,
        /// expiry, app and endpoint the hold must fit.
        token: Option<u64>,
    },
    /// Post `amount ≤ held` of a hold to its app and release the rest.
    Commit {
        /// The hold.
        hold: HoldId,
        /// The actual cost.
        amount: Amount,
        /// What the work used (for usage tracking; all zero when not metered).
        usage: Usage,
    },
    /// Release a hold entirely.
    Void {
        /// The hold.
        hold: HoldId,
    },
    /// Raise a pending hold by `amount` while its work runs (a streaming call that needs
    /// more), and, with `timeout_ms > 0`, move its deadline to at least `timeout_ms` from now.
    /// Refused like a reserve of `amount` would be (available funds, spend caps, the hold's
    /// spend token): the caller stops the work there.
    Extend {
        /// The hold.
        hold: HoldId,
        /// How much more to hold (may be zero when only the deadline moves).
        amount: Amount,
        /// The new timeout from now (0: keep the deadline).
        timeout_ms: u64,
    },
    /// Hold the cost of `max_usage` at the price the catalog has for `app`'s `endpoint` (its
    /// version and itself, given by the engine from the app's catalog), and keep that price with
    /// the hold, so that [`Command::Finish`] prices the actual usage with it even if the
    /// catalog changes meanwhile. The price is not part of the idempotency check (a retry
    /// after a price change is still the same request).
    ReserveMetered {
        /// The app's revenue account.
        app: AccountId,
        /// The priced endpoint.
        endpoint: String,
        /// The largest usage the call can have: its cost is held.
        max_usage: Usage,
        /// How long the hold lives before it is voided automatically.
        timeout_ms: u64,
        /// Caller's metadata (opaque).
        metadata: String,
        /// The spend token presented.
        token: Option<u64>,
        /// The price quoted, as the catalog had it.
        price: Box<PinnedPrice>,
    },
    /// Settle a metered hold by usage: the call used `usage` more since its last part; post the
    /// cost of all its usage so far at the pinned price, minus what was posted (so the cost is
    /// rounded once over the whole call, not per part). The hold stays pending.
    Progress {
        /// The hold.
        hold: HoldId,
        /// The usage since the last part.
        usage: Usage,
    },
    /// Commit a metered hold: post the cost of all its usage (the parts settled plus `usage`,
    /// the rest of it) at the price pinned when it was made, minus what was posted (at most
    /// what it still holds), and release the rest.
    Finish {
        /// The hold.
        hold: HoldId,
        /// What the call used.
        usage: Usage,
    },
    /// Set (or, with `None`, remove) the price of one of this app's endpoints in its catalog:
    /// a new version of the entry, journaled like every change.
    SetPrice {
        /// The endpoint.
        endpoint: String,
        /// The price (`None`: the endpoint is no longer priced).
        price: Option<Price>,
    },
    /// Post part of a pending hold to its app now (a chunk of a stream delivered); the hold
    /// stays pending with the rest. The final commit posts what is left to post and releases
    /// the remainder.
    Settle {
        /// The hold.
        hold: HoldId,
        /// The amount to post (at most what the hold still holds).
        amount: Amount,
        /// What this part of the work used.
        usage: Usage,
    },
    /// Reserve and commit in one step (fixed-cost work).
    Charge {
        /// The app's revenue account.
        app: AccountId,
        /// The amount.
        amount: Amount,
        /// The app's endpoint.
        endpoint: String,
        /// Caller's metadata (opaque).
        metadata: String,
        /// What the work used (for usage tracking; all zero when not metered).
        usage: Usage,
        /// The spend token the app presents (see `Reserve`).
        token: Option<u64>,
    },
    /// Return part or all of a posting from its app to this account.
    Refund {
        /// The posting.
        posting: PostingId,
        /// The amount to return.
        amount: Amount,
    },
    /// Move posted funds from this account to another.
    Transfer {
        /// The account credited.
        to: AccountId,
        /// The amount.
        amount: Amount,
    },
    /// The seeds' `record_funding_update({ old_amount, new_amount })`: set the account's total
    /// funding (everything funded into it, see [`crate::Account::funded`]) from `old` to `new`,
    /// crediting the difference from (or returning it to) the funding account `from`. Refused
    /// unless `old` is the current total: an optimistic check.
    UpdateFunding {
        /// The funding account on the other side.
        from: AccountId,
        /// What the caller believes the total funding is now (a total: it may pass
        /// [`Amount::MAX`]; the difference `new − old` may not).
        old: u128,
        /// The total funding wanted.
        new: u128,
    },
    /// Issue a spend token: let `app` hold or charge up to `cap` of this account in all, at
    /// `endpoint` only (empty: any), for `ttl_ms`.
    IssueToken {
        /// The app (its revenue account, or another user).
        app: AccountId,
        /// The most the token lets be held and posted.
        cap: Amount,
        /// How long it lives.
        ttl_ms: u64,
        /// The endpoint it is limited to (empty: any).
        endpoint: String,
    },
    /// Revoke a spend token at once (holds already made with it stand).
    RevokeToken {
        /// The token's sequence number in this account.
        token: u64,
    },
    /// Change one setting of this account's policy (see [`crate::AccountPolicy`]): a new
    /// version of it, journaled like every change.
    SetPolicy {
        /// The setting.
        setting: PolicySetting,
    },
    /// Commit a pending hold's estimate: the call ended without reported usage, so all it still
    /// holds is posted, marked estimated, to be corrected once later ([`Command::Correct`]).
    CommitEstimate {
        /// The hold.
        hold: HoldId,
    },
    /// Correct an estimated posting once, up or down, to what the call really cost: `amount`,
    /// or (without it, for a metered hold's estimate) the cost of `usage` at the price the hold
    /// was quoted at, priced as the hold's final part would have been. Down returns the
    /// difference from the app (a debit it may not refuse, as a refund); up posts it to the app
    /// (refused with `InsufficientFunds` when the account cannot pay it: nothing changes, the
    /// estimate stands and may be corrected later).
    Correct {
        /// The estimated posting.
        posting: PostingId,
        /// What the call cost (`None`: by usage at the pinned price).
        amount: Option<Amount>,
        /// What the call used (priced when `amount` is `None`; counted in usage either way).
        usage: Usage,
    },
    /// Issue a prepaid credit grant to this user account from a funding account: a credit
    /// consumed before the account's general balance, in the order of [`crate::Grant`], until
    /// it expires (what is left of it then goes back to `from`).
    Grant {
        /// The funding account debited.
        from: AccountId,
        /// The amount granted.
        amount: Amount,
        /// Lower numbers are consumed first.
        priority: u32,
        /// How long it lasts (0: it never expires).
        ttl_ms: u64,
        /// What it is for (at most [`crate::GRANT_LABEL_MAX`] bytes).
        label: String,
    },
    /// Set (or, with `None`, remove) this user account's recurring allowance: the engine issues
    /// a grant of its amount from its funding account at the start of each of its periods (the
    /// current one at once), expiring at the period's end.
    SetAllowance {
        /// The allowance.
        allowance: Option<crate::Allowance>,
    },
}

impl Command {
    /// The other account this command names directly, which must exist (and be of the right
    /// kind) for it to succeed. Commit and refund name theirs through the hold or posting.
    pub fn counterparty(&self) -> Option<AccountId> {
        match self {
            Command::Fund { from, .. } => Some(*from),
            Command::Reserve { app, .. } | Command::Charge { app, .. } => Some(*app),
            Command::Transfer { to, .. } => Some(*to),
            Command::UpdateFunding { from, .. } | Command::Grant { from, .. } => Some(*from),
            Command::IssueToken { app, .. } => Some(*app),
            Command::SetAllowance { allowance } => allowance.as_ref().map(|a| a.from),
            Command::Commit { .. }
            | Command::Void { .. }
            | Command::Extend { .. }
            | Command::Settle { .. }
            | Command::Finish { .. }
            | Command::Progress { .. }
            | Command::SetPrice { .. }
            | Command::Refund { .. }
            | Command::RevokeToken { .. }
            | Command::SetPolicy { .. }
            | Command::CommitEstimate { .. }
            | Command::Correct { .. } => None,
            Command::ReserveMetered { app, .. } => Some(*app),
        }
    }

    /// The command's name.
    pub fn name(&self) -> &'static str {
        match self {
            Command::Fund { .. } => "fund",
            Command::Reserve { .. } => "reserve",
            Command::Commit { .. } => "commit",
            Command::Void { .. } => "void",
            Command::Charge { .. } => "charge",
            Command::Refund { .. } => "refund",
            Command::Transfer { .. } => "transfer",
            Command::UpdateFunding { .. } => "update_funding",
            Command::IssueToken { .. } => "issue_token",
            Command::RevokeToken { .. } => "revoke_token",
            Command::Extend { .. } => "extend",
            Command::Settle { .. } => "settle",
            Command::ReserveMetered { .. } => "reserve_metered",
            Command::Finish { .. } => "finish",
            Command::SetPrice { .. } => "set_price",
            Command::Progress { .. } => "progress",
            Command::SetPolicy { .. } => "set_policy",
            Command::CommitEstimate { .. } => "commit_estimate",
            Command::Correct { .. } => "correct",
            Command::Grant { .. } => "grant",
            Command::SetAllowance { .. } => "set_allowance",
        }
    }

    fn kind_index(&self) -> u8 {
        match self {
            Command::Fund { .. } => 0,
            Command::Reserve { .. } => 1,
            Command::Commit { .. } => 2,
            Command::Void { .. } => 3,
            Command::Charge { .. } => 4,
            Command::Refund { .. } => 5,
            Command::Transfer { .. } => 6,
            Command::UpdateFunding { .. } => 7,
            Command::IssueToken { .. } => 8,
            Command::RevokeToken { .. } => 9,
            Command::Extend { .. } => 10,
            Command::Settle { .. } => 11,
            Command::ReserveMetered { .. } => 12,
            Command::Finish { .. } => 13,
            Command::SetPrice { .. } => 14,
            Command::Progress { .. } => 15,
            Command::SetPolicy { .. } => 16,
            Command::CommitEstimate { .. } => 17,
            Command::Correct { .. } => 18,
            Command::Grant { .. } => 19,
            Command::SetAllowance { .. } => 20,
        }
    }

    /// A compact fingerprint of the command's content: its kind and one number per field (text
    /// fields hashed), enough to tell a retry from a different request and to name the field that
    /// differs, without keeping the request's text in memory.
    pub(crate) fn digest(&self) -> Digest {
        // A token field is its sequence number + 1 (0: none).
        let token_field = |t: &Option<u64>| t.map_or(0, |t| t.saturating_add(1));
        let fields: [u64; 6] = match self {
            Command::Fund { from, amount } => [from.0, amount.get(), 0, 0, 0, 0],
            Command::Reserve {
                app,
                amount,
                timeout_ms,
                endpoint,
                metadata,
                token,
            } => [
                app.0,
                amount.get(),
                *timeout_ms,
                text_hash(endpoint),
                text_hash(metadata),
                token_field(token),
            ],
            Command::Commit {
                hold,
                amount,
                usage,
            } => [
                hold.account.0,
                hold.seq,
                amount.get(),
                usage_hash(usage),
                0,
                0,
            ],
            Command::Void { hold } => [hold.account.0, hold.seq, 0, 0, 0, 0],
            Command::Charge {
                app,
                amount,
                endpoint,
                metadata,
                usage,
                token,
            } => [
                app.0,
                amount.get(),
                text_hash(endpoint),
                text_hash(metadata),
                usage_hash(usage),
                token_field(token),
            ],
            Command::Refund { posting, amount } => {
                [posting.account.0, posting.seq, amount.get(), 0, 0, 0]
            }
            Command::Transfer { to, amount } => [to.0, amount.get(), 0, 0, 0, 0],
            // Totals are u128: the low words where a u64 sat, the high words after.
            Command::UpdateFunding { from, old, new } => [
                from.0,
                *old as u64,
                *new as u64,
                (*old >> 64) as u64,
                (*new >> 64) as u64,
                0,
            ],
            Command::IssueToken {
                app,
                cap,
                ttl_ms,
                endpoint,
            } => [app.0, cap.get(), *ttl_ms, text_hash(endpoint), 0, 0],
            Command::RevokeToken { token } => [*token, 0, 0, 0, 0, 0],
            Command::Extend {
                hold,
                amount,
                timeout_ms,
            } => [hold.account.0, hold.seq, amount.get(), *timeout_ms, 0, 0],
            Command::Settle {
                hold,
                amount,
                usage,
            } => [
                hold.account.0,
                hold.seq,
                amount.get(),
                usage_hash(usage),
                0,
                0,
            ],
            Command::ReserveMetered {
                app,
                endpoint,
                max_usage,
                timeout_ms,
                metadata,
                token,
                // Not the price: it is the engine's quote, not the request's content.
                price: _,
            } => [
                app.0,
                text_hash(endpoint),
                usage_hash(max_usage),
                *timeout_ms,
                text_hash(metadata),
                token_field(token),
            ],
            Command::Finish { hold, usage } | Command::Progress { hold, usage } => {
                [hold.account.0, hold.seq, usage_hash(usage), 0, 0, 0]
            }
            Command::SetPrice { endpoint, price } => [
                text_hash(endpoint),
                price.as_ref().map_or(0, price_hash),
                0,
                0,
                0,
                0,
            ],
            Command::SetPolicy { setting } => policy_fields(setting),
            Command::CommitEstimate { hold } => [hold.account.0, hold.seq, 0, 0, 0, 0],
            Command::Correct {
                posting,
                amount,
                usage,
            } => [
                posting.account.0,
                posting.seq,
                amount.map_or(0, |a| a.get().saturating_add(1)),
                usage_hash(usage),
                0,
                0,
            ],
            Command::Grant {
                from,
                amount,
                priority,
                ttl_ms,
                label,
            } => [
                from.0,
                amount.get(),
                u64::from(*priority),
                *ttl_ms,
                text_hash(label),
                0,
            ],
            Command::SetAllowance { allowance } => match allowance {
                None => [0; 6],
                Some(a) => [
                    a.from.0.saturating_add(1),
                    a.amount.get(),
                    period_hash(&a.period),
                    u64::from(a.priority),
                    text_hash(&a.label),
                    0,
                ],
            },
        };
        Digest {
            kind: self.kind_index(),
            fields,
        }
    }
}

/// Field names of each command kind, in [`Command::digest`]'s order.
const DIGEST_FIELDS: [[&str; 6]; 21] = [
    ["from", "amount", "", "", "", ""],
    [
        "app",
        "amount",
        "timeout_ms",
        "endpoint",
        "metadata",
        "token",
    ],
    ["hold", "hold", "amount", "usage", "", ""],
    ["hold", "hold", "", "", "", ""],
    ["app", "amount", "endpoint", "metadata", "usage", "token"],
    ["posting", "posting", "amount", "", "", ""],
    ["to", "amount", "", "", "", ""],
    ["from", "old", "new", "old", "new", ""],
    ["app", "cap", "ttl_ms", "endpoint", "", ""],
    ["token", "", "", "", "", ""],
    ["hold", "hold", "amount", "timeout_ms", "", ""],
    ["hold", "hold", "amount", "usage", "", ""],
    [
        "app",
        "endpoint",
        "max_usage",
        "timeout_ms",
        "metadata",
        "token",
    ],
    ["hold", "hold", "usage", "", "", ""],
    ["endpoint", "price", "", "", "", ""],
    ["hold", "hold", "usage", "", "", ""],
    [
        "setting",
        "value or requests.per_second",
        "requests.burst",
        "cost.per_second",
        "cost.burst",
        "",
    ],
    ["hold", "hold", "", "", "", ""],
    ["posting", "posting", "amount", "usage", "", ""],
    ["from", "amount", "priority", "ttl_ms", "label", ""],
    ["from", "amount", "period", "priority", "label", ""],
];

/// A period's canonical form, as price and allowance digests take it: its kind (0 day, 1
/// month, 2 every), then, for `every`, its anchor and length.
fn period_words(period: &crate::Period, words: &mut Vec<u64>) {
    match period {
        crate::Period::Day => words.push(0),
        crate::Period::Month => words.push(1),
        crate::Period::Every {
            anchor_ms,
            length_ms,
        } => words.extend([2, *anchor_ms, *length_ms]),
    }
}

/// FNV-1a over a period's canonical form ([`period_words`]).
fn period_hash(period: &crate::Period) -> u64 {
    let mut words = Vec::with_capacity(3);
    period_words(period, &mut words);
    words_hash(&words)
}

/// FNV-1a over words, each little-endian, in order.
fn words_hash(words: &[u64]) -> u64 {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    words
        .iter()
        .flat_map(|w| w.to_le_bytes())
        .fold(OFFSET, |hash, byte| {
            (hash ^ u64::from(byte)).wrapping_mul(PRIME)
        })
}

/// A policy setting as six numbers: its kind, then its values (an amount + 1, 0 for none; a rate
/// as its per second and burst, both at least 1, or 0 and 0 for none).
fn policy_fields(setting: &PolicySetting) -> [u64; 6] {
    let amount = |a: &Option<Amount>| a.map_or(0, |a| a.get().saturating_add(1));
    let rate = |r: Option<crate::TokenRate>| r.map_or((0, 0), |r| (r.per_second, r.burst));
    match setting {
        PolicySetting::SpendCapPerDay(cap) => [1, amount(cap), 0, 0, 0, 0],
        PolicySetting::RateLimit(limit) => {
            let (rps, rb) = rate(limit.requests);
            let (cps, cb) = rate(limit.cost);
            [2, rps, rb, cps, cb, 0]
        }
        PolicySetting::LowBalance(threshold) => [3, amount(threshold), 0, 0, 0, 0],
    }
}

/// FNV-1a (64-bit) of the text: fixed by its specification, so digests stored in snapshots
/// mean the same in every build.
fn text_hash(text: &str) -> u64 {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    text.bytes().fold(OFFSET, |hash, byte| {
        (hash ^ u64::from(byte)).wrapping_mul(PRIME)
    })
}

/// FNV-1a over a usage's fields (little-endian), in declaration order.
fn usage_hash(usage: &Usage) -> u64 {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    // The provider's cost is hashed only when set, so digests stored before it existed still
    // recognize their retries.
    let provider = (usage.provider_cost != 0).then_some(usage.provider_cost);
    [
        usage.requests,
        usage.input_tokens,
        usage.output_tokens,
        usage.characters,
        usage.pages,
        usage.duration_ms,
    ]
    .iter()
    .chain(provider.iter())
    .flat_map(|field| field.to_le_bytes())
    .fold(OFFSET, |hash, byte| {
        (hash ^ u64::from(byte)).wrapping_mul(PRIME)
    })
}

/// FNV-1a over a price's canonical form: its kind, then every rate (amount, per) and tier bound
/// (`u64::MAX` for the open tier) in order, little-endian.
fn price_hash(price: &Price) -> u64 {
    let rate = |r: &crate::Rate| [r.amount, r.per];
    let mut words: Vec<u64> = Vec::new();
    match price {
        Price::PerRequest(amount) => words.extend([0, amount.get()]),
        Price::PerToken { input, output } => {
            words.push(1);
            words.extend(rate(input));
            words.extend(rate(output));
        }
        Price::PerCharacter(r) => {
            words.push(2);
            words.extend(rate(r));
        }
        Price::PerPage(r) => {
            words.push(3);
            words.extend(rate(r));
        }
        Price::PerSecond(r) => {
            words.push(4);
            words.extend(rate(r));
        }
        Price::Tiered { meter, tiers } => {
            words.extend([5, *meter as u64]);
            for tier in tiers {
                words.push(tier.up_to.unwrap_or(u64::MAX));
                words.extend(rate(&tier.rate));
            }
        }
        Price::PeriodTiered {
            meter,
            tiers,
            mode,
            period,
        } => {
            words.extend([6, *meter as u64, *mode as u64]);
            period_words(period, &mut words);
            for tier in tiers {
                words.push(tier.up_to.unwrap_or(u64::MAX));
                words.extend(rate(&tier.rate));
            }
        }
    }
    words_hash(&words)
}

/// A price as an app's catalog had it when a hold was quoted: the entry's version and the
/// price itself.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PinnedPrice {
    /// The catalog entry's version (see [`Change::PriceSet`]).
    pub version: u64,
    /// The price.
    pub price: Price,
}

/// What a metered hold keeps of how it was sized: the largest usage it was quoted for and the
/// price (see [`Command::ReserveMetered`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Metered {
    /// The largest usage the call could have.
    pub max_usage: Usage,
    /// The price pinned.
    pub price: PinnedPrice,
}

/// A command's fingerprint (see [`Command::digest`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Digest {
    kind: u8,
    fields: [u64; 6],
}

impl Digest {
    /// The first field in which `other` differs from `self` (`operation` for another kind of
    /// request), or `None` when they are the same request.
    pub(crate) fn first_difference(&self, other: &Digest) -> Option<&'static str> {
        if self.kind != other.kind {
            return Some("operation");
        }
        let names = DIGEST_FIELDS.get(usize::from(self.kind))?;
        self.fields
            .iter()
            .zip(other.fields.iter())
            .zip(names.iter())
            .find(|((a, b), _)| a != b)
            .map(|(_, name)| *name)
    }
}

/// What a successful write produced. A retry with the same operation id returns the same value.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Outcome {
    /// The account was opened.
    Opened,
    /// The account was credited.
    Funded,
    /// Funds are held.
    Reserved {
        /// The new hold.
        hold: HoldId,
        /// When it expires unless committed or voided.
        expires_at: Timestamp,
        /// What it holds (a metered hold: what its usage can cost at most).
        amount: Amount,
    },
    /// A hold was committed.
    Committed {
        /// The posting made (refund against it).
        posting: PostingId,
        /// The amount posted to the app.
        amount_posted: Amount,
        /// The amount released back to the account.
        amount_released: Amount,
    },
    /// A hold was voided.
    Voided {
        /// The amount released.
        amount_released: Amount,
    },
    /// A hold was raised (or its deadline moved).
    Extended {
        /// What it holds now (in all, before any settlement).
        amount: Amount,
        /// When it expires now.
        expires_at: Timestamp,
    },
    /// A price of the app's catalog was set (or removed).
    PriceSet {
        /// The entry's new version.
        version: u64,
    },
    /// Part of a hold was posted; the hold stays pending.
    Settled {
        /// The posting made (refund against it).
        posting: PostingId,
        /// The amount posted.
        amount_posted: Amount,
        /// What the hold still holds.
        amount_held: Amount,
    },
    /// A hold expired (made by the engine, never by a request).
    Expired {
        /// The amount released.
        amount_released: Amount,
    },
    /// A charge was posted.
    Charged {
        /// The posting made.
        posting: PostingId,
    },
    /// A refund was made.
    Refunded {
        /// The posting refunded.
        posting: PostingId,
    },
    /// A transfer was made.
    Transferred,
    /// The account's total funding was set.
    FundingUpdated {
        /// The total funding now.
        funded: u128,
    },
    /// A spend token was issued.
    TokenIssued {
        /// The token.
        token: TokenId,
        /// When it expires.
        expires_at: Timestamp,
    },
    /// A spend token was revoked.
    TokenRevoked {
        /// The token.
        token: TokenId,
    },
    /// A setting of the account's policy was changed.
    PolicySet {
        /// The policy's new version.
        version: u64,
    },
    /// An estimated posting was corrected.
    Corrected {
        /// The posting.
        posting: PostingId,
        /// What the estimate posted.
        estimated: Amount,
        /// What the posting is now.
        amount: Amount,
    },
    /// A grant was issued.
    GrantIssued {
        /// The grant.
        grant: crate::GrantId,
        /// When it expires (`None`: never).
        expires_at: Option<Timestamp>,
    },
    /// What an expired grant had left went back to its funding account (made by the engine).
    GrantExpired {
        /// The grant.
        grant: crate::GrantId,
        /// The amount given back.
        amount: Amount,
    },
    /// The account's allowance was set or removed.
    AllowanceSet,
}

/// One journal record: one state change of one account (and, for a two-account change, the leg
/// of its counterparty). Records are what the store makes durable and what recovery replays.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    /// The account whose actor made the change.
    pub account: AccountId,
    /// The request's operation id (`None` for changes the engine makes itself: expiry).
    pub op: Option<OpId>,
    /// When the change was made.
    pub at: Timestamp,
    /// Who asked (empty for changes the engine makes itself).
    pub origin: Origin,
    /// What changed.
    pub change: Change,
}

/// What a record changed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Change {
    /// The account was opened.
    Opened {
        /// Its specification.
        spec: AccountSpec,
    },
    /// Credited from a funding account (whose debit is the leg).
    Funded {
        /// The funding account.
        from: AccountId,
        /// The amount.
        amount: Amount,
    },
    /// A hold was made.
    Reserved {
        /// The hold's sequence number in the account.
        hold: u64,
        /// The app.
        app: AccountId,
        /// The amount held.
        amount: Amount,
        /// When it expires.
        expires_at: Timestamp,
        /// The endpoint.
        endpoint: String,
        /// The metadata.
        metadata: String,
        /// The spend token it was made with.
        token: Option<u64>,
        /// For a metered hold: the usage it was sized for and the price pinned.
        metered: Option<Box<Metered>>,
    },
    /// A hold was committed (the app's credit is the leg).
    Committed {
        /// The hold.
        hold: u64,
        /// The app credited.
        app: AccountId,
        /// The amount posted.
        amount_posted: Amount,
        /// The amount released.
        amount_released: Amount,
        /// The posting's sequence number in the account.
        posting: u64,
        /// The hold's endpoint (copied, so usage is tracked from the record alone).
        endpoint: String,
        /// What the work used.
        usage: Usage,
        /// Made by [`Command::Finish`]: the amount is the cost of `usage` at the pinned price.
        metered: bool,
        /// Made by [`Command::CommitEstimate`]: the amount is the estimate (all the hold still
        /// held), to be corrected once.
        #[serde(default)]
        estimated: bool,
        /// For a period-tiered price: the period's use after this call, and any rebate the app
        /// gives back (a volume tier crossed).
        #[serde(default)]
        period: Option<crate::PeriodStep>,
    },
    /// A hold was voided.
    Voided {
        /// The hold.
        hold: u64,
        /// The amount released.
        amount_released: Amount,
    },
    /// A price of this app's catalog was set (`None`: removed), as version `version` of the
    /// entry (versions count up per app from 1).
    PriceSet {
        /// The endpoint.
        endpoint: String,
        /// The price.
        price: Option<Price>,
        /// The entry's version.
        version: u64,
    },
    /// A pending hold was raised by `amount` (zero when only its deadline moved).
    Extended {
        /// The hold.
        hold: u64,
        /// The amount added.
        amount: Amount,
        /// The timeout asked for (0: the deadline kept), as the request gave it.
        timeout_ms: u64,
        /// The deadline after the change.
        expires_at: Timestamp,
        /// What the hold holds in all after it.
        total: Amount,
    },
    /// Part of a pending hold was posted (the app's credit is the leg).
    Settled {
        /// The hold.
        hold: u64,
        /// The app credited.
        app: AccountId,
        /// The amount posted.
        amount: Amount,
        /// The posting's sequence number in the account.
        posting: u64,
        /// The hold's endpoint (copied, so usage is tracked from the record alone).
        endpoint: String,
        /// What this part of the work used.
        usage: Usage,
        /// What the hold still holds after it.
        amount_held: Amount,
        /// Made by [`Command::Progress`]: the amount is priced from the usage.
        metered: bool,
        /// For a period-tiered price: the period's use after this part, and any rebate the app
        /// gives back (a volume tier crossed).
        #[serde(default)]
        period: Option<crate::PeriodStep>,
    },
    /// A hold expired.
    Expired {
        /// The hold.
        hold: u64,
        /// The amount released.
        amount_released: Amount,
    },
    /// A charge (the app's credit is the leg).
    Charged {
        /// The app credited.
        app: AccountId,
        /// The amount.
        amount: Amount,
        /// The endpoint.
        endpoint: String,
        /// The metadata.
        metadata: String,
        /// The posting's sequence number in the account.
        posting: u64,
        /// What the work used.
        usage: Usage,
        /// The spend token it was made with.
        token: Option<u64>,
    },
    /// A refund (the app's debit is the leg).
    Refunded {
        /// The posting's sequence number in the account.
        posting: u64,
        /// The app debited.
        app: AccountId,
        /// The amount returned.
        amount: Amount,
        /// The endpoint the posting paid for (usage reports count the refund there).
        endpoint: String,
    },
    /// A transfer out (the credit of `to` is the leg).
    Transferred {
        /// The account credited.
        to: AccountId,
        /// The amount.
        amount: Amount,
    },
    /// The total funding was set from `old` to `new` (the funding account's debit of
    /// `new − old`, or credit of `old − new`, is the leg).
    FundingUpdated {
        /// The funding account.
        from: AccountId,
        /// The total before.
        old: u128,
        /// The total after.
        new: u128,
    },
    /// A spend token was issued.
    TokenIssued {
        /// Its sequence number in the account.
        token: u64,
        /// The app it lets spend.
        app: AccountId,
        /// Its cap.
        cap: Amount,
        /// When it expires.
        expires_at: Timestamp,
        /// The endpoint it is limited to (empty: any).
        endpoint: String,
    },
    /// A spend token was revoked.
    TokenRevoked {
        /// Its sequence number in the account.
        token: u64,
    },
    /// A setting of the account's policy was changed, as version `version` of it (versions
    /// count up per account from 1).
    PolicySet {
        /// The setting.
        setting: PolicySetting,
        /// The policy's version.
        version: u64,
    },
    /// An estimated posting was corrected from `old` to `new`: the difference moved from the
    /// app back to this account (down) or from this account to the app (up).
    Corrected {
        /// The posting's sequence number in the account.
        posting: u64,
        /// The app.
        app: AccountId,
        /// The endpoint the posting paid for.
        endpoint: String,
        /// What the estimate posted.
        old: Amount,
        /// What the call cost.
        new: Amount,
        /// What the call used.
        usage: Usage,
        /// Whether `new` was priced from `usage` (the request gave no amount).
        by_usage: bool,
    },
    /// A grant was issued from a funding account (whose debit is the leg): by a request, or by
    /// the engine for an allowance's period.
    GrantIssued {
        /// Its sequence number in the account.
        grant: u64,
        /// The funding account.
        from: AccountId,
        /// The amount.
        amount: Amount,
        /// Its priority.
        priority: u32,
        /// When it expires (`None`: never).
        expires_at: Option<Timestamp>,
        /// Its label.
        label: String,
        /// For an allowance's grant: the start (ms) of the period it is for.
        allowance_period: Option<u64>,
    },
    /// What an expired grant had free went back to its funding account (whose credit is the
    /// leg). Made by the engine.
    GrantExpired {
        /// The grant's sequence number in the account.
        grant: u64,
        /// The funding account.
        from: AccountId,
        /// The amount given back.
        amount: Amount,
    },
    /// The account's allowance was set (`None`: removed).
    AllowanceSet {
        /// The allowance.
        allowance: Option<crate::Allowance>,
    },
}

/// What a period step gives back to the account (0 without one).
fn rebate_of(period: &Option<crate::PeriodStep>) -> u128 {
    period.as_ref().map_or(0, |step| step.rebate.wide())
}

/// The counterparty's side of a two-account record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Leg {
    /// The counterparty is credited.
    Credit(AccountId, Amount),
    /// The counterparty is debited.
    Debit(AccountId, Amount),
}

/// How one record changes one account's totals (see [`Record::effect_on`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Effect {
    /// Added to `credits_posted`.
    pub credits: u128,
    /// Added to `debits_posted`.
    pub debits: u128,
    /// Added to `debits_pending` (a hold made).
    pub held: u128,
    /// Taken from `debits_pending` (a hold resolved: posted, voided or expired).
    pub released: u128,
}

impl Effect {
    /// Adds the effect to totals (posted credits, posted debits, pending debits), checked:
    /// `Err` names the total that would pass `u128::MAX` or, for `debits_pending`, release
    /// more than is pending, and then nothing is changed. A decided record never does either;
    /// the error means the totals or the record are damaged.
    pub fn add_to(
        &self,
        credits_posted: &mut u128,
        debits_posted: &mut u128,
        pending: &mut u128,
    ) -> Result<(), &'static str> {
        let credits = credits_posted
            .checked_add(self.credits)
            .ok_or("credits_posted")?;
        let debits = debits_posted
            .checked_add(self.debits)
            .ok_or("debits_posted")?;
        let held = pending
            .checked_add(self.held)
            .and_then(|p| p.checked_sub(self.released))
            .ok_or("debits_pending")?;
        (*credits_posted, *debits_posted, *pending) = (credits, debits, held);
        Ok(())
    }
}

impl Record {
    /// The account the record's leg changes (the counterparty), if it has one.
    pub fn leg_account(&self) -> Option<AccountId> {
        self.leg().map(|leg| match leg {
            Leg::Credit(id, _) | Leg::Debit(id, _) => id,
        })
    }

    /// The counterparty's leg, if the change moved money between two accounts.
    pub fn leg(&self) -> Option<Leg> {
        match &self.change {
            Change::Funded { from, amount } => Some(Leg::Debit(*from, *amount)),
            Change::Committed {
                app,
                amount_posted,
                period,
                ..
            }
            | Change::Settled {
                app,
                amount: amount_posted,
                period,
                ..
            } => match period {
                Some(step) if step.rebate > Amount::ZERO => Some(Leg::Debit(*app, step.rebate)),
                _ => Some(Leg::Credit(*app, *amount_posted)),
            },
            Change::Charged { app, amount, .. } => Some(Leg::Credit(*app, *amount)),
            Change::Refunded { app, amount, .. } => Some(Leg::Debit(*app, *amount)),
            Change::Corrected { app, old, new, .. } => match new.checked_sub(*old) {
                Some(up) if up > Amount::ZERO => Some(Leg::Credit(*app, up)),
                Some(_) => None,
                None => old.checked_sub(*new).map(|down| Leg::Debit(*app, down)),
            },
            Change::Transferred { to, amount } => Some(Leg::Credit(*to, *amount)),
            Change::GrantIssued { from, amount, .. } => Some(Leg::Debit(*from, *amount)),
            Change::GrantExpired { from, amount, .. } => Some(Leg::Credit(*from, *amount)),
            Change::FundingUpdated { from, old, new } => match funding_difference(*old, *new) {
                Some(FundingStep::Up(d)) => Some(Leg::Debit(*from, d)),
                Some(FundingStep::Down(d)) => Some(Leg::Credit(*from, d)),
                None => None,
            },
            Change::Opened { .. }
            | Change::Reserved { .. }
            | Change::Extended { .. }
            | Change::PriceSet { .. }
            | Change::Voided { .. }
            | Change::Expired { .. }
            | Change::TokenIssued { .. }
            | Change::TokenRevoked { .. }
            | Change::PolicySet { .. }
            | Change::AllowanceSet { .. } => None,
        }
    }

    /// How this record changes the totals of `account`: the account that made it, or the
    /// counterparty whose leg it carries; nothing for any other account. The one statement of
    /// each change's arithmetic, used by `apply`, `apply_leg` and balance histories.
    pub fn effect_on(&self, account: AccountId) -> Effect {
        if account != self.account {
            return match self.leg() {
                Some(Leg::Credit(id, amount)) if id == account => Effect {
                    credits: amount.wide(),
                    ..Effect::default()
                },
                Some(Leg::Debit(id, amount)) if id == account => Effect {
                    debits: amount.wide(),
                    ..Effect::default()
                },
                _ => Effect::default(),
            };
        }
        let credits = |amount: &Amount| Effect {
            credits: amount.wide(),
            ..Effect::default()
        };
        let debits = |amount: &Amount| Effect {
            debits: amount.wide(),
            ..Effect::default()
        };
        match &self.change {
            Change::Opened { .. }
            | Change::TokenIssued { .. }
            | Change::TokenRevoked { .. }
            | Change::PriceSet { .. }
            | Change::PolicySet { .. }
            | Change::AllowanceSet { .. } => Effect::default(),
            Change::Funded { amount, .. }
            | Change::Refunded { amount, .. }
            | Change::GrantIssued { amount, .. } => credits(amount),
            Change::GrantExpired { amount, .. } => debits(amount),
            Change::FundingUpdated { old, new, .. } => match funding_difference(*old, *new) {
                Some(FundingStep::Up(up)) => credits(&up),
                Some(FundingStep::Down(down)) => debits(&down),
                None => Effect::default(),
            },
            Change::Reserved { amount, .. } | Change::Extended { amount, .. } => Effect {
                held: amount.wide(),
                ..Effect::default()
            },
            Change::Settled { amount, period, .. } => Effect {
                debits: amount.wide(),
                released: amount.wide(),
                credits: rebate_of(period),
                ..Effect::default()
            },
            Change::Committed {
                amount_posted,
                amount_released,
                period,
                ..
            } => Effect {
                debits: amount_posted.wide(),
                // Two u64 amounts widened: their sum cannot overflow u128.
                released: amount_posted.wide() + amount_released.wide(),
                credits: rebate_of(period),
                ..Effect::default()
            },
            Change::Voided {
                amount_released, ..
            }
            | Change::Expired {
                amount_released, ..
            } => Effect {
                released: amount_released.wide(),
                ..Effect::default()
            },
            Change::Charged { amount, .. } | Change::Transferred { amount, .. } => debits(amount),
            Change::Corrected { old, new, .. } => match new.checked_sub(*old) {
                Some(up) => debits(&up),
                None => old
                    .checked_sub(*new)
                    .map_or(Effect::default(), |down| credits(&down)),
            },
        }
    }

    /// The request that made this record (`None` for opening and expiry).
    pub fn command(&self) -> Option<Command> {
        let account = self.account;
        Some(match &self.change {
            Change::Opened { .. } | Change::Expired { .. } | Change::GrantExpired { .. } => {
                return None
            }
            Change::GrantIssued {
                from,
                amount,
                priority,
                expires_at,
                label,
                ..
            } => Command::Grant {
                from: *from,
                amount: *amount,
                priority: *priority,
                ttl_ms: expires_at.map_or(0, |e| e.0.saturating_sub(self.at.0)),
                label: label.clone(),
            },
            Change::AllowanceSet { allowance } => Command::SetAllowance {
                allowance: allowance.clone(),
            },
            Change::Funded { from, amount } => Command::Fund {
                from: *from,
                amount: *amount,
            },
            Change::Reserved {
                app,
                amount,
                expires_at,
                endpoint,
                metadata,
                token,
                metered,
                ..
            } => {
                let timeout_ms = expires_at.0.saturating_sub(self.at.0);
                match metered {
                    None => Command::Reserve {
                        app: *app,
                        amount: *amount,
                        timeout_ms,
                        endpoint: endpoint.clone(),
                        metadata: metadata.clone(),
                        token: *token,
                    },
                    Some(m) => Command::ReserveMetered {
                        app: *app,
                        endpoint: endpoint.clone(),
                        max_usage: m.max_usage,
                        timeout_ms,
                        metadata: metadata.clone(),
                        token: *token,
                        price: Box::new(m.price.clone()),
                    },
                }
            }
            Change::Committed {
                hold,
                estimated: true,
                ..
            } => Command::CommitEstimate {
                hold: HoldId {
                    account,
                    seq: *hold,
                },
            },
            Change::Committed {
                hold,
                usage,
                metered: true,
                ..
            } => Command::Finish {
                hold: HoldId {
                    account,
                    seq: *hold,
                },
                usage: *usage,
            },
            Change::Committed {
                hold,
                amount_posted,
                usage,
                ..
            } => Command::Commit {
                hold: HoldId {
                    account,
                    seq: *hold,
                },
                amount: *amount_posted,
                usage: *usage,
            },
            Change::PriceSet {
                endpoint, price, ..
            } => Command::SetPrice {
                endpoint: endpoint.clone(),
                price: price.clone(),
            },
            Change::Voided { hold, .. } => Command::Void {
                hold: HoldId {
                    account,
                    seq: *hold,
                },
            },
            Change::Extended {
                hold,
                amount,
                timeout_ms,
                ..
            } => Command::Extend {
                hold: HoldId {
                    account,
                    seq: *hold,
                },
                amount: *amount,
                timeout_ms: *timeout_ms,
            },
            Change::Settled {
                hold,
                usage,
                metered: true,
                ..
            } => Command::Progress {
                hold: HoldId {
                    account,
                    seq: *hold,
                },
                usage: *usage,
            },
            Change::Settled {
                hold,
                amount,
                usage,
                ..
            } => Command::Settle {
                hold: HoldId {
                    account,
                    seq: *hold,
                },
                amount: *amount,
                usage: *usage,
            },
            Change::Charged {
                app,
                amount,
                endpoint,
                metadata,
                usage,
                token,
                ..
            } => Command::Charge {
                app: *app,
                amount: *amount,
                endpoint: endpoint.clone(),
                metadata: metadata.clone(),
                usage: *usage,
                token: *token,
            },
            Change::Refunded {
                posting, amount, ..
            } => Command::Refund {
                posting: PostingId {
                    account,
                    seq: *posting,
                },
                amount: *amount,
            },
            Change::Transferred { to, amount } => Command::Transfer {
                to: *to,
                amount: *amount,
            },
            Change::FundingUpdated { from, old, new } => Command::UpdateFunding {
                from: *from,
                old: *old,
                new: *new,
            },
            Change::TokenIssued {
                app,
                cap,
                expires_at,
                endpoint,
                ..
            } => Command::IssueToken {
                app: *app,
                cap: *cap,
                ttl_ms: expires_at.0.saturating_sub(self.at.0),
                endpoint: endpoint.clone(),
            },
            Change::TokenRevoked { token } => Command::RevokeToken { token: *token },
            Change::PolicySet { setting, .. } => Command::SetPolicy { setting: *setting },
            Change::Corrected {
                posting,
                new,
                usage,
                by_usage,
                ..
            } => Command::Correct {
                posting: PostingId {
                    account,
                    seq: *posting,
                },
                amount: (!by_usage).then_some(*new),
                usage: *usage,
            },
        })
    }

    /// What the change produced, as its request's caller saw it.
    pub fn outcome(&self) -> Outcome {
        let account = self.account;
        match &self.change {
            Change::Opened { .. } => Outcome::Opened,
            Change::Funded { .. } => Outcome::Funded,
            Change::Reserved {
                hold,
                expires_at,
                amount,
                ..
            } => Outcome::Reserved {
                hold: HoldId {
                    account,
                    seq: *hold,
                },
                expires_at: *expires_at,
                amount: *amount,
            },
            Change::Committed {
                amount_posted,
                amount_released,
                posting,
                ..
            } => Outcome::Committed {
                posting: PostingId {
                    account,
                    seq: *posting,
                },
                amount_posted: *amount_posted,
                amount_released: *amount_released,
            },
            Change::Voided {
                amount_released, ..
            } => Outcome::Voided {
                amount_released: *amount_released,
            },
            Change::PriceSet { version, .. } => Outcome::PriceSet { version: *version },
            Change::Extended {
                total, expires_at, ..
            } => Outcome::Extended {
                amount: *total,
                expires_at: *expires_at,
            },
            Change::Settled {
                amount,
                posting,
                amount_held,
                ..
            } => Outcome::Settled {
                posting: PostingId {
                    account,
                    seq: *posting,
                },
                amount_posted: *amount,
                amount_held: *amount_held,
            },
            Change::Expired {
                amount_released, ..
            } => Outcome::Expired {
                amount_released: *amount_released,
            },
            Change::Charged { posting, .. } => Outcome::Charged {
                posting: PostingId {
                    account,
                    seq: *posting,
                },
            },
            Change::Refunded { posting, .. } => Outcome::Refunded {
                posting: PostingId {
                    account,
                    seq: *posting,
                },
            },
            Change::Transferred { .. } => Outcome::Transferred,
            Change::FundingUpdated { new, .. } => Outcome::FundingUpdated { funded: *new },
            Change::TokenIssued {
                token, expires_at, ..
            } => Outcome::TokenIssued {
                token: TokenId {
                    account,
                    seq: *token,
                },
                expires_at: *expires_at,
            },
            Change::TokenRevoked { token } => Outcome::TokenRevoked {
                token: TokenId {
                    account,
                    seq: *token,
                },
            },
            Change::PolicySet { version, .. } => Outcome::PolicySet { version: *version },
            Change::Corrected {
                posting, old, new, ..
            } => Outcome::Corrected {
                posting: PostingId {
                    account,
                    seq: *posting,
                },
                estimated: *old,
                amount: *new,
            },
            Change::GrantIssued {
                grant, expires_at, ..
            } => Outcome::GrantIssued {
                grant: crate::GrantId {
                    account,
                    seq: *grant,
                },
                expires_at: *expires_at,
            },
            Change::GrantExpired { grant, amount, .. } => Outcome::GrantExpired {
                grant: crate::GrantId {
                    account,
                    seq: *grant,
                },
                amount: *amount,
            },
            Change::AllowanceSet { .. } => Outcome::AllowanceSet,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::text_hash;

    #[test]
    fn text_hash_is_fnv1a_so_stored_digests_survive_a_new_build() {
        // Published FNV-1a 64-bit test vectors.
        assert_eq!(text_hash(""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(text_hash("a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(text_hash("foobar"), 0x8594_4171_f739_67e8);
    }
}

/// Which way a funding update moves money, and how much.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FundingStep {
    /// `new > old`: the account is credited the difference.
    Up(Amount),
    /// `new < old`: the account is debited the difference.
    Down(Amount),
}

/// The difference a funding update from `old` to `new` (totals, `u128`) moves: `None` when
/// there is none, or when it does not fit an [`Amount`] (such an update is refused when
/// decided, so a recorded one always has a difference).
pub fn funding_difference(old: u128, new: u128) -> Option<FundingStep> {
    let amount = |d: u128| {
        u64::try_from(d)
            .ok()
            .and_then(|d| Amount::new(d).ok())
            .filter(|d| !d.is_zero())
    };
    if new >= old {
        amount(new - old).map(FundingStep::Up)
    } else {
        amount(old - new).map(FundingStep::Down)
    }
}
