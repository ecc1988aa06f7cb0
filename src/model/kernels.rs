//! The few vector loops everything hot is made of. The crate is built for x86-64-v3 (AVX2, FMA;
//! see .cargo/config.toml); the dot product uses intrinsics there because LLVM does not vectorise
//! a float reduction on its own, and plain code elsewhere. Reductions combine lanes in a fixed order,
//! so a model trained with a given seed and thread count is the same on every machine of one arch.

#[inline(always)]
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    debug_assert_eq!(a.len(), b.len());
    #[cfg(all(
        target_arch = "x86_64",
        target_feature = "avx2",
        target_feature = "fma"
    ))]
    {
        // SAFETY: the crate is compiled with AVX2 and FMA enabled (cfg above); loads are unaligned
        // and stay within the slices, whose lengths are equal.
        unsafe { dot_avx2(a, b) }
    }
    #[cfg(not(all(
        target_arch = "x86_64",
        target_feature = "avx2",
        target_feature = "fma"
    )))]
    {
        let mut acc = [0.0f32; 8];
        for (l, (x, y)) in a.iter().zip(b).enumerate() {
            acc[l % 8] += x * y;
        }
        acc.iter().sum()
    }
}

#[cfg(all(
    target_arch = "x86_64",
    target_feature = "avx2",
    target_feature = "fma"
))]
#[inline(always)]
unsafe fn dot_avx2(a: &[f32], b: &[f32]) -> f32 {
    use std::arch::x86_64::*;
    let n = a.len().min(b.len());
    let (pa, pb) = (a.as_ptr(), b.as_ptr());
    unsafe {
        let mut acc0 = _mm256_setzero_ps();
        let mut acc1 = _mm256_setzero_ps();
        let mut i = 0;
        while i + 16 <= n {
            acc0 = _mm256_fmadd_ps(_mm256_loadu_ps(pa.add(i)), _mm256_loadu_ps(pb.add(i)), acc0);
            acc1 = _mm256_fmadd_ps(
                _mm256_loadu_ps(pa.add(i + 8)),
                _mm256_loadu_ps(pb.add(i + 8)),
                acc1,
            );
            i += 16;
        }
        if i + 8 <= n {
            acc0 = _mm256_fmadd_ps(_mm256_loadu_ps(pa.add(i)), _mm256_loadu_ps(pb.add(i)), acc0);
            i += 8;
        }
        let acc = _mm256_add_ps(acc0, acc1);
        let half = _mm_add_ps(_mm256_castps256_ps128(acc), _mm256_extractf128_ps(acc, 1));
        let quarter = _mm_add_ps(half, _mm_movehl_ps(half, half));
        let single = _mm_add_ss(quarter, _mm_shuffle_ps(quarter, quarter, 1));
        let mut sum = _mm_cvtss_f32(single);
        while i < n {
            sum += *pa.add(i) * *pb.add(i);
            i += 1;
        }
        sum
    }
}

/// `outs[e][k] = bias[k] + rows[k]·xs[e]` for the K rows of `rows` (K·n floats, n = xs[e].len()):
/// all of a visible unit's logits at once, for E vectors. Each load of a row serves all E of
/// them, which halves the loads per multiply-add at E = 2; `outs[e]` does not depend on E or on
/// the other vectors.
#[inline(always)]
pub fn row_dots_each<const E: usize>(
    rows: &[f32],
    xs: [&[f32]; E],
    bias: &[f32],
    outs: [&mut [f32]; E],
) {
    let n = xs[0].len();
    // The vector loads below rely on these lengths: checked in release builds too.
    assert!(xs.iter().all(|x| x.len() == n));
    assert!(outs.iter().all(|o| o.len() == bias.len()));
    assert_eq!(rows.len(), n * bias.len());
    #[cfg(all(
        target_arch = "x86_64",
        target_feature = "avx2",
        target_feature = "fma"
    ))]
    {
        let mut outs = outs;
        for (group, bias) in bias.chunks(ROWS_PER_PASS).enumerate() {
            let first = group * ROWS_PER_PASS;
            let rows = &rows[first * n..(first + bias.len()) * n];
            // SAFETY: AVX2 and FMA are enabled (cfg above); `rows` holds bias.len() rows of n
            // floats and every x holds n, and the tail uses masked loads.
            let sums = unsafe {
                match bias.len() {
                    1 => widen(dots_avx2::<1, E>(rows, xs)),
                    2 => widen(dots_avx2::<2, E>(rows, xs)),
                    3 => widen(dots_avx2::<3, E>(rows, xs)),
                    4 => widen(dots_avx2::<4, E>(rows, xs)),
                    _ => widen(dots_avx2::<ROWS_PER_PASS, E>(rows, xs)),
                }
            };
            for (out, sums) in outs.iter_mut().zip(sums) {
                for ((o, s), b) in out[first..first + bias.len()]
                    .iter_mut()
                    .zip(sums)
                    .zip(bias)
                {
                    *o = b + s;
                }
            }
        }
    }
    #[cfg(not(all(
        target_arch = "x86_64",
        target_feature = "avx2",
        target_feature = "fma"
    )))]
    for (x, out) in xs.iter().zip(outs) {
        for ((o, row), b) in out.iter_mut().zip(rows.chunks_exact(n)).zip(bias) {
            *o = b + dot(row, x);
        }
    }
}

