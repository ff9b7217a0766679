//! Turning logits into tokens: greedy choice, temperature / top-k / top-p
//! distributions, and a small seeded random number generator.
//!
//! Everything here is a pure function of its inputs (and the RNG's state), so a
//! seeded run gives the same tokens on every machine and in the browser.

/// How to pick the next token. `temperature == 0` means greedy.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SamplingParams {
    /// Softmax temperature; 0 picks the most likely token.
    pub temperature: f32,
    /// Keep only the `top_k` most likely tokens (0: all).
    pub top_k: usize,
    /// Keep the smallest set of likely tokens whose probability reaches `top_p` (1: all).
    pub top_p: f32,
    /// Seed of the random stream.
    pub seed: u64,
}

impl SamplingParams {
    /// Greedy decoding.
    pub const GREEDY: SamplingParams = SamplingParams {
        temperature: 0.0,
        top_k: 0,
        top_p: 1.0,
        seed: 0,
    };

    /// Whether these settings pick the most likely token.
    pub fn is_greedy(&self) -> bool {
        self.temperature <= 0.0
    }
}

/// The index of the largest logit; the first one on ties. NaNs never win.
pub fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0usize;
    let mut best_value = f32::NEG_INFINITY;
    for (i, &v) in logits.iter().enumerate() {
        if v > best_value {
            best = i;
            best_value = v;
        }
    }
    best as u32
}

/// The distribution `params` samples from: softmax of `logits / temperature`
/// over the `top_k` most likely tokens, cut to the `top_p` nucleus, renormalised.
/// Tokens outside the kept set get probability 0. Greedy settings give a
/// one-hot distribution on [`argmax`].
pub fn probabilities(logits: &[f32], params: &SamplingParams) -> Vec<f32> {
    let mut probs = vec![0f32; logits.len()];
    if logits.is_empty() {
        return probs;
    }
    if params.is_greedy() {
        probs[argmax(logits) as usize] = 1.0;
        return probs;
    }
    let order = most_likely(logits, (params.top_k > 0).then_some(params.top_k));
    if order.is_empty() {
        probs[0] = 1.0;
        return probs;
    }
    let max = logits[order[0] as usize];
    let inv_t = 1.0 / f64::from(params.temperature);
    let weights: Vec<f64> = order
        .iter()
        .map(|&i| ((f64::from(logits[i as usize]) - f64::from(max)) * inv_t).exp())
        .collect();
    let total: f64 = weights.iter().sum();
    let top_p = f64::from(params.top_p.clamp(0.0, 1.0));
    let mut kept = order.len();
    if top_p < 1.0 {
        let mut cumulative = 0.0;
        for (n, w) in weights.iter().enumerate() {
            cumulative += w / total;
            if cumulative >= top_p {
                kept = n + 1;
                break;
            }
        }
    }
    let kept_total: f64 = weights[..kept].iter().sum();
    for (&i, w) in order[..kept].iter().zip(&weights) {
        probs[i as usize] = (w / kept_total) as f32;
    }
    probs
}

/// Token ids by descending logit (ties by id, NaNs dropped), only the `keep`
/// most likely when given.
pub fn most_likely(logits: &[f32], keep: Option<usize>) -> Vec<u32> {
    let mut order: Vec<u32> = (0..logits.len() as u32)
        .filter(|&i| !logits[i as usize].is_nan())
        .collect();
    let by_logit = |a: &u32, b: &u32| {
        logits[*b as usize]
            .total_cmp(&logits[*a as usize])
            .then(a.cmp(b))
    };
    if let Some(n) = keep.filter(|&n| n < order.len()) {
        if n == 0 {
            return Vec::new();
        }
        order.select_nth_unstable_by(n - 1, by_logit);
        order.truncate(n);
    }
    order.sort_unstable_by(by_logit);
    order
}

/// Draws an index from `probs` (which need not be normalised) with one uniform
/// number from `rng`. Falls back to the last index with positive probability
/// if rounding leaves the draw past the end.
pub fn sample(probs: &[f32], rng: &mut Rng) -> u32 {
    let total: f64 = probs.iter().map(|&p| f64::from(p.max(0.0))).sum();
    let target = rng.uniform() * total;
    let mut cumulative = 0.0;
    let mut last_positive = 0;
    for (i, &p) in probs.iter().enumerate() {
        if p > 0.0 {
            cumulative += f64::from(p);
            last_positive = i;
            if target < cumulative {
                return i as u32;
            }
        }
    }
    last_positive as u32
}

