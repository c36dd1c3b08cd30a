//! tally-bench's integration tests: the binary itself, killed and verified, and driving a real
//! tally-server over HTTP.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod crash;
mod cycles;
mod faults;
mod http;
mod support;
