//! The tokenizer, built from a GGUF file's `tokenizer.ggml.*` metadata.
//!
//! Two vocabulary kinds: GPT-2 style byte-level BPE (`gpt2`, with the
//! pre-tokenizer named by `tokenizer.ggml.pre`) and SentencePiece-style
//! (`llama`, merges by score with byte fallback). Token ids are the ones
//! llama.cpp produces with its defaults, which is what other tools compare with.
//!
//! Text in, ids out ([`Tokenizer::encode`]); ids in, bytes out
//! ([`Tokenizer::token_bytes`]), and a [`StreamDecoder`] that turns a stream of
//! tokens into valid UTF-8 even when a token ends in the middle of a character.

mod bpe;
mod pretokenize;
mod stream;

use std::collections::HashMap;

use thiserror::Error;

use crate::gguf::{Metadata, Value};

pub use pretokenize::PreTokenizer;
pub use stream::StreamDecoder;

/// Why a tokenizer could not be built from metadata.
#[derive(Debug, Error)]
pub enum TokenizerError {
    /// A required key is missing or has the wrong type.
    #[error(transparent)]
    Metadata(#[from] crate::gguf::GgufError),
    /// A vocabulary kind we do not implement.
    #[error("tokenizer model `{0}` is not supported (gpt2 and llama are)")]
    UnsupportedModel(String),
    /// A pre-tokenizer we do not implement.
    #[error("pre-tokenizer `{0}` is not supported")]
    UnsupportedPreTokenizer(String),
    /// An entry of a metadata array has the wrong type or value.
    #[error("tokenizer metadata {key}[{index}] is invalid")]
    BadEntry {
        /// The array.
        key: &'static str,
        /// The entry.
        index: usize,
    },
    /// A special token id outside the vocabulary.
    #[error("{key} = {id} is outside the vocabulary of {n_vocab}")]
    BadSpecialId {
        /// The key.
        key: &'static str,
        /// The id.
        id: u64,
        /// Vocabulary size.
        n_vocab: usize,
    },
    /// An empty vocabulary.
    #[error("the vocabulary is empty")]
    EmptyVocabulary,
}

/// llama.cpp's token types (`tokenizer.ggml.token_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenType {
    /// Ordinary text.
    Normal,
    /// The unknown token.
    Unknown,
    /// Control tokens (BOS, EOS, chat markup): text only when asked for.
    Control,
    /// Added by the model author; always matched in text.
    UserDefined,
    /// Reserved, never produced.
    Unused,
    /// A raw byte (`<0x41>`) in SentencePiece vocabularies.
    Byte,
}

impl TokenType {
    fn from_id(id: i64) -> Option<TokenType> {
        Some(match id {
            1 => TokenType::Normal,
            2 => TokenType::Unknown,
            3 => TokenType::Control,
            4 => TokenType::UserDefined,
            5 => TokenType::Unused,
            6 => TokenType::Byte,
            _ => return None,
        })
    }
}

/// How to encode text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EncodeOptions {
    /// Add BOS/EOS where the model's metadata says to.
    pub add_special: bool,
    /// Recognise the text of control tokens (e.g. `<|im_start|>`) as those tokens.
    /// User-defined tokens are always recognised, as in llama.cpp.
    pub parse_special: bool,
}

impl EncodeOptions {
    /// llama.cpp's defaults for plain text: specials added per metadata, markup
    /// left as text.
    pub const TEXT: EncodeOptions = EncodeOptions {
        add_special: true,
        parse_special: false,
    };
    /// For prompts: as [`EncodeOptions::TEXT`], but chat markup becomes tokens.
    pub const PROMPT: EncodeOptions = EncodeOptions {
        add_special: true,
        parse_special: true,
    };
}

enum Kind {
    Bpe(bpe::Merges, PreTokenizer),
    Spm {
        scores: Vec<f32>,
        add_space_prefix: bool,
    },
}

