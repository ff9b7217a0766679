//! How far a download is, how fast it goes, and when it ends: the figures a
//! progress bar on the command line and the web app's progress events show.
//!
//! The rate is a moving average over the last few seconds (not over the whole
//! download, which would hide a stall and a speed-up alike); times come in as
//! milliseconds so the meter is tested without a clock.

use std::collections::VecDeque;

/// The rate is measured over this window.
const WINDOW_MS: u64 = 5_000;

/// One reading of a download's progress.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Progress {
    /// Bytes verified (resumed pieces included).
    pub bytes_done: u64,
    /// The file's size.
    pub bytes_total: u64,
    /// Pieces verified.
    pub pieces_done: u32,
    /// Pieces in the file (or wanted, for a partial download).
    pub pieces_total: u32,
    /// Bytes a second over the last few seconds.
    pub rate: f64,
    /// Seconds left at that rate; `None` before any rate is known.
    pub eta_s: Option<f64>,
}

impl Progress {
    /// Done, 0 to 1.
    pub fn fraction(&self) -> f64 {
        if self.bytes_total == 0 {
            1.0
        } else {
            self.bytes_done as f64 / self.bytes_total as f64
        }
    }
}

/// Counts verified bytes over time.
#[derive(Debug, Clone)]
pub struct Meter {
    bytes_total: u64,
    pieces_total: u32,
    bytes_done: u64,
    pieces_done: u32,
    /// (time, bytes) of recent pieces, oldest first.
    recent: VecDeque<(u64, u64)>,
    started_ms: u64,
}

impl Meter {
    /// A download of `bytes_total` bytes in `pieces_total` pieces, of which
    /// `bytes_done` in `pieces_done` are already here (resumed: they do not
    /// count towards the rate), starting at `now_ms`.
    pub fn new(
        bytes_total: u64,
        pieces_total: u32,
        bytes_done: u64,
        pieces_done: u32,
        now_ms: u64,
    ) -> Self {
        Meter {
            bytes_total,
            pieces_total,
            bytes_done: bytes_done.min(bytes_total),
            pieces_done: pieces_done.min(pieces_total),
            recent: VecDeque::new(),
            started_ms: now_ms,
        }
    }

    /// A piece of `bytes` bytes was verified at `now_ms`.
    pub fn piece(&mut self, bytes: u64, now_ms: u64) {
        self.bytes_done = (self.bytes_done + bytes).min(self.bytes_total);
        self.pieces_done = (self.pieces_done + 1).min(self.pieces_total);
        self.recent.push_back((now_ms, bytes));
        self.trim(now_ms);
    }

    /// A piece counted earlier turned out bad after all (the final check):
    /// it is missing again.
    pub fn lost(&mut self, bytes: u64) {
        self.bytes_done = self.bytes_done.saturating_sub(bytes);
        self.pieces_done = self.pieces_done.saturating_sub(1);
    }

    /// The reading at `now_ms`.
    pub fn read(&mut self, now_ms: u64) -> Progress {
        self.trim(now_ms);
        // Over the window, or since the start when that is shorter (a
        // download's first second must not read as a fifth of its speed).
        let span_ms = WINDOW_MS.min(now_ms.saturating_sub(self.started_ms)).max(1);
        let bytes: u64 = self.recent.iter().map(|(_, b)| b).sum();
        let rate = if self.recent.is_empty() {
            0.0
        } else {
            bytes as f64 * 1000.0 / span_ms as f64
        };
        let left = self.bytes_total - self.bytes_done;
        let eta_s = if left == 0 {
            Some(0.0)
        } else if rate > 0.0 {
            Some(left as f64 / rate)
        } else {
            None
        };
        Progress {
            bytes_done: self.bytes_done,
            bytes_total: self.bytes_total,
            pieces_done: self.pieces_done,
            pieces_total: self.pieces_total,
            rate,
            eta_s,
        }
    }

    fn trim(&mut self, now_ms: u64) {
        while self
            .recent
            .front()
            .is_some_and(|(at, _)| at.saturating_add(WINDOW_MS) < now_ms)
        {
            self.recent.pop_front();
        }
    }
}

