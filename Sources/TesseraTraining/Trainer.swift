import Foundation
import TesseraComm
import TesseraKernels
import TesseraModel

/// The training loop of one rank: data → micro-batches → forward/backward (gradients accumulated) →
/// clip → AdamW → metrics, with evaluation on the held-out split and a sample at the end.
///
/// Loss normalisation happens in exactly one place: every token's loss is weighted by
/// 1 / (global batch × seq_len) in the fused cross-entropy, so accumulation over micro-batches (and,
/// later, over ranks) sums to the mean over the global batch.
public final class Trainer {
    public let config: TesseraConfig
    public let model: GPT
    public let optimizer: AdamWOptimizer
    public let schedule: LRSchedule
    let runtime: MPIRuntime?
    let trainLoader: DataLoader
    let valLoader: DataLoader?
    let acts: Activations
    public let microBatch: Int
    public let sgemmPeak: Double  // FLOP/s of this rank's threads, measured at start
    public var log: (String) -> Void = { print($0); fflush(nil) }
    public private(set) var history: [StepRecord] = []
    public var isRank0: Bool { (runtime?.rank ?? 0) == 0 }

    public init(config: TesseraConfig, runtime: MPIRuntime?, measurePeak: Bool = true) throws {
        try config.validateForThisBuild()
        let p = config.parallelism, meshSize = p.pp * p.dp * p.ring * p.ulysses
        if let runtime, runtime.size != meshSize {
            throw TrainingError("the config describes a mesh of \(meshSize) rank(s) (pp \(p.pp) × dp \(p.dp) × ring \(p.ring) × "
                + "ulysses \(p.ulysses)), but this job has \(runtime.size): run it with mpirun -np \(meshSize) "
                + "(or Launch/tessera-run, which computes it)")
        }
        self.config = config
        self.runtime = runtime
        let threads = config.training.threads > 0 ? config.training.threads : Threads.availableCores()
        Threads.configure(threads)
        let t = config.training, m = config.model
        let data = try openDataset(format: config.data.format, train: config.data.train, val: config.data.val,
                                   valFraction: config.data.valFraction)
        try data.train.checkTokens(vocabSize: m.vocabSize)
        if config.sample.tokens > 0, let b = config.sample.prompt.utf8.first(where: { Int($0) >= m.vocabSize }) {
            throw TrainingError("sample.prompt contains byte \(b), outside model.vocab_size = \(m.vocabSize) (the prompt is fed as bytes)")
        }
        let seed = UInt64(bitPattern: Int64(t.seed))
        trainLoader = try DataLoader(source: data.train, seqLen: t.seqLen, seed: seed)
        if t.evalEvery > 0 {
            try data.val.checkTokens(vocabSize: m.vocabSize)
            valLoader = try DataLoader(source: data.val, seqLen: t.seqLen, seed: seed)
        } else { valLoader = nil }
        let gpt = GPTConfig(vocabSize: m.vocabSize, nLayer: m.nLayer, nHead: m.nHead, dModel: m.dModel,
                            blockSize: m.blockSize)
        model = GPT(config: gpt, seed: seed)
        microBatch = t.batchSize / t.microbatches
        acts = Activations(config: gpt, batch: microBatch, tokens: t.seqLen)
        let o = config.optimizer
        optimizer = AdamWOptimizer(params: model.params, grads: model.grads, beta1: o.beta1, beta2: o.beta2,
                                   eps: o.eps, weightDecay: o.weightDecay, clip: o.gradClip)
        schedule = LRSchedule(peak: o.lr, minRatio: o.minLrRatio, warmup: o.warmupSteps, total: t.steps, decay: o.decay)
        sgemmPeak = measurePeak ? SgemmProbe.measure(threads: threads).flops : 0
    }

    public var tokensPerStep: Int { config.training.batchSize * config.training.seqLen }

    /// One optimizer step over the global batch. Returns (mean loss, gradient norm).
    public func trainStep(_ step: Int) -> (loss: Double, gradNorm: Double) {
        let t = config.training
        model.grads.zero()
        let gradScale = 1 / Float(tokensPerStep)
        var lossSum = 0.0
        for mb in 0..<t.microbatches {
            let first = mb * microBatch
            trainLoader.fill(step: step, globalBatch: t.batchSize, sequences: first..<(first + microBatch),
                             inputs: acts.tokenIds, targets: acts.targets)
            acts.setContiguousPositions()
            lossSum += model.forwardBackward(acts, gradScale: gradScale)
        }
        let norm = optimizer.step(lr: schedule.lr(step))
        return (lossSum / Double(tokensPerStep), norm)
    }

    /// Mean loss over the evaluation windows of the held-out split.
    public func evaluate() -> Double? {
        guard let valLoader else { return nil }
        let t = config.training
        let batches = t.evalBatches
        var sum = 0.0
        for b in 0..<batches {
            for first in stride(from: 0, to: t.batchSize, by: microBatch) {
                valLoader.fillEval(batch: b, batches: batches, batchSize: t.batchSize,
                                   sequences: first..<(first + microBatch), inputs: acts.tokenIds, targets: acts.targets)
                acts.setContiguousPositions()
                sum += model.lossSum(acts)
            }
        }
        return sum / Double(batches * tokensPerStep)
    }

