// Saving and restoring training state through TesseraCheckpoint, for any layout.
//
// What a rank writes: the pieces of parameters and AdamW moments its optimizer updates. Without ZeRO that
// is its stage's whole tensors, written by one rank of each group of replicas (data × sequence peers hold
// copies); under ZeRO-1 every replica writes the piece of the flat storage it owns, split at tensor
// boundaries. The last pipeline stage's copy of the tied token embedding is not written (the first stage's
// is identical). Every global element is therefore written exactly once, and any other layout reads the
// elements it needs from whichever shards overlap them.
//
// When: after the optimizer step of every `checkpoint.every`-th step, the last step, and a stop signal.
// Sync mode writes, gathers the shard records, commits (rank 0) and synchronises before training goes on.
// Lazy mode hands the copy, the write, the exchange of records (the writer threads' own communicator) and
// rank 0's commit to each rank's `ShardWriter` thread and goes on; the next optimizer step waits, segment
// by segment, only for pieces not copied yet. A step later the ranks agree on the longest blocked time.

import Foundation
import TesseraCheckpoint
import TesseraComm
import TesseraKernels
import TesseraModel

/// One checkpoint's figures: the time training was blocked (the longest over ranks), the time from the end
/// of its optimizer step to durable (rank 0, after the commit's renames and fsyncs), and the bytes written.
public struct CheckpointEvent: Sendable {
    public var step: Int, mode: String, path: String
    public var blockedSeconds: Double, durableSeconds: Double, bytes: Int
    /// The copy in `checkpoint.persist_dir` and when it was complete (from the end of its optimizer step).
    public var persistedPath: String? = nil, persistedSeconds: Double? = nil
}

public final class Checkpointer {
    let root: String, keep: Int, lazy: Bool
    /// rank 0: the second level (`checkpoint.persist_dir`, nil = off), copied to on its own thread.
    let persistRoot: String?
    private let persister = JobQueue()
    /// CPU seconds this rank's checkpoint threads (writer and second-level copier) have used.
    package var backgroundCPUSeconds: Double { writer.cpuSeconds + persister.cpuSeconds }
    let rank: Int
    let world: Communicator?
    let writer: ShardWriter
    /// Pieces copied before the optimizer may update segment k.
    let needed: [Int]
    let tensors: [CheckpointManifest.Tensor]
    let mesh: [String: Int]
    let configText: String
    /// Checkpoints whose figures are all known, in order.
    private(set) var events: [CheckpointEvent] = []
    /// The lazy save whose blocked time still grows: until the optimizer step after it has run.
    private var pending: (step: Int, blockedNs: UInt64)?
    /// Longest blocked time over ranks, by step (main thread).
    private var blocked: [Int: Double] = [:]
    /// Filled by the writer threads, guarded by `lock`: commit figures (every rank learns the bytes; rank 0
    /// the time to durable) and rank 0's copies to the second level.
    private let lock = NSLock()
    private var committed: [Int: (path: String, seconds: Double, bytes: Int)] = [:]
    private var persisted: [Int: (path: String, seconds: Double)] = [:]
    /// The communicator of the writer threads' gathers (nil: one rank).
    let background: Communicator?

    init(root: String, persistRoot: String?, keep: Int, lazy: Bool, rank: Int, world: Communicator?, background: Communicator?,
         sources: (sources: [ShardWriter.Source], needed: [Int]),
         tensors: [CheckpointManifest.Tensor], mesh: [String: Int], configText: String) {
        self.root = root; self.persistRoot = persistRoot; self.keep = keep; self.lazy = lazy; self.rank = rank; self.world = world
        self.background = background
        writer = ShardWriter(sources: sources.sources, rank: rank)
        needed = sources.needed
        self.tensors = tensors; self.mesh = mesh; self.configText = configText
    }

    /// The pieces this rank writes: its optimizer's segments of parameters and both moments, in segment order,
    /// or nothing when another replica writes the same pieces (`writes` false). `skip`: tensors another stage
    /// writes. `needed[k]`: how many pieces must be copied before the optimizer may update segment k.
    static func sources(params: ParameterSet, optimizer: AdamWOptimizer, writes: Bool, skip: Set<String>)
        -> (sources: [ShardWriter.Source], needed: [Int]) {
        var out: [ShardWriter.Source] = [], needed: [Int] = []
        for s in optimizer.segments {
            let i = tensorIndex(params, offset: s.param), spec = params.specs[i]
            if writes && !skip.contains(spec.name) {
                let start = s.param - params.offsets[i]
                out.append(.init(tensor: spec.name, kind: "param", start: start, count: s.count, pointer: params.storage.ptr + s.param))
                out.append(.init(tensor: spec.name, kind: "exp_avg", start: start, count: s.count, pointer: optimizer.m.ptr + s.state))
                out.append(.init(tensor: spec.name, kind: "exp_avg_sq", start: start, count: s.count, pointer: optimizer.v.ptr + s.state))
            }
            needed.append(out.count)
        }
        return (out, needed)
    }

