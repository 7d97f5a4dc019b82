import Foundation
import XCTest
@testable import TesseraKernels
@testable import TesseraModel

/// The Llama model against Hugging Face LlamaForCausalLM in float64 (../shared/reference/llama-tiny:
/// grouped-query attention 4/2, untied head, RoPE θ 1e4, RMSNorm eps 1e-5): logits, loss, every gradient, the
/// gradient norm and the parameters after one AdamW step, on 1 and 2 threads.
final class LlamaReferenceTests: XCTestCase {
    static let dir = repoRoot.deletingLastPathComponent().appendingPathComponent("shared/reference/llama-tiny")

    struct Meta: Decodable {
        let vocab_size: Int, hidden_size: Int, num_hidden_layers: Int, num_attention_heads: Int, num_key_value_heads: Int
        let intermediate_size: Int, seq_len: Int, batch: Int, rope_theta: Double, rms_norm_eps: Double
        let tie_word_embeddings: Bool, loss: Double, grad_norm: Double
    }

    func testMatchesHuggingFaceOracle() throws {
        for threads in [1, 2] {
            Threads.configure(threads)
            try check(threads: threads)
        }
    }

    func check(threads: Int) throws {
        let meta = try JSONDecoder().decode(Meta.self, from: Data(contentsOf: Self.dir.appendingPathComponent("meta.json")))
        let weights = try SafeTensorsFile(path: Self.dir.path + "/model.safetensors")
        let expected = try SafeTensorsFile(path: Self.dir.path + "/expected.safetensors")
        let cfg = TransformerConfig.llama(vocabSize: meta.vocab_size, nLayer: meta.num_hidden_layers, nHead: meta.num_attention_heads,
                                          nKVHead: meta.num_key_value_heads, dModel: meta.hidden_size, intermediate: meta.intermediate_size,
                                          blockSize: meta.seq_len, rmsEps: Float(meta.rms_norm_eps), ropeTheta: meta.rope_theta,
                                          tied: meta.tie_word_embeddings)
        let model = Llama(config: cfg, seed: 0)
        // Every tensor of the oracle, and nothing else, under the same names and shapes.
        XCTAssertEqual(Set(model.params.specs.map(\.name)), Set(weights.entries.keys))
        for (i, s) in model.params.specs.enumerated() {
            XCTAssertEqual(weights.entries[s.name]?.shape, s.shape, s.name)
            let w = try weights.floats(s.name)
            model.params.pointer(i).update(from: w, count: s.count)
        }
        let (b, t) = (meta.batch, meta.seq_len), n = b * t
        let st = model.activations(batch: b, tokens: t)
        let ids = try expected.floats("input_ids"), tg = try expected.floats("targets")
        for i in 0..<n { st.tokenIds[i] = Int32(ids[i]); st.targets[i] = Int32(tg[i]) }
        st.setContiguousPositions()

        model.grads.zero()
        let loss = model.forwardBackward(st, gradScale: 1 / Float(n)) / Double(n)
        XCTAssertEqual(loss, meta.loss, accuracy: 1e-5 * meta.loss, "loss (threads \(threads))")
        var logits = [Float](repeating: 0, count: n * cfg.vocabSize)
        logits.ptr { model.logits(st, into: $0) }
        XCTAssertLessThan(relErr(logits, try expected.floats("logits")), 1e-5, "logits")

        var sq = 0.0, worst = 0.0
        for (i, s) in model.params.specs.enumerated() {
            let g = copyArray(model.grads.pointer(i), s.count)
            let e = relErr(g, try expected.floats("grad." + s.name))
            XCTAssertLessThan(e, 1e-5, "gradient of \(s.name): relative error \(e) (threads \(threads))")
            sq += AdamW.sumOfSquares(model.grads.pointer(i), s.count)
            worst = max(worst, e)
        }
        print("llama oracle, \(threads) thread(s): loss \(loss) vs \(meta.loss), worst gradient relative error \(worst)")
        XCTAssertEqual(sq.squareRoot(), meta.grad_norm, accuracy: 1e-5 * meta.grad_norm, "grad norm")

        // One AdamW step from our gradients (lr 1e-2, betas 0.9/0.95, eps 1e-8, decay 0.1 on 2-D tensors).
        let h = AdamWHyper(lr: 0.01, beta1: 0.9, beta2: 0.95, eps: 1e-8, weightDecay: 0.1)
        for (i, s) in model.params.specs.enumerated() {
            let want = try expected.floats("adamw1." + s.name)
            var p = copyArray(model.params.pointer(i), s.count), m = [Float](repeating: 0, count: s.count), v = m
            var g = copyArray(model.grads.pointer(i), s.count)
            p.ptr { pp in m.ptr { mp in v.ptr { vp in g.ptr { gp in
                AdamW.update(param: pp, grad: gp, m: mp, v: vp, n: s.count, hyper: h, decay: s.decays, step: 1)
            } } } }
            XCTAssertLessThan(relErr(p, want), 1e-6, "\(s.name) after one AdamW step")
        }
    }

