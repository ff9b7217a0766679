//! The network beyond our own connections: what other nodes report on
//! `shard-topology`.
//!
//! Every oracle publishes the peers it has (role and models) every 30 seconds,
//! and sooner when one joins. [`TopologyBook`] keeps the latest report of each
//! reporter and forgets reports that stop coming, so the web app's Network
//! page can list oracles, scouts and leeches that are not connected to this
//! oracle. Reports are claims of their authors (gossipsub signs who sent them,
//! not whether they are true): the book keeps only reports whose author
//! calls itself an oracle, says who reported each node, and bounds what it
//! holds and lists. No I/O: the caller passes the time.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use libp2p::PeerId;
use serde::Serialize;
use shared_proto::pb;

/// A report not renewed within this is dropped: four publish intervals, so a
/// reporter survives a lost message or two.
pub(crate) const REPORT_TTL: Duration = Duration::from_secs(120);

/// Reporters remembered at once; a new one beyond this replaces the stalest.
pub(crate) const MAX_REPORTERS: usize = 64;

/// Nodes listed at most (oracles first): what the Network page can show.
pub(crate) const MAX_LISTED: usize = 1024;

/// A node as the Network page lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NetworkNode {
    /// Its peer id.
    pub peer_id: String,
    /// `oracle`, `scout`, `leech`, or `unknown`.
    pub role: &'static str,
    /// Who reported it (peer ids, sorted); a node reports itself too.
    pub reported_by: Vec<String>,
    /// Seconds since the newest report that named it.
    pub seen_s_ago: u64,
}

/// The latest report of each reporter.
#[derive(Debug, Default)]
pub(crate) struct TopologyBook {
    reports: HashMap<PeerId, Report>,
}

