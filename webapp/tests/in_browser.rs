//! What a tab runs, run in a tab: `shared-proto`'s frame codec and signatures,
//! `shared-model`'s tokenizer and transformer on burn's wasm CPU backend and on
//! WebGPU, under `wasm-bindgen-test` in headless Chromium (`scripts/wasm-test`,
//! which the README's test command calls).
//!
//! The tests fetch the default model from `/models/`: the runner serves the
//! directory it starts in, and `scripts/wasm-test-runner` starts it at the
//! repository root. Expected values are the fixtures the native tests use,
//! made by llama.cpp and by an independent f32 implementation, not by us.
#![cfg(target_arch = "wasm32")]
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::cell::RefCell;
use std::rc::Rc;

use shared_model::backend::{Backend, Cpu, WebGpu, cpu_device, init_webgpu};
use shared_model::gguf::Gguf;
use shared_model::model::{Llama, Logits};
use shared_model::sampling::argmax;
use shared_model::tokenizer::{EncodeOptions, Tokenizer};
use shared_proto::signing::Signed as _;
use shared_proto::{FrameError, Keypair, SignatureError, frame, pb};
use wasm_bindgen::JsCast as _;
use wasm_bindgen_futures::JsFuture;
use wasm_bindgen_test::{wasm_bindgen_test, wasm_bindgen_test_configure};

wasm_bindgen_test_configure!(run_in_browser);

const MODEL_URL: &str = "/models/SmolLM2-135M-Instruct.Q4_1.gguf";
const TOKENS: &str = include_str!("../../shared-model/tests/fixtures/llama_cpp_tokens.json");
const F32_REFERENCE: &str =
    include_str!("../../shared-model/tests/fixtures/f32_reference_logits.json");

/// How far logits may be from the f32 reference, as in
/// `shared-model/tests/model_reference.rs`: both sides compute in f32 with
/// different summation orders (measured 3e-5 natively); a wrong layer is far
/// above this.
const REFERENCE_TOLERANCE: f32 = 1e-4;

/// How far WebGPU's logits may be from the CPU's for the same model. The
/// Playwright suite measured 9.6e-6 on SwiftShader against the native CPU.
const WEBGPU_TOLERANCE: f32 = 1e-4;

/// Blocks of the model run on WebGPU: SwiftShader runs each kernel launch on
/// the CPU, so the whole model would take minutes; two blocks exercise every
/// kernel the model has.
const WEBGPU_LAYERS: usize = 2;

thread_local! {
    static MODEL: RefCell<Option<Rc<Vec<u8>>>> = const { RefCell::new(None) };
}

/// The default model's bytes, fetched once for all the tests in this tab.
async fn model_bytes() -> Rc<Vec<u8>> {
    if let Some(bytes) = MODEL.with(|m| m.borrow().clone()) {
        return bytes;
    }
    let window = web_sys::window().expect("tests run in a window");
    let response: web_sys::Response = JsFuture::from(window.fetch_with_str(MODEL_URL))
        .await
        .expect("fetch the model")
        .dyn_into()
        .unwrap();
    assert!(
        response.ok(),
        "GET {MODEL_URL}: HTTP {} (is the runner started at the repository root, with the model in models/?)",
        response.status()
    );
    let buffer = JsFuture::from(response.array_buffer().unwrap())
        .await
        .unwrap();
    let bytes = Rc::new(js_sys::Uint8Array::new(&buffer).to_vec());
    MODEL.with(|m| *m.borrow_mut() = Some(bytes.clone()));
    bytes
}

fn json(text: &str) -> serde_json::Value {
    serde_json::from_str(text).unwrap()
}

fn ids(v: &serde_json::Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| u32::try_from(x.as_u64().unwrap()).unwrap())
        .collect()
}

fn largest_difference(a: &[Vec<f32>], b: &[Vec<f32>]) -> f32 {
    assert_eq!(a.len(), b.len(), "row counts differ");
    a.iter()
        .zip(b)
        .flat_map(|(x, y)| {
            assert_eq!(x.len(), y.len(), "row lengths differ");
            x.iter().zip(y).map(|(p, q)| (p - q).abs())
        })
        .fold(0.0, f32::max)
}

/// Loads the first `layers` blocks (all with `None`) and returns the logits
/// of every position of `prompt`.
async fn logits<B: Backend>(
    device: &B::Device,
    layers: Option<usize>,
    prompt: &[u32],
) -> Vec<Vec<f32>> {
    let bytes = model_bytes().await;
    let mut gguf = Gguf::from_bytes(bytes.as_slice()).unwrap();
    let model = Llama::<B>::load(&mut gguf, device, layers).unwrap();
    let mut cache = model.new_cache_with_limit(prompt.len());
    let out = model.forward(prompt, &mut cache, Logits::All).unwrap();
    model.logits_to_rows_async(out).await.unwrap()
}

#[wasm_bindgen_test]
fn frames_round_trip_and_bad_frames_are_typed_errors() {
    let ack = pb::Ack {
        ok: true,
        ..Default::default()
    };
    let bytes = frame::encode(&ack).unwrap();
    assert_eq!(frame::decode::<pb::Ack>(&bytes).unwrap(), ack);

    let mut oversized = Vec::new();
    frame::encode_varint(2 << 30, &mut oversized);
    assert!(matches!(
        frame::decode_prefix::<pb::HandshakeMessage>(&oversized),
        Err(FrameError::Oversized { .. })
    ));
    assert!(matches!(
        frame::decode::<pb::Ack>(&bytes[..bytes.len() - 1]),
        Err(FrameError::Truncated { .. })
    ));
    let mut trailing = bytes.clone();
    trailing.push(0);
    assert!(matches!(
        frame::decode::<pb::Ack>(&trailing),
        Err(FrameError::TrailingBytes(1))
    ));
}

