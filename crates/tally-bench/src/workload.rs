//! What the load consists of: the operation mix, the presets, the account layout, how a user
//! and an amount are picked, and how operation ids are made.
//!
//! Everything here is pure and deterministic for a given seed, so the choices a run makes can
//! be unit-tested without an engine. The driver in [`crate::run`] turns these choices into calls.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use rand::RngExt;
use rand_distr::{Distribution, Zipf};
use serde::Serialize;
use tally::{AccountId, OpId};

/// One logical operation of the load: what a client of a metered service does for one request.
/// A logical operation may take several calls (reserve then commit).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum OpKind {
    /// Reserve an estimate, do the work, commit the actual cost (the delegated transfer).
    ReserveCommit,
    /// Reserve, then the work fails and the hold is voided (the user pays nothing).
    ReserveVoid,
    /// Fixed-cost work: reserve and commit in one step.
    Charge,
    /// Refund part of a recent posting of this client.
    Refund,
    /// Move posted funds from one user to another.
    Transfer,
    /// Top up a user from the funding account. The driver does this after an
    /// `InsufficientFunds` answer; it can also be put in the mix.
    Fund,
}

impl OpKind {
    /// Every kind, in report order.
    pub const ALL: [OpKind; 6] = [
        OpKind::ReserveCommit,
        OpKind::ReserveVoid,
        OpKind::Charge,
        OpKind::Refund,
        OpKind::Transfer,
        OpKind::Fund,
    ];

    /// The stable name used in `--mix`, in the summary and in the JSON report.
    pub fn name(self) -> &'static str {
        match self {
            OpKind::ReserveCommit => "reserve-commit",
            OpKind::ReserveVoid => "reserve-void",
            OpKind::Charge => "charge",
            OpKind::Refund => "refund",
            OpKind::Transfer => "transfer",
            OpKind::Fund => "fund",
        }
    }

    /// Position in [`OpKind::ALL`].
    pub fn index(self) -> usize {
        match self {
            OpKind::ReserveCommit => 0,
            OpKind::ReserveVoid => 1,
            OpKind::Charge => 2,
            OpKind::Refund => 3,
            OpKind::Transfer => 4,
            OpKind::Fund => 5,
        }
    }

    fn parse(name: &str) -> Option<OpKind> {
        match name {
            "reserve-commit" | "commit" => Some(OpKind::ReserveCommit),
            "reserve-void" | "void" => Some(OpKind::ReserveVoid),
            "charge" => Some(OpKind::Charge),
            "refund" => Some(OpKind::Refund),
            "transfer" => Some(OpKind::Transfer),
            "fund" => Some(OpKind::Fund),
            _ => None,
        }
    }
}

/// One engine call (or, over HTTP, one request), for per-call latencies.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum CallKind {
    /// `Tally::fund`.
    Fund,
    /// `Tally::reserve`.
    Reserve,
    /// `Tally::commit`.
    Commit,
    /// `Tally::void`.
    Void,
    /// `Tally::charge`.
    Charge,
    /// `Tally::refund`.
    Refund,
    /// `Tally::transfer`.
    Transfer,
    /// Over HTTP with `--batch N`: one `POST /v1/batch` request of up to N operations.
    Batch,
}

impl CallKind {
    /// Every kind, in report order.
    pub const ALL: [CallKind; 8] = [
        CallKind::Reserve,
        CallKind::Commit,
        CallKind::Void,
        CallKind::Charge,
        CallKind::Refund,
        CallKind::Transfer,
        CallKind::Fund,
        CallKind::Batch,
    ];

    /// The stable name (the method's).
    pub fn name(self) -> &'static str {
        match self {
            CallKind::Fund => "fund",
            CallKind::Reserve => "reserve",
            CallKind::Commit => "commit",
            CallKind::Void => "void",
            CallKind::Charge => "charge",
            CallKind::Refund => "refund",
            CallKind::Transfer => "transfer",
            CallKind::Batch => "batch",
        }
    }

    /// Position in [`CallKind::ALL`].
    pub fn index(self) -> usize {
        match self {
            CallKind::Reserve => 0,
            CallKind::Commit => 1,
            CallKind::Void => 2,
            CallKind::Charge => 3,
            CallKind::Refund => 4,
            CallKind::Transfer => 5,
            CallKind::Fund => 6,
            CallKind::Batch => 7,
        }
    }
}

/// Why a `--mix` or `--duration` value was refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParseError(pub String);

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ParseError {}

