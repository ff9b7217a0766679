//! Speculative decoding with a draft model gives exactly the tokens of plain
//! decoding. Drafts: the default model itself (a perfect greedy draft, so the
//! accept-all-plus-bonus path runs) and the model cut to 20 of its 30 layers
//! (right sometimes, wrong often, so partial acceptance and rollback run).
//! A sampled draft shares the target's noise, so the model drafting for
//! itself is accepted in full when sampling as well as when greedy.
#![allow(clippy::unwrap_used)]

mod common;

use shared_model::backend::{Cpu, cpu_device};
use shared_model::draft::DraftModel;
use shared_model::generate::Generator;
use shared_model::gguf::Gguf;
use shared_model::model::Llama;
use shared_model::sampling::SamplingParams;
use shared_model::session::{SamplingVerifier, Session, SessionConfig, SessionStats, StopReason};
use shared_model::tokenizer::{EncodeOptions, Tokenizer};

fn run(
    target: &Llama<Cpu>,
    draft: Option<(&DraftModel<Cpu>, usize)>,
    prompt: &[u32],
    n: usize,
    params: SamplingParams,
) -> (Vec<u32>, SessionStats) {
    let session = Session::new(
        prompt.to_vec(),
        SessionConfig {
            params,
            verifier: SamplingVerifier::MatchTarget,
            max_new_tokens: n,
            stop_tokens: Vec::new(),
            max_context: 2048,
            top_logprobs: None,
        },
    )
    .unwrap();
    let mut g = Generator::new(target, session);
    if let Some((draft, k)) = draft {
        g = g.with_draft(draft, k);
    }
    let out = g.run().unwrap();
    assert_eq!(g.session().stopped(), Some(StopReason::MaxTokens));
    assert_eq!(out.len(), n, "a round never overshoots");
    (out, g.stats().session)
}

#[test]
fn drafts_never_change_the_output() {
    let path = common::default_model();
    let mut gguf = Gguf::open(&path).unwrap();
    let tokenizer = Tokenizer::from_metadata(&gguf.metadata).unwrap();
    let target = Llama::<Cpu>::load(&mut gguf, &cpu_device(), None).unwrap();
    let cut = DraftModel::new(Llama::<Cpu>::load(&mut gguf, &cpu_device(), Some(20)).unwrap());
    let whole = DraftModel::new(target.clone());
    let prompts = [
        "<|im_start|>user\nWrite a haiku about the sea.<|im_end|>\n<|im_start|>assistant\n",
        "def fibonacci(n):\n",
    ];
    let sampled = SamplingParams {
        temperature: 0.8,
        top_k: 40,
        top_p: 0.95,
        seed: 7,
    };
    let n = 16;
    let mut accepted_somewhere = 0;
    for text in prompts {
        let prompt = tokenizer.encode(text, EncodeOptions::PROMPT);
        for params in [SamplingParams::GREEDY, sampled] {
            let (plain, plain_stats) = run(&target, None, &prompt, n, params);
            assert_eq!(
                plain_stats.target_forward_passes, n,
                "prefill + one pass per further token"
            );
            for (name, draft, k) in [
                ("self", &whole, 5),
                ("20 layers", &cut, 2),
                ("20 layers", &cut, 4),
            ] {
                let (spec, stats) = run(&target, Some((draft, k)), &prompt, n, params);
                assert_eq!(spec, plain, "draft {name}, k = {k}, {params:?}, {text:?}");
                assert!(stats.draft_tokens_proposed > 0);
                accepted_somewhere += stats.draft_tokens_accepted;
                println!(
                    "draft {name} k={k} temp={}: {} target passes for {n} tokens, {}/{} drafts accepted",
                    params.temperature,
                    stats.target_forward_passes,
                    stats.draft_tokens_accepted,
                    stats.draft_tokens_proposed
                );
                if name == "self" {
                    // Every draft accepted — when sampling too, because the
                    // draft samples with the target's own per-position noise
                    // — and the prompt's pass already checks drafts:
                    // ceil(16 / 6) passes.
                    assert_eq!(
                        stats.draft_tokens_accepted, stats.draft_tokens_proposed,
                        "{params:?}"
                    );
                    assert_eq!(stats.target_forward_passes, n.div_ceil(k + 1));
                }
            }
        }
    }
    assert!(accepted_somewhere > 0);
}
