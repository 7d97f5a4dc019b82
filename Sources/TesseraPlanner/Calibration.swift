// Per-op costs of the config's model on this machine, measured by a short run on one process: for each
// per-rank shape a layout needs (sequences per micro-batch × tokens per rank), a few forward + backward passes of
// the whole model with the op profile on, split into the blocks' linear work (products, norms, activations,
// residuals: proportional to tokens), attention (quadratic in the sequence), the LM head with the loss, and the
// embeddings; and one AdamW step, per parameter. The step-time model (StepTimeModel.swift) scales these to each
// layout's stages, sequence split and schedule.

import Dispatch
import TesseraKernels
import TesseraModel
import TesseraTraining

public struct Calibration: Sendable {
    public struct Shape: Hashable, Sendable { public var batch: Int, tokens: Int }
    /// Seconds of one forward + backward pass at a shape, by part (whole model: `layer` and `attention` are per layer).
    public struct Costs: Sendable {
        public var layer: Double, attention: Double, head: Double, embedding: Double
    }
    public var costs: [Shape: Costs]
    public var optimizerPerParameter: Double
    public var threads: Int
    /// Seconds the calibration took.
    public var seconds: Double

    /// Measures every shape (1 warm-up pass and `passes` timed ones each) with `threads` threads.
    public static func measure(config: TesseraConfig, shapes: Set<Shape>, threads: Int, passes: Int = 2) -> Calibration {
        let t0 = DispatchTime.now().uptimeNanoseconds
        Threads.configure(threads)
        let m = config.transformer
        let model = Transformer.make(config: m, seed: 1)
        model.precision = config.precision
        let wasEnabled = OpProfile.enabled
        OpProfile.enabled = true
        defer { OpProfile.enabled = wasEnabled }
        var costs: [Shape: Costs] = [:]
        for s in shapes.sorted(by: { ($0.batch, $0.tokens) < ($1.batch, $1.tokens) }) {
            let acts = model.activations(batch: s.batch, tokens: s.tokens)
            var rng = SplitMix64(seed: 3)
            for i in 0..<acts.n {
                acts.tokenIds[i] = Int32(rng.next() % UInt64(m.vocabSize)); acts.targets[i] = Int32(rng.next() % UInt64(m.vocabSize))
            }
            acts.setContiguousPositions()
            var total = 0.0
            for pass in 0...passes {
                if pass == 1 { OpProfile.reset() }
                let a = DispatchTime.now().uptimeNanoseconds
                model.grads.zero()
                _ = model.forwardBackward(acts, gradScale: 1 / Float(acts.n))
                if pass >= 1 { total += Double(DispatchTime.now().uptimeNanoseconds - a) / 1e9 }
            }
            let per = Dictionary(uniqueKeysWithValues: OpProfile.totals.map { ($0.0, $0.1 / Double(passes)) })
            total /= Double(passes)
            let attention = per[.attention] ?? 0, head = per[.lmHeadLoss] ?? 0, embedding = per[.embedding] ?? 0
            let layers = Double(max(m.nLayer, 1))
            costs[s] = Costs(layer: max(total - attention - head - embedding, 0) / layers, attention: attention / layers,
                             head: head, embedding: embedding)
        }
        // The optimizer: one AdamW step over the whole model.
        let opt = AdamWOptimizer(params: model.params, grads: model.grads, beta1: 0.9, beta2: 0.95, eps: 1e-8, weightDecay: 0.1, clip: 1)
        _ = opt.step(lr: 1e-4)
        let a = DispatchTime.now().uptimeNanoseconds
        _ = opt.step(lr: 1e-4)
        let optimizer = Double(DispatchTime.now().uptimeNanoseconds - a) / 1e9 / Double(max(m.parameterCount, 1))
        return Calibration(costs: costs, optimizerPerParameter: optimizer, threads: threads,
                           seconds: Double(DispatchTime.now().uptimeNanoseconds - t0) / 1e9)
    }
}
