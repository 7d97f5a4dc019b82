import Foundation
import XCTest
@testable import TesseraKernels
@testable import TesseraModel

/// The whole model: gradients against finite differences of an independent Double GPT-2, and
/// overfitting one batch.
final class ModelTests: XCTestCase {
    let cfg = TransformerConfig(vocabSize: 11, nLayer: 2, nHead: 2, dModel: 8, blockSize: 8)

    /// GPT-2 loss (sum over tokens) in Double from named parameters, built from the Ref ops.
    func referenceLoss(_ p: [String: [Double]], tokens: [Int32], targets: [Int32], b: Int, t: Int) -> Double {
        let c = cfg.dModel, n = b * t
        var x = [Double](repeating: 0, count: n * c)
        for i in 0..<n {
            for j in 0..<c {
                x[i * c + j] = p["transformer.wte.weight"]![Int(tokens[i]) * c + j] + p["transformer.wpe.weight"]![(i % t) * c + j]
            }
        }
        for l in 0..<cfg.nLayer {
            let s = "transformer.h.\(l)."
            let h1 = Ref.layerNorm(x, p[s + "ln_1.weight"]!, p[s + "ln_1.bias"]!, n: n, c: c)
            let qkv = Ref.linear(h1, p[s + "attn.c_attn.weight"]!, p[s + "attn.c_attn.bias"]!, n: n, inDim: c, outDim: 3 * c)
            var q = [Double](), k = [Double](), v = [Double]()
            for i in 0..<n {
                let r: Int = i * 3 * c
                q.append(contentsOf: qkv[r..<(r + c)])
                k.append(contentsOf: qkv[(r + c)..<(r + 2 * c)])
                v.append(contentsOf: qkv[(r + 2 * c)..<(r + 3 * c)])
            }
            let att = Ref.attention(q: q, k: k, v: v, b: b, h: cfg.nHead, hd: cfg.headDim, tq: t, tk: t, qOffset: 0, kOffset: 0, causal: true).0
            let proj = Ref.linear(att, p[s + "attn.c_proj.weight"]!, p[s + "attn.c_proj.bias"]!, n: n, inDim: c, outDim: c)
            for i in 0..<(n * c) { x[i] += proj[i] }
            let h2 = Ref.layerNorm(x, p[s + "ln_2.weight"]!, p[s + "ln_2.bias"]!, n: n, c: c)
            let fc = Ref.gelu(Ref.linear(h2, p[s + "mlp.c_fc.weight"]!, p[s + "mlp.c_fc.bias"]!, n: n, inDim: c, outDim: 4 * c))
            let mlp = Ref.linear(fc, p[s + "mlp.c_proj.weight"]!, p[s + "mlp.c_proj.bias"]!, n: n, inDim: 4 * c, outDim: c)
            for i in 0..<(n * c) { x[i] += mlp[i] }
        }
        let f = Ref.layerNorm(x, p["transformer.ln_f.weight"]!, p["transformer.ln_f.bias"]!, n: n, c: c)
        return Ref.crossEntropy(f, p["transformer.wte.weight"]!, targets, n: n, c: c, v: cfg.vocabSize)
    }

    func testWholeModelGradientsAgainstFiniteDifferences() {
        Threads.configure(2)
        let (b, t) = (2, 7)
        let model = GPT(config: cfg, seed: 42)
        // Perturb LayerNorm weights and biases away from 1 and 0 so that every path carries gradient.
        for (i, s) in model.params.specs.enumerated() where s.name.contains("ln_") || s.name.hasSuffix(".bias") {
            let r = randomFloats(s.count, seed: UInt64(i + 100), scale: 0.3)
            for j in 0..<s.count { model.params.pointer(i)[j] += r[j] }
        }
        let acts = Activations(config: cfg, batch: b, tokens: t)
        let tokens = (0..<(b * t)).map { Int32(($0 * 7 + 3) % cfg.vocabSize) }
        let targets = (0..<(b * t)).map { Int32(($0 * 5 + 1) % cfg.vocabSize) }
        for i in 0..<(b * t) { acts.tokenIds[i] = tokens[i]; acts.targets[i] = targets[i] }
        acts.setContiguousPositions()
        model.grads.zero()
        let loss = model.forwardBackward(acts, gradScale: 1)

        var named: [String: [Double]] = [:]
        for (i, s) in model.params.specs.enumerated() { named[s.name] = copyArray(model.params.pointer(i), s.count).d }
        let refLoss = referenceLoss(named, tokens: tokens, targets: targets, b: b, t: t)
        XCTAssertEqual(loss, refLoss, accuracy: 1e-5 * refLoss, "float forward vs Double reference")

        for (i, s) in model.params.specs.enumerated() {
            // Up to 12 elements of each tensor, spread over it.
            let picks = Array(Set((0..<12).map { ($0 * 7919) % s.count })).sorted()
            var analytic: [Float] = [], numeric: [Double] = []
            for j in picks {
                let x0 = named[s.name]![j], h = 1e-5
                named[s.name]![j] = x0 + h; let fp = referenceLoss(named, tokens: tokens, targets: targets, b: b, t: t)
                named[s.name]![j] = x0 - h; let fm = referenceLoss(named, tokens: tokens, targets: targets, b: b, t: t)
                named[s.name]![j] = x0
                numeric.append((fp - fm) / (2 * h))
                analytic.append(model.grads.pointer(i)[j])
            }
            XCTAssertLessThan(relErr(analytic, numeric.f), 2e-4, "gradient of \(s.name) at \(picks)")
        }
    }

    func testOverfitsOneBatch() {
        Threads.configure(2)
        let cfg = TransformerConfig(vocabSize: 32, nLayer: 2, nHead: 2, dModel: 32, blockSize: 16)
        let model = GPT(config: cfg, seed: 3)
        let acts = Activations(config: cfg, batch: 2, tokens: 16)
        for i in 0..<acts.n {
            acts.tokenIds[i] = Int32((i * 13 + 5) % 32); acts.targets[i] = Int32((i * 11 + 2) % 32)
        }
        acts.setContiguousPositions()
        let opt = TesseraTrainingShim.optimizer(model)
        var first = 0.0, last = 0.0
        for step in 0..<300 {
            model.grads.zero()
            let loss = model.forwardBackward(acts, gradScale: 1 / Float(acts.n)) / Double(acts.n)
            if step == 0 { first = loss }
            last = loss
            opt(3e-3)
        }
        XCTAssertEqual(first, log(32), accuracy: 0.3, "initial loss near ln(vocab)")
        XCTAssertLessThan(last, 0.05, "a 2-layer model memorises 32 tokens (loss went \(first) → \(last))")
    }
}
