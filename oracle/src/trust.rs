//! Trust in scouts: reputation from golden tickets, bans that grow on repeat,
//! credits for accepted drafts, and per-peer / per-IP rate limits.
//!
//! None of this guards correctness — verification does that, whatever scouts
//! send. It guards the oracle's capacity and the credit ledger. Reputation,
//! credits and bans live in a redb database in the data dir, one transaction
//! per change (durable at commit), so they survive restarts and a crash loses
//! nothing already committed. The policy is pure ([`ScoutRecord`] methods
//! with the time passed in) and tested without a network.

use std::collections::HashMap;
use std::hash::Hash;
use std::path::Path;
use std::time::Duration;

use libp2p::PeerId;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};
use thiserror::Error;

const SCOUTS: TableDefinition<'_, &[u8], &[u8]> = TableDefinition::new("scouts");

/// A trust store that cannot be used.
#[derive(Debug, Error)]
pub enum TrustError {
    /// The database failed.
    #[error("trust database: {0}")]
    Db(#[from] redb::Error),
    /// A stored record does not decode.
    #[error("trust database: corrupt record for {peer}: {detail}")]
    Corrupt {
        /// Whose.
        peer: String,
        /// What is wrong.
        detail: String,
    },
}

fn db_err(e: impl Into<redb::Error>) -> TrustError {
    TrustError::Db(e.into())
}

/// How reputation moves and when a scout is banned.
#[derive(Debug, Clone, PartialEq)]
pub struct TrustPolicy {
    /// A new scout's reputation (0 to 1).
    pub initial: f64,
    /// Weight of one golden ticket (or bad signature) in the moving average.
    pub weight: f64,
    /// Below this, a scout is banned.
    pub threshold: f64,
    /// First ban; each further ban doubles it.
    pub ban_base: Duration,
    /// Longest ban.
    pub ban_max: Duration,
}

impl Default for TrustPolicy {
    fn default() -> Self {
        TrustPolicy {
            initial: 0.5,
            weight: 0.3,
            threshold: 0.2,
            ban_base: Duration::from_secs(600),
            ban_max: Duration::from_secs(7 * 24 * 3600),
        }
    }
}

/// What the oracle knows of one scout.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScoutRecord {
    /// 0 (never right) to 1 (always right), a moving average of checks.
    pub reputation: f64,
    /// Golden tickets passed.
    pub golden_passed: u64,
    /// Golden tickets failed.
    pub golden_failed: u64,
    /// Drafts refused for a bad signature or mismatched fields.
    pub bad_results: u64,
    /// Drafted tokens the target accepted: the scout's credit.
    pub credits: u64,
    /// Bans so far.
    pub bans: u32,
    /// Banned until this time (unix ms); 0 when never banned.
    pub banned_until_ms: u64,
}

impl ScoutRecord {
    /// A scout seen for the first time.
    pub fn new(policy: &TrustPolicy) -> Self {
        ScoutRecord {
            reputation: policy.initial,
            golden_passed: 0,
            golden_failed: 0,
            bad_results: 0,
            credits: 0,
            bans: 0,
            banned_until_ms: 0,
        }
    }

    /// Whether the scout is banned at `now_ms`.
    pub fn is_banned(&self, now_ms: u64) -> bool {
        now_ms < self.banned_until_ms
    }

    /// A check passed or failed (a golden ticket, or a bad signature as a
    /// failure). Returns the end of a ban it earned.
    pub fn checked(&mut self, passed: bool, policy: &TrustPolicy, now_ms: u64) -> Option<u64> {
        if passed {
            self.golden_passed += 1;
        } else {
            self.golden_failed += 1;
        }
        self.judged(passed, policy, now_ms)
    }

    /// A model piece from this peer failed its hash: like a failed check,
    /// counted as a bad result. Returns the end of a ban it earned.
    pub fn bad_piece(&mut self, policy: &TrustPolicy, now_ms: u64) -> Option<u64> {
        self.bad_results += 1;
        self.judged(false, policy, now_ms)
    }

    /// Moves the reputation by one check; bans below the threshold.
    fn judged(&mut self, passed: bool, policy: &TrustPolicy, now_ms: u64) -> Option<u64> {
        let x = if passed { 1.0 } else { 0.0 };
        self.reputation = (1.0 - policy.weight) * self.reputation + policy.weight * x;
        if self.reputation >= policy.threshold {
            return None;
        }
        self.bans += 1;
        let factor = 1u32.checked_shl(self.bans - 1).unwrap_or(u32::MAX);
        let ban = policy.ban_base.saturating_mul(factor).min(policy.ban_max);
        self.banned_until_ms = now_ms.saturating_add(ban.as_millis() as u64);
        // Back on probation after the ban: one more failure bans again, longer.
        self.reputation = policy.threshold;
        Some(self.banned_until_ms)
    }
}

/// The persistent store of scout records.
pub struct Ledger {
    db: Database,
    policy: TrustPolicy,
}

impl Ledger {
    /// Opens (or creates) the store at `path`.
    pub fn open(path: &Path, policy: TrustPolicy) -> Result<Self, TrustError> {
        let db = Database::create(path).map_err(db_err)?;
        Ok(Ledger { db, policy })
    }

    /// The policy.
    pub fn policy(&self) -> &TrustPolicy {
        &self.policy
    }

