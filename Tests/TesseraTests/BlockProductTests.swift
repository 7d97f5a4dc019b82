import XCTest
@testable import TesseraKernels

/// The attention kernel's block product against a Double reference: every row tiling (6, 4, 1) and column path
/// (16, 8, one by one), A read through both stride orders, C overwritten or accumulated into.
final class BlockProductTests: XCTestCase {
    func testAgainstDoubleReference() {
        var checked = 0
        for (rows, cols, depth) in [(64, 64, 32), (32, 64, 64), (64, 32, 64), (13, 40, 7), (2, 17, 5), (7, 8, 3), (1, 5, 9), (16, 24, 1), (6, 21, 4), (10, 13, 3), (9, 29, 6)] {
            for transposedA in [false, true] {
                for accumulate in [false, true] {
                    // A as rows × depth (aRow = lda) or stored depth × rows (aRow = 1, aCol = lda); B and C with padded rows.
                    let lda = (transposedA ? rows : depth) + 3, ldb = cols + 5, ldc = cols + 2
                    let a = randomFloats((transposedA ? depth : rows) * lda, seed: 1), b = randomFloats(depth * ldb, seed: 2)
                    var c = randomFloats(rows * ldc, seed: 3)
                    let c0 = c
                    let (aRow, aCol) = transposedA ? (1, lda) : (lda, 1)
                    c.withUnsafeMutableBufferPointer { cp in
                        BlockProduct.run(c: cp.baseAddress!, ldc: ldc, rows: rows, cols: cols, depth: depth, a: a, aRow: aRow,
                                         aCol: aCol, b: b, ldb: ldb, accumulate: accumulate)
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
