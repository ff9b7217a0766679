//! The transformer against an independent f32 implementation: numpy code over
//! weights dequantised by PyPI's `gguf` package (`tests/reference/llama_f32.py`),
//! sharing nothing with ours. Both compute in f32, so logits agree closely and
//! greedy paths agree token for token except where the reference itself sees a
//! near-tie.
#![allow(clippy::unwrap_used)]

mod common;

use shared_model::backend::{Cpu, cpu_device};
use shared_model::gguf::Gguf;
use shared_model::model::{Llama, Logits};
use shared_model::sampling::argmax;

fn model() -> Llama<Cpu> {
    let mut gguf = Gguf::open(common::default_model()).unwrap();
    Llama::load(&mut gguf, &cpu_device(), None).unwrap()
}

fn ids(v: &serde_json::Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

#[test]
fn logits_of_every_prompt_position_match_the_reference() {
    let fixture = common::fixture("f32_reference_logits.json");
    let model = model();
    let prompt = ids(&fixture["prompt_ids"]);
    let mut cache = model.new_cache();
    let rows = model
        .logits_to_rows(model.forward(&prompt, &mut cache, Logits::All).unwrap())
        .unwrap();
    assert_eq!(rows.len(), prompt.len());
    let mut worst = 0f32;
    for (row, position) in rows.iter().zip(fixture["positions"].as_array().unwrap()) {
        let top10 = position["top10"].as_array().unwrap();
        assert_eq!(argmax(row) as u64, top10[0][0].as_u64().unwrap());
        for pair in top10 {
            let (id, logit) = (
                pair[0].as_u64().unwrap() as usize,
                pair[1].as_f64().unwrap() as f32,
            );
            worst = worst.max((row[id] - logit).abs());
        }
    }
    let last: Vec<f32> = fixture["last_logits"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap() as f32)
        .collect();
    for (got, want) in rows.last().unwrap().iter().zip(&last) {
        // The reference rounded these to 4 decimals.
        worst = worst.max((got - want).abs() - 5e-5);
    }
    println!("largest logit difference from the f32 reference: {worst}");
    assert!(
        worst < 2e-2,
        "logits differ from the reference by up to {worst}"
    );
}

#[test]
fn greedy_decoding_follows_the_reference_path() {
    let fixture = common::fixture("f32_reference_greedy.json");
    let model = model();
    for case in fixture["prompts"].as_array().unwrap() {
        let name = case["name"].as_str().unwrap();
        let prompt = ids(&case["prompt_ids"]);
        let expected = ids(&case["tokens"]);
        let gaps: Vec<f64> = case["top2_gaps"]
            .as_array()
            .unwrap()
            .iter()
            .map(|g| g.as_f64().unwrap())
            .collect();
        let mut cache = model.new_cache();
        let mut logits = model
            .logits_to_rows(model.forward(&prompt, &mut cache, Logits::Last).unwrap())
            .unwrap();
        let mut got = Vec::new();
        for (step, &want) in expected.iter().enumerate() {
            let token = argmax(&logits[0]);
            if token != want {
                // Legitimate only at a near-tie of the reference's own top two.
                assert!(
                    gaps[step] < 0.05,
                    "{name}: step {step} chose {token}, the reference {want} with a top-2 gap of {}",
                    gaps[step]
                );
                println!(
                    "{name}: left the reference at step {step} (reference gap {:.4})",
                    gaps[step]
                );
                break;
            }
            got.push(token);
            logits = model
                .logits_to_rows(model.forward(&[token], &mut cache, Logits::Last).unwrap())
                .unwrap();
        }
        println!(
            "{name}: {} of {} tokens equal the reference",
            got.len(),
            expected.len()
        );
    }
}
