//! The dashboard: the operator's view of the ledger, served by the server itself.
//!
//! The page and its scripts are embedded in the binary ([`assets`]): nothing to build when
//! installing, one vendored chart library (uPlot, MIT, its license beside it). The page signs
//! in through [`crate::session`] and then reads the same native API any client reads, with
//! its cookie; the few reads it needs that the API lacked live here and are documented in the
//! OpenAPI document like the rest: [`overview`], the account list, an account's pending holds,
//! and the low-balance thresholds the overview counts against.
//!
//! Every asset is served with a strict Content-Security-Policy (scripts, styles and data from
//! the server's own origin only; no inline script; no framing).

use std::sync::Arc;
use std::time::Instant;

use axum::extract::{Path, State};
use axum::http::header::{self, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use futures_util::stream::{self, StreamExt as _};
use serde::Deserialize;
use serde_json::{json, Value};
use tally::{AccountId, AccountKind, Granularity, Timestamp, UsageQuery, DAY_MS};
use utoipa::IntoParams;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::auth::Auth;
use crate::error::{wide, ApiError};
use crate::json::{page_limit, QueryParams};
use crate::v1::{balance_json, hold_json, ErrorBody, Kind};
use crate::AppState;

/// Accounts the overview sums at most; past it the sums say `complete: false`.
pub const OVERVIEW_SCAN_MAX: usize = 100_000;
/// Balances read at once while the overview sums them.
const SCAN_AT_ONCE: usize = 64;
/// Accounts under their threshold the overview lists (it counts them all).
const LOW_LISTED_MAX: usize = 100;
/// Accounts in one page of the account list.
pub const ACCOUNTS_PAGE_MAX: usize = 1_000;

/// The last overview computed: when its computation started, the journal's last sequence
/// number then, and what it found.
pub type OverviewCache = tokio::sync::Mutex<Option<(Instant, u64, Arc<Value>)>>;

/// The embedded files: path, content type, bytes.
pub fn assets() -> &'static [(&'static str, &'static str, &'static [u8])] {
    &[
        (
            "index.html",
            "text/html; charset=utf-8",
            include_bytes!("../dashboard/index.html"),
        ),
        (
            "app.js",
            "text/javascript; charset=utf-8",
            include_bytes!("../dashboard/app.js"),
        ),
        (
            "app.css",
            "text/css; charset=utf-8",
            include_bytes!("../dashboard/app.css"),
        ),
        (
            "uPlot.iife.min.js",
            "text/javascript; charset=utf-8",
            include_bytes!("../dashboard/vendor/uPlot.iife.min.js"),
        ),
        (
            "uPlot.min.css",
            "text/css; charset=utf-8",
            include_bytes!("../dashboard/vendor/uPlot.min.css"),
        ),
        (
            "LICENSE-uPlot.txt",
            "text/plain; charset=utf-8",
            include_bytes!("../dashboard/vendor/LICENSE-uPlot.txt"),
        ),
    ]
}

const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
                   connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'";

fn asset(name: &str) -> Response {
    let Some((_, content_type, bytes)) = assets().iter().find(|(n, _, _)| *n == name) else {
        return ApiError::not_found(format!("no dashboard asset {name:?}")).into_response();
    };
    let mut response = bytes.into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    // Assets change with the binary: revalidate rather than serve a stale page.
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}

/// The page and its assets (no credentials needed: they hold no data).
pub fn pages() -> Router<AppState> {
    Router::new()
        .route("/", get(|| async { asset("index.html") }))
        .route(
            "/assets/{name}",
            get(|Path(name): Path<String>| async move { asset(&name) }),
        )
}

