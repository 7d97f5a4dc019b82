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
// Sync mode writes, gathers the shard records to rank 0, commits and synchronises before training goes on.
// Lazy mode hands the copy and the write to each rank's `ShardWriter` thread and goes on; the next optimizer
// step waits for the copy only. At each step end after that, the ranks agree (one allreduce) whether every
// file is written; then rank 0 gathers the records and queues the commit behind its own write.

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

final class Checkpointer {
    let root: String, keep: Int, lazy: Bool
    /// rank 0: the second level (`checkpoint.persist_dir`, nil = off), copied to on its own thread.
    let persistRoot: String?
    private let persister = JobQueue()
    let rank: Int
    let world: Communicator?
    let writer: ShardWriter
    /// Pieces copied before the optimizer may update segment k.
    let needed: [Int]
    let tensors: [CheckpointManifest.Tensor]
    let mesh: [String: Int]
    let configText: String
    /// Completed checkpoints, in order (rank 0 fills `durableSeconds`).
    private(set) var events: [CheckpointEvent] = []
    private var pending: (step: Int, t0: UInt64, blockedNs: UInt64, state: [String: String])?
    /// rank 0: durable times of commits done on the writer thread, by step (guarded by `lock`).
    private let lock = NSLock()
    private var durable: [Int: Double] = [:]
    private var unreported: [CheckpointEvent] = []

