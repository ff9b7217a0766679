//! The two merge algorithms: GPT-2 byte-level BPE (merges by rank) and
//! SentencePiece BPE (merges by score, byte fallback).
//!
//! Both keep symbols in a linked list and candidate pairs in a heap, so a word of
//! n characters costs O(n log n) even when it is one long run of a character.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::sync::OnceLock;

use super::TokenizerError;

/// GPT-2's reversible map from bytes to printable characters: printable
/// Latin-1 bytes stand for themselves, the others are moved to U+0100 and up.
fn byte_to_char() -> &'static [char; 256] {
    static TABLE: OnceLock<[char; 256]> = OnceLock::new();
    TABLE.get_or_init(|| {
        let mut table = ['\0'; 256];
        let mut next = 256u32;
        for b in 0..=255u8 {
            let printable = matches!(b, b'!'..=b'~' | 0xa1..=0xac | 0xae..=0xff);
            table[b as usize] = if printable {
                char::from(b)
            } else {
                next += 1;
                char::from_u32(next - 1).unwrap_or('\0')
            };
        }
        table
    })
}

/// The character byte `b` is written as in byte-level token texts.
#[cfg(test)]
pub(super) fn byte_char(b: u8) -> char {
    byte_to_char()[b as usize]
}

fn char_to_byte() -> &'static HashMap<char, u8> {
    static TABLE: OnceLock<HashMap<char, u8>> = OnceLock::new();
    TABLE.get_or_init(|| {
        byte_to_char()
            .iter()
            .enumerate()
            .map(|(b, &c)| (c, b as u8))
            .collect()
    })
}

/// The bytes a byte-level token text stands for.
pub(super) fn byte_decode(text: &str) -> Vec<u8> {
    let table = char_to_byte();
    // Characters outside the map (not produced by byte-level vocabularies) are
    // passed through as their UTF-8.
    let mut out = Vec::with_capacity(text.len());
    for c in text.chars() {
        match table.get(&c) {
            Some(&b) => out.push(b),
            None => out.extend(c.to_string().as_bytes()),
        }
    }
    out
}

/// Symbol ids beyond the vocabulary stand for merge results that are not tokens.
pub(super) struct Merges {
    /// (left, right) → (rank, merged).
    pairs: HashMap<(u32, u32), (u32, u32)>,
    n_vocab: u32,
}

impl Merges {
    pub(super) fn new(
        ids: &HashMap<String, u32>,
        n_vocab: usize,
        merges: &[String],
    ) -> Result<Merges, TokenizerError> {
        let mut m = Merges {
            pairs: HashMap::with_capacity(merges.len()),
            n_vocab: n_vocab as u32,
        };
        let mut extra_ids: HashMap<String, u32> = HashMap::new();
        let mut id_of = |text: &str, m: &mut Merges| -> u32 {
            if let Some(&id) = ids.get(text) {
                return id;
            }
            let next = m.n_vocab + extra_ids.len() as u32;
            *extra_ids.entry(text.to_owned()).or_insert(next)
        };
        for (rank, line) in merges.iter().enumerate() {
            // "left right"; a leading space belongs to the left part (llama.cpp).
            let split = line.bytes().skip(1).position(|b| b == b' ').map(|i| i + 1);
            let Some(split) = split else {
                return Err(TokenizerError::BadEntry {
                    key: "tokenizer.ggml.merges",
                    index: rank,
                });
            };
            let (left, right) = (&line[..split], &line[split + 1..]);
            let l = id_of(left, &mut m);
            let r = id_of(right, &mut m);
            let merged = id_of(&format!("{left}{right}"), &mut m);
            // The first (best-ranked) occurrence of a pair counts.
            m.pairs.entry((l, r)).or_insert((rank as u32, merged));
        }
        Ok(m)
    }

