// The attention kernel's block product on AVX-512 (see include/ckernels.h and BlockProduct.swift, whose
// AVX2 version is the same algorithm on 8-lane registers):
//   C[r, 0 ..< cols] (+)= Σ_{x < depth} A(r, x) · B[x, 0 ..< cols],   A(r, x) = a[r·aRow + x·aCol]
//
// Why C: Swift has no per-function target attribute, and the Swift build targets Haswell so that one binary
// runs on every x86-64 CPU it meets; on a CPU with two 512-bit FMA pipes (Zen 5, and Intel's server cores)
// 8-lane code reaches half the machine's rate. Written with intrinsics: no library offers a small product
// whose A operand is read through two strides without packing (the reason BlockProduct exists).
//
// Register tile: up to 8 rows × 32 columns, 16 accumulators of 16 lanes; per step of the depth two loads of
// B and 8 broadcasts of A feed 16 fused multiply-adds (32 registers: enough independent sums to cover the
// FMA latency on two pipes). Rows go by 8, then 4, then 1; columns by 32, then 16, then one masked vector,
// so no column is left to scalar code.
#if defined(__x86_64__)
#include <immintrin.h>
#include "ckernels.h"

#define AVX512 __attribute__((target("avx512f,avx512vl,fma")))

int tessera_cpu_has_avx512(void) {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl");
}

// R rows × (wide ? 32 : 16) columns; a narrow tile loads and stores only the lanes in `mask`.
AVX512 __attribute__((always_inline)) static inline void
tile(float *c, long ldc, const int R, const int wide, __mmask16 mask, long depth,
     const float *a, long aRow, long aCol, const float *b, long ldb, int accumulate) {
    __m512 s0[8], s1[8];
#pragma clang loop unroll(full)
    for (int r = 0; r < R; r++) {
        s0[r] = accumulate ? _mm512_maskz_loadu_ps(mask, c + r * ldc) : _mm512_setzero_ps();
        s1[r] = (wide && accumulate) ? _mm512_loadu_ps(c + r * ldc + 16) : _mm512_setzero_ps();
    }
    const float *bp = b, *ap = a;
    for (long x = 0; x < depth; x++) {
        const __m512 b0 = _mm512_maskz_loadu_ps(mask, bp);
        const __m512 b1 = wide ? _mm512_loadu_ps(bp + 16) : _mm512_setzero_ps();
#pragma clang loop unroll(full)
        for (int r = 0; r < R; r++) {
            const __m512 v = _mm512_set1_ps(ap[r * aRow]);
            s0[r] = _mm512_fmadd_ps(v, b0, s0[r]);
            if (wide) s1[r] = _mm512_fmadd_ps(v, b1, s1[r]);
        }
        bp += ldb;
        ap += aCol;
    }
#pragma clang loop unroll(full)
    for (int r = 0; r < R; r++) {
        _mm512_mask_storeu_ps(c + r * ldc, mask, s0[r]);
        if (wide) _mm512_storeu_ps(c + r * ldc + 16, s1[r]);
    }
}

// R rows, every column.
AVX512 __attribute__((always_inline)) static inline void
rows(float *c, long ldc, const int R, long cols, long depth, const float *a, long aRow, long aCol,
     const float *b, long ldb, int accumulate) {
    long j = 0;
    for (; j + 32 <= cols; j += 32) tile(c + j, ldc, R, 1, 0xFFFF, depth, a, aRow, aCol, b + j, ldb, accumulate);
    if (j + 16 <= cols) {
        tile(c + j, ldc, R, 0, 0xFFFF, depth, a, aRow, aCol, b + j, ldb, accumulate);
        j += 16;
    }
    if (j < cols) {
        const __mmask16 mask = (__mmask16)((1u << (cols - j)) - 1);
        tile(c + j, ldc, R, 0, mask, depth, a, aRow, aCol, b + j, ldb, accumulate);
    }
}

AVX512 void tessera_block_product_avx512(float *c, long ldc, long nrows, long cols, long depth,
                                         const float *a, long aRow, long aCol, const float *b, long ldb, int accumulate) {
    long r = 0;
    for (; r + 8 <= nrows; r += 8) rows(c + r * ldc, ldc, 8, cols, depth, a + r * aRow, aRow, aCol, b, ldb, accumulate);
    if (r + 4 <= nrows) {
        rows(c + r * ldc, ldc, 4, cols, depth, a + r * aRow, aRow, aCol, b, ldb, accumulate);
        r += 4;
    }
    for (; r < nrows; r++) rows(c + r * ldc, ldc, 1, cols, depth, a + r * aRow, aRow, aCol, b, ldb, accumulate);
}

#else  // not x86-64: no AVX-512; the Swift code runs and these are never called
#include "ckernels.h"

int tessera_cpu_has_avx512(void) { return 0; }

void tessera_block_product_avx512(float *c, long ldc, long rows, long cols, long depth,
                                  const float *a, long aRow, long aCol, const float *b, long ldb, int accumulate) {
    __builtin_trap();
}
#endif
