//! The data directory's care: `salvage` (what a damaged directory has at risk, and cutting it
//! back to its last verified record) and `prune` (removing the oldest archived history).

use std::path::PathBuf;

use anyhow::Context as _;
use tally::{DurableStore, Store as _, SyncMode};

use crate::cli::{PruneArgs, SalvageArgs};
use crate::plan::{limits_with_keys, IDEMPOTENCY_KEYS_DEFAULT};
use crate::store::{durable_config, StoreOptions};

fn options(dir: &std::path::Path, keys: Option<usize>) -> StoreOptions {
    StoreOptions {
        dir: Some(dir.to_owned()),
        limits: limits_with_keys(keys.unwrap_or(IDEMPOTENCY_KEYS_DEFAULT)),
        sync: SyncMode::Data,
        segment_bytes_max: None,
        anchor_interval: None,
        postgres: None,
    }
}

/// `salvage`: prints the report; with `--truncate`, salvages. `Ok(false)` when the directory
/// needs salvage and `--truncate` was not given (exit 1), `Ok(true)` when nothing is at risk
/// or the salvage succeeded.
pub fn salvage(args: &SalvageArgs) -> anyhow::Result<bool> {
    let report = tally_store::salvage::inspect(&args.data_dir)
        .with_context(|| format!("inspecting {}", args.data_dir.display()))?;
    print!("{report}");
    if !report.needed() {
        return Ok(true);
    }
    if !args.truncate {
        println!("nothing changed (pass --truncate to cut the ledger back)");
        return Ok(false);
    }
    let copy = match &args.copy_to {
        Some(copy) => copy.clone(),
        None => default_copy(&args.data_dir)?,
    };
    let config = durable_config(
        &args.data_dir,
        &options(&args.data_dir, args.idempotency_keys),
    );
    let done = tally_store::salvage::salvage(config, &copy)
        .with_context(|| format!("salvaging {}", args.data_dir.display()))?;
    match done {
        Some(done) => {
            println!(
                "salvaged: the untouched directory is in {}; the ledger now ends at seq {} \
                 ({} records replayed into new snapshots, {} accounts)",
                done.copy.display(),
                done.kept_through,
                done.recovery.records_replayed,
                done.recovery.accounts
            );
            if done.used_recorded_limits {
                println!(
                    "the snapshots were rebuilt with the limits the ledger recorded, not \
                     --idempotency-keys"
                );
            }
            Ok(true)
        }
        None => {
            println!("nothing to salvage any more");
            Ok(true)
        }
    }
}

fn default_copy(dir: &std::path::Path) -> anyhow::Result<PathBuf> {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let name = dir
        .file_name()
        .with_context(|| format!("{} has no file name to derive a copy's", dir.display()))?;
    let mut copy_name = name.to_owned();
    copy_name.push(format!(".salvaged-{secs}"));
    Ok(dir.with_file_name(copy_name))
}

/// `prune`: opens the store, prunes, closes it.
pub fn prune(args: &PruneArgs) -> anyhow::Result<bool> {
    let config = durable_config(
        &args.data_dir,
        &options(&args.data_dir, args.idempotency_keys),
    );
    let (store, _) = DurableStore::open(config)
        .with_context(|| format!("opening the store in {}", args.data_dir.display()))?;
    let pruned = match (args.before_seq, args.older_than_days) {
        (Some(seq), _) => store.prune_history(seq),
        (None, Some(days)) => {
            let now_ms = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
                .unwrap_or(0);
            let cutoff = now_ms.saturating_sub(days.saturating_mul(86_400_000));
            store.prune_history_older_than(tally::Timestamp(cutoff))
        }
        (None, None) => {
            let _ = store.close();
            anyhow::bail!("say where to cut: --before-seq or --older-than-days")
        }
    };
    let closed = store.close();
    let pruned = pruned.context("pruning the history")?;
    closed.context("closing the store")?;
    println!(
        "pruned {} archived segment(s), {} records touching {} account(s); history now starts \
         after seq {}",
        pruned.segments, pruned.records, pruned.accounts, pruned.pruned_through
    );
    Ok(true)
}