    /// The tensor whose storage holds flat offset `offset`.
    static func tensorIndex(_ params: ParameterSet, offset: Int) -> Int {
        var lo = 0, hi = params.offsets.count - 1
        while lo < hi {
            let mid = (lo + hi + 1) / 2
            if params.offsets[mid] <= offset { lo = mid } else { hi = mid - 1 }
        }
        return lo
    }

    var isPending: Bool { pending != nil }

    /// Saves the state after step `step`'s optimizer step (every rank calls it at the same step).
    func save(step: Int, state: [String: String]) throws {
        let t0 = DispatchTime.now().uptimeNanoseconds
        try settle()
        let name = CheckpointStore.name(step: step)
        guard lazy else {
            let records = try writer.writeNow(root: root, step: step)
            let all = try Self.gather(.success(records), step: step, over: world)
            if rank == 0 { try CheckpointStore.commit(root: root, manifest: manifest(step: step, shards: all, state: state), keep: keep) }
            try world?.barrier(label: "checkpoint commit")
            let dt = Double(DispatchTime.now().uptimeNanoseconds - t0) / 1e9
            blocked[step] = try longest(dt)
            didCommit(step: step, path: root + "/" + name, seconds: dt, bytes: all.reduce(0) { $0 + 4 * $1.count }, start: t0)
            return
        }
        // Lazy: the writer thread copies and writes this rank's shards, then the writer threads gather the
        // records (their own communicator) and rank 0 commits, all behind training.
        let comm = background, root = root, keep = keep, rank = rank
        let manifest = { [self] (shards: [CheckpointManifest.Shard]) in self.manifest(step: step, shards: shards, state: state) }
        writer.begin(root: root, step: step) { [self] written in
            // Every rank takes part, a failed one too: nothing is committed unless all wrote this step.
            let all = try Self.gather(written, step: step, over: comm)
            if rank == 0 { try CheckpointStore.commit(root: root, manifest: manifest(all), keep: keep) }
            didCommit(step: step, path: root + "/" + name, seconds: Double(DispatchTime.now().uptimeNanoseconds - t0) / 1e9,
                      bytes: all.reduce(0) { $0 + 4 * $1.count }, start: t0)
        }
        pending = (step, DispatchTime.now().uptimeNanoseconds - t0)
    }

    /// Records a commit (any thread); rank 0 queues the copy to the second level.
    private func didCommit(step: Int, path: String, seconds: Double, bytes: Int, start: UInt64) {
        lock.lock(); committed[step] = (path, seconds, bytes); lock.unlock()
        guard rank == 0, let persistRoot else { return }
        let keep = keep
        persister.enqueue { [self] in
            // A failed copy to the second level is reported, not fatal: the checkpoint itself is committed.
            var copy: String
            do { copy = try CheckpointStore.persist(checkpoint: path, to: persistRoot, keep: keep) } catch {
                copy = "nowhere (the copy to checkpoint.persist_dir failed: \(error))"
            }
            let dt = Double(DispatchTime.now().uptimeNanoseconds - start) / 1e9
            lock.lock(); persisted[step] = (copy, dt); lock.unlock()
        }
    }

    /// Before the optimizer updates segment k: waits until the lazy save in flight has copied it (and every
    /// piece before it).
    func waitCopied(segment k: Int) throws {
        guard pending != nil else { return }
        pending!.blockedNs += try writer.waitCopied(count: needed[k])
    }

    /// Once the optimizer step after a lazy save has run, its blocked time is final: the ranks agree on the
    /// longest (a collective; every rank has the same save pending). Also reports a writer thread's failure.
    func settle() throws {
        try writer.check()
        guard pending != nil else { return }
        // A step whose update was skipped (non-finite) waited for no segment: the save's copy must still be
        // complete before the next update may change what it copies (a no-op after an update).
        pending!.blockedNs += try writer.waitCopied(count: needed.last ?? 0)
        let p = pending!
        pending = nil
        blocked[p.step] = try longest(Double(p.blockedNs) / 1e9)
    }

    /// End of the run or a stop: every save becomes durable (and copied) before this returns.
    package func finish() throws {
        try settle()
        try writer.drain()
        try persister.drain()
    }

    /// Checkpoints whose figures became known since the last call (every rank; rank 0 logs them). On rank 0 a
    /// checkpoint with a second level waits for its copy.
    package func collect() -> [CheckpointEvent] {
        var out: [CheckpointEvent] = []
        lock.lock()
        for step in blocked.keys.sorted() {
            guard let c = committed[step] else { continue }
            let copy = persisted[step]
            if rank == 0 && persistRoot != nil && copy == nil { continue }
            out.append(CheckpointEvent(step: step, mode: lazy ? "lazy" : "sync", path: c.path, blockedSeconds: blocked[step]!,
                                       durableSeconds: c.seconds, bytes: c.bytes, persistedPath: copy?.path,
                                       persistedSeconds: copy?.seconds))
            blocked[step] = nil
        }
        lock.unlock()
        events += out
        return out
    }

