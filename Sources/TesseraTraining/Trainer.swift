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

/// Debugging and observation switches of a run (command-line flags, not config).
public struct TrainerOptions: Sendable {
    /// Write Chrome trace files (trace-rank<R>.json) into this directory.
    public var traceDir: String?
    /// Make one rank fail on purpose (tests of the failure paths).
    public var fault: FaultInjection?
    /// Write the reduced gradients of step 1 (rank 0, full model, safetensors) to this file.
    public var dumpGradientsPath: String?
    public var measurePeak = true
    /// Debugging: a lazy checkpoint's writer thread sleeps this long before copying each piece, so that the
    /// next optimizer step has to wait for pieces not copied yet (`--checkpoint-copy-delay-ms`).
    public var checkpointCopyDelayMs = 0.0
    public init(traceDir: String? = nil, fault: FaultInjection? = nil, dumpGradientsPath: String? = nil,
                measurePeak: Bool = true) {
        self.traceDir = traceDir; self.fault = fault; self.dumpGradientsPath = dumpGradientsPath
        self.measurePeak = measurePeak
    }
}

/// `--fault-inject MODE:RANK:STEP`: at step STEP (1-based), after its backward pass and before the gradient
/// reduction, world rank RANK exits (`exit`, status 3, without MPI_Finalize) or stops responding (`hang`).
public struct FaultInjection: Sendable, Equatable {
    public enum Mode: String, Sendable { case exit, hang }
    public let mode: Mode, rank: Int, step: Int

    public init(parsing spec: String) throws {
        let f = spec.split(separator: ":").map(String.init)
        guard f.count == 3, let mode = Mode(rawValue: f[0]), let rank = Int(f[1]), let step = Int(f[2]), rank >= 0, step >= 1 else {
            throw TrainingError("--fault-inject expects MODE:RANK:STEP with MODE exit or hang, RANK >= 0, STEP >= 1; got '\(spec)'")
        }
        self.mode = mode; self.rank = rank; self.step = step
    }
}

/// The training loop of one rank: data → micro-batches → forward/backward (gradients accumulated) →
/// gradient reduction across data-parallel replicas → clip → AdamW → metrics, with evaluation on the
/// held-out split and a sample at the end.
///
/// Loss normalisation happens in exactly one place: every token's loss is weighted by
/// 1 / (global batch × seq_len) in the fused cross-entropy, so accumulation over micro-batches and the
/// sum over replicas give the mean over the global batch.
public final class Trainer {
    public let config: TesseraConfig
    public let model: GPT
    public let optimizer: AdamWOptimizer
    public let schedule: LRSchedule
    let runtime: MPIRuntime?
    let trainLoader: DataLoader
    let valLoader: DataLoader?
    /// The micro-batch's activations (nil under pipeline parallelism: the engine keeps a pool per chunk).
    package let acts: Activations!
    /// Pipeline parallelism (pp > 1): the layer split, the plan and the engine that runs it.
    public let pipelineLayout: PipelineLayout?
    public let pipeline: PipelineEngine?
    /// World rank 0 under pipeline parallelism: the whole trained model, gathered for sampling.
    var wholeModel: GPT?
    public let microBatch: Int
    public let sgemmPeak: Double  // FLOP/s of this rank's threads, measured at start
    public let mesh: ProcessMesh?
    /// Gradient reduction across data-parallel replicas (nil when dp = 1 and ZeRO is off).
    public let dataParallel: DataParallel?
    public let options: TrainerOptions
    /// Sequence parallelism: which tokens of each sequence this rank holds (nil: all of them).
    public let sequenceLayout: SequenceLayout?
    let localPositions: [Int32]
    var fullIds: [Int32], fullTargets: [Int32]
    let timeline: Timeline
    /// Each layer's activation policy, the offload tier and the predicted peak.
    public let memory: MemorySetup
    /// Activation measurements of the last step (this rank).
    public private(set) var lastActivation = ActivationStep()
    /// Full (unsharded) optimizer state bytes, for the ZeRO report.
    public let unshardedOptimizerBytes: Int
    /// Saving (sync or lazy) and restoring checkpoints.
    package let checkpointer: Checkpointer
    /// The first step this run trains (the checkpoint's step after `resume`).
    public private(set) var startStep = 0
    /// The step of the checkpoint `resume` loaded (nil: none).
    public private(set) var resumedStep: Int?
    /// The stop signal that ended the run early (after a save), nil if it ran to the end.
    public private(set) var stoppedBy: Int32?
    /// Every checkpoint this run saved.
    public var checkpointEvents: [CheckpointEvent] { checkpointer.events }
    public var log: (String) -> Void = { print($0); fflush(nil) }
    public private(set) var history: [StepRecord] = []
    public var isRank0: Bool { (runtime?.rank ?? 0) == 0 }

    public convenience init(config: TesseraConfig, runtime: MPIRuntime?, measurePeak: Bool = true) throws {
        try self.init(config: config, runtime: runtime, options: TrainerOptions(measurePeak: measurePeak))
    }

