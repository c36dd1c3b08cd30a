//! The embedding API: [`Tally`], a cheap `Clone + Send + Sync` handle.
//!
//! Every call goes through one private path ([`Tally::call`]): admission, then a message to
//! the account's actor through the routing map (activating the account on a miss), then its
//! reply, then a wait until the record it produced (or the state it read) is durable. Only
//! then does it return `Ok`.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::oneshot;

use tally_core::{
    AccountId, AccountSpec, Amount, AuditReport, Balance, Command, Hold, HoldId, OpId, Origin,
    Outcome, PostingId, Request, Timestamp, TokenId, Usage, CHECK_MINIMUM_DEFAULT,
};
use tally_store::{DurableConfig, DurableRecovery, DurableStore, HistoryEntry, MemStore, Store};

use crate::error::unexpected;
use crate::guard::HoldGuard;
use crate::mailbox::{Answer, Msg, Query, Reply};
use crate::shared::Shared;
use crate::supervisor::{self, ROUTE_ATTEMPTS};
use crate::{EngineConfig, Error};

/// An open of an account in progress; the claim ends when it drops.
struct Opening<'a>(&'a Shared, AccountId);

impl Drop for Opening<'_> {
    fn drop(&mut self) {
        self.0.opening.remove(&self.1);
    }
}

/// Opening an account that exists: `Ok` with the same spec, else `AccountExists` naming the
/// first field that differs.
fn same_spec(id: AccountId, existing: &AccountSpec, spec: &AccountSpec) -> Result<(), Error> {
    let field = if existing.kind != spec.kind {
        Some("kind")
    } else if existing.credit_limit != spec.credit_limit {
        Some("credit_limit")
    } else if existing.flags != spec.flags {
        Some("flags")
    } else {
        None
    };
    match field {
        None => Ok(()),
        Some(field) => Err(tally_core::Error::AccountExists { account: id, field }.into()),
    }
}

/// How long (ms) activating an account past the hard resident bound waits for eviction.
pub const RESIDENT_WAIT_MS: u32 = 100;

/// Requests one [`Tally::submit`] takes at most (TigerBeetle's clients send up to 8,189).
pub const SUBMIT_BATCH_MAX: usize = 8_192;

/// The most history entries one page returns.
pub const HISTORY_PAGE_MAX: usize = 1_000;

/// A handle to a running engine. Cloning is cheap; every clone drives the same engine. When the
/// last clone is dropped the engine's actors stop without saving (as a crash would: the journal
/// is the truth); call [`Tally::shutdown`] to drain and snapshot first.
#[derive(Clone)]
pub struct Tally {
    pub(crate) shared: Arc<Shared>,
    _life: Arc<Life>,
    /// Who asks, for the requests made through this handle (see [`Tally::with_origin`]).
    origin: Origin,
}

struct Life {
    shared: Arc<Shared>,
}

impl Drop for Life {
    fn drop(&mut self) {
        stop_all(&self.shared);
    }
}

/// Stops the engine's tasks: without a route (the only senders) each actor ends once its
/// mailbox is empty; the supervisor and the event publisher stop.
fn stop_all(shared: &Shared) {
    shared.shutting_down.store(true, Ordering::Release);
    shared.events.stop.notify_one();
    shared.stop.notify_one();
    shared.routes.clear();
    shared.acks.close();
}

/// A reservation request: hold `amount` of `account` for work `app` is about to do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReserveRequest {
    /// The user account.
    pub account: AccountId,
    /// The app's revenue account (credited by the commit).
    pub app: AccountId,
    /// The amount to hold, in the ledger unit.
    pub amount: u64,
    /// How long the hold lives before it is voided automatically.
    pub timeout: Duration,
    /// The app's endpoint.
    pub endpoint: String,
    /// Caller's metadata.
    pub metadata: String,
    /// The user's spend token the app presents (it must be one of `account`'s).
    pub token: Option<TokenId>,
}

impl ReserveRequest {
    /// A request with a 60-second timeout and empty endpoint and metadata.
    pub fn new(account: AccountId, app: AccountId, amount: u64) -> Self {
        ReserveRequest {
            account,
            app,
            amount,
            timeout: Duration::from_secs(60),
            endpoint: String::new(),
            metadata: String::new(),
            token: None,
        }
    }
    /// With a timeout.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }
    /// With an endpoint.
    pub fn endpoint(mut self, endpoint: impl Into<String>) -> Self {
        self.endpoint = endpoint.into();
        self
    }
    /// With metadata.
    pub fn metadata(mut self, metadata: impl Into<String>) -> Self {
        self.metadata = metadata.into();
        self
    }
    /// Made with a spend token: the hold must fit its app, endpoint, expiry and cap.
    pub fn token(mut self, token: TokenId) -> Self {
        self.token = Some(token);
        self
    }
}

/// What a commit did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Committed {
    /// The posting made (refunds name it).
    pub posting: PostingId,
    /// The amount posted to the app.
    pub amount_posted: Amount,
    /// The amount released back to the user.
    pub amount_released: Amount,
}

