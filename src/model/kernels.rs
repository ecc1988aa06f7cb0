//! The few vector loops everything hot is made of. On x86-64 each has an AVX2 + FMA version with
//! intrinsics, taken when [`simd::avx2`] says the CPU has them (LLVM does not vectorise a float
//! reduction on its own), and a plain one otherwise. Reductions combine lanes in a fixed order, so a
//! model trained with a given seed and thread count is the same on every machine that takes the same
//! path; the two paths agree to rounding (the plain one does not fuse multiply-adds).

use super::simd;

#[inline(always)]
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    debug_assert_eq!(a.len(), b.len());
    #[cfg(target_arch = "x86_64")]
    if simd::avx2() {
        // SAFETY: avx2() found AVX2 and FMA on this CPU.
        return unsafe { dot_avx2(a, b) };
    }
    dot_plain(a, b)
}

#[inline(always)]
fn dot_plain(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0.0f32; 8];
    for (l, (x, y)) in a.iter().zip(b).enumerate() {
        acc[l % 8] += x * y;
    }
    acc.iter().sum()
}

/// # Safety
/// The CPU must have AVX2 and FMA. Inlined into code compiled with them (`simd::multiversion!`),
/// this is a few vector instructions; elsewhere it is one call.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[inline]
unsafe fn dot_avx2(a: &[f32], b: &[f32]) -> f32 {
    use std::arch::x86_64::*;
    let n = a.len().min(b.len());
    let (pa, pb) = (a.as_ptr(), b.as_ptr());
    // SAFETY: every load reads below n, within both slices.
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
        let mut sum = horizontal_sum(_mm256_add_ps(acc0, acc1));
        while i < n {
            sum += *pa.add(i) * *pb.add(i);
            i += 1;
        }
        sum
    }
}

/// The sum of a vector's lanes, in a fixed order.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
#[inline]
fn horizontal_sum(v: std::arch::x86_64::__m256) -> f32 {
    use std::arch::x86_64::*;
    let half = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    let quarter = _mm_add_ps(half, _mm_movehl_ps(half, half));
    _mm_cvtss_f32(_mm_add_ss(quarter, _mm_shuffle_ps(quarter, quarter, 1)))
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
    #[cfg(target_arch = "x86_64")]
    if simd::avx2() {
        // SAFETY: avx2() found AVX2 and FMA on this CPU, and the lengths are checked above.
        unsafe { row_dots_each_avx2(rows, xs, bias, outs) };
        return;
    }
    for (x, out) in xs.iter().zip(outs) {
        for ((o, row), b) in out.iter_mut().zip(rows.chunks_exact(n)).zip(bias) {
            *o = b + dot_plain(row, x);
        }
    }
}

/// `row_dots_each` with the lengths checked, ROWS_PER_PASS rows at a time.
///
/// # Safety
/// As for `dots_avx2`, for bias.len() rows.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[inline]
unsafe fn row_dots_each_avx2<const E: usize>(
    rows: &[f32],
    xs: [&[f32]; E],
    bias: &[f32],
    outs: [&mut [f32]; E],
) {
    let n = xs[0].len();
    for (group, bias) in bias.chunks(ROWS_PER_PASS).enumerate() {
        let first = group * ROWS_PER_PASS;
        let rows = &rows[first * n..(first + bias.len()) * n];
        let mut sums = [[0.0f32; ROWS_PER_PASS]; E];
        // SAFETY: the caller's contract; `rows` holds bias.len() rows of n floats.
        unsafe {
            match bias.len() {
                1 => dots_avx2::<1, E>(rows, xs, &mut sums),
                2 => dots_avx2::<2, E>(rows, xs, &mut sums),
                3 => dots_avx2::<3, E>(rows, xs, &mut sums),
                4 => dots_avx2::<4, E>(rows, xs, &mut sums),
                _ => dots_avx2::<ROWS_PER_PASS, E>(rows, xs, &mut sums),
            }
        }
        for e in 0..E {
            let out = &mut outs[e][first..first + bias.len()];
            for r in 0..bias.len() {
                out[r] = bias[r] + sums[e][r];
            }
        }
    }
}

/// Rows per kernel pass: with two vectors, 2·5 accumulators, two x and one row stay in the 16 AVX
/// registers.
const ROWS_PER_PASS: usize = 5;

