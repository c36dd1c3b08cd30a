//! How records and snapshots are written: a version byte, then postcard.
//!
//! Serialization lives here, at the storage edge; tally-core only derives serde. Bump the
//! version byte when the encoding of a type changes. Until the first release an older version is
//! refused with a clear error; after it, keep decoding the old one.

use serde::{de::DeserializeOwned, Serialize};
use tally_core::{Account, KeyWindow, Record, RememberedKey};

use crate::StoreError;

/// Version of the record encoding. Version 2 added the origin, usage and funding updates;
/// version 3 spend tokens (issue, revoke, and the token a hold or charge was made with); version
/// 4 streaming holds (extend, settle), metered holds with their pinned price, and price catalog
/// changes; version 5 policy changes, the provider's cost in usage and the endpoint of a refund;
/// version 6 estimated commits and their corrections; version 7 period-tiered steps (the
/// period's use after a part, a volume rebate); version 8 prepaid credit grants (issued, expired)
/// and allowances. Data written by earlier versions (pre-release builds only) is refused with a
/// clear error.
const RECORD_VERSION: u8 = 8;
/// Version of the snapshot encoding (2: total funding and the day's spending; 3: spend tokens
/// and the token of each hold, a sixth digest field; 4: the idempotency keys kept apart, the
/// header naming their window; 5: the header names where the window's unforgotten keys start;
/// 6: a hold's pinned price, an app's price catalog; 7: the account's policy; 8: a posting's
/// endpoint, the provider's cost in usage; 9: a posting's estimate; 10: the use of period-tiered
/// prices; 11: grants and the allowance, and what each grant holds of a hold or paid of a
/// posting).
const SNAPSHOT_VERSION: u8 = 12;
/// Version of an account policy's encoding (the policies table).
const POLICY_VERSION: u8 = 1;
/// Version of a remembered idempotency key's encoding (2: a reserve's outcome names its amount,
/// and the outcomes of corrections and policy changes; 3: the outcomes of grants and
/// allowances).
const KEY_VERSION: u8 = 3;
/// Bytes before a snapshot's postcard body: version, covered seq, key window (first seq, count,
/// untrimmed from).
const SNAPSHOT_HEADER_LEN: usize = 33;

fn encode<T: Serialize>(version: u8, value: &T) -> Result<Vec<u8>, StoreError> {
    // Sized for a typical record at once: grown a byte at a time from one, a record's buffer
    // was reallocated about six times.
    let mut out = Vec::with_capacity(ENCODE_CAPACITY);
    encode_into(version, value, &mut out)?;
    Ok(out)
}

/// Bytes reserved up front for an encoding (a record is 100 to 300 bytes).
const ENCODE_CAPACITY: usize = 256;

/// Appends the encoding of `value` (version byte, then postcard) to `out`.
fn encode_into<T: Serialize>(version: u8, value: &T, out: &mut Vec<u8>) -> Result<(), StoreError> {
    out.push(version);
    postcard::to_io(value, out)
        .map(drop)
        .map_err(|e| StoreError::Io(format!("encoding: {e}").into()))
}

fn decode<T: DeserializeOwned>(version: u8, bytes: &[u8], what: &str) -> Result<T, StoreError> {
    match bytes.split_first() {
        Some((&v, rest)) if v == version => postcard::from_bytes(rest)
            .map_err(|e| StoreError::Corrupt(format!("decoding a {what}: {e}").into())),
        Some((&v, _)) => Err(StoreError::Corrupt(
            format!("{what} has encoding version {v}; this build reads {version}").into(),
        )),
        None => Err(StoreError::Corrupt(format!("empty {what}").into())),
    }
}

/// Encodes an account's policy (for the policies table).
pub fn encode_policy(policy: &tally_core::AccountPolicy) -> Result<Vec<u8>, StoreError> {
    encode(POLICY_VERSION, policy)
}

/// Decodes an account's policy.
pub fn decode_policy(bytes: &[u8]) -> Result<tally_core::AccountPolicy, StoreError> {
    decode(POLICY_VERSION, bytes, "policy")
}

