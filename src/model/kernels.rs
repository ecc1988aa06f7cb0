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

/// `out[k] = bias[k] + rows[k]·x` for the K rows of `rows` (K·n floats, n = x.len()): all of a
/// visible unit's logits at once, so each load of x serves four rows and the four sums are reduced
/// together.
#[inline(always)]
pub fn row_dots(rows: &[f32], x: &[f32], bias: &[f32], out: &mut [f32]) {
    debug_assert_eq!(rows.len(), x.len() * out.len());
    debug_assert_eq!(bias.len(), out.len());
    #[cfg(all(
        target_arch = "x86_64",
        target_feature = "avx2",
        target_feature = "fma"
    ))]
    {
        // SAFETY: AVX2 and FMA are enabled (cfg above); every load stays inside `rows` and `x`
        // (the tail uses masked loads).
        unsafe { row_dots_avx2(rows, x, bias, out) }
    }
    #[cfg(not(all(
        target_arch = "x86_64",
        target_feature = "avx2",
        target_feature = "fma"
    )))]
    {
        for ((o, row), b) in out.iter_mut().zip(rows.chunks_exact(x.len())).zip(bias) {
            *o = b + dot(row, x);
        }
    }
}

#[cfg(all(
    target_arch = "x86_64",
    target_feature = "avx2",
    target_feature = "fma"
))]
#[inline(always)]
unsafe fn row_dots_avx2(rows: &[f32], x: &[f32], bias: &[f32], out: &mut [f32]) {
    use std::arch::x86_64::*;
    let n = x.len();
    let full = n / 8 * 8;
    let tail = (n - full) as i32;
    unsafe {
        let mask = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
        let mask = _mm256_cmpgt_epi32(_mm256_set1_epi32(tail), mask);
        let xt = _mm256_maskload_ps(x.as_ptr().add(full), mask);
        for (group, outs) in out.chunks_mut(4).enumerate() {
            // Rows past the last one repeat row 0 of the group and are discarded.
            let row = |r: usize| {
                let r = if r < outs.len() { r } else { 0 };
                rows.as_ptr().add((group * 4 + r) * n)
            };
            let (r0, r1, r2, r3) = (row(0), row(1), row(2), row(3));
            let mut a0 = _mm256_setzero_ps();
            let mut a1 = _mm256_setzero_ps();
            let mut a2 = _mm256_setzero_ps();
            let mut a3 = _mm256_setzero_ps();
            let mut c = 0;
            while c < full {
                let xv = _mm256_loadu_ps(x.as_ptr().add(c));
                a0 = _mm256_fmadd_ps(_mm256_loadu_ps(r0.add(c)), xv, a0);
                a1 = _mm256_fmadd_ps(_mm256_loadu_ps(r1.add(c)), xv, a1);
                a2 = _mm256_fmadd_ps(_mm256_loadu_ps(r2.add(c)), xv, a2);
                a3 = _mm256_fmadd_ps(_mm256_loadu_ps(r3.add(c)), xv, a3);
                c += 8;
            }
            if tail > 0 {
                a0 = _mm256_fmadd_ps(_mm256_maskload_ps(r0.add(full), mask), xt, a0);
                a1 = _mm256_fmadd_ps(_mm256_maskload_ps(r1.add(full), mask), xt, a1);
                a2 = _mm256_fmadd_ps(_mm256_maskload_ps(r2.add(full), mask), xt, a2);
                a3 = _mm256_fmadd_ps(_mm256_maskload_ps(r3.add(full), mask), xt, a3);
            }
            // Lane sums of a0..a3 in one vector: [s0 s1 s2 s3].
            let h01 = _mm256_hadd_ps(a0, a1);
            let h23 = _mm256_hadd_ps(a2, a3);
            let h = _mm256_hadd_ps(h01, h23);
            let sums = _mm_add_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps(h, 1));
            let mut lanes = [0.0f32; 4];
            _mm_storeu_ps(lanes.as_mut_ptr(), sums);
            for (r, o) in outs.iter_mut().enumerate() {
                *o = bias[group * 4 + r] + lanes[r];
            }
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

/// `y -= x`
#[inline(always)]
pub fn sub_assign(y: &mut [f32], x: &[f32]) {
    debug_assert_eq!(x.len(), y.len());
    for (y, x) in y.iter_mut().zip(x) {
        *y -= x;
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
/// expected class Σ_k k·softmax_k into `out`. The logits buffer is used as scratch.
#[inline(always)]
pub fn expected_class_of_logits(logits: &mut [f32], classes: usize, out: &mut [f32]) {
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
}

#[cfg(test)]
mod tests {
    use super::*;

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
            for k in [1, 2, 4, 5, 10] {
                let rows: Vec<f32> = (0..k * n).map(|i| (i as f32 * 0.29).sin()).collect();
                let x: Vec<f32> = (0..n).map(|i| (i as f32 * 0.13).cos()).collect();
                let bias: Vec<f32> = (0..k).map(|r| r as f32 - 1.5).collect();
                let mut out = vec![0.0f32; k];
                row_dots(&rows, &x, &bias, &mut out);
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
