//! The acknowledgement log: one line per write the engine acknowledged, so that a crash test
//! can later check that every acknowledged operation survived.
//!
//! A line is `ACCOUNT OP OUTCOME`: the executing account's id (decimal), the operation id (32
//! hex digits) and the outcome's kind (`reserved`, `committed`, `voided`, `charged`,
//! `refunded`, `transferred`, `funded`), e.g. `1042 8000…0007 committed`.
//!
//! The rule that makes the log trustworthy: a line is handed to the writer only **after** the
//! call returned `Ok`. A line may be lost in a crash (it was still in a buffer), which makes the
//! check weaker but never wrong; a line for an operation that was not acknowledged is never
//! written. The writer is one OS thread fed by a bounded channel; it flushes whenever the channel
//! is momentarily empty, so a line reaches the file within microseconds to milliseconds.

use std::fs::OpenOptions;
use std::io::{self, BufRead, BufReader, BufWriter, Write};
use std::path::Path;
use std::thread::JoinHandle;

use tally::{AccountId, OpId, Outcome};

/// Lines that may wait in the channel before senders wait (bounds the writer's memory).
pub const ACK_QUEUE_LINES_MAX: usize = 65_536;

/// The stable name of an outcome's kind, as written in the log.
pub fn outcome_kind(outcome: &Outcome) -> &'static str {
    match outcome {
        Outcome::Opened => "opened",
        Outcome::Funded => "funded",
        Outcome::Reserved { .. } => "reserved",
        Outcome::Committed { .. } => "committed",
        Outcome::Voided { .. } => "voided",
        Outcome::Extended { .. } => "extended",
        Outcome::Settled { .. } => "settled",
        Outcome::PriceSet { .. } => "price_set",
        Outcome::PolicySet { .. } => "policy_set",
        Outcome::Corrected { .. } => "corrected",
        Outcome::Expired { .. } => "expired",
        Outcome::Charged { .. } => "charged",
        Outcome::Refunded { .. } => "refunded",
        Outcome::Transferred => "transferred",
        Outcome::FundingUpdated { .. } => "funding_updated",
        Outcome::TokenIssued { .. } => "token_issued",
        Outcome::TokenRevoked { .. } => "token_revoked",
        Outcome::GrantIssued { .. } => "grant_issued",
        Outcome::GrantExpired { .. } => "grant_expired",
        Outcome::AllowanceSet => "allowance_set",
    }
}

/// One acknowledged write.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AckLine {
    /// The account that executed it (where `find_op` looks).
    pub account: AccountId,
    /// Its operation id.
    pub op: OpId,
    /// Its outcome's kind (see [`outcome_kind`]).
    pub outcome: String,
}

impl AckLine {
    /// The line as written, newline included.
    pub fn format(account: AccountId, op: OpId, outcome: &str) -> String {
        format!("{} {:032x} {outcome}\n", account.0, op.0)
    }

    /// Parses one line (without its newline).
    pub fn parse(line: &str) -> Result<AckLine, String> {
        let mut fields = line.split_ascii_whitespace();
        let (Some(account), Some(op), Some(outcome), None) =
            (fields.next(), fields.next(), fields.next(), fields.next())
        else {
            return Err(format!("expected `ACCOUNT OP OUTCOME`, got `{line}`"));
        };
        let account = account
            .parse::<u64>()
            .map_err(|e| format!("account `{account}`: {e}"))?;
        let op = u128::from_str_radix(op, 16).map_err(|e| format!("op `{op}`: {e}"))?;
        Ok(AckLine {
            account: AccountId(account),
            op: OpId(op),
            outcome: outcome.to_owned(),
        })
    }
}

/// What [`read`] found in a log.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AckLog {
    /// Every well-formed line, in file order.
    pub lines: Vec<AckLine>,
    /// Malformed complete lines: (1-based line number, problem).
    pub malformed: Vec<(usize, String)>,
    /// Whether the file ended in an incomplete line (cut by a crash mid-write); it is ignored.
    pub torn_tail: bool,
}

/// Reads a whole log.
pub fn read(path: &Path) -> io::Result<AckLog> {
    let file = OpenOptions::new().read(true).open(path)?;
    let mut reader = BufReader::new(file);
    let mut log = AckLog::default();
    let mut buf = String::new();
    let mut number = 0usize;
    loop {
        buf.clear();
        if reader.read_line(&mut buf)? == 0 {
            break;
        }
        number += 1;
        let Some(line) = buf.strip_suffix('\n') else {
            log.torn_tail = true;
            break;
        };
        if line.trim().is_empty() {
            continue;
        }
        match AckLine::parse(line) {
            Ok(parsed) => log.lines.push(parsed),
            Err(problem) => log.malformed.push((number, problem)),
        }
    }
    Ok(log)
}

