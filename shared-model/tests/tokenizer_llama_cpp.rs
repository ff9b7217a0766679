//! Token ids must equal llama.cpp's. The expected ids in
//! `tests/fixtures/llama_cpp_tokens.json` were produced by llama.cpp itself
//! (through llama-cpp-python; versions inside the file) with
//! `tests/fixtures/make_llama_cpp_fixtures.py`, not by this code.
#![allow(clippy::unwrap_used)]

mod common;

use shared_model::gguf::Gguf;
use shared_model::tokenizer::{EncodeOptions, Tokenizer};

fn tokenizer() -> Tokenizer {
    let gguf = Gguf::open(common::default_model()).unwrap();
    Tokenizer::from_metadata(&gguf.metadata).unwrap()
}

#[test]
fn token_ids_equal_llama_cpp() {
    let t = tokenizer();
    let fixture = common::fixture("llama_cpp_tokens.json");
    let mut failures = Vec::new();
    let cases = fixture["cases"].as_array().unwrap();
    assert!(
        cases.len() >= 20,
        "the fixture should cover many kinds of text"
    );
    for case in cases {
        let text = case["text"].as_str().unwrap();
        let parse_special = case["parse_special"].as_bool().unwrap();
        let expected = common::ids(&case["ids"]);
        let got = t.encode(
            text,
            EncodeOptions {
                add_special: true,
                parse_special,
            },
        );
        if got != expected {
            failures.push(format!(
                "{}: {text:?}\n  llama.cpp {expected:?}\n  ours      {got:?}",
                case["name"]
            ));
        }
        // Whatever the ids, decoding gives the text back (specials aside).
        if !parse_special {
            assert_eq!(t.decode(&got), text, "{}", case["name"]);
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} differ:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}

#[test]
fn special_tokens_and_stop_rules_match_the_metadata() {
    let t = tokenizer();
    let vocab = &common::fixture("llama_cpp_tokens.json")["vocab"];
    for (name, id) in vocab["special_token_ids"].as_object().unwrap() {
        assert_eq!(t.token_id(name).map(u64::from), id.as_u64(), "{name}");
    }
    assert_eq!(t.bos().map(u64::from), vocab["bos_token_id"].as_u64());
    assert_eq!(t.eos().map(u64::from), vocab["eos_token_id"].as_u64());
    assert_eq!(t.vocab_size() as u64, vocab["n_vocab"].as_u64().unwrap());
    // llama.cpp added no BOS with add_bos=True: neither do we.
    assert!(vocab["add_bos_token"] == false);
    assert_eq!(
        t.encode("Hi", EncodeOptions::TEXT).first(),
        t.token_id("Hi").as_ref()
    );
    assert!(t.is_end_of_generation(t.eos().unwrap()));
    assert!(t.is_end_of_generation(t.token_id("<|im_end|>").unwrap()));
}
