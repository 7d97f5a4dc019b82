import Foundation
import XCTest
@testable import TesseraKernels

/// Every kernel's forward against a Double reference and its backward against central finite
/// differences of that reference (loss = Σ out·w for random w, so dout = w).
final class KernelTests: XCTestCase {
    override func setUp() { Threads.configure(2) }

    func testEmbedding() {
        let (n, c, vocab, maxPos) = (7, 20, 5, 9)
        let wte = randomFloats(vocab * c, seed: 1), wpe = randomFloats(maxPos * c, seed: 2), w = randomFloats(n * c, seed: 3)
        let tokens: [Int32] = [0, 3, 3, 1, 4, 0, 2], positions: [Int32] = [0, 1, 2, 8, 4, 5, 5]
        var out = [Float](repeating: 0, count: n * c)
        out.ptr { Embedding.forward(out: $0, tokens: tokens, positions: positions, wte: wte, wpe: wpe, n: n, c: c) }
        func ref(_ e: [Double], _ p: [Double]) -> [Double] {
            (0..<(n * c)).map { i in e[Int(tokens[i / c]) * c + i % c] + p[Int(positions[i / c]) * c + i % c] }
        }
        XCTAssertLessThan(relErr(out, ref(wte.d, wpe.d).f), 1e-7)
        var dwte = [Float](repeating: 0, count: vocab * c), dwpe = [Float](repeating: 0, count: maxPos * c)
        dwte.ptr { a in dwpe.ptr { b in Embedding.backward(dwte: a, dwpe: b, dout: w, tokens: tokens, positions: positions, n: n, c: c) } }
        let ge = Ref.numericGradient(wte.d) { Ref.dot(ref($0, wpe.d), w.d) }
        let gp = Ref.numericGradient(wpe.d) { Ref.dot(ref(wte.d, $0), w.d) }
        XCTAssertLessThan(relErr(dwte, ge.f), 1e-6)
        XCTAssertLessThan(relErr(dwpe, gp.f), 1e-6)
    }

    func testLayerNorm() {
        let (n, c) = (9, 37)  // c not a multiple of 16: exercises the scalar tails
        let x = randomFloats(n * c, seed: 4, scale: 2), wt = randomFloats(c, seed: 5), b = randomFloats(c, seed: 6)
        let w = randomFloats(n * c, seed: 7)
        var out = [Float](repeating: 0, count: n * c), mean = [Float](repeating: 0, count: n), rstd = mean
        out.ptr { o in mean.ptr { m in rstd.ptr { r in
            LayerNorm.forward(out: o, mean: m, rstd: r, x: x, weight: wt, bias: b, n: n, c: c)
        } } }
        XCTAssertLessThan(relErr(out, Ref.layerNorm(x.d, wt.d, b.d, n: n, c: c).f), 1e-6)
        var dx = [Float](repeating: 0.5, count: n * c), dw = [Float](repeating: 0, count: c), db = dw
        let scratch = Scratch()
        dx.ptr { a in dw.ptr { bw in db.ptr { bb in
            LayerNorm.backward(dx: a, dweight: bw, dbias: bb, dout: w, x: x, weight: wt, mean: mean, rstd: rstd,
                               n: n, c: c, scratch: scratch)
        } } }
        let gx = Ref.numericGradient(x.d) { Ref.dot(Ref.layerNorm($0, wt.d, b.d, n: n, c: c), w.d) }.map { $0 + 0.5 }
        let gw = Ref.numericGradient(wt.d) { Ref.dot(Ref.layerNorm(x.d, $0, b.d, n: n, c: c), w.d) }
        let gb = Ref.numericGradient(b.d) { Ref.dot(Ref.layerNorm(x.d, wt.d, $0, n: n, c: c), w.d) }
        XCTAssertLessThan(relErr(dx, gx.f), 1e-5, "dx (accumulated onto 0.5)")
        XCTAssertLessThan(relErr(dw, gw.f), 1e-5)
        XCTAssertLessThan(relErr(db, gb.f), 1e-5)
    }

    func testLinear() {
        // Large enough that the product is split over threads (2·n·in·out > 2M).
        for (n, inDim, outDim) in [(5, 7, 9), (160, 96, 80)] {
            let x = randomFloats(n * inDim, seed: 8), wt = randomFloats(inDim * outDim, seed: 9)
            let b = randomFloats(outDim, seed: 10), w = randomFloats(n * outDim, seed: 11)
            var out = [Float](repeating: 0, count: n * outDim)
            out.ptr { Linear.forward(out: $0, inp: x, weight: wt, bias: b, n: n, inDim: inDim, outDim: outDim) }
            XCTAssertLessThan(relErr(out, Ref.linear(x.d, wt.d, b.d, n: n, inDim: inDim, outDim: outDim).f), 1e-6)
            var dx = [Float](repeating: 0, count: n * inDim), dw = [Float](repeating: 0, count: inDim * outDim)
            var db = [Float](repeating: 0, count: outDim)
            dx.ptr { a in dw.ptr { bw in db.ptr { bb in
                Linear.backward(dinp: a, dweight: bw, dbias: bb, dout: w, inp: x, weight: wt, n: n, inDim: inDim, outDim: outDim)
            } } }
            // The loss is linear in each input, so the analytic gradients are exact: compare with the Double formulas.
            let gx = Ref.linear(w.d, Ref.transpose(wt.d, rows: inDim, cols: outDim), nil, n: n, inDim: outDim, outDim: inDim)
            let gw = Ref.linear(Ref.transpose(x.d, rows: n, cols: inDim), w.d, nil, n: inDim, inDim: n, outDim: outDim)
            let gb = (0..<outDim).map { o in (0..<n).reduce(0.0) { $0 + Double(w[$1 * outDim + o]) } }
            XCTAssertLessThan(relErr(dx, gx.f), 1e-6)
            XCTAssertLessThan(relErr(dw, gw.f), 1e-6)
            XCTAssertLessThan(relErr(db, gb.f), 1e-6)
            if n == 5 {  // and once through finite differences
                let fd = Ref.numericGradient(x.d) { Ref.dot(Ref.linear($0, wt.d, b.d, n: n, inDim: inDim, outDim: outDim), w.d) }
                XCTAssertLessThan(relErr(dx, fd.f), 1e-6)
            }
        }
    }

