//! A corpus of hostile requests, run in-process: each case is a raw request (method, path,
//! headers, body bytes) and the status and stable error code (`error.code`) it must get.
//! Every answer must be a JSON error object (on the Syft routes with a top-level `detail`
//! string, what the v2 client shows), and no case may change the ledger: the audit, every
//! account's balance, the holds, the keys, the Syft users and their transactions are the same
//! after each case as before the first.
//!
//! A case the server answers wrongly is kept in its table with the correct expectation
//! commented out under a `// BUG:` comment; `.bug(...)` records what the server answers now
//! (so the case fails, pointing here, once the server is fixed: restore the expectation).

use axum::http::StatusCode;
use base64::Engine as _;
use serde_json::{json, Map, Value};

use crate::common::{Answer, Harness, ADMIN};

const PAYER: &str = "payer@example.com";
const PAYER_PW: &str = "payer-password";
const ROUTER: &str = "router@example.com";
const ROUTER_PW: &str = "router-password";
const THIEF: &str = "thief@example.com";
const THIEF_PW: &str = "thief-password";

/// 24 h and a minute: past a delegation token's lifetime.
const PAST_A_DAY_MS: u64 = 86_400_000 + 60_000;
/// The ledger's longest hold: 7 days.
const WEEK_MS: u64 = 7 * 86_400_000;

/// Accounts whose balances the snapshot compares: the world's, and names a hostile case
/// might manage to create.
const ACCOUNTS: [&str; 14] = [
    "alice",
    "bob",
    "chat",
    "search",
    "tally:funding",
    PAYER,
    ROUTER,
    THIEF,
    "mallory",
    "carol",
    "tally:evil",
    "tally:evil@example.com",
    "newbie@example.com",
    "dup@example.com",
];

// ---------------------------------------------------------------------------------------------
// Cases

/// What the server answers now for a case it gets wrong.
struct Bug {
    why: &'static str,
    status: u16,
    code: &'static str,
}

/// One hostile request and the answer it must get.
struct Case {
    name: String,
    method: &'static str,
    path: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    status: u16,
    code: &'static str,
    bug: Option<Bug>,
}

/// A case with the admin key and a JSON content type, an empty body, no expectation yet.
fn case(name: impl Into<String>, method: &'static str, path: impl Into<String>) -> Case {
    Case {
        name: name.into(),
        method,
        path: path.into(),
        headers: vec![
            ("authorization".into(), format!("Bearer {ADMIN}")),
            ("content-type".into(), "application/json".into()),
        ],
        body: Vec::new(),
        status: 0,
        code: "",
        bug: None,
    }
}

impl Case {
    /// The body, as text.
    fn json(mut self, body: impl AsRef<str>) -> Self {
        self.body = body.as_ref().as_bytes().to_vec();
        self
    }

    /// The body, as bytes.
    fn bytes(mut self, body: impl Into<Vec<u8>>) -> Self {
        self.body = body.into();
        self
    }

    /// Sets a header, replacing one of the same name.
    fn header(mut self, name: &str, value: impl Into<String>) -> Self {
        self.headers.retain(|(k, _)| k != name);
        self.headers.push((name.into(), value.into()));
        self
    }

    /// `Authorization: <value>` as given.
    fn auth(self, value: impl Into<String>) -> Self {
        self.header("authorization", value)
    }

    /// `Authorization: Bearer <key>`.
    fn bearer(self, key: &str) -> Self {
        self.auth(format!("Bearer {key}"))
    }

    /// HTTP Basic.
    fn basic(self, email: &str, password: &str) -> Self {
        self.auth(basic(email, password))
    }

    /// No `Authorization` header.
    fn no_auth(mut self) -> Self {
        self.headers.retain(|(k, _)| k != "authorization");
        self
    }

    /// An `Idempotency-Key`.
    fn key(self, key: impl Into<String>) -> Self {
        self.header("idempotency-key", key)
    }

    /// The status and error code the case must get.
    fn expect(mut self, status: u16, code: &'static str) -> Self {
        self.status = status;
        self.code = code;
        self
    }

    /// A known wrong answer: the status and code (`""` when the body is not a JSON error) the
    /// server gives now. Its JSON, `detail` and ledger checks are skipped.
    // Every known bug is fixed; kept for the next one the corpus finds.
    #[allow(dead_code)]
    fn bug(mut self, status: u16, code: &'static str, why: &'static str) -> Self {
        self.bug = Some(Bug { why, status, code });
        self
    }
}

fn basic(email: &str, password: &str) -> String {
    let pair = format!("{email}:{password}");
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(pair)
    )
}

