// One rank's training: the parts TrainerBuilder made, and the step that runs them. A step runs this
// replica's micro-batches forward and backward (gradients accumulate), reduces the gradients across the
// replicas, checks that the loss and the gradient norm are finite on every rank, and applies AdamW. The loop
// around it (TrainingLoop.swift) adds evaluation, metrics, checkpoints and stop signals.
//
// Loss normalisation happens in exactly one place: every token's loss is weighted by
// 1 / (global batch × seq_len) in the fused cross-entropy, so accumulation over micro-batches, the sum over
// replicas, sequence shards and pipeline micro-batches give the mean over the global batch.

import Foundation
import TesseraCheckpoint
import TesseraComm
import TesseraDataParallel
import TesseraKernels
import TesseraMemory
import TesseraModel
import TesseraPipeline
import TesseraSequenceParallel
import TesseraTimeline

public final class Trainer {
    public let config: TesseraConfig
    public let options: TrainerOptions
    let runtime: MPIRuntime?
    public let mesh: ProcessMesh?
    let timeline: Timeline
    public let data: TrainingData
    public let model: Transformer
    public let tokens: SequenceTokens
    public let pipelineLayout: PipelineLayout?
    public let pipeline: PipelineEngine?
    public let acts: Activations?
    /// Each layer's activation policy, the offload tier and the predicted peak.
    public let memory: MemorySetup
    public let dataParallel: DataParallel?
    public let optimizer: AdamWOptimizer
    public let schedule: LRSchedule
    /// Saving (sync or lazy) and restoring checkpoints.
    public let checkpointer: Checkpointer
    public let sgemmPeak: Double
    /// Variable-length documents: planned steps over whole documents (nil: fixed rows).
    let documentSteps: DocumentSteps?

    /// World rank 0 under pipeline parallelism: the whole trained model, gathered for sampling.
    var wholeModel: Transformer?
    /// Activation measurements of the last step (this rank).
    public internal(set) var lastActivation = ActivationStep()
    /// The first step this run trains (the checkpoint's step after `resume`).
    public internal(set) var startStep = 0
    /// The step of the checkpoint `resume` loaded (nil: none).
    public internal(set) var resumedStep: Int?
    /// The stop signal that ended the run early (after a save), nil if it ran to the end.
    public internal(set) var stoppedBy: Int32?
    /// Why the run stopped with an error (a non-finite step under `training.on_nonfinite = "stop"`, or too many
    /// skipped in a row); nil if it did not. The same on every rank.
    public internal(set) var failure: String?
    /// Steps whose update was dropped as non-finite, in all, and in a row up to the last step.
    public internal(set) var skippedSteps = 0, consecutiveSkips = 0
    public var log: (String) -> Void = { print($0); fflush(nil) }
    public internal(set) var history: [StepRecord] = []

    public convenience init(config: TesseraConfig, runtime: MPIRuntime?, measurePeak: Bool = true) throws {
        try self.init(config: config, runtime: runtime, options: TrainerOptions(measurePeak: measurePeak))
    }

    public convenience init(config: TesseraConfig, runtime: MPIRuntime?, options: TrainerOptions) throws {
        self.init(parts: try TrainerBuilder.build(config: config, runtime: runtime, options: options), options: options)
    }

    public init(parts: TrainingParts, options: TrainerOptions) {
        config = parts.config; runtime = parts.runtime; mesh = parts.mesh; timeline = parts.timeline; data = parts.data
        model = parts.model; tokens = parts.tokens; pipelineLayout = parts.pipelineLayout; pipeline = parts.pipeline
        acts = parts.acts; memory = parts.memory; dataParallel = parts.dataParallel; optimizer = parts.optimizer
        schedule = parts.schedule; checkpointer = parts.checkpointer; sgemmPeak = parts.sgemmPeak
        documentSteps = parts.documentSteps
        self.options = options
        // A lazy checkpoint in flight must have copied each piece before the optimizer changes it.
        optimizer.beforeSegment = { [unowned self] k in
            do { try checkpointer.waitCopied(segment: k) } catch { MPIRuntime.abort("\(error); aborting the job") }
        }
    }

    public var isRank0: Bool { (runtime?.rank ?? 0) == 0 }
    public var microBatch: Int { data.microBatch }
    /// Sequence parallelism: which tokens of each sequence this rank holds (nil: all of them).
    public var sequenceLayout: SequenceLayout? { tokens.layout }
    /// Ranks in the job; MFU is measured against all of their sgemm ceilings.
    var worldSize: Int { mesh?.world.size ?? 1 }
    public var tokensPerStep: Int { config.training.batchSize * config.training.seqLen }
    /// Tokens trained by steps 0 ..< step (variable-length documents: each step's plan; else the fixed budget).
    func tokensSeen(before step: Int) -> Int {
        guard let documentSteps else { return step * tokensPerStep }
        // Plans are a function of the step: sum on from the last answer (so each step is planned here once more).
        if step < seen.step { seen = (0, 0) }
        for s in seen.step..<step { seen.tokens += documentSteps.step(s).plan.tokens }
        seen.step = step
        return seen.tokens
    }
    /// The last answer of tokensSeen: tokens of steps 0 ..< step.
    private var seen = (step: 0, tokens: 0)
    /// Full (unsharded) optimizer state bytes, for the ZeRO report.
    public var unshardedOptimizerBytes: Int { 2 * model.params.count * 4 }
    /// Every checkpoint this run saved.
    public var checkpointEvents: [CheckpointEvent] { checkpointer.events }

