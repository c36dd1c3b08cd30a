//! tally's integration tests: the embedding API end to end, one binary.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod batch;
mod cluster;
mod concurrency;
mod durable;
mod estimate;
mod events;
mod grants;
mod holds;
mod idempotency;
mod lifecycle;
mod limits;
mod metering;
mod operations;
mod pg;
mod props;
mod rejections;
mod streaming;
mod support;
mod tokens;
mod trail;
mod usage;