/// Rows per kernel pass: with two vectors, 2·5 accumulators, two x and one row stay in the 16 AVX
/// registers.
const ROWS_PER_PASS: usize = 5;

/// Pads R sums per vector to ROWS_PER_PASS.
#[inline(always)]
fn widen<const R: usize, const E: usize>(sums: [[f32; R]; E]) -> [[f32; ROWS_PER_PASS]; E] {
    sums.map(|s| {
        let mut wide = [0.0; ROWS_PER_PASS];
        wide[..R].copy_from_slice(&s);
        wide
    })
}

/// `acc[e][r] += w(r) · x[e]` lane by lane, each row's lanes loaded once for all E vectors.
#[cfg(all(
    target_arch = "x86_64",
    target_feature = "avx2",
    target_feature = "fma"
))]
#[inline(always)]
fn accumulate<const R: usize, const E: usize>(
    acc: &mut [[std::arch::x86_64::__m256; R]; E],
    x: [std::arch::x86_64::__m256; E],
    w: impl Fn(usize) -> std::arch::x86_64::__m256,
) {
    for r in 0..R {
        let w = w(r);
        for (acc, x) in acc.iter_mut().zip(x) {
            // SAFETY: FMA is enabled (cfg above).
            acc[r] = unsafe { std::arch::x86_64::_mm256_fmadd_ps(w, x, acc[r]) };
        }
    }
}

/// `sums[e][r] = rows[r]·xs[e]` for R rows of n = xs[e].len() floats. Each sum is reduced on its own
/// in a fixed order, so it does not depend on R, E or the other rows.
#[cfg(all(
    target_arch = "x86_64",
    target_feature = "avx2",
    target_feature = "fma"
))]
#[inline(always)]
unsafe fn dots_avx2<const R: usize, const E: usize>(
    rows: &[f32],
    xs: [&[f32]; E],
) -> [[f32; R]; E] {
    use std::arch::x86_64::*;
    let n = xs[0].len();
    let full = n / 8 * 8;
    let tail = (n - full) as i32;
    unsafe {
        let mask = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
        let mask = _mm256_cmpgt_epi32(_mm256_set1_epi32(tail), mask);
        let row = |r: usize| rows.as_ptr().add(r * n);
        let mut acc = [[_mm256_setzero_ps(); R]; E];
        let mut c = 0;
        while c < full {
            let x = std::array::from_fn(|e| _mm256_loadu_ps(xs[e].as_ptr().add(c)));
            accumulate(&mut acc, x, |r| _mm256_loadu_ps(row(r).add(c)));
            c += 8;
        }
        if tail > 0 {
            let x = std::array::from_fn(|e| _mm256_maskload_ps(xs[e].as_ptr().add(full), mask));
            accumulate(&mut acc, x, |r| _mm256_maskload_ps(row(r).add(full), mask));
        }
        acc.map(|acc| {
            let mut sums = [0.0f32; R];
            for (first, sums) in (0..R).step_by(4).zip(sums.chunks_mut(4)) {
                let a = |r: usize| acc.get(first + r).copied().unwrap_or(_mm256_setzero_ps());
                // Lane sums of four accumulators in one vector: [s0 s1 s2 s3].
                let h = _mm256_hadd_ps(_mm256_hadd_ps(a(0), a(1)), _mm256_hadd_ps(a(2), a(3)));
                let h = _mm_add_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps(h, 1));
                let mut lanes = [0.0f32; 4];
                _mm_storeu_ps(lanes.as_mut_ptr(), h);
                sums.copy_from_slice(&lanes[..sums.len()]);
            }
            sums
        })
    }
}

