//! Totals near `u128::MAX` and balances near `i128::MAX`. No history reaches them (each operation carries at most 2^63 − 1, so
//! about 2^65 fundings would be needed), so the accounts are built through `Account`'s
//! `Deserialize` from a hand-made value tree, with the totals set directly.

use serde::de::value::{Error as DeError, MapDeserializer, SeqDeserializer, StrDeserializer};
use serde::de::{self, IntoDeserializer, Visitor};
use serde::Deserialize;

use tally_core::{Account, AccountId, AccountSpec, Error};

use crate::world::*;

/// A minimal self-describing value, enough to deserialize an `Account` with no holds, postings or
/// remembered keys.
#[derive(Clone, Debug)]
enum Val {
    Bool(bool),
    U64(u64),
    U128(u128),
    Str(&'static str),
    Seq(Vec<Val>),
    Map(Vec<(Val, Val)>),
}

impl<'de> de::Deserializer<'de> for Val {
    type Error = DeError;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        match self {
            Val::Bool(b) => visitor.visit_bool(b),
            Val::U64(n) => visitor.visit_u64(n),
            Val::U128(n) => visitor.visit_u128(n),
            Val::Str(s) => visitor.visit_borrowed_str(s),
            Val::Seq(items) => visitor.visit_seq(SeqDeserializer::new(items.into_iter())),
            Val::Map(entries) => visitor.visit_map(MapDeserializer::new(entries.into_iter())),
        }
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        name: &'static str,
        variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, DeError> {
        match self {
            Val::Str(s) => {
                StrDeserializer::<DeError>::new(s).deserialize_enum(name, variants, visitor)
            }
            other => other.deserialize_any(visitor),
        }
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf
        option unit unit_struct newtype_struct seq tuple tuple_struct map struct identifier
        ignored_any
    }
}

impl IntoDeserializer<'_, DeError> for Val {
    type Deserializer = Val;
    fn into_deserializer(self) -> Val {
        self
    }
}

/// Totals to give an account built by hand.
#[derive(Clone, Copy)]
struct Totals {
    credits_posted: u128,
    debits_posted: u128,
    debits_pending: u128,
}

/// A user account (credit limit `credit_limit`) with the given totals and nothing else.
fn user_with(id: AccountId, credit_limit: u64, totals: Totals) -> Account {
    let empty_map = || Val::Map(Vec::new());
    let empty_seq = || Val::Seq(Vec::new());
    let spec = Val::Map(vec![
        (Val::Str("kind"), Val::Str("User")),
        (Val::Str("credit_limit"), Val::U64(credit_limit)),
        (
            Val::Str("flags"),
            Val::Map(vec![(Val::Str("may_overdraw"), Val::Bool(false))]),
        ),
    ]);
    let account = Val::Map(vec![
        (Val::Str("id"), Val::U64(id.0)),
        (Val::Str("spec"), spec),
        (Val::Str("credits_posted"), Val::U128(totals.credits_posted)),
        (Val::Str("debits_posted"), Val::U128(totals.debits_posted)),
        (Val::Str("debits_pending"), Val::U128(totals.debits_pending)),
        (Val::Str("next_seq"), Val::U64(1)),
        (Val::Str("holds"), empty_map()),
        (Val::Str("deadlines"), empty_seq()),
        (Val::Str("resolved_order"), empty_seq()),
        (Val::Str("postings"), empty_map()),
        (Val::Str("posting_order"), empty_seq()),
        (Val::Str("remembered"), empty_map()),
        (Val::Str("remembered_order"), empty_seq()),
        (Val::Str("last_seq"), Val::U64(0)),
        (Val::Str("funded"), Val::U128(0)),
        (
            Val::Str("spend"),
            Val::Map(vec![
                (Val::Str("day"), Val::U64(0)),
                (Val::Str("total"), Val::U128(0)),
                (Val::Str("by_app"), empty_seq()),
            ]),
        ),
        (Val::Str("tokens"), empty_map()),
        (Val::Str("catalog"), empty_map()),
        (Val::Str("catalog_version"), Val::U64(0)),
    ]);
    Account::deserialize(account).unwrap()
}

/// A world whose USER has the given totals.
fn world_with_user(credit_limit: u64, totals: Totals) -> World {
    let mut w = World::new();
    w.accounts
        .insert(USER, user_with(USER, credit_limit, totals));
    w
}