    public init(config: TesseraConfig, runtime: MPIRuntime?, options: TrainerOptions) throws {
        try config.validateForThisBuild()
        let p = config.parallelism
        let shape = MeshShape(pp: p.pp, dp: p.dp, ring: p.ring, ulysses: p.ulysses)
        if let runtime {
            // Checked before any communication: every rank throws the same error and stops.
            guard runtime.size == shape.size else { throw MeshError.wrongSize(shape: shape, worldSize: runtime.size) }
            let rank = runtime.rank
            Watchdog.shared = Watchdog(rank: rank, timeoutSeconds: p.timeoutS) { MPIRuntime.abort($0) }
            mesh = try ProcessMesh(world: runtime.worldCommunicator, shape: shape)
        } else {
            guard shape.size == 1 else { throw MeshError.wrongSize(shape: shape, worldSize: 1) }
            mesh = nil
        }
        self.options = options
        timeline = Timeline(trace: options.traceDir.map { _ in TraceRecorder(rank: runtime?.rank ?? 0) })
        Timeline.shared = timeline
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
        microBatch = t.batchSize / (p.dp * t.microbatches)
        if let mesh, p.pp > 1 {
            let layout = try PipelineLayout(config: config)
            pipelineLayout = layout
            model = GPT(config: gpt, seed: seed, stage: layout.stage(rank: mesh.coordinate.pp))
        } else {
            pipelineLayout = nil
            model = GPT(config: gpt, seed: seed)
        }
        // Sequence parallelism: this rank holds `positions` of every sequence (zigzag ring chunks, Ulysses slices).
        if let mesh, mesh.sequence.size > 1 {
            let layout = SequenceLayout(seqLen: t.seqLen, ring: p.ring, ulysses: p.ulysses, ringRank: mesh.coordinate.ring,
                                        ulyssesRank: mesh.coordinate.ulysses)
            sequenceLayout = layout
            localPositions = layout.positions.map { Int32($0) }
            let sp = SequenceParallelAttention(heads: gpt.nHead, headDim: gpt.headDim, layout: layout, ring: mesh.ring,
                                               ulysses: mesh.ulysses, maxBatch: microBatch)
            sp.onError = { MPIRuntime.abort("\($0) at step \(Watchdog.shared?.step ?? 0); aborting the job") }
            model.attention = sp
            fullIds = [Int32](repeating: 0, count: microBatch * t.seqLen)
            fullTargets = [Int32](repeating: 0, count: microBatch * t.seqLen)
        } else {
            sequenceLayout = nil
            localPositions = (0..<t.seqLen).map { Int32($0) }
            fullIds = []; fullTargets = []
        }
        // Activation memory: the policies (or the plan for the budget) before any activations exist.
        sgemmPeak = options.measurePeak ? SgemmProbe.measure(threads: threads).flops : 0
        var sets = [1]
        if let mesh, let layout = pipelineLayout {
            let plan = layout.plan, rank = mesh.coordinate.pp
            sets = PipelineEngine.predictedSets(actions: plan.actions[rank], chunks: plan.virtualStages) {
                plan.virtualStage(rank: rank, chunk: $0) > 0
            }
        }
        let peak = sgemmPeak
        let world = mesh?.world
        memory = try MemorySetup(config: config, model: model, rank: runtime?.rank ?? 0, batch: microBatch,
                                 tokens: localPositions.count, setsPerChunk: sets, ownLossGradient: pipelineLayout != nil,
                                 flopRate: peak > 0 ? peak : SgemmProbe.measure(threads: threads).flops,
                                 agree: { x in
                                     guard let world else { return x }
                                     do { return try world.allreduce(x, op: .min, label: "activation planner inputs") } catch {
                                         MPIRuntime.abort("\(error) while agreeing on the activation planner's inputs; aborting the job")
                                     }
                                 })
        if let tier = memory.tier {
            let rank = runtime?.rank ?? 0
            tier.onError = { MPIRuntime.abort("rank \(rank): \($0) at step \(Watchdog.shared?.step ?? 0); aborting the job") }
        }
        model.memory = memory.memoryPlan
        if timeline.trace != nil {
            let tl = timeline
            model.onRecompute = { name, t0, t1 in tl.mark(name, cat: "recompute", beginNs: t0, endNs: t1) }
            memory.tier?.onBlocked = { t0, t1 in tl.mark("offload wait", cat: "wait", beginNs: t0, endNs: t1) }
        }
        if let mesh, let layout = pipelineLayout {
            acts = nil
            pipeline = try PipelineEngine(plan: layout.plan, model: model, comm: mesh.pipeline, batch: microBatch,
                                          tokens: localPositions.count)
        } else {
            acts = model.activations(batch: microBatch, tokens: localPositions.count)
            pipeline = nil
        }
        let o = config.optimizer
        if let mesh, mesh.replicas.size > 1 || p.zero == 1 {
            // Gradients are summed over every rank holding the same parameters: data × sequence replicas.
            let dpl = DataParallel(group: mesh.replicas, params: model.params, grads: model.grads,
                                   bucketBytes: Int(p.bucketMb * 1_048_576), zero: p.zero == 1)
            model.observer = dpl
            dataParallel = dpl
            optimizer = AdamWOptimizer(params: model.params, partition: dpl.ownedRange, grad: dpl.reducedGradients,
                                       beta1: o.beta1, beta2: o.beta2, eps: o.eps, weightDecay: o.weightDecay,
                                       clip: o.gradClip)
        } else {
            dataParallel = nil
            optimizer = AdamWOptimizer(params: model.params, grads: model.grads, beta1: o.beta1, beta2: o.beta2,
                                       eps: o.eps, weightDecay: o.weightDecay, clip: o.gradClip)
        }
        // The tied token embedding: the first and last stage each hold a copy and sum their gradients before
        // the replicas reduce them; the gradient norm counts the first stage's copy only.
        if let mesh, pipelineLayout != nil, model.stage.holdsTokenEmbedding {
            let wteCount = gpt.vocabSize * gpt.dModel, grads = model.grads, embedding = mesh.embedding
            precondition(model.params.offset(of: "transformer.wte.weight") == 0, "wte must lead the parameter storage")
            if let dpl = dataParallel {
                dpl.holdBelow = wteCount
                dpl.beforeHeld = { try embedding.reduceTiedEmbedding(grads, count: wteCount) }
            }
            if !model.stage.hasEmbedding { optimizer.normExcluded = 0..<wteCount }
        }
        unshardedOptimizerBytes = 2 * model.params.count * 4
        // Checkpoints: one writer per group of replicas, or every replica its ZeRO-1 piece; the tied
        // embedding's second copy (last stage) is not written.
        let zero = dataParallel?.zero ?? false
        let skip: Set<String> = model.stage.hasEmbedding ? [] : ["transformer.wte.weight"]
        let sources = Checkpointer.sources(params: model.params, optimizer: optimizer,
                                           writes: zero || (mesh?.replicas.rank ?? 0) == 0, skip: skip)
        let c = config.checkpoint, rank = runtime?.rank ?? 0
        checkpointer = Checkpointer(root: config.checkpointDir, persistRoot: c.persistDir.isEmpty ? nil : c.persistDir,
                                    keep: c.keep, lazy: c.mode == "lazy", rank: rank, world: mesh?.world,
                                    background: mesh?.checkpoint, sources: sources,
                                    tensors: GPTParameters.specs(gpt).map { .init(name: $0.name, shape: $0.shape) },
                                    mesh: ["pp": p.pp, "dp": p.dp, "ring": p.ring, "ulysses": p.ulysses, "zero": p.zero],
                                    configText: ConfigLoader.render(config))
        if let runtime, c.mode == "lazy", runtime.size > 1, runtime.threadLevel < 3 {
            throw TrainingError("checkpoint.mode = \"lazy\" needs MPI_THREAD_MULTIPLE (the writer threads exchange records in "
                                + "the background), but this MPI granted \(runtime.threadLevelName); use checkpoint.mode = \"sync\"")
        }
        if c.every > 0 {
            // Rank 0 makes the directory; every rank learns whether it could (no rank may stop alone).
            var problem: String?
            if rank == 0 {
                do { try CheckpointStore.prepare(root: config.checkpointDir, setting: "checkpoint.dir") } catch { problem = "\(error)" }
            }
            if let world = mesh?.world, world.size > 1,
               try world.allreduce(Int32(problem == nil ? 0 : 1), op: .max, label: "checkpoint directory") == 1, problem == nil {
                problem = "checkpoint.dir = '\(config.checkpointDir)': rank 0 could not prepare it (see its message)"
            }
            if let problem { throw TrainingError(problem) }
        }
        schedule = LRSchedule(peak: o.lr, minRatio: o.minLrRatio, warmup: o.warmupSteps, total: t.steps, decay: o.decay)
        checkpointer.writer.copyDelayMicroseconds = UInt32(options.checkpointCopyDelayMs * 1000)
        // A lazy checkpoint in flight must have copied each piece before the optimizer changes it.
        optimizer.beforeSegment = { [unowned self] k in
            do { try checkpointer.waitCopied(segment: k) } catch { MPIRuntime.abort("\(error); aborting the job") }
        }
    }