/// What an extension did (see [`Tally::extend`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Extended {
    /// What the hold holds in all now (before any settlement).
    pub amount: Amount,
    /// When it expires now.
    pub expires_at: Timestamp,
}

/// What a settlement did (see [`Tally::settle`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Settled {
    /// The posting made (refunds name it).
    pub posting: PostingId,
    /// The amount posted to the app.
    pub amount_posted: Amount,
    /// What the hold still holds.
    pub amount_held: Amount,
}

/// One page of an account's history.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HistoryPage {
    /// Records that touched the account, oldest first.
    pub entries: Vec<HistoryEntry>,
    /// Pass as `after_seq` for the next page; `None` when this page is the last.
    pub next_after_seq: Option<u64>,
    /// Records up to this seq were pruned (0: none): the history starts after them, asked
    /// for or not.
    pub pruned_through: u64,
}

fn amount(value: u64) -> Result<Amount, Error> {
    Ok(Amount::new(value)?)
}

/// A commit's answer (`Committed`), or `Internal` for any other outcome.
pub(crate) fn committed(outcome: Outcome) -> Result<Committed, Error> {
    match outcome {
        Outcome::Committed {
            posting,
            amount_posted,
            amount_released,
        } => Ok(Committed {
            posting,
            amount_posted,
            amount_released,
        }),
        other => Err(unexpected(other)),
    }
}

/// A settlement's answer (`Settled`), or `Internal` for any other outcome.
pub(crate) fn settled(outcome: Outcome) -> Result<Settled, Error> {
    match outcome {
        Outcome::Settled {
            posting,
            amount_posted,
            amount_held,
        } => Ok(Settled {
            posting,
            amount_posted,
            amount_held,
        }),
        other => Err(unexpected(other)),
    }
}

impl Tally {
    /// An engine on a fresh in-memory store (nothing survives the process).
    pub async fn in_memory() -> Result<Tally, Error> {
        let config = EngineConfig::default();
        Tally::open(Arc::new(MemStore::new(config.limits.clone())), config).await
    }

    /// Opens an engine on the durable store in `dir` (journal + snapshot database), recovering it.
    pub async fn open_durable(
        dir: impl Into<std::path::PathBuf>,
        config: EngineConfig,
    ) -> Result<(Tally, DurableRecovery), Error> {
        let mut store_config = DurableConfig::new(dir);
        store_config.limits = config.limits.clone();
        let (store, recovery) =
            tokio::task::spawn_blocking(move || DurableStore::open(store_config))
                .await
                .map_err(|e| Error::Internal {
                    reason: format!("opening the store: {e}").into(),
                })??;
        Ok((Tally::open(Arc::new(store), config).await?, recovery))
    }

    /// Opens an engine on `store`, recovering the accounts it knows.
    pub async fn open(store: Arc<dyn Store>, config: EngineConfig) -> Result<Tally, Error> {
        let started = std::time::Instant::now();
        let shared = Arc::new(Shared::new(store, config)?);
        supervisor::start(shared.clone());
        tokio::spawn(crate::events::publisher(
            shared.events.clone(),
            shared.store.durable(),
        ));
        tracing::info!(
            accounts = shared.directory.len(),
            elapsed_ms = started.elapsed().as_millis() as u64,
            "tally engine open"
        );
        Ok(Tally {
            _life: Arc::new(Life {
                shared: shared.clone(),
            }),
            shared,
            origin: Origin::default(),
        })
    }

    /// A handle to the same engine whose requests say they come from `origin` (service, app,
    /// user): every record they make carries it, for the audit trail and events.
    pub fn with_origin(&self, origin: Origin) -> Tally {
        Tally {
            origin,
            ..self.clone()
        }
    }

    /// The origin of this handle's requests.
    pub fn origin(&self) -> &Origin {
        &self.origin
    }

    pub(crate) fn request(&self, op: OpId, command: Command) -> Request {
        Request {
            op,
            command,
            origin: self.origin.clone(),
        }
    }