/// The operation mix: weights of logical operations, e.g.
/// `reserve-commit=70,charge=20,void=5,refund=5`. Weights are relative (they need not sum to
/// 100); `void` means reserve-then-void and `commit` reserve-then-commit.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mix {
    weights: Vec<(OpKind, u32)>,
    total: u32,
}

/// Most a single weight may be, so the total fits comfortably in a `u32`.
const MIX_WEIGHT_MAX: u32 = 1_000_000;

impl Mix {
    /// A mix from weights; at least one must be positive.
    pub fn new(weights: &[(OpKind, u32)]) -> Result<Mix, ParseError> {
        let mut merged: Vec<(OpKind, u32)> = Vec::new();
        for &(kind, weight) in weights {
            if weight > MIX_WEIGHT_MAX {
                return Err(ParseError(format!(
                    "weight {weight} of {} exceeds {MIX_WEIGHT_MAX}",
                    kind.name()
                )));
            }
            if weight == 0 {
                continue;
            }
            match merged.iter_mut().find(|(k, _)| *k == kind) {
                Some(entry) => entry.1 = entry.1.saturating_add(weight),
                None => merged.push((kind, weight)),
            }
        }
        merged.sort_by_key(|(kind, _)| kind.index());
        let total = merged.iter().map(|(_, w)| *w).sum::<u32>();
        if total == 0 {
            return Err(ParseError("the mix has no positive weight".to_owned()));
        }
        Ok(Mix {
            weights: merged,
            total,
        })
    }

    /// The default mix: `reserve-commit=70,charge=20,void=5,refund=5`.
    pub fn standard() -> Mix {
        Mix {
            weights: vec![
                (OpKind::ReserveCommit, 70),
                (OpKind::ReserveVoid, 5),
                (OpKind::Charge, 20),
                (OpKind::Refund, 5),
            ],
            total: 100,
        }
    }

    /// Picks a kind from a uniform draw in `0..total`.
    pub fn pick_with(&self, draw: u32) -> OpKind {
        let mut draw = draw % self.total;
        for &(kind, weight) in &self.weights {
            if draw < weight {
                return kind;
            }
            draw -= weight;
        }
        // Unreachable: the weights sum to `total` and `draw < total`.
        OpKind::Charge
    }

    /// Picks a kind.
    pub fn pick(&self, rng: &mut impl rand::Rng) -> OpKind {
        self.pick_with(rng.random_range(0..self.total))
    }

    /// The weights, in report order.
    pub fn weights(&self) -> &[(OpKind, u32)] {
        &self.weights
    }

    /// Whether the mix contains `kind`.
    pub fn contains(&self, kind: OpKind) -> bool {
        self.weights.iter().any(|(k, _)| *k == kind)
    }
}

impl fmt::Display for Mix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, (kind, weight)) in self.weights.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{}={weight}", kind.name())?;
        }
        Ok(())
    }
}

impl Serialize for Mix {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl FromStr for Mix {
    type Err = ParseError;

    fn from_str(spec: &str) -> Result<Mix, ParseError> {
        let mut weights = Vec::new();
        for part in spec.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (name, weight) = part
                .split_once('=')
                .ok_or_else(|| ParseError(format!("`{part}`: expected NAME=WEIGHT")))?;
            let kind = OpKind::parse(name.trim()).ok_or_else(|| {
                ParseError(format!(
                    "unknown operation `{}` (known: reserve-commit, void, charge, refund, \
                     transfer, fund)",
                    name.trim()
                ))
            })?;
            let weight = weight
                .trim()
                .parse::<u32>()
                .map_err(|e| ParseError(format!("weight of `{}`: {e}", name.trim())))?;
            weights.push((kind, weight));
        }
        Mix::new(&weights)
    }
}

/// Parses a duration: plain seconds (`10`, `2.5`) or with a unit (`500ms`, `10s`, `2m`, `1h`).
pub fn parse_duration(text: &str) -> Result<Duration, ParseError> {
    let text = text.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let value: f64 = number.parse().map_err(|_| {
        ParseError(format!(
            "`{text}`: expected a number of seconds, or 10s, 2m"
        ))
    })?;
    let seconds = match unit.trim() {
        "" | "s" | "sec" | "secs" => value,
        "ms" => value / 1_000.0,
        "m" | "min" | "mins" => value * 60.0,
        "h" => value * 3_600.0,
        other => {
            return Err(ParseError(format!(
                "`{text}`: unknown unit `{other}` (use ms, s, m or h)"
            )))
        }
    };
    if !seconds.is_finite() || seconds <= 0.0 || seconds > 7.0 * 24.0 * 3_600.0 {
        return Err(ParseError(format!(
            "`{text}`: a duration must be positive and at most a week"
        )));
    }
    Ok(Duration::from_secs_f64(seconds))
}

