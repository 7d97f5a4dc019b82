// Runs a pipeline plan on one rank: the plan says which forward or backward to run next; the engine moves
// the data. Forward of (micro-batch, chunk) at virtual stage s receives its input from s − 1 straight into
// the micro-batch's activations and sends its output to s + 1; backward receives the output gradient from
// s + 1 and sends the input gradient to s − 1. Every message is non-blocking and tagged with the receiving
// virtual stage, the micro-batch and the direction, so messages can arrive in any order.
//
// Deadlock freedom: a receive is posted one action ahead of its use (so the transfer overlaps the current
// action) and waited for only when its action starts; sends are never waited for inside the step (their
// buffers are set aside until the send completes, and new buffers are made if none is free). So a rank only
// ever blocks on data the plan says it needs, and the planner tests prove that every plan's data
// dependencies complete. At the end of the step every send is complete, because every rank has received
// everything its actions needed.
//
// Wire precision: in fp32 a stage sends the residual stream (and its gradient) as it is, the input landing
// straight in the micro-batch's activations. In bf16 (`parallelism.pipeline_precision`) each message is
// narrowed into a 16-bit buffer where it leaves and widened where it lands: half the bytes, and a forward's
// output set is free as soon as its narrowed copy is made (the send no longer reads it).
//
// Memory: activations of a (micro-batch, chunk) live from its forward to its backward, in a pool per chunk
// that grows to the schedule's peak in the first step and is reused after. The pool's size is what the
// schedule costs: with 1F1B at most `stages` micro-batches per rank, with GPipe all of them.

import TesseraComm
import TesseraKernels
import TesseraModel
import TesseraTimeline

public final class PipelineEngine {
    public enum Mode: Sendable { case train, evaluate }

    public let plan: PipelinePlan
    public let model: any ParallelModel
    /// The pipeline group: rank i runs stage i.
    public let comm: Communicator
    public let batch: Int, tokens: Int
    let workspace: Workspace
    let rank: Int, stages: Int
    /// Fills a micro-batch's token ids, positions and targets (called for chunks that embed, that have the head,
    /// and every chunk of a model whose blocks read positions or of packed documents).
    public var load: (_ microbatch: Int, _ activations: Activations) -> Void = { _, _ in }
    /// Packed documents: every chunk's attention needs the micro-batch's document starts, so every chunk loads.
    public var everyChunkLoads = false
    /// Called just before the rank's last backward of the step (data parallelism starts reducing then).
    public var beforeLastBackward: () -> Void = {}

    private var pool: [[Activations]]          // free activation sets, per chunk
    private var sending: [(set: Activations, chunk: Int, request: Request)] = []  // released, output still in flight
    private var live: [Int: Activations] = [:]  // key(mb, chunk) → activations from forward to backward
    private var inputRecv: [Int: Request] = [:] // key(mb, chunk) → receive of the forward input (into live[key])
    private var inputWire: [Int: Message] = [:]  // key(mb, chunk) → the bf16 message the forward input lands in
    private var gradFree: [Message] = []   // messages of one activation or gradient (batch × tokens × d_model)
    private var gradRecv: [Int: (buffer: Message, request: Request)] = [:]
    private var gradSending: [(buffer: Message, request: Request)] = []
    private var outputSends: [Int: Request] = [:]  // key(mb, chunk) → send of the forward output

    /// Activation sets allocated per chunk (the pool's high-water mark) and their bytes each.
    public var setsAllocated: [Int] { allocated }
    private var allocated: [Int]
    /// Peak number of (micro-batch, chunk) activations alive at once (forward done or input arriving,
    /// backward not yet done) in the last `run`.
    public private(set) var peakLive = 0
    /// Time spent computing forwards and backwards (excluding waits for data) and the whole run, last `run`.
    public private(set) var busyNs: UInt64 = 0, spanNs: UInt64 = 0
    /// When the last `run` started and ended (monotonic clock, comparable between ranks of one host).
    public private(set) var startNs: UInt64 = 0, endNs: UInt64 = 0
    /// Forward and backward compute time, last `run` (busy = forward + backward).
    public private(set) var forwardNs: UInt64 = 0, backwardNs: UInt64 = 0
    /// Time blocked waiting for a neighbour's activation or gradient, last `run`.
    public private(set) var waitNs: UInt64 = 0
    /// Bytes this rank sent to its neighbour stages in the last `run`.
    public private(set) var bytesSent = 0
    /// The number format of the activations and gradients sent between stages.
    public let wire: Precision
    private var alive = 0

