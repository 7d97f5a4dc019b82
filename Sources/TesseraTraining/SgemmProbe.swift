// The MFU ceiling, measured in the same run as the figures divided by it.

import Foundation
import TesseraKernels

/// The machine's sgemm rate with OpenBLAS's own threads (the MFU ceiling).
public enum SgemmProbe {
    public struct Result: Sendable { public let flops: Double; public let n: Int; public let threads: Int }

    /// Best of several n×n×n products (n = 2048) on `threads` OpenBLAS threads.
    public static func measure(threads: Int, n: Int = 2048, seconds: Double = 0.6) -> Result {
        measure(precision: .fp32, threads: threads, n: n, seconds: seconds)
    }

    /// The rate of one product of `precision` as this build runs it, n×n×n, on `threads` threads: in fp32 an
    /// sgemm; in bf16 both operands are first rounded to bf16 from an fp32 source, and the rounding counts
    /// against the rate, then multiplied by the bf16 backend (ProductBackend.swift; oneDNN narrows them too).
    public static func measure(precision: Precision, threads: Int, n: Int = 2048, seconds: Double = 0.6) -> Result {
        let src = FloatBuffer(n * n, value: 0.3), a = FloatBuffer(n * n, value: 0.5), b = FloatBuffer(n * n, value: 0.25)
        let c = FloatBuffer(n * n)
        if precision == .bf16 { Threads.configure(threads) }  // the rounding runs on the kernel threads
        BLAS.setThreads(threads)
        defer { BLAS.setThreads(1) }
        var best = Double.infinity, spent = 0.0, reps = 0
        while reps < 2 || (spent < seconds && reps < 20) {
            let t0 = DispatchTime.now().uptimeNanoseconds
            if precision == .bf16 {
                precision.operandCopy(src.ptr, into: a.ptr, count: n * n)
                precision.operandCopy(src.ptr, into: b.ptr, count: n * n)
            }
            if precision == .bf16, ProductBackend.bf16 == .onednn {
                BLAS.gemm(m: n, n: n, k: n, a: a.ptr, lda: n, b: b.ptr, ldb: n, beta: 0, c: c.ptr, ldc: n, precision: .bf16)
            } else {
                BLAS.sgemm(transA: false, transB: false, m: n, n: n, k: n, alpha: 1, a: a.ptr, lda: n, b: b.ptr, ldb: n,
                           beta: 0, c: c.ptr, ldc: n)
            }
            let dt = Double(DispatchTime.now().uptimeNanoseconds - t0) / 1e9
            best = min(best, dt); spent += dt; reps += 1
        }
        return Result(flops: 2 * Double(n * n * n) / best, n: n, threads: threads)
    }

    /// oneDNN's f32 matmul at n³ through the same split over `threads` kernel threads: the alternative fp32
    /// library, measured beside OpenBLAS so the choice of fp32 backend rests on this machine's figures.
    public static func measureOneDNN(threads: Int, n: Int = 2048, seconds: Double = 0.6) -> Result {
        let a = FloatBuffer(n * n, value: 0.5), b = FloatBuffer(n * n, value: 0.25), c = FloatBuffer(n * n)
        Threads.configure(threads)
        var best = Double.infinity, spent = 0.0, reps = 0
        while reps < 2 || (spent < seconds && reps < 20) {
            let t0 = DispatchTime.now().uptimeNanoseconds
            do {
                try OneDNN.gemm(type: .f32, m: n, n: n, k: n, a: a.ptr, lda: n, b: b.ptr, ldb: n, beta: 0, c: c.ptr, ldc: n)
            } catch { fatalError("\(error)") }  // oneDNN has f32 matmuls on every x86-64 CPU
            let dt = Double(DispatchTime.now().uptimeNanoseconds - t0) / 1e9
            best = min(best, dt); spent += dt; reps += 1
        }
        return Result(flops: 2 * Double(n * n * n) / best, n: n, threads: threads)
    }
}
