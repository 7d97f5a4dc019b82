import Foundation
import XCTest
@testable import TesseraKernels
@testable import TesseraModel

/// The bf16 mode's kernels against the fp32 ones on random inputs, and the model in bf16 against fp32.
///
/// The tolerance of a product comes from bf16's 8-bit significand: rounding to nearest moves an operand by at
/// most 2⁻⁹ of itself, so a product of two rounded operands moves by at most (2⁻⁸ + 2⁻¹⁸)·|a||b| and a sum of
/// such products by at most that times Σ|a||b|; the fp32 accumulation of k terms adds at most about k·2⁻²⁴·Σ|a||b|
/// on each side. Every element of the bf16 product is checked against that bound (an element-wise bound, not a
/// norm), and the difference must be non-zero: a mode that forgot to round would pass any tolerance.
final class MixedPrecisionTests: XCTestCase {
    func rounded(_ x: [Float]) -> [Float] { x.map { BF16.float(BF16.from($0)) } }

    /// max over elements of |got - want| / bound, with bound = (2⁻⁸ + 2⁻¹⁸ + 2k·2⁻²⁴)·Σ_k |a||b| per element.
    func boundRatio(_ got: [Float], _ want: [Float], absProducts: [Double], k: Int) -> Double {
        let u = 0x1p-8 + 0x1p-18 + 2 * Double(k) * 0x1p-24
        return zip(zip(got, want), absProducts).map { abs(Double($0.0) - Double($0.1)) / max(u * $1, 1e-30) }.max() ?? 0
    }

    func testRoundingInPlaceEqualsNarrowThenWiden() {
        Threads.configure(2)
        var rng = SystemRandomNumberGenerator()
        for n in [0, 1, 15, 17, 1000, 70_001] {  // the last one is split over the threads
            var x = (0..<n).map { _ in Float(bitPattern: UInt32.random(in: 0...UInt32.max, using: &rng)) }
            if n > 3 { x[0] = .nan; x[1] = -.infinity; x[2] = Float(bitPattern: 0x7F80_0001) }
            let want = x.map { BF16.float(BF16.from($0)).bitPattern }
            var a = x, b = x
            a.ptr { BF16.round($0, count: n) }
            b.ptr { Precision.bf16.roundOperand($0, count: n) }
            XCTAssertEqual(a.map(\.bitPattern), want, "round, n = \(n)")
            XCTAssertEqual(b.map(\.bitPattern), want, "roundParallel, n = \(n)")
            var c = x
            c.ptr { Precision.fp32.roundOperand($0, count: n) }
            XCTAssertEqual(c.map(\.bitPattern), x.map(\.bitPattern), "fp32 leaves operands alone")
        }
    }

    /// Linear forward and backward with bf16 operands (the emulated backend: rounded operands, fp32 sgemm).
    func testLinearInBF16AgainstFP32() {
        Threads.configure(2)
        let (n, inDim, outDim) = (160, 96, 80)   // 2·n·in·out > 2M: split over the threads
        let x = randomFloats(n * inDim, seed: 21), w = randomFloats(inDim * outDim, seed: 22)
        let dy = randomFloats(n * outDim, seed: 23)
        let xr = rounded(x), wr = rounded(w), dyr = rounded(dy)
        // In bf16 the products run on this process's bf16 backend (oneDNN where the CPU has AVX512_BF16).
        func forward(_ x: [Float], _ w: [Float], _ p: Precision) -> [Float] {
            var out = [Float](repeating: 0, count: n * outDim)
            out.ptr { Linear.forward(out: $0, inp: x, weight: w, bias: nil, n: n, inDim: inDim, outDim: outDim, precision: p) }
            return out
        }
        func backward(_ x: [Float], _ w: [Float], _ dy: [Float], _ p: Precision) -> (dx: [Float], dw: [Float]) {
            var dx = [Float](repeating: 0, count: n * inDim), dw = [Float](repeating: 0, count: inDim * outDim)
            dx.ptr { a in dw.ptr { b in
                Linear.backward(dinp: a, dweight: b, dbias: nil, dout: dy, inp: x, weight: w, n: n, inDim: inDim, outDim: outDim,
                                precision: p)
            } }
            return (dx, dw)
        }
        let y32 = forward(x, w, .fp32), y16 = forward(xr, wr, .bf16)
        let (dx32, dw32) = backward(x, w, dy, .fp32), (dx16, dw16) = backward(xr, wr, dyr, .bf16)
        // Σ|a||b| of each output element, in Double.
        let ax = x.map { Double(abs($0)) }, aw = w.map { Double(abs($0)) }, ady = dy.map { Double(abs($0)) }
        let absY = Ref.linear(ax, aw, nil, n: n, inDim: inDim, outDim: outDim)
        let absDx = Ref.linear(ady, Ref.transpose(aw, rows: inDim, cols: outDim), nil, n: n, inDim: outDim, outDim: inDim)
        let absDw = Ref.linear(Ref.transpose(ax, rows: n, cols: inDim), ady, nil, n: inDim, inDim: n, outDim: outDim)
        XCTAssertLessThanOrEqual(boundRatio(y16, y32, absProducts: absY, k: inDim), 1, "forward")
        XCTAssertLessThanOrEqual(boundRatio(dx16, dx32, absProducts: absDx, k: outDim), 1, "input gradient")
        XCTAssertLessThanOrEqual(boundRatio(dw16, dw32, absProducts: absDw, k: n), 1, "weight gradient")
        // The rounding happened: the bf16 results differ from fp32 by about bf16's precision, not fp32's.
        for (name, a, b) in [("forward", y16, y32), ("input gradient", dx16, dx32), ("weight gradient", dw16, dw32)] {
            XCTAssertGreaterThan(relErr(a, b), 1e-4, "\(name): bf16 indistinguishable from fp32")
        }
        // And the accumulation is fp32: the bf16 product equals the exact product of the rounded operands.
        XCTAssertLessThan(relErr(y16, Ref.linear(xr.d, wr.d, nil, n: n, inDim: inDim, outDim: outDim).f), 1e-6)
        XCTAssertLessThan(relErr(dw16, Ref.linear(Ref.transpose(xr.d, rows: n, cols: inDim), dyr.d, nil,
                                                  n: inDim, inDim: n, outDim: outDim).f), 1e-6)
    }