#[wasm_bindgen_test]
fn signatures_made_in_the_tab_verify_and_tampering_breaks_them() {
    // Key generation takes getrandom's browser backend.
    let key = Keypair::generate_ed25519();
    let mut result = pb::WorkResult {
        token_ids: vec![1, 2, 3],
        ..Default::default()
    };
    result.sign(&key).unwrap();
    result.verify_signature(&key.public()).unwrap();
    result.token_ids[0] = 9;
    assert!(matches!(
        result.verify_signature(&key.public()),
        Err(SignatureError::BadSignature)
    ));
}

#[wasm_bindgen_test]
async fn the_tokenizer_gives_llama_cpps_ids() {
    let bytes = model_bytes().await;
    let gguf = Gguf::from_bytes(bytes.as_slice()).unwrap();
    let tokenizer = Tokenizer::from_metadata(&gguf.metadata).unwrap();
    let fixture = json(TOKENS);
    let cases = fixture["cases"].as_array().unwrap();
    assert!(cases.len() >= 20);
    for case in cases {
        let text = case["text"].as_str().unwrap();
        let parse_special = case["parse_special"].as_bool().unwrap();
        let got = tokenizer.encode(
            text,
            EncodeOptions {
                add_special: true,
                parse_special,
            },
        );
        assert_eq!(got, ids(&case["ids"]), "{}: {text:?}", case["name"]);
        if !parse_special {
            assert_eq!(tokenizer.decode(&got), text, "{}", case["name"]);
        }
    }
}

#[wasm_bindgen_test]
async fn the_whole_model_on_the_wasm_cpu_matches_the_f32_reference() {
    let fixture = json(F32_REFERENCE);
    let prompt = ids(&fixture["prompt_ids"]);
    let rows = logits::<Cpu>(&cpu_device(), None, &prompt).await;
    assert_eq!(rows.len(), prompt.len());
    let mut worst = 0f32;
    for (row, position) in rows.iter().zip(fixture["positions"].as_array().unwrap()) {
        let top10 = position["top10"].as_array().unwrap();
        assert_eq!(argmax(row) as u64, top10[0][0].as_u64().unwrap());
        for pair in top10 {
            let id = usize::try_from(pair[0].as_u64().unwrap()).unwrap();
            worst = worst.max((row[id] - pair[1].as_f64().unwrap() as f32).abs());
        }
    }
    for (got, want) in rows
        .last()
        .unwrap()
        .iter()
        .zip(fixture["last_logits"].as_array().unwrap())
    {
        // The reference rounded these to 4 decimals.
        worst = worst.max((got - want.as_f64().unwrap() as f32).abs() - 5e-5);
    }
    web_sys::console::log_1(&format!("wasm CPU vs the f32 reference: {worst:e}").into());
    assert!(worst < REFERENCE_TOLERANCE, "differs by up to {worst}");
}

#[wasm_bindgen_test]
async fn webgpu_logits_match_the_cpu_and_a_cached_pass_matches_an_uncached_one() {
    let prompt = ids(&json(F32_REFERENCE)["prompt_ids"]);
    let (device, info) = init_webgpu().await;
    web_sys::console::log_1(&format!("WebGPU adapter: {info:?}").into());

    let on_cpu = logits::<Cpu>(&cpu_device(), Some(WEBGPU_LAYERS), &prompt).await;
    let on_webgpu = logits::<WebGpu>(&device, Some(WEBGPU_LAYERS), &prompt).await;
    let worst = largest_difference(&on_cpu, &on_webgpu);
    web_sys::console::log_1(&format!("WebGPU vs CPU: {worst:e}").into());
    assert!(worst < WEBGPU_TOLERANCE, "WebGPU differs by up to {worst}");
    for (cpu, gpu) in on_cpu.iter().zip(&on_webgpu) {
        assert_eq!(argmax(cpu), argmax(gpu));
    }

    // burn 0.21 with fusion and autotune has given wrong results for an
    // incremental pass (tracel-ai/burn#5257): the prompt in two passes over
    // one cache must give the last rows the one-pass run gave.
    let bytes = model_bytes().await;
    let mut gguf = Gguf::from_bytes(bytes.as_slice()).unwrap();
    let model = Llama::<WebGpu>::load(&mut gguf, &device, Some(WEBGPU_LAYERS)).unwrap();
    let split = prompt.len() - 2;
    let mut cache = model.new_cache_with_limit(prompt.len());
    let head = model
        .forward(&prompt[..split], &mut cache, Logits::All)
        .unwrap();
    let head = model.logits_to_rows_async(head).await.unwrap();
    let tail = model
        .forward(&prompt[split..], &mut cache, Logits::All)
        .unwrap();
    let tail = model.logits_to_rows_async(tail).await.unwrap();
    let worst = largest_difference(&[head, tail].concat(), &on_webgpu);
    web_sys::console::log_1(&format!("WebGPU cached vs uncached: {worst:e}").into());
    assert!(
        worst < WEBGPU_TOLERANCE,
        "a cached pass differs from an uncached one by up to {worst}"
    );
}