    /// Opens an account. Opening an account that exists with the same spec succeeds and changes
    /// nothing; with a different spec it is `AccountExists` naming the field.
    pub async fn open_account(&self, id: AccountId, spec: AccountSpec) -> Result<(), Error> {
        self.admit()?;
        // Opened by another node sharing the store: the same spec is no change here either.
        self.learn(id).await?;
        // One open of an id at a time: claim it (waiting for another open of it to finish),
        // then look at the directory; the append happens under no lock a request waits on.
        let _claim = loop {
            if let Some(existing) = self.shared.directory.get(&id).map(|e| *e) {
                return same_spec(id, &existing, &spec);
            }
            match self.shared.opening.entry(id) {
                dashmap::Entry::Vacant(vacant) => {
                    vacant.insert(());
                    break Opening(&self.shared, id);
                }
                dashmap::Entry::Occupied(_) => {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
            }
        };
        if let Some(existing) = self.shared.directory.get(&id).map(|e| *e) {
            return same_spec(id, &existing, &spec);
        }
        let record = tally_core::Account::open_record(id, spec, self.shared.config.clock.now());
        let seq = self.shared.store.append(&record)?;
        self.shared.directory.insert(id, spec);
        self.shared.wait_durable(seq).await?;
        // Its first snapshot, so the journal need not keep the Opened record of an account that
        // is never used (the store never replaces a newer snapshot with this one); written on
        // a blocking thread.
        if let Some(account) = tally_core::Account::from_open_record(&record, seq) {
            let store = self.shared.store.clone();
            tokio::task::spawn_blocking(move || store.save(&account))
                .await
                .map_err(|e| Error::Internal {
                    reason: format!("saving a new account: {e}").into(),
                })??;
        }
        Ok(())
    }

    /// Issues a spend token: lets `app` hold or charge up to `cap` of `account` (a user) in
    /// all, at `endpoint` only (empty: any), for `ttl`. The cap is checked in the same decision
    /// as each hold or charge made with it, so concurrent uses can never together pass it.
    pub async fn issue_token(
        &self,
        op: OpId,
        account: AccountId,
        app: AccountId,
        cap: u64,
        ttl: Duration,
        endpoint: impl Into<String>,
    ) -> Result<(TokenId, Timestamp), Error> {
        let command = Command::IssueToken {
            app,
            cap: amount(cap)?,
            ttl_ms: u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX),
            endpoint: endpoint.into(),
        };
        match self.execute(account, self.request(op, command)).await? {
            Outcome::TokenIssued { token, expires_at } => Ok((token, expires_at)),
            other => Err(unexpected(other)),
        }
    }

    /// Revokes a spend token at once (holds made with it stand).
    pub async fn revoke_token(&self, op: OpId, token: TokenId) -> Result<(), Error> {
        let command = Command::RevokeToken { token: token.seq };
        match self
            .execute(token.account, self.request(op, command))
            .await?
        {
            Outcome::TokenRevoked { .. } => Ok(()),
            other => Err(unexpected(other)),
        }
    }

    /// Credits `account` from the funding account `from` (a top-up).
    pub async fn fund(
        &self,
        op: OpId,
        account: AccountId,
        from: AccountId,
        value: u64,
    ) -> Result<(), Error> {
        let command = Command::Fund {
            from,
            amount: amount(value)?,
        };
        match self.execute(account, self.request(op, command)).await? {
            Outcome::Funded => Ok(()),
            other => Err(unexpected(other)),
        }
    }

    /// Whether `available ≥ minimum` (default 100 µ¢): the seeds' `get_funding_allowed`.
    pub async fn check(&self, account: AccountId, minimum: Option<u64>) -> Result<bool, Error> {
        let minimum = minimum
            .map(amount)
            .transpose()?
            .unwrap_or(CHECK_MINIMUM_DEFAULT);
        match self.read(account, || Query::Check(minimum)).await? {
            Answer::Check(ok) => {
                let durable = self.shared.durable.borrow().seq;
                self.shared.events.publish_read(
                    durable,
                    crate::Event {
                        seq: 0,
                        at: self.shared.config.clock.now(),
                        origin: self.origin.clone(),
                        kind: crate::EventKind::CheckAvailable {
                            account,
                            minimum: minimum.get(),
                            allowed: ok,
                        },
                    },
                );
                Ok(ok)
            }
            _ => Err(Error::Internal {
                reason: "unexpected answer to check".into(),
            }),
        }
    }

    /// Holds funds for work in progress; returns the hold, which a commit or void resolves.
    pub async fn reserve(&self, op: OpId, request: ReserveRequest) -> Result<HoldId, Error> {
        let token = match request.token {
            Some(t) if t.account != request.account => {
                return Err(tally_core::Error::UnknownToken { token: t }.into())
            }
            t => t.map(|t| t.seq),
        };
        let command = Command::Reserve {
            app: request.app,
            amount: amount(request.amount)?,
            timeout_ms: u64::try_from(request.timeout.as_millis()).unwrap_or(u64::MAX),
            endpoint: request.endpoint,
            metadata: request.metadata,
            token,
        };
        match self
            .execute(request.account, self.request(op, command))
            .await?
        {
            Outcome::Reserved { hold, .. } => Ok(hold),
            other => Err(unexpected(other)),
        }
    }

    /// Reserves and returns a guard (the seeds' delegated transfer): do the work, then
    /// [`HoldGuard::commit`] the actual cost; if the guard is dropped unresolved (an error, a
    /// panic, an early return) the hold is voided at once, so nobody pays for failed work.
    pub async fn hold(&self, op: OpId, request: ReserveRequest) -> Result<HoldGuard, Error> {
        let held = amount(request.amount)?;
        let hold = self.reserve(op, request).await?;
        Ok(HoldGuard::new(self.clone(), hold, held, op))
    }

    /// Posts `actual ≤ held` of a hold to its app and releases the rest.
    pub async fn commit(&self, op: OpId, hold: HoldId, actual: u64) -> Result<Committed, Error> {
        self.commit_with_usage(op, hold, actual, Usage::default())
            .await
    }

