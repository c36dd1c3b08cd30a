//! The dashboard in a real browser: headless Chromium driven over WebDriver (chromedriver),
//! against a real server on a loopback port. Each view's figures are compared with the API's,
//! a charge made through the API must appear on the open overview within 2 seconds, the CSV
//! links must hold the rows shown, and the page must log no error.
//!
//! Needs `chromium` and `chromedriver` (Debian's `chromium` and `chromium-driver`; `.ci/run`
//! installs them). `TALLY_SKIP_BROWSER_TESTS=1` skips (CI never does).
//! `TALLY_SCREENSHOTS=1` also writes each view at 1280×800 to `docs/screenshots/`.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{json, Value};

use crate::common::{Harness, ADMIN};

struct Driver(Child);

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

async fn browser(profile: &std::path::Path) -> Option<(Driver, Client)> {
    if std::env::var_os("TALLY_SKIP_BROWSER_TESTS").is_some() {
        eprintln!("TALLY_SKIP_BROWSER_TESTS is set: skipping the browser test");
        return None;
    }
    let port = free_port();
    let child = Command::new("chromedriver")
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("chromedriver is missing: install chromium and chromium-driver (or set TALLY_SKIP_BROWSER_TESTS=1)");
    let driver = Driver(child);
    let mut caps = serde_json::Map::new();
    caps.insert(
        "goog:chromeOptions".into(),
        json!({
            "binary": "/usr/bin/chromium",
            "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic",
                     "--no-first-run", "--disable-background-networking",
                     "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage",
                     "--window-size=1280,800",
                     format!("--user-data-dir={}", profile.display())],
        }),
    );
    let url = format!("http://127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let connector = hyper_util::client::legacy::connect::HttpConnector::new();
        match ClientBuilder::new(connector)
            .capabilities(caps.clone())
            .connect(&url)
            .await
        {
            Ok(client) => return Some((driver, client)),
            Err(e) if Instant::now() < deadline => {
                let _ = e;
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => panic!("starting Chromium through chromedriver: {e}"),
        }
    }
}

