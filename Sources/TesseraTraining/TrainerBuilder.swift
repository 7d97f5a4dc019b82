// Turns a config and the MPI runtime into the parts of a run, in dependency order: the mesh, the data, the
// model (this rank's stage), sequence parallelism (which tokens, which attention), the activation memory,
// the pipeline engine or the micro-batch activations, the data-parallel reducer and the optimizer, the
// learning-rate schedule, the checkpoint manager. The training loop (Trainer, TrainingLoop) only runs them.

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

/// Every part of a run, built once.
public struct TrainingParts {
    public let config: TesseraConfig
    public let runtime: MPIRuntime?
    public let mesh: ProcessMesh?
    public let timeline: Timeline
    public let data: TrainingData
    public let model: Transformer
    /// This rank's tokens of each sequence (all of them without sequence parallelism).
    public let tokens: SequenceTokens
    /// Pipeline parallelism (pp > 1): the layer split and plan, and the engine that runs it.
    public let pipelineLayout: PipelineLayout?
    public let pipeline: PipelineEngine?
    /// The micro-batch's activations (nil under pipeline parallelism: the engine keeps a pool per chunk).
    public let acts: Activations?
    public let memory: MemorySetup
    /// Gradient reduction across the replicas (nil when there is one and ZeRO is off).
    public let dataParallel: DataParallel?
    public let optimizer: AdamWOptimizer
    public let schedule: LRSchedule
    public let checkpointer: Checkpointer
    /// FLOP/s of this rank's threads, measured at start (0 when not measured).
    public let sgemmPeak: Double
    /// Variable-length documents (data.max_tokens_per_rank): the planned steps that replace fixed micro-batches.
    let documentSteps: DocumentSteps?
}

/// The data of a run and how a replica slices each global batch into micro-batches.
public struct TrainingData {
    public let train: DataLoader
    public let val: DataLoader?
    /// Variable-length documents (data.max_tokens_per_rank > 0): the sequences steps and evaluation draw from.
    public var documents: DocumentBatches? = nil, valDocuments: DocumentBatches? = nil
    /// Sequences per micro-batch, and of the global batch per data-parallel replica.
    public let microBatch: Int, localBatch: Int
    /// This replica's index among the data-parallel replicas.
    public let replica: Int

    /// The global-batch sequences of micro-batch `mb` of this replica.
    public func sequences(microbatch mb: Int) -> Range<Int> {
        let first = replica * localBatch + mb * microBatch
        return first..<(first + microBatch)
    }
    /// All of this replica's sequences of a global batch.
    public var replicaSequences: Range<Int> { (replica * localBatch)..<((replica + 1) * localBatch) }
}