/// A handle the clients send acknowledged lines through. Cheap to clone.
#[derive(Clone, Debug)]
pub struct AckSender {
    tx: tokio::sync::mpsc::Sender<String>,
}

/// The writer ended (an I/O error); no further line can be recorded.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("the acknowledgement log writer has stopped")]
pub struct AckClosed;

impl AckSender {
    /// Records an acknowledged write. Call only after the engine returned `Ok`.
    pub async fn acked(
        &self,
        account: AccountId,
        op: OpId,
        outcome: &str,
    ) -> Result<(), AckClosed> {
        self.tx
            .send(AckLine::format(account, op, outcome))
            .await
            .map_err(|_| AckClosed)
    }
}

/// The writer thread of an acknowledgement log, appending to its file.
#[derive(Debug)]
pub struct AckWriter {
    sender: Option<AckSender>,
    thread: Option<JoinHandle<io::Result<u64>>>,
}

impl AckWriter {
    /// Opens `path` for appending (creating it) and starts the writer thread.
    pub fn open(path: &Path) -> io::Result<AckWriter> {
        let file = OpenOptions::new().create(true).append(true).open(path)?;
        let (tx, mut rx) = tokio::sync::mpsc::channel::<String>(ACK_QUEUE_LINES_MAX);
        let thread = std::thread::Builder::new()
            .name("tally-bench-acklog".to_owned())
            .spawn(move || -> io::Result<u64> {
                let mut out = BufWriter::with_capacity(64 << 10, file);
                let mut lines = 0u64;
                while let Some(line) = rx.blocking_recv() {
                    out.write_all(line.as_bytes())?;
                    lines += 1;
                    while let Ok(line) = rx.try_recv() {
                        out.write_all(line.as_bytes())?;
                        lines += 1;
                    }
                    out.flush()?;
                }
                out.flush()?;
                Ok(lines)
            })?;
        Ok(AckWriter {
            sender: Some(AckSender { tx }),
            thread: Some(thread),
        })
    }

    /// A sender for clients.
    pub fn sender(&self) -> Option<AckSender> {
        self.sender.clone()
    }

    /// Waits until every sender is dropped and every line is written; returns the lines written.
    pub fn finish(mut self) -> io::Result<u64> {
        self.sender = None;
        match self.thread.take() {
            Some(thread) => thread
                .join()
                .map_err(|_| io::Error::other("the acknowledgement log writer panicked"))?,
            None => Ok(0),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn a_line_round_trips() {
        let text = AckLine::format(AccountId(1042), OpId(0xabc), "committed");
        assert_eq!(text, "1042 00000000000000000000000000000abc committed\n");
        let parsed = AckLine::parse(text.trim_end()).unwrap();
        assert_eq!(
            parsed,
            AckLine {
                account: AccountId(1042),
                op: OpId(0xabc),
                outcome: "committed".to_owned()
            }
        );
    }

    #[test]
    fn malformed_lines_are_reported_and_a_torn_tail_is_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("acks");
        std::fs::write(&path, "1 0a funded\nnonsense\n2 0b charg").unwrap();
        let log = read(&path).unwrap();
        assert_eq!(log.lines.len(), 1);
        assert_eq!(log.malformed.len(), 1);
        assert_eq!(log.malformed[0].0, 2);
        assert!(log.torn_tail);
    }

    #[test]
    fn the_writer_appends_every_line_sent() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("acks");
        for round in 0..2u128 {
            let writer = AckWriter::open(&path).unwrap();
            let sender = writer.sender().unwrap();
            let runtime = tokio::runtime::Builder::new_current_thread()
                .build()
                .unwrap();
            runtime.block_on(async {
                for i in 0..100u128 {
                    sender
                        .acked(AccountId(5), OpId(round * 1000 + i), "charged")
                        .await
                        .unwrap();
                }
            });
            drop(sender);
            assert_eq!(writer.finish().unwrap(), 100);
        }
        let log = read(&path).unwrap();
        assert_eq!(log.lines.len(), 200);
        assert!(!log.torn_tail && log.malformed.is_empty());
    }
}