/// A Chrome DevTools command, sent through chromedriver's `goog/cdp/execute`.
#[derive(Debug)]
struct Cdp(&'static str, Value);

impl fantoccini::wd::WebDriverCompatibleCommand for Cdp {
    fn endpoint(
        &self,
        base_url: &url::Url,
        session_id: Option<&str>,
    ) -> Result<url::Url, url::ParseError> {
        base_url.join(&format!(
            "session/{}/goog/cdp/execute",
            session_id.unwrap_or_default()
        ))
    }

    fn method_and_body(&self, _: &url::Url) -> (axum::http::Method, Option<String>) {
        let body = json!({"cmd": self.0, "params": self.1}).to_string();
        (axum::http::Method::POST, Some(body))
    }
}

/// Makes the page see `prefers-color-scheme: dark` (or the system's again, with `None`).
async fn color_scheme(c: &Client, scheme: Option<&str>) {
    let features = match scheme {
        Some(s) => json!([{"name": "prefers-color-scheme", "value": s}]),
        None => json!([]),
    };
    c.issue_cmd(Cdp(
        "Emulation.setEmulatedMedia",
        json!({ "features": features }),
    ))
    .await
    .unwrap();
}

async fn js(c: &Client, script: &str) -> Value {
    c.execute(script, vec![]).await.unwrap()
}

/// Waits until the view has rendered `name`.
async fn ready(c: &Client, name: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let v = js(
            c,
            "return document.getElementById('view').getAttribute('data-ready');",
        )
        .await;
        if v == name {
            return;
        }
        if Instant::now() >= deadline {
            let errors = js(c, "return window.tallyErrors || [];").await;
            let loads = js(
                c,
                "return performance.getEntriesByType('resource')
                   .map(r => r.name.replace(location.origin, '') + ' ' + Math.round(r.duration));",
            )
            .await;
            panic!("the {name} view did not render (now {v}); errors: {errors}; loads: {loads}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The exact µ¢ a figure shows.
async fn figure(c: &Client, id: &str) -> String {
    let v = js(
        c,
        &format!("const e = document.querySelector('#{id} [data-uc]'); return e ? e.getAttribute('data-uc') : null;"),
    )
    .await;
    v.as_str()
        .unwrap_or_else(|| panic!("#{id} shows no amount"))
        .to_owned()
}

/// The CSV behind a table's link.
async fn csv(c: &Client, table: &str) -> Vec<Vec<String>> {
    let href = js(
        c,
        &format!("return document.getElementById('{table}-csv').getAttribute('href');"),
    )
    .await;
    let href = href.as_str().unwrap();
    let data = href
        .strip_prefix("data:text/csv;charset=utf-8,")
        .expect("a CSV data link");
    let text = js(c, &format!("return decodeURIComponent({});", json!(data))).await;
    text.as_str()
        .unwrap()
        .lines()
        .map(|l| l.split(',').map(str::to_owned).collect())
        .collect()
}

async fn shot(c: &Client, name: &str) {
    if std::env::var_os("TALLY_SCREENSHOTS").is_none() {
        return;
    }
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../docs/screenshots");
    std::fs::create_dir_all(&dir).unwrap();
    let png = c.screenshot().await.unwrap();
    std::fs::write(dir.join(format!("{name}.png")), png).unwrap();
}

async fn no_errors(c: &Client) {
    let errors = js(c, "return window.tallyErrors;").await;
    assert_eq!(errors, json!([]), "the page logged errors");
}

async fn charge(h: &Harness, key: &str, account: &str, app: &str, amount: u64, endpoint: &str) {
    let a = h
        .as_key(
            ADMIN,
            "POST",
            "/v1/charges",
            Some(
                json!({"account": account, "app": app, "amount": amount, "endpoint": endpoint,
                        "usage": {"input_tokens": amount / 10, "output_tokens": amount / 20}}),
            ),
            Some(key),
        )
        .await;
    assert_eq!(a.status, axum::http::StatusCode::CREATED, "{a:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_shows_what_the_api_says_and_updates_live() {
    let h = Harness::new().await;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    h.clock.set(tally::Timestamp(now));
    h.world(50_000_000_000).await; // $500
    h.admin(
        "POST",
        "/v1/accounts/bob/fund",
        Some(json!({"amount": 2_000_000_000u64})),
    )
    .await;
    let promo = h
        .admin(
            "POST",
            "/v1/accounts/alice/grants",
            Some(json!({"amount": 500_000_000u64, "expires_in_s": 2_592_000, "label": "welcome"})),
        )
        .await;
    assert_eq!(promo.status, axum::http::StatusCode::CREATED, "{promo:?}");
    for (path, body) in [
        ("spend-cap", json!({"per_day": 9_000_000_000u64})),
        (
            "rate-limit",
            json!({"requests": {"per_second": 50, "burst": 100}}),
        ),
    ] {
        let a = h
            .admin("PUT", &format!("/v1/accounts/alice/{path}"), Some(body))
            .await;
        assert_eq!(a.status, axum::http::StatusCode::OK, "{a:?}");
    }
    h.admin(
        "PUT",
        "/v1/accounts/bob/low-balance",
        Some(json!({"threshold": 5_000_000_000u64})),
    )
    .await;
    for i in 0..12u64 {
        let (who, app, ep) = if i % 3 == 0 {
            ("bob", "search", "web")
        } else {
            ("alice", "chat", "gpt-4o")
        };
        charge(
            &h,
            &format!("seed-{i}"),
            who,
            app,
            123_456_789 + i * 1_000_003,
            ep,
        )
        .await;
    }
    let hold = h
        .as_key(
            ADMIN,
            "POST",
            "/v1/holds",
            Some(
                json!({"account": "alice", "app": "chat", "amount": 777_000_000u64,
                        "endpoint": "gpt-4o", "timeout_ms": 600_000}),
            ),
            Some("hold-1"),
        )
        .await;
    assert_eq!(hold.status, axum::http::StatusCode::CREATED, "{hold:?}");

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = h.app.clone();
    let server = tokio::spawn(async move { axum::serve(listener, app).await });
    let base = format!("http://{addr}");

    let profile = tempfile::tempdir().unwrap();
    let Some((_driver, c)) = browser(profile.path()).await else {
        return;
    };

    // A viewport of exactly 1280×800, whatever the window's frame takes.
    let inner = js(&c, "return [window.innerWidth, window.innerHeight];").await;
    let (iw, ih) = (
        inner[0].as_u64().unwrap() as u32,
        inner[1].as_u64().unwrap() as u32,
    );
    let (_, _, ww, wh) = c.get_window_rect().await.unwrap();
    c.set_window_size(ww as u32 + 1280 - iw, wh as u32 + 800 - ih)
        .await
        .unwrap();
    // Signed out: the sign-in form, and a wrong key is refused on the page.
    c.goto(&format!("{base}/")).await.unwrap();
    let key = c.wait().for_element(Locator::Id("key")).await.unwrap();
    key.send_keys("not-the-key-0000000000").await.unwrap();
    c.find(Locator::Css("#signin button"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let msg = js(
            &c,
            "return document.getElementById('signin-error').textContent;",
        )
        .await;
        if msg.as_str().is_some_and(|m| !m.is_empty()) {
            break;
        }
        assert!(Instant::now() < deadline, "no sign-in error shown");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    shot(&c, "sign-in").await;
    assert!(h.state.sessions.is_empty());
    key.clear().await.unwrap();
    key.send_keys(ADMIN).await.unwrap();
    c.find(Locator::Css("#signin button"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    ready(&c, "overview").await;
    let form = js(
        &c,
        "return getComputedStyle(document.getElementById('signin')).display;",
    )
    .await;
    assert_eq!(form, "none", "the sign-in form is still shown");
    // The cookie is HttpOnly: the page's scripts cannot read it.
    assert_eq!(js(&c, "return document.cookie;").await, "");

    // Overview = the API's overview.
    let o = h.admin("GET", "/v1/overview", None).await.body;
    assert_eq!(
        figure(&c, "ov-available").await,
        o["balances"]["available"].to_string()
    );
    assert_eq!(figure(&c, "ov-pending").await, "777000000");
    assert_eq!(figure(&c, "ov-today").await, o["today"]["cost"].to_string());
    assert_eq!(figure(&c, "ov-month").await, o["month"]["cost"].to_string());
    let low = js(&c, "return document.getElementById('ov-low').textContent;").await;
    assert_eq!(low, "1");
    let apps = csv(&c, "ov-apps").await;
    assert_eq!(
        apps[0],
        [
            "App",
            "Calls",
            "Input tokens",
            "Output tokens",
            "Revenue (µ¢)",
            "Refunded (µ¢)",
            "Net (µ¢)",
            "Provider cost (µ¢)",
            "Margin (µ¢)"
        ]
    );
    for app in o["apps"].as_array().unwrap() {
        let row = apps
            .iter()
            .find(|r| r[0] == app["app"].as_str().unwrap())
            .unwrap();
        assert_eq!(row[1], app["calls"].to_string());
        assert_eq!(row[4], app["cost"].to_string());
        assert_eq!(row[6], app["net"].to_string());
        assert_eq!(row[8], app["margin"].to_string());
    }
    shot(&c, "overview").await;

    // Live: a charge through the API shows on the open overview within 2 s, no reload.
    let before = figure(&c, "ov-today").await;
    js(&c, "window.__sameDocument = true; return true;").await;
    let started = Instant::now();
    charge(&h, "live-1", "alice", "chat", 250_000_000, "gpt-4o").await;
    let expected = (before.parse::<u128>().unwrap() + 250_000_000).to_string();
    loop {
        if figure(&c, "ov-today").await == expected {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "the charge did not appear on the overview within 2 s"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    eprintln!(
        "a charge appeared on the overview {:?} after it was made",
        started.elapsed()
    );
    assert_eq!(js(&c, "return window.__sameDocument === true;").await, true);

    // Usage: today's totals and buckets are the API's.
    c.goto(&format!("{base}/#/usage?range=today&granularity=hour"))
        .await
        .unwrap();
    ready(&c, "usage").await;
    let day_start = now - now % 86_400_000;
    let u = h
        .admin(
            "GET",
            &format!(
                "/v1/usage?granularity=hour&from_ms={day_start}&to_ms={}",
                now + 3_600_000
            ),
            None,
        )
        .await
        .body;
    assert_eq!(
        figure(&c, "usage-cost").await,
        u["totals"]["cost"].to_string()
    );
    let rows = csv(&c, "usage-table").await;
    assert_eq!(rows.len() - 1, u["buckets"].as_array().unwrap().len());
    let last = rows.last().unwrap();
    let api_last = u["buckets"].as_array().unwrap().last().unwrap();
    assert_eq!(last[0], api_last["start_ms"].to_string());
    assert_eq!(last[3], api_last["input_tokens"].to_string());
    assert_eq!(last[8], api_last["cost"].to_string());
    let top = csv(&c, "top-users").await;
    assert_eq!(top[1][0], "alice");
    let revenue = csv(&c, "revenue-table").await;
    for row in &revenue[1..] {
        let by_app = h
            .admin(
                "GET",
                &format!(
                    "/v1/usage?granularity=hour&from_ms={day_start}&to_ms={}&app={}",
                    now + 3_600_000,
                    row[0]
                ),
                None,
            )
            .await
            .body;
        assert_eq!(row[2], by_app["totals"]["cost"].to_string(), "{row:?}");
    }
    assert_eq!(revenue.len(), 3, "{revenue:?}");
    shot(&c, "usage").await;

    // The account list and an account's page.
    c.goto(&format!("{base}/#/accounts")).await.unwrap();
    ready(&c, "accounts").await;
    let list = csv(&c, "accounts-table").await;
    let api_list = h.admin("GET", "/v1/accounts?limit=50", None).await.body;
    assert_eq!(
        list.len() - 1,
        api_list["accounts"].as_array().unwrap().len()
    );
    for (row, api) in list[1..]
        .iter()
        .zip(api_list["accounts"].as_array().unwrap())
    {
        assert_eq!(row[0], api["account"].as_str().unwrap());
        assert_eq!(row[2], api["available"].to_string());
    }
    shot(&c, "accounts").await;
    c.find(Locator::LinkText("alice"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    ready(&c, "account").await;
    let b = h
        .admin("GET", "/v1/accounts/alice/balance", None)
        .await
        .body;
    assert_eq!(
        figure(&c, "acct-available").await,
        b["available"].to_string()
    );
    assert_eq!(figure(&c, "acct-pending").await, "777000000");
    // Her limits are her policy's.
    assert_eq!(figure(&c, "acct-cap").await, "9000000000");
    let rate = js(
        &c,
        "return document.getElementById('acct-rate-requests').textContent;",
    )
    .await;
    assert_eq!(rate, "50/s, burst 100");
    // Her grant, as the API lists it.
    let g = h.admin("GET", "/v1/accounts/alice/grants", None).await.body;
    assert_eq!(figure(&c, "acct-granted").await, g["granted"].to_string());
    assert_eq!(figure(&c, "acct-general").await, g["general"].to_string());
    let grants = csv(&c, "grants-table").await;
    assert_eq!(grants.len(), 2, "{grants:?}");
    assert_eq!(grants[1][0], g["grants"][0]["grant"].as_str().unwrap());
    assert_eq!(grants[1][1], "welcome");
    assert_eq!(grants[1][6], g["grants"][0]["free"].to_string());
    let holds = csv(&c, "holds-table").await;
    assert_eq!(holds.len(), 2);
    assert_eq!(holds[1][0], hold.body["id"].as_str().unwrap());
    let hist = h
        .admin("GET", "/v1/accounts/alice/history?limit=50", None)
        .await
        .body;
    let shown = csv(&c, "history-table").await;
    let entries = hist["entries"].as_array().unwrap();
    assert_eq!(shown.len() - 1, entries.len());
    for (row, e) in shown[1..].iter().zip(entries) {
        assert_eq!(row[0], e["seq"].to_string());
        assert_eq!(row[1], e["at_ms"].to_string());
    }
    let queries = csv(&c, "queries-table").await;
    let api_queries = h
        .admin("GET", "/v1/accounts/alice/queries?limit=100", None)
        .await
        .body;
    let api_queries = api_queries["queries"].as_array().unwrap();
    assert_eq!(queries.len() - 1, api_queries.len());
    assert_eq!(
        queries[0],
        [
            "Id",
            "Time (ms)",
            "Sender",
            "Recipient",
            "Endpoint",
            "Amount (µ¢)",
            "Status"
        ]
    );
    for (row, q) in queries[1..].iter().zip(api_queries) {
        assert_eq!(row[0], q["id"].as_str().unwrap());
        assert_eq!(row[5], q["amount"].to_string());
        assert_eq!(row[6], q["status"].as_str().unwrap());
    }
    assert!(queries.iter().any(|r| r[6] == "pending"));
    shot(&c, "account").await;
    // This month's queries are all of them here; the range links keep the page live.
    c.find(Locator::Id("queries-month"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    ready(&c, "account").await;
    assert_eq!(csv(&c, "queries-table").await.len(), queries.len());
    // Her spend over 30 days is the API's usage of her as the paying account.
    let day = 86_400_000;
    let used = h
        .admin(
            "GET",
            &format!(
                "/v1/usage?granularity=day&account=alice&from_ms={}&to_ms={}",
                now - now % day - 29 * day,
                now + 3_600_000
            ),
            None,
        )
        .await
        .body;
    assert_eq!(
        figure(&c, "acct-used-cost").await,
        used["totals"]["cost"].to_string()
    );
    // A range of the query history: a date that is not one is refused on the page, nothing is
    // asked of the server; a range from the future holds no query.
    // A live reload may draw the page again at any moment (it keeps what was typed): each step
    // finds the field anew.
    let field = || c.find(Locator::Css("#queries-range [name=from]"));
    let submit = || async {
        c.find(Locator::Css("#queries-range button"))
            .await
            .unwrap()
            .click()
            .await
    };
    let deadline = Instant::now() + Duration::from_secs(5);
    while field()
        .await
        .unwrap()
        .send_keys("yesterday-ish")
        .await
        .is_err()
    {
        assert!(
            Instant::now() < deadline,
            "the range field kept going stale"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // A charge while someone types in the form: the page is drawn again, with the text kept.
    let drawn = js(&c, "return window.tallyTimings.length;").await;
    charge(&h, "live-typing", "alice", "chat", 1_000_000, "gpt-4o").await;
    let deadline = Instant::now() + Duration::from_secs(5);
    while js(&c, "return window.tallyTimings.length;").await == drawn {
        assert!(
            Instant::now() < deadline,
            "the charge did not redraw the account page"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let typed = js(
        &c,
        "return document.querySelector('#queries-range [name=from]').value;",
    )
    .await;
    assert_eq!(typed, "yesterday-ish", "a live reload wiped what was typed");
    // (Retried until a click lands on a button that is still there.)
    while submit().await.is_err() {
        assert!(
            Instant::now() < deadline,
            "the range button kept going stale"
        );
    }
    let refused = js(
        &c,
        "return [document.querySelector('#queries-range .form-error').textContent,
                 document.querySelector('#queries-range [name=from]').getAttribute('aria-invalid'),
                 location.hash];",
    )
    .await;
    assert!(
        refused[0].as_str().unwrap().contains("ISO 8601"),
        "{refused}"
    );
    assert_eq!(refused[1], "true");
    assert!(!refused[2].as_str().unwrap().contains("range"), "{refused}");
    js(
        &c,
        "const f = document.querySelector('#queries-range [name=from]');
         f.value = '2100-01-01T00:00Z'; return true;",
    )
    .await;
    while submit().await.is_err() {
        assert!(
            Instant::now() < deadline,
            "the range button kept going stale"
        );
    }
    // (The view is drawn again for the new range; the table is then only its header.)
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let hash = js(&c, "return location.hash;").await;
        if hash.as_str().unwrap().contains("queries=range") {
            ready(&c, "account").await;
            if csv(&c, "queries-table").await.len() == 1 {
                break;
            }
        }
        assert!(
            Instant::now() < deadline,
            "the future range was not shown empty"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // The live feed shows a charge made while it is open.
    c.goto(&format!("{base}/#/events")).await.unwrap();
    ready(&c, "events").await;
    charge(&h, "live-2", "bob", "search", 1_000_000, "web").await;
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let rows = csv(&c, "events-table").await;
        if rows
            .iter()
            .any(|r| r.get(2).is_some_and(|e| e == "credit.record-cost") && r[3] == "bob")
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the live feed did not show the charge: {rows:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    shot(&c, "events").await;

    // Documents left behind let go of their event streams: after more new documents than the
    // browser's 6 connections to a host, a page still loads all its reads.
    for i in 0..7 {
        c.goto(&format!("{base}/?doc{i}#/accounts/alice"))
            .await
            .unwrap();
        ready(&c, "account").await;
    }

    // Keyboard only: Tab from the top of the page reaches the navigation in order, and Enter
    // on a link opens its view.
    // A new document, so that Tab starts from its top.
    c.goto(&format!("{base}/?keyboard#/overview"))
        .await
        .unwrap();
    ready(&c, "overview").await;
    let mut reached = Vec::new();
    for _ in 0..4 {
        c.active_element()
            .await
            .unwrap()
            .send_keys(&fantoccini::key::Key::Tab.to_string())
            .await
            .unwrap();
        reached.push(js(&c, "return document.activeElement.textContent;").await);
    }
    assert_eq!(reached, ["Overview", "Usage", "Accounts", "Events"]);
    c.active_element()
        .await
        .unwrap()
        .send_keys(&fantoccini::key::Key::Enter.to_string())
        .await
        .unwrap();
    ready(&c, "events").await;
    let ring = js(
        &c,
        "return getComputedStyle(document.activeElement).outlineStyle;",
    )
    .await;
    assert_eq!(ring, "solid", "the focused link shows no focus ring");

    // Dark when the system is dark: the page follows prefers-color-scheme, charts included.
    color_scheme(&c, Some("dark")).await;
    c.goto(&format!("{base}/#/usage?range=today&granularity=hour"))
        .await
        .unwrap();
    ready(&c, "usage").await;
    assert_eq!(
        js(
            &c,
            "return matchMedia('(prefers-color-scheme: dark)').matches;"
        )
        .await,
        true
    );
    let colours = js(
        &c,
        "return [getComputedStyle(document.body).backgroundColor, getComputedStyle(document.body).color];",
    )
    .await;
    assert_eq!(colours, json!(["rgb(17, 20, 24)", "rgb(230, 232, 235)"]));
    shot(&c, "usage-dark").await;
    color_scheme(&c, Some("light")).await;
    c.goto(&format!("{base}/#/overview")).await.unwrap();
    ready(&c, "overview").await;
    let light = js(
        &c,
        "return getComputedStyle(document.body).backgroundColor;",
    )
    .await;
    assert_eq!(light, "rgb(255, 255, 255)");
    color_scheme(&c, None).await;

    // At a phone's width nothing but the tables scrolls sideways: the open overview's chart
    // follows the window as it narrows.
    c.set_window_size(390, 844).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        let fits = js(
            &c,
            "return document.documentElement.scrollWidth <= window.innerWidth + 1;",
        )
        .await;
        if fits == true {
            break;
        }
        if Instant::now() >= deadline {
            let culprits = js(
                &c,
                "return [...document.querySelectorAll('body *')]
                   .filter(e => e.getBoundingClientRect().right > window.innerWidth + 1)
                   .slice(0, 5).map(e => e.tagName + '.' + e.className);",
            )
            .await;
            panic!("the overview is wider than a phone's screen: {culprits}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    no_errors(&c).await;

    // Signing out ends the session; the page asks for a key again.
    c.find(Locator::Id("signout"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while !h.state.sessions.is_empty() {
        assert!(Instant::now() < deadline, "signing out left the session");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    c.close().await.unwrap();
    server.abort();
}

/// The dashboard's page loads in the browser at 10,000 accounts and a day of minute buckets: a
/// measurement, not a check of speed (figures in BENCHMARKS.md), run by hand:
/// `cargo test --release -p tally-server --test it dashboard_pages_at_10k -- --ignored --nocapture`.
/// Each view is opened as a new document; the time is from the navigation's start to the view
/// drawn with its data (HTML, scripts, styles, the API's reads, the tables and charts).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement: run it by hand with --release"]
async fn dashboard_pages_at_10k_accounts() {
    let h = Harness::new().await;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    h.clock.set(tally::Timestamp(now - 86_400_000));
    crate::dashboard_load::seed_10k_accounts_and_a_day(&h).await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = h.app.clone();
    let server = tokio::spawn(async move { axum::serve(listener, app).await });
    let base = format!("http://{addr}");
    let profile = tempfile::tempdir().unwrap();
    let Some((_driver, c)) = browser(profile.path()).await else {
        return;
    };
    c.goto(&format!("{base}/")).await.unwrap();
    let key = c.wait().for_element(Locator::Id("key")).await.unwrap();
    key.send_keys(ADMIN).await.unwrap();
    c.find(Locator::Css("#signin button"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    ready(&c, "overview").await;
    let day = format!(
        "#/usage?granularity=minute&from_ms={}&to_ms={}",
        now - 86_400_000,
        now + 60_000
    );
    let views = [
        ("overview", "#/overview"),
        ("usage", day.as_str()),
        ("usage", "#/usage?range=today&granularity=hour"),
        ("accounts", "#/accounts"),
        ("account", "#/accounts/alice"),
    ];
    for round in 0..3 {
        for (i, (name, hash)) in views.iter().enumerate() {
            // A new document each time (the query string differs), its assets from the cache.
            c.goto(&format!("{base}/?r{round}v{i}{hash}"))
                .await
                .unwrap();
            ready(&c, name).await;
            let t = js(
                &c,
                "const t = window.tallyTimings[0];
                 const nav = performance.getEntriesByType('navigation')[0];
                 return [t.view, Math.round(t.ready), Math.round(t.ready - t.started),
                         Math.round(nav.responseEnd)];",
            )
            .await;
            if *hash == day {
                // The day of minute buckets, all drawn.
                assert_eq!(csv(&c, "usage-table").await.len() - 1, 1_440);
            }
            eprintln!(
                "round {round}: {hash}: shown {} ms after navigation began ({} ms of reads and drawing; document received at {} ms)",
                t[1], t[2], t[3]
            );
        }
    }
    no_errors(&c).await;
    c.close().await.unwrap();
    server.abort();
}
