//! The received legs of every account in a store shared by several nodes, kept per (account,
//! source shard): a shard's sums are folded in memory by the node that owns the shard as it
//! appends (so a counterparty on this node sees a leg as soon as it is appended, as in the
//! local stores), and written to the `legs` table in the transaction of each group; the sums of
//! shards other nodes own are read from that table. An account's legs are the sum over shards.

use dashmap::DashMap;
use tally_core::{AccountId, Leg, LegTotals};

/// The sums of the legs every account received, by the shard of the record that carried them.
#[derive(Default)]
pub(crate) struct ShardLegs {
    sums: DashMap<AccountId, Vec<(u16, LegTotals)>, foldhash::fast::RandomState>,
}

impl ShardLegs {
    /// Folds a leg that a record of `shard` carried to `id`. Called after the record is
    /// queued, so it cannot be refused: a sum passing `u128` means damaged memory, and the
    /// store stops loudly rather than keep a wrong sum.
    pub(crate) fn fold(&self, id: AccountId, shard: u16, leg: Leg, seq: u64) {
        let mut entry = self.sums.entry(id).or_default();
        let slot = match entry.iter().position(|(s, _)| *s == shard) {
            Some(i) => i,
            None => {
                entry.push((shard, LegTotals::default()));
                entry.len() - 1
            }
        };
        if let Some((_, totals)) = entry.get_mut(slot) {
            if let Err(e) = totals.add(leg, seq) {
                panic!("account {}: {e}: the leg sums are damaged", id.0);
            }
        }
    }

    /// Sets what `shard`'s records carried to `id`, as the `legs` table holds it (a shard this
    /// node does not append to).
    pub(crate) fn set(&self, id: AccountId, shard: u16, totals: LegTotals) {
        let mut entry = self.sums.entry(id).or_default();
        match entry.iter_mut().find(|(s, _)| *s == shard) {
            Some((_, held)) => *held = totals,
            None => entry.push((shard, totals)),
        }
    }

    /// What `id` received from every shard.
    pub(crate) fn get(&self, id: AccountId) -> LegTotals {
        let Some(entry) = self.sums.get(&id) else {
            return LegTotals::default();
        };
        let mut sum = LegTotals::default();
        for (_, totals) in entry.iter() {
            match (
                sum.credits.checked_add(totals.credits),
                sum.debits.checked_add(totals.debits),
            ) {
                (Some(credits), Some(debits)) => {
                    sum.credits = credits;
                    sum.debits = debits;
                    sum.last_seq = sum.last_seq.max(totals.last_seq);
                }
                _ => panic!(
                    "account {}: the sum of its legs over shards passes u128: the sums are damaged",
                    id.0
                ),
            }
        }
        sum
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tally_core::Amount;

    fn amount(v: u64) -> Amount {
        Amount::new(v).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn an_accounts_legs_are_the_sum_over_shards_and_a_set_replaces_one_shards_sum() {
        let book = ShardLegs::default();
        let id = AccountId(7);
        book.fold(id, 3, Leg::Credit(id, amount(100)), 10);
        book.fold(id, 3, Leg::Debit(id, amount(30)), 11);
        book.set(
            id,
            9,
            LegTotals {
                credits: 5,
                debits: 1,
                last_seq: 40,
            },
        );
        assert_eq!(
            book.get(id),
            LegTotals {
                credits: 105,
                debits: 31,
                last_seq: 40
            }
        );
        book.set(
            id,
            9,
            LegTotals {
                credits: 8,
                debits: 1,
                last_seq: 41,
            },
        );
        assert_eq!(book.get(id).credits, 108);
        assert_eq!(book.get(AccountId(8)), LegTotals::default());
    }
}