/// Days since the epoch → (year, month 1-12, day 1-31), proleptic Gregorian (Hinnant's
/// civil-from-days).
fn civil(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// The start of the UTC day and of the UTC month of `now_ms`.
pub fn day_and_month_start(now_ms: u64) -> (u64, u64) {
    let day = now_ms / DAY_MS;
    let (_, _, d) = civil(day as i64);
    let day_start = day * DAY_MS;
    (day_start, day_start - u64::from(d - 1) * DAY_MS)
}

fn totals(state: &AppState, q: &UsageQuery) -> Result<Value, ApiError> {
    let r = state.tally.usage(q)?;
    let mut v = crate::metering::totals_json(&r.totals);
    v["complete"] = Value::from(r.complete);
    Ok(v)
}

async fn compute_overview(state: &AppState) -> Result<Value, ApiError> {
    let now = state.now_ms();
    let accounts = state.tally.accounts();
    let mut by_kind = [0usize; 3];
    for (_, spec) in &accounts {
        by_kind[match spec.kind {
            AccountKind::User => 0,
            AccountKind::Revenue => 1,
            AccountKind::Funding => 2,
        }] += 1;
    }
    let users: Vec<AccountId> = accounts
        .iter()
        .filter(|(_, s)| s.kind == AccountKind::User)
        .map(|(id, _)| *id)
        .take(OVERVIEW_SCAN_MAX)
        .collect();
    let scanned = users.len();
    let thresholds: std::collections::HashMap<AccountId, u64> =
        state.tally.low_balance_thresholds().into_iter().collect();
    let balances: Vec<_> = stream::iter(users)
        .map(|id| {
            let tally = state.tally.clone();
            async move { (id, tally.balance(id).await) }
        })
        .buffer_unordered(SCAN_AT_ONCE)
        .collect()
        .await;
    let (mut available, mut posted, mut pending) = (0i128, 0i128, 0u128);
    let mut holding = 0usize;
    let mut low: Vec<(i128, String, u64)> = Vec::new();
    let mut low_count = 0usize;
    let overflow = || ApiError::internal("the overview's sums left 128 bits");
    for (id, b) in balances {
        let b = b?;
        available = available.checked_add(b.available).ok_or_else(overflow)?;
        posted = posted.checked_add(b.posted).ok_or_else(overflow)?;
        pending = pending.checked_add(b.debits_pending).ok_or_else(overflow)?;
        if b.debits_pending > 0 {
            holding += 1;
        }
        if let Some(t) = thresholds.get(&id) {
            if b.available < i128::from(*t) {
                low_count += 1;
                low.push((b.available, state.name(id), *t));
            }
        }
    }
    low.sort();
    let low: Vec<Value> = low
        .into_iter()
        .take(LOW_LISTED_MAX)
        .map(|(available, account, threshold)| {
            json!({"account": account, "available": wide(available), "threshold": threshold})
        })
        .collect();

    let (day_start, month_start) = day_and_month_start(now);
    let end = now.saturating_add(1);
    let today = totals(
        state,
        &UsageQuery::new(Granularity::Day, Timestamp(day_start), Timestamp(end)),
    )?;
    let month = totals(
        state,
        &UsageQuery::new(Granularity::Day, Timestamp(month_start), Timestamp(end)),
    )?;
    let minute = 60_000;
    let first_minute = (now / minute).saturating_sub(59) * minute;
    let r = state.tally.usage(&UsageQuery::new(
        Granularity::Minute,
        Timestamp(first_minute),
        Timestamp(end),
    ))?;
    let per_minute: Vec<Value> = (0..60u64)
        .map(|i| {
            let at = first_minute + i * minute;
            let t = r.buckets.iter().find(|(b, _)| b.0 == at).map(|(_, t)| t);
            json!({"start_ms": at, "calls": t.map_or(0, |t| t.calls),
                   "cost": crate::error::wide_u(t.map_or(0, |t| t.cost))})
        })
        .collect();
    let mut apps = Vec::new();
    for (id, spec) in &accounts {
        if spec.kind != AccountKind::Revenue {
            continue;
        }
        let mut q = UsageQuery::new(Granularity::Day, Timestamp(month_start), Timestamp(end));
        q.app = Some(*id);
        let mut t = totals(state, &q)?;
        t["app"] = Value::from(state.name(*id));
        apps.push(t);
    }
    apps.sort_by(|a, b| a["app"].as_str().cmp(&b["app"].as_str()));
    Ok(json!({
        "at_ms": now,
        "accounts": {"total": accounts.len(), "user": by_kind[0], "revenue": by_kind[1],
                     "funding": by_kind[2]},
        "balances": {"available": wide(available), "posted": wide(posted),
                     "pending": crate::error::wide_u(pending),
                     "holding_accounts": holding, "scanned": scanned,
                     "complete": scanned == by_kind[0]},
        "today": today,
        "month": month,
        "day_start_ms": day_start,
        "month_start_ms": month_start,
        "per_minute": per_minute,
        "apps": apps,
        "low_balance": {"count": low_count, "accounts": low},
    }))
}

/// What the operator looks at first: user balances summed, what is held, spending today and
/// this month (UTC), calls per minute over the last hour, each app's month, and the accounts
/// under their low-balance threshold. Sums over at most 100,000 user accounts
/// (`balances.complete` says whether that was all). One computation runs at a time; its
/// result answers again while the journal has not moved (so it always shows every
/// acknowledged change).
#[utoipa::path(get, path = "/v1/overview",
    responses((status = 200, body = Value), (status = "4XX", body = ErrorBody)),
    security(("bearer" = [])))]
