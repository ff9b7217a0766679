//! Freshness (TTL) checks and a deduplication window against replayed messages.
//!
//! Nothing here reads a clock: callers pass `now_ms` (unix milliseconds), so the
//! logic is deterministic and tested with a simulated clock.

use std::collections::{BTreeSet, HashMap};
use std::hash::Hash;

use thiserror::Error;

/// A message that is not fresh.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum FreshnessError {
    /// Issued further in the future than the allowed clock skew.
    #[error("issued {ahead_ms} ms in the future (allowed skew {max_skew_ms} ms)")]
    FromTheFuture {
        /// How far ahead of our clock.
        ahead_ms: u64,
        /// The skew we tolerate.
        max_skew_ms: u64,
    },
    /// Its TTL has run out.
    #[error("expired {ago_ms} ms ago")]
    Expired {
        /// How long ago.
        ago_ms: u64,
    },
}

/// Checks that a message issued at `issued_at_ms` with a TTL of `ttl_s` seconds is
/// valid at `now_ms`, tolerating `max_skew_ms` of clock difference between peers.
/// Returns when it expires.
pub fn check_fresh(
    issued_at_ms: u64,
    ttl_s: u32,
    now_ms: u64,
    max_skew_ms: u64,
) -> Result<u64, FreshnessError> {
    if issued_at_ms > now_ms.saturating_add(max_skew_ms) {
        return Err(FreshnessError::FromTheFuture {
            ahead_ms: issued_at_ms - now_ms,
            max_skew_ms,
        });
    }
    let expires_at_ms = issued_at_ms.saturating_add(u64::from(ttl_s) * 1000);
    if now_ms > expires_at_ms {
        return Err(FreshnessError::Expired {
            ago_ms: now_ms - expires_at_ms,
        });
    }
    Ok(expires_at_ms)
}

/// A message the window refuses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum ReplayError {
    /// The id was seen before and has not expired.
    #[error("duplicate message")]
    Duplicate,
    /// The window had to forget ids that expire later than this message; it can
    /// no longer tell whether this one is new, so it refuses it.
    #[error("message is older than the deduplication window")]
    BeyondWindow,
    /// The message had already expired.
    #[error("message expired")]
    Expired,
}

/// Remembers ids until they expire, in bounded memory.
///
/// When full, it forgets the id that expires first and raises its floor to that
/// expiry: from then on a message expiring at or before the floor is refused as
/// [`ReplayError::BeyondWindow`]. So a replay is never accepted, at the price of
/// refusing some old-but-new messages under a flood, like an IPsec replay window.
#[derive(Debug)]
pub struct ReplayWindow<K> {
    expiry_of: HashMap<K, u64>,
    by_expiry: BTreeSet<(u64, K)>,
    capacity: usize,
    floor_ms: u64,
}

impl<K: Hash + Eq + Ord + Clone> ReplayWindow<K> {
    /// A window that remembers at most `capacity` ids (at least one).
    pub fn new(capacity: usize) -> Self {
        ReplayWindow {
            expiry_of: HashMap::new(),
            by_expiry: BTreeSet::new(),
            capacity: capacity.max(1),
            floor_ms: 0,
        }
    }

    /// Records `id`, valid until `expires_at_ms`, or says why it must be dropped.
    pub fn check_and_insert(
        &mut self,
        id: K,
        expires_at_ms: u64,
        now_ms: u64,
    ) -> Result<(), ReplayError> {
        self.prune(now_ms);
        if expires_at_ms < now_ms {
            return Err(ReplayError::Expired);
        }
        if self.expiry_of.contains_key(&id) {
            return Err(ReplayError::Duplicate);
        }
        if expires_at_ms <= self.floor_ms {
            return Err(ReplayError::BeyondWindow);
        }
        if self.expiry_of.len() >= self.capacity {
            // Full: make room by forgetting the id that expires first, unless the
            // new one would expire even sooner (then it is the one we cannot keep).
            match self.by_expiry.first() {
                Some((first, _)) if expires_at_ms <= *first => {
                    return Err(ReplayError::BeyondWindow);
                }
                _ => {}
            }
            if let Some((expiry, oldest)) = self.by_expiry.pop_first() {
                self.expiry_of.remove(&oldest);
                self.floor_ms = self.floor_ms.max(expiry);
            }
        }
        self.expiry_of.insert(id.clone(), expires_at_ms);
        self.by_expiry.insert((expires_at_ms, id));
        Ok(())
    }

    /// Number of ids remembered.
    pub fn len(&self) -> usize {
        self.expiry_of.len()
    }

    /// Whether no id is remembered.
    pub fn is_empty(&self) -> bool {
        self.expiry_of.is_empty()
    }

    fn prune(&mut self, now_ms: u64) {
        while let Some((expiry, _)) = self.by_expiry.first() {
            if *expiry >= now_ms {
                break;
            }
            if let Some((_, id)) = self.by_expiry.pop_first() {
                self.expiry_of.remove(&id);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SKEW: u64 = 5_000;

    #[test]
    fn freshness_follows_the_ttl_and_tolerates_skew() {
        let t = 1_000_000;
        assert_eq!(check_fresh(t, 10, t, SKEW), Ok(t + 10_000));
        assert_eq!(check_fresh(t, 10, t + 10_000, SKEW), Ok(t + 10_000));
        assert_eq!(
            check_fresh(t, 10, t + 10_001, SKEW),
            Err(FreshnessError::Expired { ago_ms: 1 })
        );
        assert!(check_fresh(t + SKEW, 10, t, SKEW).is_ok());
        assert!(matches!(
            check_fresh(t + SKEW + 1, 10, t, SKEW),
            Err(FreshnessError::FromTheFuture {
                ahead_ms: 5_001,
                ..
            })
        ));
        // No overflow at the edges of the clock.
        assert!(check_fresh(u64::MAX, u32::MAX, u64::MAX, SKEW).is_ok());
    }

    #[test]
    fn duplicates_are_refused_until_they_expire() {
        let mut w = ReplayWindow::new(16);
        assert_eq!(w.check_and_insert("a", 100, 0), Ok(()));
        assert_eq!(
            w.check_and_insert("a", 100, 50),
            Err(ReplayError::Duplicate)
        );
        assert_eq!(w.check_and_insert("b", 100, 50), Ok(()));
        // After expiry, the entry is gone and a late copy is expired anyway.
        assert_eq!(w.check_and_insert("a", 100, 101), Err(ReplayError::Expired));
        assert!(w.is_empty());
    }

    #[test]
    fn a_full_window_never_accepts_a_replay() {
        let mut w = ReplayWindow::new(2);
        w.check_and_insert(1, 100, 0).unwrap();
        w.check_and_insert(2, 200, 0).unwrap();
        // Forces out id 1 (expiry 100); the floor rises to 100.
        w.check_and_insert(3, 300, 0).unwrap();
        assert_eq!(w.len(), 2);
        // Id 1 replayed: it cannot be told apart from a new message, so refused.
        assert_eq!(
            w.check_and_insert(1, 100, 10),
            Err(ReplayError::BeyondWindow)
        );
        // Later-expiring new ids are still welcome.
        assert_eq!(w.check_and_insert(4, 400, 10), Ok(()));
        assert_eq!(w.check_and_insert(3, 300, 10), Err(ReplayError::Duplicate));
    }
}
