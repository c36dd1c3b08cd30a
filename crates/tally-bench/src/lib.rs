//! tally-bench: the load-test program of the tally accounting engine.
//!
//! A benchmark is a program, not a timed test: it reports throughput and latency percentiles
//! with its configuration and the machine, next to ceilings measured in the same run (the
//! disk's fdatasync rate, a group-commit loop, the domain logic alone), and it proves that the
//! ledger it produced balances and recovers exactly. The binary is a thin `main.rs`; everything
//! here is a library so the workload and report code can be unit-tested.
//!
//! - [`cli`]: the command line (`run`, the default, `verify`, `cycles`, `salvage`, `prune`).
//! - [`plan`]: the options resolved against a preset into one [`plan::Plan`].
//! - [`workload`]: the mix, the user picker (uniform or Zipf), pricing models, operation ids.
//! - [`run`]: setup, the clients, the checks (audit, shutdown, reopen, compare).
//! - [`remote`] and [`api`]: the same load against a running tally-server over HTTP, checked
//!   through its API.
//! - [`stats`]: latency histograms and error counts per client, merged at the end.
//! - [`ceiling`]: fdatasync and group-commit rates of the data disk; the core apply loop.
//! - [`acklog`] and [`verify`]: the acknowledgement log a crash test checks against.
//! - [`cycles`]: kill `run` again and again; recovery times, the directory's growth, the check.
//! - [`admin`]: `salvage` and `prune`, the data directory's care.
//! - [`report`]: the report's stable JSON names and its human summary.
//! - [`store`] and [`sys`]: which store a run drives; resident memory.

pub mod acklog;
pub mod admin;
pub mod api;
pub mod ceiling;
pub mod cli;
pub mod cycles;
pub mod plan;
pub mod remote;
pub mod report;
pub mod run;
pub mod stats;
pub mod store;
pub mod sys;
pub mod verify;
pub mod workload;