/// `sums[e][r] = rows[r]·xs[e]` for R rows of n = xs[e].len() floats, r < R. Each sum is reduced on
/// its own in a fixed order, so it does not depend on R, E or the other rows. Written without
/// closures: a closure is compiled with the target features of the function it is written in, but
/// the generic code that calls it (`array::from_fn`, `map`) is not, and a call between the two
/// cannot be inlined.
///
/// # Safety
/// The CPU must have AVX2 and FMA, every `xs[e]` must hold n floats and `rows` R rows of n floats.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[inline]
#[allow(clippy::needless_range_loop)] // the (e, r) indices are the accumulator grid's coordinates
unsafe fn dots_avx2<const R: usize, const E: usize>(
    rows: &[f32],
    xs: [&[f32]; E],
    sums: &mut [[f32; ROWS_PER_PASS]; E],
) {
    use std::arch::x86_64::*;
    let n = xs[0].len();
    let full = n / 8 * 8;
    let tail = (n - full) as i32;
    let mask = _mm256_cmpgt_epi32(
        _mm256_set1_epi32(tail),
        _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7),
    );
    let (rows, mut x) = (rows.as_ptr(), [_mm256_setzero_ps(); E]);
    let mut acc = [[_mm256_setzero_ps(); R]; E];
    let mut c = 0;
    // SAFETY: the loads read below `full` (or, masked, below n) in every row and vector.
    unsafe {
        while c < full {
            for e in 0..E {
                x[e] = _mm256_loadu_ps(xs[e].as_ptr().add(c));
            }
            for r in 0..R {
                let w = _mm256_loadu_ps(rows.add(r * n + c));
                for e in 0..E {
                    acc[e][r] = _mm256_fmadd_ps(w, x[e], acc[e][r]);
                }
            }
            c += 8;
        }
        if tail > 0 {
            for e in 0..E {
                x[e] = _mm256_maskload_ps(xs[e].as_ptr().add(full), mask);
            }
            for r in 0..R {
                let w = _mm256_maskload_ps(rows.add(r * n + full), mask);
                for e in 0..E {
                    acc[e][r] = _mm256_fmadd_ps(w, x[e], acc[e][r]);
                }
            }
        }
    }
    for e in 0..E {
        // Four accumulators' lane sums in one vector, [s0 s1 s2 s3], then the fifth on its own.
        let mut four = [_mm256_setzero_ps(); 4];
        four[..R.min(4)].copy_from_slice(&acc[e][..R.min(4)]);
        let h = _mm256_hadd_ps(
            _mm256_hadd_ps(four[0], four[1]),
            _mm256_hadd_ps(four[2], four[3]),
        );
        let h = _mm_add_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps(h, 1));
        let mut lanes = [0.0f32; 4];
        // SAFETY: `lanes` holds four floats.
        unsafe { _mm_storeu_ps(lanes.as_mut_ptr(), h) };
        sums[e][..4].copy_from_slice(&lanes);
        if R > 4 {
            let h = _mm256_hadd_ps(
                _mm256_hadd_ps(acc[e][R - 1], _mm256_setzero_ps()),
                _mm256_setzero_ps(),
            );
            let h = _mm_add_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps(h, 1));
            sums[e][4] = _mm_cvtss_f32(h);
        }
    }
}

/// `out[j·stride + l] = rows[l][j]` for every j < n = rows[l].len(): LANES item-major rows of
/// one class turned into that class's lane-major column of a catalogue block (stride K·LANES), as
/// `lane_logits` reads it. With AVX2 eight rows go through an 8×8 transpose in registers, one
/// store a vector, where element by element the stores land 4·K·LANES bytes apart.
#[inline(always)]
pub fn rows_to_lanes(rows: [&[f32]; LANES], out: &mut [f32], stride: usize) {
    let n = rows[0].len();
    assert!(rows.iter().all(|r| r.len() == n) && stride >= LANES);
    assert!(n == 0 || out.len() >= (n - 1) * stride + LANES);
    let mut done = 0;
    #[cfg(target_arch = "x86_64")]
    if simd::avx2() {
        // SAFETY: avx2() found AVX2 on this CPU; the lengths are checked above.
        done = unsafe { rows_to_lanes_avx2(&rows, out, stride) };
    }
    for j in done..n {
        for (l, row) in rows.iter().enumerate() {
            out[j * stride + l] = row[j];
        }
    }
}

/// The whole groups of eight columns of `rows_to_lanes`; returns how many columns it wrote.
///
/// # Safety
/// The CPU must have AVX2, and the lengths must be as `rows_to_lanes` checks them.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
#[inline]
unsafe fn rows_to_lanes_avx2(rows: &[&[f32]; LANES], out: &mut [f32], stride: usize) -> usize {
    use std::arch::x86_64::*;
    let full = rows[0].len() / 8 * 8;
    let mut j = 0;
    // SAFETY: loads read columns below `full` of each row; stores land below (full−1)·stride + 8.
    unsafe {
        while j < full {
            // A loop, not array::from_fn: a closure's caller is compiled without AVX2 (see
            // `dots_avx2`).
            let mut r = [_mm256_setzero_ps(); 8];
            for (r, row) in r.iter_mut().zip(rows) {
                *r = _mm256_loadu_ps(row.as_ptr().add(j));
            }
            let t = [
                _mm256_unpacklo_ps(r[0], r[1]),
                _mm256_unpackhi_ps(r[0], r[1]),
                _mm256_unpacklo_ps(r[2], r[3]),
                _mm256_unpackhi_ps(r[2], r[3]),
                _mm256_unpacklo_ps(r[4], r[5]),
                _mm256_unpackhi_ps(r[4], r[5]),
                _mm256_unpacklo_ps(r[6], r[7]),
                _mm256_unpackhi_ps(r[6], r[7]),
            ];
            let q = [
                _mm256_shuffle_ps::<0x44>(t[0], t[2]),
                _mm256_shuffle_ps::<0xee>(t[0], t[2]),
                _mm256_shuffle_ps::<0x44>(t[1], t[3]),
                _mm256_shuffle_ps::<0xee>(t[1], t[3]),
                _mm256_shuffle_ps::<0x44>(t[4], t[6]),
                _mm256_shuffle_ps::<0xee>(t[4], t[6]),
                _mm256_shuffle_ps::<0x44>(t[5], t[7]),
                _mm256_shuffle_ps::<0xee>(t[5], t[7]),
            ];
            // Column j + c: lanes 0–3 from the first half of q[c % 4], 4–7 from q[c % 4 + 4].
            for c in 0..4 {
                let low = _mm256_permute2f128_ps::<0x20>(q[c], q[c + 4]);
                let high = _mm256_permute2f128_ps::<0x31>(q[c], q[c + 4]);
                _mm256_storeu_ps(out.as_mut_ptr().add((j + c) * stride), low);
                _mm256_storeu_ps(out.as_mut_ptr().add((j + c + 4) * stride), high);
            }
            j += 8;
        }
    }
    full
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
    /// Whether the values are f16 bits, which the vector kernel widens with F16C as it loads them.
    const HALF: bool;

    fn to_f32(self) -> f32;
}