    public init(plan: PipelinePlan, model: any ParallelModel, comm: Communicator, batch: Int, tokens: Int,
                wire: Precision = .fp32) throws {
        precondition(comm.size == plan.stages, "pipeline group of \(comm.size) ranks for \(plan.stages) stages")
        precondition(model.stage.chunks.count == plan.virtualStages, "model stage has \(model.stage.chunks.count) chunks, plan \(plan.virtualStages)")
        self.plan = plan; self.model = model; self.comm = comm; self.batch = batch; self.tokens = tokens; self.wire = wire
        rank = comm.rank; stages = plan.stages
        workspace = Workspace(n: batch * tokens, config: model.config, training: true)
        pool = Array(repeating: [], count: plan.virtualStages)
        allocated = Array(repeating: 0, count: plan.virtualStages)
        setBytes = Array(repeating: 0, count: plan.virtualStages)
        let maxTag = MessageTag.pipeline(microbatch: plan.microbatches - 1, virtualStage: plan.virtualStageCount - 1,
                                         backward: true, virtualStages: plan.virtualStageCount)
        if maxTag > MessageTag.upperBound {
            throw PipelinePlanError(description: "\(plan.microbatches) micro-batches × \(plan.virtualStageCount) virtual stages need "
                                    + "MPI tags up to \(maxTag), above the \(MessageTag.upperBound) every MPI allows")
        }
    }

    /// The tag of a message to virtual stage `vs` about micro-batch `mb`.
    func tag(_ mb: Int, _ vs: Int, backward: Bool) -> Int {
        MessageTag.pipeline(microbatch: mb, virtualStage: vs, backward: backward, virtualStages: plan.virtualStageCount)
    }
    func key(_ mb: Int, _ chunk: Int) -> Int { mb * plan.virtualStages + chunk }
    var next: Int { comm.ringPosition.next }
    var prev: Int { comm.ringPosition.prev }
    func virtualStage(_ chunk: Int) -> Int { plan.virtualStage(rank: rank, chunk: chunk) }
    var lastVirtualStage: Int { plan.virtualStageCount - 1 }

    /// Bytes one activation set of each chunk holds for the backward (known once one is allocated).
    public private(set) var setBytes: [Int]
    /// Activation bytes of the pools (every set allocated so far) plus the shared workspace.
    public var activationBytes: Int {
        workspace.bytes + zip(setBytes, allocated).reduce(0) { $0 + $1.0 * $1.1 }
    }

    // MARK: running a step

    /// Runs this rank's actions (forward-only plans evaluate). Returns the sum of the loss over the tokens of
    /// the micro-batches whose loss this rank computes (zero on ranks without the head).
    public func run(actions: [PipelineAction], mode: Mode, gradScale: Float) throws -> Double {
        let t0 = nowNs(), sent0 = comm.bytesSent
        busyNs = 0; waitNs = 0; peakLive = 0; alive = 0; forwardNs = 0; backwardNs = 0
        // This MPI moves a multi-fragment message only inside MPI calls: the model calls back between its
        // ops, and the engine tests its transfers in flight, so they progress while it computes.
        model.progress = { [unowned self] in self.poll() }
        defer { model.progress = nil }
        let lastBackward = actions.lastIndex { $0.kind == .backward }
        var loss = 0.0
        for (i, a) in actions.enumerated() {
            try postReceive(for: a)
            if i + 1 < actions.count { try postReceive(for: actions[i + 1]) }
            switch a.kind {
            case .forward:
                loss += try forward(a, mode: mode, gradScale: gradScale)
            case .backward:
                if i == lastBackward { beforeLastBackward() }
                try backward(a)
            }
            try reclaim()
        }
        // Every receive has been consumed; the sends complete as their receivers finish.
        let w0 = nowNs()
        try Request.waitAll(sending.map(\.request) + gradSending.map(\.request))
        waitNs += nowNs() - w0
        try reclaim()
        precondition(live.isEmpty && inputRecv.isEmpty && inputWire.isEmpty && gradRecv.isEmpty, "pipeline step ended with activations alive")
        endNs = nowNs()
        startNs = t0; spanNs = endNs - t0
        bytesSent = comm.bytesSent - sent0
        return loss
    }

    /// A set of activations for `chunk`: a free one, or a new one (the pool grows to the schedule's peak).
    private func acquire(chunk: Int) -> Activations {
        alive += 1; peakLive = max(peakLive, alive)
        if let a = pool[chunk].popLast() { return a }
        allocated[chunk] += 1
        let a = model.activations(chunk: chunk, batch: batch, tokens: tokens, workspace: workspace)
        setBytes[chunk] = a.store.savedBytes
        return a
    }