    /// [`Tally::commit`] recording what the work used (for usage tracking).
    pub async fn commit_with_usage(
        &self,
        op: OpId,
        hold: HoldId,
        actual: u64,
        usage: Usage,
    ) -> Result<Committed, Error> {
        let command = Command::Commit {
            hold,
            amount: amount(actual)?,
            usage,
        };
        committed(
            self.execute(hold.account, self.request(op, command))
                .await?,
        )
    }

    /// Commits a pending hold's estimate: the call ended without reported usage, so all the
    /// hold still holds is posted, marked estimated (the posting's `estimate`), to be corrected
    /// once with [`Tally::correct`]. Refused as a commit is (`UnknownHold`, `HoldExpired`,
    /// `HoldAlreadyResolved`).
    pub async fn commit_estimate(&self, op: OpId, hold: HoldId) -> Result<Committed, Error> {
        let command = Command::CommitEstimate { hold };
        committed(
            self.execute(hold.account, self.request(op, command))
                .await?,
        )
    }

    /// Corrects an estimated posting once to what the call cost: `actual` µ¢, or (`None`, for a
    /// metered hold's estimate) the cost of `usage` at the price the hold was quoted at, with
    /// its settled parts. Down, the difference goes back to the account from the app; up, the
    /// account pays it (`InsufficientFunds` when it cannot: nothing changes, and the estimate
    /// may be corrected later). Returns (what the estimate posted, what the posting is now).
    /// Refused: `AlreadyCorrected`, `InvalidCorrection` (not an estimate, refunded in part, no
    /// price to price usage with), `UnknownPosting`.
    pub async fn correct(
        &self,
        op: OpId,
        posting: PostingId,
        actual: Option<u64>,
        usage: Usage,
    ) -> Result<(Amount, Amount), Error> {
        let command = Command::Correct {
            posting,
            amount: actual.map(amount).transpose()?,
            usage,
        };
        match self
            .execute(posting.account, self.request(op, command))
            .await?
        {
            Outcome::Corrected {
                estimated, amount, ..
            } => Ok((estimated, amount)),
            other => Err(unexpected(other)),
        }
    }

    /// Raises a pending hold by `more` while its work runs (a streaming call), and, with a
    /// `timeout`, moves its deadline to at least that far from now. Refused, changing nothing,
    /// as a reserve of `more` would be: `InsufficientFunds`, a spend cap, the hold's spend
    /// token's cap or expiry; the caller stops the work at that point. `more` may be zero
    /// when a timeout is given.
    pub async fn extend(
        &self,
        op: OpId,
        hold: HoldId,
        more: u64,
        timeout: Option<Duration>,
    ) -> Result<Extended, Error> {
        let timeout_ms = match timeout {
            None => 0,
            Some(t) => u64::try_from(t.as_millis()).unwrap_or(u64::MAX).max(1),
        };
        let command = Command::Extend {
            hold,
            amount: amount(more)?,
            timeout_ms,
        };
        match self
            .execute(hold.account, self.request(op, command))
            .await?
        {
            Outcome::Extended { amount, expires_at } => Ok(Extended { amount, expires_at }),
            other => Err(unexpected(other)),
        }
    }

    /// Posts `part` of a pending hold to its app now (a delivered chunk of a stream); the
    /// hold stays pending with the rest, and the final [`Tally::commit`] posts what is left to
    /// post (zero allowed once a part was settled) and releases the remainder.
    pub async fn settle(
        &self,
        op: OpId,
        hold: HoldId,
        part: u64,
        usage: Usage,
    ) -> Result<Settled, Error> {
        let command = Command::Settle {
            hold,
            amount: amount(part)?,
            usage,
        };
        settled(
            self.execute(hold.account, self.request(op, command))
                .await?,
        )
    }

    /// Releases a hold entirely; returns the amount released.
    pub async fn void(&self, op: OpId, hold: HoldId) -> Result<Amount, Error> {
        let command = Command::Void { hold };
        match self
            .execute(hold.account, self.request(op, command))
            .await?
        {
            Outcome::Voided { amount_released } => Ok(amount_released),
            other => Err(unexpected(other)),
        }
    }

    /// Charges a fixed cost in one step (reserve and commit together).
    pub async fn charge(
        &self,
        op: OpId,
        account: AccountId,
        app: AccountId,
        value: u64,
        endpoint: impl Into<String>,
    ) -> Result<PostingId, Error> {
        self.charge_with(op, account, app, value, endpoint, String::new())
            .await
    }

    /// [`Tally::charge`] recording what the work used (for usage tracking).
    pub async fn charge_with_usage(
        &self,
        op: OpId,
        account: AccountId,
        app: AccountId,
        value: u64,
        endpoint: impl Into<String>,
        usage: Usage,
    ) -> Result<PostingId, Error> {
        self.charge_full(
            op,
            account,
            app,
            value,
            endpoint.into(),
            String::new(),
            usage,
        )
        .await
    }

    /// [`Tally::charge`] with metadata.
    pub async fn charge_with(
        &self,
        op: OpId,
        account: AccountId,
        app: AccountId,
        value: u64,
        endpoint: impl Into<String>,
        metadata: impl Into<String>,
    ) -> Result<PostingId, Error> {
        let (endpoint, metadata) = (endpoint.into(), metadata.into());
        self.charge_full(
            op,
            account,
            app,
            value,
            endpoint,
            metadata,
            Usage::default(),
        )
        .await
    }