impl Weight for f32 {
    const HALF: bool = false;

    #[inline(always)]
    fn to_f32(self) -> f32 {
        self
    }
}

impl Weight for u16 {
    const HALF: bool = true;

    #[inline(always)]
    fn to_f32(self) -> f32 {
        half::f16::from_bits(self).to_f32()
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
    #[cfg(target_arch = "x86_64")]
    if simd::avx2() && classes <= 10 {
        // SAFETY: avx2() found AVX2, FMA and F16C on this CPU; the lengths are checked above.
        unsafe { lane_logits_avx2(weights, hidden, bias, classes, out) };
        return;
    }
    lane_logits_plain(weights, hidden, bias, classes, out);
}

/// `lane_logits` for any shape, in plain code (sums kept in memory, multiply-adds not fused).
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
                *o += h * w.to_f32();
            }
        }
    }
}

/// `lane_logits` for K ≤ 10 with the sums in registers.
///
/// # Safety
/// The CPU must have AVX2, FMA and F16C, and the lengths must be as `lane_logits` checks them.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
unsafe fn lane_logits_avx2<T: Weight>(
    weights: &[T],
    hidden: &[f32],
    bias: &[f32],
    classes: usize,
    out: &mut [f32],
) {
    macro_rules! by_classes {
        ($blocks:literal, $weights:expr, $bias:expr, $out:expr; $($k:literal)*) => {
            match classes {
                // SAFETY: the caller's contract, for these blocks.
                $($k => unsafe { lane_sums::<T, $blocks, $k>($weights, hidden, $bias, $out) },)*
                _ => unreachable!("classes ≤ 10"),
            }
        };
    }
    let block = classes * LANES;
    if out.len() == 2 * block && classes <= 6 {
        by_classes!(2, weights, bias, out; 1 2 3 4 5 6);
    } else {
        let span = hidden.len() * block;
        for (n, out) in out.chunks_mut(block).enumerate() {
            let weights = &weights[n * span..(n + 1) * span];
            let bias = &bias[n * block..(n + 1) * block];
            by_classes!(1, weights, bias, out; 1 2 3 4 5 6 7 8 9 10);
        }
    }
}

