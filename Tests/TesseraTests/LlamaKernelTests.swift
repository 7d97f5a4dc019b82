import Foundation
import XCTest
@testable import TesseraKernels

/// The kernels of the Llama family, each forward against a float64 formula and each backward against
/// finite differences of it (central, h = 1e-5, in float64): RMSNorm, the SwiGLU gate, rotary embeddings.
final class LlamaKernelTests: XCTestCase {
    static func rmsNorm(_ x: [Double], _ w: [Double], n: Int, c: Int, eps: Double) -> [Double] {
        var out = [Double](repeating: 0, count: n * c)
        for i in 0..<n {
            let row = x[(i * c)..<(i * c + c)]
            let rs = 1 / (row.reduce(0) { $0 + $1 * $1 } / Double(c) + eps).squareRoot()
            for j in 0..<c { out[i * c + j] = x[i * c + j] * rs * w[j] }
        }
        return out
    }

    func testRMSNorm() {
        for threads in [1, 2] {
            Threads.configure(threads)
            let (n, c, eps) = (7, 40, Float(1e-5))   // c not a multiple of 16: the scalar tails too
            let x = randomFloats(n * c, seed: 41), w = randomFloats(c, seed: 42), dout = randomFloats(n * c, seed: 43)
            var out = [Float](repeating: 0, count: n * c), rstd = [Float](repeating: 0, count: n)
            out.ptr { o in rstd.ptr { r in RMSNorm.forward(out: o, rstd: r, x: x, weight: w, n: n, c: c, eps: eps) } }
            XCTAssertLessThan(relErr(out, Self.rmsNorm(x.d, w.d, n: n, c: c, eps: Double(eps)).f), 1e-6)
            // dx and dw accumulate: start from ones to see it.
            var dx = [Float](repeating: 1, count: n * c), dw = [Float](repeating: 1, count: c)
            dx.ptr { a in dw.ptr { b in rstd.withUnsafeBufferPointer { r in
                RMSNorm.backward(dx: a, dweight: b, dout: dout, x: x, weight: w, rstd: r.baseAddress!, n: n, c: c, scratch: Scratch())
            } } }
            let gx = Ref.numericGradient(x.d) { Ref.dot(Self.rmsNorm($0, w.d, n: n, c: c, eps: Double(eps)), dout.d) }
            let gw = Ref.numericGradient(w.d) { Ref.dot(Self.rmsNorm(x.d, $0, n: n, c: c, eps: Double(eps)), dout.d) }
            XCTAssertLessThan(relErr(dx.map { $0 - 1 }, gx.f), 1e-5, "dx, \(threads) thread(s)")
            XCTAssertLessThan(relErr(dw.map { $0 - 1 }, gw.f), 1e-5, "dw, \(threads) thread(s)")
        }
    }

    static func swiglu(_ gate: [Double], _ up: [Double]) -> [Double] {
        zip(gate, up).map { a, u in a / (1 + Foundation.exp(-a)) * u }
    }

    /// Gate and up as the two halves of one fused [N, 2F] product (row stride 2F), inputs large enough to
    /// reach the sigmoid's tails.
    func testSwiGLU() {
        Threads.configure(2)
        let (n, f) = (5, 37)
        let fused = randomFloats(n * 2 * f, seed: 44, scale: 6), dout = randomFloats(n * f, seed: 45)
        func halves(_ x: [Float]) -> ([Double], [Double]) {
            var g: [Double] = [], u: [Double] = []
            for r in 0..<n { g += x[(r * 2 * f)..<(r * 2 * f + f)].map(Double.init); u += x[(r * 2 * f + f)..<(r * 2 * f + 2 * f)].map(Double.init) }
            return (g, u)
        }
        let (g, u) = halves(fused)
        var out = [Float](repeating: 0, count: n * f)
        fused.withUnsafeBufferPointer { p in
            out.ptr { SwiGLU.forward(out: $0, gate: p.baseAddress!, up: p.baseAddress! + f, n: n, f: f, ld: 2 * f) }
        }
        XCTAssertLessThan(relErr(out, Self.swiglu(g, u).f), 1e-6)
        var grad = [Float](repeating: .nan, count: n * 2 * f)   // overwritten, not accumulated
        fused.withUnsafeBufferPointer { p in grad.ptr { d in
            SwiGLU.backward(dgate: d, dup: d + f, dout: dout, gate: p.baseAddress!, up: p.baseAddress! + f, n: n, f: f, ld: 2 * f)
        } }
        let (dg, du) = halves(grad)
        XCTAssertLessThan(relErr(dg.f, Ref.numericGradient(g) { Ref.dot(Self.swiglu($0, u), dout.d) }.f), 1e-5, "dgate")
        XCTAssertLessThan(relErr(du.f, Ref.numericGradient(u) { Ref.dot(Self.swiglu(g, $0), dout.d) }.f), 1e-5, "dup")
    }

