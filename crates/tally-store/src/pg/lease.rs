//! Shard leases: which shards this node serves, at which epoch, and until when.
//!
//! The `leases` table has one row per shard: the node that owns it, the epoch it took it at
//! (raised by one at every claim) and when the lease lapses (PostgreSQL's clock). A node
//! claims a shard whose lease lapsed (or one its own name still holds from before a restart),
//! raising the epoch; it renews what it holds every [`super::PgConfig::renew_every`]; and
//! every transaction that writes a shard's records or snapshots first reads the shard's row
//! `FOR SHARE` and is refused unless the epoch is still the one the node claimed. A claim's
//! `UPDATE` waits for such a transaction and the transaction waits for a claim, so a deposed
//! node's writes never land after its successor read the shard.
//!
//! Locally each shard held carries a deadline: the moment the lease was last renewed (taken
//! *before* the renewal was sent, so it is never later than PostgreSQL's), plus the lease's
//! length less a margin. Past it the node serves nothing of the shard (reads included) until a
//! renewal succeeds: a node that was frozen (SIGSTOP, a long pause) and wakes up cannot answer
//! from an account another node may have changed meanwhile.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use postgres::Client;

use super::{big, pg_err};
use crate::StoreError;

/// One shard as this node holds it.
#[derive(Default)]
struct Held {
    /// The epoch it claimed the shard at (0: not held).
    epoch: AtomicU64,
    /// Its local deadline, in nanoseconds after [`Leases::base`].
    until_ns: AtomicU64,
}

/// The shards this node holds (read on every append, load and turn: atomics, no lock).
pub(crate) struct Leases {
    base: Instant,
    shards: Vec<Held>,
    /// The part of a lease's length the local deadline leaves out (clock rate differences).
    margin: Duration,
    ttl: Duration,
}

impl Leases {
    pub(crate) fn new(shards: u16, ttl: Duration) -> Leases {
        Leases {
            base: Instant::now(),
            shards: (0..shards).map(|_| Held::default()).collect(),
            margin: ttl / 10,
            ttl,
        }
    }

    fn nanos(&self, at: Instant) -> u64 {
        u64::try_from(at.saturating_duration_since(self.base).as_nanos()).unwrap_or(u64::MAX)
    }

    /// The epoch this node serves `shard` at now, or why it does not.
    pub(crate) fn serving(&self, shard: u16) -> Result<u64, StoreError> {
        let Some(held) = self.shards.get(usize::from(shard)) else {
            return Err(StoreError::NotOwner {
                shard,
                reason: "no such shard".into(),
            });
        };
        let epoch = held.epoch.load(Ordering::Acquire);
        if epoch == 0 {
            return Err(StoreError::NotOwner {
                shard,
                reason: "another node owns it, or none has claimed it yet".into(),
            });
        }
        if self.nanos(Instant::now()) >= held.until_ns.load(Ordering::Acquire) {
            return Err(StoreError::NotOwner {
                shard,
                reason: "this node's lease lapsed before it could renew it".into(),
            });
        }
        Ok(epoch)
    }

    /// The shards held, with their epochs.
    pub(crate) fn held(&self) -> Vec<(u16, u64)> {
        (0u16..)
            .zip(&self.shards)
            .filter_map(|(shard, held)| {
                let epoch = held.epoch.load(Ordering::Acquire);
                (epoch != 0).then_some((shard, epoch))
            })
            .collect()
    }

    /// Serves `shard` at `epoch`, renewed at `sent` (taken before the claim was sent).
    pub(crate) fn hold(&self, shard: u16, epoch: u64, sent: Instant) {
        if let Some(held) = self.shards.get(usize::from(shard)) {
            self.extend_one(held, sent);
            held.epoch.store(epoch, Ordering::Release);
        }
    }

    /// Moves the deadline of `shard` to `sent` + the lease's length − the margin.
    pub(crate) fn extend(&self, shard: u16, sent: Instant) {
        if let Some(held) = self.shards.get(usize::from(shard)) {
            self.extend_one(held, sent);
        }
    }

    fn extend_one(&self, held: &Held, sent: Instant) {
        let until = self.nanos(sent + self.ttl.saturating_sub(self.margin));
        held.until_ns.fetch_max(until, Ordering::AcqRel);
    }

    /// Stops serving `shard`; returns the epoch it was held at (`None`: it was not).
    pub(crate) fn stop_serving(&self, shard: u16) -> Option<u64> {
        let held = self.shards.get(usize::from(shard))?;
        let epoch = held.epoch.swap(0, Ordering::AcqRel);
        (epoch != 0).then_some(epoch)
    }