    /// Returns a set to the pool once its output send (if any) has completed.
    private func release(_ a: Activations, chunk: Int, key k: Int) throws {
        alive -= 1
        if let r = outputSends.removeValue(forKey: k), !(try r.test()) {
            sending.append((a, chunk, r))
        } else {
            pool[chunk].append(a)
        }
    }

    /// Moves sets and gradient buffers whose sends completed back to their pools.
    private func reclaim() throws {
        var i = 0
        while i < sending.count {
            if try sending[i].request.test() { pool[sending[i].chunk].append(sending[i].set); sending.remove(at: i) } else { i += 1 }
        }
        i = 0
        while i < gradSending.count {
            if try gradSending[i].request.test() { gradFree.append(gradSending[i].buffer); gradSending.remove(at: i) } else { i += 1 }
        }
    }

    /// Tests every transfer in flight once (drives MPI progress; errors surface at the waits).
    private func poll() {
        for r in outputSends.values { _ = try? r.test() }
        for r in inputRecv.values { _ = try? r.test() }
        for g in gradRecv.values { _ = try? g.request.test() }
        for g in gradSending { _ = try? g.request.test() }
    }

    /// A free message buffer of one activation or gradient in the wire's format.
    private func message() -> Message {
        gradFree.popLast() ?? Message(count: batch * tokens * model.boundaryWidth, wire: wire)
    }

    private func isend(_ m: Message, to dest: Int, tag: Int, label: String) throws -> Request {
        if let h = m.b16 { return try comm.isend(h, count: m.count, to: dest, tag: tag, label: label) }
        return try comm.isend(m.f32!, count: m.count, to: dest, tag: tag, label: label)
    }

    private func irecv(_ m: Message, from source: Int, tag: Int, label: String) throws -> Request {
        if let h = m.b16 { return try comm.irecv(h, count: m.count, from: source, tag: tag, label: label) }
        return try comm.irecv(m.f32!, count: m.count, from: source, tag: tag, label: label)
    }

    /// Posts the receive an action needs, once: the forward input from the previous virtual stage, or the
    /// output gradient from the next one.
    private func postReceive(for a: PipelineAction) throws {
        let vs = virtualStage(a.chunk), k = key(a.microbatch, a.chunk), n = batch * tokens * model.boundaryWidth
        switch a.kind {
        case .forward:
            guard vs > 0, live[k] == nil else { return }
            let set = acquire(chunk: a.chunk)
            live[k] = set
            let t = tag(a.microbatch, vs, backward: false), label = "pipeline activation mb \(a.microbatch) → stage \(vs)"
            if wire == .fp32 {
                inputRecv[k] = try comm.irecv(set.residual[0], count: n, from: prev, tag: t, label: label)
            } else {
                let m = message()
                inputWire[k] = m
                inputRecv[k] = try irecv(m, from: prev, tag: t, label: label)
            }
        case .backward:
            guard vs < lastVirtualStage, gradRecv[k] == nil else { return }
            let buf = message()
            gradRecv[k] = (buf, try irecv(buf, from: next, tag: tag(a.microbatch, vs, backward: true),
                                          label: "pipeline gradient mb \(a.microbatch) → stage \(vs)"))
        }
    }

    private func waitFor(_ r: Request) throws {
        let t0 = nowNs()
        try r.wait()
        waitNs += nowNs() - t0
    }

    private func forward(_ a: PipelineAction, mode: Mode, gradScale: Float) throws -> Double {
        let vs = virtualStage(a.chunk), k = key(a.microbatch, a.chunk)
        let set: Activations
        if vs > 0 {
            set = live[k]!
            try waitFor(inputRecv.removeValue(forKey: k)!)
            if let m = inputWire.removeValue(forKey: k) {
                m.unpack(into: set.residual[0])
                gradFree.append(m)
            }
        } else {
            set = acquire(chunk: a.chunk)
            live[k] = set
        }
        let t0 = nowNs()
        // Ids for the embeddings, targets for the loss, positions for blocks that rotate by them (RoPE).
        if set.embeds || set.head || model.blocksReadPositions || everyChunkLoads { load(a.microbatch, set) }
        var loss = 0.0
        Timeline.shared.work((mode == .evaluate ? "eval F" : "F") + "\(a.microbatch)" + (plan.virtualStages > 1 ? ".\(a.chunk)" : "")) {
            if set.head {
                loss = mode == .train ? model.forwardLoss(set, gradScale: gradScale) : model.lossSum(set)
            } else {
                model.forwardBody(set, saving: mode == .train)
            }
        }
        let dt = nowNs() - t0
        busyNs += dt; forwardNs += dt
        let t = tag(a.microbatch, vs + 1, backward: false), label = "pipeline activation mb \(a.microbatch) → stage \(vs + 1)"
        if vs < lastVirtualStage, mode == .train, wire == .fp32 {
            outputSends[k] = try comm.isend(set.output, count: batch * tokens * model.boundaryWidth, to: next, tag: t, label: label)
        } else if vs < lastVirtualStage {
            // Evaluation (and a bf16 wire) sends a copy, so a send still in flight does not hold a whole
            // activation set (in evaluation the pool stays at what training needs).
            let buf = message()
            buf.pack(set.output)
            gradSending.append((buf, try isend(buf, to: next, tag: t, label: label)))
        }
        if mode == .evaluate {
            live[k] = nil
            try release(set, chunk: a.chunk, key: k)
        }
        return loss
    }

