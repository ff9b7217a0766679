//! Which piece to ask which peer for next.
//!
//! The [`Picker`] is the downloader's brain without its hands: the caller tells
//! it which peers can serve which pieces, asks it for requests to send, and
//! reports what came back (a verified piece, a bad piece, nothing in time). It
//! never touches a socket or a clock — times are passed in — so every rule is
//! tested here without a network:
//!
//! - pieces go out **rarest first** (held by the fewest peers; ties to the
//!   lowest index), so pieces only one peer has are fetched while it is there;
//! - each peer has at most [`PickerConfig::max_in_flight`] requests at a time,
//!   and the least busy peer gets the next one, so several peers serve at once;
//! - a request has a **deadline**; one that passes, or fails, frees its piece,
//!   and the piece is asked of another peer first;
//! - a peer that sends a piece that fails its hash gets a **strike**; after
//!   [`PickerConfig::max_strikes`] it is dropped and its pieces go elsewhere.

use std::collections::{BTreeMap, BTreeSet, HashMap};

/// What a peer can serve.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Availability {
    /// The whole model.
    All,
    /// These pieces.
    Pieces(BTreeSet<u32>),
}

impl Availability {
    fn has(&self, piece: u32) -> bool {
        match self {
            Availability::All => true,
            Availability::Pieces(set) => set.contains(&piece),
        }
    }
}

/// The picker's limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PickerConfig {
    /// Requests one peer may have outstanding.
    pub max_in_flight: usize,
    /// How long a request may take, milliseconds.
    pub timeout_ms: u64,
    /// Bad pieces after which a peer is dropped.
    pub max_strikes: u32,
}

impl Default for PickerConfig {
    fn default() -> Self {
        PickerConfig {
            max_in_flight: 4,
            timeout_ms: 120_000,
            max_strikes: 2,
        }
    }
}

/// What became of a piece a peer sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PieceOutcome {
    /// Verified and kept: write it.
    Accepted,
    /// Not asked of this peer (late, after a timeout, or never): ignore it.
    Unexpected,
    /// Failed its hash: the peer got a strike, the piece goes elsewhere.
    Rejected {
        /// When the peer reached [`PickerConfig::max_strikes`]: it is dropped
        /// for good, and these, its other outstanding requests, are freed
        /// (for the caller to cancel).
        dropped: Option<Vec<u32>>,
    },
}

#[derive(Debug)]
struct Provider {
    has: Availability,
    in_flight: usize,
    strikes: u32,
}

#[derive(Debug, Clone, Copy)]
struct InFlight<P> {
    peer: P,
    deadline_ms: u64,
}

/// The download plan of one model: what is had, what is asked of whom.
#[derive(Debug)]
pub struct Picker<P> {
    config: PickerConfig,
    /// Pieces still wanted, not yet verified.
    missing: BTreeSet<u32>,
    pieces: u32,
    providers: BTreeMap<P, Provider>,
    in_flight: HashMap<u32, InFlight<P>>,
    /// Peers a piece failed from (timeouts, errors, bad data): asked last.
    failed_from: HashMap<u32, BTreeSet<P>>,
    /// Pieces accepted, and from whom (for tests and reports).
    sources: HashMap<u32, P>,
    /// Peers dropped for bad pieces: never providers again in this download.
    struck_off: BTreeSet<P>,
}

impl<P: Copy + Ord + std::hash::Hash> Picker<P> {
    /// A plan for the `wanted` pieces of a model with `pieces` pieces (all when
    /// `None`), of which those in `have` are verified already (a resumed
    /// download).
    pub fn new(
        pieces: u32,
        wanted: Option<&BTreeSet<u32>>,
        have: &BTreeSet<u32>,
        config: PickerConfig,
    ) -> Self {
        let missing = (0..pieces)
            .filter(|p| wanted.is_none_or(|w| w.contains(p)) && !have.contains(p))
            .collect();
        Picker {
            config,
            missing,
            pieces,
            providers: BTreeMap::new(),
            in_flight: HashMap::new(),
            failed_from: HashMap::new(),
            sources: HashMap::new(),
            struck_off: BTreeSet::new(),
        }
    }

    /// A peer that serves `has` (again: its availability is replaced). A peer
    /// dropped for bad pieces is not taken back (`false`).
    pub fn add_provider(&mut self, peer: P, has: Availability) -> bool {
        if self.struck_off.contains(&peer) {
            return false;
        }
        let has = match has {
            Availability::Pieces(set) => {
                Availability::Pieces(set.into_iter().filter(|p| *p < self.pieces).collect())
            }
            all => all,
        };
        let entry = self.providers.entry(peer).or_insert(Provider {
            has: Availability::All,
            in_flight: 0,
            strikes: 0,
        });
        entry.has = has;
        true
    }

