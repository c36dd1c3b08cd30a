//! tally-bench's integration tests: the binary itself, killed and verified.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod crash;