    /// One step over the global batch: (mean loss, gradient norm), both global. When either is not finite on
    /// some rank, no rank updates (`runStep` tells why; the loop applies `training.on_nonfinite`).
    public func trainStep(_ step: Int) -> (loss: Double, gradNorm: Double) {
        let r = runStep(step)
        return (r.loss, r.gradNorm)
    }

    /// The step as `trainStep`, with the non-finite verdict.
    func runStep(_ step: Int) -> StepOutcome {
        let t = config.training
        let seqBytes0 = sequenceBytesSent
        ActivationMeter.shared.resetPeak()
        model.recomputeNs = 0
        defer { lastActivation = measuredActivation(sequenceBytesSince: seqBytes0) }
        model.grads.zero()
        options.fault?.poison(step: step, rank: runtime?.rank ?? 0, grads: model.grads, stage: model.stage, family: model.config.family)
        // The loss is a mean over the step's counted targets (all of them with windows; packed documents leave out
        // document ends and padding), normalised once for the global batch whatever the layout.
        if let documentSteps { orAbort(step) { try documentSteps.refit(step: step) } }  // measured cost weights
        let planned = documentSteps?.step(step)
        let counted = planned.map { DocumentBatches.targets($0.plan) } ?? data.train.targetCount(step: step, globalBatch: t.batchSize)
        precondition(counted > 0, "step \(step + 1): the global batch has no target to train on")  // every row has one
        let gradScale = 1 / Float(counted)
        var lossSum = 0.0
        if let documents = documentSteps, let planned {
            if step == startStep { orAbort(step) { try documents.checkAgreement(planned.plan, step: step) } }
            lossSum = documents.run(step: step, plan: planned.plan, sequences: planned.sequences, gradScale: gradScale,
                                    timeline: timeline) { [unowned self] in dataParallel?.beginReduction(step: step) }
        } else if let pipeline, let layout = pipelineLayout, let mesh {
            // The plan runs every micro-batch; this replica's sequences of micro-batch mb.
            pipeline.load = { [unowned self] mb, a in
                tokens.load(into: a) { r in
                    data.train.fill(step: step, globalBatch: t.batchSize, sequences: data.sequences(microbatch: mb),
                                    inputs: r.ids, targets: r.targets, positions: r.positions, starts: r.starts)
                }
            }
            pipeline.beforeLastBackward = { [unowned self] in dataParallel?.beginReduction(step: step) }
            lossSum = orAbort(step) { try pipeline.run(actions: layout.plan.actions[mesh.coordinate.pp], mode: .train,
                                                        gradScale: gradScale) }
        } else if let acts {
            for mb in 0..<t.microbatches {
                timeline.work("data mb \(mb)") {
                    tokens.load(into: acts) { r in
                        data.train.fill(step: step, globalBatch: t.batchSize, sequences: data.sequences(microbatch: mb),
                                        inputs: r.ids, targets: r.targets, positions: r.positions, starts: r.starts)
                    }
                }
                lossSum += timeline.work("forward mb \(mb)") { model.forwardLoss(acts, gradScale: gradScale) }
                // Gradients become final only in the last micro-batch's backward: reduce during that one.
                if mb == t.microbatches - 1 { dataParallel?.beginReduction(step: step) }
                timeline.work("backward mb \(mb)") { model.backward(acts) }
            }
        }
        options.fault?.apply(step: step, rank: runtime?.rank ?? 0)
        if let dpl = dataParallel {
            dpl.finish()
        } else if let mesh, pipeline != nil, model.config.tied {
            let m = model.config
            orAbort(step) { try mesh.embedding.reduceTiedEmbedding(model.grads, name: m.tokenEmbeddingName, count: m.vocabSize * m.dModel) }
        }
        let loss = globalSum(lossSum, label: "loss", step: step) / Double(counted)
        if step == 0, let path = options.dumpGradientsPath { dumpGradients(path) }
        let norm = timeline.work("gradient norm") { optimizer.globalNorm { reduceSquaredNorm($0, step: step) } }
        if let problem = nonFinite(loss: loss, norm: norm, step: step) {
            return StepOutcome(loss: loss, gradNorm: norm, nonFinite: problem)
        }
        timeline.work("optimizer") { optimizer.update(lr: schedule.lr(step), norm: norm) }
        if let dpl = dataParallel { timeline.work("parameter allgather") { dpl.allgatherParameters(model.params) } }
        model.parametersChanged()
        return StepOutcome(loss: loss, gradNorm: norm, nonFinite: nil)
    }

