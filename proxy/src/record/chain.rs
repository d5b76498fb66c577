//! Signed checkpoints of the audit chain and the verifier that walks chain and checkpoints.
//!
//! Owns: the checkpoint format and what "the chain verifies" means. Must never: trust anything
//! in the store it has not re-hashed, or a checkpoint it has not checked the signature of.
//!
//! What is detected: an edited record (its hash no longer matches its bytes, or a rewritten
//! chain no longer matches a signed checkpoint), a deleted record (a gap in the sequence, or a
//! missing head without a retention tombstone), reordered records (a record under another seq,
//! or whose `prev_hash` is not its predecessor's hash), a truncated tail (a signed checkpoint
//! beyond the last record). Limits: records after the last checkpoint are protected by the
//! chain only, so removing them together with nothing else is not detectable here; that is why
//! every checkpoint is also logged (an off-box copy) and written often.

use std::collections::BTreeMap;
use std::fmt;

use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};
use serde::{Deserialize, Serialize};

use super::entry::{decode, ChainEntry, Envelope, Hash, Tombstone, GENESIS_HASH, SCHEMA_VERSION};
use super::store::{key_seq, seq_key, Store, StoreError, Tree};

/// A signed statement "the record at `seq` hashes to `hash`".
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    pub schema: u16,
    pub seq: u64,
    pub hash: Hash,
    pub time_ns: u64,
    pub node: String,
    pub public_key: [u8; 32],
    /// ed25519 signature (64 bytes) over [`Checkpoint::message`].
    pub signature: Vec<u8>,
}

impl Checkpoint {
    fn message(schema: u16, seq: u64, hash: &Hash, time_ns: u64, node: &str) -> Vec<u8> {
        let mut m = Vec::with_capacity(96 + node.len());
        m.extend_from_slice(b"portcullis-audit-checkpoint\0");
        m.extend_from_slice(&schema.to_be_bytes());
        m.extend_from_slice(&seq.to_be_bytes());
        m.extend_from_slice(hash);
        m.extend_from_slice(&time_ns.to_be_bytes());
        m.extend_from_slice(node.as_bytes());
        m
    }

    pub fn sign(key: &SigningKey, seq: u64, hash: Hash, time_ns: u64, node: &str) -> Self {
        let signature = key.sign(&Self::message(SCHEMA_VERSION, seq, &hash, time_ns, node));
        Self {
            schema: SCHEMA_VERSION,
            seq,
            hash,
            time_ns,
            node: node.to_owned(),
            public_key: key.verifying_key().to_bytes(),
            signature: signature.to_bytes().to_vec(),
        }
    }