/// The sums of `lane_logits` for B blocks of K classes.
///
/// # Safety
/// As for `lane_logits_avx2`, with B blocks of K classes.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
unsafe fn lane_sums<T: Weight, const B: usize, const K: usize>(
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
                    let w = p.add(c * LANES);
                    let w = if T::HALF {
                        _mm256_cvtph_ps(_mm_loadu_si128(w.cast::<__m128i>()))
                    } else {
                        _mm256_loadu_ps(w.cast::<f32>())
                    };
                    *acc = _mm256_fmadd_ps(h, w, *acc);
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

/// `lane_logits` of the same blocks for several hidden vectors: `out` holds one `bias.len()` run
/// per vector, and the u-th is, bit for bit, what `lane_logits(weights, hiddens[u], ..)` writes
/// (every sum is the same chain of multiply-adds). Each weight is loaded, and widened from f16,
/// once for a group of vectors, so that with users waiting together the catalogue pass is bound by
/// multiply-adds rather than by loads and conversions; the group is as large as the registers
/// allow, four with AVX-512VL's 32 at K ≤ 6.
#[inline(always)]
pub fn lane_logits_each<T: Weight>(
    weights: &[T],
    hiddens: &[&[f32]],
    bias: &[f32],
    classes: usize,
    out: &mut [f32],
) {
    let (block, m) = (classes * LANES, hiddens.first().map_or(0, |h| h.len()));
    let blocks = bias.len() / block;
    assert!(
        bias.len() == blocks * block
            && out.len() == hiddens.len() * bias.len()
            && weights.len() == blocks * m * block
            && hiddens.iter().all(|h| h.len() == m)
    );
    #[cfg(target_arch = "x86_64")]
    if simd::avx2() && classes <= 10 && hiddens.len() > 1 {
        // SAFETY: avx2() found AVX2, FMA and F16C on this CPU (and wide_registers() AVX-512F and
        // VL); the lengths are checked above.
        unsafe {
            if simd::wide_registers() && blocks == 2 {
                lane_logits_each_pairs(weights, hiddens, bias, classes, out);
            } else if simd::wide_registers() {
                lane_logits_each_wide(weights, hiddens, bias, classes, out);
            } else {
                lane_logits_each_avx2(weights, hiddens, bias, classes, out);
            }
        }
        return;
    }
    for (hidden, out) in hiddens.iter().zip(out.chunks_mut(bias.len())) {
        lane_logits(weights, hidden, bias, classes, out);
    }
}

/// The most vectors one kernel call serves at K classes, with `registers` vector registers: U·K
/// sums, U broadcast hidden values and one weight must fit.
fn group_size(classes: usize, registers: usize) -> usize {
    ((registers - 1) / (classes + 1)).clamp(1, 4)
}

/// The `sums::<T, U, K>` kernel for `classes` = K among the literals listed.
macro_rules! sums_for_classes {
    ($sums:ident, $t:ident, $u:literal, $classes:expr; $($k:literal)*) => {
        match $classes {
            $($k => $sums::<$t, $u, $k> as Kernel<$t>,)*
            _ => unreachable!("classes ≤ 10"),
        }
    };
}

/// The `sums::<T, U, K>` kernel for a group of U = `$size` ≤ 4 vectors and K = `$classes` ≤ 10.
macro_rules! sums_for_group {
    ($sums:ident, $t:ident, $size:expr, $classes:expr) => {
        match $size {
            1 => sums_for_classes!($sums, $t, 1, $classes; 1 2 3 4 5 6 7 8 9 10),
            2 => sums_for_classes!($sums, $t, 2, $classes; 1 2 3 4 5 6 7 8 9 10),
            3 => sums_for_classes!($sums, $t, 3, $classes; 1 2 3 4 5 6 7 8 9 10),
            _ => sums_for_classes!($sums, $t, 4, $classes; 1 2 3 4 5 6 7 8 9 10),
        }
    };
}

/// Emits `lane_logits_each` for AVX2 under `$features`: split the vectors into near-equal groups
/// of at most `group_size(K, $registers)` and run each block through `sums`. The kernel is emitted
/// inside so that it is compiled with the caller's registers.
macro_rules! lane_logits_each_for {
    ($name:ident, $features:literal, $registers:literal) => {
        /// # Safety
        /// The CPU must have the features named; lengths as `lane_logits_each` checks them.
        #[cfg(target_arch = "x86_64")]
        #[target_feature(enable = $features)]
        unsafe fn $name<T: Weight>(
            weights: &[T],
            hiddens: &[&[f32]],
            bias: &[f32],
            classes: usize,
            out: &mut [f32],
        ) {
            #[target_feature(enable = $features)]
            #[inline]
            unsafe fn sums<T: Weight, const U: usize, const K: usize>(
                weights: &[T],
                hiddens: &[&[f32]],
                bias: &[f32],
                out: &mut [f32],
                stride: usize,
            ) {
                use std::arch::x86_64::*;
                assert!(hiddens.len() == U && out.len() >= (U - 1) * stride + K * LANES);
                unsafe {
                    let mut acc = [[_mm256_setzero_ps(); K]; U];
                    for acc in acc.iter_mut() {
                        for (c, acc) in acc.iter_mut().enumerate() {
                            *acc = _mm256_loadu_ps(bias.as_ptr().add(c * LANES));
                        }
                    }
                    let mut p = weights.as_ptr();
                    for j in 0..hiddens[0].len() {
                        let mut h = [_mm256_setzero_ps(); U];
                        for (h, hidden) in h.iter_mut().zip(hiddens) {
                            *h = _mm256_set1_ps(*hidden.get_unchecked(j));
                        }
                        for c in 0..K {
                            let w = p.add(c * LANES);
                            let w = if T::HALF {
                                _mm256_cvtph_ps(_mm_loadu_si128(w.cast::<__m128i>()))
                            } else {
                                _mm256_loadu_ps(w.cast::<f32>())
                            };
                            for u in 0..U {
                                acc[u][c] = _mm256_fmadd_ps(h[u], w, acc[u][c]);
                            }
                        }
                        p = p.add(K * LANES);
                    }
                    for (u, acc) in acc.iter().enumerate() {
                        for (c, acc) in acc.iter().enumerate() {
                            _mm256_storeu_ps(out.as_mut_ptr().add(u * stride + c * LANES), *acc);
                        }
                    }
                }
            }

            type Kernel<T> = unsafe fn(&[T], &[&[f32]], &[f32], &mut [f32], usize);
            let block = classes * LANES;
            let span = hiddens[0].len() * block;
            let stride = bias.len();
            for range in vector_groups(hiddens.len(), group_size(classes, $registers)) {
                let (first, group) = (range.start, &hiddens[range]);
                let kernel = sums_for_group!(sums, T, group.len(), classes);
                for (n, bias) in bias.chunks(block).enumerate() {
                    let weights = &weights[n * span..(n + 1) * span];
                    let out = &mut out[first * stride + n * block..];
                    // SAFETY: the caller's contract, for this block and group.
                    unsafe { kernel(weights, group, bias, out, stride) };
                }
            }
        }
    };
}

lane_logits_each_for!(lane_logits_each_avx2, "avx2,fma,f16c", 16);
lane_logits_each_for!(lane_logits_each_wide, "avx2,fma,f16c,avx512f,avx512vl", 32);

/// `lane_logits_each` for exactly two blocks in 512-bit registers: the two blocks' LANES items of
/// a class side by side in one register, so that each multiply-add does twice the work of the
/// AVX2 kernels'. Each lane runs the same chain of multiply-adds as theirs, so the logits are the
/// same bit for bit. Weights of the two blocks are loaded from their two places (and widened from
/// f16 as one vector), which costs a shuffle a weight vector: below the multiply-adds' share
/// while a weight serves a group of several vectors.
///
/// # Safety
/// The CPU must have AVX2, FMA, F16C and AVX-512F; lengths as `lane_logits_each` checks them,
/// with two blocks.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c,avx512f")]
unsafe fn lane_logits_each_pairs<T: Weight>(
    weights: &[T],
    hiddens: &[&[f32]],
    bias: &[f32],
    classes: usize,
    out: &mut [f32],
) {
    #[target_feature(enable = "avx2,fma,f16c,avx512f")]
    #[inline]
    #[allow(clippy::needless_range_loop)] // (u, c) are the accumulator grid's coordinates
    unsafe fn sums<T: Weight, const U: usize, const K: usize>(
        weights: &[T],
        hiddens: &[&[f32]],
        bias: &[f32],
        out: &mut [f32],
        stride: usize,
    ) {
        use std::arch::x86_64::*;
        let m = hiddens[0].len();
        let span = m * K * LANES;
        assert!(hiddens.len() == U && out.len() >= (U - 1) * stride + 2 * K * LANES);
        assert!(weights.len() == 2 * span && bias.len() == 2 * K * LANES);
        // SAFETY: every load and store lies inside the slices checked above.
        unsafe {
            let pair = |first: __m256, second: __m256| {
                _mm512_castpd_ps(_mm512_insertf64x4::<1>(
                    _mm512_castpd256_pd512(_mm256_castps_pd(first)),
                    _mm256_castps_pd(second),
                ))
            };
            let mut acc = [[_mm512_setzero_ps(); K]; U];
            for acc in acc.iter_mut() {
                for (c, acc) in acc.iter_mut().enumerate() {
                    *acc = pair(
                        _mm256_loadu_ps(bias.as_ptr().add(c * LANES)),
                        _mm256_loadu_ps(bias.as_ptr().add((K + c) * LANES)),
                    );
                }
            }
            let mut p = weights.as_ptr();
            for j in 0..m {
                let mut h = [_mm512_setzero_ps(); U];
                for (h, hidden) in h.iter_mut().zip(hiddens) {
                    *h = _mm512_set1_ps(*hidden.get_unchecked(j));
                }
                for c in 0..K {
                    let (first, second) = (p.add(c * LANES), p.add(span + c * LANES));
                    let w = if T::HALF {
                        _mm512_cvtph_ps(_mm256_inserti128_si256::<1>(
                            _mm256_castsi128_si256(_mm_loadu_si128(first.cast::<__m128i>())),
                            _mm_loadu_si128(second.cast::<__m128i>()),
                        ))
                    } else {
                        pair(
                            _mm256_loadu_ps(first.cast::<f32>()),
                            _mm256_loadu_ps(second.cast::<f32>()),
                        )
                    };
                    for u in 0..U {
                        acc[u][c] = _mm512_fmadd_ps(h[u], w, acc[u][c]);
                    }
                }
                p = p.add(K * LANES);
            }
            for (u, acc) in acc.iter().enumerate() {
                for (c, acc) in acc.iter().enumerate() {
                    let at = out.as_mut_ptr().add(u * stride + c * LANES);
                    _mm256_storeu_ps(at, _mm512_castps512_ps256(*acc));
                    let upper = _mm512_extractf64x4_pd::<1>(_mm512_castps_pd(*acc));
                    _mm256_storeu_ps(at.add(K * LANES), _mm256_castpd_ps(upper));
                }
            }
        }
    }

    type Kernel<T> = unsafe fn(&[T], &[&[f32]], &[f32], &mut [f32], usize);
    let stride = bias.len();
    for group in vector_groups(hiddens.len(), group_size(classes, 32)) {
        let kernel = sums_for_group!(sums, T, group.len(), classes);
        let out = &mut out[group.start * stride..];
        // SAFETY: the caller's contract, for this group.
        unsafe { kernel(weights, &hiddens[group], bias, out, stride) };
    }
}

/// `count` vectors cut into consecutive groups of at most `most`, whose sizes differ by at most
/// one: 5 vectors in groups of up to 4 run as 3 + 2.
fn vector_groups(count: usize, most: usize) -> impl Iterator<Item = std::ops::Range<usize>> {
    let groups = count.div_ceil(most);
    (0..groups).scan(0, move |first, g| {
        let size = (count - *first).div_ceil(groups - g);
        let group = *first..*first + size;
        *first += size;
        Some(group)
    })
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
    let n = nearest_integer(x * std::f32::consts::LOG2_E);
    let r = x - n * 0.693_145_75 - n * 1.428_606_8e-6;
    let p = 1.0
        + r * (1.0
            + r * (0.5
                + r * (0.166_666_67 + r * (0.041_666_5 + r * (0.008_333_6 + r * 0.001_394_5)))));
    p * f32::from_bits(biased_exponent(n))
}

/// The bits of 2ⁿ for an integer-valued n in [−126, 127]: n + 127 lands in the low mantissa bits
/// of n + 127 + 1.5·2²³, and shifting them into the exponent field drops the rest. Integer and
/// float additions only, so a loop of fast_exp vectorises (`n as i32` saturates, and LLVM then
/// keeps the conversion scalar).
#[inline(always)]
fn biased_exponent(n: f32) -> u32 {
    const SHIFT: f32 = 12_582_912.0;
    (n + (SHIFT + 127.0)).to_bits() << 23
}

simd::multiversion! {
    /// Moves each `low[n]` to a number at or below log σ(low[n]) and each `high[n]` to one at or
    /// above log σ(high[n]), each within 2e-5·(1 + |log σ|) of it: bounds of log σ over an
    /// interval, in vector lanes (libm's log1pf is a call per element).
    ///
    /// log σ(x) = min(x, 0) − ln(1 + z) with z = e^{−|x|} ∈ (0, 1], and ln(1 + z) = 2·atanh(s) =
    /// 2(s + s³/3 + s⁵/5 + …) with s = z/(2 + z) ≤ 1/3. Stopping after s⁹ leaves out less than
    /// 2s¹¹/(11(1 − s²)) < 1.2e-6; fast_exp's relative error (< 1e-6) moves ln(1 + z) by less
    /// than 1e-6; the f32 arithmetic of s and the polynomial adds a few ulps of a value below
    /// ln 2, and the last subtraction half an ulp of the result. So the computed value is within
    /// 3e-6 + 1e-7·|log σ| of the true one, and a slack of 1e-5·(1 + |value|) covers it.
    pub fn log_sigmoid_bounds / log_sigmoid_bounds_avx2(low: &mut [f32], high: &mut [f32]) {
        #[inline(always)]
        fn log_sigmoid(x: f32) -> f32 {
            let z = fast_exp(-x.abs());
            let s = z / (2.0 + z);
            let s2 = s * s;
            let series = 1.0 + s2 * (1.0 / 3.0 + s2 * (0.2 + s2 * (1.0 / 7.0 + s2 * (1.0 / 9.0))));
            x.min(0.0) - 2.0 * s * series
        }
        for l in low.iter_mut() {
            let v = log_sigmoid(*l);
            *l = v - 1e-5 * (1.0 - v);
        }
        for h in high.iter_mut() {
            let v = log_sigmoid(*h);
            *h = v + 1e-5 * (1.0 - v);
        }
    }
}

/// `v.round_ties_even()` for |v| < 2²²: adding and taking off 1.5·2²³ leaves no bits below the
/// units place, in two instructions on any x86-64 (round_ties_even is a libm call without SSE4.1).
#[inline(always)]
fn nearest_integer(v: f32) -> f32 {
    const SHIFT: f32 = 12_582_912.0;
    (v + SHIFT) - SHIFT
}

/// E[class] (and log Σ_k e^{logit_k} if asked) of the items of whole blocks of logits laid out as
/// `lane_logits` writes them (K classes of LANES items a block), one per item of `out`.
#[inline(always)]
pub fn expected_classes_of_blocks(
    logits: &[f32],
    classes: usize,
    out: &mut [f32],
    mut log_normalisers: Option<&mut [f32]>,
) {
    for (block, (logits, out)) in logits
        .chunks(classes * LANES)
        .zip(out.chunks_mut(LANES))
        .enumerate()
    {
        let (mut expected, mut lse) = ([0.0f32; LANES], [0.0f32; LANES]);
        let wanted = log_normalisers.is_some().then_some(&mut lse);
        expected_class_of_lanes(logits, classes, &mut expected, wanted);
        let n = out.len();
        out.copy_from_slice(&expected[..n]);
        if let Some(l) = log_normalisers.as_deref_mut() {
            l[block * LANES..block * LANES + n].copy_from_slice(&lse[..n]);
        }
    }
}

/// For one block of `lane_logits`' layout (`logits[k * LANES + lane]`, K classes of LANES items),
/// writes each item's expected class Σ_k k·softmax_k into `out` and, if asked, log Σ_k e^{z_k}
/// into `log_normalisers`. Every step is a whole-array operation on `[f32; LANES]`, which LLVM
/// keeps in vector registers: the same loops over a slice of length 8 it unrolled into scalar code.
#[inline(always)]
pub fn expected_class_of_lanes(
    logits: &[f32],
    classes: usize,
    out: &mut [f32; LANES],
    log_normalisers: Option<&mut [f32; LANES]>,
) {
    let row = |k: usize| -> &[f32; LANES] {
        logits[k * LANES..(k + 1) * LANES]
            .try_into()
            .expect("a block holds every class")
    };
    let mut max = *row(0);
    for k in 1..classes {
        let z = row(k);
        for lane in 0..LANES {
            max[lane] = max[lane].max(z[lane]);
        }
    }
    let (mut sum, mut denominator) = ([0.0f32; LANES], [0.0f32; LANES]);
    for k in 0..classes {
        let z = row(k);
        for lane in 0..LANES {
            let e = fast_exp(z[lane] - max[lane]);
            if k == 0 {
                denominator[lane] = e;
            } else {
                sum[lane] += k as f32 * e;
                denominator[lane] += e;
            }
        }
    }
    for lane in 0..LANES {
        out[lane] = sum[lane] / denominator[lane];
    }
    if let Some(lse) = log_normalisers {
        for lane in 0..LANES {
            lse[lane] = max[lane] + denominator[lane].ln();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The f16 bits of each weight, as the screening copy holds them.
    fn halves_of(weights: &[f32]) -> Vec<u16> {
        weights
            .iter()
            .map(|&w| half::f16::from_f32(w).to_bits())
            .collect()
    }

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
            let halves = halves_of(&weights);
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

    /// Users scored together get, bit for bit, the logits each gets alone, in every group size
    /// and shape, from both register budgets' kernels (the wide one where the CPU has AVX-512VL).
    #[test]
    fn lane_logits_each_gives_each_vector_its_own_logits() {
        let m = 29;
        for k in 1..=10 {
            for blocks in [1, 2] {
                let len = blocks * m * k * LANES;
                let weights: Vec<f32> = (0..len).map(|i| (i as f32 * 0.37).sin()).collect();
                let halves = halves_of(&weights);
                let bias: Vec<f32> = (0..blocks * k * LANES).map(|i| i as f32 * 0.03).collect();
                let hiddens: Vec<Vec<f32>> = (0..9)
                    .map(|u| {
                        (0..m)
                            .map(|j| ((u * m + j) as f32 * 0.61).cos().abs())
                            .collect()
                    })
                    .collect();
                for users in 1..=hiddens.len() {
                    let hiddens: Vec<&[f32]> = hiddens[..users].iter().map(|h| &h[..]).collect();
                    let mut alone = vec![0.0f32; users * bias.len()];
                    let mut together = alone.clone();
                    for (hidden, out) in hiddens.iter().zip(alone.chunks_mut(bias.len())) {
                        lane_logits(&halves, hidden, &bias, k, out);
                    }
                    lane_logits_each(&halves, &hiddens, &bias, k, &mut together);
                    assert_eq!(alone, together, "f16 k={k} blocks={blocks} users={users}");
                    #[cfg(target_arch = "x86_64")]
                    if cpu_has_avx2() && users > 1 {
                        // SAFETY: the CPU has AVX2, FMA and F16C; shapes as checked above.
                        unsafe {
                            lane_logits_each_avx2(&halves, &hiddens, &bias, k, &mut together)
                        };
                        assert_eq!(alone, together, "avx2 k={k} blocks={blocks} users={users}");
                        if is_x86_feature_detected!("avx512vl") {
                            together.fill(0.0);
                            // SAFETY: and AVX-512F and VL.
                            unsafe {
                                lane_logits_each_wide(&halves, &hiddens, &bias, k, &mut together)
                            };
                            assert_eq!(alone, together, "wide k={k} users={users}");
                            if blocks == 2 && is_x86_feature_detected!("avx512f") {
                                together.fill(0.0);
                                // SAFETY: and AVX-512F, with two blocks.
                                unsafe {
                                    lane_logits_each_pairs(
                                        &halves,
                                        &hiddens,
                                        &bias,
                                        k,
                                        &mut together,
                                    )
                                };
                                assert_eq!(alone, together, "pairs k={k} users={users}");
                            }
                        }
                    }
                    for (hidden, out) in hiddens.iter().zip(alone.chunks_mut(bias.len())) {
                        lane_logits(&weights, hidden, &bias, k, out);
                    }
                    lane_logits_each(&weights, &hiddens, &bias, k, &mut together);
                    assert_eq!(alone, together, "f32 k={k} blocks={blocks} users={users}");
                }
            }
        }
    }

    #[test]
    fn rows_to_lanes_transposes_every_length() {
        for n in [0, 1, 7, 8, 9, 16, 23, 300] {
            let rows: Vec<Vec<f32>> = (0..LANES)
                .map(|l| (0..n).map(|j| (l * 1000 + j) as f32).collect())
                .collect();
            let stride = 5 * LANES;
            let mut out = vec![-1.0f32; n.max(1) * stride];
            rows_to_lanes(std::array::from_fn(|l| &rows[l][..]), &mut out, stride);
            for j in 0..n {
                for l in 0..LANES {
                    assert_eq!(out[j * stride + l], rows[l][j], "n={n} j={j} l={l}");
                }
                assert!(
                    out[j * stride + LANES..(j + 1) * stride]
                        .iter()
                        .all(|&x| x == -1.0)
                );
            }
        }
    }

    /// The plain reference for `expected_class_of_lanes`: the same steps on logits laid out
    /// class-major (`logits[k * d + i]`, K classes of d items); the logits are used as scratch.
    fn expected_class_of_logits(
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

    #[test]
    fn expected_class_of_lanes_is_the_general_function_bit_for_bit() {
        for classes in 1..=10 {
            for seed in 0..20u32 {
                // Logits from −60 to 60, so some classes' exponentials underflow against the max.
                let logits: Vec<f32> = (0..classes * LANES)
                    .map(|i| ((i as u32 * 7919 + seed * 104_729) as f32 * 0.618).sin() * 60.0)
                    .collect();
                let (mut general, mut general_lse) = ([0.0f32; LANES], [0.0f32; LANES]);
                expected_class_of_logits(
                    &mut logits.clone(),
                    classes,
                    &mut general,
                    Some(&mut general_lse),
                );
                let (mut lanes, mut lanes_lse) = ([0.0f32; LANES], [0.0f32; LANES]);
                expected_class_of_lanes(&logits, classes, &mut lanes, Some(&mut lanes_lse));
                let bits = |v: &[f32; LANES]| v.map(f32::to_bits);
                assert_eq!(bits(&lanes), bits(&general), "K={classes} seed={seed}");
                assert_eq!(
                    bits(&lanes_lse),
                    bits(&general_lse),
                    "K={classes} seed={seed}"
                );
                let mut alone = [0.0f32; LANES];
                expected_class_of_lanes(&logits, classes, &mut alone, None);
                assert_eq!(bits(&alone), bits(&general), "K={classes} seed={seed}");
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
    fn nearest_integer_rounds_ties_to_even() {
        for i in -4_000_000..=4_000_000 {
            let v = i as f32 * 0.25;
            assert_eq!(nearest_integer(v), v.round_ties_even(), "v={v}");
        }
        for v in [127.9999, -126.50001, 0.49999997, -0.5, 2_097_151.5] {
            assert_eq!(nearest_integer(v), v.round_ties_even(), "v={v}");
        }
    }

    #[cfg(target_arch = "x86_64")]
    fn cpu_has_avx2() -> bool {
        is_x86_feature_detected!("avx2")
            && is_x86_feature_detected!("fma")
            && is_x86_feature_detected!("f16c")
    }

    /// The AVX2 kernels against the plain ones on the same inputs, called directly, whatever path
    /// `simd::avx2` chose for the process. They differ by the rounding of fused multiply-adds and
    /// the order of the sums only.
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn the_avx2_kernels_agree_with_the_plain_ones() {
        assert!(
            cpu_has_avx2(),
            "this test needs a CPU with AVX2, FMA and F16C (every x86 server since 2013)"
        );
        let close = |a: f32, b: f32| (a - b).abs() <= 1e-5 * (1.0 + a.abs().max(b.abs()));
        for n in [0, 1, 7, 8, 9, 16, 17, 100, 203] {
            let a: Vec<f32> = (0..n).map(|i| (i as f32 * 0.37).sin()).collect();
            let b: Vec<f32> = (0..n).map(|i| (i as f32 * 0.11).cos()).collect();
            // SAFETY: the CPU has AVX2 and FMA (asserted above).
            let fast = unsafe { dot_avx2(&a, &b) };
            assert!(close(fast, dot_plain(&a, &b)), "dot n={n}");
        }
        for n in [1, 7, 8, 13, 100] {
            for k in [1, 2, 3, 4, 5, 6, 10, 11] {
                let rows: Vec<f32> = (0..k * n).map(|i| (i as f32 * 0.29).sin()).collect();
                let x: Vec<f32> = (0..n).map(|i| (i as f32 * 0.13).cos()).collect();
                let y: Vec<f32> = (0..n).map(|i| (i as f32 * 0.71).sin()).collect();
                let bias: Vec<f32> = (0..k).map(|r| r as f32 - 1.5).collect();
                let (mut fast_x, mut fast_y) = (vec![0.0f32; k], vec![0.0f32; k]);
                // SAFETY: the CPU has AVX2 and FMA; k rows of n floats, x and y of n.
                unsafe { row_dots_each_avx2(&rows, [&x, &y], &bias, [&mut fast_x, &mut fast_y]) };
                for r in 0..k {
                    let row = &rows[r * n..(r + 1) * n];
                    assert!(
                        close(fast_x[r], bias[r] + dot_plain(row, &x)),
                        "n={n} k={k}"
                    );
                    assert!(
                        close(fast_y[r], bias[r] + dot_plain(row, &y)),
                        "n={n} k={k}"
                    );
                }
            }
        }
        let m = 13;
        for k in 1..=10 {
            for blocks in [1, 2] {
                let len = blocks * m * k * LANES;
                let weights: Vec<f32> = (0..len).map(|i| (i as f32 * 0.31).sin()).collect();
                let halves = halves_of(&weights);
                let hidden: Vec<f32> = (0..m).map(|j| (j as f32 * 0.7).cos().abs()).collect();
                let bias: Vec<f32> = (0..blocks * k * LANES).map(|i| i as f32 * 0.01).collect();
                let mut plain = vec![0.0f32; bias.len()];
                let mut fast = vec![0.0f32; bias.len()];
                lane_logits_plain(&weights, &hidden, &bias, k, &mut plain);
                // SAFETY: the CPU has AVX2, FMA and F16C; shapes as lane_logits checks them.
                unsafe { lane_logits_avx2(&weights, &hidden, &bias, k, &mut fast) };
                for (p, f) in plain.iter().zip(&fast) {
                    assert!(close(*p, *f), "lane_logits k={k} blocks={blocks}");
                }
                lane_logits_plain(&halves, &hidden, &bias, k, &mut plain);
                // SAFETY: as above.
                unsafe { lane_logits_avx2(&halves, &hidden, &bias, k, &mut fast) };
                for (p, f) in plain.iter().zip(&fast) {
                    assert!(close(*p, *f), "f16 lane_logits k={k} blocks={blocks}");
                }
            }
        }
    }

    #[test]
    fn log_sigmoid_bounds_enclose_the_exact_value() {
        let exact = |x: f32| {
            let x = f64::from(x);
            if x > 0.0 {
                -(-x).exp().ln_1p()
            } else {
                x - x.exp().ln_1p()
            }
        };
        let xs: Vec<f32> = (-200_000..=200_000)
            .map(|i| i as f32 * 1e-3)
            .chain([
                -1e4,
                -150.0,
                -88.5,
                88.5,
                150.0,
                1e4,
                f32::MIN_POSITIVE,
                -0.0,
            ])
            .collect();
        let (mut low, mut high) = (xs.clone(), xs.clone());
        log_sigmoid_bounds(&mut low, &mut high);
        for ((&x, &l), &h) in xs.iter().zip(&low).zip(&high) {
            let e = exact(x);
            assert!(
                f64::from(l) <= e && e <= f64::from(h),
                "x={x}: {l} ≤ {e} ≤ {h}"
            );
            // Tight enough to prune: the slack and a few 1e-6.
            let room = 2.5e-5 * (1.0 + e.abs());
            assert!(
                e - f64::from(l) < room && f64::from(h) - e < room,
                "x={x}: {l} {e} {h}"
            );
        }
    }

    #[test]
    fn biased_exponent_is_two_to_the_n() {
        for n in -126..=127 {
            assert_eq!(
                f32::from_bits(biased_exponent(n as f32)),
                2f32.powi(n),
                "n={n}"
            );
        }
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