    #[allow(clippy::too_many_arguments)]
    async fn charge_full(
        &self,
        op: OpId,
        account: AccountId,
        app: AccountId,
        value: u64,
        endpoint: String,
        metadata: String,
        usage: Usage,
    ) -> Result<PostingId, Error> {
        let command = Command::Charge {
            app,
            amount: amount(value)?,
            endpoint,
            metadata,
            usage,
            token: None,
        };
        match self.execute(account, self.request(op, command)).await? {
            Outcome::Charged { posting } => Ok(posting),
            other => Err(unexpected(other)),
        }
    }

    /// Returns up to what remains refundable of a posting from its app to the user.
    pub async fn refund(&self, op: OpId, posting: PostingId, value: u64) -> Result<(), Error> {
        let command = Command::Refund {
            posting,
            amount: amount(value)?,
        };
        match self
            .execute(posting.account, self.request(op, command))
            .await?
        {
            Outcome::Refunded { .. } => Ok(()),
            other => Err(unexpected(other)),
        }
    }

    /// Moves posted funds from one account to another.
    pub async fn transfer(
        &self,
        op: OpId,
        from: AccountId,
        to: AccountId,
        value: u64,
    ) -> Result<(), Error> {
        let command = Command::Transfer {
            to,
            amount: amount(value)?,
        };
        match self.execute(from, self.request(op, command)).await? {
            Outcome::Transferred => Ok(()),
            other => Err(unexpected(other)),
        }
    }

    /// Executes any write request on the account that must execute it (see [`Command`]).
    ///
    /// If the account's actor fails (a bug) with the request in its mailbox, the request is
    /// answered `Unavailable` (it may or may not have been decided: retry it with the same
    /// `op`, which replays it if it was).
    pub async fn execute(&self, account: AccountId, request: Request) -> Result<Outcome, Error> {
        if let Some(other) = request.command.counterparty() {
            if self.shared.store.shares_directory() {
                self.learn(other).await?;
            }
        }
        // Moved into the message, not copied: a write is sent once.
        let mut request = Some(Box::new(request));
        self.call(account, |reply| {
            request
                .take()
                .map(|request| Msg::Execute { request, reply })
        })
        .await
    }

    /// Executes a batch of write requests, each on the account that must execute it, and
    /// answers each in the batch's order, as [`Tally::execute`] would have answered it alone.
    /// The requests are independent: one refused changes nothing for the others. Requests on
    /// one account execute in the batch's order. Every request is in its account's mailbox
    /// before the first answer is awaited, so each actor drains its share in one turn, and the
    /// batch waits once for durability (one group commit for many requests).
    ///
    /// At most [`SUBMIT_BATCH_MAX`] requests; a larger batch, like one that does not fit in
    /// what the engine admits now, is refused whole (nothing executed): `BatchTooLarge`, or
    /// `Overloaded { scope: "engine" }`. A request whose account's mailbox is full answers
    /// `Overloaded { scope: "account" }` (the others go on). If the journal fails while the
    /// batch waits, every request not yet durable answers `StorageFailed` (and was not
    /// acknowledged); those durable before the failure keep their outcome.
    pub async fn submit(
        &self,
        requests: Vec<(AccountId, Request)>,
    ) -> Result<Vec<Result<Outcome, Error>>, Error> {
        if requests.len() > SUBMIT_BATCH_MAX {
            return Err(Error::BatchTooLarge {
                len: requests.len(),
                max: SUBMIT_BATCH_MAX,
            });
        }
        if requests.is_empty() {
            return Ok(Vec::new());
        }
        self.admit()?;
        let count = u32::try_from(requests.len()).unwrap_or(u32::MAX);
        let _permits = self
            .shared
            .admission
            .clone()
            .try_acquire_many_owned(count)
            .map_err(|_| Error::Overloaded {
                scope: "engine",
                limit: self.shared.config.inflight_max,
            })?;
        if self.shared.store.shares_directory() {
            for (account, request) in &requests {
                self.learn(*account).await?;
                if let Some(other) = request.command.counterparty() {
                    self.learn(other).await?;
                }
            }
        }
        // Grouped by account in the batch's order: one message per account, every one sent
        // before the first answer is awaited (no await in between).
        let mut groups: Vec<(AccountId, Vec<usize>, Vec<Request>)> = Vec::new();
        let mut group_of: std::collections::HashMap<AccountId, usize> =
            std::collections::HashMap::new();
        for (index, (account, request)) in requests.into_iter().enumerate() {
            let group = *group_of.entry(account).or_insert_with(|| {
                groups.push((account, Vec::new(), Vec::new()));
                groups.len() - 1
            });
            if let Some((_, indexes, requests)) = groups.get_mut(group) {
                indexes.push(index);
                requests.push(request);
            }
        }
        let mut sent = Vec::with_capacity(groups.len());
        for (account, indexes, requests) in groups {
            let (reply, answer) = oneshot::channel();
            let msg = Msg::ExecuteMany { requests, reply };
            let routed = supervisor::route(&self.shared, account, msg);
            sent.push((account, indexes, routed.map(|()| answer)));
        }
        let mut replies: Vec<Option<Reply<Outcome>>> = (0..count).map(|_| None).collect();
        for (account, indexes, routed) in sent {
            let answered = match routed {
                Err(e) => Err(e),
                // Its actor ended before answering (it failed): what it had decided replays
                // by its idempotency keys when retried.
                Ok(answer) => answer.await.map_err(|_| Error::Unavailable {
                    account,
                    attempts: 1,
                }),
            };
            match answered {
                Ok(answered) => {
                    for (index, reply) in indexes.into_iter().zip(answered) {
                        if let Some(slot) = replies.get_mut(index) {
                            *slot = Some(reply);
                        }
                    }
                }
                Err(e) => {
                    for index in indexes {
                        if let Some(slot) = replies.get_mut(index) {
                            *slot = Some(Reply::err(e.clone()));
                        }
                    }
                }
            }
        }
        let replies: Vec<Reply<Outcome>> = replies
            .into_iter()
            .map(|r| {
                r.unwrap_or_else(|| {
                    Reply::err(Error::Internal {
                        reason: "a batch request went unanswered".into(),
                    })
                })
            })
            .collect();
        let last = replies.iter().map(|r| r.wait_seq).max().unwrap_or(0);
        let failure = self.shared.wait_durable(last).await.err();
        let durable = self.shared.durable.borrow().seq;
        Ok(replies
            .into_iter()
            .map(|reply| match &failure {
                Some(e) if reply.wait_seq > durable => Err(e.clone()),
                _ => reply.result,
            })
            .collect())
    }