/// A tokenizer for one model.
pub struct Tokenizer {
    kind: Kind,
    tokens: Vec<String>,
    types: Vec<TokenType>,
    ids: HashMap<String, u32>,
    /// Control, user-defined and unknown tokens, longest text first.
    specials: Vec<u32>,
    bos: Option<u32>,
    eos: Option<u32>,
    add_bos: bool,
    add_eos: bool,
    end_of_generation: Vec<u32>,
}

fn strings(m: &Metadata, key: &'static str) -> Result<Vec<String>, TokenizerError> {
    m.array(key)?
        .iter()
        .enumerate()
        .map(|(index, v)| {
            v.as_str()
                .map(str::to_owned)
                .ok_or(TokenizerError::BadEntry { key, index })
        })
        .collect()
}

impl Tokenizer {
    /// Builds the tokenizer that `metadata` describes.
    pub fn from_metadata(m: &Metadata) -> Result<Tokenizer, TokenizerError> {
        let model = m.str("tokenizer.ggml.model")?;
        let tokens = strings(m, "tokenizer.ggml.tokens")?;
        if tokens.is_empty() {
            return Err(TokenizerError::EmptyVocabulary);
        }
        let n = tokens.len();
        let types = match m.get("tokenizer.ggml.token_type") {
            None => vec![TokenType::Normal; n],
            Some(_) => {
                const KEY: &str = "tokenizer.ggml.token_type";
                let raw = m.array(KEY)?;
                if raw.len() != n {
                    return Err(TokenizerError::BadEntry {
                        key: KEY,
                        index: raw.len().min(n),
                    });
                }
                raw.iter()
                    .enumerate()
                    .map(|(index, v)| {
                        integer(v)
                            .and_then(TokenType::from_id)
                            .ok_or(TokenizerError::BadEntry { key: KEY, index })
                    })
                    .collect::<Result<_, _>>()?
            }
        };
        let mut ids = HashMap::with_capacity(n);
        for (i, t) in tokens.iter().enumerate() {
            // On duplicates the first id wins, as in llama.cpp.
            ids.entry(t.clone()).or_insert(i as u32);
        }

        let kind = match model {
            "gpt2" => {
                let pre_name = match m.get("tokenizer.ggml.pre") {
                    Some(v) => v.as_str().unwrap_or("default"),
                    None => "default",
                };
                let pre = PreTokenizer::from_name(pre_name)
                    .ok_or_else(|| TokenizerError::UnsupportedPreTokenizer(pre_name.to_owned()))?;
                let merges = strings(m, "tokenizer.ggml.merges")?;
                Kind::Bpe(bpe::Merges::new(&ids, n, &merges)?, pre)
            }
            "llama" => {
                const KEY: &str = "tokenizer.ggml.scores";
                let scores: Vec<f32> = match m.get(KEY) {
                    None => vec![0.0; n],
                    Some(_) => m
                        .array(KEY)?
                        .iter()
                        .enumerate()
                        .map(|(index, v)| {
                            v.as_f64()
                                .map(|s| s as f32)
                                .ok_or(TokenizerError::BadEntry { key: KEY, index })
                        })
                        .collect::<Result<_, _>>()?,
                };
                if scores.len() != n {
                    return Err(TokenizerError::BadEntry {
                        key: KEY,
                        index: scores.len().min(n),
                    });
                }
                let add_space_prefix = flag(m, "tokenizer.ggml.add_space_prefix").unwrap_or(true);
                Kind::Spm {
                    scores,
                    add_space_prefix,
                }
            }
            other => return Err(TokenizerError::UnsupportedModel(other.to_owned())),
        };

        let special_id = |key: &'static str| -> Result<Option<u32>, TokenizerError> {
            match m.get(key).and_then(Value::as_u64) {
                None => Ok(None),
                Some(id) if (id as usize) < n => Ok(Some(id as u32)),
                Some(id) => Err(TokenizerError::BadSpecialId {
                    key,
                    id,
                    n_vocab: n,
                }),
            }
        };
        let bos = special_id("tokenizer.ggml.bos_token_id")?;
        let eos = special_id("tokenizer.ggml.eos_token_id")?;
        let eot = special_id("tokenizer.ggml.eot_token_id")?;
        let eom = special_id("tokenizer.ggml.eom_token_id")?;
        // llama.cpp adds BOS by default for SentencePiece vocabularies only.
        let add_bos =
            flag(m, "tokenizer.ggml.add_bos_token").unwrap_or(matches!(kind, Kind::Spm { .. }));
        let add_eos = flag(m, "tokenizer.ggml.add_eos_token").unwrap_or(false);

