// One rank's writer of its checkpoint shards, synchronous or lazy (after DataStates-LLM).
//
// Lazy: parameters and optimizer state do not change between one optimizer step and the next, so a save
// taken right after an optimizer step only has to be *copied* before the next one. `begin` queues a job on
// the writer's own thread that copies every source tensor into a host staging buffer (publishing how many
// are done), then writes the staged bytes to the step's temporary directory and fsyncs. Training goes on
// meanwhile. The next optimizer step calls `waitCopied(count:)` before it updates each piece, so it blocks
// only for pieces not copied yet (sources are copied in the optimizer's order). Jobs run first in, first
// out on one thread, so a later save never overtakes an earlier one, and the staging buffer is never
// overwritten while it is written.
//
// Sync: `writeNow` writes straight from the live tensors on the calling thread (the baseline).

import Foundation

public final class ShardWriter: @unchecked Sendable {
    /// A tensor piece this rank saves: elements start..<start+count of `kind` of `tensor`, read from `pointer`.
    public struct Source {
        public let tensor: String, kind: String, start: Int, count: Int
        public let pointer: UnsafePointer<Float>
        public init(tensor: String, kind: String, start: Int, count: Int, pointer: UnsafePointer<Float>) {
            self.tensor = tensor; self.kind = kind; self.start = start; self.count = count; self.pointer = pointer
        }
    }

    public let sources: [Source]
    public let rank: Int
    /// Floats this rank saves per checkpoint.
    public let floats: Int
    private var staging: UnsafeMutablePointer<Float>?
    private let q = JobQueue()
    /// Debugging (tests of the per-segment wait): the writer thread sleeps this long before copying each piece.
    public var copyDelayMicroseconds: UInt32 = 0

    public init(sources: [Source], rank: Int) {
        self.sources = sources; self.rank = rank
        floats = sources.reduce(0) { $0 + $1.count }
    }

    deinit {
        q.stop()
        staging?.deallocate()
    }

    /// Sync: writes every source to `root`'s temporary directory for `step` from the live tensors, now.
    public func writeNow(root: String, step: Int) throws -> [CheckpointManifest.Shard] {
        if sources.isEmpty { return [] }
        return try CheckpointStore.writeShards(root: root, step: step, rank: rank, pieces: sources.map {
            .init(tensor: $0.tensor, kind: $0.kind, start: $0.start, values: UnsafeBufferPointer(start: $0.pointer, count: $0.count))
        })
    }

    /// Lazy: queues the copy into staging and the write of `step`'s shards, then `then` with their records or
    /// the write's failure (on the writer thread; `then` runs either way, so that a rank whose write failed
    /// still takes part in the exchange with the other ranks). The failure is also kept for `check`. The
    /// sources must not change until `waitCopied` says they are copied.
    public func begin(root: String, step: Int, then: @escaping (Result<[CheckpointManifest.Shard], Error>) throws -> Void) {
        if staging == nil { staging = .allocate(capacity: max(floats, 1)) }
        let stage = staging!, sources = sources, rank = rank, q = q, delay = copyDelayMicroseconds
        q.cond.lock()
        q.copied = 0; q.copyTarget = sources.count
        q.cond.unlock()
        q.enqueue {
            guard !sources.isEmpty else { return try then(.success([])) }  // another replica writes this rank's pieces
            var at = 0
            var pieces: [CheckpointStore.Piece] = []
            pieces.reserveCapacity(sources.count)
            for (i, s) in sources.enumerated() {
                if delay > 0 { usleep(delay) }
                (stage + at).update(from: s.pointer, count: s.count)
                pieces.append(.init(tensor: s.tensor, kind: s.kind, start: s.start,
                                    values: UnsafeBufferPointer(start: stage + at, count: s.count)))
                at += s.count
                q.cond.lock(); q.copied = i + 1; q.cond.broadcast(); q.cond.unlock()
            }
            let result = Result { try CheckpointStore.writeShards(root: root, step: step, rank: rank, pieces: pieces) }
            if case .failure(let e) = result { q.fail("\(e)") }
            try then(result)
        }
    }

