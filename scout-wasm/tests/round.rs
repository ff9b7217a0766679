//! The scout's round logic on a real (small) draft model: claims, rounds in
//! step with the oracle, signatures, and refusals of requests out of step.
#![allow(clippy::unwrap_used)]

#[path = "../../shared-model/tests/common/mod.rs"]
mod common;

use scout_wasm::round::{RoundError, Scout};
use scout_wasm::wire::params_to_wire;
use shared_model::backend::{Cpu, cpu_device};
use shared_model::draft::{DraftJob, DraftModel};
use shared_model::gguf::Gguf;
use shared_model::model::Llama;
use shared_model::sampling::SamplingParams;
use shared_proto::{ContentId, Keypair, Signed, pb};

fn draft_model() -> DraftModel<Cpu> {
    let mut gguf = Gguf::open(common::default_model()).unwrap();
    DraftModel::new(Llama::<Cpu>::load(&mut gguf, &cpu_device(), Some(2)).unwrap())
}

fn claim(context: &[u32], params: SamplingParams) -> pb::ClaimResponse {
    pb::ClaimResponse {
        ack: Some(pb::Ack {
            ok: true,
            ..Default::default()
        }),
        session_id: 7,
        context_tokens: context.to_vec(),
        draft_k: 3,
        sampling: Some(params_to_wire(&params)),
        output_start: context.len() as u32,
    }
}

fn round(
    work: &[u8],
    round: u32,
    accepted: &[u32],
    context_len: usize,
    k: u32,
) -> pb::DraftRequest {
    pb::DraftRequest {
        work_cid: work.to_vec(),
        session_id: 7,
        round,
        accepted_tokens: accepted.to_vec(),
        context_len: context_len as u32,
        draft_k: k,
        deadline_ms: 500,
    }
}

#[test]
fn rounds_draft_what_the_model_drafts_signed_and_in_step() {
    let key = Keypair::generate_ed25519();
    let model = draft_model();
    let mut scout = Scout::new(key.clone(), model.clone(), 4, 512);
    let work = ContentId::digest(b"work").to_bytes();
    let prompt: Vec<u32> = vec![1, 504, 3458, 282, 4649, 314];
    let sampled = SamplingParams {
        temperature: 0.9,
        top_k: 0,
        top_p: 1.0,
        seed: 11,
    };
    scout.claimed(&work, &claim(&prompt, sampled)).unwrap();

    // Round 1: nothing new yet; the scout drafts 3 with the target's noise.
    let answer = scout.answer(&[round(&work, 1, &[], prompt.len(), 3)]);
    let result = answer.into_iter().next().unwrap().unwrap();
    assert_eq!(result.token_ids.len(), 3);
    result.verify_signature(&key.public()).unwrap();
    assert_eq!(result.round, 1);
    assert_eq!(result.session_id, 7);
    assert_eq!(
        result.result_cid,
        ContentId::of_tokens(&result.token_ids).to_bytes()
    );
    // The same drafts as the model gives directly with the same noise.
    let mut state = model.new_state(512);
    let direct = model
        .draft(&mut [DraftJob {
            state: &mut state,
            context: &prompt,
            k: 3,
            params: sampled,
            noise_seed: sampled.seed,
            output_start: prompt.len(),
        }])
        .unwrap();
    assert_eq!(result.token_ids, direct[0].tokens);

    // Round 2: the oracle accepted the first draft and added its own token.
    let accepted = [result.token_ids[0], 42];
    let len = prompt.len() + 2;
    let r2 = scout.answer(&[round(&work, 2, &accepted, len, 3)]);
    assert!(r2[0].is_ok());
    assert_eq!(scout.stats().accepted, 1);

    // Out of step, stale, unknown, out of vocabulary: refused, nothing drafted.
    let refusals = scout.answer(&[
        round(&work, 3, &[5], len, 3),
        round(&work, 2, &[5], len + 1, 3),
        pb::DraftRequest {
            session_id: 8,
            ..round(&work, 3, &[5], len + 1, 3)
        },
        round(&work, 3, &[1 << 20], len + 1, 3),
    ]);
    assert!(matches!(refusals[0], Err(RoundError::OutOfStep { .. })));
    assert!(matches!(refusals[1], Err(RoundError::StaleRound { .. })));
    assert!(matches!(refusals[2], Err(RoundError::UnknownSession(8))));
    assert!(matches!(refusals[3], Err(RoundError::BadToken(_))));
    // The session is still in step after the refusals.
    assert!(scout.answer(&[round(&work, 3, &[5], len + 1, 2)])[0].is_ok());

    // A refused claim is not taken; a full scout takes no more.
    let mut no = claim(&prompt, sampled);
    no.ack = Some(pb::Ack::default());
    assert!(matches!(
        scout.claimed(&work, &no),
        Err(RoundError::Refused(_))
    ));
}
