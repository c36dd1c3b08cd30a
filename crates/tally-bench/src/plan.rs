//! A run's plan: the command-line options resolved against the preset's defaults, with every
//! number the load, the engine and the report need.

use std::time::Duration;

use anyhow::{bail, Context as _};
use serde::Serialize;
use tally::{EngineConfig, Limits, SyncMode};

use crate::cli::{Preset, RunArgs, SyncArg};
use crate::workload::{Layout, Mix, Pricing, UserPicker};

/// 1 USD in µ¢.
pub const USD: u64 = 100_000_000;

/// Default user accounts.
pub const ACCOUNTS_DEFAULT: u64 = 10_000;
/// Default concurrent clients.
pub const CLIENTS_DEFAULT: u32 = 64;
/// Most concurrent clients (each is a task with one logical operation in flight).
pub const CLIENTS_MAX: u32 = 65_536;
/// Default duration of the load.
pub const DURATION_DEFAULT: Duration = Duration::from_secs(20);
/// Default share of partial commits.
pub const PARTIAL_COMMIT_DEFAULT: f64 = 0.5;
/// Default idempotency keys per account: large, so that no acknowledged operation id is
/// forgotten during a run or a crash test (the engine's own default is 10,000).
pub const IDEMPOTENCY_KEYS_DEFAULT: usize = 1_000_000;
/// Default seed.
pub const SEED_DEFAULT: u64 = 1;
/// Resident accounts of the many-accounts preset.
pub const MANY_ACCOUNTS_RESIDENT_MAX: usize = 100_000;
/// Most operations in one `/v1/batch` request (the server's default limit).
pub const BATCH_MAX: u32 = 1_000;
/// Most operations in one batch on the embedded engine (`Tally::submit`'s bound).
pub const ENGINE_BATCH_MAX: u32 = 8_192;

/// Everything a run does, resolved.
#[derive(Clone, Debug, Serialize)]
pub struct Plan {
    /// The preset, if one was named.
    pub preset: Option<Preset>,
    /// User accounts.
    pub accounts: u64,
    /// Concurrent clients.
    pub clients: u32,
    /// Load duration in seconds (when not limited by `ops`).
    pub duration_s: Option<f64>,
    /// Logical operations to run (instead of a duration).
    pub ops: Option<u64>,
    /// The mix.
    pub mix: Mix,
    /// Share of partial commits.
    pub partial_commit: f64,
    /// Zipf exponent (0 = uniform).
    pub skew: f64,
    /// Users that receive the load.
    pub hot_accounts: u64,
    /// The pricing model.
    pub pricing: Pricing,
    /// Initial funding of each user, µ¢.
    pub fund_initial_uc: u64,
    /// Top-up after an `InsufficientFunds` answer, µ¢.
    pub topup_uc: u64,
    /// Endpoint named in holds and charges.
    pub endpoint: &'static str,
    /// EngineConfig::resident_max.
    pub resident_max: usize,
    /// Limits::idempotency_keys_max.
    pub idempotency_keys_max: usize,
    /// `durable`, `memory` or `http` (a running tally-server).
    pub store: &'static str,
    /// Writes per request over HTTP: 1 = one request per write, more = `/v1/batch` requests.
    pub batch: u32,
    /// How the journal syncs.
    pub sync: SyncArg,
    /// Seed of the workload's choices.
    pub seed: u64,
}