    /// BPE-encodes one pre-tokenized word, appending token ids.
    pub(super) fn encode_word(&self, word: &str, ids: &HashMap<String, u32>, out: &mut Vec<u32>) {
        let table = byte_to_char();
        let encoded: String = word.bytes().map(|b| table[b as usize]).collect();
        // Each symbol starts as one character of the byte-encoded word.
        let mut symbols: Vec<Symbol> = encoded
            .chars()
            .map(|c| {
                let mut buf = [0u8; 4];
                Symbol {
                    id: ids.get(&*c.encode_utf8(&mut buf)).copied(),
                    text: c.to_string(),
                    prev: None,
                    next: None,
                }
            })
            .collect();
        link(&mut symbols);

        let mut heap = BinaryHeap::new();
        let push = |heap: &mut BinaryHeap<_>, symbols: &[Symbol], left: usize| {
            let Some(right) = symbols[left].next else {
                return;
            };
            if let (Some(l), Some(r)) = (symbols[left].id, symbols[right].id)
                && let Some(&(rank, merged)) = self.pairs.get(&(l, r))
            {
                heap.push(Reverse((rank, left, right, l, r, merged)));
            }
        };
        for i in 0..symbols.len() {
            push(&mut heap, &symbols, i);
        }
        while let Some(Reverse((_, left, right, l, r, merged))) = heap.pop() {
            // Stale: one side was merged away since this pair was queued.
            if symbols[left].id != Some(l)
                || symbols[right].id != Some(r)
                || symbols[left].next != Some(right)
            {
                continue;
            }
            let right_text = std::mem::take(&mut symbols[right].text);
            symbols[left].text.push_str(&right_text);
            symbols[left].id = Some(merged);
            symbols[right].id = None;
            let after = symbols[right].next;
            symbols[left].next = after;
            if let Some(a) = after {
                symbols[a].prev = Some(left);
            }
            if let Some(p) = symbols[left].prev {
                push(&mut heap, &symbols, p);
            }
            push(&mut heap, &symbols, left);
        }

        let mut at = (!symbols.is_empty()).then_some(0);
        while let Some(i) = at {
            let s = &symbols[i];
            match s.id {
                Some(id) if id < self.n_vocab => out.push(id),
                _ => {
                    // Not a token: fall back to single-byte tokens where they exist.
                    for b in s.text.bytes() {
                        if let Some(&id) = std::str::from_utf8(&[b]).ok().and_then(|t| ids.get(t)) {
                            out.push(id);
                        }
                    }
                }
            }
            at = s.next;
        }
    }
}

struct Symbol {
    id: Option<u32>,
    text: String,
    prev: Option<usize>,
    next: Option<usize>,
}

fn link(symbols: &mut [Symbol]) {
    let n = symbols.len();
    for (i, s) in symbols.iter_mut().enumerate() {
        s.prev = i.checked_sub(1);
        s.next = (i + 1 < n).then_some(i + 1);
    }
}

/// Heap key for SentencePiece merges: highest score first, then leftmost.
#[derive(PartialEq)]
struct SpmCandidate {
    score: f32,
    left: usize,
    right: usize,
    len: usize,
}

impl Eq for SpmCandidate {}

impl Ord for SpmCandidate {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.score
            .total_cmp(&other.score)
            .then_with(|| other.left.cmp(&self.left))
    }
}

