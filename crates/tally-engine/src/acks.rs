//! The durable acknowledgement path: an actor's reply waits here until the journal is durable
//! up to the record it reflects, and the durable point sends it.
//!
//! An actor never waits for the disk. When what it answers is not durable yet it parks the
//! reply ([`Acks::answer`]); one task follows the store's durable point and, at each move,
//! sends every parked reply the point now covers (oldest first, per shard). A caller so wakes
//! once, when its answer may be given, instead of every caller waking at every group commit
//! and checking again. Parked replies live in [`ACK_SHARDS`] heaps keyed by sequence number,
//! each behind its own short lock (never held while sending), chosen by account.
//!
//! A reply sent early is never wrong: the caller still checks the durable point itself before
//! answering (a failed point answers `StorageFailed`), so a failure, a closed store or the
//! engine stopping sends every parked reply at once and nothing waits forever.

use parking_lot::Mutex;
use std::cmp::Ordering as CmpOrdering;
use std::collections::BinaryHeap;
use tokio::sync::{oneshot, watch, Notify};

use tally_core::{AccountId, Outcome};
use tally_store::DurablePoint;

use crate::mailbox::{Answer, Reply};

/// How many heaps parked replies are spread over (by account id).
pub(crate) const ACK_SHARDS: usize = 16;

/// A reply and where it goes.
pub(crate) enum Ack {
    Outcome(oneshot::Sender<Reply<Outcome>>, Reply<Outcome>),
    Many(oneshot::Sender<Vec<Reply<Outcome>>>, Vec<Reply<Outcome>>),
    /// Boxed: an answer is large, and most are durable already (sent without parking).
    Answer(oneshot::Sender<Reply<Answer>>, Box<Reply<Answer>>),
    Made(oneshot::Sender<Reply<usize>>, Reply<usize>),
}

impl Ack {
    /// A parked answer.
    pub(crate) fn answer(tx: oneshot::Sender<Reply<Answer>>, reply: Reply<Answer>) -> Ack {
        Ack::Answer(tx, Box::new(reply))
    }

    /// Sends the reply (a caller that gave up is no one's concern).
    fn send(self) {
        match self {
            Ack::Outcome(tx, reply) => drop(tx.send(reply)),
            Ack::Many(tx, replies) => drop(tx.send(replies)),
            Ack::Answer(tx, reply) => drop(tx.send(*reply)),
            Ack::Made(tx, reply) => drop(tx.send(reply)),
        }
    }
}

/// A parked reply, ordered so that the heap's top is the lowest sequence number.
struct Parked {
    seq: u64,
    ack: Ack,
}

impl PartialEq for Parked {
    fn eq(&self, other: &Self) -> bool {
        self.seq == other.seq
    }
}

impl Eq for Parked {}

impl PartialOrd for Parked {
    fn partial_cmp(&self, other: &Self) -> Option<CmpOrdering> {
        Some(self.cmp(other))
    }
}

impl Ord for Parked {
    fn cmp(&self, other: &Self) -> CmpOrdering {
        other.seq.cmp(&self.seq)
    }
}

#[derive(Default)]
struct Shard {
    parked: BinaryHeap<Parked>,
    /// Set when the engine stops: nothing parks any more, every reply goes at once.
    closed: bool,
}

/// The replies waiting for durability.
pub(crate) struct Acks {
    durable: watch::Receiver<DurablePoint>,
    shards: Box<[Mutex<Shard>]>,
    stop: Notify,
}

/// Where the durable point stands: everything up to `seq`, or everything (`failed`: the
/// callers find the failure themselves).
#[derive(Clone, Copy)]
struct Covered {
    seq: u64,
    all: bool,
}

impl Covered {
    fn of(point: &DurablePoint) -> Self {
        Covered {
            seq: point.seq,
            all: point.failed.is_some(),
        }
    }

    fn covers(self, seq: u64) -> bool {
        self.all || seq <= self.seq
    }
}

impl Acks {
    pub(crate) fn new(durable: watch::Receiver<DurablePoint>) -> Self {
        Acks {
            durable,
            shards: (0..ACK_SHARDS).map(|_| Mutex::default()).collect(),
            stop: Notify::new(),
        }
    }

    fn covered(&self) -> Covered {
        Covered::of(&self.durable.borrow())
    }

    /// Sends `reply` from `account`'s actor to `tx` now if what it reflects is durable, or
    /// else (parked as `parked` makes it) when it is.
    pub(crate) fn answer<T>(
        &self,
        account: AccountId,
        tx: oneshot::Sender<Reply<T>>,
        reply: Reply<T>,
        parked: fn(oneshot::Sender<Reply<T>>, Reply<T>) -> Ack,
    ) {
        if self.covered().covers(reply.wait_seq) {
            let _ = tx.send(reply);
            return;
        }
        self.park(account, reply.wait_seq, parked(tx, reply));
    }

    /// [`Acks::answer`] for the replies of a batch: sent together once all are durable.
    pub(crate) fn answer_many(
        &self,
        account: AccountId,
        tx: oneshot::Sender<Vec<Reply<Outcome>>>,
        replies: Vec<Reply<Outcome>>,
    ) {
        let seq = replies.iter().map(|r| r.wait_seq).max().unwrap_or(0);
        if self.covered().covers(seq) {
            let _ = tx.send(replies);
            return;
        }
        self.park(account, seq, Ack::Many(tx, replies));
    }

