//! Elementwise loops compiled for the baseline and for wider vectors, run at the widest the
//! CPU has. Rust never contracts `a · b + c` into a fused multiply-add, and an explicit one
//! (`mul_add`) is rounded once in every build (in software where the build has no FMA), so
//! every width gives the same values bit for bit.

/// Which vector width the CPU runs the loops at.
#[derive(Clone, Copy)]
pub(crate) enum Width {
    Baseline,
    #[cfg(target_arch = "x86_64")]
    Avx2,
    #[cfg(target_arch = "x86_64")]
    Avx512,
}

/// The widest vector width of this CPU (the detection is cached by the standard library).
pub(crate) fn width() -> Width {
    #[cfg(target_arch = "x86_64")]
    {
        if is_x86_feature_detected!("avx512f") {
            return Width::Avx512;
        }
        // Every AVX2 processor has FMA too; the wide copies need it for `mul_add`.
        if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
            return Width::Avx2;
        }
    }
    Width::Baseline
}

/// A public function running `$impl` at the CPU's widest vector width. `$impl` must be
/// `#[inline(always)]`: a call that is not inlined runs the baseline code at every width.
macro_rules! dispatch {
    ($name:ident, $impl:ident, ($($arg:ident: $ty:ty),*)) => {
        pub fn $name($($arg: $ty),*) {
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f")]
                fn avx512($($arg: $ty),*) {
                    $impl($($arg),*)
                }
                #[target_feature(enable = "avx2,fma")]
                fn avx2($($arg: $ty),*) {
                    $impl($($arg),*)
                }
                match $crate::nn::simd::width() {
                    // SAFETY: the CPU has the feature (`width` checked it).
                    $crate::nn::simd::Width::Avx512 => return unsafe { avx512($($arg),*) },
                    // SAFETY: as above.
                    $crate::nn::simd::Width::Avx2 => return unsafe { avx2($($arg),*) },
                    $crate::nn::simd::Width::Baseline => {}
                }
            }
            $impl($($arg),*)
        }
    };
}

pub(crate) use dispatch;