/// Asks for `data` to be brought into the L1 cache: the next row of a walk whose rows the
/// hardware prefetcher cannot predict, loaded while the current one is worked on.
#[inline(always)]
pub fn prefetch(data: &[f32]) {
    #[cfg(target_arch = "x86_64")]
    for line in data.chunks(16) {
        // SAFETY: prefetching has no architectural effect and the address lies inside `data`.
        unsafe {
            use std::arch::x86_64::{_MM_HINT_T0, _mm_prefetch};
            _mm_prefetch::<_MM_HINT_T0>(line.as_ptr().cast());
        }
    }
}

/// Items scored side by side in the catalogue pass: one AVX register of f32.
pub const LANES: usize = 8;

/// How the catalogue kernels read weights: f32, or the bits of an f16 (u16) for the screening pass.
pub trait Weight: Copy + Send + Sync {
    fn to_f32(self) -> f32;

    /// LANES consecutive weights as f32.
    ///
    /// # Safety
    /// `p` must point to LANES readable values; AVX2 and F16C must be available.
    #[cfg(all(
        target_arch = "x86_64",
        target_feature = "avx2",
        target_feature = "fma",
        target_feature = "f16c"
    ))]
    unsafe fn load_lanes(p: *const Self) -> std::arch::x86_64::__m256;
}

impl Weight for f32 {
    #[inline(always)]
    fn to_f32(self) -> f32 {
        self
    }

    #[cfg(all(
        target_arch = "x86_64",
        target_feature = "avx2",
        target_feature = "fma",
        target_feature = "f16c"
    ))]
    #[inline(always)]
    unsafe fn load_lanes(p: *const Self) -> std::arch::x86_64::__m256 {
        // SAFETY: the caller guarantees LANES readable floats at p.
        unsafe { std::arch::x86_64::_mm256_loadu_ps(p) }
    }
}

impl Weight for u16 {
    #[inline(always)]
    fn to_f32(self) -> f32 {
        half::f16::from_bits(self).to_f32()
    }

    #[cfg(all(
        target_arch = "x86_64",
        target_feature = "avx2",
        target_feature = "fma",
        target_feature = "f16c"
    ))]
    #[inline(always)]
    unsafe fn load_lanes(p: *const Self) -> std::arch::x86_64::__m256 {
        use std::arch::x86_64::*;
        // SAFETY: the caller guarantees LANES readable halves (16 bytes) at p.
        unsafe { _mm256_cvtph_ps(_mm_loadu_si128(p.cast::<__m128i>())) }
    }
}