    /// Parks `ack` until the durable point covers `seq`.
    fn park(&self, account: AccountId, seq: u64, ack: Ack) {
        let index = usize::try_from(account.0 % ACK_SHARDS as u64).unwrap_or(0);
        let Some(shard) = self.shards.get(index) else {
            return ack.send();
        };
        {
            let mut shard = shard.lock();
            if shard.closed {
                drop(shard);
                return ack.send();
            }
            shard.parked.push(Parked { seq, ack });
        }
        // The point may have moved (and this shard been swept) between the look above and
        // the push: look again, or the reply could wait for a move that never comes.
        let covered = self.covered();
        if covered.covers(seq) {
            sweep(shard, covered, &mut Vec::new());
        }
    }

    /// Follows the durable point and sends what each move covers, until the engine stops or
    /// the store's point is gone; then sends everything parked.
    pub(crate) async fn run(self: std::sync::Arc<Self>) {
        let mut durable = self.durable.clone();
        let mut ready = Vec::new();
        loop {
            tokio::select! {
                biased;
                () = self.stop.notified() => break,
                changed = durable.changed() => {
                    if changed.is_err() {
                        break;
                    }
                    let covered = Covered::of(&durable.borrow_and_update());
                    for shard in self.shards.iter() {
                        sweep(shard, covered, &mut ready);
                    }
                }
            }
        }
        self.close();
    }

    /// Stops parking and sends every parked reply (each caller then waits for durability
    /// itself, or finds the engine stopped).
    pub(crate) fn close(&self) {
        self.stop.notify_one();
        for shard in self.shards.iter() {
            let parked = {
                let mut shard = shard.lock();
                shard.closed = true;
                std::mem::take(&mut shard.parked)
            };
            for parked in parked {
                parked.ack.send();
            }
        }
    }
}

/// Sends every reply in `shard` that `covered` covers, oldest first (sent after the lock is
/// let go; `ready` is the reusable list of them).
fn sweep(shard: &Mutex<Shard>, covered: Covered, ready: &mut Vec<Ack>) {
    {
        let mut shard = shard.lock();
        while shard
            .parked
            .peek()
            .is_some_and(|top| covered.covers(top.seq))
        {
            if let Some(parked) = shard.parked.pop() {
                ready.push(parked.ack);
            }
        }
    }
    for ack in ready.drain(..) {
        ack.send();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    /// Answers a reply reflecting `seq` through `acks`; its receiver.
    fn answer(acks: &Acks, account: u64, seq: u64) -> oneshot::Receiver<Reply<usize>> {
        let (tx, rx) = oneshot::channel();
        let reply = Reply {
            result: Ok(usize::try_from(seq).unwrap_or(0)),
            wait_seq: seq,
        };
        acks.answer(AccountId(account), tx, reply, Ack::Made);
        rx
    }

    fn point(seq: u64) -> DurablePoint {
        DurablePoint { seq, failed: None }
    }

    #[tokio::test]
    async fn a_reply_goes_when_the_point_covers_it_and_not_before() {
        let (tx, rx) = watch::channel(point(5));
        let acks = Arc::new(Acks::new(rx));
        tokio::spawn(Arc::clone(&acks).run());
        let mut durable_now = answer(&acks, 1, 5);
        assert_eq!(durable_now.try_recv().ok().map(|r| r.wait_seq), Some(5));

        let mut later = answer(&acks, 2, 9);
        let mut much_later = answer(&acks, 18, 12); // the same shard as 2
        tokio::task::yield_now().await;
        assert!(later.try_recv().is_err(), "sent before seq 9 was durable");

        tx.send_replace(point(10));
        let got = tokio::time::timeout(std::time::Duration::from_secs(5), &mut later).await;
        assert_eq!(got.ok().and_then(Result::ok).map(|r| r.wait_seq), Some(9));
        tokio::task::yield_now().await;
        assert!(
            much_later.try_recv().is_err(),
            "sent before seq 12 was durable"
        );

        // A failed point sends everything: the caller finds the failure itself.
        tx.send_replace(DurablePoint {
            seq: 10,
            failed: Some("disk gone".into()),
        });
        let got = tokio::time::timeout(std::time::Duration::from_secs(5), much_later).await;
        assert_eq!(got.ok().and_then(Result::ok).map(|r| r.wait_seq), Some(12));
    }

    #[tokio::test]
    async fn closing_sends_every_parked_reply_and_parks_nothing_more() {
        let (_tx, rx) = watch::channel(point(0));
        let acks = Acks::new(rx);
        let mut parked = answer(&acks, 7, 3);
        assert!(parked.try_recv().is_err());
        acks.close();
        assert_eq!(parked.try_recv().ok().map(|r| r.wait_seq), Some(3));
        let mut after = answer(&acks, 7, 4);
        assert_eq!(after.try_recv().ok().map(|r| r.wait_seq), Some(4));
    }
}