    /// The LM head in bf16: the loss is the fp32 softmax of the rounded operands' logits; dlogits is rounded
    /// before its two products, so dx and dwte move by bf16's precision and no more.
    func testLMHeadInBF16() {
        Threads.configure(2)
        let (rows, c, vocab) = (40, 16, 300)
        let x = rounded(randomFloats(rows * c, seed: 31, scale: 2)), wte = rounded(randomFloats(vocab * c, seed: 32))
        let targets = (0..<rows).map { Int32(($0 * 7919) % vocab) }
        func run(_ p: Precision) -> (Double, [Float], [Float]) {
            var dx = [Float](repeating: 0, count: rows * c), dwte = [Float](repeating: 0, count: vocab * c)
            let loss = dx.ptr { a in dwte.ptr { b in
                CrossEntropy.fused(x: x, wte: wte, targets: targets, n: rows, c: c, vocab: vocab, gradScale: 0.5,
                                   dx: a, dwte: b, precision: p, scratch: Scratch())
            } }
            return (loss, dx, dwte)
        }
        let (l32, dx32, dw32) = run(.fp32), (l16, dx16, dw16) = run(.bf16)
        XCTAssertEqual(l16, l32, "the loss does not depend on how dlogits is rounded")
        for (name, a, b) in [("dx", dx16, dx32), ("dwte", dw16, dw32)] {
            let e = relErr(a, b)
            XCTAssertGreaterThan(e, 1e-6, "\(name): dlogits was not rounded")
            XCTAssertLessThan(e, 0x1p-8, "\(name): more than bf16's rounding error")
        }
    }

    let cfg = TransformerConfig(vocabSize: 64, nLayer: 2, nHead: 4, dModel: 32, blockSize: 32)

    func batch(_ model: GPT, _ b: Int, _ t: Int) -> Activations {
        let a = model.activations(batch: b, tokens: t)
        for i in 0..<(b * t) {
            a.tokenIds[i] = Int32((i * 7 + 3) % cfg.vocabSize)
            a.targets[i] = Int32((i * 5 + 1) % cfg.vocabSize)
        }
        a.setContiguousPositions()
        return a
    }

    func lossAndGrads(_ model: GPT) -> (Double, [Float]) {
        let a = batch(model, 2, 32)
        model.grads.zero()
        let loss = model.forwardBackward(a, gradScale: 1 / 64)
        return (loss / 64, copyArray(model.grads.storage.ptr, model.grads.count))
    }

    /// The whole model in bf16 against fp32, same weights: close (bf16's precision through two blocks), not equal.
    func testModelInBF16AgainstFP32() {
        Threads.configure(2)
        let m32 = GPT(config: cfg, seed: 5), m16 = GPT(config: cfg, seed: 5)
        m16.precision = .bf16
        let (l32, g32) = lossAndGrads(m32), (l16, g16) = lossAndGrads(m16)
        XCTAssertNotEqual(l16, l32, "bf16 gave fp32's loss exactly: nothing was rounded")
        XCTAssertEqual(l16, l32, accuracy: 1e-2 * l32)
        let e = relErr(g16, g32)
        XCTAssertGreaterThan(e, 1e-5)
        XCTAssertLessThan(e, 3e-2, "gradients further from fp32 than bf16's rounding explains")
        // The master weights are untouched; the products read their rounded copy.
        XCTAssertEqual(copyArray(m16.params.storage.ptr, m16.params.count), copyArray(m32.params.storage.ptr, m32.params.count))
        // The rounded float copy, and on oneDNN its 16-bit twin, which the products read instead of narrowing.
        XCTAssertEqual(m16.productWeightBytes, m16.params.count * (ProductBackend.bf16 == .onednn ? 6 : 4))
        XCTAssertEqual(m32.productWeightBytes, 0)
    }

    /// After the master weights change, `parametersChanged()` makes the next forward read their new rounding:
    /// the same loss and gradients as a model built with those weights.
    func testWeightCopyFollowsTheMasterWeights() {
        Threads.configure(1)
        let m = GPT(config: cfg, seed: 5)
        m.precision = .bf16
        let (before, _) = lossAndGrads(m)
        let p = m.params["transformer.h.0.mlp.c_fc.weight"], count = cfg.dModel * 4 * cfg.dModel
        for i in 0..<count { p[i] *= 1.5 }
        m.parametersChanged()
        let (after, gAfter) = lossAndGrads(m)
        XCTAssertNotEqual(after, before)
        let fresh = GPT(config: cfg, seed: 0)
        fresh.precision = .bf16
        fresh.params.storage.ptr.update(from: m.params.storage.ptr, count: m.params.count)
        let (want, gWant) = lossAndGrads(fresh)
        XCTAssertEqual(after, want)
        XCTAssertEqual(gAfter, gWant)
    }
}
