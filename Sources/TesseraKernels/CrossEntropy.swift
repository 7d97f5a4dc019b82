import Foundation

// LM head (tied to wte) fused with softmax cross-entropy. Rows are processed in chunks so the full
// [N, V] logits never exist: for each chunk
//   logits = x · wteᵀ;  p = softmax(logits);  loss_i = logsumexp(logits_i) - logits_i[target_i]
//   dlogits = gradScale * (p - onehot(target))      (overwrites the logits chunk)
//   dx = dlogits · wte;  dwte += dlogitsᵀ · x
// `gradScale` is the loss normaliser (1 / global token count), applied here and nowhere else.
// Targets < 0 are ignored (no loss, no gradient).
// In bf16 (`precision`), x and wte must already be bf16 values (the model passes its rounded copies); the
// softmax and the loss are computed in float32 and dlogits is rounded to bf16 before its two products.

public enum CrossEntropy {
    /// Rows per chunk: about 8M logits (32 MB), at least 16 rows. Each chunk's dwte product reads and writes the
    /// whole of dwte (vocab × d floats), so fewer, larger chunks: at 2M logits (41 rows of GPT-2's vocabulary) a
    /// GPT-2 124M step took 11–27% longer (`tessera bench --sizes G`, fp32 and bf16, 2026-12-02).
    static func chunkRows(vocab: Int) -> Int { max(16, (1 << 23) / max(vocab, 1)) }

    /// Returns the sum of per-row losses (in Double) over rows with a target >= 0.
    /// When `dx` is given, also writes dx [N, C] and accumulates dwte [V, C].
    @discardableResult
    public static func fused(x: UnsafePointer<Float>, wte: UnsafePointer<Float>, targets: UnsafePointer<Int32>,
                             n: Int, c: Int, vocab v: Int, gradScale: Float,
                             dx: UnsafeMutablePointer<Float>?, dwte: UnsafeMutablePointer<Float>?,
                             rowLosses: UnsafeMutablePointer<Float>? = nil, precision: Precision = .fp32,
                             scratch: Scratch) -> Double {
        let rowsPer = min(n, chunkRows(vocab: v))
        let logits = scratch.floats(rowsPer * v + rowsPer)
        let losses = logits + rowsPer * v
        let L = SendPtr(logits), LS = SendPtr(losses), T = SendConstPtr(targets)
        let wantGrad = dx != nil, roundGrad = precision == .bf16
        var total = 0.0
        var r0 = 0
        while r0 < n {
            let nr = min(rowsPer, n - r0)
            let xr = x + r0 * c
            BLAS.gemm(transB: true, m: nr, n: v, k: c, a: xr, lda: c, b: wte, ldb: c, beta: 0, c: logits, ldc: v, precision: precision)
            let base = r0
            Threads.parallelRanges(nr, grain: 1) { _, lo, hi in
                for i in lo..<hi {
                    let row = L.p + i * v
                    let t = Int(T.p[base + i])
                    let mx = vmax(row, v)
                    let targetLogit = t >= 0 ? row[t] - mx : 0
                    let sum = vexpShifted(row, v, shift: mx)
                    if t < 0 {
                        LS.p[i] = 0
                        if wantGrad { row.update(repeating: 0, count: v) }
                        continue
                    }
                    LS.p[i] = Foundation.log(sum) - targetLogit
                    if wantGrad {
                        vscale(row, gradScale / sum, v)
                        row[t] -= gradScale
                        if roundGrad { BF16.round(row, count: v) }
                    }
                }
            }
            for i in 0..<nr {
                total += Double(losses[i])
                rowLosses?[r0 + i] = losses[i]
            }
            if let dx, let dwte {
                BLAS.gemm(m: nr, n: c, k: v, a: logits, lda: v, b: wte, ldb: c, beta: 0, c: dx + r0 * c, ldc: c, precision: precision)
                BLAS.gemm(transA: true, m: v, n: c, k: nr, a: logits, lda: v, b: xr, ldb: c, beta: 1, c: dwte, ldc: c, precision: precision)
            }
            r0 += nr
        }
        return total
    }

    /// Full logits [N, V] = x · wteᵀ (for evaluation of single positions, sampling and tests).
    public static func logits(out: UnsafeMutablePointer<Float>, x: UnsafePointer<Float>, wte: UnsafePointer<Float>,
                              n: Int, c: Int, vocab v: Int) {
        BLAS.gemm(transB: true, m: n, n: v, k: c, a: x, lda: c, b: wte, ldb: c, beta: 0, c: out, ldc: v)
    }
}