async fn overview(
    State(state): State<AppState>,
    Auth(principal): Auth,
) -> Result<Json<Value>, ApiError> {
    principal.require_admin()?;
    // One computation at a time; whoever waited gets its result if it started after they
    // asked, and anyone gets it while nothing was written since.
    let asked = Instant::now();
    let mut cache = state.overview.lock().await;
    let head = state.tally.trail_head().0;
    if let Some((started, seq, value)) = cache.as_ref() {
        if *started >= asked || *seq == head {
            return Ok(Json(Value::clone(value)));
        }
    }
    let started = Instant::now();
    let value = Arc::new(compute_overview(&state).await?);
    *cache = Some((started, head, Arc::clone(&value)));
    Ok(Json(Value::clone(&value)))
}

/// `GET /v1/accounts`.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct AccountsQuery {
    /// The cursor: `next_after` of the previous page (absent for the first).
    #[serde(default)]
    pub after: Option<String>,
    /// Accounts per page, 1 to 1,000. Default 100.
    #[serde(default)]
    pub limit: Option<usize>,
    /// Only accounts of this kind.
    #[serde(default)]
    pub kind: Option<Kind>,
}

/// The accounts by name, with their balances and low-balance thresholds, a page at a time.
#[utoipa::path(get, path = "/v1/accounts", params(AccountsQuery),
    responses((status = 200, body = Value), (status = "4XX", body = ErrorBody)),
    security(("bearer" = [])))]
async fn list_accounts(
    State(state): State<AppState>,
    Auth(principal): Auth,
    QueryParams(q): QueryParams<AccountsQuery>,
) -> Result<Json<Value>, ApiError> {
    principal.require_admin()?;
    let limit = page_limit(q.limit, 100, ACCOUNTS_PAGE_MAX)?;
    let kind = q.kind.map(AccountKind::from);
    let thresholds: std::collections::HashMap<AccountId, u64> =
        state.tally.low_balance_thresholds().into_iter().collect();
    let mut after = q.after.unwrap_or_default();
    let mut rows = Vec::new();
    let mut next_after = None;
    // Names of other kinds are skipped a page at a time until this page is full.
    'pages: loop {
        let names = state.registry.names_after(&after, limit);
        let last = names.len() < limit;
        for (name, id) in names {
            after.clone_from(&name);
            let Some(spec) = state.tally.spec(id) else {
                continue;
            };
            if kind.is_some_and(|k| k != spec.kind) {
                continue;
            }
            let b = state.tally.balance(id).await?;
            let mut row = balance_json(&name, &b);
            row["kind"] = json!(Kind::from(spec.kind));
            row["low_balance_threshold"] = json!(thresholds.get(&id));
            rows.push(row);
            if rows.len() == limit {
                next_after = Some(name);
                break 'pages;
            }
        }
        if last {
            break;
        }
    }
    Ok(Json(json!({"accounts": rows, "next_after": next_after})))
}

/// An account's pending holds, soonest deadline first, with its limits and spending today.
#[utoipa::path(get, path = "/v1/accounts/{id}/holds", params(("id" = String, Path)),
    responses((status = 200, body = Value), (status = "4XX", body = ErrorBody)),
    security(("bearer" = [])))]
async fn account_holds(
    State(state): State<AppState>,
    Auth(principal): Auth,
    Path(name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    principal.require_admin()?;
    let id = state.account(&name).await?;
    let account = state.tally.account(id).await?;
    let mut holds: Vec<&tally::Hold> = account.pending_holds().collect();
    holds.sort_by_key(|h| (h.expires_at, h.id.seq));
    let holds: Vec<Value> = holds.into_iter().map(|h| hold_json(&state, h)).collect();
    Ok(Json(json!({
        "account": name,
        "kind": Kind::from(account.spec.kind),
        "credit_limit": account.spec.credit_limit.get(),
        "may_overdraw": account.spec.may_overdraw(),
        "low_balance_threshold": account.policy().low_balance.map(tally::Amount::get),
        "holds": holds,
    })))
}

/// Journal records one query history reads at most (it reports `complete: false` past it).
pub const QUERY_SCAN_MAX: usize = 100_000;

/// `GET /v1/accounts/{id}/queries`.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct QueriesQuery {
    /// Only queries made at or after this time (ms). Default 0.
    #[serde(default)]
    pub from_ms: u64,
    /// Only queries made before this time (ms). Default: no end.
    #[serde(default)]
    pub to_ms: Option<u64>,
    /// At most this many, newest first (1 to 1,000, default 100).
    #[serde(default)]
    pub limit: Option<usize>,
}

/// Marks a hold's row (if its reserve was in the range) as resolved.
fn resolve(
    rows: &mut [QueryRow],
    holds: &std::collections::HashMap<u64, usize>,
    hold: u64,
    status: &'static str,
) {
    if let Some(row) = holds.get(&hold).and_then(|i| rows.get_mut(*i)) {
        row.status = status;
    }
}

struct QueryRow {
    id: String,
    at_ms: u64,
    app: AccountId,
    endpoint: String,
    amount: u64,
    status: &'static str,
}

