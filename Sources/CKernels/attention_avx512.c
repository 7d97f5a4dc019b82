// The lane-wise parts of the attention kernel (Attention.swift) on AVX-512: the forward's online softmax of a
// score block, the backward's recomputed probabilities and its score gradient. A block is [keys, lanes] with the
// queries on the lanes (lanes a multiple of 16); each function does, for every group of 16 lanes, what its Swift
// twin does for one (`onlineSoftmax`, `maskDown` + `expDown`, `scoreGradientDown`), in the same order and with
// the same exp (`vexp` in SIMDMath.swift: same clamps, constants and fused multiply-adds), so the two give the
// same bits. Why C: see block_product_avx512.c.
#if defined(__x86_64__)
#include <immintrin.h>
#include <stdint.h>
#include "ckernels.h"

#define AVX512 __attribute__((target("avx512f,avx512vl,fma")))
#define INLINE __attribute__((always_inline)) static inline

// exp(x), relative error about 1e-7; inputs below -87.3 give about 0 (vexp).
AVX512 INLINE __m512 exp16(__m512 xin) {
    __m512 x = _mm512_mask_mov_ps(xin, _mm512_cmp_ps_mask(xin, _mm512_set1_ps(-87.3f), _CMP_LT_OQ), _mm512_set1_ps(-87.3f));
    x = _mm512_mask_mov_ps(x, _mm512_cmp_ps_mask(x, _mm512_set1_ps(88.3f), _CMP_GT_OQ), _mm512_set1_ps(88.3f));
    const __m512 magic = _mm512_set1_ps(12582912.0f);  // 1.5 * 2^23: round to nearest
    const __m512 t = _mm512_fmadd_ps(x, _mm512_set1_ps(1.44269504088896341f), magic);
    const __m512 fx = _mm512_sub_ps(t, magic);
    x = _mm512_fmadd_ps(fx, _mm512_set1_ps(-0.693359375f), x);
    x = _mm512_fmadd_ps(fx, _mm512_set1_ps(2.12194440e-4f), x);
    const __m512 z = _mm512_mul_ps(x, x);
    __m512 y = _mm512_fmadd_ps(_mm512_set1_ps(1.9875691500e-4f), x, _mm512_set1_ps(1.3981999507e-3f));
    y = _mm512_fmadd_ps(y, x, _mm512_set1_ps(8.3334519073e-3f));
    y = _mm512_fmadd_ps(y, x, _mm512_set1_ps(4.1665795894e-2f));
    y = _mm512_fmadd_ps(y, x, _mm512_set1_ps(1.6666665459e-1f));
    y = _mm512_fmadd_ps(y, x, _mm512_set1_ps(5.0000001201e-1f));
    y = _mm512_fmadd_ps(y, z, _mm512_add_ps(x, _mm512_set1_ps(1.0f)));
    const __m512i n = _mm512_sub_epi32(_mm512_castps_si512(t), _mm512_set1_epi32(0x4B400000));
    return _mm512_mul_ps(y, _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_add_epi32(n, _mm512_set1_epi32(127)), 23)));
}

// Scores of key k0 + j outside a lane's visible keys lo ..< hi become -inf (maskDown).
AVX512 INLINE __m512 mask_key(__m512 x, long key, __m512i lo, __m512i hi) {
    const __m512i k = _mm512_set1_epi32((int32_t)key);
    const __mmask16 visible = _mm512_cmp_epi32_mask(k, lo, _MM_CMPINT_NLT) & _mm512_cmp_epi32_mask(k, hi, _MM_CMPINT_LT);
    return _mm512_mask_mov_ps(_mm512_set1_ps(-__builtin_inff()), visible, x);
}