/// The K logits of LANES items at once: `out[k][l] = bias[k][l] + Σ_j hidden[j]·weights[j][k][l]`,
/// with `weights` laid out `[M][K][LANES]` and `bias`, `out` `[K][LANES]`; `weights`, `bias` and
/// `out` may hold several such blocks back to back. The weights are read in one sequential pass
/// per block and the sums stay in registers (for K ≤ 10; two blocks interleaved for K ≤ 6, which
/// doubles the independent FMA chains). Each lane is computed by the same sequence of operations
/// however blocks are grouped, so an item's logits do not depend on its neighbours.
#[inline(always)]
pub fn lane_logits<T: Weight>(
    weights: &[T],
    hidden: &[f32],
    bias: &[f32],
    classes: usize,
    out: &mut [f32],
) {
    let block = classes * LANES;
    let blocks = out.len() / block;
    assert!(
        out.len() == blocks * block
            && bias.len() == out.len()
            && weights.len() == blocks * hidden.len() * block
    );
    #[cfg(all(
        target_arch = "x86_64",
        target_feature = "avx2",
        target_feature = "fma",
        target_feature = "f16c"
    ))]
    {
        macro_rules! dispatch {
            ($blocks:literal; $($k:literal)*) => {
                match classes {
                    $($k => {
                        // SAFETY: AVX2, FMA and F16C are enabled (cfg above), and the lengths
                        // are checked above.
                        unsafe { lane_logits_avx2::<T, $blocks, $k>(weights, hidden, bias, out) }
                        return;
                    })*
                    _ => {}
                }
            };
        }
        if blocks == 2 {
            dispatch!(2; 1 2 3 4 5 6);
        }
        if blocks == 1 {
            dispatch!(1; 1 2 3 4 5 6 7 8 9 10);
        }
        if blocks > 1 {
            let span = hidden.len() * block;
            for (n, out) in out.chunks_mut(block).enumerate() {
                let weights = &weights[n * span..(n + 1) * span];
                lane_logits(
                    weights,
                    hidden,
                    &bias[n * block..(n + 1) * block],
                    classes,
                    out,
                );
            }
            return;
        }
    }
    lane_logits_plain(weights, hidden, bias, classes, out);
}

/// `lane_logits` for any shape, in plain code (sums kept in memory).
fn lane_logits_plain<T: Weight>(
    weights: &[T],
    hidden: &[f32],
    bias: &[f32],
    classes: usize,
    out: &mut [f32],
) {
    let block = classes * LANES;
    out.copy_from_slice(bias);
    for (n, out) in out.chunks_mut(block).enumerate() {
        let weights = &weights[n * hidden.len() * block..(n + 1) * hidden.len() * block];
        for (&h, w) in hidden.iter().zip(weights.chunks_exact(block)) {
            for (o, w) in out.iter_mut().zip(w) {
                *o = h.mul_add(w.to_f32(), *o);
            }
        }
    }
}

#[cfg(all(
    target_arch = "x86_64",
    target_feature = "avx2",
    target_feature = "fma",
    target_feature = "f16c"
))]
#[inline(always)]
unsafe fn lane_logits_avx2<T: Weight, const B: usize, const K: usize>(
    weights: &[T],
    hidden: &[f32],
    bias: &[f32],
    out: &mut [f32],
) {
    use std::arch::x86_64::*;
    let span = hidden.len() * K * LANES;
    unsafe {
        let mut acc = [[_mm256_setzero_ps(); K]; B];
        let mut p = [weights.as_ptr(); B];
        for (b, acc) in acc.iter_mut().enumerate() {
            p[b] = weights.as_ptr().add(b * span);
            for (c, acc) in acc.iter_mut().enumerate() {
                *acc = _mm256_loadu_ps(bias.as_ptr().add((b * K + c) * LANES));
            }
        }
        for &h in hidden {
            let h = _mm256_set1_ps(h);
            for (acc, p) in acc.iter_mut().zip(p.iter_mut()) {
                for (c, acc) in acc.iter_mut().enumerate() {
                    *acc = _mm256_fmadd_ps(h, T::load_lanes(p.add(c * LANES)), *acc);
                }
                *p = p.add(K * LANES);
            }
        }
        for (b, acc) in acc.iter().enumerate() {
            for (c, acc) in acc.iter().enumerate() {
                _mm256_storeu_ps(out.as_mut_ptr().add((b * K + c) * LANES), *acc);
            }
        }
    }
}

/// `y += x`
#[inline(always)]
pub fn add_assign(y: &mut [f32], x: &[f32]) {
    debug_assert_eq!(x.len(), y.len());
    for (y, x) in y.iter_mut().zip(x) {
        *y += x;
    }
}

/// `y += a·x`
#[inline(always)]
pub fn axpy(y: &mut [f32], a: f32, x: &[f32]) {
    debug_assert_eq!(x.len(), y.len());
    for (y, x) in y.iter_mut().zip(x) {
        *y += a * x;
    }
}

#[inline(always)]
pub fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + fast_exp(-x))
}