    /// This rank's data-parallel index and the number of replicas.
    var dpRank: Int { mesh?.coordinate.dp ?? 0 }
    var dpSize: Int { config.parallelism.dp }
    /// Ranks in the job; MFU is measured against all of their sgemm ceilings.
    var worldSize: Int { mesh?.world.size ?? 1 }
    /// Sequences of the global batch this replica processes.
    var localBatch: Int { config.training.batchSize / dpSize }

    public var tokensPerStep: Int { config.training.batchSize * config.training.seqLen }

    /// One optimizer step over the global batch. Returns (mean loss, gradient norm), both global.
    public func trainStep(_ step: Int) -> (loss: Double, gradNorm: Double) {
        let t = config.training
        let seqBytes0 = sequenceBytesSent
        ActivationMeter.shared.resetPeak()
        model.recomputeNs = 0
        defer {
            var a = ActivationStep()
            a.peakBytes = ActivationMeter.shared.peakBytes
            a.recomputeSeconds = Double(model.recomputeNs) / 1e9
            if let tier = memory.tier { a.offload = tier.takeStats(); a.tierHeldBytes = tier.heldBytes }
            a.sequenceBytes = sequenceBytesSent - seqBytes0
            lastActivation = a
        }
        model.grads.zero()
        let gradScale = 1 / Float(tokensPerStep)
        var lossSum = 0.0
        if let pipeline {
            // The plan runs every micro-batch; this replica's sequences of micro-batch mb start at `first`.
            pipeline.load = { [unowned self] mb, a in
                let first = dpRank * localBatch + mb * microBatch
                loadLocal(into: a) { ids, targets in
                    trainLoader.fill(step: step, globalBatch: t.batchSize, sequences: first..<(first + microBatch),
                                     inputs: ids, targets: targets)
                }
            }
            pipeline.beforeLastBackward = { [unowned self] in dataParallel?.beginReduction(step: step) }
            lossSum = orAbort(step) { try pipeline.run(actions: pipelineLayout!.plan.actions[mesh!.coordinate.pp], mode: .train,
                                                        gradScale: gradScale) }
        }
        for mb in 0..<(pipeline == nil ? t.microbatches : 0) {
            let first = dpRank * localBatch + mb * microBatch
            timeline.work("data mb \(mb)") {
                loadLocal(into: acts) { ids, targets in
                    trainLoader.fill(step: step, globalBatch: t.batchSize, sequences: first..<(first + microBatch),
                                     inputs: ids, targets: targets)
                }
            }
            lossSum += timeline.work("forward mb \(mb)") { model.forwardLoss(acts, gradScale: gradScale) }
            // Gradients become final only in the last micro-batch's backward: reduce during that one.
            if mb == t.microbatches - 1 { dataParallel?.beginReduction(step: step) }
            timeline.work("backward mb \(mb)") { model.backward(acts) }
        }
        injectFault(step: step)
        if let dpl = dataParallel {
            dpl.finish()
        } else if let mesh, pipeline != nil {
            orAbort(step) { try mesh.embedding.reduceTiedEmbedding(model.grads, count: model.config.vocabSize * model.config.dModel) }
        }
        lossSum = globalSum(lossSum, label: "loss", step: step)
        if step == 0, let path = options.dumpGradientsPath { dumpGradients(path) }
        let norm = timeline.work("optimizer") {
            optimizer.step(lr: schedule.lr(step)) { local in
                var sq = local
                // Sharded gradients (ZeRO-1): the squared norm is a sum over replicas.
                if let dpl = dataParallel, dpl.zero { sq = dpl.sum(sq, label: "gradient norm") }
                // Pipeline stages hold different tensors: their squared norms add up.
                if let mesh, pipeline != nil {
                    sq = orAbort(step) { try mesh.pipeline.allreduce(sq, op: .sum, label: "gradient norm over stages") }
                }
                return sq
            }
        }
        if let dpl = dataParallel { timeline.work("parameter allgather") { dpl.allgatherParameters(model.params) } }
        return (lossSum / Double(tokensPerStep), norm)
    }