    /// Blocks until the first `count` sources (all when nil) of the save in flight are copied: they may change
    /// after it. Sources are copied in order. Returns the nanoseconds blocked; throws the writer's failure.
    @discardableResult
    public func waitCopied(count: Int? = nil) throws -> UInt64 {
        q.cond.lock(); defer { q.cond.unlock() }
        var blocked: UInt64 = 0
        let target = min(count ?? q.copyTarget, q.copyTarget)
        if q.copied < target && q.failure == nil {
            let t0 = DispatchTime.now().uptimeNanoseconds
            while q.copied < target && q.failure == nil { q.cond.wait() }
            blocked = DispatchTime.now().uptimeNanoseconds - t0
        }
        if let f = q.failure { throw CheckpointError("rank \(rank): \(f)") }
        return blocked
    }

    /// CPU seconds the writer thread has used (copies, checksums, writes, exchanges, commits).
    public var cpuSeconds: Double { q.cpuSeconds }

    /// Throws the failure of a job that has run, if any (it does not wait).
    public func check() throws {
        q.cond.lock(); defer { q.cond.unlock() }
        if let f = q.failure { throw CheckpointError("rank \(rank): \(f)") }
    }

    /// Blocks until every queued job has run; throws the first failure.
    public func drain() throws {
        do { try q.drain() } catch { throw CheckpointError("rank \(rank): \(error)") }
    }
}

/// Jobs run in order on one thread. The thread holds this, not its owner, so the owner's deinit stops it.
/// Everything is guarded by `cond`.
public final class JobQueue: @unchecked Sendable {
    let cond = NSCondition()
    var queue: [(id: Int, job: () throws -> Void)] = []
    var nextID = 0, finished = 0
    var copied = 0, copyTarget = 0
    /// CPU time the thread spent running jobs (what it takes from training when every core computes).
    public private(set) var cpuNs: UInt64 = 0
    var failure: String?
    private var stopping = false, stopped = false, started = false

    public init() {}
    deinit { stop() }

    /// Queues `job`; a failure is kept (the first one) for `drain` to report.
    public func enqueue(_ job: @escaping () throws -> Void) {
        cond.lock()
        if !started {
            started = true
            let t = Thread { [self] in run() }
            t.name = "tessera-checkpoint"
            t.stackSize = 1 << 20
            t.start()
        }
        nextID += 1
        queue.append((nextID, job))
        cond.broadcast()
        cond.unlock()
    }

    private func run() {
        cond.lock()
        while true {
            while queue.isEmpty && !stopping { cond.wait() }
            if queue.isEmpty { break }
            let (id, job) = queue.removeFirst()
            cond.unlock()
            let c0 = Self.threadCPUTime()
            var message: String?
            do { try job() } catch { message = "\(error)" }
            let used = Self.threadCPUTime() - c0
            cond.lock()
            cpuNs += used
            if let message, failure == nil { failure = message }
            finished = id
            cond.broadcast()
        }
        stopped = true
        cond.broadcast()
        cond.unlock()
    }

    /// Keeps the first failure (reported by `drain` and the writer's waits).
    func fail(_ message: String) {
        cond.lock(); if failure == nil { failure = message }; cond.unlock()
    }

    /// Blocks until every queued job has run; throws the first failure.
    public func drain() throws {
        cond.lock(); defer { cond.unlock() }
        while finished < nextID { cond.wait() }
        if let f = failure { throw CheckpointError(f) }
    }

    /// CPU time of the jobs run so far (guarded by `cond`).
    public var cpuSeconds: Double { cond.lock(); defer { cond.unlock() }; return Double(cpuNs) / 1e9 }

    static func threadCPUTime() -> UInt64 {
        var ts = timespec()
        clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts)
        return UInt64(ts.tv_sec) * 1_000_000_000 + UInt64(ts.tv_nsec)
    }

    /// Runs what is queued, then ends the thread.
    func stop() {
        cond.lock()
        stopping = true
        cond.broadcast()
        while started && !stopped { cond.wait() }
        cond.unlock()
    }
}
