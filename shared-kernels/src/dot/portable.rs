//! The portable kernels: plain Rust, any target. They define the arithmetic:
//! the SIMD kernels must give these results bit for bit (tested), so a
//! result never depends on the machine's instruction set.
//!
//! The 32-value formats (Q4_0, Q4_1, Q8_0) keep eight f32 lanes, one per
//! block of a group of eight ([`q8_family`]). The K formats reduce each
//! 256-value block to exact integers and add their scaled sum to one running
//! f32. Integer sums are exact, so only the order of the f32 operations
//! matters, and that is fixed here.

use crate::act::{Q8KBlock, Q8Row};
use crate::format::{Format, GROUP, GroupLayout, f16_at, k_scale_min, lane_of, q6_k_value};

/// `((a0 + a4) + (a2 + a6)) + ((a1 + a5) + (a3 + a7))`: the order an AVX2
/// horizontal sum takes.
pub(crate) fn hsum(a: [f32; 8]) -> f32 {
    let s = [a[0] + a[4], a[1] + a[5], a[2] + a[6], a[3] + a[7]];
    (s[0] + s[2]) + (s[1] + s[3])
}

/// The integer value of element `e` (0..32) of a 32-value block whose
/// values start at `values` in `bytes` (file order: Q4 packs element `e` and
/// `e + 16` in byte `e`).
fn weight(format: Format, values: &[u8], e: usize) -> i32 {
    match format {
        Format::Q4_0 => nibble(values, e) - 8,
        Format::Q4_1 => nibble(values, e),
        _ => i32::from(values[e] as i8),
    }
}

fn nibble(qs: &[u8], e: usize) -> i32 {
    i32::from(if e < 16 {
        qs[e] & 0x0f
    } else {
        qs[e - 16] >> 4
    })
}

/// A row of a 32-value format (interleaved, see [`crate::format`]) times a
/// Q8 row.
///
/// Block `j` of each group is summed in lane [`lane_of`]`(j)`: its exact
/// integer `Σ w·x` is scaled by `d_w · d_x` and added to the lane (a multiply
/// then an add, never fused); for Q4_1 the lane's running `Σ m·s` grows
/// alongside. A short last group leaves its missing lanes alone (the SIMD
/// kernels add exact zeros there, which changes nothing: a lane that starts
/// at +0 never becomes −0). The result is [`hsum`] of the lanes, plus
/// [`hsum`] of the mins for Q4_1.
pub(crate) fn q8_family(format: Format, w: &[u8], x: Q8Row<'_>) -> f32 {
    let (_, size) = format.block();
    let mut acc = [0f32; 8];
    let mut mins = [0f32; 8];
    for (g, xg) in w.chunks(GROUP * size).zip(x.groups) {
        let layout = GroupLayout::new(format, g.len() / size);
        for j in 0..layout.n {
            let lane = lane_of(j);
            let xb = xg.block(j);
            let mut values = [0u8; 32];
            let mut at = 0;
            for range in layout.value_ranges(format, j) {
                values[at..at + range.len()].copy_from_slice(&g[range.clone()]);
                at += range.len();
            }
            let isum: i32 = (0..32)
                .map(|e| weight(format, &values, e) * i32::from(xb.q[e]))
                .sum();
            acc[lane] += (f16_at(g, 2 * j) * xb.d) * isum as f32;
            if format == Format::Q4_1 {
                mins[lane] += f16_at(g, layout.mins + 2 * j) * xb.s;
            }
        }
    }
    if format == Format::Q4_1 {
        hsum(acc) + hsum(mins)
    } else {
        hsum(acc)
    }
}

/// A Q4_K row times a Q8K row.
pub(crate) fn q4_k(w: &[u8], x: &[Q8KBlock]) -> f32 {
    let mut acc = 0f32;
    for (b, xb) in w.chunks_exact(144).zip(x) {
        let scales = &b[4..16];
        let (mut scaled, mut mins) = (0i32, 0i32);
        for (chunk, q) in b[16..144].chunks_exact(32).enumerate() {
            let (sc_lo, m_lo) = k_scale_min(2 * chunk, scales);
            let (sc_hi, m_hi) = k_scale_min(2 * chunk + 1, scales);
            let x_lo = &xb.q[64 * chunk..64 * chunk + 32];
            let x_hi = &xb.q[64 * chunk + 32..64 * chunk + 64];
            let (mut lo, mut hi) = (0i32, 0i32);
            for l in 0..32 {
                lo += i32::from(q[l] & 0x0f) * i32::from(x_lo[l]);
                hi += i32::from(q[l] >> 4) * i32::from(x_hi[l]);
            }
            scaled += i32::from(sc_lo) * lo + i32::from(sc_hi) * hi;
            let sum = |j: usize| i32::from(xb.sums[j]);
            mins += i32::from(m_lo) * (sum(4 * chunk) + sum(4 * chunk + 1))
                + i32::from(m_hi) * (sum(4 * chunk + 2) + sum(4 * chunk + 3));
        }
        acc += (f16_at(b, 0) * xb.d) * scaled as f32;
        acc -= (f16_at(b, 2) * xb.d) * mins as f32;
    }
    acc
}

/// A Q6_K row times a Q8K row.
pub(crate) fn q6_k(w: &[u8], x: &[Q8KBlock]) -> f32 {
    let mut acc = 0f32;
    for (b, xb) in w.chunks_exact(210).zip(x) {
        let mut runs = [0i32; 16];
        for half in 0..2 {
            for quarter in 0..4 {
                for l in 0..32 {
                    let e = 128 * half + 32 * quarter + l;
                    runs[e / 16] += (q6_k_value(b, half, quarter, l) - 32) * i32::from(xb.q[e]);
                }
            }
        }
        let scaled: i32 = runs
            .iter()
            .zip(&b[192..208])
            .map(|(&run, &sc)| i32::from(sc as i8) * run)
            .sum();
        acc += (f16_at(b, 208) * xb.d) * scaled as f32;
    }
    acc
}

/// An f32 (`half == false`) or f16 row times f32 activations: eight lanes over
/// `i mod 8`, summed with [`hsum`], then the tail in order.
pub(crate) fn float(w: &[u8], x: &[f32], half: bool) -> f32 {
    let weight = |i: usize| {
        if half {
            f16_at(w, 2 * i)
        } else {
            f32::from_le_bytes([w[4 * i], w[4 * i + 1], w[4 * i + 2], w[4 * i + 3]])
        }
    };
    let body = x.len() / 8 * 8;
    let mut acc = [0f32; 8];
    for (k, chunk) in x[..body].chunks_exact(8).enumerate() {
        for (lane, (a, &xi)) in acc.iter_mut().zip(chunk).enumerate() {
            *a += weight(8 * k + lane) * xi;
        }
    }
    let mut sum = hsum(acc);
    for (i, &xi) in x.iter().enumerate().skip(body) {
        sum += weight(i) * xi;
    }
    sum
}