    /// Bytes this rank sent over its sequence-parallel groups (ring and Ulysses) so far.
    var sequenceBytesSent: Int {
        guard let mesh else { return 0 }
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

    /// Fills the activations' token ids, targets and positions with this rank's tokens of a micro-batch:
    /// `fill` writes whole sequences; under sequence parallelism they are gathered to the local positions.
    func loadLocal(into acts: Activations, _ fill: (UnsafeMutablePointer<Int32>, UnsafeMutablePointer<Int32>) -> Void) {
        guard sequenceLayout != nil else {
            fill(acts.tokenIds, acts.targets)
            acts.setContiguousPositions()
            return
        }
        let seq = config.training.seqLen, tl = localPositions.count
        fullIds.withUnsafeMutableBufferPointer { ids in
            fullTargets.withUnsafeMutableBufferPointer { tg in
                fill(ids.baseAddress!, tg.baseAddress!)
                for b in 0..<microBatch {
                    for (j, pos) in localPositions.enumerated() {
                        acts.tokenIds[b * tl + j] = ids[b * seq + Int(pos)]
                        acts.targets[b * tl + j] = tg[b * seq + Int(pos)]
                        acts.positions[b * tl + j] = pos
                    }
                }
            }
        }
    }

    func injectFault(step: Int) {
        guard let f = options.fault, f.step == step + 1, f.rank == (runtime?.rank ?? 0) else { return }
        print("tessera: rank \(f.rank): fault injection: \(f.mode == .exit ? "exiting" : "hanging") at step \(f.step)")
        fflush(nil)
        switch f.mode {
        case .exit: exit(3)
        case .hang: while true { sleep(60) }
        }
    }

    /// Rank 0 writes the full reduced gradient (ZeRO: gathered from the shards; pipeline: from every stage)
    /// as safetensors.
    func dumpGradients(_ path: String) {
        let stage = model.grads.sameLayout(), full = stage.storage
        if let dpl = dataParallel, dpl.zero {
            let own = dpl.ownedRange
            (full.ptr + own.lowerBound).update(from: dpl.reducedGradients, count: own.count)
            dpl.orAbort { try dpl.group.allgather(inPlace: full.ptr, counts: dpl.partitions.map(\.count),
                                                         displacements: dpl.partitions.map(\.lowerBound), label: "gradient dump") }
        } else {
            full.ptr.update(from: model.grads.storage.ptr, count: model.grads.count)
        }
        guard let whole = gatherWholeModel(stage), isRank0 else { return }
        var tensors: [(name: String, shape: [Int], values: UnsafeBufferPointer<Float>)] = []
        for (i, spec) in whole.specs.enumerated() {
            tensors.append((spec.name, spec.shape, UnsafeBufferPointer(start: whole.pointer(i), count: spec.count)))
        }
        do { try SafeTensorsFile.write(path: path, tensors: tensors) } catch {
            log("tessera: cannot write gradients to \(path): \(error)")
        }
    }

    /// Mean loss over the evaluation windows of the held-out split.
    public func evaluate() -> Double? {
        guard let valLoader else { return nil }
        let t = config.training
        let batches = t.evalBatches
        var sum = 0.0
        let mine = (dpRank * localBatch)..<((dpRank + 1) * localBatch)
        if let pipeline, let layout = pipelineLayout {
            let actions = PipelineEngine.evaluationActions(microbatches: t.microbatches, chunks: layout.chunks)
            for b in 0..<batches {
                pipeline.load = { [unowned self] mb, a in
                    let first = mine.lowerBound + mb * microBatch
                    loadLocal(into: a) { ids, targets in
                        valLoader.fillEval(batch: b, batches: batches, batchSize: t.batchSize,
                                           sequences: first..<(first + microBatch), inputs: ids, targets: targets)
                    }
                }
                sum += orAbort(0) { try pipeline.run(actions: actions, mode: .evaluate, gradScale: 0) }
            }
            return globalSum(sum, label: "validation loss", step: 0) / Double(batches * tokensPerStep)
        }
        for b in 0..<batches {
            for first in stride(from: mine.lowerBound, to: mine.upperBound, by: microBatch) {
                loadLocal(into: acts) { ids, targets in
                    valLoader.fillEval(batch: b, batches: batches, batchSize: t.batchSize,
                                       sequences: first..<(first + microBatch), inputs: ids, targets: targets)
                }
                sum += model.lossSum(acts)
            }
        }
        if let dpl = dataParallel { sum = dpl.sum(sum, label: "validation loss") }
        return sum / Double(batches * tokensPerStep)
    }

    /// Runs all steps; rank 0 prints progress and writes metrics. Returns the step records.
    @discardableResult
    public func run(metrics: MetricsSink?) -> [StepRecord] {
        let t = config.training
        let flopsPerStep = model.config.flopsPerToken(seqLen: t.seqLen) * Double(tokensPerStep)
        if isRank0 { log(banner()) }
        var stepTimes: [Double] = []
        var interval = PhaseTotals(), intervalSteps = 0, intervalPipelineWaitNs: UInt64 = 0
        StopSignal.install()
        for step in startStep..<t.steps {
            Watchdog.shared?.step = step + 1
            timeline.beginStep()
            let t0 = DispatchTime.now().uptimeNanoseconds
            let (loss, norm) = trainStep(step)
            let dt = Double(DispatchTime.now().uptimeNanoseconds - t0) / 1e9
            timeline.endStep()
            interval.add(timeline.step); intervalSteps += 1
            intervalPipelineWaitNs += pipeline?.waitNs ?? 0
            stepTimes.append(dt)
            let last = step == t.steps - 1
            let doEval = t.evalEvery > 0 && ((step + 1) % t.evalEvery == 0 || last)
            let val = doEval ? evaluate() : nil
            let recent = stepTimes.suffix(10)
            let meanStep = recent.reduce(0, +) / Double(recent.count)
            let r = StepRecord(step: step + 1, steps: t.steps, loss: loss, lr: schedule.lr(step), gradNorm: norm,
                               tokensPerSecond: Double(tokensPerStep) / dt,
                               mfu: sgemmPeak > 0 ? flopsPerStep / dt / (sgemmPeak * Double(worldSize)) : 0, stepSeconds: dt,
                               peakRSSBytes: peakRSSBytes(), etaSeconds: meanStep * Double(t.steps - step - 1),
                               valLoss: val)
            var record = r
            record.optimizerStateBytes = optimizer.stateBytes
            // Log steps are the same on every rank, so the phase summary (a collective) is too.
            if (step + 1) % t.logEvery == 0 || step == 0 || last || val != nil {
                record.phases = phaseSummary(interval, steps: intervalSteps, pipelineWaitNs: intervalPipelineWaitNs)
                record.activations = activationSummary()
                interval = PhaseTotals(); intervalSteps = 0; intervalPipelineWaitNs = 0
                if isRank0 {
                    log(MetricsSink.line(record))
                    if let ph = record.phases, ph.ranks > 1 { log(MetricsSink.phaseLine(ph)) }
                    if let a = record.activations, memory.policies.contains(where: { $0 != .keep }) || memory.auto {
                        log(MetricsSink.activationLine(a))
                    }
                    metrics?.record(record)
                }
            }
            history.append(record)
            let signal = agreedStopSignal(step)
            checkpointAfter(step: step + 1, force: signal != 0, metrics: metrics)
            if signal != 0 { stoppedBy = signal; break }
        }
        orAbort(t.steps) { try checkpointer.finish() }
        reportCheckpoints(metrics)
        if let s = stoppedBy, isRank0, let saved = checkpointer.events.last {
            log("tessera: \(StopSignal.name(s)) received: stopped after step \(saved.step), saved \(saved.path); exiting")
        }
        writeTrace()
        if pipeline != nil && config.sample.tokens > 0, let whole = gatherWholeModel(model.params) {
            let m = GPT(config: model.config, seed: 0)
            m.params.storage.ptr.update(from: whole.storage.ptr, count: whole.count)
            wholeModel = m
        }
        return history
    }

    // MARK: checkpoints

    /// After step `done`'s optimizer step: saves when due (every `checkpoint.every` steps, the last step, or
    /// `force`), else settles the blocked time of a lazy save taken a step ago (collectives, at the same steps
    /// on every rank).
    package func checkpointAfter(step done: Int, force: Bool, metrics: MetricsSink?) {
        let c = config.checkpoint, t = config.training
        let due = force || (c.every > 0 && (done % c.every == 0 || done == t.steps))
        orAbort(done - 1) {
            if due {
                try timeline.work("checkpoint save") { try checkpointer.save(step: done, state: checkpointState(step: done)) }
            } else {
                try checkpointer.settle()
            }
        }
        reportCheckpoints(metrics)
    }

    /// What the manifest records besides tensors: where training continues and what it depends on.
    func checkpointState(step: Int) -> [String: String] {
        let t = config.training
        return ["step": "\(step)", "optimizer_step": "\(optimizer.step)", "seed": "\(t.seed)",
                "data_next_step": "\(step)", "tokens_seen": "\(step * tokensPerStep)",
                "next_lr": "\(schedule.lr(step))", "data": "batches are a function of (seed, step); next is step \(step)"]
    }

    func reportCheckpoints(_ metrics: MetricsSink?) {
        let done = checkpointer.collect()
        guard isRank0 else { return }
        for e in done {
            log("checkpoint: \(e.path) (\(e.mode)): \(fmt(Double(e.bytes) / 1_048_576, 1)) MiB; training blocked "
                + "\(fmt(e.blockedSeconds * 1000, 1)) ms (longest rank); durable \(fmt(e.durableSeconds, 3)) s after its step"
                + (e.persistedPath.map { "; copied to \($0) after \(fmt(e.persistedSeconds ?? 0, 3)) s" } ?? ""))
            metrics?.recordCheckpoint(e)
        }
    }

    /// The stop signal any rank has received (0: none); a collective, so every rank stops at the same step.
    func agreedStopSignal(_ step: Int) -> Int32 {
        let mine = StopSignal.received
        guard let world = mesh?.world, world.size > 1 else { return mine }
        return orAbort(step) { try world.allreduce(mine, op: .max, label: "stop signal") }
    }

    /// `--resume auto|PATH`: restores parameters, optimizer state and the step from the newest checkpoint
    /// that loads on every rank (auto: under `checkpoint.dir`; PATH: one checkpoint, or a directory of them).
    /// A checkpoint that fails (a checksum, a missing file) is reported and the previous one tried. Returns
    /// what happened, for the log. Every rank calls it.
    public func resume(_ spec: String) throws -> String {
        let single = spec != "auto" && FileManager.default.fileExists(atPath: spec + "/manifest.json")
        let root = spec == "auto" ? config.checkpointDir : spec
        var isDirectory: ObjCBool = false
        if !single, FileManager.default.fileExists(atPath: root, isDirectory: &isDirectory),
           !isDirectory.boolValue || access(root, R_OK | X_OK) != 0 {
            throw CheckpointError("--resume \(spec): \(root) is " + (isDirectory.boolValue ? "not readable" : "a file")
                                  + "; expected a directory of checkpoints")
        }
        let candidates = single ? [spec] : CheckpointStore.candidates(root: root)
        if candidates.isEmpty {
            if spec == "auto" { return "resume: no checkpoint under \(root); starting from step 0" }
            throw CheckpointError("--resume \(spec): no checkpoint there (expected a step-N directory with manifest.json, or a directory of them)")
        }
        let rank = runtime?.rank ?? 0
        var notes: [String] = []
        for c in candidates {
            var failure: String?
            var manifest: CheckpointManifest?
            do {
                let reader = try CheckpointReader(path: c)
                manifest = reader.manifest
                try Checkpointer.checkCompatible(reader.manifest, path: c, config: config)
                try Checkpointer.restore(from: reader, params: model.params, optimizer: optimizer)
            } catch let e as CheckpointIncompatible {
                throw e  // the config, not the checkpoint: no fallback
            } catch { failure = "\(error)" }
            var ok: Int32 = failure == nil ? 1 : 0
            if let world = mesh?.world, world.size > 1 { ok = try world.allreduce(ok, op: .min, label: "resume") }
            if ok == 1, let manifest {
                guard let step = Int(manifest.state["step"] ?? ""), let optStep = Int(manifest.state["optimizer_step"] ?? "") else {
                    throw CheckpointError("checkpoint \(c): manifest.json has no step/optimizer_step state")
                }
                // Every rank must have loaded the same step (a directory each rank sees differently would not).
                if let world = mesh?.world, world.size > 1 {
                    let lo = try world.allreduce(Int64(step), op: .min, label: "resume step"), hi = try world.allreduce(Int64(step), op: .max, label: "resume step")
                    guard lo == hi else {
                        throw CheckpointError("resume: the ranks loaded checkpoints of different steps (\(lo) and \(hi)) under \(root): "
                                              + "checkpoint.dir must be one directory every rank sees the same")
                    }
                }
                resumedStep = step
                startStep = min(step, config.training.steps)
                optimizer.step = optStep
                let from = manifest.mesh.sorted { $0.key < $1.key }.map { "\($0.key) \($0.value)" }.joined(separator: ", ")
                notes.append("resume: continuing from \(c) (step \(step), written by \(from))")
                if step >= config.training.steps { notes.append("resume: step \(step) >= training.steps = \(config.training.steps): nothing left to train") }
                return notes.joined(separator: "\n")
            }
            if let failure { log("tessera: rank \(rank): cannot load checkpoint \(c): \(failure)") }
            notes.append("resume: checkpoint \(c) failed to load (checksum or missing data; see the error above)"
                         + (single ? "" : "; falling back to the previous checkpoint"))
            if single { break }
        }
        throw CheckpointError((notes + ["resume: no usable checkpoint " + (single ? "at \(spec)" : "under \(root)")]).joined(separator: "\n"))
    }

    /// The last step's activation memory over all ranks (a collective).
    package func activationSummary() -> ActivationSummary {
        let a = lastActivation, ranks = mesh?.world.size ?? 1, me = runtime?.rank ?? 0
        var sums = [Double](repeating: 0, count: 2 * ranks + 5)
        sums[me] = Double(a.peakBytes); sums[ranks + me] = Double(memory.plan.predictedBytes)
        let o = a.offload ?? OffloadTier.Stats()
        sums[2 * ranks] = Double(o.bytesWritten); sums[2 * ranks + 1] = Double(o.bytesRead)
        sums[2 * ranks + 2] = Double(o.ioNs) / 1e9; sums[2 * ranks + 3] = Double(o.waitNs) / 1e9
        sums[2 * ranks + 4] = Double(a.tierHeldBytes)
        var maxima = [a.recomputeSeconds, Double(a.sequenceBytes)]
        if let world = mesh?.world, ranks > 1 {
            do {
                let n = sums.count
                try sums.withUnsafeMutableBufferPointer { try world.allreduce($0.baseAddress!, count: n, op: .sum, label: "activation summary") }
                try maxima.withUnsafeMutableBufferPointer { try world.allreduce($0.baseAddress!, count: 2, op: .max, label: "activation summary") }
            } catch { MPIRuntime.abort("\(error) while summarising activation memory") }
        }
        return ActivationSummary(peakBytes: sums[0..<ranks].map { Int($0) }, predictedBytes: sums[ranks..<(2 * ranks)].map { Int($0) },
                                 recomputeSecondsMax: maxima[0], offloadWritten: Int(sums[2 * ranks]),
                                 offloadRead: Int(sums[2 * ranks + 1]), offloadIOSeconds: sums[2 * ranks + 2],
                                 offloadWaitSeconds: sums[2 * ranks + 3], tierHeldBytes: Int(sums[2 * ranks + 4]),
                                 sequenceBytesMax: Int(maxima[1]))
    }

    /// Mean and max over all ranks of each phase's seconds per step in the interval.
    func phaseSummary(_ p: PhaseTotals, steps: Int, pipelineWaitNs: UInt64) -> PhaseSummary {
        let n = Double(max(steps, 1))
        var local = [Double(p.computeNs) / 1e9 / n, Double(p.commNs) / 1e9 / n, Double(p.idleNs) / 1e9 / n,
                     Double(pipelineWaitNs) / 1e9 / n]
        var mean = local, maxv = local
        let ranks = mesh?.world.size ?? 1
        if let world = mesh?.world, ranks > 1 {
            do {
                try local.withUnsafeMutableBufferPointer { l in
                    try mean.withUnsafeMutableBufferPointer { try world.allreduce(send: l.baseAddress!, recv: $0.baseAddress!, count: 4, op: .sum, label: "phase times") }
                    try maxv.withUnsafeMutableBufferPointer { try world.allreduce(send: l.baseAddress!, recv: $0.baseAddress!, count: 4, op: .max, label: "phase times") }
                }
            } catch { MPIRuntime.abort("\(error) while summarising phase times") }
            for i in 0..<4 { mean[i] /= Double(ranks) }
        }
        var summary = PhaseSummary(ranks: ranks, computeMean: mean[0], computeMax: maxv[0], commMean: mean[1], commMax: maxv[1],
                                   idleMean: mean[2], idleMax: maxv[2])
        if pipeline != nil { summary.pipelineWaitMean = mean[3]; summary.pipelineWaitMax = maxv[3] }
        return summary
    }

    func writeTrace() {
        guard let dir = options.traceDir, let trace = timeline.trace else { return }
        do {
            let path = try trace.write(directory: dir)
            if isRank0 { log("trace: \(path) (one file per rank; open in https://ui.perfetto.dev)") }
        } catch { log("tessera: rank \(runtime?.rank ?? 0): cannot write the trace to \(dir): \(error)") }
    }

    func banner() -> String {
        let m = model.config, t = config.training
        var s = "tessera: \(config.job.name): GPT-2 \(m.nLayer) layers, d \(m.dModel), \(m.nHead) heads, vocab \(m.vocabSize), "
        s += "\(fmt(Double(m.parameterCount) / 1e6, 2))M parameters\n"
        s += "  batch \(t.batchSize) × seq \(t.seqLen) = \(tokensPerStep) tokens/step in \(t.microbatches) micro-batch(es) of \(microBatch); "
        s += "\(t.steps) steps; \(Threads.count) thread(s); "
        s += "sgemm peak \(fmt(sgemmPeak / 1e9, 0)) GFLOP/s per rank (OpenBLAS \(BLAS.coreName); MFU is against \(worldSize) × that)\n"
        s += "  data: \(trainLoader.source.count) training tokens from \(trainLoader.source.description)"
        if let v = valLoader { s += "; \(v.source.count) validation tokens" }
        if let mesh {
            s += "\n  mesh: \(mesh.shape) = \(mesh.shape.size) rank(s); \(localBatch) sequence(s) per data-parallel rank"
            if let layout = pipelineLayout { s += "\n" + layout.describe(microbatches: t.microbatches) }
            if let l = sequenceLayout {
                s += "; \(l.local) of \(l.seqLen) tokens per sequence on each rank"
                s += l.ring > 1 ? " (ring: \(2 * l.ring) zigzag chunks of \(l.chunk)" + (l.ulysses > 1 ? "; Ulysses inside each ring position)" : ")") : " (Ulysses)"
            }
        }
        if let dpl = dataParallel, dpl.zero {
            s += "\n  optimizer state: \(mib(optimizer.stateBytes, 2)) MiB per rank (ZeRO-1 over \(dpl.group.size) data-parallel "
            s += "rank(s); unsharded \(mib(unshardedOptimizerBytes, 2)) MiB)"
        } else {
            s += "\n  optimizer state: \(mib(optimizer.stateBytes, 2)) MiB per rank"
        }
        if let dpl = dataParallel {
            s += "\n  gradient reduction: \(dpl.buckets.count) bucket(s) of ≥ \(fmt(config.parallelism.bucketMb, 1)) MiB, "
            s += dpl.zero ? "reduce-scatter + parameter allgather" : "allreduce"
            s += ", overlapped with the last micro-batch's backward pass"
        }
        if let r = runtime {
            s += "\n  MPI: \(r.size) rank(s), thread level \(r.threadLevelName) granted (MPI_THREAD_MULTIPLE asked)"
            s += "; shared-memory single copy: \(MPIRuntime.singleCopyMechanism)"
        }
        s += "\n" + memory.describe()
        if let w = MachineCheck.coreTypeWarning { s += "\n  warning: \(w)" }
        return s
    }

    /// Text sampled from the trained model (`[sample]` section).
    public func sample() -> String {
        let s = config.sample
        let prompt = Array(s.prompt.utf8).map { Int32($0) }
        let out = Sampler(model: wholeModel ?? model).generate(prompt: prompt, count: s.tokens, temperature: s.temperature,
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