    /// The account's balance: posted, pending and available.
    pub async fn balance(&self, account: AccountId) -> Result<Balance, Error> {
        match self.read(account, || Query::Balance).await? {
            Answer::Balance(balance) => Ok(balance),
            _ => Err(Error::Internal {
                reason: "unexpected answer to balance".into(),
            }),
        }
    }

    /// A hold, pending or recently resolved.
    pub async fn get_hold(&self, hold: HoldId) -> Result<Hold, Error> {
        match self.read(hold.account, || Query::Hold(hold.seq)).await? {
            Answer::Hold(Some(found)) => Ok(found),
            Answer::Hold(None) => Err(tally_core::Error::UnknownHold { hold }.into()),
            _ => Err(Error::Internal {
                reason: "unexpected answer to hold".into(),
            }),
        }
    }

    /// The outcome of an operation `account` executed, if it still remembers its id (within
    /// the idempotency retention): how a client or a crash test confirms an operation landed.
    pub async fn find_op(&self, account: AccountId, op: OpId) -> Result<Option<Outcome>, Error> {
        match self.read(account, || Query::Op(op)).await? {
            Answer::Op(found) => Ok(found),
            _ => Err(Error::Internal {
                reason: "unexpected answer to find_op".into(),
            }),
        }
    }

    /// The account's full state (holds, postings, totals).
    pub async fn account(&self, account: AccountId) -> Result<tally_core::Account, Error> {
        match self.read(account, || Query::State).await? {
            Answer::State(state) => Ok(*state),
            _ => Err(Error::Internal {
                reason: "unexpected answer to state".into(),
            }),
        }
    }

    /// A page of the records that touched `account` after `after_seq` (0 for the first page),
    /// at most `limit` (capped at [`HISTORY_PAGE_MAX`]).
    pub async fn history(
        &self,
        account: AccountId,
        after_seq: u64,
        limit: usize,
    ) -> Result<HistoryPage, Error> {
        if !self.shared.directory.contains_key(&account) {
            return Err(tally_core::Error::UnknownAccount { account }.into());
        }
        let limit = limit.clamp(1, HISTORY_PAGE_MAX);
        let durable = self.shared.durable.borrow().seq;
        let mut entries = self.shared.store.history(account, after_seq, limit + 1)?;
        // Read after the entries: a prune that raced the read shows here.
        let pruned_through = self.shared.store.history_base(account)?.pruned_through;
        entries.retain(|e| e.seq <= durable);
        let next_after_seq = if entries.len() > limit {
            entries.truncate(limit);
            entries.last().map(|e| e.seq)
        } else {
            None
        };
        Ok(HistoryPage {
            entries,
            next_after_seq,
            pruned_through,
        })
    }

    /// Runs what is due for every resident account now: due holds expire, expired grants go
    /// back to their funding accounts, allowances issue their period's grant (the timers do
    /// this on their own; this is for a [`crate::ManualClock`] moved by a test). Returns how
    /// many records it made.
    pub async fn expire_due(&self) -> Result<usize, Error> {
        self.admit()?;
        let routes: Vec<_> = self
            .shared
            .routes
            .iter()
            .map(|r| r.value().clone())
            .collect();
        let mut answers = Vec::with_capacity(routes.len());
        for route in routes {
            let (reply, answer) = oneshot::channel();
            // An actor gone meanwhile has nothing due: it ran its due work before leaving.
            if route.tx.send(Msg::Due { reply }).await.is_ok() {
                answers.push(answer);
            }
        }
        let (mut made, mut seq) = (0, 0);
        for answer in answers {
            if let Ok(reply) = answer.await {
                made += reply.result?;
                seq = seq.max(reply.wait_seq);
            }
        }
        self.shared.wait_durable(seq).await?;
        Ok(made)
    }