    private func backward(_ a: PipelineAction) throws {
        let vs = virtualStage(a.chunk), k = key(a.microbatch, a.chunk)
        guard let set = live.removeValue(forKey: k) else {
            preconditionFailure("backward of micro-batch \(a.microbatch) chunk \(a.chunk) before its forward")
        }
        var t0 = nowNs()
        if vs < lastVirtualStage {
            let (buf, r) = gradRecv.removeValue(forKey: k)!
            try waitFor(r)
            t0 = nowNs()
            buf.unpack(into: set.dres)
            gradFree.append(buf)
        }
        Timeline.shared.work("B\(a.microbatch)" + (plan.virtualStages > 1 ? ".\(a.chunk)" : "")) { model.backward(set) }
        defer { let dt = nowNs() - t0; busyNs += dt; backwardNs += dt }
        if vs > 0 {
            let buf = message()
            buf.pack(set.dres)
            gradSending.append((buf, try isend(buf, to: prev, tag: tag(a.microbatch, vs - 1, backward: true),
                                               label: "pipeline gradient mb \(a.microbatch) → stage \(vs - 1)")))
        }
        try release(set, chunk: a.chunk, key: k)
    }

    /// Activation sets each chunk's pool grows to under `actions`, by the engine's rule: a set is taken when
    /// the receive of a forward's input is posted (one action ahead) or its forward starts, and returned after
    /// its backward (a set whose output send is still in flight when it is returned would add one more).
    /// `receives(chunk)`: the chunk's forward input comes from another stage.
    public static func predictedSets(actions: [PipelineAction], chunks: Int, receives: (Int) -> Bool) -> [Int] {
        var alive = Array(repeating: 0, count: chunks), peak = alive
        var taken = Set<Int>()
        func take(_ a: PipelineAction) {
            guard a.kind == .forward, taken.insert(a.microbatch * chunks + a.chunk).inserted else { return }
            alive[a.chunk] += 1; peak[a.chunk] = max(peak[a.chunk], alive[a.chunk])
        }
        for (i, a) in actions.enumerated() {
            take(a)  // at its forward, if its receive has not taken it already
            if i + 1 < actions.count, receives(actions[i + 1].chunk) { take(actions[i + 1]) }
            if a.kind == .backward { alive[a.chunk] -= 1 }
        }
        return peak
    }

    /// The forward-only actions of an evaluation pass: every micro-batch through every chunk in order.
    public static func evaluationActions(microbatches m: Int, chunks v: Int) -> [PipelineAction] {
        (0..<m).flatMap { mb in (0..<v).map { PipelineAction(.forward, microbatch: mb, chunk: $0) } }
    }
}

/// One message between stages: `count` floats, or `count` bf16 values on a bf16 wire.
final class Message {
    let count: Int
    let f32: UnsafeMutablePointer<Float>?, b16: UnsafeMutablePointer<UInt16>?

    init(count: Int, wire: Precision) {
        self.count = count
        f32 = wire == .fp32 ? .allocate(capacity: count) : nil
        b16 = wire == .bf16 ? .allocate(capacity: count) : nil
    }
    deinit { f32?.deallocate(); b16?.deallocate() }

    /// Fills the message from n floats (narrowed to bf16 on a bf16 wire).
    func pack(_ src: UnsafePointer<Float>) {
        if let h = b16 { BF16.narrow(src, into: h, count: count) } else { f32!.update(from: src, count: count) }
    }

    /// Writes the message's values as floats.
    func unpack(into dst: UnsafeMutablePointer<Float>) {
        if let h = b16 { BF16.widen(h, into: dst, count: count) } else { dst.update(from: f32!, count: count) }
    }
}