/// The fixed account layout of a benchmark ledger: one funding account, a few apps (revenue
/// accounts) and the users, numbered from [`Layout::USER_FIRST`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Layout {
    /// User accounts.
    pub users: u64,
}

impl Layout {
    /// The funding account every top-up comes from.
    pub const FUNDING: AccountId = AccountId(1);
    /// The apps (revenue accounts) commits and charges credit.
    pub const APPS: [AccountId; 4] = [AccountId(2), AccountId(3), AccountId(4), AccountId(5)];
    /// The first user account id.
    pub const USER_FIRST: u64 = 1_000;

    /// The `index`-th user (0-based).
    pub fn user(&self, index: u64) -> AccountId {
        AccountId(Self::USER_FIRST.saturating_add(index))
    }

    /// A transfer's target for a transfer from `from`: another user picked as users are (the
    /// next one when the pick is `from` itself), or the first app when there is one user.
    pub fn transfer_target(
        &self,
        picker: &UserPicker,
        rng: &mut impl rand::Rng,
        from: AccountId,
    ) -> AccountId {
        if self.users <= 1 {
            return Self::APPS[0];
        }
        let i = picker.pick_index(rng);
        if self.user(i) == from {
            self.user((i + 1) % self.users)
        } else {
            self.user(i)
        }
    }

    /// Every account: funding, apps, users.
    pub fn total(&self) -> u64 {
        self.users.saturating_add(1 + Self::APPS.len() as u64)
    }

    /// The `i`-th of [`Layout::total`] accounts (funding, then apps, then users).
    pub fn nth(&self, i: u64) -> AccountId {
        let apps = Self::APPS.len() as u64;
        match i {
            0 => Self::FUNDING,
            i if i <= apps => Self::APPS[(i - 1) as usize],
            i => self.user(i - 1 - apps),
        }
    }

    /// Up to `max` accounts spread evenly over the layout (all of them when there are fewer),
    /// always including the funding account and the apps: what the recovery check compares.
    pub fn sample(&self, max: u64) -> Vec<AccountId> {
        let total = self.total();
        if total <= max {
            return (0..total).map(|i| self.nth(i)).collect();
        }
        let fixed = 1 + Self::APPS.len() as u64;
        let mut out: Vec<AccountId> = (0..fixed).map(|i| self.nth(i)).collect();
        let want = max.saturating_sub(fixed).max(1);
        let step = (self.users / want).max(1);
        out.extend(
            (0..self.users)
                .step_by(usize::try_from(step).unwrap_or(usize::MAX))
                .take(usize::try_from(want).unwrap_or(usize::MAX))
                .map(|i| self.user(i)),
        );
        out
    }
}

/// Picks the user of the next operation: uniformly, or Zipf-distributed with exponent `skew`
/// (rank 1 is the hottest user), over the first `hot` users.
#[derive(Clone, Debug)]
pub struct UserPicker {
    layout: Layout,
    hot: u64,
    zipf: Option<Zipf<f64>>,
}

impl UserPicker {
    /// A picker over the first `hot` users of `layout` (all when `hot` is 0 or too big).
    pub fn new(layout: Layout, hot: u64, skew: f64) -> Result<UserPicker, ParseError> {
        let hot = if hot == 0 || hot > layout.users {
            layout.users
        } else {
            hot
        };
        if hot == 0 {
            return Err(ParseError(
                "the load needs at least one user account".to_owned(),
            ));
        }
        let zipf = if skew > 0.0 {
            // Precision loss above 2^53 users is irrelevant for a rank distribution.
            #[allow(clippy::cast_precision_loss)]
            let n = hot as f64;
            Some(Zipf::new(n, skew).map_err(|e| ParseError(format!("--skew {skew}: {e}")))?)
        } else if skew < 0.0 || skew.is_nan() {
            return Err(ParseError(format!("--skew {skew}: must be 0 or more")));
        } else {
            None
        };
        Ok(UserPicker { layout, hot, zipf })
    }

    /// The users that receive traffic.
    pub fn hot(&self) -> u64 {
        self.hot
    }

    /// The index (0-based) of the next user.
    pub fn pick_index(&self, rng: &mut impl rand::Rng) -> u64 {
        match &self.zipf {
            None => rng.random_range(0..self.hot),
            Some(zipf) => {
                let rank: f64 = zipf.sample(rng);
                // Zipf yields 1..=n as a float; truncation is the intent.
                #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
                let rank = rank as u64;
                rank.saturating_sub(1).min(self.hot - 1)
            }
        }
    }