/// Encodes a journal record.
pub fn encode_record(record: &Record) -> Result<Vec<u8>, StoreError> {
    encode(RECORD_VERSION, record)
}

/// Encodes a journal record into `out` (cleared first): the same bytes as [`encode_record`],
/// in a buffer the caller reuses.
pub fn encode_record_into(record: &Record, out: &mut Vec<u8>) -> Result<(), StoreError> {
    out.clear();
    encode_into(RECORD_VERSION, record, out)
}

/// Decodes a journal record.
pub fn decode_record(bytes: &[u8]) -> Result<Record, StoreError> {
    decode(RECORD_VERSION, bytes, "record")
}

/// Encodes an account snapshot: the version byte, the journal sequence number it covers, the
/// seq of its oldest remembered idempotency key, how many it remembers and the seq from which
/// they were made without forgetting the oldest (each `u64` little-endian, readable without
/// decoding the rest), then postcard. The keys themselves are
/// not in it ([`encode_key`]).
pub fn encode_account(account: &Account) -> Result<Vec<u8>, StoreError> {
    let window = account.remembered_window();
    let mut out = vec![SNAPSHOT_VERSION];
    out.extend_from_slice(&account.last_seq().to_le_bytes());
    out.extend_from_slice(&window.first.to_le_bytes());
    out.extend_from_slice(&window.count.to_le_bytes());
    out.extend_from_slice(&window.untrimmed_from.to_le_bytes());
    postcard::to_io(account, &mut out)
        .map_err(|e| StoreError::Io(format!("encoding: {e}").into()))?;
    Ok(out)
}

fn header_u64(bytes: &[u8], at: usize) -> Result<u64, StoreError> {
    bytes
        .get(at..at + 8)
        .and_then(|b| <[u8; 8]>::try_from(b).ok())
        .map(u64::from_le_bytes)
        .ok_or_else(|| StoreError::Corrupt("snapshot shorter than its header".into()))
}

/// The journal sequence number an encoded snapshot covers.
pub fn snapshot_seq(bytes: &[u8]) -> Result<u64, StoreError> {
    header_u64(bytes, 1)
}

/// The remembered keys' window an encoded snapshot names.
pub fn snapshot_key_window(bytes: &[u8]) -> Result<KeyWindow, StoreError> {
    Ok(KeyWindow {
        first: header_u64(bytes, 9)?,
        count: header_u64(bytes, 17)?,
        untrimmed_from: header_u64(bytes, 25)?,
    })
}

/// Decodes an account snapshot, without its remembered keys (give them back with
/// [`Account::restore_remembered`]).
pub fn decode_account(bytes: &[u8]) -> Result<Account, StoreError> {
    match bytes.first() {
        Some(&SNAPSHOT_VERSION) => {}
        Some(v) => {
            return Err(StoreError::Corrupt(
                format!("snapshot has encoding version {v}; this build reads {SNAPSHOT_VERSION}")
                    .into(),
            ))
        }
        None => return Err(StoreError::Corrupt("empty snapshot".into())),
    }
    let seq = snapshot_seq(bytes)?;
    snapshot_key_window(bytes)?;
    let body = bytes.get(SNAPSHOT_HEADER_LEN..).unwrap_or_default();
    let account: Account = postcard::from_bytes(body)
        .map_err(|e| StoreError::Corrupt(format!("decoding a snapshot: {e}").into()))?;
    if account.last_seq() != seq {
        return Err(StoreError::Corrupt(
            format!(
                "snapshot header says {seq}, its body {}",
                account.last_seq()
            )
            .into(),
        ));
    }
    Ok(account)
}

/// Encodes a remembered idempotency key.
pub fn encode_key(key: &RememberedKey) -> Result<Vec<u8>, StoreError> {
    encode(KEY_VERSION, key)
}

/// Decodes a remembered idempotency key.
pub fn decode_key(bytes: &[u8]) -> Result<RememberedKey, StoreError> {
    decode(KEY_VERSION, bytes, "remembered idempotency key")
}