impl PartialOrd for SpmCandidate {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

/// SentencePiece BPE as llama.cpp's `llm_tokenizer_spm` does it: merge the
/// adjacent pair whose concatenation is a token with the highest score; what
/// never becomes a token is emitted as `<0xXX>` byte tokens.
pub(super) fn encode_spm(
    text: &str,
    ids: &HashMap<String, u32>,
    scores: &[f32],
    out: &mut Vec<u32>,
) {
    // Symbols are byte ranges of `text`, one character each to start.
    let mut starts: Vec<usize> = text.char_indices().map(|(i, _)| i).collect();
    let mut lens: Vec<usize> = starts.windows(2).map(|w| w[1] - w[0]).collect();
    if let Some(&last) = starts.last() {
        lens.push(text.len() - last);
    }
    let n = starts.len();
    let mut prev: Vec<Option<usize>> = (0..n).map(|i| i.checked_sub(1)).collect();
    let mut next: Vec<Option<usize>> = (0..n).map(|i| (i + 1 < n).then_some(i + 1)).collect();

    let mut heap = BinaryHeap::new();
    let try_pair = |heap: &mut BinaryHeap<SpmCandidate>,
                    starts: &[usize],
                    lens: &[usize],
                    left: Option<usize>,
                    right: Option<usize>| {
        let (Some(left), Some(right)) = (left, right) else {
            return;
        };
        let len = lens[left] + lens[right];
        let piece = &text[starts[left]..starts[left] + len];
        if let Some(&id) = ids.get(piece) {
            heap.push(SpmCandidate {
                score: scores[id as usize],
                left,
                right,
                len,
            });
        }
    };
    for i in 1..n {
        try_pair(&mut heap, &starts, &lens, Some(i - 1), Some(i));
    }
    while let Some(c) = heap.pop() {
        if lens[c.left] == 0 || lens[c.right] == 0 || lens[c.left] + lens[c.right] != c.len {
            continue;
        }
        lens[c.left] += lens[c.right];
        lens[c.right] = 0;
        next[c.left] = next[c.right];
        if let Some(after) = next[c.right] {
            prev[after] = Some(c.left);
        }
        try_pair(&mut heap, &starts, &lens, prev[c.left], Some(c.left));
        try_pair(&mut heap, &starts, &lens, Some(c.left), next[c.left]);
    }
    starts.truncate(n);
    let mut at = (n > 0).then_some(0);
    while let Some(i) = at {
        let piece = &text[starts[i]..starts[i] + lens[i]];
        match ids.get(piece) {
            Some(&id) => out.push(id),
            None => {
                for b in piece.bytes() {
                    let byte_token = format!("<0x{b:02X}>");
                    if let Some(&id) = ids.get(&byte_token) {
                        out.push(id);
                    }
                }
            }
        }
        at = next[i];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_byte_map_is_gpt2s() {
        let t = byte_to_char();
        assert_eq!(t[b' ' as usize], 'Ġ');
        assert_eq!(t[b'\n' as usize], 'Ċ');
        assert_eq!(t[b'a' as usize], 'a');
        assert_eq!(t[0xad], 'Ń');
        for b in 0..=255u8 {
            assert_eq!(byte_decode(&t[b as usize].to_string()), vec![b]);
        }
    }

    fn vocab(tokens: &[&str]) -> HashMap<String, u32> {
        tokens
            .iter()
            .enumerate()
            .map(|(i, t)| (t.to_string(), i as u32))
            .collect()
    }

    #[test]
    fn merges_apply_by_rank_not_by_position() {
        let ids = vocab(&["a", "b", "c", "ab", "bc", "abc"]);
        // "b c" outranks "a b": "abc" → a + bc → (no "a bc" merge) → [a, bc].
        let merges = Merges::new(&ids, 6, &["b c".into(), "a b".into()]).unwrap();
        let mut out = vec![];
        merges.encode_word("abc", &ids, &mut out);
        assert_eq!(out, vec![0, 4]);
        let merges = Merges::new(&ids, 6, &["a b".into(), "ab c".into()]).unwrap();
        out.clear();
        merges.encode_word("abc", &ids, &mut out);
        assert_eq!(out, vec![5]);
    }

    #[test]
    fn long_runs_are_fast_and_exact() {
        let ids = vocab(&["a", "aa", "aaaa"]);
        let merges = Merges::new(&ids, 3, &["a a".into(), "aa aa".into()]).unwrap();
        let mut out = vec![];
        merges.encode_word(&"a".repeat(100_001), &ids, &mut out);
        assert_eq!(out.len(), 25_000 + 1);
        assert_eq!(out.last(), Some(&0));
    }

    #[test]
    fn spm_merges_by_score_and_falls_back_to_bytes() {
        let ids = vocab(&["▁", "h", "i", "▁h", "hi", "▁hi", "<0xC3>", "<0xA9>"]);
        let scores = [0.0, 0.0, 0.0, -1.0, -2.0, -0.5, 0.0, 0.0];
        let mut out = vec![];
        encode_spm("▁hi", &ids, &scores, &mut out);
        assert_eq!(out, vec![5]);
        out.clear();
        encode_spm("é", &ids, &scores, &mut out);
        assert_eq!(out, vec![6, 7]);
    }
}