    /// The record of `peer` (a fresh one if unknown).
    pub fn get(&self, peer: &PeerId) -> Result<ScoutRecord, TrustError> {
        let txn = self.db.begin_read().map_err(db_err)?;
        let table = match txn.open_table(SCOUTS) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => {
                return Ok(ScoutRecord::new(&self.policy));
            }
            Err(e) => return Err(db_err(e)),
        };
        let stored = table.get(peer.to_bytes().as_slice()).map_err(db_err)?;
        self.decode(peer, stored.as_ref().map(|v| v.value()))
    }

    /// Changes the record of `peer` in one transaction and returns it. The
    /// read is part of the write transaction, so changes from the network
    /// and the HTTP side never overwrite each other.
    pub fn update(
        &self,
        peer: &PeerId,
        change: impl FnOnce(&mut ScoutRecord, &TrustPolicy),
    ) -> Result<ScoutRecord, TrustError> {
        let key = peer.to_bytes();
        let txn = self.db.begin_write().map_err(db_err)?;
        let record = {
            let mut table = txn.open_table(SCOUTS).map_err(db_err)?;
            let mut record = {
                let stored = table.get(key.as_slice()).map_err(db_err)?;
                self.decode(peer, stored.as_ref().map(|v| v.value()))?
            };
            change(&mut record, &self.policy);
            let bytes = serde_json::to_vec(&record).map_err(|e| TrustError::Corrupt {
                peer: peer.to_string(),
                detail: e.to_string(),
            })?;
            table
                .insert(key.as_slice(), bytes.as_slice())
                .map_err(db_err)?;
            record
        };
        txn.commit().map_err(db_err)?;
        Ok(record)
    }

    fn decode(&self, peer: &PeerId, stored: Option<&[u8]>) -> Result<ScoutRecord, TrustError> {
        match stored {
            None => Ok(ScoutRecord::new(&self.policy)),
            Some(bytes) => serde_json::from_slice(bytes).map_err(|e| TrustError::Corrupt {
                peer: peer.to_string(),
                detail: e.to_string(),
            }),
        }
    }
}

/// Token buckets per key (peer id, IP): `rate` per minute, bursts of `burst`.
/// Memory is bounded: full buckets are forgotten first.
#[derive(Debug)]
pub struct RateLimiter<K> {
    per_minute: f64,
    burst: f64,
    buckets: HashMap<K, (f64, u64)>,
    max_keys: usize,
}

impl<K: Hash + Eq + Clone> RateLimiter<K> {
    /// `per_minute` requests a minute with bursts of `burst`.
    pub fn new(per_minute: u32, burst: u32, max_keys: usize) -> Self {
        RateLimiter {
            per_minute: f64::from(per_minute),
            burst: f64::from(burst.max(1)),
            buckets: HashMap::new(),
            max_keys: max_keys.max(1),
        }
    }

    /// Takes one token for `key` at `now_ms`; `false` when it has none.
    pub fn allow(&mut self, key: &K, now_ms: u64) -> bool {
        if !self.buckets.contains_key(key) && self.buckets.len() >= self.max_keys {
            let (per_minute, burst) = (self.per_minute, self.burst);
            self.buckets.retain(|_, (tokens, at)| {
                let refilled = *tokens + now_ms.saturating_sub(*at) as f64 * per_minute / 60_000.0;
                refilled < burst
            });
            if self.buckets.len() >= self.max_keys {
                return false;
            }
        }
        let (tokens, at) = self
            .buckets
            .entry(key.clone())
            .or_insert((self.burst, now_ms));
        *tokens = (*tokens + now_ms.saturating_sub(*at) as f64 * self.per_minute / 60_000.0)
            .min(self.burst);
        *at = now_ms;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failing_checks_ban_within_five_and_bans_grow() {
        let p = TrustPolicy::default();
        let mut r = ScoutRecord::new(&p);
        let mut failures = 0;
        let first = loop {
            failures += 1;
            if let Some(until) = r.checked(false, &p, 1_000) {
                break until;
            }
        };
        assert!(failures <= 5, "{failures}");
        assert_eq!(first, 1_000 + 600_000);
        assert!(r.is_banned(2_000) && !r.is_banned(first));
        // On probation: the next failure bans again, for twice as long.
        let second = r.checked(false, &p, first).unwrap();
        assert_eq!(second - first, 1_200_000);
        // An honest scout is never banned.
        let mut good = ScoutRecord::new(&p);
        for _ in 0..100 {
            assert_eq!(good.checked(true, &p, 0), None);
        }
        assert!(good.reputation > 0.99);
    }

    #[test]
    fn records_survive_reopening_the_database() {
        let dir = std::env::temp_dir().join(format!("shard-trust-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("trust.redb");
        let peer = PeerId::random();
        {
            let ledger = Ledger::open(&path, TrustPolicy::default()).unwrap();
            assert_eq!(ledger.get(&peer).unwrap().credits, 0);
            ledger.update(&peer, |r, _| r.credits += 7).unwrap();
            ledger
                .update(&peer, |r, p| {
                    r.checked(false, p, 5);
                })
                .unwrap();
        }
        let ledger = Ledger::open(&path, TrustPolicy::default()).unwrap();
        let r = ledger.get(&peer).unwrap();
        assert_eq!((r.credits, r.golden_failed), (7, 1));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn rate_limits_throttle_one_key_and_refill() {
        let mut rl = RateLimiter::new(60, 5, 2);
        let (a, b) = ("a", "b");
        assert_eq!((0..10).filter(|_| rl.allow(&a, 0)).count(), 5);
        assert!(rl.allow(&b, 0), "another key keeps its service");
        assert!(!rl.allow(&a, 500));
        assert!(rl.allow(&a, 1_000), "one token a second refills");
        // Bounded: a third key takes the place of a full (idle) bucket...
        assert!(rl.allow(&"c", 1_000));
        assert_eq!(rl.buckets.len(), 2);
        // ...and a new key waits while every bucket is in use.
        assert!(!rl.allow(&"d", 1_000));
    }
}
