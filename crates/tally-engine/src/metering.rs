//! Metering on top of the ledger: the price catalog, the seeds' cost-service calls, and the
//! metered call guard.
//!
//! A service written against the seeds' cost service moves to tally one call for one call:
//! `get_funding_allowed({minimum})` is [`Tally::funding_allowed`], `record_cost({cost})` is
//! [`Tally::record_cost`], and a variable-cost call is [`Tally::meter`] + [`MeterGuard::finish`].
//!
//! The catalog is configuration, not ledger state: the service registers its prices when it
//! starts ([`Tally::set_price`]); they are not journaled.

use std::time::Duration;

use tally_core::{AccountId, Amount, OpId, PostingId, Price, PricingError, Usage};

use crate::{Committed, Error, HoldGuard, ReserveRequest, Tally};

/// Why a metered call could not be priced.
impl From<PricingError> for Error {
    fn from(e: PricingError) -> Self {
        Error::Pricing(e)
    }
}

/// A metered call in progress: the hold sized from the most the call can cost, and the price
/// that turns its actual usage into a cost.
pub struct MeterGuard {
    hold: HoldGuard,
    price: Price,
}

impl MeterGuard {
    /// The hold behind the call.
    pub fn hold(&self) -> &HoldGuard {
        &self.hold
    }

    /// Commits the priced cost of `usage` (at most what was held). Dropping the guard instead
    /// voids the hold: nobody pays for failed work.
    pub async fn finish(&mut self, op: OpId, usage: &Usage) -> Result<Committed, Error> {
        let cost = self.price.cost(usage)?;
        self.hold.commit(op, cost.get()).await
    }
}

impl Tally {
    /// Sets the price of an app's endpoint (replacing any earlier one).
    pub fn set_price(&self, app: AccountId, endpoint: impl Into<String>, price: Price) {
        self.shared.prices.insert((app, endpoint.into()), price);
    }

    /// The price of an app's endpoint.
    pub fn price(&self, app: AccountId, endpoint: &str) -> Option<Price> {
        self.shared
            .prices
            .get(&(app, endpoint.to_string()))
            .map(|p| p.clone())
    }

    /// The most a call can cost (from its largest possible usage: its maximum tokens, say), to
    /// size the hold; and, after the work, what it did cost.
    pub fn quote(&self, app: AccountId, endpoint: &str, usage: &Usage) -> Result<Amount, Error> {
        let price = self.price(app, endpoint).ok_or_else(|| Error::NoPrice {
            app,
            endpoint: endpoint.to_string(),
        })?;
        Ok(price.cost(usage)?)
    }

    /// The seeds' `get_funding_allowed({ minimum })`: whether `available ≥ minimum` (default
    /// 100 µ¢).
    pub async fn funding_allowed(
        &self,
        account: AccountId,
        minimum: Option<u64>,
    ) -> Result<bool, Error> {
        self.check(account, minimum).await
    }

    /// The seeds' `record_cost({ cost })`: charge a cost the work already incurred.
    pub async fn record_cost(
        &self,
        op: OpId,
        account: AccountId,
        cost: u64,
        app: AccountId,
        endpoint: impl Into<String>,
    ) -> Result<PostingId, Error> {
        self.charge(op, account, app, cost, endpoint).await
    }

    /// Starts a metered call: holds the cost of `max_usage` at the endpoint's price, and returns
    /// the guard whose [`MeterGuard::finish`] commits the cost of the actual usage.
    pub async fn meter(
        &self,
        op: OpId,
        account: AccountId,
        app: AccountId,
        endpoint: &str,
        max_usage: &Usage,
        timeout: Duration,
    ) -> Result<MeterGuard, Error> {
        let price = self.price(app, endpoint).ok_or_else(|| Error::NoPrice {
            app,
            endpoint: endpoint.to_string(),
        })?;
        let estimate = price.cost(max_usage)?;
        let request = ReserveRequest::new(account, app, estimate.get())
            .timeout(timeout)
            .endpoint(endpoint);
        let hold = self.hold(op, request).await?;
        Ok(MeterGuard { hold, price })
    }
}