    init(root: String, persistRoot: String?, keep: Int, lazy: Bool, rank: Int, world: Communicator?,
         sources: (sources: [ShardWriter.Source], needed: [Int]),
         tensors: [CheckpointManifest.Tensor], mesh: [String: Int], configText: String) {
        self.root = root; self.persistRoot = persistRoot; self.keep = keep; self.lazy = lazy; self.rank = rank; self.world = world
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

    /// Saves the state after step `step`'s optimizer step (a collective over the world).
    func save(step: Int, state: [String: String]) throws {
        let t0 = DispatchTime.now().uptimeNanoseconds
        if pending != nil { try complete(waitForWrite: true) }
        if lazy {
            writer.begin(root: root, step: step)
            pending = (step, t0, DispatchTime.now().uptimeNanoseconds - t0, state)
            return
        }
        let records = try writer.writeNow(root: root, step: step)
        let (all, _) = try gather(records, blockedNs: 0)
        var path = ""
        if rank == 0 { path = try CheckpointStore.commit(root: root, manifest: manifest(step: step, shards: all, state: state), keep: keep) }
        try world?.barrier(label: "checkpoint commit")
        let dt = Double(DispatchTime.now().uptimeNanoseconds - t0) / 1e9
        let e = CheckpointEvent(step: step, mode: "sync", path: path, blockedSeconds: dt, durableSeconds: dt,
                                bytes: all.reduce(0) { $0 + 4 * $1.count })
        events.append(e)
        if rank == 0 { persistOrReport(e, start: t0) }
    }

    /// rank 0, once checkpoint `e` is committed: queues its copy to the second level (reported when done),
    /// or reports it now.
    private func persistOrReport(_ e: CheckpointEvent, start: UInt64) {
        guard let persistRoot else { lock.lock(); unreported.append(e); lock.unlock(); return }
        let keep = keep
        persister.enqueue { [self] in
            var e = e
            e.persistedPath = try CheckpointStore.persist(checkpoint: e.path, to: persistRoot, keep: keep)
            e.persistedSeconds = Double(DispatchTime.now().uptimeNanoseconds - start) / 1e9
            lock.lock(); unreported.append(e); lock.unlock()
        }
    }

    /// Before the optimizer updates segment k: waits until the lazy save in flight has copied it (and every
    /// piece before it).
    func waitCopied(segment k: Int) throws {
        guard pending != nil else { return }
        pending!.blockedNs += try writer.waitCopied(count: needed[k])
    }

    /// At a step end while a lazy save is in flight (a collective): when every rank's file is written, rank 0
    /// queues the commit. `waitForWrite` blocks until then (the end of the run, a stop, the next save).
    func complete(waitForWrite: Bool) throws {
        guard let p = pending else { return }
        let t0 = DispatchTime.now().uptimeNanoseconds
        if waitForWrite { try writer.drain() }
        var mine = try writer.writtenRecords()
        if let world {
            let all = try world.allreduce(Int32(mine == nil ? 0 : 1), op: .min, label: "checkpoint written")
            if all == 0 { pending!.blockedNs += DispatchTime.now().uptimeNanoseconds - t0; return }
        } else if mine == nil { return }
        if mine == nil { mine = [] }
        let blocked = p.blockedNs + (DispatchTime.now().uptimeNanoseconds - t0)
        let (shards, blockedMax) = try gather(mine!, blockedNs: blocked)
        pending = nil
        var e = CheckpointEvent(step: p.step, mode: "lazy", path: root + "/" + CheckpointStore.name(step: p.step),
                                blockedSeconds: Double(blockedMax) / 1e9, durableSeconds: 0,
                                bytes: shards.reduce(0) { $0 + 4 * $1.count })
        events.append(e)
        guard rank == 0 else { return }
        let manifest = manifest(step: p.step, shards: shards, state: p.state)
        let root = root, keep = keep, start = p.t0
        writer.enqueue { [self] in
            try CheckpointStore.commit(root: root, manifest: manifest, keep: keep)
            e.durableSeconds = Double(DispatchTime.now().uptimeNanoseconds - start) / 1e9
            lock.lock(); durable[e.step] = e.durableSeconds; lock.unlock()
            persistOrReport(e, start: start)
        }
    }

    /// End of the run or a stop: the save in flight becomes durable before this returns (a collective).
    func finish() throws {
        try complete(waitForWrite: true)
        try writer.drain()
        try persister.drain()
        for i in events.indices { lock.lock(); if let d = durable[events[i].step] { events[i].durableSeconds = d }; lock.unlock() }
    }

    /// rank 0: checkpoints that became durable since the last call.
    func takeReported() -> [CheckpointEvent] {
        lock.lock(); defer { lock.unlock() }
        let r = unreported
        unreported = []
        return r
    }

    /// Every rank's shard records (and the longest blocked time) on every rank.
    private func gather(_ records: [CheckpointManifest.Shard], blockedNs: UInt64) throws -> ([CheckpointManifest.Shard], UInt64) {
        guard let world, world.size > 1 else { return (records, blockedNs) }
        let mine = [UInt8](try JSONEncoder().encode(records))
        var counts = [Int64](repeating: 0, count: world.size)
        var me = Int64(mine.count)
        try withUnsafeMutablePointer(to: &me) { m in
            try counts.withUnsafeMutableBufferPointer { try world.allgather(send: m, recv: $0.baseAddress!, count: 1, label: "checkpoint records") }
        }
        let sizes = counts.map { Int($0) }
        var displacements = [0]
        for c in sizes.dropLast() { displacements.append(displacements.last! + c) }
        var bytes = [UInt8](repeating: 0, count: sizes.reduce(0, +))
        try mine.withUnsafeBufferPointer { m in
            try bytes.withUnsafeMutableBufferPointer {
                try world.allgather(send: m.baseAddress!, count: mine.count, recv: $0.baseAddress!, counts: sizes,
                                    displacements: displacements, label: "checkpoint records")
            }
        }
        var all: [CheckpointManifest.Shard] = []
        for r in 0..<world.size {
            let d = Data(bytes[displacements[r]..<(displacements[r] + sizes[r])])
            all += try JSONDecoder().decode([CheckpointManifest.Shard].self, from: d)
        }
        let blockedMax = try world.allreduce(Int64(blockedNs), op: .max, label: "checkpoint blocked time")
        return (all, UInt64(blockedMax))
    }

    private func manifest(step: Int, shards: [CheckpointManifest.Shard], state: [String: String]) -> CheckpointManifest {
        CheckpointManifest(step: step, tensors: tensors, shards: shards, mesh: mesh, config: configText, state: state)
    }

    // MARK: restoring

    /// Checks that the checkpoint holds exactly this model's tensors with the same shapes (an error here is
    /// the config's, so resuming does not fall back to an older checkpoint).
    static func checkCompatible(_ m: CheckpointManifest, path: String, globalSpecs: [ParameterSpec], describeModel: String) throws {
        let saved = Set(m.tensors.map(\.name)), wanted = Set(globalSpecs.map(\.name))
        if saved != wanted {
            let missing = wanted.subtracting(saved).sorted(), extra = saved.subtracting(wanted).sorted()
            var s = "checkpoint \(path) holds \(m.tensors.count) tensors and this config's model (\(describeModel)) has \(globalSpecs.count)"
            if let x = missing.first { s += "; not in the checkpoint: '\(x)'" + (missing.count > 1 ? " and \(missing.count - 1) more" : "") }
            if let x = extra.first { s += "; not in this model: '\(x)'" + (extra.count > 1 ? " and \(extra.count - 1) more" : "") }
            throw CheckpointIncompatible(description: s)
        }
        for spec in globalSpecs {
            let t = m.tensor(spec.name)!
            guard t.shape == spec.shape else {
                throw CheckpointIncompatible(description: "checkpoint \(path): tensor '\(spec.name)' has shape \(t.shape) there, but this "
                                             + "config's model (\(describeModel)) expects \(spec.shape)")
            }
            guard t.dtype == "F32" else { throw CheckpointIncompatible(description: "checkpoint \(path): tensor '\(spec.name)' is \(t.dtype), expected F32") }
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
