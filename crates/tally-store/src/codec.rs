//! How records and snapshots are written: a version byte, then postcard.
//!
//! Serialization lives here, at the storage edge; tally-core only derives serde. Bump the
//! version byte when the encoding of a type changes. Until the first release an older version is
//! refused with a clear error; after it, keep decoding the old one.

use serde::{de::DeserializeOwned, Serialize};
use tally_core::{Account, Record};

use crate::StoreError;

/// Version of the record encoding. Version 2 added the origin, usage and funding updates;
/// version 3 spend tokens (issue, revoke, and the token a hold or charge was made with). Data
/// written by earlier versions (pre-release builds only) is refused with a clear error.
const RECORD_VERSION: u8 = 3;
/// Version of the snapshot encoding (2: total funding and the day's spending; 3: spend tokens
/// and the token of each hold, a sixth digest field).
const SNAPSHOT_VERSION: u8 = 3;

fn encode<T: Serialize>(version: u8, value: &T) -> Result<Vec<u8>, StoreError> {
    let mut out = vec![version];
    postcard::to_io(value, &mut out)
        .map_err(|e| StoreError::Io(format!("encoding: {e}").into()))?;
    Ok(out)
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

/// Encodes a journal record.
pub fn encode_record(record: &Record) -> Result<Vec<u8>, StoreError> {
    encode(RECORD_VERSION, record)
}

/// Decodes a journal record.
pub fn decode_record(bytes: &[u8]) -> Result<Record, StoreError> {
    decode(RECORD_VERSION, bytes, "record")
}

/// Encodes an account snapshot: the version byte, the journal sequence number it covers
/// (`u64` little-endian, readable without decoding the rest), then postcard.
pub fn encode_account(account: &Account) -> Result<Vec<u8>, StoreError> {
    let mut out = vec![SNAPSHOT_VERSION];
    out.extend_from_slice(&account.last_seq().to_le_bytes());
    postcard::to_io(account, &mut out)
        .map_err(|e| StoreError::Io(format!("encoding: {e}").into()))?;
    Ok(out)
}

/// The journal sequence number an encoded snapshot covers.
pub fn snapshot_seq(bytes: &[u8]) -> Result<u64, StoreError> {
    bytes
        .get(1..9)
        .and_then(|b| <[u8; 8]>::try_from(b).ok())
        .map(u64::from_le_bytes)
        .ok_or_else(|| StoreError::Corrupt("snapshot shorter than its header".into()))
}

/// Decodes an account snapshot.
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
    let body = bytes.get(9..).unwrap_or_default();
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