/// An account's queries as a router shows them: each hold or charge once, with who paid, which
/// app was paid, the endpoint, the amount (held while pending, posted once done) and where it
/// stands (`pending`, `completed`, `cancelled`, `expired`), newest first. Built from the
/// account's journal history (at most 100,000 records read; `complete` says whether that was
/// all of it).
#[utoipa::path(get, path = "/v1/accounts/{id}/queries", params(("id" = String, Path), QueriesQuery),
    responses((status = 200, body = Value), (status = "4XX", body = ErrorBody)),
    security(("bearer" = [])))]
async fn account_queries(
    State(state): State<AppState>,
    Auth(principal): Auth,
    Path(name): Path<String>,
    QueryParams(q): QueryParams<QueriesQuery>,
) -> Result<Json<Value>, ApiError> {
    principal.require_admin()?;
    let id = state.account(&name).await?;
    let limit = page_limit(q.limit, 100, ACCOUNTS_PAGE_MAX)?;
    let to_ms = q.to_ms.unwrap_or(u64::MAX);
    if to_ms <= q.from_ms {
        return Err(ApiError::invalid_field(
            "to_ms",
            "to_ms must be after from_ms",
        ));
    }
    let mut rows: Vec<QueryRow> = Vec::new();
    let mut holds: std::collections::HashMap<u64, usize> = std::collections::HashMap::new();
    let (mut after, mut read) = (0u64, 0usize);
    let complete = loop {
        let page = state
            .tally
            .history(id, after, tally::HISTORY_PAGE_MAX)
            .await?;
        for e in &page.entries {
            let at = e.record.at.0;
            let in_range = at >= q.from_ms && at < to_ms;
            match &e.record.change {
                tally::Change::Reserved {
                    hold,
                    app,
                    amount,
                    endpoint,
                    ..
                } if in_range => {
                    holds.insert(*hold, rows.len());
                    rows.push(QueryRow {
                        id: crate::v1::hold_str(tally::HoldId {
                            account: id,
                            seq: *hold,
                        }),
                        at_ms: at,
                        app: *app,
                        endpoint: endpoint.clone(),
                        amount: amount.get(),
                        status: "pending",
                    });
                }
                tally::Change::Extended { hold, total, .. } => {
                    if let Some(row) = holds.get(hold).and_then(|i| rows.get_mut(*i)) {
                        row.amount = total.get();
                    }
                }
                tally::Change::Committed {
                    hold,
                    amount_posted,
                    ..
                } => {
                    if let Some(row) = holds.get(hold).and_then(|i| rows.get_mut(*i)) {
                        row.amount = amount_posted.get();
                        row.status = "completed";
                    }
                }
                tally::Change::Voided { hold, .. } => {
                    resolve(&mut rows, &holds, *hold, "cancelled")
                }
                tally::Change::Expired { hold, .. } => resolve(&mut rows, &holds, *hold, "expired"),
                tally::Change::Charged {
                    app,
                    amount,
                    endpoint,
                    posting,
                    ..
                } if in_range => rows.push(QueryRow {
                    id: crate::v1::posting_str(tally::PostingId {
                        account: id,
                        seq: *posting,
                    }),
                    at_ms: at,
                    app: *app,
                    endpoint: endpoint.clone(),
                    amount: amount.get(),
                    status: "completed",
                }),
                _ => {}
            }
        }
        read += page.entries.len();
        match page.next_after_seq {
            Some(next) if !page.entries.is_empty() && read < QUERY_SCAN_MAX => after = next,
            Some(_) if !page.entries.is_empty() => break false,
            _ => break true,
        }
    };
    let total = rows.len();
    let queries: Vec<Value> = rows
        .iter()
        .rev()
        .take(limit)
        .map(|r| {
            json!({"id": r.id, "at_ms": r.at_ms, "sender": name, "recipient": state.name(r.app),
                   "endpoint": r.endpoint, "amount": r.amount, "status": r.status})
        })
        .collect();
    Ok(Json(
        json!({"account": name, "queries": queries, "matched": total, "complete": complete}),
    ))
}

/// The dashboard's reads that the rest of the API lacked.
pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(overview))
        .routes(routes!(list_accounts))
        .routes(routes!(account_holds))
        .routes(routes!(account_queries))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn day_and_month_starts_are_utc() {
        // 2026-12-02T09:47:40Z.
        let now = 1_796_204_860_000;
        let (day, month) = day_and_month_start(now);
        assert_eq!(day, 1_796_169_600_000); // 2026-12-02T00:00:00Z
        assert_eq!(month, 1_796_083_200_000); // 2026-12-01T00:00:00Z
        assert_eq!(civil(0), (1970, 1, 1));
        assert_eq!(civil(11_016), (2000, 2, 29));
        assert_eq!(civil(-1), (1969, 12, 31));
    }
}
