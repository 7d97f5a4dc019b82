// Products of the small blocks inside the blockwise attention kernel (64 × 64 × head dim), on the calling
// thread, without packing: C[m×n] = alpha · A[m×k] · B[k×n] + beta · C, all row-major with leading
// dimensions. OpenBLAS packs both operands on every call, which on blocks this small costs as much as the
// arithmetic: measured on Zen 3, one thread, 64×64×32: OpenBLAS 34–42 GFLOP/s, this kernel 62–75; 64×32×64:
// 37–49 against 66–73. Operands of attention's blocks are in L1/L2 already, so a register-blocked loop that
// broadcasts A and streams rows of B is enough. Transposed operands are transposed into scratch by the caller
// (`transpose`): a block copy is cheap next to the product.

public enum SmallGemm {
    public typealias F8 = SIMD8<Float>
    @inline(__always) static func ld(_ p: UnsafePointer<Float>) -> F8 { UnsafeRawPointer(p).loadUnaligned(as: F8.self) }
    @inline(__always) static func st(_ p: UnsafeMutablePointer<Float>, _ v: F8) {
        UnsafeMutableRawPointer(p).storeBytes(of: v, as: F8.self)
    }

    /// C = alpha · A · B + beta · C (beta 0: C is not read).
    public static func nn(m: Int, n: Int, k: Int, alpha: Float, a: UnsafePointer<Float>, lda: Int,
                          b: UnsafePointer<Float>, ldb: Int, beta: Float, c: UnsafeMutablePointer<Float>, ldc: Int) {
        if m == 0 || n == 0 { return }
        let n16 = n / 16 * 16
        var i = 0
        while i + 4 <= m {
            var j = 0
            while j < n16 { block4x16(i, j, k, alpha, a, lda, b, ldb, beta, c, ldc); j += 16 }
            i += 4
        }
        while i < m {
            var j = 0
            while j < n16 { block1x16(i, j, k, alpha, a, lda, b, ldb, beta, c, ldc); j += 16 }
            i += 1
        }
        // Columns past the last multiple of 16, one element at a time.
        if n16 < n {
            for r in 0..<m {
                for j in n16..<n {
                    var s: Float = 0
                    for p in 0..<k { s += a[r * lda + p] * b[p * ldb + j] }
                    let cp = c + r * ldc + j
                    cp.pointee = beta == 0 ? alpha * s : alpha * s + beta * cp.pointee
                }
            }
        }
    }

    @inline(__always)
    static func finish(_ cp: UnsafeMutablePointer<Float>, _ v: F8, _ alpha: Float, _ beta: Float) {
        st(cp, beta == 0 ? v * alpha : (v * alpha).addingProduct(ld(cp), F8(repeating: beta)))
    }

    /// Rows i..<i+4, columns j..<j+16: eight accumulators, A broadcast, two loads of B per k.
    @inline(__always)
    static func block4x16(_ i: Int, _ j: Int, _ k: Int, _ alpha: Float, _ a: UnsafePointer<Float>, _ lda: Int,
                          _ b: UnsafePointer<Float>, _ ldb: Int, _ beta: Float, _ c: UnsafeMutablePointer<Float>, _ ldc: Int) {
        var c00 = F8(), c01 = F8(), c10 = F8(), c11 = F8(), c20 = F8(), c21 = F8(), c30 = F8(), c31 = F8()
        let a0 = a + i * lda, a1 = a0 + lda, a2 = a1 + lda, a3 = a2 + lda
        var bp = b + j
        for p in 0..<k {
            let b0 = ld(bp), b1 = ld(bp + 8)
            let x0 = F8(repeating: a0[p]), x1 = F8(repeating: a1[p]), x2 = F8(repeating: a2[p]), x3 = F8(repeating: a3[p])
            c00 = c00.addingProduct(x0, b0); c01 = c01.addingProduct(x0, b1)
            c10 = c10.addingProduct(x1, b0); c11 = c11.addingProduct(x1, b1)
            c20 = c20.addingProduct(x2, b0); c21 = c21.addingProduct(x2, b1)
            c30 = c30.addingProduct(x3, b0); c31 = c31.addingProduct(x3, b1)
            bp += ldb
        }
        let cp = c + i * ldc + j
        finish(cp, c00, alpha, beta); finish(cp + 8, c01, alpha, beta)
        finish(cp + ldc, c10, alpha, beta); finish(cp + ldc + 8, c11, alpha, beta)
        finish(cp + 2 * ldc, c20, alpha, beta); finish(cp + 2 * ldc + 8, c21, alpha, beta)
        finish(cp + 3 * ldc, c30, alpha, beta); finish(cp + 3 * ldc + 8, c31, alpha, beta)
    }

    /// One row i, columns j..<j+16 (the rows past the last multiple of 4).
    @inline(__always)
    static func block1x16(_ i: Int, _ j: Int, _ k: Int, _ alpha: Float, _ a: UnsafePointer<Float>, _ lda: Int,
                          _ b: UnsafePointer<Float>, _ ldb: Int, _ beta: Float, _ c: UnsafeMutablePointer<Float>, _ ldc: Int) {
        var c0 = F8(), c1 = F8()
        let a0 = a + i * lda
        var bp = b + j
        for p in 0..<k {
            let x = F8(repeating: a0[p])
            c0 = c0.addingProduct(x, ld(bp)); c1 = c1.addingProduct(x, ld(bp + 8))
            bp += ldb
        }
        let cp = c + i * ldc + j
        finish(cp, c0, alpha, beta); finish(cp + 8, c1, alpha, beta)
    }

    /// dst[c × r] (leading dimension ldd) = src[r × c]ᵀ (leading dimension lds).
    public static func transpose(_ src: UnsafePointer<Float>, rows r: Int, cols c: Int, lds: Int,
                                 into dst: UnsafeMutablePointer<Float>, ldd: Int) {
        for i in 0..<r {
            let s = src + i * lds
            for j in 0..<c { dst[j * ldd + i] = s[j] }
        }
    }
}
