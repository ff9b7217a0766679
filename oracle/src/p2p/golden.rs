//! Golden tickets: rounds whose verified continuation the oracle already
//! knows (finished greedy answers), slipped to scouts as ordinary work. A
//! scout cannot tell them apart, and scoring them costs the oracle no forward
//! pass. A run is pure logic: requests out, drafts in, a verdict at the end.
//!
//! The verdict judges honesty, not skill. A small honest draft model often
//! misses the target's exact token (a 6-layer cut of the default model matches
//! it about 2% of the time) but drafts *likely* tokens; garbage does not. So
//! each round's first drafted token — the only one drafted from the true
//! context — is checked against the target's 20 most likely tokens at that
//! position, recorded when the answer was generated: a run passes when any
//! draft was accepted outright or any round began with a likely token.
//! Measured on the default model (2026-11-23, tickets from 32-token answers):
//! honest scouts with a 6-layer cut passed 51 of 59 tickets, with a 12-layer
//! cut 58 of 58 (with 4 rounds and "half the rounds likely" they had passed
//! 1 in 5 and got banned); a garbage scout failed 3 of 3 and was banned.
//! Random tokens from a 49,152-token vocabulary land among the top 20 about
//! once in 2,500 rounds, so garbage passes about one ticket in 300.

use std::collections::VecDeque;

use shared_proto::pb;

/// Rounds in one ticket run (more rounds, more evidence; see the module docs).
const ROUNDS: u32 = 8;
/// Drafts asked for per round.
const K: usize = 4;

/// A prompt and its verified greedy continuation.
#[derive(Debug, Clone)]
pub(crate) struct Ticket {
    pub(crate) prompt: Vec<u32>,
    pub(crate) known: Vec<u32>,
    /// The target's most likely tokens at each position of `known`.
    pub(crate) likely: Vec<Vec<u32>>,
}

/// The most recent tickets, handed out in turn.
#[derive(Debug)]
pub(crate) struct TicketBook {
    tickets: VecDeque<Ticket>,
    capacity: usize,
    next: usize,
}

impl TicketBook {
    pub(crate) fn new(capacity: usize) -> Self {
        TicketBook {
            tickets: VecDeque::new(),
            capacity: capacity.max(1),
            next: 0,
        }
    }

    /// Keeps a finished greedy answer, with the target's likely tokens at
    /// each of its positions, as a ticket.
    pub(crate) fn add(&mut self, prompt: Vec<u32>, mut known: Vec<u32>, likely: Vec<Vec<u32>>) {
        // Positions without alternatives (an end token never delivered) are cut.
        known.truncate(likely.len());
        if known.len() < K + 1 {
            return;
        }
        if self.tickets.len() == self.capacity {
            self.tickets.pop_front();
        }
        self.tickets.push_back(Ticket {
            prompt,
            known,
            likely,
        });
    }

    /// The next ticket, round robin.
    pub(crate) fn pick(&mut self) -> Option<Ticket> {
        if self.tickets.is_empty() {
            return None;
        }
        self.next = (self.next + 1) % self.tickets.len();
        self.tickets.get(self.next).cloned()
    }
}

/// One scout working one ticket.
#[derive(Debug)]
pub(crate) struct GoldenRun {
    ticket: Ticket,
    work_cid: Vec<u8>,
    session_id: u64,
    round: u32,
    /// Known tokens the scout has been given.
    given: usize,
    /// Known tokens to give in the next request.
    pending: Vec<u32>,
    proposed: usize,
    accepted: usize,
    /// Rounds answered, and those whose first draft was a likely token.
    answered: u32,
    likely_starts: u32,
}

/// What follows a scout's answer.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Step {
    /// Another round.
    Next(pb::DraftRequest),
    /// The run is over.
    Done {
        /// Whether a draft was accepted, or a round began with a likely token.
        passed: bool,
    },
}

impl GoldenRun {
    pub(crate) fn new(ticket: Ticket, work_cid: Vec<u8>, session_id: u64) -> Self {
        GoldenRun {
            ticket,
            work_cid,
            session_id,
            round: 0,
            given: 0,
            pending: Vec::new(),
            proposed: 0,
            accepted: 0,
            answered: 0,
            likely_starts: 0,
        }
    }

    /// The context a claim grants.
    pub(crate) fn prompt(&self) -> &[u32] {
        &self.ticket.prompt
    }

    /// Drafts per round.
    pub(crate) fn k(&self) -> usize {
        K
    }

    /// The round now asked for.
    pub(crate) fn round(&self) -> u32 {
        self.round
    }

    /// The work id the scout claimed.
    pub(crate) fn work_cid(&self) -> &[u8] {
        &self.work_cid
    }

