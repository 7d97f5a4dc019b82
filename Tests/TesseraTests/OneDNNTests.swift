import Foundation
import XCTest
@testable import TesseraKernels

/// The oneDNN product wrapper (OneDNN.swift) and the choice of the bf16 backend (ProductBackend.swift).
///
/// The wrapper's code is the same for f32 and bf16 operands but for the data type, so its f32 products
/// (which oneDNN runs on every CPU) test the primitive cache, strides, transposes, alpha, beta and the split
/// over threads against OpenBLAS on any machine; bf16 products are compared where oneDNN has them, and where
/// it has none the test checks that it says so and that bf16 runs emulated.
final class OneDNNTests: XCTestCase {
    /// Every transpose combination, beta 0, 1 and ½, alpha 1 and 2, row strides wider than the rows, on 1
    /// and 2 threads, M > N and M < N (the two ways the product is split): oneDNN f32 = sgemm within 1e-5.
    func testF32ProductsMatchOpenBLAS() throws {
        for threads in [1, 2] {
            Threads.configure(threads)
            for (m, n, k) in [(130, 70, 120), (40, 150, 200), (3, 5, 7)] {
                for transA in [false, true] { for transB in [false, true] { for (alpha, beta) in [(Float(1), Float(0)), (1, 1), (2, 0.5)] {
                    let (aRows, aCols) = transA ? (k, m) : (m, k), (bRows, bCols) = transB ? (n, k) : (k, n)
                    let lda = aCols + 3, ldb = bCols + 5, ldc = n + 2
                    let a = randomFloats(aRows * lda, seed: 1), b = randomFloats(bRows * ldb, seed: 2)
                    let c0 = randomFloats(m * ldc, seed: 3)
                    var want = c0, got = c0
                    want.ptr { BLAS.sgemm(transA: transA, transB: transB, m: m, n: n, k: k, alpha: alpha, a: a, lda: lda,
                                          b: b, ldb: ldb, beta: beta, c: $0, ldc: ldc) }
                    try got.ptr { c in try a.withUnsafeBytes { ap in try b.withUnsafeBytes { bp in
                        try OneDNN.gemm(type: .f32, transA: transA, transB: transB, m: m, n: n, k: k, alpha: alpha,
                                        a: ap.baseAddress!, lda: lda, b: bp.baseAddress!, ldb: ldb, beta: beta, c: c, ldc: ldc)
                    } } }
                    let label = "\(m)×\(n)×\(k) transA \(transA) transB \(transB) alpha \(alpha) beta \(beta), \(threads) thread(s)"
                    XCTAssertLessThan(relErr(got, want), 1e-5, label)
                    // The padding columns of C (beyond n in each row) are left alone.
                    for r in 0..<m { for j in n..<ldc { XCTAssertEqual(got[r * ldc + j], c0[r * ldc + j], label) } }
                } } }
            }
        }
        // Primitives are made once and reused: running the same products again adds none.
        let made = OneDNN.cachedPrimitives
        Threads.configure(2)
        var c = [Float](repeating: 0, count: 130 * 72)
        let a = randomFloats(130 * 123, seed: 1), b = randomFloats(120 * 75, seed: 2)
        try c.ptr { cp in try a.withUnsafeBytes { ap in try b.withUnsafeBytes { bp in
            try OneDNN.gemm(type: .f32, m: 130, n: 70, k: 120, a: ap.baseAddress!, lda: 123, b: bp.baseAddress!, ldb: 75,
                            beta: 0, c: cp, ldc: 72)
        } } }
        XCTAssertEqual(OneDNN.cachedPrimitives, made)
    }

    /// bf16: where oneDNN has a bf16 matmul, its product of bf16 operands equals the exact product (fp32
    /// accumulation: 1e-6); where it has none, asking for one is an error naming the cause. Either way the
    /// process's backend is oneDNN exactly when the CPU has AVX512_BF16 and oneDNN a bf16 matmul.
    func testBF16ProductOrItsAbsence() throws {
        let impl = OneDNN.implementation(.bf16)
        if ProcessInfo.processInfo.environment["TESSERA_BF16_PRODUCTS"] == nil {
            XCTAssertEqual(ProductBackend.bf16, MachineCheck.hasBF16 && impl != nil ? .onednn : .emulated, ProductBackend.reason)
        }
        XCTAssertTrue(Precision.bf16.productsDescription.contains(ProductBackend.bf16 == .onednn ? "oneDNN" : "emulated"))
        let (m, n, k) = (96, 80, 64)
        let a = randomFloats(m * k, seed: 4).map { BF16.from($0) }, b = randomFloats(k * n, seed: 5).map { BF16.from($0) }
        var c = [Float](repeating: 0, count: m * n)
        func product() throws {
            try c.ptr { cp in try a.withUnsafeBytes { ap in try b.withUnsafeBytes { bp in
                try OneDNN.gemm(type: .bf16, m: m, n: n, k: k, a: ap.baseAddress!, lda: k, b: bp.baseAddress!, ldb: n,
                                beta: 0, c: cp, ldc: n)
            } } }
        }
        if impl != nil {
            try product()
            let exact = Ref.linear(a.map { Double(BF16.float($0)) }, b.map { Double(BF16.float($0)) }, nil, n: m, inDim: k, outDim: n)
            XCTAssertLessThan(relErr(c, exact.map { Float($0) }), 1e-6)
        } else {
            XCTAssertThrowsError(try product()) { XCTAssertTrue("\($0)".contains("unimplemented on this CPU"), "\($0)") }
            XCTAssertEqual(ProductBackend.bf16, .emulated)
        }
    }

