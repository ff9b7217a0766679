use super::*;
use crate::gguf::Value;

fn metadata(pairs: Vec<(&str, Value)>) -> Metadata {
    let mut m = std::collections::BTreeMap::new();
    for (k, v) in pairs {
        m.insert(k.to_owned(), v);
    }
    Metadata::from(m)
}

fn strs(items: &[&str]) -> Value {
    Value::Array(items.iter().map(|s| Value::String((*s).into())).collect())
}

/// A tiny byte-level vocabulary: all 256 byte characters, a few merges and
/// three control tokens.
fn tiny_gpt2() -> Tokenizer {
    let table = bpe_table();
    let mut tokens: Vec<String> = table.iter().map(|c| c.to_string()).collect();
    tokens.extend(["Ġh", "Ġhi", "<|im_start|>", "<|im_end|>", "<s>"].map(String::from));
    let mut types = vec![Value::I32(1); tokens.len()];
    let n = types.len();
    types[n - 3] = Value::I32(3);
    types[n - 2] = Value::I32(3);
    types[n - 1] = Value::I32(3);
    let token_refs: Vec<&str> = tokens.iter().map(String::as_str).collect();
    Tokenizer::from_metadata(&metadata(vec![
        ("tokenizer.ggml.model", Value::String("gpt2".into())),
        ("tokenizer.ggml.pre", Value::String("smollm".into())),
        ("tokenizer.ggml.tokens", strs(&token_refs)),
        ("tokenizer.ggml.token_type", Value::Array(types)),
        ("tokenizer.ggml.merges", strs(&["Ġ h", "Ġh i"])),
        ("tokenizer.ggml.eos_token_id", Value::U32(n as u32 - 2)),
        ("tokenizer.ggml.bos_token_id", Value::U32(n as u32 - 1)),
    ]))
    .unwrap()
}

fn bpe_table() -> Vec<char> {
    (0..=255u8).map(super::bpe::byte_char).collect()
}

#[test]
fn bpe_encodes_merges_and_bytes() {
    let t = tiny_gpt2();
    let hi = t.token_id("Ġhi").unwrap();
    let ids = t.encode("a hi", EncodeOptions::TEXT);
    assert_eq!(ids, vec![t.token_id("a").unwrap(), hi]);
    assert_eq!(t.decode(&ids), "a hi");
    // gpt2 vocabularies add no BOS unless the metadata says so.
    assert_eq!(t.encode("", EncodeOptions::TEXT), Vec::<u32>::new());
}

#[test]
fn control_tokens_are_parsed_only_when_asked() {
    let t = tiny_gpt2();
    let start = t.token_id("<|im_start|>").unwrap();
    let as_text = t.encode("<|im_start|>x", EncodeOptions::TEXT);
    assert!(!as_text.contains(&start));
    assert_eq!(t.decode(&as_text), "<|im_start|>x");
    let parsed = t.encode("<|im_start|>x", EncodeOptions::PROMPT);
    assert_eq!(parsed, vec![start, t.token_id("x").unwrap()]);
    // Control tokens decode to nothing (as llama.cpp renders them by default).
    assert_eq!(t.decode(&parsed), "x");
    assert!(t.is_end_of_generation(t.token_id("<|im_end|>").unwrap()));
    assert!(!t.is_end_of_generation(start));
}

#[test]
fn every_byte_sequence_round_trips() {
    let t = tiny_gpt2();
    for text in ["héllo wörld", "日本語", "👩‍👩‍👧‍👦", "a\u{0}b\u{7f}", "  \t\n x  "]
    {
        let ids = t.encode(text, EncodeOptions::TEXT);
        assert_eq!(t.decode(&ids), text, "{text:?}");
    }
}

#[test]
fn bad_metadata_is_a_typed_error() {
    let err = Tokenizer::from_metadata(&metadata(vec![
        ("tokenizer.ggml.model", Value::String("bert".into())),
        ("tokenizer.ggml.tokens", strs(&["a"])),
    ]))
    .err()
    .unwrap();
    assert!(matches!(err, TokenizerError::UnsupportedModel(m) if m == "bert"));
    let err = Tokenizer::from_metadata(&metadata(vec![
        ("tokenizer.ggml.model", Value::String("gpt2".into())),
        ("tokenizer.ggml.pre", Value::String("qwen2".into())),
        ("tokenizer.ggml.tokens", strs(&["a"])),
        ("tokenizer.ggml.merges", strs(&[])),
    ]))
    .err()
    .unwrap();
    assert!(matches!(err, TokenizerError::UnsupportedPreTokenizer(p) if p == "qwen2"));
    let err = Tokenizer::from_metadata(&metadata(vec![
        ("tokenizer.ggml.model", Value::String("llama".into())),
        ("tokenizer.ggml.tokens", strs(&["a", "b"])),
        ("tokenizer.ggml.eos_token_id", Value::U32(7)),
    ]))
    .err()
    .unwrap();
    assert!(matches!(err, TokenizerError::BadSpecialId { id: 7, .. }));
}

#[test]
fn spm_adds_bos_and_a_space_prefix() {
    let t = Tokenizer::from_metadata(&metadata(vec![
        ("tokenizer.ggml.model", Value::String("llama".into())),
        (
            "tokenizer.ggml.tokens",
            strs(&["<unk>", "<s>", "</s>", "▁", "▁a", "b", "<0x62>"]),
        ),
        (
            "tokenizer.ggml.scores",
            Value::Array(vec![Value::F32(0.0); 7]),
        ),
        (
            "tokenizer.ggml.token_type",
            Value::Array([2, 3, 3, 1, 1, 1, 6].map(Value::I32).to_vec()),
        ),
        ("tokenizer.ggml.bos_token_id", Value::U32(1)),
        ("tokenizer.ggml.eos_token_id", Value::U32(2)),
    ]))
    .unwrap();
    assert_eq!(t.encode("a b", EncodeOptions::TEXT), vec![1, 4, 3, 5]);
    assert_eq!(t.decode(&[1, 4, 3, 5]), " a b");
}