    /// The next round's request.
    pub(crate) fn request(&mut self, deadline_ms: u32) -> pb::DraftRequest {
        self.round += 1;
        self.given += self.pending.len();
        pb::DraftRequest {
            work_cid: self.work_cid.clone(),
            session_id: self.session_id,
            round: self.round,
            accepted_tokens: std::mem::take(&mut self.pending),
            context_len: (self.ticket.prompt.len() + self.given) as u32,
            draft_k: K as u32,
            deadline_ms,
        }
    }

    /// Scores the drafts of the current round.
    pub(crate) fn answer(&mut self, drafts: &[u32], deadline_ms: u32) -> Step {
        let known = &self.ticket.known[self.given..];
        let matched = drafts.iter().zip(known).take_while(|(d, k)| d == k).count();
        self.proposed += drafts.len().min(K);
        self.accepted += matched;
        self.answered += 1;
        if drafts
            .first()
            .is_some_and(|d| self.ticket.likely[self.given].contains(d))
        {
            self.likely_starts += 1;
        }
        // What the oracle would have verified: the matched drafts and its own token.
        let take = (matched + 1).min(known.len());
        self.pending = known[..take].to_vec();
        let room = self.ticket.known.len() - self.given - take;
        if self.round >= ROUNDS || room < K + 1 {
            return Step::Done {
                passed: self.accepted > 0 || self.likely_starts > 0,
            };
        }
        Step::Next(self.request(deadline_ms))
    }

    /// What the run saw, for logs.
    pub(crate) fn summary(&self) -> String {
        format!(
            "{} rounds, {} began with a likely token, {} of {} drafts accepted",
            self.answered, self.likely_starts, self.accepted, self.proposed
        )
    }

    /// A run abandoned (bad signature, no answer): failed.
    pub(crate) fn failed(&self) -> Step {
        Step::Done { passed: false }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(drafts_for: impl Fn(&[u32]) -> Vec<u32>) -> (bool, u32) {
        // The target's likely tokens at position i: its own token and the
        // runner-up 1000 + i.
        let ticket = Ticket {
            prompt: vec![1, 2, 3],
            known: (100..140).collect(),
            likely: (0..40).map(|i| vec![100 + i, 1000 + i]).collect(),
        };
        let mut g = GoldenRun::new(ticket, vec![9], 1);
        let mut req = g.request(100);
        let mut context: Vec<u32> = vec![1, 2, 3];
        loop {
            context.extend(&req.accepted_tokens);
            assert_eq!(req.context_len as usize, context.len());
            match g.answer(&drafts_for(&context), 100) {
                Step::Next(r) => req = r,
                Step::Done { passed } => return (passed, g.round),
            }
        }
    }

    #[test]
    fn an_honest_drafter_passes_and_garbage_fails() {
        // The perfect drafter continues the known sequence.
        let honest = run(|c| {
            let last = *c.last().unwrap();
            let next = if last < 100 { 100 } else { last + 1 };
            (next..next + 4).collect()
        });
        assert_eq!(honest, (true, ROUNDS));
        let garbage = run(|_| vec![7, 7, 7, 7]);
        assert_eq!(garbage, (false, ROUNDS));
        let empty = run(|_| vec![]);
        assert!(!empty.0);
    }

    #[test]
    fn a_weak_honest_drafter_passes_on_likely_tokens() {
        // Never the target's token, always its runner-up: likely, never accepted.
        let runner_up = |c: &[u32]| {
            let at = c.len() as u32 - 3;
            vec![1000 + at, 5, 5, 5]
        };
        assert_eq!(run(runner_up), (true, ROUNDS));
        // Likely only in the last round: enough.
        let once = |c: &[u32]| {
            let at = c.len() as u32 - 3;
            if at == ROUNDS - 1 {
                vec![1000 + at, 5]
            } else {
                vec![5, 5]
            }
        };
        assert!(run(once).0);
        // Likely tokens, but not where they belong: garbage.
        let shifted = |c: &[u32]| {
            let at = c.len() as u32 - 3;
            vec![1001 + at, 5]
        };
        assert!(!run(shifted).0);
    }

    #[test]
    fn the_book_keeps_the_latest_tickets() {
        let mut book = TicketBook::new(2);
        assert!(book.pick().is_none());
        book.add(vec![1], vec![1, 2], vec![vec![1], vec![2]]); // too short to score
        assert!(book.pick().is_none());
        // Alternatives for only 3 positions: cut to 3, too short.
        book.add(vec![1], (0..10).collect(), vec![vec![0]; 3]);
        assert!(book.pick().is_none());
        for i in 0..3 {
            book.add(vec![i], (0..10).collect(), vec![vec![0]; 10]);
        }
        let prompts: Vec<u32> = (0..4).map(|_| book.pick().unwrap().prompt[0]).collect();
        assert!(prompts.iter().all(|&p| p == 1 || p == 2), "{prompts:?}");
    }
}