enum TrainerBuilder {
    static func build(config: TesseraConfig, runtime: MPIRuntime?, options: TrainerOptions) throws -> TrainingParts {
        try config.validateForThisBuild()
        // Memory and output paths, before the mesh and before any allocation (collectives over the world).
        try Preflight.check(config: config, runtime: runtime, options: options)
        let mesh = try makeMesh(config, runtime)
        let timeline = Timeline(trace: options.traceDir.map { _ in TraceRecorder(rank: runtime?.rank ?? 0) })
        Timeline.shared = timeline
        let threads = config.training.threads > 0 ? config.training.threads : Threads.availableCores()
        Threads.configure(threads)
        let data = try makeData(config, replica: mesh?.coordinate.dp ?? 0)
        let gpt = config.transformer, t = config.training, seed = config.seed
        let pipelineLayout = mesh != nil && config.parallelism.pp > 1 ? try PipelineLayout(config: config) : nil
        let model = Transformer.make(config: gpt, seed: seed, stage: mesh.flatMap { m in pipelineLayout?.stage(rank: m.coordinate.pp) })
        model.precision = config.precision
        if !config.model.initFrom.isEmpty {
            try HFImport.load(dir: config.model.initFrom, into: model.params)  // this stage's tensors
            model.parametersChanged()
        }
        // Variable-length documents: one sequence of at most max_tokens_per_rank tokens at a time (DocumentSteps).
        let variable = config.data.maxTokensPerRank > 0
        let tokens = variable ? SequenceTokens(seqLen: config.data.maxTokensPerRank, batch: 1, layout: nil, documents: true)
                              : makeSequenceParallel(config, mesh, model: model, batch: data.microBatch)
        let batch = variable ? 1 : data.microBatch
        let documentAttention = variable ? try DocumentSteps.attention(config: config, mesh: mesh, model: model) : nil
        if let documentAttention { model.attention = documentAttention }
        // Activation memory: the policies (or the plan for the budget) before any activations exist.
        let sgemmPeak = options.measurePeak ? SgemmProbe.measure(threads: threads).flops : 0
        let memory = try makeMemory(config, runtime, mesh, model: model, pipelineLayout: pipelineLayout, batch: batch,
                                    tokens: tokens.count, flopRate: sgemmPeak > 0 ? sgemmPeak : SgemmProbe.measure(threads: threads).flops)
        model.memory = memory.memoryPlan
        if timeline.trace != nil {
            model.onRecompute = { name, t0, t1 in timeline.mark(name, cat: "recompute", beginNs: t0, endNs: t1) }
            memory.tier?.onBlocked = { t0, t1 in timeline.mark("offload wait", cat: "wait", beginNs: t0, endNs: t1) }
        }
        var pipeline: PipelineEngine? = nil, acts: Activations? = nil
        if let mesh, let layout = pipelineLayout {
            pipeline = try PipelineEngine(plan: layout.plan, model: model, comm: mesh.pipeline, batch: data.microBatch,
                                          tokens: tokens.count, wire: config.pipelineWire)
            pipeline?.everyChunkLoads = tokens.documents
        } else {
            acts = model.activations(batch: batch, tokens: tokens.count)
        }
        let documentSteps = data.documents.map {
            DocumentSteps(config: config, mesh: mesh, model: model, attention: documentAttention!, acts: acts!, train: $0,
                          val: data.valDocuments)
        }
        let (dataParallel, optimizer) = makeOptimizer(config, mesh, model: model, pipelined: pipelineLayout != nil)
        let schedule = LRSchedule(peak: config.optimizer.lr, minRatio: config.optimizer.minLrRatio,
                                  warmup: config.optimizer.warmupSteps, total: t.steps, decay: config.optimizer.decay)
        let checkpointer = try makeCheckpointer(config, runtime, mesh, model: model, optimizer: optimizer,
                                                zero: dataParallel?.zero ?? false, options: options)
        return TrainingParts(config: config, runtime: runtime, mesh: mesh, timeline: timeline, data: data, model: model,
                             tokens: tokens, pipelineLayout: pipelineLayout, pipeline: pipeline, acts: acts, memory: memory,
                             dataParallel: dataParallel, optimizer: optimizer, schedule: schedule, checkpointer: checkpointer,
                             sgemmPeak: sgemmPeak, documentSteps: documentSteps)
    }

    /// The process mesh of the config's degrees (nil without MPI); the job's size must match before any
    /// communication, so every rank throws the same error and stops.
    static func makeMesh(_ config: TesseraConfig, _ runtime: MPIRuntime?) throws -> ProcessMesh? {
        let p = config.parallelism
        let shape = MeshShape(pp: p.pp, dp: p.dp, ring: p.ring, ulysses: p.ulysses)
        guard let runtime else {
            guard shape.size == 1 else { throw MeshError.wrongSize(shape: shape, worldSize: 1) }
            return nil
        }
        guard runtime.size == shape.size else { throw MeshError.wrongSize(shape: shape, worldSize: runtime.size) }
        Watchdog.shared = Watchdog(rank: runtime.rank, timeoutSeconds: p.timeoutS) { MPIRuntime.abort($0) }
        return try MeshPlacement.make(config: config, world: runtime.worldCommunicator)
    }