    /// A product whose weights lie inside a registered twin reads the twin's 16-bit copy (the model's weights:
    /// no narrowing per product): the same result as narrowing them, and a twin not refreshed is what is read
    /// (so the copy really is the source). An operand reaching past the twin's end is narrowed as usual.
    /// Where oneDNN has no bf16 matmul the emulated backend reads floats and never a twin.
    func testProductsReadRegisteredTwins() throws {
        Threads.configure(2)
        let (m, n, k) = (48, 40, 32), offset = 100
        let a = randomFloats(m * k, seed: 6).map { BF16.float(BF16.from($0)) }
        var weights = randomFloats(offset + k * n + 8, seed: 7).map { BF16.float(BF16.from($0)) }
        let loose = Array(weights[offset ..< offset + k * n])
        func product(_ b: UnsafePointer<Float>) -> [Float] {
            var c = [Float](repeating: 0, count: m * n)
            c.ptr { BLAS.gemm(m: m, n: n, k: k, a: a, lda: k, b: b, ldb: n, beta: 0, c: $0, ldc: n, precision: .bf16) }
            return c
        }
        weights.withUnsafeMutableBufferPointer { w in
            let twin = ProductBackend.Twin(of: w.baseAddress!, count: offset + k * n)  // not the last 8 floats
            defer { twin.close() }
            twin.refresh()
            let reads = ProductBackend.twinReads
            let fromTwin = product(w.baseAddress! + offset)
            let narrowed = loose.withUnsafeBufferPointer { product($0.baseAddress!) }
            XCTAssertEqual(fromTwin, narrowed)
            guard ProductBackend.bf16 == .onednn else {
                XCTAssertEqual(ProductBackend.twinReads, reads, "the emulated backend read a twin")
                return  // then the skip below says so
            }
            XCTAssertEqual(ProductBackend.twinReads, reads + 1, "the weights were not read from the twin")
            // Change the floats without refreshing: the product still reads the old copy.
            for i in offset ..< offset + k * n { w[i] = BF16.float(BF16.from(w[i] * 2)) }
            XCTAssertEqual(product(w.baseAddress! + offset), narrowed, "the product read the floats, not the twin")
            twin.refresh()
            XCTAssertNotEqual(product(w.baseAddress! + offset), narrowed)
            // B from offset + 4 reaches 4 floats past the twin's end: narrowed, not read from the twin.
            let before = ProductBackend.twinReads
            _ = product(w.baseAddress! + offset + 4)
            XCTAssertEqual(ProductBackend.twinReads, before)
        }
        if ProductBackend.bf16 != .onednn {
            throw XCTSkip("bf16 products are emulated here (\(ProductBackend.reason)): no twin is read; checked that none was")
        }
    }

    /// A caller whose M changes every call (the sampler) does not grow the primitive cache without bound, and the
    /// products stay right after the cache starts over.
    func testPrimitiveCacheIsBounded() throws {
        Threads.configure(1)
        let b = randomFloats(4 * 4, seed: 9)
        for m in 1...(OneDNN.cacheLimit + 20) {
            let a = randomFloats(m * 4, seed: UInt64(m))
            var c = [Float](repeating: 0, count: m * 4), want = c
            try c.ptr { cp in try a.withUnsafeBytes { ap in try b.withUnsafeBytes { bp in
                try OneDNN.gemm(type: .f32, m: m, n: 4, k: 4, a: ap.baseAddress!, lda: 4, b: bp.baseAddress!, ldb: 4, beta: 0, c: cp, ldc: 4)
            } } }
            if m % 100 == 0 || m > OneDNN.cacheLimit {
                want.ptr { BLAS.sgemm(transA: false, transB: false, m: m, n: 4, k: 4, alpha: 1, a: a, lda: 4, b: b, ldb: 4, beta: 0, c: $0, ldc: 4) }
                XCTAssertLessThan(relErr(c, want), 1e-5, "m \(m)")
            }
            XCTAssertLessThanOrEqual(OneDNN.cachedPrimitives, OneDNN.cacheLimit)
        }
    }

    /// Forcing the oneDNN backend where it has no bf16 matmul stops a bf16 job at start with the reason;
    /// forcing the emulation always works.
    func testForcedBackend() throws {
        let cfg = try CommandTests.tinyJob(scratchDirectory("onednn-forced"))
        for (forced, ok) in [("onednn", OneDNN.implementation(.bf16) != nil), ("emulated", true), ("sgemm", false)] {
            let (status, out) = try runProcess(["TESSERA_BF16_PRODUCTS=\(forced)", CommandTests.binary, "train", cfg,
                                                "--training.precision", "bf16", "--training.steps", "1", "--sample.tokens", "0"])
            if ok {
                XCTAssertEqual(status, 0, out)
                XCTAssertTrue(out.contains(forced == "emulated" ? "emulated" : "oneDNN"), out)
            } else {
                XCTAssertNotEqual(status, 0, out)
                XCTAssertTrue(out.contains("training.precision = \"bf16\"") && out.contains("TESSERA_BF16_PRODUCTS=\(forced)"), out)
            }
        }
    }
}
