// Linear layer in Hugging Face GPT-2 (Conv1D) layout: weight [in, out], bias [out]. In bf16 the operands
// are bf16 values already (rounded where they were made) and the products run on the bf16 backend.
//   forward:  out[N, out] = inp[N, in] · W[in, out] + b
//   backward: dinp[N, in] += dout · Wᵀ;  dW[in, out] += inpᵀ · dout;  db += column sums of dout

public enum Linear {
    public static func forward(out: UnsafeMutablePointer<Float>, inp: UnsafePointer<Float>,
                               weight: UnsafePointer<Float>, bias: UnsafePointer<Float>?,
                               n: Int, inDim: Int, outDim: Int, precision: Precision = .fp32) {
        if let bias {
            // Seed every output row with the bias, then accumulate the product on top (beta = 1).
            let O = SendPtr(out), B = SendConstPtr(bias)
            Threads.parallelRanges(n, grain: 16) { _, lo, hi in
                for i in lo..<hi { (O.p + i * outDim).update(from: B.p, count: outDim) }
            }
        }
        BLAS.gemm(m: n, n: outDim, k: inDim, a: inp, lda: inDim, b: weight, ldb: outDim,
                  beta: bias == nil ? 0 : 1, c: out, ldc: outDim, precision: precision)
    }

    /// Accumulates into dinp (when given), dweight and dbias.
    public static func backward(dinp: UnsafeMutablePointer<Float>?, dweight: UnsafeMutablePointer<Float>,
                                dbias: UnsafeMutablePointer<Float>?, dout: UnsafePointer<Float>,
                                inp: UnsafePointer<Float>, weight: UnsafePointer<Float>,
                                n: Int, inDim: Int, outDim: Int, accumulateInput: Bool = true, precision: Precision = .fp32) {
        if let dinp {
            BLAS.gemm(transB: true, m: n, n: inDim, k: outDim, a: dout, lda: outDim, b: weight, ldb: outDim,
                      beta: accumulateInput ? 1 : 0, c: dinp, ldc: inDim, precision: precision)
        }
        BLAS.gemm(transA: true, m: inDim, n: outDim, k: n, a: inp, lda: inDim, b: dout, ldb: outDim,
                  beta: 1, c: dweight, ldc: outDim, precision: precision)
        if let dbias { columnSums(into: dbias, dout, rows: n, cols: outDim) }
    }

    /// dst[j] += sum_i src[i, j], split over columns (fixed row order: deterministic).
    public static func columnSums(into dst: UnsafeMutablePointer<Float>, _ src: UnsafePointer<Float>,
                                  rows: Int, cols: Int) {
        let D = SendPtr(dst), S = SendConstPtr(src)
        Threads.parallelRanges(cols, grain: 64) { _, lo, hi in
            for i in 0..<rows { vaxpy(1, S.p + i * cols + lo, D.p + lo, hi - lo) }
        }
    }
}
