// Kernels that need instructions the Swift build does not target (it targets Haswell, AVX2, so the binary
// runs on any x86-64 CPU of the last decade): each is compiled for its instruction set alone, with a
// target attribute, and the Swift caller picks it at run time after asking the CPU (tessera_cpu_*).
#ifndef TESSERA_CKERNELS_H
#define TESSERA_CKERNELS_H

#ifdef __cplusplus
extern "C" {
#endif

/// 1 when the CPU (and the operating system, which must save the 512-bit registers) runs AVX-512F and
/// AVX-512VL, else 0.
int tessera_cpu_has_avx512(void);

/// The attention kernel's block product (BlockProduct.swift) on 512-bit registers:
///   C[r·ldc + j] = (accumulate ? C[r·ldc + j] : 0) + Σ_{x < depth} a[r·aRow + x·aCol] · b[x·ldb + j]
/// for r < rows, j < cols. Call only when tessera_cpu_has_avx512() is 1.
void tessera_block_product_avx512(float *c, long ldc, long rows, long cols, long depth,
                                  const float *a, long aRow, long aCol, const float *b, long ldb, int accumulate);

/// The attention kernel's lane-wise parts (Attention.swift) on AVX-512, for a block [keys, lanes] of scores with
/// the queries on the lanes (lanes a multiple of 16), lo/hi the keys each lane sees (lo ..< hi, by key index,
/// read when `masked`), key j of the block being key k0 + j:
/// the forward's online softmax (scores become probabilities; the running max m, sum l and accumulator
/// acc [hd, lanes] are updated),
void tessera_online_softmax_avx512(float *s, long keys, long lanes, long k0, int masked, const int *lo, const int *hi,
                                   float *m, float *l, float *acc, long hd);
/// the backward's probabilities p = exp(s − shift) per lane (invisible keys 0),
void tessera_probabilities_avx512(float *p, long keys, long lanes, long k0, int masked, const int *lo, const int *hi,
                                  const float *shift);
/// and its score gradient ds = scale · p ∘ (ds − d) per lane.
void tessera_score_gradient_avx512(float *ds, const float *p, long keys, long lanes, const float *d, float scale);

#ifdef __cplusplus
}
#endif
#endif