/// log(1 + eˣ) without overflow.
#[inline(always)]
pub fn softplus(x: f64) -> f64 {
    if x > 0.0 {
        x + (-x).exp().ln_1p()
    } else {
        x.exp().ln_1p()
    }
}

/// Replaces logits by their softmax, in place.
#[inline(always)]
pub fn softmax_in_place(logits: &mut [f32]) {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut sum = 0.0;
    for z in logits.iter_mut() {
        *z = fast_exp(*z - max);
        sum += *z;
    }
    for z in logits.iter_mut() {
        *z /= sum;
    }
}

/// eˣ for f32 by range reduction and a degree-6 polynomial (relative error < 2e-7 over the range
/// used), branch-free so that loops over it vectorise; libm's expf is a call per element.
#[inline(always)]
pub fn fast_exp(x: f32) -> f32 {
    let x = x.clamp(-87.0, 88.0);
    let n = (x * std::f32::consts::LOG2_E).round_ties_even();
    let r = x - n * 0.693_145_75 - n * 1.428_606_8e-6;
    let p = 1.0
        + r * (1.0
            + r * (0.5
                + r * (0.166_666_67 + r * (0.041_666_5 + r * (0.008_333_6 + r * 0.001_394_5)))));
    p * f32::from_bits(((n as i32 + 127) as u32) << 23)
}