    /// Totals over every account and a check of every invariant. Call it at a quiescent point
    /// (no request in flight): it reads accounts one by one.
    pub async fn audit(&self) -> Result<AuditReport, Error> {
        // One account at a time: a million accounts are audited without holding them all.
        let ids: Vec<AccountId> = self.shared.directory.iter().map(|e| *e.key()).collect();
        let mut auditor = tally_core::Auditor::default();
        let mut stored = Vec::new();
        for id in ids {
            if self.shared.routes.contains_key(&id) {
                match self.read(id, || Query::AsItStands).await {
                    Ok(Answer::State(account)) => auditor.add(&account),
                    // Its shard moved to another node meanwhile (a cluster).
                    Err(Error::NotOwner { .. }) => auditor.elsewhere(),
                    Err(e) => return Err(e),
                    Ok(_) => {
                        return Err(Error::Internal {
                            reason: "unexpected answer to an audit read".into(),
                        })
                    }
                }
            } else {
                stored.push(id);
            }
        }
        // The others from the store, a chunk at a time on a blocking thread (store reads are
        // blocking I/O; a chunk bounds the accounts held at once).
        for chunk in stored.chunks(crate::supervisor::CHECKPOINT_CHUNK) {
            let store = self.shared.store.clone();
            let chunk = chunk.to_vec();
            // A store shared by several nodes refuses the accounts another node serves: each
            // node audits its own (see `AuditReport::elsewhere`).
            let accounts = tokio::task::spawn_blocking(move || {
                let mut elsewhere = 0u64;
                let mut accounts = Vec::new();
                for id in chunk {
                    match store.load(id) {
                        Ok(Some(account)) => accounts.push(account),
                        Ok(None) => {}
                        Err(tally_store::StoreError::NotOwner { .. }) => elsewhere += 1,
                        Err(e) => return Err(e),
                    }
                }
                Ok((accounts, elsewhere))
            })
            .await
            .map_err(|e| Error::Internal {
                reason: format!("auditing: {e}").into(),
            })??;
            let (accounts, elsewhere) = accounts;
            for account in &accounts {
                auditor.add(account);
            }
            for _ in 0..elsewhere {
                auditor.elsewhere();
            }
        }
        Ok(auditor.finish())
    }

    /// Why the engine fail-stopped (a write or sync failed and writes are refused until it is
    /// reopened), or `None` while it accepts writes.
    pub fn storage_failed(&self) -> Option<Arc<str>> {
        self.shared.durable.borrow().failed.clone()
    }

    /// The durable journal's running totals (appended and durable sequence numbers, groups,
    /// records, time writing and syncing), for metrics; `None` on the in-memory store.
    pub fn journal_stats(&self) -> Option<tally_store::journal::JournalStats> {
        self.shared.store.journal_stats()
    }

    /// Accounts resident now.
    pub fn resident_accounts(&self) -> usize {
        self.shared.routes.len()
    }

    /// Accounts known.
    pub fn known_accounts(&self) -> usize {
        self.shared.directory.len()
    }

    /// Every account known, with what it was opened with, in no particular order (a copy of
    /// the directory: one entry per account, taken without loading any account).
    pub fn accounts(&self) -> Vec<(AccountId, AccountSpec)> {
        self.shared
            .directory
            .iter()
            .map(|e| (*e.key(), *e.value()))
            .collect()
    }

    /// What an account was opened with, if it exists.
    pub fn spec(&self, account: AccountId) -> Option<AccountSpec> {
        self.shared.directory.get(&account).map(|e| *e.value())
    }

    /// The engine's clock reading.
    pub fn now(&self) -> Timestamp {
        self.shared.config.clock.now()
    }

    /// Stops accepting requests, waits for those in flight, snapshots every resident account and
    /// stops the actors.
    pub async fn shutdown(self) -> Result<(), Error> {
        self.shared.shutting_down.store(true, Ordering::Release);
        let all = u32::try_from(self.shared.config.inflight_max).unwrap_or(u32::MAX);
        let _drained = self.shared.admission.acquire_many(all).await;
        // Every resident account's snapshot, once durable, then the journal trimmed.
        let result = supervisor::checkpoint(&self.shared, true).await.map(drop);
        stop_all(&self.shared);
        // The store closes now, not when the last handle drops: the directory is free for a
        // new engine as soon as this returns, and other handles get `Shutdown`.
        let store = self.shared.store.clone();
        let closed = tokio::task::spawn_blocking(move || store.close())
            .await
            .map_err(|e| Error::Internal {
                reason: format!("closing the store: {e}").into(),
            })
            .and_then(|closed| closed.map_err(Error::from));
        result.and(closed)
    }

