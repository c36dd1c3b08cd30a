//! Several tally nodes on one PostgreSQL schema, against a real PostgreSQL (see `pg.rs`):
//! shards shared out by leases, a dead node's shards taken over with every acknowledged write,
//! a frozen node deposed with nothing it had not acknowledged kept, legs crossing nodes.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tally::{
    AccountId, AccountSpec, EngineConfig, Error, PgConfig, PgStore, Store, StoreError, Tally,
};
use tally_store::pg_testing::PgServer;

use crate::support::*;

/// Eight shards, leases of 600 ms renewed every 100 ms: moves happen within a second.
fn node(pg: &PgServer, schema: &str, name: &str) -> PgConfig {
    let mut config = pg.config(schema);
    config.node = name.to_owned();
    config.shards = 8;
    config.lease_ttl = Duration::from_millis(600);
    config.renew_every = Duration::from_millis(100);
    config
}

async fn engine(store: &PgStore) -> Tally {
    Tally::open(Arc::new(store.clone()), EngineConfig::default())
        .await
        .unwrap()
}

/// Polls `done` every 20 ms for up to `limit`; returns how long it took.
async fn within(limit: Duration, what: &str, mut done: impl FnMut() -> bool) -> Duration {
    let started = Instant::now();
    while !done() {
        assert!(started.elapsed() < limit, "{what}: not within {limit:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    started.elapsed()
}

/// An account id (from `from` up) whose shard is one of `shards`.
fn id_in(store: &PgStore, shards: &[(u16, u64)], from: u64) -> AccountId {
    (from..)
        .map(AccountId)
        .find(|id| shards.iter().any(|(s, _)| *s == store.shard_of(*id)))
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_share_the_shards_and_a_dead_nodes_shards_move_with_every_acknowledged_write() {
    let pg = PgServer::start();
    let (a, recovery) = PgStore::open(node(&pg, "share", "a")).unwrap();
    assert_eq!(
        recovery.shards_claimed, 8,
        "alone, a node serves every shard"
    );
    // B's open waits while A sees a second live node and lets go of half.
    let started = Instant::now();
    let (b, recovery) = PgStore::open(node(&pg, "share", "b")).unwrap();
    println!(
        "rebalanced 8 shards over 2 nodes in {:?}",
        started.elapsed()
    );
    assert_eq!(recovery.shards_claimed, 4, "its fair share");
    assert_eq!(a.shards_held().len(), 4);
    let (held_a, held_b) = (a.shards_held(), b.shards_held());
    assert!(held_a
        .iter()
        .all(|(s, _)| !held_b.iter().any(|(t, _)| t == s)));
    assert!(
        held_b.iter().all(|(_, epoch)| *epoch >= 2),
        "claimed again: a new epoch"
    );

    let (tally_a, tally_b) = (engine(&a).await, engine(&b).await);
    // A user served by A paying an app served by B, funded by a bank served by B.
    let user = id_in(&a, &held_a, 100);
    let app = id_in(&b, &held_b, 200);
    let bank = id_in(&b, &held_b, 300);
    tally_b
        .open_account(bank, AccountSpec::funding())
        .await
        .unwrap();
    tally_b
        .open_account(app, AccountSpec::revenue())
        .await
        .unwrap();
    tally_a
        .open_account(user, AccountSpec::user())
        .await
        .unwrap();
    // Each account is served by its shard's owner only.
    let e = tally_b.open_account(user, AccountSpec::user()).await;
    assert!(e.is_ok(), "the same spec again is no change: {e:?}");
    let e = tally_b.balance(user).await.unwrap_err();
    assert!(matches!(e, Error::NotOwner { .. }), "{e:?}");
    let e = tally_a.balance(app).await.unwrap_err();
    assert!(matches!(e, Error::NotOwner { .. }), "{e:?}");
    // A learns of the bank that B opened after A's engine read the directory.
    tally_a.fund(op(), user, bank, 10_000).await.unwrap();
    let charged = op();
    tally_a
        .charge(charged, user, app, 2_500, "/chat")
        .await
        .unwrap();
    let user_before = tally_a.balance(user).await.unwrap();
    assert_eq!(user_before.available, 7_500);
    // Each node audits the accounts it serves and counts the others as served elsewhere
    // (conservation is a property of all accounts at once: not checked over a part).
    let audit_a = tally_a.audit().await.unwrap();
    assert!(audit_a.ok(), "{audit_a:?}");
    assert!(
        audit_a.accounts >= 1 && audit_a.elsewhere >= 2,
        "{audit_a:?}"
    );
    // A metered call on A prices at the catalog of an app B serves (read from what is durable,
    // kept a moment), and follows a price B sets within that.
    let per_request = |usd: &str| Some(tally::Price::PerRequest(tally::parse_usd(usd).unwrap()));
    tally_b
        .set_price(op(), app, "/m", per_request("0.00001"))
        .await
        .unwrap();
    let one = tally::Usage {
        requests: 1,
        ..tally::Usage::default()
    };
    let metered = |_: ()| {
        let tally_a = tally_a.clone();
        async move {
            let mut call = tally_a
                .meter(op(), user, app, "/m", &one, Duration::from_secs(60))
                .await
                .unwrap();
            let held = call.hold().amount().get();
            call.finish(op(), &one).await.unwrap();
            held
        }
    };
    assert_eq!(metered(()).await, 1_000);
    tally_b
        .set_price(op(), app, "/m", per_request("0.00002"))
        .await
        .unwrap();
    // Until the catalog A read is a second old, A still prices at 1,000; then at 2,000.
    let started = Instant::now();
    loop {
        let price = tally_a.price(app, "/m").await.unwrap().unwrap();
        if price.version == 2 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "the new price did not reach A: {price:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    println!("a price set on B held on A after {:?}", started.elapsed());
    assert_eq!(metered(()).await, 2_000);
    let e = tally_a.price(bank, "/m").await;
    assert!(
        matches!(e, Ok(None)),
        "no price at an unpriced account: {e:?}"
    );
    // The legs A's records carried reach B's accounts within a lease tick.
    {
        let started = Instant::now();
        let deadline = started + Duration::from_secs(5);
        loop {
            let app_now = tally_b.balance(app).await.unwrap();
            let bank_now = tally_b.balance(bank).await.unwrap();
            if app_now.available == 5_500 && bank_now.available == -10_000 {
                println!("legs crossed nodes in {:?}", started.elapsed());
                break;
            }
            assert!(
                Instant::now() < deadline,
                "legs did not cross: app {app_now:?}, bank {bank_now:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    // A's last write carries no leg: B has seen nothing of it until it reads the account.
    let hold = tally_a
        .reserve(op(), tally::ReserveRequest::new(user, app, 1_000))
        .await
        .unwrap();
    let user_before = tally_a.balance(user).await.unwrap();
    assert_eq!(user_before.available, 3_500);
    // A dies (nothing saved, nothing released): its leases lapse and B takes every shard.
    drop(tally_a);
    drop(a);
    let took = within(Duration::from_secs(10), "takeover", || {
        b.shards_held().len() == 8
    })
    .await;
    println!("a dead node's 4 shards moved in {took:?} (lease 600 ms, tick 100 ms)");
    assert_eq!(tally_b.balance(user).await.unwrap(), user_before);
    // The retry of an acknowledged charge, now on B, is answered as first.
    tally_b
        .charge(charged, user, app, 2_500, "/chat")
        .await
        .unwrap();
    assert_eq!(tally_b.balance(user).await.unwrap(), user_before);
    tally_b.commit(op(), hold, 500).await.unwrap();
    assert_eq!(tally_b.balance(user).await.unwrap().available, 4_000);
    assert_eq!(tally_b.balance(app).await.unwrap().available, 6_000);
    let report = b.verify_trail().unwrap();
    assert!(report.problems.is_empty(), "{report:?}");
    assert!(tally_b.audit().await.unwrap().ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_node_is_deposed_and_nothing_it_had_not_acknowledged_is_kept() {
    let pg = PgServer::start();
    let (a, _) = PgStore::open(node(&pg, "frozen", "a")).unwrap();
    let tally_a = engine(&a).await;
    open_accounts(&tally_a).await;
    tally_a.fund(op(), ALICE, BANK, 1_000).await.unwrap();
    // A freezes (as under SIGSTOP) with a charge appended but not committed.
    a.freeze(true);
    let charging = {
        let tally = tally_a.clone();
        tokio::spawn(async move { tally.charge(op(), ALICE, APP, 10, "/chat").await })
    };
    tokio::time::sleep(Duration::from_millis(800)).await;
    // Past its lease A serves nothing, reads included: B may own the accounts by now.
    let e = tally_a.balance(BOB).await.unwrap_err();
    assert!(matches!(e, Error::NotOwner { .. }), "{e:?}");
    let (b, recovery) = PgStore::open(node(&pg, "frozen", "b")).unwrap();
    assert_eq!(recovery.shards_claimed, 8, "A's leases lapsed");
    let tally_b = engine(&b).await;
    // A wakes: its group is refused by the fence, its renewal finds the leases gone.
    a.freeze(false);
    let charged = charging.await.unwrap();
    assert!(
        matches!(charged, Err(Error::StorageFailed { .. })),
        "never acknowledged: {charged:?}"
    );
    let record =
        tally::Account::open_record(AccountId(99), AccountSpec::user(), tally::Timestamp(1));
    let refused = a.append(&record);
    assert!(
        matches!(
            refused,
            Err(StoreError::Failed(_) | StoreError::NotOwner { .. })
        ),
        "{refused:?}"
    );
    // What A had acknowledged is there; what it had not is not.
    let alice = tally_b.balance(ALICE).await.unwrap();
    assert_eq!(alice.available, 1_000);
    assert_eq!(tally_b.balance(APP).await.unwrap().available, 0);
    tally_b.charge(op(), ALICE, APP, 10, "/chat").await.unwrap();
    assert_eq!(tally_b.balance(ALICE).await.unwrap().available, 990);
    assert!(b.verify_trail().unwrap().problems.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_under_a_running_nodes_name_waits_and_a_clean_close_lets_go_at_once() {
    let pg = PgServer::start();
    // Leases of 30 s: a node after it gets them only if they are let go of.
    let long = PgConfig {
        lease_ttl: Duration::from_secs(30),
        ..node(&pg, "restart", "a")
    };
    let (old, _) = PgStore::open(long.clone()).unwrap();
    let tally_old = engine(&old).await;
    open_accounts(&tally_old).await;
    tally_old.fund(op(), ALICE, BANK, 500).await.unwrap();
    let before: Vec<(u16, u64)> = old.shards_held();
    // The same name while the first still runs: its leases are renewed, none lapses, and the
    // second serves nothing (a misconfiguration never splits an account between two).
    let (twin, recovery) = PgStore::open(node(&pg, "restart", "a")).unwrap();
    // (It waited a lease and two ticks of its own for one to lapse, then opened serving none.)
    assert_eq!(recovery.shards_claimed, 0);
    let e = twin.load(ALICE).unwrap_err();
    assert!(matches!(e, StoreError::NotOwner { .. }), "{e:?}");
    assert_eq!(old.shards_held(), before, "the first keeps every shard");
    tally_old
        .charge(op(), ALICE, APP, 5, "/chat")
        .await
        .unwrap();
    twin.close().unwrap();
    // A clean close lets go at once: the next node takes every shard, at new epochs.
    tally_old.shutdown().await.unwrap();
    old.close().unwrap();
    let (next, recovery) = PgStore::open(node(&pg, "restart", "c")).unwrap();
    assert_eq!(
        recovery.shards_claimed, 8,
        "released leases are free at once"
    );
    assert!(next
        .shards_held()
        .iter()
        .zip(&before)
        .all(|((_, now), (_, was))| now > was));
    let tally_next = engine(&next).await;
    assert_eq!(tally_next.balance(ALICE).await.unwrap().available, 495);
    tally_next.shutdown().await.unwrap();
    next.close().unwrap();
}

#[test]
fn a_config_out_of_bounds_is_refused_before_anything_is_written() {
    let mut config = PgConfig::new("host=/nonexistent", "bounds");
    config.node = "has space".into();
    assert!(matches!(PgStore::open(config.clone()), Err(StoreError::Io(r)) if r.contains("node")));
    config.node = "a".into();
    config.shards = 0;
    assert!(
        matches!(PgStore::open(config.clone()), Err(StoreError::Io(r)) if r.contains("shards"))
    );
    config.shards = 8;
    config.lease_ttl = Duration::from_millis(100);
    config.renew_every = Duration::from_millis(100);
    assert!(matches!(PgStore::open(config), Err(StoreError::Io(r)) if r.contains("renew")));
}
