//! `/shard/1.0.0/weights` on the oracle: the manifests and pieces of the
//! models it offers (its target and the draft model scouts hold), to peers
//! that completed a handshake.
//!
//! Answers that need no disk (a manifest, a refusal) are made at once; a
//! piece is read off the event loop, a few at a time (a bound of its own, so
//! peers never starve browsers on the HTTP route), and checked against its
//! manifest before it leaves: a file changed on disk is refused, never sent
//! under the piece's name. A response waits in its connection until the peer
//! reads it, so the node caps the bytes of responses not yet sent, per peer
//! and in all ([`ResponseBudget`]).

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use scout_wasm::net;
use shared_proto::pb;
use shared_proto::pb::weights_request::Want;
use shared_proto::pb::weights_response::Answer;
use shared_weights::Manifest;

/// A model file this oracle offers.
#[derive(Debug, Clone)]
pub struct OfferedModel {
    /// The file.
    pub path: PathBuf,
    /// Its manifest.
    pub manifest: Arc<Manifest>,
}

/// Every model offered, by content id.
#[derive(Debug, Clone, Default)]
pub struct Offered {
    /// In the order given: the handshake lists the scout model first.
    order: Vec<Vec<u8>>,
    models: HashMap<Vec<u8>, OfferedModel>,
    /// Flip a byte of every piece sent: a peer that lies, for tests of the
    /// downloaders' defences (`oracle serve --misbehave corrupt-pieces`).
    corrupt: bool,
}

/// What to do with a request.
pub enum Reply {
    /// Answer with this now.
    Now(pb::WeightsResponse),
    /// Read this piece, then answer.
    Read(PieceRead),
}

/// A piece to read from disk.
pub struct PieceRead {
    model: OfferedModel,
    index: u32,
    corrupt: bool,
}

/// Piece reads from disk at once for peers (the HTTP route has its own).
static P2P_PIECE_READS: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(8);

/// Bytes of piece responses being read or waiting to be sent: a peer that
/// asks for many and reads slowly cannot make the node hold gigabytes.
#[derive(Debug)]
pub(super) struct ResponseBudget<Id> {
    per_peer: u64,
    total: u64,
    used: u64,
    by_peer: HashMap<libp2p::PeerId, u64>,
    pending: HashMap<Id, (libp2p::PeerId, u64)>,
}

impl<Id: std::hash::Hash + Eq> ResponseBudget<Id> {
    /// At most `per_peer` bytes for one peer and `total` for all.
    pub(super) fn new(per_peer: u64, total: u64) -> Self {
        ResponseBudget {
            per_peer,
            total,
            used: 0,
            by_peer: HashMap::new(),
            pending: HashMap::new(),
        }
    }

    /// Reserves `bytes` for request `id` of `peer`; `false` when over a cap.
    pub(super) fn reserve(&mut self, id: Id, peer: libp2p::PeerId, bytes: u64) -> bool {
        let mine = self.by_peer.get(&peer).copied().unwrap_or(0);
        if mine + bytes > self.per_peer || self.used + bytes > self.total {
            return false;
        }
        self.used += bytes;
        *self.by_peer.entry(peer).or_insert(0) += bytes;
        self.pending.insert(id, (peer, bytes));
        true
    }

    /// Request `id` is answered (sent, failed, or dropped): its bytes are free.
    pub(super) fn release(&mut self, id: &Id) {
        if let Some((peer, bytes)) = self.pending.remove(id) {
            self.used -= bytes;
            if let Some(mine) = self.by_peer.get_mut(&peer) {
                *mine -= bytes;
                if *mine == 0 {
                    self.by_peer.remove(&peer);
                }
            }
        }
    }
}

fn refused(code: &str, why: &str) -> pb::WeightsResponse {
    pb::WeightsResponse {
        answer: Some(Answer::Refused(net::ack_error(code, why))),
    }
}

impl Offered {
    /// Offers `models` (the first is the one scouts draft with); the same
    /// file named twice is offered once.
    pub fn new(models: Vec<OfferedModel>, corrupt: bool) -> Self {
        let mut offered = Offered {
            corrupt,
            ..Default::default()
        };
        for m in models {
            let cid = m.manifest.cid().to_bytes();
            if !offered.models.contains_key(&cid) {
                offered.order.push(cid.clone());
                offered.models.insert(cid, m);
            }
        }
        offered
    }

    /// Content ids of the models offered, the scout model first.
    pub fn cids(&self) -> &[Vec<u8>] {
        &self.order
    }

