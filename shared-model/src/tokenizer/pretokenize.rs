//! Pre-tokenisation: splitting text into words before BPE.
//!
//! This reproduces llama.cpp's splitter (`unicode_regex_split`), which is what
//! defines the token ids other tools expect: each expression of a pre-tokenizer
//! splits every piece further, and text between matches stays a piece of its own.
//! The GPT-2 expression
//! `'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+`
//! is implemented by hand, as llama.cpp does, rather than with a regex engine.

use unicode_general_category::{GeneralCategory as Gc, get_general_category};

/// The pre-tokenizers we implement, by `tokenizer.ggml.pre` name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PreTokenizer {
    /// GPT-2's expression alone (`gpt2`, `mpt`, `olmo`, `jais`, …).
    Gpt2,
    /// Every number character on its own, then GPT-2's expression (`smollm`,
    /// `starcoder`, `refact`, `command-r`, `codeshell`, `exaone`, `minerva`).
    DigitsThenGpt2,
}

impl PreTokenizer {
    /// The pre-tokenizer llama.cpp uses for `name`, if we implement it.
    pub fn from_name(name: &str) -> Option<PreTokenizer> {
        match name {
            "gpt2" | "mpt" | "olmo" | "jais" | "trillion" | "granite-docling" => {
                Some(PreTokenizer::Gpt2)
            }
            "smollm" | "starcoder" | "refact" | "command-r" | "codeshell" | "exaone"
            | "minerva" => Some(PreTokenizer::DigitsThenGpt2),
            _ => None,
        }
    }

    /// Splits `text` into words (byte ranges).
    pub fn split<'a>(&self, text: &'a str) -> Vec<&'a str> {
        let chars: Vec<(usize, char)> = text.char_indices().collect();
        // One piece, the whole text, that each expression splits further.
        #[allow(clippy::single_range_in_vec_init)]
        let mut pieces = vec![0..chars.len()];
        if *self == PreTokenizer::DigitsThenGpt2 {
            pieces = pieces
                .into_iter()
                .flat_map(|p| split_numbers(&chars, p))
                .collect();
        }
        let pieces: Vec<_> = pieces
            .into_iter()
            .flat_map(|p| split_gpt2(&chars, p))
            .collect();
        let byte_at = |i: usize| chars.get(i).map_or(text.len(), |&(b, _)| b);
        pieces
            .into_iter()
            .map(|r| &text[byte_at(r.start)..byte_at(r.end)])
            .collect()
    }
}

/// Character classes as llama.cpp's tables define them.
#[derive(Clone, Copy, Default)]
struct Flags {
    letter: bool,
    number: bool,
    whitespace: bool,
}

fn flags(c: char) -> Flags {
    let category = get_general_category(c);
    Flags {
        letter: matches!(
            category,
            Gc::UppercaseLetter
                | Gc::LowercaseLetter
                | Gc::TitlecaseLetter
                | Gc::ModifierLetter
                | Gc::OtherLetter
        ),
        number: matches!(
            category,
            Gc::DecimalNumber | Gc::LetterNumber | Gc::OtherNumber
        ),
        whitespace: is_whitespace(c),
    }
}

/// llama.cpp's whitespace set (`\s`).
fn is_whitespace(c: char) -> bool {
    matches!(
        c,
        '\u{9}'..='\u{D}'
            | ' '
            | '\u{85}'
            | '\u{A0}'
            | '\u{1680}'
            | '\u{2000}'..='\u{200A}'
            | '\u{2028}'
            | '\u{2029}'
            | '\u{202F}'
            | '\u{205F}'
            | '\u{3000}'
    )
}

type Range = std::ops::Range<usize>;

/// `\p{N}`: each number character becomes a piece; the text between stays whole.
fn split_numbers(chars: &[(usize, char)], piece: Range) -> Vec<Range> {
    let mut out = Vec::new();
    let mut start = piece.start;
    for i in piece.clone() {
        if flags(chars[i].1).number {
            if i > start {
                out.push(start..i);
            }
            out.push(i..i + 1);
            start = i + 1;
        }
    }
    if start < piece.end {
        out.push(start..piece.end);
    }
    out
}

