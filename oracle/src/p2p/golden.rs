//! Golden tickets: rounds whose verified continuation the oracle already
//! knows (finished greedy answers), slipped to scouts as ordinary work. A
//! scout cannot tell them apart, and scoring them costs the oracle no forward
//! pass. A run is pure logic: requests out, drafts in, a verdict at the end.

use std::collections::VecDeque;

use shared_proto::pb;

/// Rounds in one ticket run.
const ROUNDS: u32 = 4;
/// Drafts asked for per round.
const K: usize = 4;

/// A prompt and its verified greedy continuation.
#[derive(Debug, Clone)]
pub(crate) struct Ticket {
    pub(crate) prompt: Vec<u32>,
    pub(crate) known: Vec<u32>,
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

    /// Keeps a finished greedy answer as a ticket.
    pub(crate) fn add(&mut self, prompt: Vec<u32>, known: Vec<u32>) {
        if known.len() < K + 1 {
            return;
        }
        if self.tickets.len() == self.capacity {
            self.tickets.pop_front();
        }
        self.tickets.push_back(Ticket { prompt, known });
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
}

/// What follows a scout's answer.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Step {
    /// Another round.
    Next(pb::DraftRequest),
    /// The run is over.
    Done {
        /// Whether any draft matched the known continuation.
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
        // What the oracle would have verified: the matched drafts and its own token.
        let take = (matched + 1).min(known.len());
        self.pending = known[..take].to_vec();
        let room = self.ticket.known.len() - self.given - take;
        if self.round >= ROUNDS || room < K + 1 {
            return Step::Done {
                passed: self.accepted > 0,
            };
        }
        Step::Next(self.request(deadline_ms))
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
        let ticket = Ticket {
            prompt: vec![1, 2, 3],
            known: (100..140).collect(),
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
    fn the_book_keeps_the_latest_tickets() {
        let mut book = TicketBook::new(2);
        assert!(book.pick().is_none());
        book.add(vec![1], vec![1, 2]); // too short to score
        assert!(book.pick().is_none());
        for i in 0..3 {
            book.add(vec![i], (0..10).collect());
        }
        let prompts: Vec<u32> = (0..4).map(|_| book.pick().unwrap().prompt[0]).collect();
        assert!(prompts.iter().all(|&p| p == 1 || p == 2), "{prompts:?}");
    }
}
