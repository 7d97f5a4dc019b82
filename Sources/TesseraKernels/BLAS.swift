import COpenBLAS
import Foundation

/// Row-major matrix products through `cblas_sgemm`, split over the kernel threads, plus OpenBLAS
/// configuration queries (core type, thread count) that `tessera bench` and the launcher report.
public enum BLAS {
    public static func setThreads(_ n: Int) { openblas_set_num_threads(Int32(n)) }
    public static var threads: Int { Int(openblas_get_num_threads()) }

    /// The kernel OpenBLAS selected for this CPU (e.g. "Cooperlake", "SkylakeX", "Haswell").
    public static var coreName: String {
        guard let p = openblas_get_corename() else { return "unknown" }
        return String(cString: p).trimmingCharacters(in: .whitespaces)
    }

    /// One sgemm on the calling thread: C[M,N] = alpha * op(A)[M,K] * op(B)[K,N] + beta * C.
    @inlinable @inline(__always)
    public static func sgemm(transA: Bool, transB: Bool, m: Int, n: Int, k: Int, alpha: Float,
                             a: UnsafePointer<Float>, lda: Int, b: UnsafePointer<Float>, ldb: Int,
                             beta: Float, c: UnsafeMutablePointer<Float>, ldc: Int) {
        if m == 0 || n == 0 { return }
        cblas_sgemm(CblasRowMajor, transA ? CblasTrans : CblasNoTrans, transB ? CblasTrans : CblasNoTrans,
                    Int32(m), Int32(n), Int32(k), alpha, a, Int32(lda), b, Int32(ldb), beta, c, Int32(ldc))
    }

    /// The same product split over the kernel threads: the larger of M and N is cut into contiguous
    /// blocks (multiples of 16), each computed by one single-threaded sgemm. In bf16 (operands already bf16
    /// values) the product runs on the process's bf16 backend (`ProductBackend`).
    public static func gemm(transA: Bool = false, transB: Bool = false, m: Int, n: Int, k: Int, alpha: Float = 1,
                            a: UnsafePointer<Float>, lda: Int, b: UnsafePointer<Float>, ldb: Int,
                            beta: Float, c: UnsafeMutablePointer<Float>, ldc: Int, precision: Precision = .fp32) {
        if precision == .bf16, ProductBackend.bf16 == .onednn {
            ProductBackend.gemmBF16(transA: transA, transB: transB, m: m, n: n, k: k, alpha: alpha, a: a, lda: lda,
                                    b: b, ldb: ldb, beta: beta, c: c, ldc: ldc)
            return
        }
        let A = SendConstPtr(a), B = SendConstPtr(b), C = SendPtr(c)
        Threads.splitProduct(m: m, n: n, k: k) { _, rows, cols in
            // Rows of op(A): a row offset when A is not transposed, a column offset when it is; columns of op(B) likewise.
            let ap = A.p + (transA ? rows.lowerBound : rows.lowerBound * lda), bp = B.p + (transB ? cols.lowerBound * ldb : cols.lowerBound)
            sgemm(transA: transA, transB: transB, m: rows.count, n: cols.count, k: k, alpha: alpha, a: ap, lda: lda,
                  b: bp, ldb: ldb, beta: beta, c: C.p + rows.lowerBound * ldc + cols.lowerBound, ldc: ldc)
        }
    }
}