    /// How to answer `request`.
    pub fn reply(&self, request: &pb::WeightsRequest) -> Reply {
        let Some(model) = self.models.get(&request.model_cid) else {
            return Reply::Now(refused("NOT_FOUND", "this peer offers no such model"));
        };
        match request.want {
            Some(Want::Manifest(_)) => Reply::Now(pb::WeightsResponse {
                answer: Some(Answer::Manifest(model.manifest.bytes().to_vec())),
            }),
            Some(Want::Piece(index)) => match model.manifest.piece_range(index) {
                Ok(_) => Reply::Read(PieceRead {
                    model: model.clone(),
                    index,
                    corrupt: self.corrupt,
                }),
                Err(e) => Reply::Now(refused("NOT_FOUND", &e.to_string())),
            },
            None => Reply::Now(refused("INVALID_ARGUMENT", "ask for a manifest or a piece")),
        }
    }
}

impl PieceRead {
    /// Bytes the piece has (for the budget).
    pub fn bytes(&self) -> u64 {
        self.model
            .manifest
            .piece_range(self.index)
            .map_or(0, |r| r.end - r.start)
    }

    /// Reads and checks the piece (waiting for a read slot) and makes the answer.
    pub async fn run(self) -> pb::WeightsResponse {
        let Ok(_permit) = P2P_PIECE_READS.acquire().await else {
            return refused("UNAVAILABLE", "shutting down");
        };
        let PieceRead {
            model,
            index,
            corrupt,
        } = self;
        let read = tokio::task::spawn_blocking(move || {
            crate::weights::read_checked_piece(&model.path, &model.manifest, index)
        })
        .await;
        match read {
            Ok(Ok(mut data)) => {
                let at = index as usize % data.len().max(1);
                if corrupt && let Some(b) = data.get_mut(at) {
                    *b ^= 0x5a;
                }
                pb::WeightsResponse {
                    answer: Some(Answer::Piece(pb::Piece { index, data })),
                }
            }
            Ok(Err(e)) => {
                tracing::error!(error = %format!("{e:#}"), "cannot serve a piece");
                refused("INTERNAL", "this peer cannot read that piece now")
            }
            Err(e) => {
                tracing::error!(error = %e, "reading a piece failed");
                refused("INTERNAL", "this peer cannot read that piece now")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refusal_code(reply: Reply) -> String {
        match reply {
            Reply::Now(pb::WeightsResponse {
                answer: Some(Answer::Refused(ack)),
            }) => ack.errors[0].code.clone(),
            _ => panic!("not a refusal"),
        }
    }

    #[test]
    fn requests_for_other_models_bad_pieces_or_nothing_are_refused() {
        let data = vec![7u8; 200_000];
        let manifest = Manifest::build(data.as_slice(), 200_000, None, None).unwrap();
        let cid = manifest.cid().to_bytes();
        let offered = Offered::new(
            vec![OfferedModel {
                path: PathBuf::from("unused"),
                manifest: Arc::new(manifest.clone()),
            }],
            false,
        );
        let ask = |model_cid: Vec<u8>, want| pb::WeightsRequest { model_cid, want };
        match offered.reply(&ask(cid.clone(), Some(Want::Manifest(true)))) {
            Reply::Now(pb::WeightsResponse {
                answer: Some(Answer::Manifest(bytes)),
            }) => assert_eq!(bytes, manifest.bytes()),
            _ => panic!("no manifest"),
        }
        let other = shared_proto::ContentId::digest(b"another model").to_bytes();
        assert_eq!(
            refusal_code(offered.reply(&ask(other, Some(Want::Manifest(true))))),
            "NOT_FOUND"
        );
        assert_eq!(
            refusal_code(offered.reply(&ask(cid.clone(), Some(Want::Piece(4))))),
            "NOT_FOUND"
        );
        assert_eq!(
            refusal_code(offered.reply(&ask(cid.clone(), None))),
            "INVALID_ARGUMENT"
        );
        assert!(matches!(
            offered.reply(&ask(cid, Some(Want::Piece(3)))),
            Reply::Read(read) if read.bytes() == 200_000 - 3 * 65_536
        ));
    }

    #[test]
    fn the_budget_caps_each_peer_and_everyone_and_frees_on_release() {
        let (a, b) = (libp2p::PeerId::random(), libp2p::PeerId::random());
        let mut budget = ResponseBudget::new(100, 150);
        assert!(budget.reserve(1, a, 60));
        assert!(!budget.reserve(2, a, 60), "over a's cap");
        assert!(budget.reserve(3, b, 60));
        assert!(!budget.reserve(4, b, 40), "over the total");
        budget.release(&1);
        budget.release(&1);
        assert!(budget.reserve(5, b, 40));
        assert!(budget.reserve(6, a, 50));
        assert_eq!(budget.used, 150);
    }
}