    /// The global squared gradient norm from this rank's part: ZeRO-1 shards add up over the replicas, and
    /// pipeline stages (holding different tensors) add up over the pipeline.
    func reduceSquaredNorm(_ local: Double, step: Int) -> Double {
        var sq = local
        if let dpl = dataParallel, dpl.zero { sq = dpl.sum(sq, label: "gradient norm") }
        if let mesh, pipeline != nil {
            sq = orAbort(step) { try mesh.pipeline.allreduce(sq, op: .sum, label: "gradient norm over stages") }
        }
        return sq
    }

    func measuredActivation(sequenceBytesSince start: Int) -> ActivationStep {
        var a = ActivationStep()
        a.peakBytes = ActivationMeter.shared.peakBytes
        a.recomputeSeconds = Double(model.recomputeNs) / 1e9
        // The step's I/O is complete only once the tier's queue is: its last releases (and writes skipped because
        // their blocks were used from memory) may still be queued when the backward returns.
        if let tier = memory.tier { tier.drain(); a.offload = tier.takeStats(); a.tierHeldBytes = tier.heldBytes }
        a.sequenceBytes = sequenceBytesSent - start
        a.pipelineBytes = pipeline?.bytesSent ?? 0
        return a
    }

    /// Bytes of this rank's sequence-parallel buffers (besides what its attention saves per layer), as allocated now.
    var sequenceBufferBytes: Int {
        if let documentSteps { return documentSteps.attention.extraBytes }
        return (model.attention as? SequenceParallelAttention)?.extraBytes ?? 0
    }

    /// What the memory preflight predicts for `sequenceBufferBytes` (a function of the config and this rank's place).
    lazy var plannedSequenceBufferBytes = MemoryPreflight.sequenceBufferBytes(
        config: config, coordinate: mesh?.coordinate ?? MeshCoordinate(pp: 0, dp: 0, ring: 0, ulysses: 0))

    /// Bytes this rank sent over its sequence-parallel groups (ring and Ulysses) so far.
    var sequenceBytesSent: Int {
        guard let mesh else { return 0 }
        if let documentSteps { return documentSteps.bytesSent }
        return (mesh.shape.ring > 1 ? mesh.ring.bytesSent : 0) + (mesh.shape.ulysses > 1 ? mesh.ulysses.bytesSent : 0)
    }

    /// A sum over every rank of the job (the loss: ranks without the head contribute zero, and the replicas'
    /// partial sums add up to the global batch's).
    func globalSum(_ x: Double, label: String, step: Int) -> Double {
        guard let world = mesh?.world, world.size > 1 else { return x }
        return orAbort(step) { try world.allreduce(x, op: .sum, label: label) }
    }

    /// Runs communication; an MPI error ends the job with a message naming rank, operation and step.
    func orAbort<T>(_ step: Int, _ body: () throws -> T) -> T {
        do { return try body() } catch { MPIRuntime.abort("\(error) at step \(step + 1); aborting the job") }
    }

    /// Mean loss over the evaluation windows of the held-out split.
    public func evaluate() -> Double? {
        let t = config.training, batches = t.evalBatches
        var sum = 0.0
        if let documents = documentSteps {
            guard documents.val != nil else { return nil }
            var targets = 0
            for b in 0..<batches {
                let r = documents.evaluate(batch: b)
                sum += r.loss; targets += r.targets
            }
            return globalSum(sum, label: "validation loss", step: 0) / Double(max(targets, 1))
        }
        guard let val = data.val else { return nil }
        if let pipeline, let layout = pipelineLayout {
            let actions = PipelineEngine.evaluationActions(microbatches: t.microbatches, chunks: layout.chunks)
            for b in 0..<batches {
                pipeline.load = { [unowned self] mb, a in
                    tokens.load(into: a) { r in
                        val.fillEval(batch: b, batches: batches, batchSize: t.batchSize, sequences: data.sequences(microbatch: mb),
                                     inputs: r.ids, targets: r.targets, positions: r.positions, starts: r.starts)
                    }
                }
                sum += orAbort(0) { try pipeline.run(actions: actions, mode: .evaluate, gradScale: 0) }
            }
            return globalSum(sum, label: "validation loss", step: 0) / Double(evalCount(val, batches: batches))
        }
        guard let acts else { return nil }
        let mine = data.replicaSequences
        for b in 0..<batches {
            for first in stride(from: mine.lowerBound, to: mine.upperBound, by: microBatch) {
                tokens.load(into: acts) { r in
                    val.fillEval(batch: b, batches: batches, batchSize: t.batchSize, sequences: first..<(first + microBatch),
                                 inputs: r.ids, targets: r.targets, positions: r.positions, starts: r.starts)
                }
                sum += model.lossSum(acts)
            }
        }
        if let dpl = dataParallel { sum = dpl.sum(sum, label: "validation loss") }
        return sum / Double(evalCount(val, batches: batches))
    }

    /// Targets that count over the evaluation batches.
    func evalCount(_ val: DataLoader, batches: Int) -> Int {
        (0..<batches).reduce(0) { $0 + val.evalTargetCount(batch: $1, batches: batches, batchSize: config.training.batchSize) }
    }
}

/// What one step did: its global loss and gradient norm, and why its update was dropped (nil: applied).
struct StepOutcome {
    let loss: Double, gradNorm: Double
    let nonFinite: String?
}
