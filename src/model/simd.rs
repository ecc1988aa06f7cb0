//! Which vector instructions the hot loops use, chosen once at run time. The binary is built for
//! baseline x86-64 so that it runs on any x86-64 server; the loops that matter are compiled a second
//! time with AVX2, FMA and F16C (x86-64-v3, every x86 server CPU since 2013) by [`multiversion!`], and
//! that copy runs when the CPU has them. `RBM_SIMD=portable` forces the baseline code, to compare the
//! two paths or to rule the vector code out. Where the CPU also has AVX-512F and VL, the kernels
//! that keep many sums in registers run a third copy that may use its 32 registers, and the
//! catalogue pass for users waiting together scores two blocks of items per 512-bit register
//! (`RBM_SIMD=avx2` forbids both).

use std::sync::atomic::{AtomicU8, Ordering};

/// The instruction set the model's loops run on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Isa {
    /// AVX2, FMA and F16C, with hand-written kernels for the dot products and catalogue passes.
    Avx2,
    /// The AVX2 kernels, those that keep many sums in registers compiled with AVX-512VL's 32
    /// vector registers, and the catalogue pass for several users in 512-bit registers; each lane
    /// runs the same chain of operations as in the AVX2 kernels, hence the same results.
    Avx2Wide,
    /// Whatever the build targets (SSE2 on x86-64), in plain Rust.
    Portable,
}

impl Isa {
    pub fn name(self) -> &'static str {
        match self {
            Isa::Avx2 => "avx2+fma+f16c",
            Isa::Avx2Wide => "avx2+fma+f16c+avx512vl",
            Isa::Portable => "portable",
        }
    }
}

const UNKNOWN: u8 = 0;
const AVX2: u8 = 1;
const PORTABLE: u8 = 2;
const AVX2_WIDE: u8 = 3;

static SELECTED: AtomicU8 = AtomicU8::new(UNKNOWN);

/// The instruction set in use: detected on first call, and fixed for the life of the process.
pub fn isa() -> Isa {
    match (avx2(), wide_registers()) {
        (true, true) => Isa::Avx2Wide,
        (true, false) => Isa::Avx2,
        _ => Isa::Portable,
    }
}

/// Whether the AVX2 copies run. One relaxed load once known, cheap enough to sit in a kernel's
/// entry; every thread sees the same answer, so a model's arithmetic does not depend on which
/// thread ran a task.
#[inline(always)]
pub fn avx2() -> bool {
    match SELECTED.load(Ordering::Relaxed) {
        AVX2 | AVX2_WIDE => true,
        PORTABLE => false,
        _ => detect() != PORTABLE,
    }
}

/// Whether the AVX2 path may also use AVX-512VL's 32 vector registers (x86-64-v4, Intel servers
/// since 2017 and AMD since Zen 4). `RBM_SIMD=avx2` keeps it to 16, to compare the two.
#[inline(always)]
pub fn wide_registers() -> bool {
    match SELECTED.load(Ordering::Relaxed) {
        AVX2_WIDE => true,
        AVX2 | PORTABLE => false,
        _ => detect() == AVX2_WIDE,
    }
}

#[cold]
fn detect() -> u8 {
    let forced = std::env::var("RBM_SIMD").unwrap_or_default();
    #[cfg(target_arch = "x86_64")]
    let (capable, wide) = (
        std::arch::is_x86_feature_detected!("avx2")
            && std::arch::is_x86_feature_detected!("fma")
            && std::arch::is_x86_feature_detected!("f16c"),
        std::arch::is_x86_feature_detected!("avx512f")
            && std::arch::is_x86_feature_detected!("avx512vl"),
    );
    #[cfg(not(target_arch = "x86_64"))]
    let (capable, wide) = (false, false);
    let selected = match (capable && forced != "portable", wide && forced != "avx2") {
        (true, true) => AVX2_WIDE,
        (true, false) => AVX2,
        (false, _) => PORTABLE,
    };
    // Racing first calls compute the same answer, so whichever store lands is right.
    SELECTED.store(selected, Ordering::Relaxed);
    selected
}

/// Defines a function twice: as written, for the build's baseline, and under the second name with
/// AVX2, FMA and F16C enabled; the first calls the second when [`avx2`] says so. The body is
/// repeated rather than called because the features reach only code lexically inside the function:
/// the closures it defines (rayon tasks included) and the `#[inline(always)]` helpers they call.
/// Parameters are plain `name: Type` pairs (rebind one in the body to make it `mut`); the receiver
/// is taken from the call site, since a `self` written in the macro would not be the body's.
///
/// ```text
/// multiversion! {
///     fn scale / scale_avx2(&mut self, by: f32) { for x in &mut self.v { *x *= by } }
/// }
/// ```
macro_rules! multiversion {
    ($(#[$attr:meta])* $vis:vis fn $name:ident / $fast:ident
        $(<$($gen:ident: $bound:path),+>)? (&mut $self:ident $(, $arg:ident: $ty:ty)* $(,)?)
        $(-> $ret:ty)? $body:block) => {
        $crate::model::simd::multiversion!(@emit [&mut $self,] [$self.] $(#[$attr])* $vis fn $name / $fast
            [$($($gen: $bound),+)?] ($($arg: $ty),*) [$(-> $ret)?] $body);
    };
    ($(#[$attr:meta])* $vis:vis fn $name:ident / $fast:ident
        $(<$($gen:ident: $bound:path),+>)? (&$self:ident $(, $arg:ident: $ty:ty)* $(,)?)
        $(-> $ret:ty)? $body:block) => {
        $crate::model::simd::multiversion!(@emit [&$self,] [$self.] $(#[$attr])* $vis fn $name / $fast
            [$($($gen: $bound),+)?] ($($arg: $ty),*) [$(-> $ret)?] $body);
    };
    ($(#[$attr:meta])* $vis:vis fn $name:ident / $fast:ident
        $(<$($gen:ident: $bound:path),+>)? ($($arg:ident: $ty:ty),* $(,)?)
        $(-> $ret:ty)? $body:block) => {
        $crate::model::simd::multiversion!(@emit [] [] $(#[$attr])* $vis fn $name / $fast
            [$($($gen: $bound),+)?] ($($arg: $ty),*) [$(-> $ret)?] $body);
    };
    (@emit [$($receiver:tt)*] [$($on:tt)*] $(#[$attr:meta])* $vis:vis fn $name:ident / $fast:ident
        [$($generics:tt)*] ($($arg:ident: $ty:ty),*) [$($ret:tt)*] $body:block) => {
        $(#[$attr])*
        $vis fn $name<$($generics)*>($($receiver)* $($arg: $ty),*) $($ret)* {
            #[cfg(target_arch = "x86_64")]
            if $crate::model::simd::avx2() {
                // SAFETY: avx2() found AVX2, FMA and F16C on this CPU.
                return unsafe { $($on)* $fast($($arg),*) };
            }
            $body
        }

        $(#[$attr])*
        #[cfg(target_arch = "x86_64")]
        #[target_feature(enable = "avx2,fma,f16c")]
        #[inline]
        fn $fast<$($generics)*>($($receiver)* $($arg: $ty),*) $($ret)* $body
    };
}

pub(crate) use multiversion;