/// For logits laid out class-major (`logits[k * d + i]`, K classes of d items), writes each item's
/// expected class Σ_k k·softmax_k into `out` and, if asked, log Σ_k e^{z_k} into
/// `log_normalisers`. The logits buffer is used as scratch.
#[inline(always)]
pub fn expected_class_of_logits(
    logits: &mut [f32],
    classes: usize,
    out: &mut [f32],
    mut log_normalisers: Option<&mut [f32]>,
) {
    let d = out.len();
    out.copy_from_slice(&logits[..d]);
    for k in 1..classes {
        for (m, &z) in out.iter_mut().zip(&logits[k * d..(k + 1) * d]) {
            *m = m.max(z);
        }
    }
    for k in 0..classes {
        for (z, &m) in logits[k * d..(k + 1) * d].iter_mut().zip(out.iter()) {
            *z = fast_exp(*z - m);
        }
    }
    if let Some(lse) = log_normalisers.as_deref_mut() {
        lse.copy_from_slice(out);
    }
    // out becomes Σ k·e_k, and row 0 of logits Σ e_k.
    out.fill(0.0);
    let (denominator, rest) = logits.split_at_mut(d);
    for k in 1..classes {
        for ((o, den), &e) in out
            .iter_mut()
            .zip(denominator.iter_mut())
            .zip(&rest[(k - 1) * d..k * d])
        {
            *o += k as f32 * e;
            *den += e;
        }
    }
    for (o, &den) in out.iter_mut().zip(denominator.iter()) {
        *o /= den;
    }
    if let Some(lse) = log_normalisers {
        for (l, &den) in lse.iter_mut().zip(denominator.iter()) {
            *l += den.ln();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[should_panic]
    fn row_dots_each_refuses_rows_shorter_than_its_vectors() {
        // Two rows of 8 would need 16 floats; with 12 the vector loads would read past the slice.
        let (rows, x, bias) = ([1.0f32; 12], [1.0f32; 8], [0.0f32; 2]);
        let mut out = [0.0f32; 2];
        row_dots_each(&rows, [&x], &bias, [&mut out]);
    }

    #[test]
    fn dot_matches_a_plain_sum_for_every_remainder() {
        for n in [0, 1, 7, 16, 17, 100, 203] {
            let a: Vec<f32> = (0..n).map(|i| (i as f32 * 0.37).sin()).collect();
            let b: Vec<f32> = (0..n).map(|i| (i as f32 * 0.11).cos()).collect();
            let exact: f64 = a
                .iter()
                .zip(&b)
                .map(|(x, y)| f64::from(*x) * f64::from(*y))
                .sum();
            assert!((f64::from(dot(&a, &b)) - exact).abs() < 1e-4, "n={n}");
        }
    }

    #[test]
    fn row_dots_match_plain_sums_for_every_shape() {
        for n in [1, 7, 8, 13, 100] {
            for k in [1, 2, 4, 5, 6, 10] {
                let rows: Vec<f32> = (0..k * n).map(|i| (i as f32 * 0.29).sin()).collect();
                let x: Vec<f32> = (0..n).map(|i| (i as f32 * 0.13).cos()).collect();
                let y: Vec<f32> = (0..n).map(|i| (i as f32 * 0.71).sin()).collect();
                let bias: Vec<f32> = (0..k).map(|r| r as f32 - 1.5).collect();
                let mut out = vec![0.0f32; k];
                row_dots_each(&rows, [&x], &bias, [&mut out]);
                for r in 0..k {
                    let exact: f64 = f64::from(bias[r])
                        + (0..n)
                            .map(|j| f64::from(rows[r * n + j]) * f64::from(x[j]))
                            .sum::<f64>();
                    assert!(
                        (f64::from(out[r]) - exact).abs() < 1e-4,
                        "n={n} k={k} r={r}"
                    );
                }
                let (mut pair_x, mut pair_y, mut alone_y) =
                    (vec![0.0; k], vec![0.0; k], vec![0.0; k]);
                row_dots_each(&rows, [&x, &y], &bias, [&mut pair_x, &mut pair_y]);
                row_dots_each(&rows, [&y], &bias, [&mut alone_y]);
                assert_eq!(
                    pair_x, out,
                    "n={n} k={k}: a pair gives each vector's own sums"
                );
                assert_eq!(pair_y, alone_y, "n={n} k={k}");
            }
        }
    }

    #[test]
    fn lane_logits_match_plain_sums_for_every_k() {
        let m = 13;
        for k in 1..=12 {
            let weights: Vec<f32> = (0..m * k * LANES)
                .map(|i| (i as f32 * 0.31).sin())
                .collect();
            let hidden: Vec<f32> = (0..m).map(|j| (j as f32 * 0.7).cos().abs()).collect();
            let bias: Vec<f32> = (0..k * LANES).map(|i| i as f32 * 0.01).collect();
            let mut out = vec![0.0f32; k * LANES];
            // f16 weights give the same sums as their f32 values, up to rounding.
            let halves: Vec<u16> = weights
                .iter()
                .map(|&w| half::f16::from_f32(w).to_bits())
                .collect();
            let mut from_halves = vec![0.0f32; k * LANES];
            lane_logits(&halves, &hidden, &bias, k, &mut from_halves);
            for (n, &o) in from_halves.iter().enumerate() {
                let (c, l) = (n / LANES, n % LANES);
                let exact: f64 = f64::from(bias[n])
                    + (0..m)
                        .map(|j| {
                            f64::from(hidden[j])
                                * f64::from(halves[(j * k + c) * LANES + l].to_f32())
                        })
                        .sum::<f64>();
                assert!((f64::from(o) - exact).abs() < 1e-4, "f16 k={k} n={n}");
            }
            lane_logits(&weights, &hidden, &bias, k, &mut out);
            for (n, &o) in out.iter().enumerate() {
                let (c, l) = (n / LANES, n % LANES);
                let exact: f64 = f64::from(bias[n])
                    + (0..m)
                        .map(|j| f64::from(hidden[j]) * f64::from(weights[(j * k + c) * LANES + l]))
                        .sum::<f64>();
                assert!((f64::from(o) - exact).abs() < 1e-4, "k={k} n={n}");
            }
        }
    }

    #[test]
    fn softmax_sums_to_one_and_survives_large_logits() {
        let mut z = [1000.0, 999.0, -5.0];
        softmax_in_place(&mut z);
        assert!((z.iter().sum::<f32>() - 1.0).abs() < 1e-6);
        assert!(z[0] > z[1] && z[1] > z[2]);
        assert!((softplus(800.0) - 800.0).abs() < 1e-9 && softplus(-800.0) >= 0.0);
    }

    #[test]
    fn fast_exp_matches_exp() {
        for i in -800..=800 {
            let x = i as f32 * 0.1;
            let (fast, exact) = (fast_exp(x), x.exp());
            assert!(
                ((fast - exact) / exact).abs() < 1e-6,
                "x={x}: {fast} vs {exact}"
            );
        }
    }
}