    static func makeData(_ config: TesseraConfig, replica: Int) throws -> TrainingData {
        let t = config.training, m = config.model, p = config.parallelism
        let data = try openDataset(format: config.data.format, train: config.data.train, val: config.data.val,
                                   valFraction: config.data.valFraction)
        try data.train.checkTokens(vocabSize: m.vocabSize)
        if config.sample.tokens > 0 {
            _ = try SampleText(config: config, vocabSize: m.vocabSize).encode(config.sample.prompt, what: "sample.prompt")
        }
        var separator: Int32? = nil
        if config.data.packing == "documents" {
            if config.data.documentToken >= 0 {
                separator = Int32(config.data.documentToken)
            } else {
                do { separator = try SampleText(config: config, vocabSize: m.vocabSize).endOfText() } catch {
                    throw TrainingError("data.packing = \"documents\" with data.document_token = -1 takes the <|endoftext|> of "
                                        + "data.tokenizer = '\(config.data.tokenizer)', which has none: set data.document_token")
                }
            }
        }
        // Variable-length documents draw whole documents (DocumentBatches); the loaders then cut no rows.
        let variable = config.data.maxTokensPerRank > 0
        let rows = variable ? nil : separator
        let train = try DataLoader(source: data.train, seqLen: t.seqLen, seed: config.seed, documentSeparator: rows)
        var val: DataLoader? = nil
        if t.evalEvery > 0 { try data.val.checkTokens(vocabSize: m.vocabSize) }
        if t.evalEvery > 0, !variable {
            val = try DataLoader(source: data.val, seqLen: t.seqLen, seed: config.seed, documentSeparator: rows)
        }
        var out = TrainingData(train: train, val: val, microBatch: config.rankMicroBatch,
                               localBatch: max(t.batchSize / p.dp, 1), replica: replica)
        if variable, let separator {
            out.documents = try DocumentBatches(source: data.train, separator: separator, maxLength: t.seqLen, seed: config.seed)
            if t.evalEvery > 0 {
                out.valDocuments = try DocumentBatches(source: data.val, separator: separator, maxLength: t.seqLen, seed: config.seed)
            }
        }
        return out
    }

    /// This rank's tokens; with a sequence group of more than one rank, the model's attention becomes the
    /// sequence-parallel one (ring, Ulysses or both) over those tokens.
    static func makeSequenceParallel(_ config: TesseraConfig, _ mesh: ProcessMesh?, model: Transformer, batch: Int) -> SequenceTokens {
        let t = config.training, p = config.parallelism
        let documents = config.data.packing == "documents"
        guard let mesh, mesh.sequence.size > 1 else { return SequenceTokens(seqLen: t.seqLen, batch: batch, layout: nil, documents: documents) }
        let layout = SequenceLayout(seqLen: t.seqLen, ring: p.ring, ulysses: p.ulysses, ringRank: mesh.coordinate.ring,
                                    ulyssesRank: mesh.coordinate.ulysses)
        let sp = SequenceParallelAttention(heads: model.config.nHead, kvHeads: model.config.nKVHead, headDim: model.config.headDim, layout: layout,
                                           ring: mesh.ring, ulysses: mesh.ulysses, maxBatch: batch, precision: model.precision)
        sp.onError = { MPIRuntime.abort("\($0) at step \(Watchdog.shared?.step ?? 0); aborting the job") }
        model.attention = sp
        return SequenceTokens(seqLen: t.seqLen, batch: batch, layout: layout, documents: documents)
    }

    static func makeMemory(_ config: TesseraConfig, _ runtime: MPIRuntime?, _ mesh: ProcessMesh?, model: Transformer,
                           pipelineLayout: PipelineLayout?, batch: Int, tokens: Int, flopRate: Double) throws -> MemorySetup {
        var sets = [1]
        if let mesh, let layout = pipelineLayout {
            let plan = layout.plan, rank = mesh.coordinate.pp
            sets = PipelineEngine.predictedSets(actions: plan.actions[rank], chunks: plan.virtualStages) {
                plan.virtualStage(rank: rank, chunk: $0) > 0
            }
        }
        let world = mesh?.world, rank = runtime?.rank ?? 0
        let memory = try MemorySetup(config: config, model: model, rank: rank, batch: batch, tokens: tokens, setsPerChunk: sets,
                                     ownLossGradient: pipelineLayout != nil, flopRate: flopRate, agree: { x in
                                         guard let world else { return x }
                                         do { return try world.allreduce(x, op: .min, label: "activation planner inputs") } catch {
                                             MPIRuntime.abort("\(error) while agreeing on the activation planner's inputs; aborting the job")
                                         }
                                     })
        memory.tier?.onError = { MPIRuntime.abort("rank \(rank): \($0) at step \(Watchdog.shared?.step ?? 0); aborting the job") }
        return memory
    }

