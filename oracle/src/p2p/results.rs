//! Verified results on `shard-work-result`: signed by the oracle that
//! verified them, carrying its certificate from the network key. Publishing
//! needs a certificate; accepting needs the certificate, the signature, the
//! publisher's identity, freshness and no replay to hold.

use libp2p::PeerId;
use shared_proto::{
    ContentId, FreshnessError, Keypair, PublicKey, ReplayWindow, SignatureError, Signed,
    check_fresh, frame, pb,
};
use thiserror::Error;

/// Seconds a published result stays valid.
pub const RESULT_TTL_S: u32 = 3_600;

/// Why a result from the network is refused.
#[derive(Debug, Error)]
pub enum ResultError {
    /// Not a valid frame (size, protobuf, fields).
    #[error("malformed result: {0}")]
    Malformed(#[from] shared_proto::FrameError),
    /// This node trusts no network key, so it can check no certificate.
    #[error("no network key configured")]
    NoNetworkKey,
    /// Certificate or signature wrong, or not the publisher's.
    #[error(transparent)]
    Signature(#[from] SignatureError),
    /// Too old or from the future.
    #[error(transparent)]
    Stale(#[from] FreshnessError),
    /// Seen before.
    #[error("replayed result")]
    Replayed,
}

/// A signed broadcast of `output` (the tokens of work `work_cid`).
pub fn sign_result(
    key: &Keypair,
    certificate: &pb::OracleCertificate,
    work_cid: Vec<u8>,
    output: Vec<u32>,
    now_ms: u64,
) -> Result<pb::ResultBroadcast, SignatureError> {
    let mut result = pb::WorkResult {
        work_cid: work_cid.clone(),
        result_cid: ContentId::of_tokens(&output).to_bytes(),
        token_ids: output,
        verified: true,
        proof: Vec::new(),
        inference_time_ms: 0,
        confidence_score: 1.0,
        session_id: 0,
        round: 0,
        draft_distributions: Vec::new(),
    };
    result.sign(key)?;
    let mut broadcast = pb::ResultBroadcast {
        work_cid,
        result: Some(result),
        verification_signature: Vec::new(),
        confidence_score: 1.0,
        proof_strength: 1.0,
        certificate: Some(certificate.clone()),
        issued_at_ms: now_ms,
        ttl: RESULT_TTL_S,
    };
    broadcast.sign(key)?;
    Ok(broadcast)
}

/// Checks a gossip payload from `source` against the network key.
pub fn check_result(
    data: &[u8],
    source: &PeerId,
    network_key: Option<&PublicKey>,
    now_ms: u64,
    max_skew_ms: u64,
    replay: &mut ReplayWindow<Vec<u8>>,
) -> Result<pb::ResultBroadcast, ResultError> {
    let broadcast: pb::ResultBroadcast = frame::decode(data)?;
    let network_key = network_key.ok_or(ResultError::NoNetworkKey)?;
    broadcast.verify_from(source, network_key, now_ms)?;
    let expires = check_fresh(broadcast.issued_at_ms, broadcast.ttl, now_ms, max_skew_ms)?;
    let mut id = broadcast.work_cid.clone();
    id.extend_from_slice(&broadcast.verification_signature);
    replay
        .check_and_insert(id, expires, now_ms)
        .map_err(|_| ResultError::Replayed)?;
    Ok(broadcast)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_certified_fresh_unreplayed_results_pass() {
        let network = Keypair::generate_ed25519();
        let oracle = Keypair::generate_ed25519();
        let now = 1_800_000_000_000;
        let cert =
            pb::OracleCertificate::issue(&network, &oracle.public(), now - 1, now + 86_400_000)
                .unwrap();
        let work = ContentId::digest(b"w").to_bytes();
        let good = sign_result(&oracle, &cert, work.clone(), vec![1, 2, 3], now).unwrap();
        let bytes = frame::encode(&good).unwrap();
        let me = oracle.public().to_peer_id();
        let nk = network.public();
        let mut replay = ReplayWindow::new(16);
        let got = check_result(&bytes, &me, Some(&nk), now, 30_000, &mut replay).unwrap();
        assert_eq!(got.result.unwrap().token_ids, [1, 2, 3]);
        // The same message again is a replay.
        assert!(matches!(
            check_result(&bytes, &me, Some(&nk), now, 30_000, &mut replay),
            Err(ResultError::Replayed)
        ));
        // An uncertified publisher: its own certificate, from another network key.
        let rogue = Keypair::generate_ed25519();
        let self_made =
            pb::OracleCertificate::issue(&rogue, &rogue.public(), now - 1, now + 1000).unwrap();
        let forged = sign_result(&rogue, &self_made, work.clone(), vec![9], now).unwrap();
        let err = check_result(
            &frame::encode(&forged).unwrap(),
            &rogue.public().to_peer_id(),
            Some(&nk),
            now,
            30_000,
            &mut replay,
        )
        .unwrap_err();
        assert!(matches!(
            err,
            ResultError::Signature(SignatureError::UntrustedNetworkKey)
        ));
        // A certified result relayed as if another peer published it.
        let stolen = sign_result(
            &oracle,
            &cert,
            ContentId::digest(b"x").to_bytes(),
            vec![],
            now,
        )
        .unwrap();
        assert!(matches!(
            check_result(
                &frame::encode(&stolen).unwrap(),
                &rogue.public().to_peer_id(),
                Some(&nk),
                now,
                30_000,
                &mut replay
            ),
            Err(ResultError::Signature(
                SignatureError::WrongPublisher { .. }
            ))
        ));
        // Tampered tokens break the signature; stale results are refused.
        let mut tampered = sign_result(
            &oracle,
            &cert,
            ContentId::digest(b"y").to_bytes(),
            vec![5],
            now,
        )
        .unwrap();
        if let Some(r) = tampered.result.as_mut() {
            r.token_ids = vec![6];
            r.result_cid = ContentId::of_tokens(&r.token_ids).to_bytes();
        }
        assert!(
            check_result(
                &frame::encode(&tampered).unwrap(),
                &me,
                Some(&nk),
                now,
                30_000,
                &mut replay
            )
            .is_err()
        );
        let old = sign_result(
            &oracle,
            &cert,
            ContentId::digest(b"z").to_bytes(),
            vec![],
            now - 7_200_000,
        )
        .unwrap();
        assert!(matches!(
            check_result(
                &frame::encode(&old).unwrap(),
                &me,
                Some(&nk),
                now,
                30_000,
                &mut replay
            ),
            Err(ResultError::Stale(_))
        ));
    }
}