    /// Serves nothing more (the store fail-stopped or closed).
    pub(crate) fn drop_all(&self) {
        for held in &self.shards {
            held.epoch.store(0, Ordering::Release);
        }
    }
}

/// Milliseconds as the `BIGINT` the lease statements multiply an interval by.
fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// Announces that `node` is alive (the fair share of shards counts the live nodes).
pub(crate) fn heartbeat(
    client: &mut Client,
    schema: &str,
    node: &str,
    ttl: Duration,
) -> Result<(), StoreError> {
    client
        .execute(
            &format!(
                "INSERT INTO {schema}.nodes (node, expires_at) \
                 VALUES ($1, now() + $2::BIGINT * interval '1 millisecond') \
                 ON CONFLICT (node) DO UPDATE SET expires_at = EXCLUDED.expires_at"
            ),
            &[&node, &millis(ttl)],
        )
        .map_err(pg_err("announcing the node"))?;
    Ok(())
}

/// How many shards this node should hold: the shards shared out over the live nodes.
pub(crate) fn fair_share(
    client: &mut Client,
    schema: &str,
    shards: u16,
) -> Result<u16, StoreError> {
    let live: i64 = client
        .query_one(
            &format!("SELECT count(*) FROM {schema}.nodes WHERE expires_at > now()"),
            &[],
        )
        .map_err(pg_err("counting live nodes"))?
        .get(0);
    let live = u16::try_from(live.max(1)).unwrap_or(u16::MAX);
    Ok(shards.div_ceil(live))
}

/// Claims up to `want` shards whose lease lapsed (a dead node's, a released one, or this
/// node's own from before a crash: a process under the same name that still runs keeps its
/// leases), each at its next epoch. Rows locked by a transaction are skipped until the next
/// tick. Returns them with their epochs.
pub(crate) fn claim(
    client: &mut Client,
    schema: &str,
    node: &str,
    want: u16,
    holding: &[(u16, u64)],
    ttl: Duration,
) -> Result<Vec<(u16, u64)>, StoreError> {
    let held: Vec<i16> = holding.iter().map(|(s, _)| shard_sql(*s)).collect();
    let rows = client
        .query(
            &format!(
                "WITH free AS ( \
                     SELECT shard FROM {schema}.leases \
                     WHERE expires_at < now() AND NOT (shard = ANY($3)) \
                     ORDER BY shard LIMIT $2 FOR UPDATE SKIP LOCKED) \
                 UPDATE {schema}.leases l SET node = $1, epoch = l.epoch + 1, \
                     expires_at = now() + $4::BIGINT * interval '1 millisecond' \
                 FROM free WHERE l.shard = free.shard RETURNING l.shard, l.epoch"
            ),
            &[&node, &i64::from(want), &held, &millis(ttl)],
        )
        .map_err(pg_err("claiming shards"))?;
    rows.iter()
        .map(|row| {
            let shard: i16 = row.get(0);
            let epoch: i64 = row.get(1);
            Ok((shard_of_sql(shard)?, super::unbig(epoch)))
        })
        .collect()
}

/// Renews the leases `node` holds at their epochs; returns the shards it still holds (a shard
/// missing from the answer was taken over).
pub(crate) fn renew(
    client: &mut Client,
    schema: &str,
    node: &str,
    holding: &[(u16, u64)],
    ttl: Duration,
) -> Result<Vec<u16>, StoreError> {
    if holding.is_empty() {
        return Ok(Vec::new());
    }
    let shards: Vec<i16> = holding.iter().map(|(s, _)| shard_sql(*s)).collect();
    let epochs: Vec<i64> = holding.iter().map(|(_, e)| big(*e)).collect();
    let rows = client
        .query(
            &format!(
                "WITH mine AS ( \
                     SELECT l.shard FROM {schema}.leases l \
                     JOIN unnest($3::SMALLINT[], $4::BIGINT[]) AS o(shard, epoch) \
                         ON l.shard = o.shard AND l.epoch = o.epoch \
                     WHERE l.node = $1 ORDER BY l.shard FOR UPDATE OF l) \
                 UPDATE {schema}.leases l SET expires_at = now() + $2::BIGINT * interval '1 millisecond' \
                 FROM mine WHERE l.shard = mine.shard RETURNING l.shard"
            ),
            &[&node, &millis(ttl), &shards, &epochs],
        )
        .map_err(pg_err("renewing leases"))?;
    rows.iter().map(|row| shard_of_sql(row.get(0))).collect()
}