#[test]
fn the_hand_built_account_is_a_real_account() {
    let zero = Totals {
        credits_posted: 0,
        debits_posted: 0,
        debits_pending: 0,
    };
    assert_eq!(
        user_with(USER, 0, zero),
        Account::new(USER, AccountSpec::user())
    );
    assert_eq!(
        user_with(USER, 7, zero),
        Account::new(USER, AccountSpec::user().with_credit_limit(amt(7)))
    );
}

const NEAR_MAX: u128 = u128::MAX - 5;
/// The largest balance an account may show: posted and available balances are `i128`.
const TOP: u128 = i128::MAX as u128;

#[test]
fn a_credit_that_would_take_a_total_or_a_balance_out_of_range_is_overflow() {
    let totals = |credits_posted, debits_posted| Totals {
        credits_posted,
        debits_posted,
        debits_pending: 0,
    };
    let overflow = Error::Overflow {
        account: USER,
        field: "credits_posted",
    };
    let cases: &[(&str, u64, Totals, u64)] = &[
        // (case, credit limit, totals, fund amount)
        ("the balance one past i128::MAX", 0, totals(TOP - 5, 0), 6),
        ("the limit counts as credit", 10, totals(TOP - 15, 0), 6),
        (
            "credits one past u128::MAX, the balance small",
            0,
            totals(NEAR_MAX, NEAR_MAX - 100),
            6,
        ),
    ];
    for &(name, limit, totals, amount) in cases {
        let mut w = world_with_user(limit, totals);
        let before = w.bal(USER);
        assert_eq!(w.reject(USER, fund(BANK, amount)), overflow, "{name}");
        assert_eq!(w.bal(USER), before, "{name}: refused, nothing changed");
    }

    let mut w = world_with_user(0, totals(TOP - 5, 0));
    w.fund(USER, 5);
    let balance = w.account(USER).balance();
    assert_eq!(
        (balance.posted, balance.available),
        (i128::MAX, i128::MAX),
        "up to the top fits, exactly"
    );
    let mut w = world_with_user(0, totals(NEAR_MAX, NEAR_MAX - 100));
    w.fund(USER, 5);
    assert_eq!(w.account(USER).balance().credits_posted, u128::MAX);
}

#[test]
fn a_refund_that_would_pass_u128_max_is_overflow() {
    let mut w = world_with_user(
        0,
        Totals {
            credits_posted: NEAR_MAX,
            debits_posted: NEAR_MAX - 1_000,
            debits_pending: 0,
        },
    );
    let posting = w.charge(USER, 10);

    let error = w.reject(USER, refund(posting, 6));

    assert_eq!(
        error,
        Error::Overflow {
            account: USER,
            field: "credits_posted"
        }
    );
    w.ok(USER, refund(posting, 5));
}

#[test]
#[should_panic(expected = "totals out of range")]
fn a_balance_that_cannot_be_shown_stops_loudly_instead_of_clamping() {
    // No decision leads here (credits past i128::MAX with nothing debited): damage or a bug.
    let account = user_with(
        USER,
        0,
        Totals {
            credits_posted: TOP + 1,
            debits_posted: 0,
            debits_pending: 0,
        },
    );
    let _ = account.balance();
}

#[test]
fn a_debit_that_would_pass_u128_max_is_overflow_pending_included() {
    // 100 available, but debits_posted + debits_pending + amount passes u128::MAX past 100.
    let totals = Totals {
        credits_posted: u128::MAX,
        debits_posted: u128::MAX - 100,
        debits_pending: 0,
    };
    let overflow = Error::Overflow {
        account: USER,
        field: "debits",
    };
    let commands = [reserve(101), charge(101), transfer(USER2, 101)];
    for command in commands {
        let mut w = world_with_user(0, totals);
        let name = command.name();
        assert_eq!(w.reject(USER, command), overflow, "{name}");
    }

    let mut w = world_with_user(0, totals);
    assert_eq!(w.bal(USER).available, 100);
    w.reserve(USER, 60);
    assert_eq!(
        w.reject(USER, charge(41)),
        overflow,
        "the pending 60 counts"
    );
    w.charge(USER, 40);
    assert_eq!(w.bal(USER), bal(60, 60, 0));
}