/// A byte rate cap: a token bucket of one second's worth of bytes. Before
/// asking for a piece the downloader asks [`RateCap::wait_ms`] how long to
/// wait, and [`RateCap::take`]s the piece's bytes when it sends the request;
/// a piece larger than the bucket is let through when the bucket is full and
/// leaves it in debt, so any piece size works with any cap.
#[derive(Debug, Clone)]
pub struct RateCap {
    bytes_per_s: u64,
    /// Tokens (bytes), negative when in debt.
    tokens: f64,
    at_ms: u64,
}

impl RateCap {
    /// At most `bytes_per_s` bytes a second on average, from `now_ms`.
    pub fn new(bytes_per_s: u64, now_ms: u64) -> Self {
        let bytes_per_s = bytes_per_s.max(1);
        RateCap {
            bytes_per_s,
            tokens: bytes_per_s as f64,
            at_ms: now_ms,
        }
    }

    fn refill(&mut self, now_ms: u64) {
        let elapsed = now_ms.saturating_sub(self.at_ms) as f64 / 1000.0;
        self.tokens =
            (self.tokens + elapsed * self.bytes_per_s as f64).min(self.bytes_per_s as f64);
        self.at_ms = self.at_ms.max(now_ms);
    }

    /// Milliseconds to wait at `now_ms` before `bytes` may be asked for; 0
    /// means now.
    pub fn wait_ms(&mut self, bytes: u64, now_ms: u64) -> u64 {
        self.refill(now_ms);
        let cap = self.bytes_per_s as f64;
        let need = (bytes as f64).min(cap);
        if self.tokens >= need {
            return 0;
        }
        ((need - self.tokens) * 1000.0 / cap).ceil() as u64
    }

    /// `bytes` were asked for.
    pub fn take(&mut self, bytes: u64) {
        self.tokens -= bytes as f64;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rate_is_over_recent_pieces_and_gives_an_eta() {
        let mut m = Meter::new(10_000_000, 10, 0, 0, 0);
        assert_eq!(m.read(0).eta_s, None);
        for i in 1..=4 {
            m.piece(1_000_000, i * 1000);
        }
        let p = m.read(4000);
        assert_eq!(p.pieces_done, 4);
        assert_eq!(p.bytes_done, 4_000_000);
        // 4 MB over the first 4 s.
        assert!((p.rate - 1_000_000.0).abs() < 1.0, "{}", p.rate);
        assert!((p.eta_s.unwrap() - 6.0).abs() < 0.01);
        // Silence: after the window the rate falls to nothing, no ETA.
        let p = m.read(20_000);
        assert_eq!(p.rate, 0.0);
        assert_eq!(p.eta_s, None);
        assert!((p.fraction() - 0.4).abs() < 1e-9);
    }

    #[test]
    fn resumed_bytes_count_as_done_but_not_as_speed() {
        let mut m = Meter::new(1000, 10, 500, 5, 0);
        let p = m.read(1000);
        assert_eq!((p.bytes_done, p.pieces_done, p.rate), (500, 5, 0.0));
        m.piece(100, 1000);
        m.lost(100);
        assert_eq!(m.read(1000).pieces_done, 5);
        for _ in 0..20 {
            m.piece(100, 2000);
        }
        let p = m.read(2000);
        assert_eq!(
            (p.bytes_done, p.pieces_done, p.eta_s),
            (1000, 10, Some(0.0))
        );
    }

    #[test]
    fn the_cap_holds_the_average_rate() {
        // 1 MB/s, pieces of 256 KB: over 10 s of asking, about 10 MB go.
        let mut cap = RateCap::new(1_000_000, 0);
        let (mut now, mut sent) = (0u64, 0u64);
        while now < 10_000 {
            match cap.wait_ms(256_000, now) {
                0 => {
                    cap.take(256_000);
                    sent += 256_000;
                }
                wait => now += wait,
            }
        }
        assert!((10_000_000..=11_300_000).contains(&sent), "{sent}");
    }

    #[test]
    fn a_piece_larger_than_the_cap_still_goes() {
        let mut cap = RateCap::new(1000, 0);
        assert_eq!(cap.wait_ms(5000, 0), 0);
        cap.take(5000);
        // In debt by 4000 bytes: the next piece waits about 5 s.
        let wait = cap.wait_ms(1000, 0);
        assert!((4900..=5100).contains(&wait), "{wait}");
        assert_eq!(cap.wait_ms(1000, wait), 0);
    }
}