    /// Runs all steps; rank 0 prints progress and writes metrics. Returns the step records.
    @discardableResult
    public func run(metrics: MetricsSink?) -> [StepRecord] {
        let t = config.training
        let flopsPerStep = model.config.flopsPerToken(seqLen: t.seqLen) * Double(tokensPerStep)
        if isRank0 { log(banner()) }
        var stepTimes: [Double] = []
        for step in 0..<t.steps {
            let t0 = DispatchTime.now().uptimeNanoseconds
            let (loss, norm) = trainStep(step)
            let dt = Double(DispatchTime.now().uptimeNanoseconds - t0) / 1e9
            stepTimes.append(dt)
            let last = step == t.steps - 1
            let doEval = t.evalEvery > 0 && ((step + 1) % t.evalEvery == 0 || last)
            let val = doEval ? evaluate() : nil
            let recent = stepTimes.suffix(10)
            let meanStep = recent.reduce(0, +) / Double(recent.count)
            let r = StepRecord(step: step + 1, steps: t.steps, loss: loss, lr: schedule.lr(step), gradNorm: norm,
                               tokensPerSecond: Double(tokensPerStep) / dt,
                               mfu: sgemmPeak > 0 ? flopsPerStep / dt / sgemmPeak : 0, stepSeconds: dt,
                               peakRSSBytes: peakRSSBytes(), etaSeconds: meanStep * Double(t.steps - step - 1),
                               valLoss: val)
            history.append(r)
            if isRank0 && ((step + 1) % t.logEvery == 0 || step == 0 || last || val != nil) {
                log(MetricsSink.line(r))
                metrics?.record(r)
            }
        }
        return history
    }

    func banner() -> String {
        let m = model.config, t = config.training
        var s = "tessera: \(config.job.name): GPT-2 \(m.nLayer) layers, d \(m.dModel), \(m.nHead) heads, vocab \(m.vocabSize), "
        s += "\(fmt(Double(m.parameterCount) / 1e6, 2))M parameters\n"
        s += "  batch \(t.batchSize) × seq \(t.seqLen) = \(tokensPerStep) tokens/step in \(t.microbatches) micro-batch(es) of \(microBatch); "
        s += "\(t.steps) steps; \(Threads.count) thread(s); "
        s += "sgemm peak \(fmt(sgemmPeak / 1e9, 0)) GFLOP/s (OpenBLAS \(BLAS.coreName))\n"
        s += "  data: \(trainLoader.source.count) training tokens from \(trainLoader.source.description)"
        if let v = valLoader { s += "; \(v.source.count) validation tokens" }
        if let r = runtime {
            s += "\n  MPI: \(r.size) rank(s), thread level \(r.threadLevelName) granted (MPI_THREAD_MULTIPLE asked)"
            s += "; shared-memory single copy: \(MPIRuntime.singleCopyMechanism)"
        }
        if let w = MachineCheck.coreTypeWarning { s += "\n  warning: \(w)" }
        return s
    }

    /// Text sampled from the trained model (`[sample]` section).
    public func sample() -> String {
        let s = config.sample
        let prompt = Array(s.prompt.utf8).map { Int32($0) }
        let out = Sampler(model: model).generate(prompt: prompt, count: s.tokens, temperature: s.temperature,
                                                 topK: s.topK, seed: UInt64(bitPattern: Int64(config.training.seed)))
        // Byte-level models print text; other vocabularies (a user's tokenizer) print token ids.
        return model.config.vocabSize == 256 ? s.prompt + Sampler.text(out) : out.map(String.init).joined(separator: " ")
    }
}

/// The machine's sgemm rate with OpenBLAS's own threads (the MFU ceiling).
public enum SgemmProbe {
    public struct Result: Sendable { public let flops: Double; public let n: Int; public let threads: Int }

    /// Best of several n×n×n products (n = 2048) on `threads` OpenBLAS threads.
    public static func measure(threads: Int, n: Int = 2048, seconds: Double = 0.6) -> Result {
        let a = FloatBuffer(n * n, value: 0.5), b = FloatBuffer(n * n, value: 0.25), c = FloatBuffer(n * n)
        BLAS.setThreads(threads)
        defer { BLAS.setThreads(1) }
        var best = Double.infinity, spent = 0.0, reps = 0
        while reps < 2 || (spent < seconds && reps < 20) {
            let t0 = DispatchTime.now().uptimeNanoseconds
            BLAS.sgemm(transA: false, transB: false, m: n, n: n, k: n, alpha: 1, a: a.ptr, lda: n, b: b.ptr, ldb: n,
                       beta: 0, c: c.ptr, ldc: n)
            let dt = Double(DispatchTime.now().uptimeNanoseconds - t0) / 1e9
            best = min(best, dt); spent += dt; reps += 1
        }
        return Result(flops: 2 * Double(n * n * n) / best, n: n, threads: threads)
    }
}