#[derive(Debug)]
struct Report {
    received_ms: u64,
    /// When its author says it wrote it (Unix seconds): an older report that
    /// arrives late by another path does not replace a newer one.
    issued_s: u32,
    nodes: Vec<(PeerId, &'static str)>,
}

impl TopologyBook {
    /// Keeps `message` as `reporter`'s view at `now_ms`, replacing its last
    /// one unless that was issued later. Returns whether it was kept: only
    /// oracles report, so a message whose author does not list itself as an
    /// oracle is not. Entries whose peer id does not parse are skipped (the
    /// message was validated for size, not for meaning).
    pub(crate) fn record(
        &mut self,
        reporter: PeerId,
        message: &pb::TopologyMessage,
        now_ms: u64,
    ) -> bool {
        let nodes: Vec<(PeerId, &'static str)> = message
            .nodes
            .iter()
            .filter_map(|n| Some((PeerId::from_bytes(&n.peer_id).ok()?, role_name(n.node_type))))
            .collect();
        if !nodes.contains(&(reporter, "oracle")) {
            return false;
        }
        if self
            .reports
            .get(&reporter)
            .is_some_and(|r| r.issued_s > message.timestamp)
        {
            return false;
        }
        if !self.reports.contains_key(&reporter) && self.reports.len() >= MAX_REPORTERS {
            let stalest = self
                .reports
                .iter()
                .min_by_key(|(_, r)| r.received_ms)
                .map(|(id, _)| *id);
            if let Some(id) = stalest {
                self.reports.remove(&id);
            }
        }
        self.reports.insert(
            reporter,
            Report {
                received_ms: now_ms,
                issued_s: message.timestamp,
                nodes,
            },
        );
        true
    }

    /// Forgets the reports older than [`REPORT_TTL`]; returns whether any went.
    pub(crate) fn expire(&mut self, now_ms: u64) -> bool {
        let before = self.reports.len();
        let ttl = REPORT_TTL.as_millis() as u64;
        self.reports
            .retain(|_, r| now_ms.saturating_sub(r.received_ms) <= ttl);
        self.reports.len() != before
    }

    /// Whether no report is held.
    pub(crate) fn is_empty(&self) -> bool {
        self.reports.is_empty()
    }

    /// Every node some live report names, once each, oracles first, then scouts,
    /// leeches, each sorted by peer id; at most [`MAX_LISTED`]; `except` (this oracle) is left out. A
    /// node's role is what its newest report says.
    pub(crate) fn nodes(&self, now_ms: u64, except: &PeerId) -> Vec<NetworkNode> {
        let ttl = REPORT_TTL.as_millis() as u64;
        // peer -> (role, newest report time, reporters)
        let mut seen: BTreeMap<PeerId, (&'static str, u64, Vec<String>)> = BTreeMap::new();
        for (reporter, report) in &self.reports {
            if now_ms.saturating_sub(report.received_ms) > ttl {
                continue;
            }
            for (peer, role) in &report.nodes {
                if peer == except {
                    continue;
                }
                let entry = seen.entry(*peer).or_insert((role, 0, Vec::new()));
                if report.received_ms >= entry.1 {
                    entry.0 = role;
                    entry.1 = report.received_ms;
                }
                entry.2.push(reporter.to_string());
            }
        }
        let mut nodes: Vec<NetworkNode> = seen
            .into_iter()
            .map(|(peer, (role, newest, mut reported_by))| {
                reported_by.sort();
                reported_by.dedup();
                NetworkNode {
                    peer_id: peer.to_string(),
                    role,
                    reported_by,
                    seen_s_ago: now_ms.saturating_sub(newest) / 1000,
                }
            })
            .collect();
        nodes.sort_by(|a, b| (rank(a.role), &a.peer_id).cmp(&(rank(b.role), &b.peer_id)));
        nodes.truncate(MAX_LISTED);
        nodes
    }
}

/// Oracles first, then scouts, leeches, and the rest.
fn rank(role: &str) -> u8 {
    match role {
        "oracle" => 0,
        "scout" => 1,
        "leech" => 2,
        _ => 3,
    }
}

/// The role's name in the API, from its wire number.
pub(crate) fn role_name(node_type: i32) -> &'static str {
    match pb::NodeType::try_from(node_type) {
        Ok(pb::NodeType::Oracle) => "oracle",
        Ok(pb::NodeType::Scout) => "scout",
        Ok(pb::NodeType::Leech) => "leech",
        _ => "unknown",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(peer: PeerId, role: pb::NodeType) -> pb::NodeInfo {
        pb::NodeInfo {
            peer_id: peer.to_bytes(),
            node_type: role as i32,
            ..Default::default()
        }
    }

    /// `reporter`'s report (naming itself as an oracle) of `others`.
    fn report(reporter: PeerId, others: Vec<pb::NodeInfo>) -> pb::TopologyMessage {
        report_at(reporter, others, 0)
    }

    fn report_at(
        reporter: PeerId,
        others: Vec<pb::NodeInfo>,
        issued_s: u32,
    ) -> pb::TopologyMessage {
        let mut nodes = vec![node(reporter, pb::NodeType::Oracle)];
        nodes.extend(others);
        pb::TopologyMessage {
            nodes,
            timestamp: issued_s,
            ..Default::default()
        }
    }

    #[test]
    fn nodes_from_several_reporters_are_listed_once_with_who_reported_them() {
        let (me, a, b, scout) = (
            PeerId::random(),
            PeerId::random(),
            PeerId::random(),
            PeerId::random(),
        );
        let mut book = TopologyBook::default();
        let seen_by_a = vec![
            node(scout, pb::NodeType::Scout),
            node(me, pb::NodeType::Oracle),
        ];
        assert!(book.record(a, &report(a, seen_by_a), 1_000));
        assert!(book.record(b, &report(b, vec![node(scout, pb::NodeType::Scout)]), 3_000));
        let nodes = book.nodes(5_000, &me);
        assert_eq!(nodes.len(), 3, "{nodes:?}");
        assert_eq!(
            nodes.iter().filter(|n| n.role == "oracle").count(),
            2,
            "both reporters, never this oracle"
        );
        let s = nodes.iter().find(|n| n.role == "scout").unwrap();
        assert_eq!(s.peer_id, scout.to_string());
        let mut both = vec![a.to_string(), b.to_string()];
        both.sort();
        assert_eq!(s.reported_by, both);
        assert_eq!(s.seen_s_ago, 2, "from the newest report");
    }

    #[test]
    fn a_newer_report_replaces_the_last_an_older_one_does_not_and_silence_forgets() {
        let (me, a, scout) = (PeerId::random(), PeerId::random(), PeerId::random());
        let mut book = TopologyBook::default();
        let with_scout = report_at(a, vec![node(scout, pb::NodeType::Scout)], 10);
        assert!(book.record(a, &with_scout, 0));
        assert!(book.record(a, &report_at(a, vec![], 20), 1_000));
        let nodes = book.nodes(1_000, &me);
        assert_eq!(nodes.len(), 1);
        assert_eq!(nodes[0].role, "oracle", "the scout left a's newer report");
        // The first report, arriving again late, does not bring the scout back.
        assert!(!book.record(a, &with_scout, 1_500));
        assert_eq!(book.nodes(1_500, &me).len(), 1);

        let late = 1_000 + REPORT_TTL.as_millis() as u64 + 1;
        assert!(
            book.nodes(late, &me).is_empty(),
            "stale reports are not shown"
        );
        assert!(book.expire(late));
        assert!(book.is_empty());
    }

    #[test]
    fn only_oracles_report_garbage_ids_are_skipped_and_the_book_is_bounded() {
        let me = PeerId::random();
        let mut book = TopologyBook::default();
        // A scout (or anyone) claiming to report is not kept.
        let scout = PeerId::random();
        let claim = pb::TopologyMessage {
            nodes: vec![node(scout, pb::NodeType::Scout)],
            ..Default::default()
        };
        assert!(!book.record(scout, &claim, 0));
        assert!(book.is_empty());

        let reporter = PeerId::random();
        let mut bad = node(PeerId::random(), pb::NodeType::Scout);
        bad.peer_id = vec![1, 2, 3];
        assert!(book.record(reporter, &report(reporter, vec![bad]), 0));
        assert_eq!(book.nodes(0, &me).len(), 1, "the reporter alone");

        for i in 0..(MAX_REPORTERS as u64 + 10) {
            let reporter = PeerId::random();
            book.record(reporter, &report(reporter, vec![]), i + 1);
        }
        assert_eq!(book.reports.len(), MAX_REPORTERS);
        let listed = book.nodes(MAX_REPORTERS as u64 + 10, &me);
        assert_eq!(listed.len(), MAX_REPORTERS);
        // The stalest went first: the first reporter is gone.
        assert!(!listed.iter().any(|n| n.peer_id == reporter.to_string()));

        let crowd = (0..MAX_LISTED + 5)
            .map(|_| node(PeerId::random(), pb::NodeType::Scout))
            .collect();
        let big = PeerId::random();
        book.record(big, &report(big, crowd), 100_000);
        assert_eq!(book.nodes(100_000, &me).len(), MAX_LISTED);
    }
}