/// The GPT-2 expression over one piece, as llama.cpp's
/// `unicode_regex_split_custom_gpt2` evaluates it.
fn split_gpt2(chars: &[(usize, char)], piece: Range) -> Vec<Range> {
    let (begin, end) = (piece.start, piece.end);
    // Outside the piece there is nothing: no character, no flags.
    let cpt = |i: usize| (begin..end).contains(&i).then(|| chars[i].1);
    let fl = |i: usize| cpt(i).map(flags);
    let is_other = |f: Option<Flags>| f.is_some_and(|f| !(f.whitespace || f.letter || f.number));

    let mut out = Vec::new();
    let mut prev = begin;
    let mut pos = begin;
    let mut emit = |to: usize, prev: &mut usize| {
        if to > *prev {
            out.push(*prev..to);
        }
        *prev = to;
    };
    while pos < end {
        let c = chars[pos].1;
        // 's|'t|'re|'ve|'m|'ll|'d
        if c == '\'' {
            let next = cpt(pos + 1);
            if matches!(next, Some('s' | 't' | 'm' | 'd')) {
                pos += 2;
                emit(pos, &mut prev);
                continue;
            }
            if matches!(
                (next, cpt(pos + 2)),
                (Some('r'), Some('e')) | (Some('v'), Some('e')) | (Some('l'), Some('l'))
            ) {
                pos += 3;
                emit(pos, &mut prev);
                continue;
            }
        }
        let f2 = if c == ' ' { fl(pos + 1) } else { fl(pos) };
        // ' ?\p{L}+'
        if f2.is_some_and(|f| f.letter) {
            pos += usize::from(c == ' ');
            while fl(pos).is_some_and(|f| f.letter) {
                pos += 1;
            }
            emit(pos, &mut prev);
            continue;
        }
        // ' ?\p{N}+'
        if f2.is_some_and(|f| f.number) {
            pos += usize::from(c == ' ');
            while fl(pos).is_some_and(|f| f.number) {
                pos += 1;
            }
            emit(pos, &mut prev);
            continue;
        }
        // ' ?[^\s\p{L}\p{N}]+'
        if is_other(f2) {
            pos += usize::from(c == ' ');
            while is_other(fl(pos)) {
                pos += 1;
            }
            emit(pos, &mut prev);
            continue;
        }
        let mut spaces = 0;
        while fl(pos + spaces).is_some_and(|f| f.whitespace) {
            spaces += 1;
        }
        // '\s+(?!\S)': a run of whitespace followed by more text gives up its
        // last character, which then leads the next word.
        if spaces > 1 && cpt(pos + spaces).is_some() {
            pos += spaces - 1;
            emit(pos, &mut prev);
            continue;
        }
        // '\s+'
        if spaces > 0 {
            pos += spaces;
            emit(pos, &mut prev);
            continue;
        }
        pos += 1;
        emit(pos, &mut prev);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(p: PreTokenizer, s: &str) -> Vec<&str> {
        p.split(s)
    }

    #[test]
    fn gpt2_words_keep_their_leading_space() {
        assert_eq!(
            split(PreTokenizer::Gpt2, "Hello world!"),
            ["Hello", " world", "!"]
        );
        assert_eq!(split(PreTokenizer::Gpt2, "I'm here"), ["I", "'m", " here"]);
        assert_eq!(split(PreTokenizer::Gpt2, "a   b"), ["a", "  ", " b"]);
        assert_eq!(split(PreTokenizer::Gpt2, "end  "), ["end", "  "]);
        // Only a literal space may lead a word; a newline stays apart.
        assert_eq!(split(PreTokenizer::Gpt2, "x\n\ny"), ["x", "\n", "\n", "y"]);
        assert_eq!(split(PreTokenizer::Gpt2, "12 345"), ["12", " 345"]);
    }

    #[test]
    fn smollm_splits_every_digit() {
        assert_eq!(
            split(PreTokenizer::DigitsThenGpt2, "in 2026!"),
            ["in", " ", "2", "0", "2", "6", "!"]
        );
        assert_eq!(split(PreTokenizer::DigitsThenGpt2, "x²"), ["x", "²"]);
    }

    #[test]
    fn marks_are_not_letters() {
        // Devanagari virama (Mn) breaks a letter run, as in llama.cpp.
        assert_eq!(split(PreTokenizer::Gpt2, "नमस्ते"), ["नमस", "्", "त", "े"]);
    }

    #[test]
    fn the_pieces_always_cover_the_text() {
        for s in ["", " ", "  a  ", "'s'", "🎉🎉 x", "a\u{3000}b", "\t\t\n"] {
            assert_eq!(split(PreTokenizer::DigitsThenGpt2, s).concat(), s);
        }
    }
}
