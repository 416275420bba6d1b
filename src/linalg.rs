//! The two vector kernels the head spends its time in (dot product and `y += a·x`), with a
//! runtime-dispatched AVX2+FMA version on x86-64 and a portable version the compiler
//! vectorises for the baseline target (SSE2 on x86-64, NEON on aarch64/armv7 with NEON).
//! Results of the two versions differ only by float rounding order.

/// Dot product of two equal-length slices.
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    debug_assert_eq!(a.len(), b.len());
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
        {
            // SAFETY: the CPU supports AVX2 and FMA (checked just above), which is all
            // `dot_avx2` requires; it reads only within the slices' bounds.
            return unsafe { x86::dot_avx2(a, b) };
        }
    }
    dot_portable(a, b)
}

/// `y += alpha · x` over equal-length slices.
pub fn axpy(y: &mut [f32], alpha: f32, x: &[f32]) {
    debug_assert_eq!(y.len(), x.len());
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
        {
            // SAFETY: as in `dot`: features checked, accesses stay inside the slices.
            unsafe { x86::axpy_avx2(y, alpha, x) };
            return;
        }
    }
    axpy_portable(y, alpha, x);
}

/// Portable dot product: eight independent accumulators so the compiler can vectorise.
pub fn dot_portable(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let ca = a.chunks_exact(8);
    let cb = b.chunks_exact(8);
    let tail: f32 = ca
        .remainder()
        .iter()
        .zip(cb.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (x, y) in ca.zip(cb) {
        for k in 0..8 {
            acc[k] += x[k] * y[k];
        }
    }
    acc.iter().sum::<f32>() + tail
}

/// Portable `y += alpha · x`.
pub fn axpy_portable(y: &mut [f32], alpha: f32, x: &[f32]) {
    for (a, v) in y.iter_mut().zip(x) {
        *a += alpha * v;
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn dot_avx2(a: &[f32], b: &[f32]) -> f32 {
        let n = a.len().min(b.len());
        let (mut s0, mut s1) = (_mm256_setzero_ps(), _mm256_setzero_ps());
        let mut i = 0;
        // SAFETY (whole function): every load reads 8 floats at offsets i..i+8 <= n.
        unsafe {
            while i + 16 <= n {
                s0 = _mm256_fmadd_ps(
                    _mm256_loadu_ps(a.as_ptr().add(i)),
                    _mm256_loadu_ps(b.as_ptr().add(i)),
                    s0,
                );
                s1 = _mm256_fmadd_ps(
                    _mm256_loadu_ps(a.as_ptr().add(i + 8)),
                    _mm256_loadu_ps(b.as_ptr().add(i + 8)),
                    s1,
                );
                i += 16;
            }
            while i + 8 <= n {
                s0 = _mm256_fmadd_ps(
                    _mm256_loadu_ps(a.as_ptr().add(i)),
                    _mm256_loadu_ps(b.as_ptr().add(i)),
                    s0,
                );
                i += 8;
            }
            let s = _mm256_add_ps(s0, s1);
            let mut lanes = [0f32; 8];
            _mm256_storeu_ps(lanes.as_mut_ptr(), s);
            let mut total: f32 = lanes.iter().sum();
            while i < n {
                total += a[i] * b[i];
                i += 1;
            }
            total
        }
    }

    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn axpy_avx2(y: &mut [f32], alpha: f32, x: &[f32]) {
        let n = y.len().min(x.len());
        let va = _mm256_set1_ps(alpha);
        let mut i = 0;
        // SAFETY: loads and stores cover offsets i..i+8 <= n of both slices.
        unsafe {
            while i + 8 <= n {
                let p = y.as_mut_ptr().add(i);
                _mm256_storeu_ps(
                    p,
                    _mm256_fmadd_ps(va, _mm256_loadu_ps(x.as_ptr().add(i)), _mm256_loadu_ps(p)),
                );
                i += 8;
            }
        }
        while i < n {
            y[i] += alpha * x[i];
            i += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dispatched_kernels_match_portable_ones() {
        for n in [0, 1, 7, 8, 15, 16, 17, 1280, 1283] {
            let a: Vec<f32> = (0..n).map(|i| (i as f32 * 0.37).sin()).collect();
            let b: Vec<f32> = (0..n).map(|i| (i as f32 * 0.11).cos()).collect();
            let naive: f32 = a.iter().zip(&b).map(|(x, y)| x * y).sum();
            assert!((dot(&a, &b) - naive).abs() < 1e-3, "dot n={n}");
            assert!(
                (dot_portable(&a, &b) - naive).abs() < 1e-3,
                "portable n={n}"
            );
            let mut y1 = b.clone();
            let mut y2 = b.clone();
            axpy(&mut y1, 0.5, &a);
            axpy_portable(&mut y2, 0.5, &a);
            for (p, q) in y1.iter().zip(&y2) {
                assert!((p - q).abs() < 1e-6, "axpy n={n}");
            }
        }
    }
}