    /// The next user.
    pub fn pick(&self, rng: &mut impl rand::Rng) -> AccountId {
        self.layout.user(self.pick_index(rng))
    }
}

/// How much a request costs, in µ¢.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
#[serde(tag = "model", rename_all = "kebab-case")]
pub enum Pricing {
    /// Holds uniform in `reserve_min..=reserve_max`; a partial commit posts 10–99 % of the hold.
    Uniform {
        /// Smallest hold.
        reserve_min: u64,
        /// Largest hold.
        reserve_max: u64,
    },
    /// Per-token LLM pricing: the hold is the estimate for `max_tokens` of output, the commit
    /// what the tokens actually used cost (always at most the estimate).
    Tokens {
        /// µ¢ per input token (200 cents per million tokens = 200 µ¢ a token).
        input_uc_per_token: u64,
        /// µ¢ per output token (600 cents per million tokens = 600 µ¢ a token).
        output_uc_per_token: u64,
        /// Most prompt tokens.
        input_tokens_max: u64,
        /// Most `max_tokens` a request asks for.
        output_tokens_max: u64,
    },
    /// A fixed price per request.
    Fixed {
        /// The price.
        amount: u64,
    },
}

/// What one request holds and what it finally costs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cost {
    /// Amount reserved (or charged).
    pub reserve: u64,
    /// Amount committed (`1 ≤ commit ≤ reserve`).
    pub commit: u64,
}

impl Pricing {
    /// Draws one request's cost. `partial_commit` is the share of requests whose commit posts
    /// less than the hold (the token model is partial by nature and ignores it).
    pub fn cost(&self, rng: &mut impl rand::Rng, partial_commit: f64) -> Cost {
        match *self {
            Pricing::Uniform {
                reserve_min,
                reserve_max,
            } => {
                let reserve =
                    rng.random_range(reserve_min.max(1)..=reserve_max.max(reserve_min).max(1));
                let commit = if reserve > 1 && rng.random_bool(partial_commit.clamp(0.0, 1.0)) {
                    let low = (reserve / 10).max(1);
                    rng.random_range(low..reserve)
                } else {
                    reserve
                };
                Cost { reserve, commit }
            }
            Pricing::Tokens {
                input_uc_per_token,
                output_uc_per_token,
                input_tokens_max,
                output_tokens_max,
            } => {
                let input = rng.random_range(1..=input_tokens_max.max(1));
                let max_tokens = rng.random_range(1..=output_tokens_max.max(1));
                let used = rng.random_range(1..=max_tokens);
                let input_cost = input.saturating_mul(input_uc_per_token);
                Cost {
                    reserve: input_cost
                        .saturating_add(max_tokens.saturating_mul(output_uc_per_token))
                        .max(1),
                    commit: input_cost
                        .saturating_add(used.saturating_mul(output_uc_per_token))
                        .max(1),
                }
            }
            Pricing::Fixed { amount } => Cost {
                reserve: amount.max(1),
                commit: amount.max(1),
            },
        }
    }

    /// The most one request can hold.
    pub fn reserve_max(&self) -> u64 {
        match *self {
            Pricing::Uniform { reserve_max, .. } => reserve_max,
            Pricing::Tokens {
                input_uc_per_token,
                output_uc_per_token,
                input_tokens_max,
                output_tokens_max,
            } => input_tokens_max
                .saturating_mul(input_uc_per_token)
                .saturating_add(output_tokens_max.saturating_mul(output_uc_per_token)),
            Pricing::Fixed { amount } => amount,
        }
    }
}

/// The top bits of a setup operation id: setup ids depend only on the account, so a setup
/// repeated on a ledger that already has it replays instead of funding twice.
const SETUP_TAG: u128 = 0x5e7u128 << 64;

/// The id of the initial funding of `account`.
pub fn setup_op(account: AccountId) -> OpId {
    OpId(SETUP_TAG | u128::from(account.0))
}

/// The id of the `counter`-th operation of `client` in run `run`: unique across runs (the run
/// id is random, its top bit set so it never meets [`setup_op`]), clients and counters.
pub fn run_op(run: u64, client: u32, counter: u32) -> OpId {
    let run = u128::from(run | (1 << 63));
    OpId((run << 64) | (u128::from(client) << 32) | u128::from(counter))
}

