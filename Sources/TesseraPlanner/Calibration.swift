// Per-op costs of the config's model on this machine, measured by a short run on one process: for each
// per-rank shape a layout needs (sequences per micro-batch × tokens per rank), a few forward + backward passes of
// the whole model with the op profile on, split into the blocks' linear work (products, norms, activations,
// residuals: proportional to tokens), attention (quadratic in the sequence), the LM head with the loss, and the
// embeddings; and AdamW steps (the median of 3), per parameter. The step-time model (StepTimeModel.swift) scales these to each
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

    /// Measures every shape (a warm-up pass each, then `rounds` rounds over all shapes; the median pass) with
    /// `threads` threads.
    public static func measure(config: TesseraConfig, shapes: Set<Shape>, threads: Int, rounds: Int = 4) -> Calibration {
        let t0 = DispatchTime.now().uptimeNanoseconds
        Threads.configure(threads)
        let m = config.transformer
        let model = Transformer.make(config: m, seed: 1)
        model.precision = config.precision
        let wasEnabled = OpProfile.enabled
        OpProfile.enabled = true
        defer { OpProfile.enabled = wasEnabled }
        var costs: [Shape: Costs] = [:]
        let ordered = shapes.sorted(by: { ($0.batch, $0.tokens) < ($1.batch, $1.tokens) })
        var sets: [Shape: Activations] = [:]
        for s in ordered {
            let acts = model.activations(batch: s.batch, tokens: s.tokens)
            var rng = SplitMix64(seed: 3)
            for i in 0..<acts.n {
                acts.tokenIds[i] = Int32(rng.next() % UInt64(m.vocabSize)); acts.targets[i] = Int32(rng.next() % UInt64(m.vocabSize))
            }
            acts.setContiguousPositions()
            sets[s] = acts
        }
        // Warm-up: one pass at every shape first (page faults, thread start, caches), so no shape pays for it.
        for s in ordered { model.grads.zero(); _ = model.forwardBackward(sets[s]!, gradScale: 1) }
        // Rounds over all shapes (so that a slower minute of the machine touches every shape alike, not one): in each,
        // passes of a shape until 0.07 s have run (at least one); `rounds` rounds, or fewer when a round takes over
        // 3 s. The pass of median time over all rounds, split by the op profile.
        var samples: [Shape: [(total: Double, ops: [OpProfile.Op: Double])]] = [:]
        for round in 0..<rounds {
            let roundStart = DispatchTime.now().uptimeNanoseconds
            for s in ordered {
                let acts = sets[s]!
                var spent = 0.0
                while spent == 0 || (spent < 0.07 && samples[s, default: []].count < 100) {
                    OpProfile.reset()
                    let a = DispatchTime.now().uptimeNanoseconds
                    model.grads.zero()
                    _ = model.forwardBackward(acts, gradScale: 1 / Float(acts.n))
                    let dt = Double(DispatchTime.now().uptimeNanoseconds - a) / 1e9
                    spent += dt
                    samples[s, default: []].append((dt, Dictionary(uniqueKeysWithValues: OpProfile.totals.map { ($0.0, $0.1) })))
                }
            }
            if round >= 1 && Double(DispatchTime.now().uptimeNanoseconds - roundStart) / 1e9 > 3 { break }
        }
        for s in ordered {
            let all = samples[s]!
            let median = all.sorted { $0.total < $1.total }[all.count / 2]
            let attention = median.ops[.attention] ?? 0, head = median.ops[.lmHeadLoss] ?? 0, embedding = median.ops[.embedding] ?? 0
            let layers = Double(max(m.nLayer, 1))
            costs[s] = Costs(layer: max(median.total - attention - head - embedding, 0) / layers, attention: attention / layers,
                             head: head, embedding: embedding)
        }
        // The optimizer: AdamW steps over the whole model after one warm-up step; the median of 3.
        let opt = AdamWOptimizer(params: model.params, grads: model.grads, beta1: 0.9, beta2: 0.95, eps: 1e-8, weightDecay: 0.1, clip: 1)
        _ = opt.step(lr: 1e-4)
        var steps: [Double] = []
        for _ in 0..<3 {
            let a = DispatchTime.now().uptimeNanoseconds
            _ = opt.step(lr: 1e-4)
            steps.append(Double(DispatchTime.now().uptimeNanoseconds - a) / 1e9)
        }
        let optimizer = steps.sorted()[1] / Double(max(m.parameterCount, 1))
        return Calibration(costs: costs, optimizerPerParameter: optimizer, threads: threads,
                           seconds: Double(DispatchTime.now().uptimeNanoseconds - t0) / 1e9)
    }
}