    /// Hugging Face's formula: q·cos + rotate_half(q)·sin, with inv_freq = θ^(−2i/D) and the angle's table
    /// repeated over both halves.
    static func rope(_ x: [Double], rows: Int, heads: Int, d: Int, positions: [Int32], theta: Double) -> [Double] {
        var out = x
        let half = d / 2
        for r in 0..<rows { for h in 0..<heads { for i in 0..<d {
            let j = i % half, angle = Double(positions[r]) * Foundation.pow(theta, -2 * Double(j) / Double(d))
            let base = (r * heads + h) * d
            let rotated = i < half ? -x[base + i + half] : x[base + i - half]
            out[base + i] = x[base + i] * Foundation.cos(angle) + rotated * Foundation.sin(angle)
        } } }
        return out
    }

    /// Rotation at explicit positions (unordered, large: the angle tables, not a running product), the
    /// inverse undoes it, and the inverse is the backward: ⟨R x, g⟩ = ⟨x, R⁻¹ g⟩.
    func testRotaryEmbeddings() {
        Threads.configure(2)
        let (rows, heads, d, theta) = (6, 3, 8, 10_000.0)
        let positions: [Int32] = [0, 1, 7, 500, 3, 999]
        let rope = RoPE(headDim: d, theta: theta, maxPosition: 1000)
        let x = randomFloats(rows * heads * d, seed: 46), g = randomFloats(rows * heads * d, seed: 47)
        var y = x
        y.ptr { rope.apply($0, rows: rows, heads: heads, ld: heads * d, positions: positions) }
        XCTAssertLessThan(relErr(y, Self.rope(x.d, rows: rows, heads: heads, d: d, positions: positions, theta: theta).f), 1e-6)
        var back = y
        back.ptr { rope.apply($0, rows: rows, heads: heads, ld: heads * d, positions: positions, inverse: true) }
        XCTAssertLessThan(relErr(back, x), 1e-6)
        var gx = g
        gx.ptr { rope.apply($0, rows: rows, heads: heads, ld: heads * d, positions: positions, inverse: true) }
        let numeric = Ref.numericGradient(x.d) { Ref.dot(Self.rope($0, rows: rows, heads: heads, d: d, positions: positions, theta: theta), g.d) }
        XCTAssertLessThan(relErr(gx, numeric.f), 1e-5)
        // Heads inside a wider row (q's heads of a fused q|k|v buffer): only those columns turn.
        var wide = randomFloats(rows * 40, seed: 48)
        let before = wide
        wide.ptr { rope.apply($0 + 4, rows: rows, heads: 2, ld: 40, positions: positions) }
        for r in 0..<rows {
            XCTAssertEqual(Array(wide[(r * 40)..<(r * 40 + 4)]), Array(before[(r * 40)..<(r * 40 + 4)]))
            XCTAssertEqual(Array(wide[(r * 40 + 20)..<(r * 40 + 40)]), Array(before[(r * 40 + 20)..<(r * 40 + 40)]))
            if positions[r] != 0 {  // position 0 does not turn
                XCTAssertNotEqual(Array(wide[(r * 40 + 4)..<(r * 40 + 20)]), Array(before[(r * 40 + 4)..<(r * 40 + 20)]))
            }
        }
    }
}