/// A fresh run id: time and process id mixed, so two runs on one ledger never share op ids.
pub fn fresh_run_id() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u128(nanos);
    hasher.write_u32(std::process::id());
    hasher.finish()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use rand::rngs::SmallRng;
    use rand::SeedableRng;

    #[test]
    fn mix_parses_the_issue_example_and_prints_it_back() {
        let mix: Mix = "reserve-commit=70,charge=20,void=5,refund=5"
            .parse()
            .unwrap();
        assert_eq!(mix, Mix::standard());
        assert_eq!(
            mix.to_string(),
            "reserve-commit=70,reserve-void=5,charge=20,refund=5"
        );
    }

    #[test]
    fn mix_rejects_unknown_names_and_empty_weights() {
        assert!("teleport=5".parse::<Mix>().is_err());
        assert!("charge".parse::<Mix>().is_err());
        assert!("charge=0".parse::<Mix>().is_err());
        assert!("".parse::<Mix>().is_err());
    }

    #[test]
    fn mix_picks_in_proportion_to_the_weights() {
        let mix: Mix = "charge=1,transfer=3".parse().unwrap();
        let picks: Vec<OpKind> = (0..4).map(|d| mix.pick_with(d)).collect();
        assert_eq!(
            picks,
            [
                OpKind::Charge,
                OpKind::Transfer,
                OpKind::Transfer,
                OpKind::Transfer
            ]
        );
    }

    #[test]
    fn durations_accept_seconds_and_units() {
        let cases = [
            ("10", 10_000),
            ("10s", 10_000),
            ("2m", 120_000),
            ("500ms", 500),
            ("1.5", 1_500),
        ];
        for (text, ms) in cases {
            assert_eq!(
                parse_duration(text),
                Ok(Duration::from_millis(ms)),
                "{text}"
            );
        }
        for bad in ["", "0", "-1", "5 parsecs", "1e9h"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn op_ids_are_unique_across_clients_counters_runs_and_setup() {
        let mut seen = std::collections::HashSet::new();
        for run in [1, 2] {
            for client in 0..4 {
                for counter in 0..4 {
                    assert!(seen.insert(run_op(run, client, counter)));
                }
            }
        }
        for account in 0..4 {
            assert!(seen.insert(setup_op(AccountId(account))));
        }
    }

    #[test]
    fn layout_sample_keeps_funding_and_apps_and_stays_within_max() {
        let layout = Layout { users: 1_000_000 };
        let sample = layout.sample(1_000);
        assert!(sample.len() <= 1_000);
        assert_eq!(sample[0], Layout::FUNDING);
        assert_eq!(&sample[1..5], &Layout::APPS);
        let small = Layout { users: 3 };
        assert_eq!(small.sample(1_000).len(), 8);
    }

    #[test]
    fn picker_stays_within_the_hot_users() {
        let layout = Layout { users: 100 };
        let mut rng = SmallRng::seed_from_u64(7);
        for skew in [0.0, 1.1] {
            let picker = UserPicker::new(layout, 10, skew).unwrap();
            for _ in 0..1_000 {
                assert!(picker.pick_index(&mut rng) < 10);
            }
        }
        assert!(UserPicker::new(layout, 0, -1.0).is_err());
    }

    #[test]
    fn zipf_makes_the_first_user_the_hottest() {
        let layout = Layout { users: 1_000 };
        let picker = UserPicker::new(layout, 0, 1.2).unwrap();
        let mut rng = SmallRng::seed_from_u64(1);
        let first = (0..10_000)
            .filter(|_| picker.pick_index(&mut rng) == 0)
            .count();
        assert!(first > 1_000, "rank 1 drew {first} of 10,000");
    }

    #[test]
    fn commits_never_exceed_holds() {
        let mut rng = SmallRng::seed_from_u64(3);
        let models = [
            Pricing::Uniform {
                reserve_min: 1,
                reserve_max: 1_000,
            },
            Pricing::Tokens {
                input_uc_per_token: 2,
                output_uc_per_token: 6,
                input_tokens_max: 4_000,
                output_tokens_max: 2_000,
            },
            Pricing::Fixed { amount: 1_000_000 },
        ];
        for model in models {
            for _ in 0..10_000 {
                let cost = model.cost(&mut rng, 0.5);
                assert!(
                    cost.commit >= 1 && cost.commit <= cost.reserve,
                    "{model:?} {cost:?}"
                );
                assert!(cost.reserve <= model.reserve_max());
            }
        }
    }

    #[test]
    fn llm_pricing_is_200_and_600_microcents_per_token() {
        let model = Pricing::Tokens {
            input_uc_per_token: 200,
            output_uc_per_token: 600,
            input_tokens_max: 1,
            output_tokens_max: 1,
        };
        let mut rng = SmallRng::seed_from_u64(0);
        assert_eq!(
            model.cost(&mut rng, 0.0),
            Cost {
                reserve: 800,
                commit: 800
            }
        );
    }
}
