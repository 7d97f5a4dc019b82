import CKernels
import Foundation
import XCTest
@testable import TesseraKernels

/// The attention kernel's block product against a Double reference, in both its versions: the 8-lane Swift code
/// (every row tiling 6, 4, 1 and column path 16, 8, one by one) and, where the CPU has AVX-512, the 16-lane C
/// code (rows by 8, 4, 1; columns by 32, 16, one masked vector); A read through both stride orders, C
/// overwritten or accumulated into, C's row padding never written.
final class BlockProductTests: XCTestCase {
    func testAVX2AgainstDoubleReference() {
        check { c, ldc, rows, cols, depth, a, aRow, aCol, b, ldb, acc in
            BlockProduct.runAVX2(c: c, ldc: ldc, rows: rows, cols: cols, depth: depth, a: a, aRow: aRow, aCol: aCol, b: b, ldb: ldb, accumulate: acc)
        }
    }

    func testAVX512AgainstDoubleReference() throws {
        try skipWithoutAVX512()
        XCTAssertEqual(BlockProduct.isa, ProcessInfo.processInfo.environment["TESSERA_ATTENTION_ISA"] == "avx2" ? .avx2 : .avx512)
        check { c, ldc, rows, cols, depth, a, aRow, aCol, b, ldb, acc in
            tessera_block_product_avx512(c, ldc, rows, cols, depth, a, aRow, aCol, b, ldb, acc ? 1 : 0)
        }
    }

    /// The two versions give the same bits: each element is the same chain of fused multiply-adds (tails included).
    func testBothVersionsGiveTheSameBits() throws {
        try skipWithoutAVX512()
        for (rows, cols, depth) in [(64, 64, 32), (13, 40, 7), (9, 29, 6), (21, 83, 5)] {
            for transposedA in [false, true] {
                for accumulate in [false, true] {
                    let a = randomFloats(rows * depth, seed: 11), b = randomFloats(depth * cols, seed: 12), c0 = randomFloats(rows * cols, seed: 13)
                    let (aRow, aCol) = transposedA ? (1, rows) : (depth, 1)
                    var narrow = c0, wide = c0
                    narrow.withUnsafeMutableBufferPointer {
                        BlockProduct.runAVX2(c: $0.baseAddress!, ldc: cols, rows: rows, cols: cols, depth: depth, a: a, aRow: aRow, aCol: aCol,
                                             b: b, ldb: cols, accumulate: accumulate)
                    }
                    wide.withUnsafeMutableBufferPointer {
                        tessera_block_product_avx512($0.baseAddress!, cols, rows, cols, depth, a, aRow, aCol, b, cols, accumulate ? 1 : 0)
                    }
                    XCTAssertEqual(wide, narrow, "rows \(rows) cols \(cols) depth \(depth) transposed \(transposedA) accumulate \(accumulate)")
                }
            }
        }
    }

    /// TESSERA_ATTENTION_ISA: avx2 runs a job on the Swift code and says so in the banner; a value that cannot be
    /// honoured stops the job at start with the reason.
    func testForcedISA() throws {
        let cfg = try CommandTests.tinyJob(scratchDirectory("attention-isa"))
        let avx512 = tessera_cpu_has_avx512() == 1
        for (forced, ok, says) in [("avx2", true, "attention kernel: AVX2"), ("avx9", false, "TESSERA_ATTENTION_ISA=avx9: expected avx2 or avx512"),
                                   ("avx512", avx512, avx512 ? "attention kernel: AVX-512" : "this CPU has no AVX-512")] {
            let (status, out) = try runProcess(["TESSERA_ATTENTION_ISA=\(forced)", CommandTests.binary, "train", cfg,
                                                "--training.steps", "1", "--sample.tokens", "0"])
            XCTAssertEqual(status == 0, ok, out)
            XCTAssertTrue(out.contains(says), "\(forced): \(out)")
        }
    }

    typealias Product = (UnsafeMutablePointer<Float>, Int, Int, Int, Int, UnsafePointer<Float>, Int, Int, UnsafePointer<Float>, Int, Bool) -> Void

    func check(_ product: Product) {
        var checked = 0
        for (rows, cols, depth) in [(64, 64, 32), (32, 64, 64), (64, 32, 64), (13, 40, 7), (2, 17, 5), (7, 8, 3), (1, 5, 9), (16, 24, 1),
                                    (6, 21, 4), (10, 13, 3), (9, 29, 6), (12, 48, 5), (3, 15, 2), (21, 80, 4)] {
            for transposedA in [false, true] {
                for accumulate in [false, true] {
                    // A as rows × depth (aRow = lda) or stored depth × rows (aRow = 1, aCol = lda); B and C with padded rows.
                    let lda = (transposedA ? rows : depth) + 3, ldb = cols + 5, ldc = cols + 2
                    let a = randomFloats((transposedA ? depth : rows) * lda, seed: 1), b = randomFloats(depth * ldb, seed: 2)
                    var c = randomFloats(rows * ldc, seed: 3)
                    let c0 = c
                    let (aRow, aCol) = transposedA ? (1, lda) : (lda, 1)
                    c.withUnsafeMutableBufferPointer { cp in
                        product(cp.baseAddress!, ldc, rows, cols, depth, a, aRow, aCol, b, ldb, accumulate)
                    }
                    for r in 0..<rows {
                        for col in 0..<ldc {
                            let got = Double(c[r * ldc + col])
                            guard col < cols else {  // the row padding is never written
                                XCTAssertEqual(got, Double(c0[r * ldc + col])); continue
                            }
                            var want = accumulate ? Double(c0[r * ldc + col]) : 0, magnitude = abs(want)
                            for x in 0..<depth {
                                let term = Double(a[r * aRow + x * aCol]) * Double(b[x * ldb + col])
                                want += term; magnitude += abs(term)
                            }
                            // fp32 sums of depth + 1 terms: a few units of 2^-24 of their magnitude.
                            XCTAssertEqual(got, want, accuracy: 1e-6 * Double(depth + 1) * max(magnitude, 1e-3),
                                           "rows \(rows) cols \(cols) depth \(depth) transposed \(transposedA) accumulate \(accumulate) at (\(r), \(col))")
                            checked += 1
                        }
                    }
                }
            }
        }
        XCTAssertGreaterThan(checked, 20_000)
    }
}

/// Where the CPU has no AVX-512 only the 8-lane code exists: checks that the kernel chose it, then skips (with the reason).
func skipWithoutAVX512() throws {
    guard tessera_cpu_has_avx512() == 1 else {
        XCTAssertEqual(BlockProduct.isa, .avx2)
        throw XCTSkip("this CPU has no AVX-512: only the 8-lane code runs here (and was chosen)")
    }
}