AVX512 void tessera_online_softmax_avx512(float *s, long keys, long lanes, long k0, int masked, const int *lo,
                                          const int *hi, float *m, float *l, float *acc, long hd) {
    const __m512 ninf = _mm512_set1_ps(-__builtin_inff());
    for (long c = 0; c < lanes; c += 16) {
        float *sc = s + c;
        if (masked) {
            const __m512i vlo = _mm512_loadu_si512(lo + c), vhi = _mm512_loadu_si512(hi + c);
            for (long j = 0; j < keys; j++)
                _mm512_storeu_ps(sc + j * lanes, mask_key(_mm512_loadu_ps(sc + j * lanes), k0 + j, vlo, vhi));
        }
        __m512 mx = ninf;
        for (long j = 0; j < keys; j++) {
            const __m512 x = _mm512_loadu_ps(sc + j * lanes);
            mx = _mm512_mask_mov_ps(mx, _mm512_cmp_ps_mask(x, mx, _CMP_GT_OQ), x);
        }
        const __m512 mOld = _mm512_loadu_ps(m + c);
        const __m512 mNew = _mm512_mask_mov_ps(mOld, _mm512_cmp_ps_mask(mx, mOld, _CMP_GT_OQ), mx);
        // A lane that has seen no key keeps m = -inf and shifts by 0; one that had seen none needs no rescale.
        const __m512 shift = _mm512_mask_mov_ps(mNew, _mm512_cmp_ps_mask(mNew, ninf, _CMP_EQ_OQ), _mm512_setzero_ps());
        const __m512 corr = _mm512_mask_mov_ps(exp16(_mm512_sub_ps(mOld, shift)), _mm512_cmp_ps_mask(mOld, ninf, _CMP_EQ_OQ),
                                               _mm512_set1_ps(1.0f));
        __m512 sum = _mm512_setzero_ps();
        for (long j = 0; j < keys; j++) {
            const __m512 x = _mm512_loadu_ps(sc + j * lanes);
            __m512 p = exp16(_mm512_sub_ps(x, shift));
            if (masked) p = _mm512_mask_mov_ps(p, _mm512_cmp_ps_mask(x, ninf, _CMP_EQ_OQ), _mm512_setzero_ps());
            _mm512_storeu_ps(sc + j * lanes, p);
            sum = _mm512_add_ps(sum, p);
        }
        _mm512_storeu_ps(l + c, _mm512_add_ps(_mm512_mul_ps(_mm512_loadu_ps(l + c), corr), sum));
        _mm512_storeu_ps(m + c, mNew);
        if (_mm512_cmp_ps_mask(corr, _mm512_set1_ps(1.0f), _CMP_NEQ_UQ)) {
            for (long d = 0; d < hd; d++)
                _mm512_storeu_ps(acc + d * lanes + c, _mm512_mul_ps(_mm512_loadu_ps(acc + d * lanes + c), corr));
        }
    }
}

AVX512 void tessera_probabilities_avx512(float *p, long keys, long lanes, long k0, int masked, const int *lo,
                                         const int *hi, const float *shift) {
    const __m512 ninf = _mm512_set1_ps(-__builtin_inff());
    for (long c = 0; c < lanes; c += 16) {
        const __m512 sh = _mm512_loadu_ps(shift + c);
        const __m512i vlo = masked ? _mm512_loadu_si512(lo + c) : _mm512_setzero_si512();
        const __m512i vhi = masked ? _mm512_loadu_si512(hi + c) : _mm512_setzero_si512();
        for (long j = 0; j < keys; j++) {
            float *pj = p + j * lanes + c;
            __m512 x = _mm512_loadu_ps(pj);
            if (masked) x = mask_key(x, k0 + j, vlo, vhi);
            __m512 e = exp16(_mm512_sub_ps(x, sh));
            if (masked) e = _mm512_mask_mov_ps(e, _mm512_cmp_ps_mask(x, ninf, _CMP_EQ_OQ), _mm512_setzero_ps());
            _mm512_storeu_ps(pj, e);
        }
    }
}

AVX512 void tessera_score_gradient_avx512(float *ds, const float *p, long keys, long lanes, const float *d, float scale) {
    const __m512 sc = _mm512_set1_ps(scale);
    for (long c = 0; c < lanes; c += 16) {
        const __m512 dv = _mm512_loadu_ps(d + c);
        for (long j = 0; j < keys; j++) {
            const long o = j * lanes + c;
            // scale · p ∘ (ds − d), multiplied in that order (as scoreGradientDown)
            _mm512_storeu_ps(ds + o, _mm512_mul_ps(_mm512_mul_ps(sc, _mm512_loadu_ps(p + o)), _mm512_sub_ps(_mm512_loadu_ps(ds + o), dv)));
        }
    }
}

#else  // not x86-64: never called (tessera_cpu_has_avx512 is 0)
#include "ckernels.h"

void tessera_online_softmax_avx512(float *s, long keys, long lanes, long k0, int masked, const int *lo, const int *hi,
                                   float *m, float *l, float *acc, long hd) { __builtin_trap(); }
void tessera_probabilities_avx512(float *p, long keys, long lanes, long k0, int masked, const int *lo, const int *hi,
                                  const float *shift) { __builtin_trap(); }
void tessera_score_gradient_avx512(float *ds, const float *p, long keys, long lanes, const float *d, float scale) {
    __builtin_trap();
}
#endif