/// Lets go of some leases `node` holds at their epochs: another node may claim them at once.
pub(crate) fn release_some(
    client: &mut Client,
    schema: &str,
    node: &str,
    holding: &[(u16, u64)],
) -> Result<(), StoreError> {
    let shards: Vec<i16> = holding.iter().map(|(s, _)| shard_sql(*s)).collect();
    let epochs: Vec<i64> = holding.iter().map(|(_, e)| big(*e)).collect();
    client
        .execute(
            &format!(
                "UPDATE {schema}.leases l SET expires_at = '-infinity' \
                 FROM unnest($2::SMALLINT[], $3::BIGINT[]) AS o(shard, epoch) \
                 WHERE l.shard = o.shard AND l.epoch = o.epoch AND l.node = $1"
            ),
            &[&node, &shards, &epochs],
        )
        .map_err(pg_err("releasing leases"))?;
    Ok(())
}

/// Lets go of every lease `node` holds and leaves the nodes table (a clean close).
pub(crate) fn release(
    client: &mut Client,
    schema: &str,
    node: &str,
    holding: &[(u16, u64)],
) -> Result<(), StoreError> {
    release_some(client, schema, node, holding)?;
    client
        .execute(
            &format!("DELETE FROM {schema}.nodes WHERE node = $1"),
            &[&node],
        )
        .map_err(pg_err("leaving the nodes table"))?;
    Ok(())
}

/// In a transaction about to write records or a snapshot of `shards` (pairs of a shard and
/// the epoch a record or copy of it was made under; a shard may come twice): locks their
/// lease rows `FOR SHARE`, in shard order, and refuses unless every pair's epoch is the
/// shard's now (this node was deposed, or let go of the shard and claimed it again).
pub(crate) fn fence(
    tx: &mut postgres::Transaction<'_>,
    schema: &str,
    shards: &[(u16, u64)],
) -> Result<(), StoreError> {
    let ids: Vec<i16> = shards.iter().map(|(s, _)| shard_sql(*s)).collect();
    let rows = tx
        .query(
            &format!(
                "SELECT shard, epoch, coalesce(node, '') FROM {schema}.leases \
                 WHERE shard = ANY($1) ORDER BY shard FOR SHARE"
            ),
            &[&ids],
        )
        .map_err(pg_err("checking the shards' leases"))?;
    for row in &rows {
        let shard = shard_of_sql(row.get(0))?;
        let epoch = super::unbig(row.get(1));
        let node: String = row.get(2);
        if let Some((_, mine)) = shards.iter().find(|(s, e)| *s == shard && *e != epoch) {
            return Err(StoreError::NotOwner {
                shard,
                reason: format!(
                    "its lease moved to epoch {epoch} (node {node:?}); this node wrote under \
                     epoch {mine}: it was deposed"
                )
                .into(),
            });
        }
    }
    let mut distinct: Vec<u16> = shards.iter().map(|(s, _)| *s).collect();
    distinct.sort_unstable();
    distinct.dedup();
    if rows.len() != distinct.len() {
        return Err(StoreError::Corrupt(
            "a shard's lease row is missing from the leases table".into(),
        ));
    }
    Ok(())
}

/// The last record of `shard`: its sequence number and chain hash (`None`: none yet).
pub(crate) fn tail(
    client: &mut Client,
    schema: &str,
    shard: u16,
) -> Result<Option<(u64, Vec<u8>)>, StoreError> {
    let row = client
        .query_opt(
            &format!(
                "SELECT seq, chain FROM {schema}.records WHERE shard = $1 \
                 ORDER BY seq DESC LIMIT 1"
            ),
            &[&shard_sql(shard)],
        )
        .map_err(pg_err("reading a shard's last record"))?;
    Ok(row.map(|row| (super::unbig(row.get(0)), row.get(1))))
}

/// A shard number as its `SMALLINT` column.
pub(crate) fn shard_sql(shard: u16) -> i16 {
    i16::from_ne_bytes(shard.to_ne_bytes())
}

/// A `SMALLINT` shard column back as the shard, refused if it is not one.
pub(crate) fn shard_of_sql(v: i16) -> Result<u16, StoreError> {
    u16::try_from(v).map_err(|_| StoreError::Corrupt(format!("shard {v} is negative").into()))
}
