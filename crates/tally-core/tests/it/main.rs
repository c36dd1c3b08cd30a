#![allow(clippy::unwrap_used, clippy::expect_used)]
//! tally-core's tests, one binary. Every test drives accounts through [`world::World`], a tiny
//! stand-in for the engine: it decides a request on the executing account, applies the record
//! there and its leg on the counterparty, and journals it with a sequence number, so a test reads
//! as setup, one action, the expected outcome.

mod afford;
mod audit;
mod estimate;
mod grants;
mod idempotency;
mod operations;
mod overflow;
mod period;
mod policy;
mod pricing;
mod rejections;
mod replay;
mod retention;
mod streaming;
mod tokens;
mod usage;
mod world;