    /// A peer gone: its outstanding pieces are free again, and returned.
    pub fn remove_provider(&mut self, peer: &P) -> Vec<u32> {
        self.providers.remove(peer);
        let freed: Vec<u32> = self
            .in_flight
            .iter()
            .filter(|(_, f)| f.peer == *peer)
            .map(|(piece, _)| *piece)
            .collect();
        for piece in &freed {
            self.in_flight.remove(piece);
        }
        freed
    }

    /// The peers that can still serve.
    pub fn providers(&self) -> impl Iterator<Item = &P> {
        self.providers.keys()
    }

    /// The next request to send at `now_ms`, if a free peer has a missing
    /// piece nobody is fetching: `(peer, piece)`. Call until `None`.
    pub fn next_request(&mut self, now_ms: u64) -> Option<(P, u32)> {
        let free: Vec<P> = self
            .providers
            .iter()
            .filter(|(_, p)| p.in_flight < self.config.max_in_flight)
            .map(|(peer, _)| *peer)
            .collect();
        if free.is_empty() {
            return None;
        }
        // Rarest first: among pieces some free peer has, the one the fewest
        // peers have; ties to the lowest index.
        let mut best: Option<(usize, u32)> = None;
        for &piece in &self.missing {
            if self.in_flight.contains_key(&piece) {
                continue;
            }
            if !free.iter().any(|p| self.providers[p].has.has(piece)) {
                continue;
            }
            let holders = self.providers.values().filter(|p| p.has.has(piece)).count();
            if best.is_none_or(|(n, _)| holders < n) {
                best = Some((holders, piece));
            }
        }
        let (_, piece) = best?;
        // The least busy free peer that has it, one it has not failed from
        // before if there is one, then the fewest strikes.
        let failed = self.failed_from.get(&piece);
        let peer = *free
            .iter()
            .filter(|p| self.providers[*p].has.has(piece))
            .min_by_key(|p| {
                let provider = &self.providers[*p];
                (
                    failed.is_some_and(|f| f.contains(*p)),
                    provider.in_flight,
                    provider.strikes,
                )
            })?;
        self.providers.get_mut(&peer)?.in_flight += 1;
        self.in_flight.insert(
            piece,
            InFlight {
                peer,
                deadline_ms: now_ms.saturating_add(self.config.timeout_ms),
            },
        );
        Some((peer, piece))
    }

    /// `peer` answered for `piece`; `verified` says whether the bytes passed
    /// the manifest's check.
    pub fn on_piece(&mut self, peer: P, piece: u32, verified: bool) -> PieceOutcome {
        if self.in_flight.get(&piece).is_none_or(|f| f.peer != peer) {
            return PieceOutcome::Unexpected;
        }
        self.finish(piece, peer);
        if verified {
            self.missing.remove(&piece);
            self.sources.insert(piece, peer);
            return PieceOutcome::Accepted;
        }
        self.failed_from.entry(piece).or_default().insert(peer);
        let strikes = self.providers.get_mut(&peer).map(|p| {
            p.strikes += 1;
            p.strikes
        });
        let dropped = strikes
            .is_some_and(|s| s >= self.config.max_strikes)
            .then(|| {
                self.struck_off.insert(peer);
                self.remove_provider(&peer)
            });
        PieceOutcome::Rejected { dropped }
    }

    /// `peer` did not deliver `piece` (refused, connection gone, error): the
    /// piece is free again and goes to another peer first.
    pub fn on_failure(&mut self, peer: P, piece: u32) {
        if self.in_flight.get(&piece).is_some_and(|f| f.peer == peer) {
            self.finish(piece, peer);
            self.failed_from.entry(piece).or_default().insert(peer);
        }
    }

    /// Requests past their deadline at `now_ms`, each treated as a failure:
    /// `(peer, piece)`, for the caller to cancel.
    pub fn expire(&mut self, now_ms: u64) -> Vec<(P, u32)> {
        let mut late: Vec<(P, u32)> = self
            .in_flight
            .iter()
            .filter(|(_, f)| f.deadline_ms <= now_ms)
            .map(|(piece, f)| (f.peer, *piece))
            .collect();
        late.sort_unstable_by_key(|(_, piece)| *piece);
        for (peer, piece) in &late {
            self.on_failure(*peer, *piece);
        }
        late
    }

    /// `pieces`, accepted earlier, turned out bad after all (a later check of
    /// the whole file): wanted again. Strikes and who failed what are kept.
    pub fn requeue(&mut self, pieces: &[u32]) {
        for &piece in pieces.iter().filter(|p| **p < self.pieces) {
            self.sources.remove(&piece);
            self.missing.insert(piece);
        }
    }