    /// The optimizer over this rank's parameters (ZeRO-1: its partition) and, when gradients are shared, the
    /// reducer over the replicas (data × sequence ranks of the stage). Under pipeline parallelism the tied
    /// embedding's two copies sum their gradients before the replicas reduce them; the norm counts the first
    /// stage's copy only.
    static func makeOptimizer(_ config: TesseraConfig, _ mesh: ProcessMesh?, model: Transformer,
                              pipelined: Bool) -> (DataParallel?, AdamWOptimizer) {
        let o = config.optimizer, p = config.parallelism
        var dataParallel: DataParallel? = nil
        let optimizer: AdamWOptimizer
        if let mesh, mesh.replicas.size > 1 || p.zero == 1 {
            let dpl = DataParallel(group: mesh.replicas, params: model.params, grads: model.grads,
                                   bucketBytes: Int(p.bucketMb * 1_048_576), zero: p.zero == 1)
            model.observer = dpl
            dataParallel = dpl
            optimizer = AdamWOptimizer(params: model.params, partition: dpl.ownedRange, grad: dpl.reducedGradients,
                                       beta1: o.beta1, beta2: o.beta2, eps: o.eps, weightDecay: o.weightDecay, clip: o.gradClip)
        } else {
            optimizer = AdamWOptimizer(params: model.params, grads: model.grads, beta1: o.beta1, beta2: o.beta2,
                                       eps: o.eps, weightDecay: o.weightDecay, clip: o.gradClip)
        }
        if let mesh, pipelined, model.config.tied, model.stage.holdsTokenEmbedding {
            let wteCount = model.config.vocabSize * model.config.dModel, grads = model.grads, embedding = mesh.embedding
            let name = model.config.tokenEmbeddingName
            precondition(model.params.offset(of: name) == 0, "the token embedding must lead the parameter storage")
            if let dpl = dataParallel {
                dpl.holdBelow = wteCount
                dpl.beforeHeld = { try embedding.reduceTiedEmbedding(grads, name: name, count: wteCount) }
            }
            if !model.stage.hasEmbedding { optimizer.normExcluded = 0..<wteCount }
        }
        return (dataParallel, optimizer)
    }

    /// One writer per group of replicas, or every replica its ZeRO-1 piece; the tied embedding's second copy
    /// (last stage) is not written. With saves due, rank 0 prepares `checkpoint.dir` and every rank learns
    /// whether it could (no rank may stop alone).
    static func makeCheckpointer(_ config: TesseraConfig, _ runtime: MPIRuntime?, _ mesh: ProcessMesh?, model: Transformer,
                                 optimizer: AdamWOptimizer, zero: Bool, options: TrainerOptions) throws -> Checkpointer {
        let p = config.parallelism, c = config.checkpoint, rank = runtime?.rank ?? 0
        let skip: Set<String> = model.stage.hasEmbedding ? [] : [model.config.tokenEmbeddingName]
        let sources = Checkpointer.sources(params: model.params, optimizer: optimizer,
                                           writes: zero || (mesh?.isFirstReplica ?? true), skip: skip)
        let checkpointer = Checkpointer(root: config.checkpointDir, persistRoot: c.persistDir.isEmpty ? nil : c.persistDir,
                                        keep: c.keep, lazy: c.mode == "lazy", rank: rank, world: mesh?.world,
                                        background: mesh?.checkpoint, sources: sources,
                                        tensors: ModelParameters.specs(model.config).map { .init(name: $0.name, shape: $0.shape) },
                                        mesh: ["pp": p.pp, "dp": p.dp, "ring": p.ring, "ulysses": p.ulysses, "zero": p.zero],
                                        configText: ConfigLoader.render(config))
        if let runtime, c.mode == "lazy", runtime.size > 1, runtime.threadLevel < 3 {
            throw TrainingError("checkpoint.mode = \"lazy\" needs MPI_THREAD_MULTIPLE (the writer threads exchange records in "
                                + "the background), but this MPI granted \(runtime.threadLevelName); use checkpoint.mode = \"sync\"")
        }
        if c.every > 0 {
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
        checkpointer.writer.copyDelayMicroseconds = UInt32(options.checkpointCopyDelayMs * 1000)
        return checkpointer
    }
}