    /// Checkpoints now (as the supervisor does every `checkpoint_interval`): saves the snapshot
    /// of every resident account changed since its last one whose state is durable, then lets
    /// the store archive the journal it no longer needs (and save its usage aggregates). Use it
    /// before a backup. Runs on a blocking thread; returns how many snapshots were saved.
    pub async fn checkpoint(&self) -> Result<usize, Error> {
        self.admit()?;
        supervisor::checkpoint(&self.shared, false).await
    }

    /// Test hook: makes the account's actor panic, as a bug would (feature `testing`).
    #[cfg(feature = "testing")]
    #[doc(hidden)]
    pub async fn inject_panic(&self, account: AccountId) -> Result<(), Error> {
        supervisor::route(&self.shared, account, Msg::Panic)
    }

    /// Admission of one request: refused while shutting down or past the engine's limit; the
    /// permit is held until the request is answered (its durability wait included).
    fn admit_request(&self) -> Result<tokio::sync::OwnedSemaphorePermit, Error> {
        self.admit()?;
        self.shared
            .admission
            .clone()
            .try_acquire_owned()
            .map_err(|_| Error::Overloaded {
                scope: "engine",
                limit: self.shared.config.inflight_max,
            })
    }

    pub(crate) fn admit(&self) -> Result<(), Error> {
        if self.shared.shutting_down.load(Ordering::Acquire) {
            return Err(Error::Shutdown);
        }
        Ok(())
    }

    pub(crate) async fn read(
        &self,
        account: AccountId,
        query: impl Fn() -> Query,
    ) -> Result<Answer, Error> {
        self.call(account, |reply| {
            Some(Msg::Read {
                query: Box::new(query()),
                reply,
            })
        })
        .await
    }

    /// Whether `id` is an account, asking the store when the directory does not have it: a
    /// store shared by several nodes knows accounts another node opened after this engine
    /// read the directory, and those join it. Without such a store the directory has every
    /// account, and the answer is the directory's (a write's path asks nothing more).
    async fn learn(&self, id: AccountId) -> Result<bool, Error> {
        if !self.shared.store.shares_directory() {
            return Ok(self.shared.directory.contains_key(&id));
        }
        if self.shared.directory.contains_key(&id) {
            return Ok(true);
        }
        let store = self.shared.store.clone();
        let found = tokio::task::spawn_blocking(move || store.find_account(id))
            .await
            .map_err(|e| Error::Internal {
                reason: format!("looking {id} up: {e}").into(),
            })??;
        Ok(match found {
            Some(spec) => {
                self.shared.directory.entry(id).or_insert(spec);
                true
            }
            None => false,
        })
    }

    /// The one path of every call: admission, the message to the account's actor (re-routed
    /// if the actor ended before answering), then a wait until what the reply reflects is
    /// durable.
    async fn call<T>(
        &self,
        account: AccountId,
        make: impl FnMut(oneshot::Sender<Reply<T>>) -> Option<Msg>,
    ) -> Result<T, Error> {
        let _permit = self.admit_request()?;
        let reply = self.ask(account, make).await?;
        self.shared.wait_durable(reply.wait_seq).await?;
        reply.result
    }

    /// Sends a message made by `make` to the account's actor and waits for its reply,
    /// sending it again if the actor ended first (it failed: a new one reloads the account).
    ///
    /// Activating an account while `resident_max + resident_max / 2` are resident waits for
    /// the supervisor's eviction, up to [`RESIDENT_WAIT_MS`] ms, then is
    /// `Overloaded { scope: "resident accounts" }`.
    ///
    /// `make` makes the message for each attempt; `None` (a write, which is sent once) ends
    /// the attempts with `Unavailable`.
    async fn ask<R>(
        &self,
        account: AccountId,
        mut make: impl FnMut(oneshot::Sender<R>) -> Option<Msg>,
    ) -> Result<R, Error> {
        let (mut attempts, mut waited_ms, mut learned) = (0, 0, false);
        loop {
            let (reply, answer) = oneshot::channel();
            let Some(mut msg) = make(reply) else {
                return Err(Error::Unavailable { account, attempts });
            };
            // Past the hard resident bound: the same message again once eviction made room.
            loop {
                let Err(refused) = supervisor::route_or_return(&self.shared, account, msg) else {
                    break;
                };
                match *refused {
                    (
                        Error::Overloaded {
                            scope: "resident accounts",
                            ..
                        },
                        back,
                    ) if waited_ms < RESIDENT_WAIT_MS => {
                        waited_ms += 1;
                        msg = back;
                        tokio::time::sleep(Duration::from_millis(1)).await;
                    }
                    (e @ Error::Ledger(tally_core::Error::UnknownAccount { .. }), back)
                        if !learned =>
                    {
                        learned = true;
                        if !self.learn(account).await? {
                            return Err(e);
                        }
                        msg = back;
                    }
                    (e, _) => return Err(e),
                }
            }
            if let Ok(reply) = answer.await {
                return Ok(reply);
            }
            attempts += 1;
            if attempts >= ROUTE_ATTEMPTS {
                return Err(Error::Unavailable { account, attempts });
            }
            tokio::task::yield_now().await;
        }
    }
}