fn b64url(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// A charge body with `amount` as raw JSON text.
fn charge(amount: &str) -> String {
    format!(r#"{{"account":"alice","app":"chat","amount":{amount}}}"#)
}

// ---------------------------------------------------------------------------------------------
// The world every family runs against

struct World {
    h: Harness,
    chat_key: String,
    search_key: String,
    expired_key: String,
    revoked_key: String,
    forged_key: String,
    /// A pending hold of alice for chat.
    hold: String,
    /// A pending hold of alice for search.
    search_hold: String,
    /// A committed hold of alice for chat.
    posted_hold: String,
    /// The posting of a charge of alice for chat.
    posting: String,
    /// alice's account number (hold and posting ids carry it).
    alice_id: String,
    /// payer → router, issued more than 24 h ago: expired.
    old_token: String,
    /// payer → router.
    token: String,
    /// payer → thief.
    thief_token: String,
    /// Pending, payer → router, created by router with the token.
    delegated_txn: String,
    /// Pending, payer → router, created by payer.
    direct_txn: String,
    /// Completed, payer → router.
    completed_txn: String,
}

fn ok(a: &Answer, status: StatusCode, what: &str) {
    assert_eq!(a.status, status, "setting up {what}: {a:?}");
}

fn text(v: &Value) -> String {
    v.as_str().unwrap_or_default().to_owned()
}

impl World {
    async fn open() -> World {
        let h = Harness::new().await;
        h.world(1_000_000_000).await;
        let a = h
            .admin(
                "POST",
                "/v1/accounts/bob/fund",
                Some(json!({"amount": 500_000_000})),
            )
            .await;
        ok(&a, StatusCode::OK, "bob's funds");
        let chat_key = h.service_key("chat").await;
        let search_key = h.service_key("search").await;

        // A key that expires in a minute (the clock moves a day on below).
        let a = h
            .admin(
                "POST",
                "/v1/keys",
                Some(json!({"scope": "admin", "expires_in_s": 60})),
            )
            .await;
        ok(&a, StatusCode::CREATED, "the expiring key");
        let expired_key = text(&a.body["secret"]);
        let forged_key = format!("tk_{}_{}", a.body["key"]["id"], "A".repeat(43));
        let a = h
            .admin("POST", "/v1/keys", Some(json!({"scope": "admin"})))
            .await;
        ok(&a, StatusCode::CREATED, "the revoked key");
        let revoked_key = text(&a.body["secret"]);
        let a = h
            .admin("DELETE", &format!("/v1/keys/{}", a.body["key"]["id"]), None)
            .await;
        ok(&a, StatusCode::OK, "revoking a key");

        // Syft users, funded.
        for (email, password) in [(PAYER, PAYER_PW), (ROUTER, ROUTER_PW), (THIEF, THIEF_PW)] {
            let a = h
                .admin(
                    "POST",
                    "/syft/v1/user/create",
                    Some(json!({"email": email, "password": password, "organization": "acme"})),
                )
                .await;
            ok(&a, StatusCode::CREATED, email);
        }
        for (email, amount) in [(PAYER, "10.0"), (ROUTER, "1.0"), (THIEF, "1.0")] {
            let a = h
                .raw(
                    "POST",
                    "/syft/v1/user/add-balance",
                    &[("authorization", &format!("Bearer {ADMIN}"))],
                    format!(r#"{{"recipientEmail":"{email}","amount":{amount}}}"#).into_bytes(),
                )
                .await;
            ok(&a, StatusCode::OK, email);
        }
        let old_token = token(&h, PAYER, PAYER_PW, ROUTER).await;

        // A day passes: the minute key and the old token expire.
        h.clock.advance(PAST_A_DAY_MS);

        let token_ = token(&h, PAYER, PAYER_PW, ROUTER).await;
        let thief_token = token(&h, PAYER, PAYER_PW, THIEF).await;

        let hold = |app: &'static str, amount: u64| {
            let h = &h;
            async move {
                let a = h
                    .admin(
                        "POST",
                        "/v1/holds",
                        Some(json!({"account": "alice", "app": app, "amount": amount,
                                    "timeout_ms": WEEK_MS, "endpoint": "/corpus"})),
                    )
                    .await;
                ok(&a, StatusCode::CREATED, "a hold");
                text(&a.body["id"])
            }
        };
        let pending = hold("chat", 5_000_000).await;
        let search_hold = hold("search", 2_000_000).await;
        let posted_hold = hold("chat", 2_000_000).await;
        let a = h
            .admin(
                "POST",
                &format!("/v1/holds/{posted_hold}/commit"),
                Some(json!({"amount": 1_500_000})),
            )
            .await;
        ok(&a, StatusCode::OK, "a commit");
        let a = h
            .as_key(
                ADMIN,
                "POST",
                "/v1/charges",
                Some(json!({"account": "alice", "app": "chat", "amount": 1_000_000})),
                Some("corpus-charge-1"),
            )
            .await;
        ok(&a, StatusCode::CREATED, "a charge");
        let posting = text(&a.body["posting"]);
        let alice_id = posting
            .strip_prefix("p_")
            .and_then(|r| r.split('_').next())
            .unwrap_or_default()
            .to_owned();

        let create = |who: (&'static str, &'static str), body: Value| {
            let h = &h;
            async move {
                let a = h
                    .raw(
                        "POST",
                        "/syft/v1/transaction/create",
                        &[("authorization", &basic(who.0, who.1))],
                        body.to_string().into_bytes(),
                    )
                    .await;
                ok(&a, StatusCode::CREATED, "a transaction");
                text(&a.body["transaction"]["id"])
            }
        };
        let delegated_txn = create(
            (ROUTER, ROUTER_PW),
            json!({"senderEmail": PAYER, "recipientEmail": ROUTER, "amount": 0.25, "token": token_}),
        )
        .await;
        let direct_txn = create(
            (PAYER, PAYER_PW),
            json!({"senderEmail": PAYER, "recipientEmail": ROUTER, "amount": 0.5}),
        )
        .await;
        let completed_txn = create(
            (PAYER, PAYER_PW),
            json!({"senderEmail": PAYER, "recipientEmail": ROUTER, "amount": 0.1}),
        )
        .await;
        let a = h
            .raw(
                "POST",
                "/syft/v1/transaction/confirm",
                &[("authorization", &basic(PAYER, PAYER_PW))],
                json!({"transactionId": completed_txn})
                    .to_string()
                    .into_bytes(),
            )
            .await;
        ok(&a, StatusCode::OK, "a confirm");

        World {
            h,
            chat_key,
            search_key,
            expired_key,
            revoked_key,
            forged_key,
            hold: pending,
            search_hold,
            posted_hold,
            posting,
            alice_id,
            old_token,
            token: token_,
            thief_token,
            delegated_txn,
            direct_txn,
            completed_txn,
        }
    }

    /// Everything a hostile request must leave as it was.
    async fn ledger(&self) -> Value {
        let h = &self.h;
        let mut balances = Map::new();
        for name in ACCOUNTS {
            let a = h
                .admin("GET", &format!("/v1/accounts/{name}/balance"), None)
                .await;
            balances.insert(name.into(), json!([a.status.as_u16(), a.body]));
        }
        let mut holds = Map::new();
        for id in [&self.hold, &self.search_hold, &self.posted_hold] {
            holds.insert(
                id.clone(),
                h.admin("GET", &format!("/v1/holds/{id}"), None).await.body,
            );
        }
        let mut txns = Map::new();
        for (email, password) in [(PAYER, PAYER_PW), (ROUTER, ROUTER_PW), (THIEF, THIEF_PW)] {
            let a = h
                .raw(
                    "GET",
                    "/syft/v1/transactions",
                    &[("authorization", &basic(email, password))],
                    vec![],
                )
                .await;
            txns.insert(email.into(), a.body);
        }
        let audit = h.admin("GET", "/v1/audit", None).await;
        assert_eq!(audit.body["ok"], true, "the audit fails: {audit:?}");
        json!({
            "audit": audit.body,
            "balances": balances,
            "holds": holds,
            "keys": h.admin("GET", "/v1/keys", None).await.body,
            "users": h.admin("GET", "/syft/v1/users", None).await.body,
            "transactions": txns,
        })
    }
}

/// Where two snapshots differ: `path: before -> after`, leaf by leaf.
fn changes(before: &Value, after: &Value) -> Vec<String> {
    fn walk(path: String, a: &Value, b: &Value, out: &mut Vec<String>) {
        match (a, b) {
            (Value::Object(x), Value::Object(y)) => {
                let keys: std::collections::BTreeSet<&String> = x.keys().chain(y.keys()).collect();
                for k in keys {
                    let (a, b) = (
                        x.get(k).unwrap_or(&Value::Null),
                        y.get(k).unwrap_or(&Value::Null),
                    );
                    walk(format!("{path}.{k}"), a, b, out);
                }
            }
            (Value::Array(x), Value::Array(y)) if x.len() == y.len() => {
                for (i, (a, b)) in x.iter().zip(y).enumerate() {
                    walk(format!("{path}[{i}]"), a, b, out);
                }
            }
            (a, b) if a != b => out.push(format!("{path}: {a} -> {b}")),
            _ => {}
        }
    }
    let mut out = Vec::new();
    walk(String::new(), before, after, &mut out);
    out
}

async fn token(h: &Harness, email: &str, password: &str, recipient: &str) -> String {
    let a = h
        .raw(
            "POST",
            "/syft/v1/token/create",
            &[("authorization", &basic(email, password))],
            json!({"recipientEmail": recipient})
                .to_string()
                .into_bytes(),
        )
        .await;
    ok(&a, StatusCode::OK, "a token");
    text(&a.body["token"])
}

/// Runs every case against `w`, then fails listing every case that got a wrong answer.
async fn run(w: &World, family: &str, cases: Vec<Case>) {
    let mut names = std::collections::HashSet::new();
    for c in &cases {
        assert!(
            c.status != 0 || c.bug.is_some(),
            "{}: no expectation",
            c.name
        );
        assert!(names.insert(c.name.clone()), "{}: two cases", c.name);
    }
    let mut before = w.ledger().await;
    let mut failures = Vec::new();
    let mut bugs = 0;
    for c in &cases {
        let headers: Vec<(&str, &str)> = c
            .headers
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let a = w.h.raw(c.method, &c.path, &headers, c.body.clone()).await;
        let got = a.status.as_u16();
        let is_error_json = a.body.is_object() && a.body["error"]["code"].is_string();
        let shown = || {
            let t: String = a.text.chars().take(300).collect();
            format!("{got} {t}")
        };
        if let Some(bug) = &c.bug {
            bugs += 1;
            eprintln!("{family}: {} (BUG: {}): {}", c.name, bug.why, shown());
            let after = w.ledger().await;
            let changed = after != before;
            if changed {
                eprintln!(
                    "{family}: {} changed the ledger: {}",
                    c.name,
                    changes(&before, &after).join("; ")
                );
                before = after;
            }
            let detail_missing = c.path.starts_with("/syft/") && !a.body["detail"].is_string();
            let still_wrong = changed || !is_error_json || detail_missing || got < 400;
            if (got, a.code()) != (bug.status, bug.code) {
                failures.push(format!(
                    "{}: a BUG case now answers {}, not {} {:?}: check it and restore its \
                     expectation",
                    c.name,
                    shown(),
                    bug.status,
                    bug.code
                ));
            } else if !still_wrong {
                failures.push(format!(
                    "{}: a BUG case now passes every check: restore its expectation",
                    c.name
                ));
            }
            continue;
        }
        if got != c.status {
            failures.push(format!(
                "{}: status {got}, expected {}: {}",
                c.name,
                c.status,
                shown()
            ));
        } else if !is_error_json {
            failures.push(format!("{}: not a JSON error: {}", c.name, shown()));
        } else if a.code() != c.code {
            failures.push(format!(
                "{}: code {:?}, expected {:?}: {}",
                c.name,
                a.code(),
                c.code,
                shown()
            ));
        } else if c.path.starts_with("/syft/") && !a.body["detail"].is_string() {
            failures.push(format!("{}: no `detail`: {}", c.name, shown()));
        }
        let after = w.ledger().await;
        if after != before {
            failures.push(format!(
                "{}: changed the ledger ({}): {}",
                c.name,
                shown(),
                changes(&before, &after).join("; ")
            ));
            before = after;
        }
    }
    eprintln!(
        "{family}: {} cases, {} known bugs, {} failures",
        cases.len(),
        bugs,
        failures.len()
    );
    assert!(
        failures.is_empty(),
        "{family}: {} of {} cases failed:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}

// ---------------------------------------------------------------------------------------------
// The native API

fn native_cases(w: &World) -> Vec<Case> {
    let mut cases = Vec::new();
    let alice = &w.alice_id;

    // Amounts of a charge: only an integer 1 ..= 2^63 − 1 is one.
    let huge = "9".repeat(400);
    let deep = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
    for (label, amount, status, code) in [
        ("a string", r#""10""#, 400, "invalid_field"),
        ("a bool", "true", 400, "invalid_field"),
        ("an array", "[1]", 400, "invalid_field"),
        ("an object", r#"{"value":1}"#, 400, "invalid_field"),
        ("null", "null", 400, "invalid_field"),
        ("a float", "1.5", 400, "invalid_field"),
        ("an integral float", "10.0", 400, "invalid_field"),
        ("9 decimals", "0.000000001", 400, "invalid_field"),
        ("an exponent", "1e3", 400, "invalid_field"),
        ("an upper exponent with sign", "1E+2", 400, "invalid_field"),
        ("a negative exponent", "1e-9", 400, "invalid_field"),
        ("negative", "-1", 400, "invalid_field"),
        ("negative zero", "-0", 400, "invalid_field"),
        ("zero", "0", 400, "zero_amount"),
        ("2^63", "9223372036854775808", 400, "amount_too_large"),
        ("2^64 - 1", "18446744073709551615", 400, "amount_too_large"),
        ("2^64", "18446744073709551616", 400, "invalid_field"),
        ("400 digits", huge.as_str(), 400, "malformed_json"),
        ("deeply nested arrays", deep.as_str(), 400, "malformed_json"),
        ("a hex literal", "0x10", 400, "malformed_json"),
        ("a leading zero", "010", 400, "malformed_json"),
        ("NaN", "NaN", 400, "malformed_json"),
        ("Infinity", "Infinity", 400, "malformed_json"),
        ("a leading plus", "+5", 400, "malformed_json"),
    ] {
        cases.push(
            case(format!("charge amount {label}"), "POST", "/v1/charges")
                .json(charge(amount))
                .expect(status, code),
        );
    }

    // Fields.
    let fields: [(&str, String, u16, &'static str); 12] = [
        (
            "missing amount",
            r#"{"account":"alice","app":"chat"}"#.into(),
            400,
            "missing_field",
        ),
        (
            "missing account",
            r#"{"app":"chat","amount":1}"#.into(),
            400,
            "missing_field",
        ),
        (
            "missing app",
            r#"{"account":"alice","amount":1}"#.into(),
            400,
            "missing_field",
        ),
        (
            "an unknown field",
            r#"{"account":"alice","app":"chat","amount":1,"amout":2}"#.into(),
            400,
            "unknown_field",
        ),
        (
            "an unknown field in usage",
            r#"{"account":"alice","app":"chat","amount":1,"usage":{"requests":1,"tokens":5}}"#
                .into(),
            400,
            "unknown_field",
        ),
        (
            "a negative count in usage",
            r#"{"account":"alice","app":"chat","amount":1,"usage":{"requests":-1}}"#.into(),
            400,
            "invalid_field",
        ),
        (
            "usage as a string",
            r#"{"account":"alice","app":"chat","amount":1,"usage":"lots"}"#.into(),
            400,
            "invalid_field",
        ),
        (
            "account as a number",
            r#"{"account":7,"app":"chat","amount":1}"#.into(),
            400,
            "invalid_field",
        ),
        (
            "an unknown account",
            r#"{"account":"mallory","app":"chat","amount":1}"#.into(),
            404,
            "unknown_account",
        ),
        (
            "an unknown app",
            r#"{"account":"alice","app":"mallory","amount":1}"#.into(),
            404,
            "unknown_account",
        ),
        (
            "an overlong account",
            format!(
                r#"{{"account":"{}","app":"chat","amount":1}}"#,
                "a".repeat(129)
            ),
            404,
            "unknown_account",
        ),
        (
            "more than alice has",
            charge("1000000000000"),
            402,
            "insufficient_funds",
        ),
    ];
    for (label, body, status, code) in fields {
        cases.push(
            case(format!("charge with {label}"), "POST", "/v1/charges")
                .json(body)
                .expect(status, code),
        );
    }
    cases.extend([
        // (A user may be the payee: the engine's holds and charges pay a revenue or a user
        // account, which the Syft transfers between users need.)
        case(
            "charge with the funding account as the app",
            "POST",
            "/v1/charges",
        )
        .json(r#"{"account":"alice","app":"tally:funding","amount":1}"#)
        .expect(422, "wrong_account_kind"),
        case("charge of a revenue account", "POST", "/v1/charges")
            .json(r#"{"account":"search","app":"chat","amount":1}"#)
            .expect(422, "wrong_account_kind"),
        case("charge of alice for alice", "POST", "/v1/charges")
            .json(r#"{"account":"alice","app":"alice","amount":1}"#)
            .expect(422, "same_account"),
        case("charge with an overlong endpoint", "POST", "/v1/charges")
            .json(format!(
                r#"{{"account":"alice","app":"chat","amount":1,"endpoint":"{}"}}"#,
                "e".repeat(129)
            ))
            .expect(400, "field_too_long"),
        case("charge with metadata over 1 KiB", "POST", "/v1/charges")
            .json(format!(
                r#"{{"account":"alice","app":"chat","amount":1,"metadata":"{}"}}"#,
                "m".repeat(1025)
            ))
            .expect(400, "field_too_long"),
    ]);

    // Bodies that are not one JSON object.
    let mut bad_utf8 = br#"{"account":"al"#.to_vec();
    bad_utf8.extend_from_slice(&[0xff, 0xfe]);
    bad_utf8.extend_from_slice(br#"ice","app":"chat","amount":1}"#);
    let big = format!(
        r#"{{"account":"alice","app":"chat","amount":1,"metadata":"{}"}}"#,
        "x".repeat(70_000)
    );
    cases.extend([
        case("charge body truncated", "POST", "/v1/charges")
            .json(r#"{"account":"alice","app":"ch"#)
            .expect(400, "malformed_json"),
        case("charge body with trailing garbage", "POST", "/v1/charges")
            .json(format!("{} garbage", charge("1")))
            .expect(400, "malformed_json"),
        case(
            "charge body followed by a second object",
            "POST",
            "/v1/charges",
        )
        .json(format!("{}{}", charge("1"), charge("1")))
        .expect(400, "malformed_json"),
        case("charge body with invalid UTF-8", "POST", "/v1/charges")
            .bytes(bad_utf8)
            .expect(400, "malformed_json"),
        case("charge body empty", "POST", "/v1/charges").expect(400, "malformed_json"),
        case("charge body only whitespace", "POST", "/v1/charges")
            .json("  \n ")
            .expect(400, "malformed_json"),
        case("charge body an empty array", "POST", "/v1/charges")
            .json("[]")
            .expect(400, "invalid_field"),
        case("charge body an array of the fields", "POST", "/v1/charges")
            .json(r#"["alice","chat",1]"#)
            .expect(400, "invalid_field"),
        case("charge body a string", "POST", "/v1/charges")
            .json(r#""charge""#)
            .expect(400, "invalid_field"),
        case("charge body null", "POST", "/v1/charges")
            .json("null")
            .expect(400, "invalid_field"),
        case("charge body deeply nested arrays", "POST", "/v1/charges")
            .json(&deep)
            .expect(400, "malformed_json"),
        case("charge body a duplicated field", "POST", "/v1/charges")
            .json(r#"{"account":"alice","app":"chat","amount":1,"amount":2}"#)
            .expect(400, "invalid_field"),
        case("charge body over 64 KiB", "POST", "/v1/charges")
            .json(big)
            .expect(413, "body_too_large"),
    ]);

    // Accounts.
    for (label, id) in [
        ("overlong", "a".repeat(129)),
        ("empty", String::new()),
        ("with a control character", "car\\u0007ol".into()),
        ("with a newline", "car\\nol".into()),
        ("with a slash", "car/ol".into()),
        ("reserved", "tally:funding".into()),
        ("reserved, new", "tally:evil".into()),
    ] {
        cases.push(
            case(format!("create account {label}"), "POST", "/v1/accounts")
                .json(format!(r#"{{"id":"{id}","kind":"user"}}"#))
                .expect(400, "invalid_field"),
        );
    }
    cases.extend([
        case("create account of an unknown kind", "POST", "/v1/accounts")
            .json(r#"{"id":"carol","kind":"god"}"#)
            .expect(400, "invalid_field"),
        case("create account kind in capitals", "POST", "/v1/accounts")
            .json(r#"{"id":"carol","kind":"USER"}"#)
            .expect(400, "invalid_field"),
        case(
            "create account with a credit limit of 2^63",
            "POST",
            "/v1/accounts",
        )
        .json(r#"{"id":"carol","kind":"user","credit_limit":9223372036854775808}"#)
        .expect(400, "amount_too_large"),
        case(
            "create account with a negative credit limit",
            "POST",
            "/v1/accounts",
        )
        .json(r#"{"id":"carol","kind":"user","credit_limit":-1}"#)
        .expect(400, "invalid_field"),
        case(
            "create account again with another kind",
            "POST",
            "/v1/accounts",
        )
        .json(r#"{"id":"alice","kind":"revenue"}"#)
        .expect(409, "account_exists"),
        case(
            "create account with an unknown field",
            "POST",
            "/v1/accounts",
        )
        .json(r#"{"id":"carol","kind":"user","admin":true}"#)
        .expect(400, "unknown_field"),
        case(
            "balance of an unknown account",
            "GET",
            "/v1/accounts/mallory/balance",
        )
        .expect(404, "unknown_account"),
        case(
            "balance of an id with a control character",
            "GET",
            "/v1/accounts/al%07ice/balance",
        )
        .expect(404, "unknown_account"),
        case(
            "balance of an id with an encoded slash",
            "GET",
            "/v1/accounts/al%2Fice/balance",
        )
        .expect(404, "unknown_account"),
        case(
            "balance of an overlong id",
            "GET",
            format!("/v1/accounts/{}/balance", "a".repeat(200)),
        )
        .expect(404, "unknown_account"),
        case(
            "balance of an id that is invalid UTF-8",
            "GET",
            "/v1/accounts/%FF/balance",
        )
        .expect(400, "invalid_path"),
        case(
            "fund an unknown account",
            "POST",
            "/v1/accounts/mallory/fund",
        )
        .json(r#"{"amount":1}"#)
        .expect(404, "unknown_account"),
        case(
            "fund from a user account",
            "POST",
            "/v1/accounts/alice/fund",
        )
        .json(r#"{"amount":1,"from":"bob"}"#)
        .expect(422, "wrong_account_kind"),
        case(
            "fund from an unknown account",
            "POST",
            "/v1/accounts/alice/fund",
        )
        .json(r#"{"amount":1,"from":"mallory"}"#)
        .expect(404, "unknown_account"),
        case("fund 2^63", "POST", "/v1/accounts/alice/fund")
            .json(r#"{"amount":9223372036854775808}"#)
            .expect(400, "amount_too_large"),
        case("fund zero", "POST", "/v1/accounts/alice/fund")
            .json(r#"{"amount":0}"#)
            .expect(400, "zero_amount"),
        case(
            "fund the funding account from itself",
            "POST",
            "/v1/accounts/tally:funding/fund",
        )
        .json(r#"{"amount":1}"#)
        .expect(422, "wrong_account_kind"),
    ]);

    // Holds.
    let hold = &w.hold;
    for (label, id) in [
        ("with a letter for the account", "h_x_1".to_owned()),
        ("without a sequence", "h_1_".into()),
        ("without an account", "h__1".into()),
        ("with 23 digits", "h_99999999999999999999999_1".into()),
        ("past 2^64", "h_18446744073709551616_1".into()),
        ("with a sign", format!("h_+{alice}_1")),
        ("with a third part", format!("h_{alice}_1_1")),
        ("that is a posting id", "p_1".into()),
        ("with an encoded slash", "h_1%2F1".into()),
        ("of an unknown sequence", format!("h_{alice}_999999")),
        ("of the funding account", "h_1_1".into()),
    ] {
        cases.push(
            case(
                format!("get a hold {label}"),
                "GET",
                format!("/v1/holds/{id}"),
            )
            .expect(404, "unknown_hold"),
        );
    }
    // A well-formed id of an account that does not exist names the account.
    for (label, id) in [
        ("of an unknown account", "h_999999_1"),
        ("of the account 0", "h_0_1"),
    ] {
        cases.push(
            case(
                format!("get a hold {label}"),
                "GET",
                format!("/v1/holds/{id}"),
            )
            .expect(404, "unknown_account"),
        );
    }
    cases.extend([
        case(
            "commit an unknown hold",
            "POST",
            format!("/v1/holds/h_{alice}_999999/commit"),
        )
        .json(r#"{"amount":1}"#)
        .expect(404, "unknown_hold"),
        case(
            "commit a malformed hold id",
            "POST",
            "/v1/holds/h_x_1/commit",
        )
        .json(r#"{"amount":1}"#)
        .expect(404, "unknown_hold"),
        case("void a malformed hold id", "POST", "/v1/holds/h_1_/void")
            .json("{}")
            .expect(404, "unknown_hold"),
        case(
            "commit more than held",
            "POST",
            format!("/v1/holds/{hold}/commit"),
        )
        .json(r#"{"amount":5000001}"#)
        .expect(422, "commit_exceeds_hold"),
        case("commit zero", "POST", format!("/v1/holds/{hold}/commit"))
            .json(r#"{"amount":0}"#)
            .expect(400, "zero_amount"),
        case("commit a float", "POST", format!("/v1/holds/{hold}/commit"))
            .json(r#"{"amount":1.5}"#)
            .expect(400, "invalid_field"),
        case(
            "commit with an unknown usage field",
            "POST",
            format!("/v1/holds/{hold}/commit"),
        )
        .json(r#"{"amount":1,"usage":{"tokens":1}}"#)
        .expect(400, "unknown_field"),
        case(
            "commit without an amount",
            "POST",
            format!("/v1/holds/{hold}/commit"),
        )
        .json("{}")
        .expect(400, "missing_field"),
        case(
            "commit a posted hold",
            "POST",
            format!("/v1/holds/{}/commit", w.posted_hold),
        )
        .json(r#"{"amount":1}"#)
        .expect(409, "hold_already_resolved"),
        case(
            "void a posted hold",
            "POST",
            format!("/v1/holds/{}/void", w.posted_hold),
        )
        .json("{}")
        .expect(409, "hold_already_resolved"),
        case(
            "void with an unknown field",
            "POST",
            format!("/v1/holds/{hold}/void"),
        )
        .json(r#"{"force":true}"#)
        .expect(400, "unknown_field"),
        case(
            "void with an empty body",
            "POST",
            format!("/v1/holds/{hold}/void"),
        )
        .expect(400, "malformed_json"),
        case("hold with a zero timeout", "POST", "/v1/holds")
            .json(r#"{"account":"alice","app":"chat","amount":1,"timeout_ms":0}"#)
            .expect(400, "invalid_timeout"),
        case("hold for more than 7 days", "POST", "/v1/holds")
            .json(format!(
                r#"{{"account":"alice","app":"chat","amount":1,"timeout_ms":{}}}"#,
                WEEK_MS + 1
            ))
            .expect(400, "invalid_timeout"),
        case("hold with a timeout of 2^64", "POST", "/v1/holds")
            .json(
                r#"{"account":"alice","app":"chat","amount":1,"timeout_ms":18446744073709551616}"#,
            )
            .expect(400, "invalid_field"),
        case("hold of more than alice has", "POST", "/v1/holds")
            .json(r#"{"account":"alice","app":"chat","amount":9223372036854775807}"#)
            .expect(402, "insufficient_funds"),
        case("hold with an unknown field", "POST", "/v1/holds")
            .json(r#"{"account":"alice","app":"chat","amount":1,"expires":1}"#)
            .expect(400, "unknown_field"),
    ]);

    // Refunds and transfers.
    let posting = &w.posting;
    cases.extend([
        case(
            "refund a posting id without a sequence",
            "POST",
            "/v1/refunds",
        )
        .json(r#"{"posting":"p_1","amount":1}"#)
        .expect(400, "invalid_field"),
        case("refund a hold id", "POST", "/v1/refunds")
            .json(format!(r#"{{"posting":"{hold}","amount":1}}"#))
            .expect(400, "invalid_field"),
        case("refund a posting with 23 digits", "POST", "/v1/refunds")
            .json(r#"{"posting":"p_99999999999999999999999_1","amount":1}"#)
            .expect(400, "invalid_field"),
        case("refund an unknown posting", "POST", "/v1/refunds")
            .json(format!(r#"{{"posting":"p_{alice}_999999","amount":1}}"#))
            .expect(404, "unknown_posting"),
        case("refund more than posted", "POST", "/v1/refunds")
            .json(format!(r#"{{"posting":"{posting}","amount":1000001}}"#))
            .expect(422, "refund_exceeds_posting"),
        case("refund zero", "POST", "/v1/refunds")
            .json(format!(r#"{{"posting":"{posting}","amount":0}}"#))
            .expect(400, "zero_amount"),
        case("transfer to oneself", "POST", "/v1/transfers")
            .json(r#"{"from":"alice","to":"alice","amount":1}"#)
            .expect(422, "same_account"),
        case("transfer more than alice has", "POST", "/v1/transfers")
            .json(r#"{"from":"alice","to":"bob","amount":1000000000000}"#)
            .expect(402, "insufficient_funds"),
        case("transfer to an unknown account", "POST", "/v1/transfers")
            .json(r#"{"from":"alice","to":"mallory","amount":1}"#)
            .expect(404, "unknown_account"),
        case("transfer a negative amount", "POST", "/v1/transfers")
            .json(r#"{"from":"bob","to":"alice","amount":-100}"#)
            .expect(400, "invalid_field"),
    ]);

    // Idempotency keys.
    cases.extend([
        case(
            "charge with an empty idempotency key",
            "POST",
            "/v1/charges",
        )
        .key("")
        .json(charge("1"))
        .expect(400, "invalid_idempotency_key"),
        case(
            "charge with a 256-byte idempotency key",
            "POST",
            "/v1/charges",
        )
        .key("k".repeat(256))
        .json(charge("1"))
        .expect(400, "invalid_idempotency_key"),
        case(
            "charge with an idempotency key with spaces",
            "POST",
            "/v1/charges",
        )
        .key("has space")
        .json(charge("1"))
        .expect(400, "invalid_idempotency_key"),
        case(
            "charge with an idempotency key with a tab",
            "POST",
            "/v1/charges",
        )
        .key("has\ttab")
        .json(charge("1"))
        .expect(400, "invalid_idempotency_key"),
        case(
            "charge with a non-ASCII idempotency key",
            "POST",
            "/v1/charges",
        )
        .key("clé-1")
        .json(charge("1"))
        .expect(400, "invalid_idempotency_key"),
        case(
            "an idempotency key reused with another amount",
            "POST",
            "/v1/charges",
        )
        .key("corpus-charge-1")
        .json(charge("1000001"))
        .expect(409, "idempotency_conflict"),
        case(
            "an idempotency key reused with another endpoint",
            "POST",
            "/v1/charges",
        )
        .key("corpus-charge-1")
        .json(r#"{"account":"alice","app":"chat","amount":1000000,"endpoint":"/x"}"#)
        .expect(409, "idempotency_conflict"),
        case(
            "an idempotency key reused on another route",
            "POST",
            "/v1/transfers",
        )
        .key("corpus-charge-1")
        .json(r#"{"from":"alice","to":"bob","amount":1}"#)
        .expect(409, "idempotency_conflict"),
    ]);

    // Batches.
    let many: Vec<String> = (0..1_001)
        .map(|_| r#"{"op":"void","hold":"h"}"#.to_owned())
        .collect();
    cases.extend([
        case("batch without operations", "POST", "/v1/batch")
            .json(r#"{"operations":[]}"#)
            .expect(400, "invalid_field"),
        case("batch of 1,001 operations", "POST", "/v1/batch")
            .json(format!(r#"{{"operations":[{}]}}"#, many.join(",")))
            .expect(400, "invalid_field"),
        case("batch with an unknown op", "POST", "/v1/batch")
            .json(r#"{"operations":[{"op":"fund","account":"alice","amount":1},{"op":"steal"}]}"#)
            .expect(400, "invalid_field"),
        case("batch with an operation without op", "POST", "/v1/batch")
            .json(r#"{"operations":[{"account":"alice","amount":1}]}"#)
            .expect(400, "missing_field"),
        case("batch with a string amount", "POST", "/v1/batch")
            .json(r#"{"operations":[{"op":"fund","account":"alice","amount":"1"}]}"#)
            .expect(400, "invalid_field"),
        case(
            "batch with an unknown field in an operation",
            "POST",
            "/v1/batch",
        )
        .json(r#"{"operations":[{"op":"fund","account":"alice","amount":1,"x":1}]}"#)
        .expect(400, "unknown_field"),
        case("batch operations as an object", "POST", "/v1/batch")
            .json(r#"{"operations":{"op":"fund"}}"#)
            .expect(400, "invalid_field"),
    ]);

    // Query strings, keys, routes.
    cases.extend([
        case(
            "check with an unknown parameter",
            "GET",
            "/v1/accounts/alice/check?foo=1",
        )
        .expect(400, "unknown_field"),
        case(
            "check with a word for minimum",
            "GET",
            "/v1/accounts/alice/check?minimum=abc",
        )
        .expect(400, "invalid_field"),
        case(
            "check with a negative minimum",
            "GET",
            "/v1/accounts/alice/check?minimum=-1",
        )
        .expect(400, "invalid_field"),
        case(
            "check with a minimum of 2^63",
            "GET",
            "/v1/accounts/alice/check?minimum=9223372036854775808",
        )
        .expect(400, "amount_too_large"),
        case(
            "history with limit 0",
            "GET",
            "/v1/accounts/alice/history?limit=0",
        )
        .expect(400, "invalid_field"),
        case(
            "history with limit 1001",
            "GET",
            "/v1/accounts/alice/history?limit=1001",
        )
        .expect(400, "invalid_field"),
        case(
            "history after -1",
            "GET",
            "/v1/accounts/alice/history?after=-1",
        )
        .expect(400, "invalid_field"),
        case(
            "history with an unknown parameter",
            "GET",
            "/v1/accounts/alice/history?page=2",
        )
        .expect(400, "unknown_field"),
        case("create a key of an unknown scope", "POST", "/v1/keys")
            .json(r#"{"scope":"root"}"#)
            .expect(400, "invalid_field"),
        case(
            "create a service key for a user account",
            "POST",
            "/v1/keys",
        )
        .json(r#"{"scope":"service","app":"alice"}"#)
        .expect(400, "invalid_field"),
        case("create a service key without an app", "POST", "/v1/keys")
            .json(r#"{"scope":"service"}"#)
            .expect(400, "invalid_field"),
        case("create a key expiring in 0 s", "POST", "/v1/keys")
            .json(r#"{"scope":"admin","expires_in_s":0}"#)
            .expect(400, "invalid_field"),
        case(
            "create a key expiring past the end of time",
            "POST",
            "/v1/keys",
        )
        .json(r#"{"scope":"admin","expires_in_s":18446744073709551615}"#)
        .expect(400, "invalid_field"),
        case(
            "revoke a key that is not a number",
            "DELETE",
            "/v1/keys/abc",
        )
        .expect(404, "not_found"),
        case("revoke an unknown key", "DELETE", "/v1/keys/999999").expect(404, "not_found"),
        case("record-cost of a string", "POST", "/v1/cost/record-cost")
            .json(r#"{"account":"alice","app":"chat","cost":"5"}"#)
            .expect(400, "invalid_field"),
        case(
            "funding-update with a stale old amount",
            "POST",
            "/v1/cost/funding-update",
        )
        .json(r#"{"account":"alice","old_amount":0,"new_amount":5}"#)
        .expect(409, "funding_mismatch"),
        case("an unknown route", "GET", "/v1/nope").expect(404, "not_found"),
        case("a route with a trailing slash", "POST", "/v1/charges/")
            .json(charge("1"))
            .expect(404, "not_found"),
        case("a method a route does not take", "DELETE", "/v1/charges")
            .expect(405, "method_not_allowed"),
    ]);
    cases
}

#[tokio::test]
async fn native_api_hostile_requests_get_their_codes_and_change_nothing() {
    let w = World::open().await;
    let cases = native_cases(&w);
    assert!(cases.len() >= 90, "{}", cases.len());
    run(&w, "native", cases).await;
}

// ---------------------------------------------------------------------------------------------
// Credentials

fn credential_cases(w: &World) -> Vec<Case> {
    let balance = "/v1/accounts/alice/balance";
    let chat = w.chat_key.as_str();
    let search_hold = &w.search_hold;
    let mut cases = vec![
        case("no Authorization", "GET", balance)
            .no_auth()
            .expect(401, "unauthenticated"),
        case("no Authorization on a write", "POST", "/v1/charges")
            .no_auth()
            .json(charge("1"))
            .expect(401, "unauthenticated"),
        case("Basic scheme on the native API", "GET", balance)
            .basic(PAYER, PAYER_PW)
            .expect(401, "unauthenticated"),
        case("an unknown scheme", "GET", balance)
            .auth(format!("Token {ADMIN}"))
            .expect(401, "unauthenticated"),
        case("a scheme without a credential", "GET", balance)
            .auth("Bearer")
            .expect(401, "unauthenticated"),
        case("Bearer and a space", "GET", balance)
            .auth("Bearer ")
            .expect(401, "unauthenticated"),
        case("the admin key without a scheme", "GET", balance)
            .auth(ADMIN)
            .expect(401, "unauthenticated"),
        case("a garbage bearer", "GET", balance)
            .bearer("garbage")
            .expect(401, "unauthenticated"),
        case("the admin key with a suffix", "GET", balance)
            .bearer(&format!("{ADMIN}x"))
            .expect(401, "unauthenticated"),
        case("the admin key truncated", "GET", balance)
            .bearer(&ADMIN[..ADMIN.len() - 1])
            .expect(401, "unauthenticated"),
        case("the admin key in capitals", "GET", balance)
            .bearer(&ADMIN.to_uppercase())
            .expect(401, "unauthenticated"),
        case("a forged key with a real id", "GET", balance)
            .bearer(&w.forged_key)
            .expect(401, "unauthenticated"),
        case("a key with an unknown id", "GET", balance)
            .bearer(&format!("tk_999999_{}", "A".repeat(43)))
            .expect(401, "unauthenticated"),
        case("a key with an id past 2^64", "GET", balance)
            .bearer(&format!("tk_99999999999999999999999_{}", "A".repeat(43)))
            .expect(401, "unauthenticated"),
        case(
            "a service key with its secret changed",
            "GET",
            "/v1/holds/h_1_1",
        )
        .bearer(&format!("{}x", &chat[..chat.len() - 1]))
        .expect(401, "unauthenticated"),
        case("a revoked key", "GET", balance)
            .bearer(&w.revoked_key)
            .expect(401, "unauthenticated"),
        case("an expired key", "GET", balance)
            .bearer(&w.expired_key)
            .expect(401, "unauthenticated"),
        case(
            "an expired key on a write",
            "POST",
            "/v1/accounts/alice/fund",
        )
        .bearer(&w.expired_key)
        .json(r#"{"amount":1}"#)
        .expect(401, "unauthenticated"),
        case("a non-ASCII Authorization", "GET", balance)
            .auth("Bearer clé")
            .expect(401, "unauthenticated"),
        case("a delegation token as a bearer", "GET", balance)
            .bearer(&w.token)
            .expect(401, "unauthenticated"),
        case(
            "the OpenAPI document without a key",
            "GET",
            "/v1/openapi.json",
        )
        .no_auth()
        .expect(401, "unauthenticated"),
        case("metrics with a garbage key", "GET", "/metrics")
            .bearer("garbage")
            .expect(401, "unauthenticated"),
        case("Syft users with a revoked key", "GET", "/syft/v1/users")
            .bearer(&w.revoked_key)
            .expect(401, "unauthenticated"),
        case(
            "Syft add-balance with an expired key",
            "POST",
            "/syft/v1/user/add-balance",
        )
        .bearer(&w.expired_key)
        .json(format!(r#"{{"recipientEmail":"{PAYER}","amount":1.0}}"#))
        .expect(401, "unauthenticated"),
        case(
            "Syft add-balance with a forged key",
            "POST",
            "/syft/v1/user/add-balance",
        )
        .bearer(&w.forged_key)
        .json(format!(r#"{{"recipientEmail":"{PAYER}","amount":1.0}}"#))
        .expect(401, "unauthenticated"),
    ];

    // A service key of chat acting for search, or as an admin.
    let as_chat: [(&str, &'static str, String, String); 26] = [
        (
            "reserves for search",
            "POST",
            "/v1/holds".into(),
            r#"{"account":"alice","app":"search","amount":1}"#.into(),
        ),
        (
            "charges for search",
            "POST",
            "/v1/charges".into(),
            r#"{"account":"alice","app":"search","amount":1}"#.into(),
        ),
        (
            "records a cost for search",
            "POST",
            "/v1/cost/record-cost".into(),
            r#"{"account":"alice","app":"search","cost":1}"#.into(),
        ),
        (
            "commits search's hold",
            "POST",
            format!("/v1/holds/{search_hold}/commit"),
            r#"{"amount":1}"#.into(),
        ),
        (
            "voids search's hold",
            "POST",
            format!("/v1/holds/{search_hold}/void"),
            "{}".into(),
        ),
        (
            "gets search's hold",
            "GET",
            format!("/v1/holds/{search_hold}"),
            String::new(),
        ),
        (
            "funds",
            "POST",
            "/v1/accounts/alice/fund".into(),
            r#"{"amount":1}"#.into(),
        ),
        (
            "creates an account",
            "POST",
            "/v1/accounts".into(),
            r#"{"id":"mallory","kind":"user"}"#.into(),
        ),
        (
            "reads a balance",
            "GET",
            "/v1/accounts/alice/balance".into(),
            String::new(),
        ),
        (
            "reads history",
            "GET",
            "/v1/accounts/alice/history".into(),
            String::new(),
        ),
        (
            "transfers",
            "POST",
            "/v1/transfers".into(),
            r#"{"from":"alice","to":"bob","amount":1}"#.into(),
        ),
        (
            "refunds",
            "POST",
            "/v1/refunds".into(),
            format!(r#"{{"posting":"{}","amount":1}}"#, w.posting),
        ),
        (
            "updates funding",
            "POST",
            "/v1/funding-updates".into(),
            r#"{"account":"alice","old_amount":0,"new_amount":1}"#.into(),
        ),
        (
            "updates funding the seeds' way",
            "POST",
            "/v1/cost/funding-update".into(),
            r#"{"account":"alice","old_amount":0,"new_amount":1}"#.into(),
        ),
        (
            "creates an admin key",
            "POST",
            "/v1/keys".into(),
            r#"{"scope":"admin"}"#.into(),
        ),
        (
            "creates a key for search",
            "POST",
            "/v1/keys".into(),
            r#"{"scope":"service","app":"search"}"#.into(),
        ),
        ("lists keys", "GET", "/v1/keys".into(), String::new()),
        (
            "revokes a key",
            "DELETE",
            "/v1/keys/1".into(),
            String::new(),
        ),
        ("audits", "GET", "/v1/audit".into(), String::new()),
        (
            "reads the trail head",
            "GET",
            "/v1/trail/head".into(),
            String::new(),
        ),
        ("reads metrics", "GET", "/metrics".into(), String::new()),
        (
            "lists Syft users",
            "GET",
            "/syft/v1/users".into(),
            String::new(),
        ),
        (
            "reads a Syft user",
            "GET",
            format!("/syft/v1/user/{PAYER}"),
            String::new(),
        ),
        (
            "creates a Syft user",
            "POST",
            "/syft/v1/user/create".into(),
            r#"{"email":"newbie@example.com"}"#.into(),
        ),
        (
            "adds a Syft balance",
            "POST",
            "/syft/v1/user/add-balance".into(),
            format!(r#"{{"recipientEmail":"{PAYER}","amount":1.0}}"#),
        ),
        (
            "commits search's hold with a key",
            "POST",
            format!("/v1/holds/{search_hold}/commit"),
            r#"{"amount":2000000}"#.into(),
        ),
    ];
    for (label, method, path, body) in as_chat {
        let mut c = case(format!("chat's key {label}"), method, path)
            .bearer(chat)
            .json(body)
            .expect(403, "forbidden");
        if label.ends_with("with a key") {
            c = c.key("chat-1");
        }
        cases.push(c);
    }
    cases.extend([
        case(
            "search's key commits chat's hold",
            "POST",
            format!("/v1/holds/{}/commit", w.hold),
        )
        .bearer(&w.search_key)
        .json(r#"{"amount":1}"#)
        .expect(403, "forbidden"),
        case(
            "search's key voids chat's posted hold",
            "POST",
            format!("/v1/holds/{}/void", w.posted_hold),
        )
        .bearer(&w.search_key)
        .json("{}")
        .expect(403, "forbidden"),
        case(
            "a Syft user's Basic on a Syft admin route",
            "GET",
            "/syft/v1/users",
        )
        .basic(PAYER, PAYER_PW)
        .expect(401, "unauthenticated"),
    ]);
    cases
}

#[tokio::test]
async fn credentials_that_are_missing_wrong_or_out_of_scope_are_refused_and_change_nothing() {
    let w = World::open().await;
    let cases = credential_cases(&w);
    run(&w, "credentials", cases).await;
}

// ---------------------------------------------------------------------------------------------
// Syft v1

/// A JWT with the given header and claims, signed (HS256) with `secret`.
fn jwt(header: &Value, claims: &Value, secret: &[u8]) -> String {
    let head = format!(
        "{}.{}",
        b64url(header.to_string().as_bytes()),
        b64url(claims.to_string().as_bytes())
    );
    let key = jsonwebtoken::EncodingKey::from_secret(secret);
    let sig = jsonwebtoken::crypto::sign(head.as_bytes(), &key, jsonwebtoken::Algorithm::HS256)
        .unwrap_or_default();
    format!("{head}.{sig}")
}

/// Tokens the server never issued.
struct Forged {
    /// payer → router, signed with another secret.
    other_secret: String,
    /// payer → router, `alg: none`, no signature.
    unsigned: String,
    /// The real token with its payload's sender changed (signature kept).
    tampered: String,
    /// Not a JWT.
    garbage: String,
}

fn forged(w: &World) -> Forged {
    let now_s = w.h.state.now_ms() / 1000;
    let claims = json!({"id": "f00d", "senderEmail": PAYER, "recipientEmail": ROUTER,
                        "iat": now_s, "exp": now_s + 3600});
    let parts: Vec<&str> = w.token.split('.').collect();
    let evil = json!({"id": "f00d", "senderEmail": PAYER, "recipientEmail": THIEF,
                      "iat": now_s, "exp": now_s + 3600});
    Forged {
        other_secret: jwt(
            &json!({"alg": "HS256", "typ": "JWT"}),
            &claims,
            b"not-the-server-secret-0123456789abcdef",
        ),
        unsigned: format!(
            "{}.{}.",
            b64url(json!({"alg": "none", "typ": "JWT"}).to_string().as_bytes()),
            b64url(claims.to_string().as_bytes())
        ),
        tampered: format!(
            "{}.{}.{}",
            parts.first().unwrap_or(&""),
            b64url(evil.to_string().as_bytes()),
            parts.get(2).unwrap_or(&"")
        ),
        garbage: "not.a.jwt".into(),
    }
}

fn syft_v1_cases(w: &World) -> Vec<Case> {
    let create_user = "/syft/v1/user/create";
    let add = "/syft/v1/user/add-balance";
    let create = "/syft/v1/transaction/create";
    let f = forged(w);
    let mut cases = vec![
        // user/create: the admin's.
        case(
            "user/create without a key (no open signup)",
            "POST",
            create_user,
        )
        .no_auth()
        .json(r#"{"email":"newbie@example.com"}"#)
        .expect(401, "unauthenticated"),
        case("user/create with a garbage key", "POST", create_user)
            .bearer("garbage")
            .json(r#"{"email":"newbie@example.com"}"#)
            .expect(401, "unauthenticated"),
        case("user/create with a user's Basic", "POST", create_user)
            .basic(PAYER, PAYER_PW)
            .json(r#"{"email":"newbie@example.com"}"#)
            .expect(401, "unauthenticated"),
        case("user/create of an existing user", "POST", create_user)
            .json(format!(
                r#"{{"email":"{PAYER}","password":"another-password"}}"#
            ))
            .expect(409, "user_exists"),
        case("user/create without @", "POST", create_user)
            .json(r#"{"email":"newbie.example.com"}"#)
            .expect(422, "invalid_field"),
        case("user/create with two @", "POST", create_user)
            .json(r#"{"email":"new@bie@example.com"}"#)
            .expect(422, "invalid_field"),
        case("user/create with a space", "POST", create_user)
            .json(r#"{"email":"new bie@example.com"}"#)
            .expect(422, "invalid_field"),
        case("user/create with a control character", "POST", create_user)
            .json(r#"{"email":"new\u0000bie@example.com"}"#)
            .expect(400, "invalid_field"),
        case("user/create with a slash", "POST", create_user)
            .json(r#"{"email":"new/bie@example.com"}"#)
            .expect(400, "invalid_field"),
        case("user/create overlong", "POST", create_user)
            .json(format!(r#"{{"email":"{}@example.com"}}"#, "n".repeat(120)))
            .expect(400, "invalid_field"),
        case("user/create of a reserved name", "POST", create_user)
            .json(r#"{"email":"tally:evil@example.com","password":"evil-password"}"#)
            .expect(400, "invalid_field"),
        case("user/create with a short password", "POST", create_user)
            .json(r#"{"email":"newbie@example.com","password":"short"}"#)
            .expect(422, "invalid_field"),
        case("user/create with a 257-byte password", "POST", create_user)
            .json(format!(
                r#"{{"email":"newbie@example.com","password":"{}"}}"#,
                "p".repeat(257)
            ))
            .expect(422, "invalid_field"),
        case(
            "user/create with a password as a number",
            "POST",
            create_user,
        )
        .json(r#"{"email":"newbie@example.com","password":12345678}"#)
        .expect(422, "invalid_field"),
        case("user/create with an unknown field", "POST", create_user)
            .json(r#"{"email":"newbie@example.com","role":"admin"}"#)
            .expect(422, "invalid_field"),
        case(
            "user/create with an overlong organization",
            "POST",
            create_user,
        )
        .json(format!(
            r#"{{"email":"newbie@example.com","organization":"{}"}}"#,
            "o".repeat(129)
        ))
        .expect(422, "invalid_field"),
        case("user/create without email", "POST", create_user)
            .json("{}")
            .expect(422, "invalid_field"),
        case("user/create with an array", "POST", create_user)
            .json("[]")
            .expect(422, "invalid_field"),
        case("user/create with an empty body", "POST", create_user).expect(400, "malformed_json"),
        case("user/create truncated", "POST", create_user)
            .json(r#"{"email":"newbie@exa"#)
            .expect(400, "malformed_json"),
        case("user/create with trailing garbage", "POST", create_user)
            .json(r#"{"email":"newbie@example.com"}]"#)
            .expect(400, "malformed_json"),
        case("user/create with invalid UTF-8", "POST", create_user)
            .bytes(b"{\"email\":\"new\xffbie@example.com\"}".to_vec())
            .expect(400, "malformed_json"),
        // (The typed parse refuses the array before it descends into it.)
        case("user/create deeply nested", "POST", create_user)
            .json(format!(
                r#"{{"email":"newbie@example.com","organization":{}{}}}"#,
                "[".repeat(10_000),
                "]".repeat(10_000)
            ))
            .expect(422, "invalid_field"),
        case("user/create over 64 KiB", "POST", create_user)
            .json(format!(
                r#"{{"email":"newbie@example.com","organization":"{}"}}"#,
                "o".repeat(70_000)
            ))
            .expect(413, "body_too_large"),
    ];
    // add-balance: the admin's; amounts in USD, at most 8 decimals, positive.
    cases.extend([
        case("add-balance without a key", "POST", add)
            .no_auth()
            .json(format!(r#"{{"recipientEmail":"{PAYER}","amount":1.0}}"#))
            .expect(401, "unauthenticated"),
        case("add-balance with a user's Basic", "POST", add)
            .basic(PAYER, PAYER_PW)
            .json(format!(r#"{{"recipientEmail":"{PAYER}","amount":1.0}}"#))
            .expect(401, "unauthenticated"),
        case("add-balance for an unknown user", "POST", add)
            .json(r#"{"recipientEmail":"nobody@example.com","amount":1.0}"#)
            .expect(404, "unknown_user"),
        case("add-balance without recipientEmail", "POST", add)
            .json(r#"{"amount":1.0}"#)
            .expect(422, "invalid_field"),
        case("add-balance without amount", "POST", add)
            .json(format!(r#"{{"recipientEmail":"{PAYER}"}}"#))
            .expect(422, "invalid_field"),
        case("add-balance with an unknown field", "POST", add)
            .json(format!(
                r#"{{"recipientEmail":"{PAYER}","amount":1.0,"currency":"EUR"}}"#
            ))
            .expect(422, "invalid_field"),
    ]);
    let huge = "9".repeat(400);
    let deep = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
    for (label, amount, status, code) in [
        ("9 decimals", "0.000000001", 422, "invalid_field"),
        ("1e-9", "1e-9", 422, "invalid_field"),
        (
            "a float's rounding noise",
            "0.30000000000000004",
            422,
            "invalid_field",
        ),
        ("zero", "0", 422, "invalid_field"),
        ("0.0", "0.0", 422, "invalid_field"),
        ("negative", "-1.0", 422, "invalid_field"),
        ("negative zero", "-0.0", 422, "invalid_field"),
        ("a string", r#""10""#, 422, "invalid_field"),
        ("the string NaN", r#""NaN""#, 422, "invalid_field"),
        ("the string Infinity", r#""Infinity""#, 422, "invalid_field"),
        ("a bool", "true", 422, "invalid_field"),
        ("null", "null", 422, "invalid_field"),
        ("an array", "[1]", 422, "invalid_field"),
        ("an object", r#"{"usd":1}"#, 422, "invalid_field"),
        ("1e400", "1e400", 422, "invalid_field"),
        ("2^64 USD", "18446744073709551616", 422, "invalid_field"),
        (
            "one over the ledger's maximum",
            "92233720368.54775808",
            422,
            "invalid_field",
        ),
        ("400 digits", huge.as_str(), 422, "invalid_field"),
        // (The amount is kept raw, so the nesting is only scanned, never recursed into.)
        ("deeply nested arrays", deep.as_str(), 422, "invalid_field"),
        ("bare NaN", "NaN", 400, "malformed_json"),
        ("bare Infinity", "Infinity", 400, "malformed_json"),
        ("a leading dot", ".5", 400, "malformed_json"),
        ("a trailing dot", "5.", 400, "malformed_json"),
        ("a hex literal", "0x10", 400, "malformed_json"),
    ] {
        cases.push(
            case(format!("add-balance of {label}"), "POST", add)
                .json(format!(
                    r#"{{"recipientEmail":"{PAYER}","amount":{amount}}}"#
                ))
                .expect(status, code),
        );
    }

    // transaction/create.
    let direct = |amount: &str| {
        format!(r#"{{"senderEmail":"{PAYER}","recipientEmail":"{ROUTER}","amount":{amount}}}"#)
    };
    let delegated = |sender: &str, recipient: &str, token: &str| {
        format!(
            r#"{{"senderEmail":"{sender}","recipientEmail":"{recipient}","amount":0.1,"token":"{token}"}}"#
        )
    };
    for (label, amount) in [
        ("9 decimals", "0.000000001"),
        ("zero", "0"),
        ("negative", "-0.5"),
        ("a string", r#""0.5""#),
        ("the string NaN", r#""NaN""#),
    ] {
        cases.push(
            case(format!("transaction/create of {label}"), "POST", create)
                .basic(PAYER, PAYER_PW)
                .json(direct(amount))
                .expect(422, "invalid_field"),
        );
    }
    cases.extend([
        case("transaction/create of more than the payer has", "POST", create)
            .basic(PAYER, PAYER_PW)
            .json(direct("1000.0"))
            .expect(402, "insufficient_funds"),
        case("transaction/create without credentials", "POST", create)
            .no_auth()
            .json(direct("0.1"))
            .expect(401, "unauthenticated"),
        case("transaction/create with the admin key", "POST", create)
            .json(direct("0.1"))
            .expect(401, "unauthenticated"),
        case("transaction/create with a wrong password", "POST", create)
            .basic(PAYER, "wrong-password")
            .json(direct("0.1"))
            .expect(401, "unauthenticated"),
        case("transaction/create with an unknown user", "POST", create)
            .basic("nobody@example.com", PAYER_PW)
            .json(direct("0.1"))
            .expect(401, "unauthenticated"),
        case("transaction/create with Basic that is not base64", "POST", create)
            .auth("Basic !!!not-base64!!!")
            .json(direct("0.1"))
            .expect(401, "unauthenticated"),
        case("transaction/create with Basic without a colon", "POST", create)
            .auth(format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(PAYER)
            ))
            .json(direct("0.1"))
            .expect(401, "unauthenticated"),
        case("transaction/create with Basic that is not UTF-8", "POST", create)
            .auth(format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(b"payer\xff:pw")
            ))
            .json(direct("0.1"))
            .expect(401, "unauthenticated"),
        case("transaction/create with an empty Basic", "POST", create)
            .auth("Basic ")
            .json(direct("0.1"))
            .expect(401, "unauthenticated"),
        case("transaction/create spending another user's funds", "POST", create)
            .basic(THIEF, THIEF_PW)
            .json(direct("0.1"))
            .expect(403, "forbidden"),
        case("transaction/create to oneself", "POST", create)
            .basic(PAYER, PAYER_PW)
            .json(format!(r#"{{"senderEmail":"{PAYER}","recipientEmail":"{PAYER}","amount":0.1}}"#))
            .expect(422, "invalid_field"),
        case("transaction/create to an unknown user", "POST", create)
            .basic(PAYER, PAYER_PW)
            .json(format!(r#"{{"senderEmail":"{PAYER}","recipientEmail":"nobody@example.com","amount":0.1}}"#))
            .expect(404, "unknown_user"),
        case("transaction/create with an overlong appName", "POST", create)
            .basic(PAYER, PAYER_PW)
            .json(format!(
                r#"{{"senderEmail":"{PAYER}","recipientEmail":"{ROUTER}","amount":0.1,"appName":"{}"}}"#,
                "a".repeat(129)
            ))
            .expect(422, "invalid_field"),
        case("transaction/create with an unknown field", "POST", create)
            .basic(PAYER, PAYER_PW)
            .json(format!(
                r#"{{"senderEmail":"{PAYER}","recipientEmail":"{ROUTER}","amount":0.1,"status":"COMPLETED"}}"#
            ))
            .expect(422, "invalid_field"),
        case("delegated create with a token issued to another recipient", "POST", create)
            .basic(ROUTER, ROUTER_PW)
            .json(delegated(PAYER, ROUTER, &w.thief_token))
            .expect(403, "forbidden"),
        case("delegated create by a thief with the router's token", "POST", create)
            .basic(THIEF, THIEF_PW)
            .json(delegated(PAYER, THIEF, &w.token))
            .expect(403, "forbidden"),
        case("delegated create naming another recipient than the caller", "POST", create)
            .basic(ROUTER, ROUTER_PW)
            .json(delegated(PAYER, THIEF, &w.token))
            .expect(403, "forbidden"),
        case("delegated create with an expired token", "POST", create)
            .basic(ROUTER, ROUTER_PW)
            .json(delegated(PAYER, ROUTER, &w.old_token))
            .expect(401, "unauthenticated"),
        case("delegated create with a garbage token", "POST", create)
            .basic(ROUTER, ROUTER_PW)
            .json(delegated(PAYER, ROUTER, &f.garbage))
            .expect(401, "unauthenticated"),
        case("delegated create with an empty token", "POST", create)
            .basic(ROUTER, ROUTER_PW)
            .json(delegated(PAYER, ROUTER, ""))
            .expect(401, "unauthenticated"),
        case("delegated create with a token signed by another secret", "POST", create)
            .basic(ROUTER, ROUTER_PW)
            .json(delegated(PAYER, ROUTER, &f.other_secret))
            .expect(401, "unauthenticated"),
        case("delegated create with an unsigned token", "POST", create)
            .basic(ROUTER, ROUTER_PW)
            .json(delegated(PAYER, ROUTER, &f.unsigned))
            .expect(401, "unauthenticated"),
        case("delegated create with a tampered token", "POST", create)
            .basic(THIEF, THIEF_PW)
            .json(delegated(PAYER, THIEF, &f.tampered))
            .expect(401, "unauthenticated"),
        case("delegated create whose senderEmail is not the token's", "POST", create)
            .basic(ROUTER, ROUTER_PW)
            .json(delegated(THIEF, ROUTER, &w.token))
            .expect(403, "forbidden"),
        case("delegated create of more than the payer has", "POST", create)
            .basic(ROUTER, ROUTER_PW)
            .json(format!(
                r#"{{"senderEmail":"{PAYER}","recipientEmail":"{ROUTER}","amount":1000.0,"token":"{}"}}"#,
                w.token
            ))
            .expect(402, "insufficient_funds"),
        case("transaction/create with a duplicated amount", "POST", create)
            .basic(PAYER, PAYER_PW)
            .json(format!(
                r#"{{"senderEmail":"{PAYER}","recipientEmail":"{ROUTER}","amount":0.1,"amount":9.0}}"#
            ))
            .expect(422, "invalid_field"),
        case("transaction/create with an array of the fields", "POST", create)
            .basic(PAYER, PAYER_PW)
            .json(format!(r#"["{PAYER}","{ROUTER}",0.1]"#))
            .expect(422, "invalid_field"),
        case("delegated create with a token as a number", "POST", create)
            .basic(ROUTER, ROUTER_PW)
            .json(format!(
                r#"{{"senderEmail":"{PAYER}","recipientEmail":"{ROUTER}","amount":0.1,"token":7}}"#
            ))
            .expect(422, "invalid_field"),
    ]);

    // confirm, cancel, tokens, users.
    let confirm = "/syft/v1/transaction/confirm";
    let cancel = "/syft/v1/transaction/cancel";
    let id = |t: &str| format!(r#"{{"transactionId":"{t}"}}"#);
    cases.extend([
        case("confirm by a user who is not a party", "POST", confirm)
            .basic(THIEF, THIEF_PW)
            .json(id(&w.direct_txn))
            .expect(404, "unknown_transaction"),
        case("cancel by a user who is not a party", "POST", cancel)
            .basic(THIEF, THIEF_PW)
            .json(id(&w.delegated_txn))
            .expect(404, "unknown_transaction"),
        case(
            "confirm of a delegated transaction by its sender",
            "POST",
            confirm,
        )
        .basic(PAYER, PAYER_PW)
        .json(id(&w.delegated_txn))
        .expect(403, "forbidden"),
        case(
            "confirm of a direct transaction by its recipient",
            "POST",
            confirm,
        )
        .basic(ROUTER, ROUTER_PW)
        .json(id(&w.direct_txn))
        .expect(403, "forbidden"),
        case("confirm of a completed transaction", "POST", confirm)
            .basic(PAYER, PAYER_PW)
            .json(id(&w.completed_txn))
            .expect(409, "hold_already_resolved"),
        case("cancel of a completed transaction", "POST", cancel)
            .basic(ROUTER, ROUTER_PW)
            .json(id(&w.completed_txn))
            .expect(409, "hold_already_resolved"),
        case("confirm of an unknown transaction", "POST", confirm)
            .basic(PAYER, PAYER_PW)
            .json(id("h_999999_1"))
            .expect(404, "unknown_transaction"),
        case("confirm of a native hold", "POST", confirm)
            .basic(PAYER, PAYER_PW)
            .json(id(&w.hold))
            .expect(404, "unknown_transaction"),
        case("confirm of a garbage id", "POST", confirm)
            .basic(PAYER, PAYER_PW)
            .json(id("h_x_1"))
            .expect(404, "unknown_transaction"),
        case("confirm with an id as a number", "POST", confirm)
            .basic(PAYER, PAYER_PW)
            .json(r#"{"transactionId":1}"#)
            .expect(422, "invalid_field"),
        case("confirm without an id", "POST", confirm)
            .basic(PAYER, PAYER_PW)
            .json("{}")
            .expect(422, "invalid_field"),
        case("confirm with a wrong password", "POST", confirm)
            .basic(PAYER, "wrong-password")
            .json(id(&w.direct_txn))
            .expect(401, "unauthenticated"),
        case("token/create for oneself", "POST", "/syft/v1/token/create")
            .basic(PAYER, PAYER_PW)
            .json(format!(r#"{{"recipientEmail":"{PAYER}"}}"#))
            .expect(422, "invalid_field"),
        case(
            "token/create for an unknown user",
            "POST",
            "/syft/v1/token/create",
        )
        .basic(PAYER, PAYER_PW)
        .json(r#"{"recipientEmail":"nobody@example.com"}"#)
        .expect(404, "unknown_user"),
        case(
            "token/create without credentials",
            "POST",
            "/syft/v1/token/create",
        )
        .no_auth()
        .json(format!(r#"{{"recipientEmail":"{ROUTER}"}}"#))
        .expect(401, "unauthenticated"),
        case(
            "token/create with an unknown field",
            "POST",
            "/syft/v1/token/create",
        )
        .basic(PAYER, PAYER_PW)
        .json(format!(
            r#"{{"recipientEmail":"{ROUTER}","exp":99999999999}}"#
        ))
        .expect(422, "invalid_field"),
        case(
            "user of an unknown email",
            "GET",
            "/syft/v1/user/nobody@example.com",
        )
        .expect(404, "unknown_user"),
        case(
            "user read with a user's Basic",
            "GET",
            format!("/syft/v1/user/{ROUTER}"),
        )
        .basic(PAYER, PAYER_PW)
        .expect(401, "unauthenticated"),
        case(
            "user of an email that is invalid UTF-8",
            "GET",
            "/syft/v1/user/%FF",
        )
        .expect(400, "invalid_path"),
        case(
            "my-info with a wrong password",
            "GET",
            "/syft/v1/user/my-info",
        )
        .basic(PAYER, "wrong-password")
        .expect(401, "unauthenticated"),
        case("my-info with the admin key", "GET", "/syft/v1/user/my-info")
            .expect(401, "unauthenticated"),
        case(
            "transactions with a wrong password",
            "GET",
            "/syft/v1/transactions",
        )
        .basic(PAYER, "wrong-password")
        .expect(401, "unauthenticated"),
        case(
            "update-password with a wrong old password",
            "PUT",
            "/syft/v1/user/update-password",
        )
        .basic(PAYER, PAYER_PW)
        .json(r#"{"oldPassword":"wrong-password","newPassword":"new-password-1"}"#)
        .expect(403, "forbidden"),
        case(
            "update-password to a short one",
            "PUT",
            "/syft/v1/user/update-password",
        )
        .basic(PAYER, PAYER_PW)
        .json(format!(
            r#"{{"oldPassword":"{PAYER_PW}","newPassword":"short"}}"#
        ))
        .expect(422, "invalid_field"),
        case(
            "update-organization overlong",
            "PUT",
            "/syft/v1/user/update-organization",
        )
        .basic(PAYER, PAYER_PW)
        .json(format!(r#"{{"organization":"{}"}}"#, "o".repeat(129)))
        .expect(422, "invalid_field"),
        case(
            "update-organization as a number",
            "PUT",
            "/syft/v1/user/update-organization",
        )
        .basic(PAYER, PAYER_PW)
        .json(r#"{"organization":5}"#)
        .expect(422, "invalid_field"),
    ]);
    cases
}

#[tokio::test]
async fn syft_v1_hostile_requests_get_their_codes_and_change_nothing() {
    let w = World::open().await;
    let cases = syft_v1_cases(&w);
    run(&w, "syft v1", cases).await;
}

// ---------------------------------------------------------------------------------------------
// Syft v2

fn syft_v2_cases(w: &World) -> Vec<Case> {
    let txns = "/syft/v2/transactions";
    let f = forged(w);
    let delegated = |sender: &str| format!(r#"{{"senderEmail":"{sender}","amount":0.1}}"#);
    let mut cases = vec![
        case("user without credentials", "GET", "/syft/v2/user")
            .no_auth()
            .expect(401, "unauthenticated"),
        case("user with a wrong password", "GET", "/syft/v2/user")
            .basic(PAYER, "wrong-password")
            .expect(401, "unauthenticated"),
        case("user with malformed Basic", "GET", "/syft/v2/user")
            .auth("Basic ***")
            .expect(401, "unauthenticated"),
        case("user with a delegation token", "GET", "/syft/v2/user")
            .bearer(&w.token)
            .expect(401, "unauthenticated"),
        // What syfthub-sdk 0.3.1 sends for a delegated create: its Basic auth overwrote the
        // token's Bearer header.
        case("stock delegated create (Basic, no token)", "POST", txns)
            .basic(ROUTER, ROUTER_PW)
            .json(format!(r#"{{"senderEmail":"{PAYER}","amount":0.5}}"#))
            .expect(403, "forbidden"),
        case(
            "Basic create naming another sender and oneself",
            "POST",
            txns,
        )
        .basic(ROUTER, ROUTER_PW)
        .json(format!(
            r#"{{"senderEmail":"{PAYER}","recipientEmail":"{ROUTER}","amount":0.5}}"#
        ))
        .expect(403, "forbidden"),
        case("Basic create without a recipient", "POST", txns)
            .basic(PAYER, PAYER_PW)
            .json(r#"{"amount":0.5}"#)
            .expect(422, "invalid_field"),
        case("Basic create of more than the payer has", "POST", txns)
            .basic(PAYER, PAYER_PW)
            .json(format!(
                r#"{{"recipientEmail":"{ROUTER}","amount":1000.0}}"#
            ))
            .expect(402, "insufficient_funds"),
        case("Basic create to an unknown user", "POST", txns)
            .basic(PAYER, PAYER_PW)
            .json(r#"{"recipientEmail":"nobody@example.com","amount":0.1}"#)
            .expect(404, "unknown_user"),
        case("Basic create with a wrong password", "POST", txns)
            .basic(PAYER, "wrong-password")
            .json(format!(r#"{{"recipientEmail":"{ROUTER}","amount":0.1}}"#))
            .expect(401, "unauthenticated"),
        case("create without credentials", "POST", txns)
            .no_auth()
            .json(format!(r#"{{"recipientEmail":"{ROUTER}","amount":0.1}}"#))
            .expect(401, "unauthenticated"),
        case("Bearer create with an expired token", "POST", txns)
            .bearer(&w.old_token)
            .json(delegated(PAYER))
            .expect(401, "unauthenticated"),
        case("Bearer create with a garbage token", "POST", txns)
            .bearer(&f.garbage)
            .json(delegated(PAYER))
            .expect(401, "unauthenticated"),
        case(
            "Bearer create with a token signed by another secret",
            "POST",
            txns,
        )
        .bearer(&f.other_secret)
        .json(delegated(PAYER))
        .expect(401, "unauthenticated"),
        case("Bearer create with an unsigned token", "POST", txns)
            .bearer(&f.unsigned)
            .json(delegated(PAYER))
            .expect(401, "unauthenticated"),
        case("Bearer create with a tampered token", "POST", txns)
            .bearer(&f.tampered)
            .json(delegated(PAYER))
            .expect(401, "unauthenticated"),
        case("Bearer create with the admin key", "POST", txns)
            .bearer(ADMIN)
            .json(delegated(PAYER))
            .expect(401, "unauthenticated"),
        case(
            "Bearer create whose senderEmail is not the token's",
            "POST",
            txns,
        )
        .bearer(&w.token)
        .json(delegated(THIEF))
        .expect(403, "forbidden"),
        case(
            "Bearer create naming another recipient than the token's",
            "POST",
            txns,
        )
        .bearer(&w.token)
        .json(format!(
            r#"{{"senderEmail":"{PAYER}","recipientEmail":"{THIEF}","amount":0.1}}"#
        ))
        .expect(403, "forbidden"),
        case("Bearer create without senderEmail", "POST", txns)
            .bearer(&w.token)
            .json(r#"{"amount":0.1}"#)
            .expect(422, "invalid_field"),
        case("Bearer create of more than the payer has", "POST", txns)
            .bearer(&w.token)
            .json(format!(r#"{{"senderEmail":"{PAYER}","amount":1000.0}}"#))
            .expect(402, "insufficient_funds"),
        case("create with an unknown field", "POST", txns)
            .basic(PAYER, PAYER_PW)
            .json(format!(
                r#"{{"recipientEmail":"{ROUTER}","amount":0.1,"status":"completed"}}"#
            ))
            .expect(422, "invalid_field"),
        case("create with an empty body", "POST", txns)
            .basic(PAYER, PAYER_PW)
            .expect(400, "malformed_json"),
        case("create with an empty array body", "POST", txns)
            .basic(PAYER, PAYER_PW)
            .json("[]")
            .expect(422, "invalid_field"),
        case("create with an array of the fields", "POST", txns)
            .basic(PAYER, PAYER_PW)
            .json(format!(r#"["{PAYER}","{ROUTER}",0.1]"#))
            .expect(422, "invalid_field"),
        case("create with a duplicated amount", "POST", txns)
            .basic(PAYER, PAYER_PW)
            .json(format!(
                r#"{{"recipientEmail":"{ROUTER}","amount":0.1,"amount":0.2}}"#
            ))
            .expect(422, "invalid_field"),
        case("create with invalid UTF-8", "POST", txns)
            .basic(PAYER, PAYER_PW)
            .bytes(b"{\"recipientEmail\":\"rou\xfeter@example.com\",\"amount\":0.1}".to_vec())
            .expect(400, "malformed_json"),
        case("create over 64 KiB", "POST", txns)
            .basic(PAYER, PAYER_PW)
            .json(format!(
                r#"{{"recipientEmail":"{ROUTER}","amount":0.1,"appName":"{}"}}"#,
                "a".repeat(70_000)
            ))
            .expect(413, "body_too_large"),
    ];
    for (label, amount) in [
        ("9 decimals", "0.000000001"),
        ("an exponent finer than 1 µ¢", "5e-9"),
        ("zero", "0.0"),
        ("negative", "-0.1"),
        ("a string", r#""0.1""#),
        ("the string NaN", r#""nan""#),
        ("a bool", "false"),
    ] {
        cases.push(
            case(format!("create of {label}"), "POST", txns)
                .basic(PAYER, PAYER_PW)
                .json(format!(
                    r#"{{"recipientEmail":"{ROUTER}","amount":{amount}}}"#
                ))
                .expect(422, "invalid_field"),
        );
    }

    // Listing and reading.
    for (label, query) in [("limit=0", "limit=0"), ("limit=10001", "limit=10001")] {
        cases.push(
            case(
                format!("transactions with {label}"),
                "GET",
                format!("{txns}?{query}"),
            )
            .basic(PAYER, PAYER_PW)
            .expect(422, "invalid_field"),
        );
    }
    for (label, query, status, code) in [
        ("limit=abc", "limit=abc", 400, "invalid_field"),
        ("skip=-1", "skip=-1", 400, "invalid_field"),
        ("an unknown parameter", "offset=5", 400, "unknown_field"),
    ] {
        cases.push(
            case(
                format!("transactions with {label}"),
                "GET",
                format!("{txns}?{query}"),
            )
            .basic(PAYER, PAYER_PW)
            .expect(status, code),
        );
    }
    let confirm = |id: &str| format!("{txns}/{id}/confirm");
    cases.extend([
        case(
            "transaction that is unknown",
            "GET",
            format!("{txns}/h_999999_1"),
        )
        .basic(PAYER, PAYER_PW)
        .expect(404, "unknown_transaction"),
        case(
            "transaction with a garbage id",
            "GET",
            format!("{txns}/garbage"),
        )
        .basic(PAYER, PAYER_PW)
        .expect(404, "unknown_transaction"),
        case(
            "transaction of others",
            "GET",
            format!("{txns}/{}", w.direct_txn),
        )
        .basic(THIEF, THIEF_PW)
        .expect(404, "unknown_transaction"),
        case(
            "transaction without credentials",
            "GET",
            format!("{txns}/{}", w.direct_txn),
        )
        .no_auth()
        .expect(401, "unauthenticated"),
        case(
            "confirm by a user who is not a party",
            "POST",
            confirm(&w.direct_txn),
        )
        .basic(THIEF, THIEF_PW)
        .expect(404, "unknown_transaction"),
        case(
            "confirm of a delegated transaction by its sender",
            "POST",
            confirm(&w.delegated_txn),
        )
        .basic(PAYER, PAYER_PW)
        .expect(403, "forbidden"),
        case(
            "confirm of a direct transaction by its recipient",
            "POST",
            confirm(&w.direct_txn),
        )
        .basic(ROUTER, ROUTER_PW)
        .expect(403, "forbidden"),
        case(
            "confirm of a completed transaction",
            "POST",
            confirm(&w.completed_txn),
        )
        .basic(PAYER, PAYER_PW)
        .expect(409, "hold_already_resolved"),
        case(
            "confirm of an unknown transaction",
            "POST",
            confirm("h_999999_1"),
        )
        .basic(PAYER, PAYER_PW)
        .expect(404, "unknown_transaction"),
        case(
            "confirm with a delegation token",
            "POST",
            confirm(&w.delegated_txn),
        )
        .bearer(&w.token)
        .expect(401, "unauthenticated"),
        case(
            "cancel by a user who is not a party",
            "POST",
            format!("{txns}/{}/cancel", w.delegated_txn),
        )
        .basic(THIEF, THIEF_PW)
        .expect(404, "unknown_transaction"),
        case(
            "cancel of an unknown transaction",
            "POST",
            format!("{txns}/h_1_/cancel"),
        )
        .basic(PAYER, PAYER_PW)
        .expect(404, "unknown_transaction"),
        case(
            "transaction with an id that is invalid UTF-8",
            "GET",
            format!("{txns}/%FF"),
        )
        .basic(PAYER, PAYER_PW)
        .expect(400, "invalid_path"),
        case("token/create for oneself", "POST", "/syft/v2/token/create")
            .basic(PAYER, PAYER_PW)
            .json(format!(r#"{{"recipientEmail":"{PAYER}"}}"#))
            .expect(422, "invalid_field"),
        case(
            "password change with a wrong old password",
            "PUT",
            "/syft/v2/user/password",
        )
        .basic(PAYER, PAYER_PW)
        .json(r#"{"oldPassword":"wrong-password","newPassword":"new-password-1"}"#)
        .expect(403, "forbidden"),
        case(
            "password change without the new one",
            "PUT",
            "/syft/v2/user/password",
        )
        .basic(PAYER, PAYER_PW)
        .json(format!(r#"{{"oldPassword":"{PAYER_PW}"}}"#))
        .expect(422, "invalid_field"),
        case("organization overlong", "PUT", "/syft/v2/user/organization")
            .basic(PAYER, PAYER_PW)
            .json(format!(r#"{{"organization":"{}"}}"#, "o".repeat(129)))
            .expect(422, "invalid_field"),
        case("an unknown Syft route", "GET", "/syft/v2/nope")
            .basic(PAYER, PAYER_PW)
            .expect(404, "not_found"),
        case("a method a Syft route does not take", "DELETE", txns)
            .basic(PAYER, PAYER_PW)
            .expect(405, "method_not_allowed"),
    ]);
    cases
}

#[tokio::test]
async fn syft_v2_hostile_requests_get_their_codes_and_change_nothing() {
    let w = World::open().await;
    let cases = syft_v2_cases(&w);
    run(&w, "syft v2", cases).await;
}
