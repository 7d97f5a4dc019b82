import Foundation
import XCTest
@testable import TesseraKernels
@testable import TesseraModel

/// The model against an independent oracle: Hugging Face GPT2LMHeadModel in float64
/// (../shared/reference/gpt2-tiny, see its README): logits, loss, every gradient, the gradient norm
/// and the parameters after one AdamW step.
final class ReferenceTests: XCTestCase {
    struct Meta: Decodable {
        let vocab_size: Int, n_embd: Int, n_layer: Int, n_head: Int, seq_len: Int, batch: Int
        let loss: Double, grad_norm: Double
    }

    func testMatchesHuggingFaceOracle() throws {
        for threads in [1, 2] {
            Threads.configure(threads)
            try checkOracle(threads: threads)
        }
    }

    func checkOracle(threads: Int) throws {
        let dir = referenceDir.path
        XCTAssertTrue(FileManager.default.fileExists(atPath: dir), "reference oracle missing at \(dir)")
        let meta = try JSONDecoder().decode(Meta.self, from: Data(contentsOf: referenceDir.appendingPathComponent("meta.json")))
        let weights = try SafeTensorsFile(path: dir + "/model.safetensors")
        let expected = try SafeTensorsFile(path: dir + "/expected.safetensors")
        let cfg = TransformerConfig(vocabSize: meta.vocab_size, nLayer: meta.n_layer, nHead: meta.n_head, dModel: meta.n_embd,
                            blockSize: meta.seq_len)
        let model = GPT(config: cfg, seed: 0)
        for (i, s) in model.params.specs.enumerated() {
            let w = try weights.floats(s.name)
            XCTAssertEqual(w.count, s.count, s.name)
            model.params.pointer(i).update(from: w, count: s.count)
        }
        let (b, t) = (meta.batch, meta.seq_len)
        let acts = Activations(config: cfg, batch: b, tokens: t)
        let ids = try expected.floats("input_ids"), tg = try expected.floats("targets")
        for i in 0..<(b * t) { acts.tokenIds[i] = Int32(ids[i]); acts.targets[i] = Int32(tg[i]) }
        acts.setContiguousPositions()

        model.grads.zero()
        let n = b * t
        let lossSum = model.forwardBackward(acts, gradScale: 1 / Float(n))
        let loss = lossSum / Double(n)
        XCTAssertEqual(loss, meta.loss, accuracy: 1e-5 * meta.loss, "loss (threads \(threads))")

        var logits = [Float](repeating: 0, count: n * cfg.vocabSize)
        logits.ptr { model.logits(acts, into: $0) }
        XCTAssertLessThan(relErr(logits, try expected.floats("logits")), 1e-5, "logits")

        var sq = 0.0
        for (i, s) in model.params.specs.enumerated() {
            let g = copyArray(model.grads.pointer(i), s.count)
            let e = relErr(g, try expected.floats("grad." + s.name))
            XCTAssertLessThan(e, 1e-5, "gradient of \(s.name): relative error \(e) (threads \(threads))")
            sq += AdamW.sumOfSquares(model.grads.pointer(i), s.count)
        }
        XCTAssertEqual(sq.squareRoot(), meta.grad_norm, accuracy: 1e-5 * meta.grad_norm, "grad norm")

        // One AdamW step: lr 0.01, betas 0.9/0.95, eps 1e-8, weight decay 0.1 on 2-D tensors, no clipping.
        // (a) From the oracle's own gradients (the README's definition of adamw1.*): every element within 1e-6.
        // (b) End to end from our gradients: AdamW normalises g / (|g| + eps), so float32 noise on a gradient
        //     that is zero in exact arithmetic (e.g. the key bias, 1e-19 in float64) becomes a step of up to lr.
        //     Elements with |g_ref| >= 1e-5 must match within 1e-6; every element moves by at most lr(1 + wd).
        let h = AdamWHyper(lr: 0.01, beta1: 0.9, beta2: 0.95, eps: 1e-8, weightDecay: 0.1)
        let original = copyArray(model.params.storage.ptr, model.params.count)
        for (i, s) in model.params.specs.enumerated() {
            let want = try expected.floats("adamw1." + s.name)
            let refGrad = try expected.floats("grad." + s.name)
            let start = copyArray(model.params.pointer(i), s.count)
            for useOracleGrad in [true, false] {
                var p = start, m = [Float](repeating: 0, count: s.count), v = m
                var g = useOracleGrad ? refGrad : copyArray(model.grads.pointer(i), s.count)
                p.ptr { pp in m.ptr { mp in v.ptr { vp in g.ptr { gp in
                    AdamW.update(param: pp, grad: gp, m: mp, v: vp, n: s.count, hyper: h, decay: s.decays, step: 1)
                } } } }
                for j in 0..<s.count {
                    if useOracleGrad || abs(refGrad[j]) >= 1e-5 {
                        XCTAssertEqual(p[j], want[j], accuracy: 1e-6,
                                       "\(s.name)[\(j)] after one AdamW step (\(useOracleGrad ? "oracle" : "own") gradients)")
                    } else {
                        XCTAssertLessThanOrEqual(abs(p[j] - start[j]), 0.01 * 1.001 + 0.001 * abs(start[j]), "\(s.name)[\(j)]")
                    }
                }
            }
        }
        XCTAssertEqual(copyArray(model.params.storage.ptr, model.params.count), original)
    }
}