    private func longest(_ seconds: Double) throws -> Double {
        guard let world, world.size > 1 else { return seconds }
        return try world.allreduce(seconds, op: .max, label: "checkpoint blocked time")
    }

    /// What each rank contributes to a checkpoint's exchange: its step, whether it wrote, its shard records.
    struct Contribution: Codable { var step: Int, rank: Int, error: String?, shards: [CheckpointManifest.Shard] }

    /// Every rank's shard records for `step` on every rank (an allgather of their JSON over `comm`). Throws,
    /// on every rank, if any rank failed to write or contributed another step: nothing is then committed.
    private static func gather(_ written: Result<[CheckpointManifest.Shard], Error>, step: Int,
                               over comm: Communicator?) throws -> [CheckpointManifest.Shard] {
        var me = Contribution(step: step, rank: comm?.rank ?? 0, error: nil, shards: [])
        switch written {
        case .success(let r): me.shards = r
        case .failure(let e): me.error = "\(e)"
        }
        var all = [me]
        if let comm, comm.size > 1 {
            // A blocking collective spins while it waits for a slower rank's write, taking a core from training:
            // wait for every rank's arrival with a polled non-blocking barrier first, sleeping between polls.
            try comm.ibarrier(label: "checkpoint records").sleepWait(pollMicroseconds: 500, watched: false)
            let mine = [UInt8](try JSONEncoder().encode(me))
            var counts = [Int64](repeating: 0, count: comm.size)
            var n = Int64(mine.count)
            try withUnsafeMutablePointer(to: &n) { m in
                try counts.withUnsafeMutableBufferPointer { try comm.allgather(send: m, recv: $0.baseAddress!, count: 1, label: "checkpoint records") }
            }
            let sizes = counts.map { Int($0) }
            var displacements = [0]
            for c in sizes.dropLast() { displacements.append(displacements.last! + c) }
            var bytes = [UInt8](repeating: 0, count: sizes.reduce(0, +))
            try mine.withUnsafeBufferPointer { m in
                try bytes.withUnsafeMutableBufferPointer {
                    try comm.allgather(send: m.baseAddress!, count: mine.count, recv: $0.baseAddress!, counts: sizes,
                                       displacements: displacements, label: "checkpoint records")
                }
            }
            all = try (0..<comm.size).map {
                try JSONDecoder().decode(Contribution.self, from: Data(bytes[displacements[$0]..<(displacements[$0] + sizes[$0])]))
            }
        }
        if let bad = all.first(where: { $0.error != nil || $0.step != step }) {
            throw CheckpointError("checkpoint step \(step) not committed: rank \(bad.rank) "
                                  + (bad.error.map { "failed to write its shards: \($0)" } ?? "sent step \(bad.step)'s records"))
        }
        return all.flatMap(\.shards)
    }

    private func manifest(step: Int, shards: [CheckpointManifest.Shard], state: [String: String]) -> CheckpointManifest {
        CheckpointManifest(step: step, tensors: tensors, shards: shards, mesh: mesh, config: configText, state: state)
    }

    // MARK: restoring

    /// Checks that the checkpoint holds exactly this config's tensors with the same shapes (an error here is
    /// the config's, so resuming does not fall back to an older checkpoint).
    static func checkCompatible(_ m: CheckpointManifest, path: String, config: TesseraConfig) throws {
        let problems = CheckpointModel.tensorProblems(m, specs: ModelParameters.specs(config.transformer), model: "this config's model")
        guard problems.isEmpty else {
            throw CheckpointIncompatible(description: "checkpoint \(path) does not fit this config's model (\(CheckpointModel.describe(config.model))):\n  "
                                         + problems.prefix(5).joined(separator: "\n  ") + (problems.count > 5 ? "\n  … \(problems.count - 5) more" : ""))
        }
    }

    /// Fills this rank's parameters (whole tensors of its stage) and optimizer moments (its segments) from
    /// `reader`, each element from whichever saved shards hold it (checksums checked on first use).
    static func restore(from reader: CheckpointReader, params: ParameterSet, optimizer: AdamWOptimizer) throws {
        for (i, spec) in params.specs.enumerated() {
            try reader.read(tensor: spec.name, kind: "param", range: 0..<spec.count, into: params.pointer(i))
        }
        for s in optimizer.segments {
            let i = tensorIndex(params, offset: s.param), name = params.specs[i].name
            let r = (s.param - params.offsets[i])..<(s.param - params.offsets[i] + s.count)
            try reader.read(tensor: name, kind: "exp_avg", range: r, into: optimizer.m.ptr + s.state)
            try reader.read(tensor: name, kind: "exp_avg_sq", range: r, into: optimizer.v.ptr + s.state)
        }
    }
}

/// A checkpoint that does not fit this config's model.
struct CheckpointIncompatible: Error, CustomStringConvertible { let description: String }
