//! tally-server's integration suite: the native API in-process, the Syft SDKs against the real
//! binary.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod api;
mod browser;
mod common;
mod corpus;
mod dashboard;
mod dashboard_load;
mod events;
mod grants;
mod metering;
mod policy;
mod process;
mod sdk;
mod session;
mod shared;
mod syft;
mod tokens;
