//! Generated text as it streams, with stop strings.
//!
//! A stop string can be split across tokens ("<|" then "end|>"), so text that
//! could still be the start of one is held back until the next tokens rule it
//! out; the stop string itself and everything after it is never emitted.

use crate::tokenizer::StreamDecoder;

/// Text released by one [`TextStream::push`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TextChunk {
    /// Text that can be shown now.
    pub text: String,
    /// Whether a stop string was found: the stream is over.
    pub stopped: bool,
}

/// Turns token bytes into text, holding back what could start a stop string.
#[derive(Debug, Clone, Default)]
pub struct TextStream {
    decoder: StreamDecoder,
    stops: Vec<String>,
    /// Complete text not yet released: the longest suffix that is a prefix of a stop string.
    held: String,
    stopped: bool,
}

impl TextStream {
    /// A stream that stops at any of `stops` (empty strings are ignored).
    pub fn new(stops: Vec<String>) -> Self {
        TextStream {
            stops: stops.into_iter().filter(|s| !s.is_empty()).collect(),
            ..Default::default()
        }
    }

    /// Whether a stop string was found.
    pub fn stopped(&self) -> bool {
        self.stopped
    }

    /// Whether some text is held back (it may still turn out to be a stop string).
    pub fn is_holding(&self) -> bool {
        !self.held.is_empty()
    }

    /// Adds the bytes of the next token.
    pub fn push(&mut self, bytes: &[u8]) -> TextChunk {
        if self.stopped {
            return TextChunk {
                text: String::new(),
                stopped: true,
            };
        }
        self.held.push_str(&self.decoder.push(bytes));
        let first_stop = self
            .stops
            .iter()
            .filter_map(|s| self.held.find(s.as_str()))
            .min();
        if let Some(at) = first_stop {
            let text = self.held[..at].to_owned();
            self.held.clear();
            self.stopped = true;
            return TextChunk {
                text,
                stopped: true,
            };
        }
        let keep = self.partial_stop_suffix();
        let text = self.held[..self.held.len() - keep].to_owned();
        self.held.drain(..self.held.len() - keep);
        TextChunk {
            text,
            stopped: false,
        }
    }

    /// Ends the stream: releases what was held back (nothing after a stop).
    pub fn finish(&mut self) -> String {
        if self.stopped {
            return String::new();
        }
        let mut rest = std::mem::take(&mut self.held);
        rest.push_str(&self.decoder.finish());
        rest
    }

    /// Length in bytes of the longest suffix of `held` that begins some stop string.
    fn partial_stop_suffix(&self) -> usize {
        let held = self.held.as_str();
        let mut longest = 0;
        for stop in &self.stops {
            // Suffixes of `held` shorter than `stop`, longest first.
            let max = held.len().min(stop.len() - 1);
            for len in (longest + 1..=max).rev() {
                let start = held.len() - len;
                if held.is_char_boundary(start) && stop.starts_with(&held[start..]) {
                    longest = len;
                    break;
                }
            }
        }
        longest
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(stops: &[&str], pieces: &[&str]) -> (Vec<String>, bool, String) {
        let mut s = TextStream::new(stops.iter().map(|s| (*s).to_owned()).collect());
        let mut out = Vec::new();
        for p in pieces {
            let c = s.push(p.as_bytes());
            out.push(c.text);
            if c.stopped {
                return (out, true, s.finish());
            }
        }
        (out, false, s.finish())
    }

    #[test]
    fn a_stop_string_split_across_tokens_is_never_emitted() {
        let (out, stopped, rest) = run(&["END"], &["Hello E", "N", "D and more"]);
        assert_eq!(out, vec!["Hello ", "", ""]);
        assert!(stopped);
        assert_eq!(rest, "");
    }

    #[test]
    fn held_text_is_released_once_ruled_out() {
        let (out, stopped, rest) = run(&["END"], &["Hello E", "N", "d!"]);
        assert_eq!(out, vec!["Hello ", "", "ENd!"]);
        assert!(!stopped);
        assert_eq!(rest, "");
        // Held at the end of the stream: released by finish.
        let (out, _, rest) = run(&["\n\n"], &["a\n"]);
        assert_eq!((out, rest.as_str()), (vec!["a".to_owned()], "\n"));
    }

    #[test]
    fn the_earliest_of_several_stops_wins_and_text_before_it_is_kept() {
        let (out, stopped, _) = run(&["world", "lo w"], &["hello world"]);
        assert_eq!(out, vec!["hel"]);
        assert!(stopped);
    }

    #[test]
    fn multibyte_characters_are_handled_at_char_boundaries() {
        let mut s = TextStream::new(vec!["é!".to_owned()]);
        let bytes = "aé!".as_bytes();
        assert_eq!(s.push(&bytes[..2]).text, "a");
        let c = s.push(&bytes[2..3]);
        assert_eq!((c.text.as_str(), c.stopped), ("", false));
        assert!(s.is_holding());
        let c = s.push(&bytes[3..]);
        assert!(c.stopped);
        assert_eq!(c.text, "");
        let mut plain = TextStream::new(vec![]);
        assert_eq!(plain.push("日本".as_bytes()).text, "日本");
    }
}