/// SplitMix64's increment (2^64 / φ, odd).
const GOLDEN_GAMMA: u64 = 0x9e37_79b9_7f4a_7c15;

/// A small, fast, seeded generator (SplitMix64): the same stream on every
/// platform, which is what makes seeded runs reproducible.
#[derive(Debug, Clone)]
pub struct Rng {
    state: u64,
}

impl Rng {
    /// A generator seeded with `seed`.
    pub fn new(seed: u64) -> Self {
        Rng { state: seed }
    }

    /// The generator seeded with `seed` after `index` draws, in constant time.
    ///
    /// SplitMix64 is a counter hashed: the `n`-th draw depends only on the seed
    /// and `n`. So the noise for output position `n` can be handed to another
    /// machine (a scout drafting with the target's own noise) without sending
    /// the stream, and `Rng::at(seed, n).uniform()` is what `Rng::new(seed)`
    /// gives at its `n`-th (0-based) draw.
    pub fn at(seed: u64, index: u64) -> Self {
        Rng {
            state: seed.wrapping_add(index.wrapping_mul(GOLDEN_GAMMA)),
        }
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(GOLDEN_GAMMA);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A uniform number in `[0, 1)` with 53 random bits.
    pub fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn argmax_takes_the_first_maximum_and_ignores_nan() {
        assert_eq!(argmax(&[1.0, 3.0, 3.0, 2.0]), 1);
        assert_eq!(argmax(&[f32::NAN, -1.0]), 1);
    }

    #[test]
    fn top_k_and_top_p_cut_the_distribution() {
        let logits = [2.0, 1.0, 0.0, -1.0];
        let p = |top_k, top_p| {
            probabilities(
                &logits,
                &SamplingParams {
                    temperature: 1.0,
                    top_k,
                    top_p,
                    seed: 0,
                },
            )
        };
        let all = p(0, 1.0);
        assert!((all.iter().sum::<f32>() - 1.0).abs() < 1e-6);
        assert!(all.iter().all(|&x| x > 0.0));
        let two = p(2, 1.0);
        assert_eq!((two[2], two[3]), (0.0, 0.0));
        assert!((two[0] / two[1] - std::f32::consts::E).abs() < 1e-4);
        // The top token alone has ~64%: a 0.5 nucleus keeps just it.
        assert_eq!(p(0, 0.5), vec![1.0, 0.0, 0.0, 0.0]);
        let greedy = probabilities(&logits, &SamplingParams::GREEDY);
        assert_eq!(greedy, vec![1.0, 0.0, 0.0, 0.0]);
    }

    #[test]
    fn the_rng_is_reproducible_and_uniform_enough() {
        let a: Vec<u64> = {
            let mut r = Rng::new(7);
            (0..4).map(|_| r.next_u64()).collect()
        };
        let b: Vec<u64> = {
            let mut r = Rng::new(7);
            (0..4).map(|_| r.next_u64()).collect()
        };
        assert_eq!(a, b);
        let mut r = Rng::new(1);
        let mean = (0..100_000).map(|_| r.uniform()).sum::<f64>() / 100_000.0;
        assert!((mean - 0.5).abs() < 0.005, "{mean}");
    }

    #[test]
    fn the_rng_can_start_at_any_draw() {
        let mut r = Rng::new(42);
        let stream: Vec<u64> = (0..10).map(|_| r.next_u64()).collect();
        for (n, &x) in stream.iter().enumerate() {
            assert_eq!(Rng::at(42, n as u64).next_u64(), x, "draw {n}");
        }
        assert_ne!(Rng::at(43, 3).next_u64(), stream[3]);
    }

    #[test]
    fn sampling_follows_the_probabilities() {
        let probs = [0.1, 0.0, 0.6, 0.3];
        let mut rng = Rng::new(3);
        let mut counts = [0u32; 4];
        for _ in 0..100_000 {
            counts[sample(&probs, &mut rng) as usize] += 1;
        }
        assert_eq!(counts[1], 0);
        for (c, p) in counts.iter().zip(probs) {
            assert!(
                (f64::from(*c) / 100_000.0 - f64::from(p)).abs() < 0.01,
                "{counts:?}"
            );
        }
    }
}
