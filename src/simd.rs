//! Run-time selection of x86 vector extensions for the host-side loops (the build targets
//! baseline x86-64, i.e. SSE2, so that one binary runs anywhere).

/// Defines `fn name(args) -> ret` whose body is compiled three times — for AVX-512, for
/// AVX2+FMA and for the build's baseline — and runs the best version the CPU supports
/// (`is_x86_feature_detected!` caches its answer). The body is inlined into each version, so
/// helpers it calls must be `#[inline(always)]` to get the wider vectors too. Results may
/// differ in the last bits between versions only where a loop's reduction order depends on
/// the vector width; write reductions with explicit partial sums to keep them identical.
macro_rules! multiversion {
    ($(#[$meta:meta])* $vis:vis fn $name:ident($($arg:ident: $ty:ty),* $(,)?) $(-> $ret:ty)? $body:block) => {
        $(#[$meta])*
        $vis fn $name($($arg: $ty),*) $(-> $ret)? {
            #[inline(always)]
            fn body($($arg: $ty),*) $(-> $ret)? $body
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f,avx512vl,avx2,fma")]
                fn v4($($arg: $ty),*) $(-> $ret)? { body($($arg),*) }
                #[target_feature(enable = "avx2,fma")]
                fn v3($($arg: $ty),*) $(-> $ret)? { body($($arg),*) }
                if std::arch::is_x86_feature_detected!("avx512f")
                    && std::arch::is_x86_feature_detected!("avx512vl")
                {
                    // SAFETY: the CPU supports every feature `v4` is compiled for.
                    return unsafe { v4($($arg),*) };
                }
                if std::arch::is_x86_feature_detected!("avx2")
                    && std::arch::is_x86_feature_detected!("fma")
                {
                    // SAFETY: as above, for `v3`.
                    return unsafe { v3($($arg),*) };
                }
            }
            body($($arg),*)
        }
    };
}

pub(crate) use multiversion;

#[cfg(test)]
mod tests {
    multiversion! {
        /// `y += a·x` element-wise, then `y²`: no reduction, so every version gives the same bits.
        fn axpy_squared(a: f32, x: &[f32], y: &mut [f32]) {
            for (y, &x) in y.iter_mut().zip(x) {
                *y += a * x;
                *y *= *y;
            }
        }
    }

    #[test]
    fn a_multiversioned_function_computes_what_its_body_does() {
        let x: Vec<f32> = (0..1000).map(|i| (i as f32 * 0.37).sin()).collect();
        let mut y: Vec<f32> = (0..1000).map(|i| (i as f32 * 0.11).cos()).collect();
        let mut want = y.clone();
        for (w, &x) in want.iter_mut().zip(&x) {
            *w = (*w + 1.5 * x) * (*w + 1.5 * x);
        }
        axpy_squared(1.5, &x, &mut y);
        let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&y), bits(&want));
    }
}