        let mut specials: Vec<u32> = (0..n as u32)
            .filter(|&i| {
                matches!(
                    types[i as usize],
                    TokenType::Control | TokenType::UserDefined | TokenType::Unknown
                ) && !tokens[i as usize].is_empty()
            })
            .collect();
        specials.sort_by_key(|&i| std::cmp::Reverse(tokens[i as usize].len()));

        // End-of-generation: EOS/EOT/EOM plus the control tokens that chat
        // templates end turns with (llama.cpp's list).
        const EOG_TEXTS: [&str; 8] = [
            "<|eot_id|>",
            "<|im_end|>",
            "<|end|>",
            "<end_of_turn>",
            "<|endoftext|>",
            "<EOT>",
            "_<EOT>",
            "<|end▁of▁sentence|>",
        ];
        let mut end_of_generation: Vec<u32> = [eos, eot, eom].into_iter().flatten().collect();
        for text in EOG_TEXTS {
            if let Some(&id) = ids.get(text)
                && types[id as usize] == TokenType::Control
                && !end_of_generation.contains(&id)
            {
                end_of_generation.push(id);
            }
        }

        Ok(Tokenizer {
            kind,
            tokens,
            types,
            ids,
            specials,
            bos,
            eos,
            add_bos,
            add_eos,
            end_of_generation,
        })
    }

    /// Number of tokens in the vocabulary.
    pub fn vocab_size(&self) -> usize {
        self.tokens.len()
    }

    /// The BOS token, if the vocabulary has one.
    pub fn bos(&self) -> Option<u32> {
        self.bos
    }

    /// The EOS token, if the vocabulary has one.
    pub fn eos(&self) -> Option<u32> {
        self.eos
    }

    /// Whether generation stops at `id`.
    pub fn is_end_of_generation(&self, id: u32) -> bool {
        self.end_of_generation.contains(&id)
    }

    /// Whether `other` has the same tokens under the same ids (a draft model
    /// must, for its drafts to mean anything to the target).
    pub fn same_vocabulary(&self, other: &Tokenizer) -> bool {
        self.tokens == other.tokens
    }

    /// The tokens generation stops at (end of text, end of turn).
    pub fn end_of_generation_tokens(&self) -> Vec<u32> {
        self.end_of_generation.clone()
    }

    /// The id of the token whose text is exactly `text`.
    pub fn token_id(&self, text: &str) -> Option<u32> {
        self.ids.get(text).copied()
    }

    /// The vocabulary entry of `id` (in the vocabulary's own spelling).
    pub fn token_text(&self, id: u32) -> Option<&str> {
        self.tokens.get(id as usize).map(String::as_str)
    }

    /// The type of token `id`.
    pub fn token_type(&self, id: u32) -> Option<TokenType> {
        self.types.get(id as usize).copied()
    }

    /// Encodes `text` into token ids.
    pub fn encode(&self, text: &str, options: EncodeOptions) -> Vec<u32> {
        let mut out = Vec::new();
        if options.add_special
            && self.add_bos
            && let Some(bos) = self.bos
        {
            out.push(bos);
        }
        let mut prev_was_special = true;
        for fragment in self.partition(text, options.parse_special) {
            match fragment {
                Fragment::Token(id) => {
                    out.push(id);
                    prev_was_special = true;
                }
                Fragment::Text(t) => {
                    self.encode_text(t, prev_was_special, &mut out);
                    prev_was_special = false;
                }
            }
        }
        if options.add_special
            && self.add_eos
            && let Some(eos) = self.eos
        {
            out.push(eos);
        }
        out
    }

    fn encode_text(&self, text: &str, after_special: bool, out: &mut Vec<u32>) {
        match &self.kind {
            Kind::Bpe(merges, pre) => {
                for word in pre.split(text) {
                    merges.encode_word(word, &self.ids, out);
                }
            }
            Kind::Spm {
                scores,
                add_space_prefix,
            } => {
                let mut s = String::with_capacity(text.len() + 3);
                if *add_space_prefix && after_special {
                    s.push(' ');
                }
                s.push_str(text);
                let s = s.replace(' ', "\u{2581}");
                bpe::encode_spm(&s, &self.ids, scores, out);
            }
        }
    }

    /// Splits `text` at special tokens (longest first), as llama.cpp's
    /// `tokenizer_st_partition` does.
    fn partition<'a>(&self, text: &'a str, parse_special: bool) -> Vec<Fragment<'a>> {
        let mut fragments = vec![Fragment::Text(text)];
        for &id in &self.specials {
            let ty = self.types[id as usize];
            if !parse_special && matches!(ty, TokenType::Control | TokenType::Unknown) {
                continue;
            }
            let special = self.tokens[id as usize].as_str();
            let mut next = Vec::with_capacity(fragments.len());
            for fragment in fragments {
                let Fragment::Text(mut rest) = fragment else {
                    next.push(fragment);
                    continue;
                };
                while let Some(at) = rest.find(special) {
                    if at > 0 {
                        next.push(Fragment::Text(&rest[..at]));
                    }
                    next.push(Fragment::Token(id));
                    rest = &rest[at + special.len()..];
                }
                if !rest.is_empty() {
                    next.push(Fragment::Text(rest));
                }
            }
            fragments = next;
        }
        fragments
    }

    /// The bytes token `id` stands for. Control tokens give their text only when
    /// `specials` is set; unknown ids give nothing.
    pub fn token_bytes(&self, id: u32, specials: bool) -> Vec<u8> {
        let (Some(text), Some(ty)) = (self.token_text(id), self.token_type(id)) else {
            return Vec::new();
        };
        match ty {
            TokenType::Control | TokenType::Unknown | TokenType::Unused if !specials => Vec::new(),
            TokenType::Control
            | TokenType::Unknown
            | TokenType::Unused
            | TokenType::UserDefined => text.as_bytes().to_vec(),
            TokenType::Byte => parse_byte_token(text).map(|b| vec![b]).unwrap_or_default(),
            TokenType::Normal => match self.kind {
                Kind::Bpe(..) => bpe::byte_decode(text),
                Kind::Spm { .. } => text.replace('\u{2581}', " ").into_bytes(),
            },
        }
    }

    /// Decodes ids to text, replacing invalid UTF-8 with U+FFFD.
    pub fn decode(&self, ids: &[u32]) -> String {
        let mut decoder = StreamDecoder::default();
        let mut out = String::new();
        for &id in ids {
            out.push_str(&decoder.push(&self.token_bytes(id, false)));
        }
        out.push_str(&decoder.finish());
        out
    }
}

enum Fragment<'a> {
    Text(&'a str),
    Token(u32),
}

fn integer(v: &Value) -> Option<i64> {
    match *v {
        Value::I32(x) => Some(x.into()),
        Value::I64(x) => Some(x),
        _ => v.as_u64().and_then(|x| i64::try_from(x).ok()),
    }
}

fn flag(m: &Metadata, key: &str) -> Option<bool> {
    m.get(key).and_then(Value::as_bool)
}

/// `<0x41>` → 0x41.
fn parse_byte_token(text: &str) -> Option<u8> {
    let hex = text.strip_prefix("<0x")?.strip_suffix('>')?;
    u8::from_str_radix(hex, 16).ok()
}

#[cfg(test)]
mod tests;