impl Plan {
    /// Resolves the options: explicit values win over the preset's, which win over the defaults.
    pub fn resolve(args: &RunArgs) -> anyhow::Result<Plan> {
        let mut plan = Plan {
            preset: args.preset,
            accounts: ACCOUNTS_DEFAULT,
            clients: CLIENTS_DEFAULT,
            duration_s: Some(DURATION_DEFAULT.as_secs_f64()),
            ops: None,
            mix: Mix::standard(),
            partial_commit: PARTIAL_COMMIT_DEFAULT,
            skew: 0.0,
            hot_accounts: 0,
            pricing: Pricing::Uniform {
                reserve_min: 10_000,
                reserve_max: 1_000_000,
            },
            fund_initial_uc: 10 * USD,
            topup_uc: 10 * USD,
            endpoint: "/v1/bench",
            resident_max: EngineConfig::default().resident_max,
            idempotency_keys_max: IDEMPOTENCY_KEYS_DEFAULT,
            store: if args.http.is_some() {
                "http"
            } else if args.in_memory {
                "memory"
            } else if args.postgres.is_some() {
                "postgres"
            } else {
                "durable"
            },
            batch: args.batch.unwrap_or(1),
            sync: args.sync,
            seed: SEED_DEFAULT,
        };
        match args.preset {
            None => {}
            Some(Preset::LlmRouter) => {
                plan.mix = "reserve-commit=93,void=5,refund=2".parse()?;
                plan.skew = 1.0;
                plan.pricing = Pricing::Tokens {
                    input_uc_per_token: 200,
                    output_uc_per_token: 600,
                    input_tokens_max: 4_000,
                    output_tokens_max: 4_000,
                };
                plan.endpoint = "/v1/chat/completions";
                // $1 each: the hottest users of the Zipf run dry and are topped up.
                plan.fund_initial_uc = USD;
                plan.topup_uc = USD;
            }
            Some(Preset::SearchApi) => {
                plan.mix = "charge=100".parse()?;
                plan.pricing = Pricing::Fixed { amount: USD / 100 };
                plan.endpoint = "/v1/search";
            }
            Some(Preset::HotWallet) => {
                plan.accounts = 1;
                // $100 lasts a second or two: the wallet runs dry now and then, and every
                // client that hears InsufficientFunds tops it up.
                plan.fund_initial_uc = 100 * USD;
                plan.topup_uc = 100 * USD;
                plan.endpoint = "/v1/wallet";
            }
            Some(Preset::ManyAccounts) => {
                plan.accounts = 1_000_000;
                plan.resident_max = MANY_ACCOUNTS_RESIDENT_MAX;
            }
        }
        if let Some(accounts) = args.accounts {
            plan.accounts = accounts;
        }
        if let Some(clients) = args.clients {
            plan.clients = clients;
        }
        if let Some(ops) = args.ops {
            plan.ops = Some(ops);
            plan.duration_s = None;
        }
        if let Some(duration) = args.duration {
            plan.duration_s = Some(duration.as_secs_f64());
        }
        if let Some(mix) = &args.mix {
            plan.mix = mix.clone();
        }
        if let Some(partial) = args.partial_commit {
            plan.partial_commit = partial;
        }
        if let Some(skew) = args.skew {
            plan.skew = skew;
        }
        if let Some(hot) = args.hot_accounts {
            plan.hot_accounts = hot;
        }
        if let Some(resident) = args.resident_max {
            plan.resident_max = resident;
        }
        if let Some(keys) = args.idempotency_keys {
            plan.idempotency_keys_max = keys;
        }
        if let Some(seed) = args.seed {
            plan.seed = seed;
        }
        plan.validate()?;
        plan.hot_accounts = plan.picker()?.hot();
        Ok(plan)
    }

    fn validate(&self) -> anyhow::Result<()> {
        if self.accounts == 0 {
            bail!("--accounts must be at least 1");
        }
        if self.clients == 0 || self.clients > CLIENTS_MAX {
            bail!("--clients must be 1 to {CLIENTS_MAX}");
        }
        if !(0.0..=1.0).contains(&self.partial_commit) {
            bail!("--partial-commit must be between 0 and 1");
        }
        if self.ops == Some(0) {
            bail!("--ops must be at least 1");
        }
        if self.resident_max == 0 {
            bail!("--resident-max must be at least 1");
        }
        if self.idempotency_keys_max == 0 {
            bail!("--idempotency-keys must be at least 1");
        }
        let batch_max = if self.store == "http" {
            BATCH_MAX
        } else {
            ENGINE_BATCH_MAX
        };
        if self.batch == 0 || self.batch > batch_max {
            bail!("--batch must be 1 to {batch_max} (with this store)");
        }
        if self.store == "http" && self.preset == Some(Preset::ManyAccounts) {
            bail!(
                "--preset many-accounts measures the engine's resident cap, which is the \
                 server's setting over HTTP; use --accounts 1000000 to load that many users"
            );
        }
        Ok(())
    }

    /// The account layout.
    pub fn layout(&self) -> Layout {
        Layout {
            users: self.accounts,
        }
    }

    /// The user picker.
    pub fn picker(&self) -> anyhow::Result<UserPicker> {
        UserPicker::new(self.layout(), self.hot_accounts, self.skew).context("the user picker")
    }

    /// The load's duration, when it is limited by time.
    pub fn duration(&self) -> Option<Duration> {
        self.duration_s.map(Duration::from_secs_f64)
    }

    /// The account limits of the engine and the store.
    pub fn limits(&self) -> Limits {
        limits_with_keys(self.idempotency_keys_max)
    }