    /// Checks the signature with `key`, or with the key stored in the checkpoint when none is
    /// given (which only proves self-consistency).
    pub fn signature_valid(&self, key: Option<&VerifyingKey>) -> bool {
        let stored;
        let key = match key {
            Some(k) => k,
            None => match VerifyingKey::from_bytes(&self.public_key) {
                Ok(k) => {
                    stored = k;
                    &stored
                }
                Err(_) => return false,
            },
        };
        let Ok(signature) = Signature::from_slice(&self.signature) else {
            return false;
        };
        let message = Self::message(self.schema, self.seq, &self.hash, self.time_ns, &self.node);
        key.verify(&message, &signature).is_ok()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakReason {
    /// A record's content no longer matches its hash, or the chain was rewritten and no longer
    /// matches a signed checkpoint.
    Edited,
    /// Records are missing (a sequence gap, or the head without a retention tombstone).
    Deleted,
    /// A record sits under another sequence number, or does not follow its predecessor.
    Reordered,
    /// The log ends before a signed checkpoint.
    Truncated,
    /// A checkpoint's signature does not verify.
    BadCheckpoint,
}

impl BreakReason {
    pub fn as_str(self) -> &'static str {
        match self {
            BreakReason::Edited => "edited",
            BreakReason::Deleted => "deleted",
            BreakReason::Reordered => "reordered",
            BreakReason::Truncated => "truncated",
            BreakReason::BadCheckpoint => "bad checkpoint signature",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Break {
    pub seq: u64,
    pub reason: BreakReason,
    pub detail: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyTrust {
    /// Signatures checked against a key the operator supplied.
    Configured,
    /// No key supplied: signatures checked against the key stored in each checkpoint.
    StoredOnly,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifyReport {
    pub records: u64,
    pub tombstones: u64,
    pub checkpoints: u64,
    /// The newest record a valid checkpoint signs; records after it could be cut off unnoticed.
    pub last_checkpoint: Option<u64>,
    pub first_seq: Option<u64>,
    pub last_seq: Option<u64>,
    pub key: KeyTrust,
    pub broken: Option<Break>,
}

impl VerifyReport {
    pub fn is_ok(&self) -> bool {
        self.broken.is_none()
    }
}

impl fmt::Display for VerifyReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let range = match (self.first_seq, self.last_seq) {
            (Some(a), Some(b)) => format!("seq {a}..={b}"),
            _ => "empty".into(),
        };
        let trust = match self.key {
            KeyTrust::Configured => "signatures checked with the configured key",
            KeyTrust::StoredOnly => {
                "signatures checked with the key stored in each checkpoint only (pass --key or --config to check against yours)"
            }
        };
        let tail = match (self.last_seq, self.last_checkpoint) {
            (None, _) => String::new(),
            (Some(last), Some(signed)) if signed == last => "; the tail is signed".into(),
            (Some(last), Some(signed)) => format!(
                "; the {} records after seq {signed} are not yet signed (the gateway did not stop cleanly, or is running)",
                last - signed
            ),
            (Some(_), None) => "; no record is signed yet".into(),
        };
        match &self.broken {
            None => write!(
                f,
                "OK: {} records ({range}), {} retention tombstones, {} checkpoints{tail}; {trust}",
                self.records, self.tombstones, self.checkpoints
            ),
            Some(b) => write!(
                f,
                "BROKEN at seq {}: {}: {} ({} records verified before it; {trust})",
                b.seq,
                b.reason.as_str(),
                b.detail,
                self.records
            ),
        }
    }
}

fn hex8(hash: &Hash) -> String {
    hex::encode(&hash[..8])
}

/// Walks the chain from `from` (default: its head) and every checkpoint at or after it.
pub fn verify(
    store: &dyn Store,
    from: Option<u64>,
    key: Option<&VerifyingKey>,
) -> Result<VerifyReport, StoreError> {
    let start = from.unwrap_or(0);
    let mut report = VerifyReport {
        records: 0,
        tombstones: 0,
        checkpoints: 0,
        last_checkpoint: None,
        first_seq: None,
        last_seq: None,
        key: if key.is_some() {
            KeyTrust::Configured
        } else {
            KeyTrust::StoredOnly
        },
        broken: None,
    };

    let mut checkpoints: BTreeMap<u64, Result<Checkpoint, String>> = BTreeMap::new();
    for item in store.range_from(Tree::Checkpoints, &seq_key(start)) {
        let (k, v) = item?;
        let Some(seq) = key_seq(&k) else { continue };
        let parsed = decode::<Checkpoint>(&v)
            .map_err(|e| format!("undecodable checkpoint: {e}"))
            .and_then(|c| {
                if c.seq != seq {
                    Err(format!("checkpoint stored at {seq} names seq {}", c.seq))
                } else if !c.signature_valid(key) {
                    Err("signature does not verify".into())
                } else {
                    Ok(c)
                }
            });
        checkpoints.insert(seq, parsed);
    }

    let fail = |report: &mut VerifyReport, seq, reason, detail: String| {
        report.broken = Some(Break {
            seq,
            reason,
            detail,
        });
    };

    let mut expected: Option<u64> = from;
    let mut prev_hash: Option<Hash> = None;
    let mut head: Option<(u64, Hash)> = None;
    let mut latest_tombstone: Option<Tombstone> = None;
    for item in store.range_from(Tree::Audit, &seq_key(start)) {
        let (k, v) = item?;
        let Some(seq) = key_seq(&k).filter(|_| k.len() == 8) else {
            fail(
                &mut report,
                expected.unwrap_or(start),
                BreakReason::Edited,
                "a key that is not a sequence number".into(),
            );
            return Ok(report);
        };
        if let Some(exp) = expected {
            if seq != exp {
                let detail = if seq == exp + 1 {
                    format!("record {exp} is missing")
                } else {
                    format!("records {exp}..={} are missing", seq - 1)
                };
                fail(&mut report, exp, BreakReason::Deleted, detail);
                return Ok(report);
            }
        }
        let env: Envelope = match decode(&v) {
            Ok(env) => env,
            Err(e) => {
                fail(
                    &mut report,
                    seq,
                    BreakReason::Edited,
                    format!("record does not decode: {e}"),
                );
                return Ok(report);
            }
        };
        if env.seq != seq {
            fail(
                &mut report,
                seq,
                BreakReason::Reordered,
                format!("the record stored at {seq} is record {}", env.seq),
            );
            return Ok(report);
        }
        if !env.hash_matches() {
            fail(
                &mut report,
                seq,
                BreakReason::Edited,
                format!(
                    "content does not match its hash {}… (changed after it was written)",
                    hex8(&env.hash)
                ),
            );
            return Ok(report);
        }
        match prev_hash {
            Some(p) if p != env.prev_hash => {
                fail(
                    &mut report,
                    seq,
                    BreakReason::Reordered,
                    format!(
                        "prev_hash {}… is not the hash {}… of record {}",
                        hex8(&env.prev_hash),
                        hex8(&p),
                        seq.wrapping_sub(1)
                    ),
                );
                return Ok(report);
            }
            Some(_) => {}
            None => head = Some((seq, env.prev_hash)),
        }
        // Records of another schema are checked by hash only: this build cannot read them.
        if env.schema == SCHEMA_VERSION {
            match env.decode_entry() {
                Ok(ChainEntry::Tombstone(t)) => {
                    report.tombstones += 1;
                    latest_tombstone = Some(t);
                }
                Ok(ChainEntry::Audit(_)) => {}
                Err(e) => {
                    fail(
                        &mut report,
                        seq,
                        BreakReason::Edited,
                        format!("entry does not decode: {e}"),
                    );
                    return Ok(report);
                }
            }
        }
        if let Some(cp) = checkpoints.remove(&seq) {
            match cp {
                Err(detail) => {
                    fail(&mut report, seq, BreakReason::BadCheckpoint, detail);
                    return Ok(report);
                }
                Ok(cp) if cp.hash != env.hash => {
                    fail(
                        &mut report,
                        seq,
                        BreakReason::Edited,
                        format!(
                            "hash {}… differs from the signed checkpoint's {}… (the chain was rewritten)",
                            hex8(&env.hash),
                            hex8(&cp.hash)
                        ),
                    );
                    return Ok(report);
                }
                Ok(_) => {
                    report.checkpoints += 1;
                    report.last_checkpoint = Some(seq);
                }
            }
        }
        report.records += 1;
        report.first_seq.get_or_insert(seq);
        report.last_seq = Some(seq);
        expected = Some(seq + 1);
        prev_hash = Some(env.hash);
    }

    if from.is_none() {
        if let Some((first, first_prev)) = head {
            if let Some(b) = check_head(store, first, first_prev, latest_tombstone.as_ref())? {
                report.broken = Some(b);
                return Ok(report);
            }
        }
    }

    // Checkpoints left are beyond the tail (or before the head, which retention removes).
    let tail = report.last_seq;
    for (seq, cp) in checkpoints {
        if report.first_seq.is_some_and(|f| seq < f) {
            continue;
        }
        let next = tail.map_or(start, |t| t + 1);
        match cp {
            Err(detail) => fail(&mut report, seq, BreakReason::BadCheckpoint, detail),
            Ok(_) => fail(
                &mut report,
                next,
                BreakReason::Truncated,
                format!("a signed checkpoint covers record {seq} but the log ends before it"),
            ),
        }
        return Ok(report);
    }
    Ok(report)
}

/// The first record is the genesis record, or retention deleted what preceded it and said so.
fn check_head(
    store: &dyn Store,
    first: u64,
    first_prev: Hash,
    tombstone: Option<&Tombstone>,
) -> Result<Option<Break>, StoreError> {
    if first == 0 {
        if first_prev == GENESIS_HASH {
            return Ok(None);
        }
        return Ok(Some(Break {
            seq: 0,
            reason: BreakReason::Edited,
            detail: "the first record does not start from the genesis hash".into(),
        }));
    }
    let missing = || Break {
        seq: 0,
        reason: BreakReason::Deleted,
        detail: format!("records 0..{first} are missing and no retention tombstone covers them"),
    };
    let Some(t) = tombstone else {
        return Ok(Some(missing()));
    };
    if t.first_kept_seq == first {
        return Ok((t.last_deleted_hash != first_prev).then(missing));
    }
    if t.first_kept_seq > first {
        // Retention wrote the tombstone but stopped before deleting everything it covers: the
        // record just before the cut must be the one the tombstone names.
        let Some(before) = store.get(Tree::Audit, &seq_key(t.first_kept_seq - 1))? else {
            return Ok(Some(missing()));
        };
        let ok = decode::<Envelope>(&before).is_ok_and(|e| e.hash == t.last_deleted_hash);
        return Ok((!ok).then(missing));
    }
    Ok(Some(missing()))
}