    /// The earliest deadline of an outstanding request, to wake up for.
    pub fn next_deadline(&self) -> Option<u64> {
        self.in_flight.values().map(|f| f.deadline_ms).min()
    }

    /// Every wanted piece is verified.
    pub fn is_complete(&self) -> bool {
        self.missing.is_empty()
    }

    /// Wanted pieces not verified yet.
    pub fn missing(&self) -> &BTreeSet<u32> {
        &self.missing
    }

    /// Missing pieces no remaining peer has: the download cannot finish
    /// unless another peer turns up.
    pub fn unavailable(&self) -> Vec<u32> {
        self.missing
            .iter()
            .copied()
            .filter(|piece| !self.providers.values().any(|p| p.has.has(*piece)))
            .collect()
    }

    /// Requests outstanding.
    pub fn in_flight(&self) -> usize {
        self.in_flight.len()
    }

    /// The peer each accepted piece came from.
    pub fn source_of(&self, piece: u32) -> Option<&P> {
        self.sources.get(&piece)
    }

    fn finish(&mut self, piece: u32, peer: P) {
        self.in_flight.remove(&piece);
        if let Some(p) = self.providers.get_mut(&peer) {
            p.in_flight = p.in_flight.saturating_sub(1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all() -> Availability {
        Availability::All
    }

    fn some(pieces: &[u32]) -> Availability {
        Availability::Pieces(pieces.iter().copied().collect())
    }

    fn picker(pieces: u32, max_in_flight: usize) -> Picker<&'static str> {
        Picker::new(
            pieces,
            None,
            &BTreeSet::new(),
            PickerConfig {
                max_in_flight,
                timeout_ms: 1000,
                max_strikes: 2,
            },
        )
    }

    /// Drains every request the picker will make now.
    fn requests(p: &mut Picker<&'static str>, now: u64) -> Vec<(&'static str, u32)> {
        std::iter::from_fn(|| p.next_request(now)).collect()
    }

    #[test]
    fn rarest_pieces_go_first_and_the_work_is_spread() {
        let mut p = picker(6, 2);
        p.add_provider("a", all());
        p.add_provider("b", all());
        p.add_provider("c", some(&[4, 5]));
        let sent = requests(&mut p, 0);
        // Pieces 0–3 are held by two peers, 4–5 by three: 0–3 first, two per peer.
        assert_eq!(sent.len(), 6);
        let first: BTreeSet<u32> = sent[..4].iter().map(|(_, piece)| *piece).collect();
        assert_eq!(first, BTreeSet::from([0, 1, 2, 3]));
        for peer in ["a", "b", "c"] {
            assert_eq!(
                sent.iter().filter(|(q, _)| *q == peer).count(),
                2,
                "{sent:?}"
            );
        }
        assert!(sent.iter().all(|(peer, piece)| *peer != "c" || *piece >= 4));
    }

    #[test]
    fn a_piece_only_one_peer_has_is_asked_of_that_peer_first() {
        let mut p = picker(4, 1);
        p.add_provider("a", all());
        p.add_provider("b", some(&[0, 1, 2]));
        // Piece 3 only "a" has: it goes first, to "a".
        assert_eq!(p.next_request(0), Some(("a", 3)));
        assert_eq!(p.next_request(0), Some(("b", 0)));
        assert_eq!(p.next_request(0), None);
    }

    #[test]
    fn verified_pieces_complete_the_download() {
        let mut p = picker(3, 4);
        p.add_provider("a", all());
        for (peer, piece) in requests(&mut p, 0) {
            assert_eq!(p.on_piece(peer, piece, true), PieceOutcome::Accepted);
        }
        assert!(p.is_complete());
        assert_eq!(p.source_of(2), Some(&"a"));
        assert_eq!(p.next_request(0), None);
    }

    #[test]
    fn a_bad_piece_strikes_its_sender_and_is_fetched_from_another_peer() {
        let mut p = picker(2, 1);
        p.add_provider("liar", all());
        p.add_provider("honest", all());
        let sent = requests(&mut p, 0);
        let (liar_piece, honest_piece) = {
            let l = sent.iter().find(|(q, _)| *q == "liar").unwrap().1;
            let h = sent.iter().find(|(q, _)| *q == "honest").unwrap().1;
            (l, h)
        };
        assert_eq!(
            p.on_piece("liar", liar_piece, false),
            PieceOutcome::Rejected { dropped: None }
        );
        assert_eq!(
            p.on_piece("honest", honest_piece, true),
            PieceOutcome::Accepted
        );
        // The retry goes to the peer it did not fail from, although the liar is free.
        assert_eq!(p.next_request(0), Some(("honest", liar_piece)));
        assert_eq!(
            p.on_piece("honest", liar_piece, true),
            PieceOutcome::Accepted
        );
        assert!(p.is_complete());
    }

    #[test]
    fn a_peer_with_too_many_bad_pieces_is_dropped_and_its_work_goes_elsewhere() {
        let mut p = picker(4, 3);
        p.add_provider("liar", all());
        let sent = requests(&mut p, 0);
        assert_eq!(sent.len(), 3);
        assert_eq!(
            p.on_piece("liar", sent[0].1, false),
            PieceOutcome::Rejected { dropped: None }
        );
        // The second strike drops it; its third request is freed, to cancel.
        assert_eq!(
            p.on_piece("liar", sent[1].1, false),
            PieceOutcome::Rejected {
                dropped: Some(vec![sent[2].1])
            }
        );
        assert_eq!(p.providers().count(), 0);
        assert_eq!(p.in_flight(), 0);
        // It does not come back by announcing itself again.
        assert!(!p.add_provider("liar", all()));
        assert_eq!(p.providers().count(), 0);
        assert_eq!(p.next_request(0), None);
        assert_eq!(p.unavailable().len(), 4);
        p.add_provider("honest", all());
        let sent = requests(&mut p, 0);
        assert!(sent.iter().all(|(peer, _)| *peer == "honest"));
    }

    #[test]
    fn a_late_request_expires_and_its_piece_is_retried_elsewhere() {
        let mut p = picker(1, 1);
        p.add_provider("slow", all());
        p.add_provider("quick", all());
        let (first, piece) = p.next_request(0).unwrap();
        assert_eq!(p.next_deadline(), Some(1000));
        assert!(p.expire(999).is_empty());
        assert_eq!(p.expire(1000), vec![(first, piece)]);
        let (second, _) = p.next_request(1000).unwrap();
        assert_ne!(first, second);
        // The late answer from the first peer is not taken any more.
        assert_eq!(p.on_piece(first, piece, true), PieceOutcome::Unexpected);
        assert_eq!(p.on_piece(second, piece, true), PieceOutcome::Accepted);
    }

    #[test]
    fn a_peer_that_leaves_frees_its_pieces() {
        let mut p = picker(4, 2);
        p.add_provider("a", all());
        p.add_provider("b", all());
        let sent = requests(&mut p, 0);
        let mut freed = p.remove_provider(&"a");
        freed.sort_unstable();
        let mut expected: Vec<u32> = sent
            .iter()
            .filter(|(q, _)| *q == "a")
            .map(|(_, x)| *x)
            .collect();
        expected.sort_unstable();
        assert_eq!(freed, expected);
        for (peer, piece) in sent.iter().filter(|(q, _)| *q == "b") {
            p.on_piece(*peer, *piece, true);
        }
        let retry = requests(&mut p, 0);
        assert!(retry.iter().all(|(peer, _)| *peer == "b"));
        assert_eq!(retry.len(), 2);
    }

    #[test]
    fn requeued_pieces_are_wanted_again_and_strikes_stay() {
        let mut p = Picker::new(2, None, &BTreeSet::new(), PickerConfig::default());
        p.add_provider(1u8, all());
        p.add_provider(2u8, all());
        while let Some((peer, piece)) = p.next_request(0) {
            // Peer 1's pieces are bad, once: a strike.
            let _ = p.on_piece(peer, piece, peer != 1);
        }
        while let Some((peer, piece)) = p.next_request(0) {
            assert_eq!(p.on_piece(peer, piece, true), PieceOutcome::Accepted);
        }
        assert!(p.is_complete());
        p.requeue(&[1, 7]);
        assert_eq!(p.missing().iter().copied().collect::<Vec<_>>(), [1]);
        assert_eq!(p.source_of(1), None);
        // The peer with a strike is asked last.
        assert_eq!(p.next_request(0), Some((2, 1)));
    }

    #[test]
    fn a_resumed_download_asks_only_for_what_it_lacks_and_only_what_it_wants() {
        let have = BTreeSet::from([0, 2]);
        let wanted = BTreeSet::from([0, 1, 2, 5]);
        let mut p = Picker::new(8, Some(&wanted), &have, PickerConfig::default());
        p.add_provider("a", all());
        let asked: BTreeSet<u32> = requests(&mut p, 0).into_iter().map(|(_, x)| x).collect();
        assert_eq!(asked, BTreeSet::from([1, 5]));
        // Pieces out of range in an availability are ignored.
        p.add_provider("b", some(&[1, 99]));
        assert_eq!(p.missing().len(), 2);
    }
}