    /// The engine's configuration.
    pub fn engine_config(&self) -> EngineConfig {
        EngineConfig {
            limits: self.limits(),
            resident_max: self.resident_max,
            ..EngineConfig::default()
        }
    }

    /// The journal's sync mode.
    pub fn sync_mode(&self) -> SyncMode {
        match self.sync {
            SyncArg::Data => SyncMode::Data,
            SyncArg::None => SyncMode::None,
        }
    }

    /// The preset's name, or `default`.
    pub fn name(&self) -> &'static str {
        match self.preset {
            None => "default",
            Some(Preset::LlmRouter) => "llm-router",
            Some(Preset::SearchApi) => "search-api",
            Some(Preset::HotWallet) => "hot-wallet",
            Some(Preset::ManyAccounts) => "many-accounts",
        }
    }
}

/// Default limits with `keys` idempotency keys per account (what `run` and `verify` share: a
/// journal must be replayed with the limits it was written under).
pub fn limits_with_keys(keys: usize) -> Limits {
    Limits {
        idempotency_keys_max: keys,
        ..Limits::default()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn no_options_give_the_documented_defaults() {
        let plan = Plan::resolve(&RunArgs::default()).unwrap();
        assert_eq!(plan.accounts, 10_000);
        assert_eq!(plan.clients, 64);
        assert_eq!(plan.duration(), Some(Duration::from_secs(20)));
        assert_eq!(plan.mix, Mix::standard());
        assert_eq!(plan.store, "durable");
        assert_eq!(plan.hot_accounts, 10_000);
        assert_eq!(plan.limits().idempotency_keys_max, 1_000_000);
    }

    #[test]
    fn explicit_options_override_the_preset() {
        let args = RunArgs {
            preset: Some(Preset::ManyAccounts),
            accounts: Some(5_000),
            ops: Some(100),
            ..RunArgs::default()
        };
        let plan = Plan::resolve(&args).unwrap();
        assert_eq!(plan.accounts, 5_000);
        assert_eq!(plan.resident_max, MANY_ACCOUNTS_RESIDENT_MAX);
        assert_eq!(plan.ops, Some(100));
        assert_eq!(plan.duration(), None);
    }

    #[test]
    fn presets_set_their_workloads() {
        let plan = |preset| {
            Plan::resolve(&RunArgs {
                preset: Some(preset),
                ..RunArgs::default()
            })
            .unwrap()
        };
        assert_eq!(plan(Preset::HotWallet).accounts, 1);
        assert_eq!(
            plan(Preset::SearchApi).pricing,
            Pricing::Fixed { amount: 1_000_000 }
        );
        assert_eq!(plan(Preset::ManyAccounts).accounts, 1_000_000);
        assert!(matches!(
            plan(Preset::LlmRouter).pricing,
            Pricing::Tokens {
                input_uc_per_token: 200,
                output_uc_per_token: 600,
                ..
            }
        ));
    }

    #[test]
    fn embedded_runs_take_batches_up_to_submits_bound() {
        let plan = Plan::resolve(&RunArgs {
            batch: Some(8_192),
            ..RunArgs::default()
        })
        .unwrap();
        assert_eq!(plan.batch, 8_192);
        assert!(Plan::resolve(&RunArgs {
            batch: Some(8_193),
            ..RunArgs::default()
        })
        .is_err());
    }

    #[test]
    fn http_runs_take_a_batch_size_and_refuse_many_accounts() {
        let args = RunArgs {
            http: Some("http://127.0.0.1:1".to_owned()),
            batch: Some(100),
            ..RunArgs::default()
        };
        let plan = Plan::resolve(&args).unwrap();
        assert_eq!((plan.store, plan.batch), ("http", 100));
        for args in [
            RunArgs {
                batch: Some(1_001),
                ..args.clone()
            },
            RunArgs {
                preset: Some(Preset::ManyAccounts),
                ..args.clone()
            },
        ] {
            assert!(Plan::resolve(&args).is_err(), "{args:?}");
        }
    }

    #[test]
    fn impossible_values_are_refused() {
        for args in [
            RunArgs {
                accounts: Some(0),
                ..RunArgs::default()
            },
            RunArgs {
                clients: Some(0),
                ..RunArgs::default()
            },
            RunArgs {
                partial_commit: Some(1.5),
                ..RunArgs::default()
            },
            RunArgs {
                skew: Some(-1.0),
                ..RunArgs::default()
            },
        ] {
            assert!(Plan::resolve(&args).is_err(), "{args:?}");
        }
    }
}