    func testGELU() {
        let n = 4099
        let x = randomFloats(n, seed: 12, scale: 5), w = randomFloats(n, seed: 13)
        var out = [Float](repeating: 0, count: n)
        out.ptr { GELU.forward(out: $0, x: x, n: n) }
        XCTAssertLessThan(relErr(out, Ref.gelu(x.d).f), 1e-6)
        var dx = [Float](repeating: 0, count: n)
        dx.ptr { GELU.backward(dx: $0, dout: w, x: x, n: n) }
        // GELU is elementwise: differentiate each element on its own.
        let fd = (0..<n).map { i -> Double in
            let h = 1e-5, a = Double(x[i])
            return (Ref.gelu([a + h])[0] - Ref.gelu([a - h])[0]) / (2 * h) * Double(w[i])
        }
        XCTAssertLessThan(relErr(dx, fd.f), 1e-5)
    }

    func testResidual() {
        let n = 1000
        let a = randomFloats(n, seed: 14), b = randomFloats(n, seed: 15), w = randomFloats(n, seed: 16)
        var out = [Float](repeating: 0, count: n)
        out.ptr { Residual.forward(out: $0, a: a, b: b, n: n) }
        XCTAssertEqual(out, zip(a, b).map { $0 + $1 })
        var acc = [Float](repeating: 1, count: n)
        acc.ptr { Residual.backward(accumulate: $0, w, n: n) }
        XCTAssertEqual(acc, w.map { $0 + 1 })
    }

    func testFusedCrossEntropy() {
        // The second case has a vocabulary large enough that the rows are processed in several chunks.
        let c = 12
        for (rows, vocab) in [(40, 33), (20, 1 << 18)] {
            let x = randomFloats(rows * c, seed: 17, scale: 2), wte = randomFloats(vocab * c, seed: 18)
            var targets = (0..<rows).map { Int32(($0 * 7919) % vocab) }
            targets[1] = -1  // ignored position
            let scale: Float = 0.25
            var dx = [Float](repeating: 0, count: rows * c), dwte = [Float](repeating: 0, count: vocab * c)
            let scratch = Scratch()
            let loss = dx.ptr { a in dwte.ptr { b in
                CrossEntropy.fused(x: x, wte: wte, targets: targets, n: rows, c: c, vocab: vocab, gradScale: scale,
                                   dx: a, dwte: b, scratch: scratch)
            } }
            let refLoss = Ref.crossEntropy(x.d, wte.d, targets, n: rows, c: c, v: vocab)
            XCTAssertEqual(loss, refLoss, accuracy: 1e-5 * refLoss)
            if vocab > 1000 { continue }  // finite differences over a huge vocabulary are too slow
            let gx = Ref.numericGradient(x.d) { Ref.crossEntropy($0, wte.d, targets, n: rows, c: c, v: vocab) * Double(scale) }
            let gw = Ref.numericGradient(wte.d) { Ref.crossEntropy(x.d, $0, targets, n: rows, c: c, v: vocab) * Double(scale) }
            XCTAssertLessThan(relErr(dx, gx.f), 1e-5)
            XCTAssertLessThan(relErr(dwte, gw.f), 1e-5)
        }
    }
}

final class ThreadsTests: XCTestCase {
    func testCPUListCountingAndAffinity() throws {
        XCTAssertEqual(Threads.cpuListCount("0"), 1)
        XCTAssertEqual(Threads.cpuListCount("0-3,8"), 5)
        XCTAssertEqual(Threads.cpuListCount(" 0-1\t"), 2)
        let cores = Threads.availableCores()
        XCTAssertGreaterThanOrEqual(cores, 1)
        XCTAssertLessThanOrEqual(cores, ProcessInfo.processInfo.processorCount)
        // A process pinned to one core sees one core (what `training.threads = 0` uses).
        let (status, out) = try runProcess(["taskset", "-c", "0", "grep", "Cpus_allowed_list", "/proc/self/status"])
        XCTAssertEqual(status, 0, out)
        XCTAssertEqual(Threads.cpuListCount(String(out.split(separator: ":").last ?? "")), 1, out)
    }

    func testParallelRangesCoverEveryIndexOnce() {
        Threads.configure(2)
        var hits = [Int](repeating: 0, count: 1000)
        hits.withUnsafeMutableBufferPointer { b in
            let p = SendPtr(b.baseAddress!)
            Threads.parallelRanges(1000, grain: 16) { _, lo, hi in for i in lo..<hi { p.p[i] += 1 } }
        }
        XCTAssertEqual(hits, [Int](repeating: 1, count: 1000))
    }
}