    /// The fused products ([Wq; Wk; Wv] and [Wg; Wu] as one matrix each, used when the tensors lie back to back)
    /// compute what one product per tensor computes: loss and every gradient within 1e-6, grouped heads and not.
    func testFusedProductsEqualOneProductPerTensor() {
        Threads.configure(2)
        for kv in [2, 4] {
            let cfg = TransformerConfig.llama(vocabSize: 40, nLayer: 2, nHead: 4, nKVHead: kv, dModel: 32, intermediate: 48, blockSize: 16)
            let fused = Llama(config: cfg, seed: 5), separate = Llama(config: cfg, seed: 5)
            XCTAssertTrue(fused.fusedQKV && fused.fusedGateUp, "32-wide tensors lie back to back")
            separate.fusedQKV = false; separate.fusedGateUp = false
            var results: [(Double, [Float])] = []
            for m in [fused, separate] {
                let a = m.activations(batch: 2, tokens: 16)
                for i in 0..<a.n { a.tokenIds[i] = Int32((i * 7 + 1) % 40); a.targets[i] = Int32((i * 3 + 2) % 40) }
                a.setContiguousPositions()
                m.grads.zero()
                results.append((m.forwardBackward(a, gradScale: 1 / Float(a.n)), copyArray(m.grads.storage.ptr, m.grads.count)))
            }
            XCTAssertEqual(results[0].0, results[1].0, accuracy: 1e-6 * results[1].0, "kv \(kv): loss")
            XCTAssertLessThan(relErr(results[0].1, results[1].1), 1e-6, "kv \(kv): gradients")
        }
        // A 12-wide model's key/value tensors (6·12 floats) are padded apart: one product per tensor.
        let odd = Llama(config: .llama(vocabSize: 40, nLayer: 1, nHead: 2, nKVHead: 1, dModel: 12, intermediate: 18, blockSize: 8), seed: 1)
        XCTAssertFalse(odd.fusedQKV || odd.fusedGateUp)
    }

    /// Initialisation from (seed, name, index) alone: two models of one seed are equal, another seed differs,
    /// norms start at one; a tied model has no lm_head.
    func testInitialisation() {
        let cfg = TransformerConfig.llama(vocabSize: 50, nLayer: 2, nHead: 4, nKVHead: 2, dModel: 16, intermediate: 24, blockSize: 8)
        let a = Llama(config: cfg, seed: 3), b = Llama(config: cfg, seed: 3), c = Llama(config: cfg, seed: 4)
        XCTAssertEqual(copyArray(a.params.storage.ptr, a.params.count), copyArray(b.params.storage.ptr, b.params.count))
        XCTAssertNotEqual(copyArray(a.params.storage.ptr, a.params.count), copyArray(c.params.storage.ptr, c.params.count))
        XCTAssertEqual(copyArray(a.params["model.norm.weight"], 16), [Float](repeating: 1, count: 16))
        var tied = cfg
        tied.tied = true
        XCTAssertFalse(Llama(config: tied, seed: 3).params.specs.contains { $0.name == "lm_head.weight" })
    }
}
