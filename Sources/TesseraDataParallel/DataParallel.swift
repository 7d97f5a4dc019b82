// Data parallelism: every replica computes gradients on its slice of the global batch, and the
// gradients are summed across replicas (each token's loss already carries 1 / global tokens, so the
// sum is the global mean; nothing is divided here).
//
// The gradient storage is cut into buckets: contiguous ranges, whole tensors, at least `bucketBytes`,
// taken from the end of storage because the backward pass finishes the last tensors (ln_f, the last
// block) first. During the backward pass of the last micro-batch the model reports which gradients are
// final (`gradientsFinal(from:)`); every bucket that lies wholly in the final part starts its
// non-blocking reduction at once, and later reports poll the requests so MPI keeps them moving while
// the rest of the backward pass computes. `finish()` starts what is left and waits.
//
// Without ZeRO a bucket is an in-place allreduce. With ZeRO-1 each rank owns one contiguous partition
// of the flat storage (AdamW moments exist only for it); a bucket is a reduce-scatter whose piece for
// rank r is the bucket's overlap with r's partition, landing in this rank's gradient shard. After the
// optimizer step `allgatherParameters()` gives every rank the updated model.

import TesseraComm
import TesseraModel
import TesseraTimeline
import TesseraKernels

public final class DataParallel: BackwardObserver {
    public let group: Communicator
    public let storageCount: Int
    /// Bucket ranges of the flat storage, in the order they start.
    public let buckets: [Range<Int>]
    public let zero: Bool
    /// ZeRO-1: the storage partition each rank of `group` owns (16-float aligned).
    public let partitions: [Range<Int>]
    /// ZeRO-1: this rank's reduced gradients for its partition.
    public let gradShard: FloatBuffer?
    let grads: UnsafeMutablePointer<Float>
    /// Reduce during the current backward pass (true only for a step's last micro-batch).
    public var active = false
    /// The step, for request labels in traces and watchdog messages.
    public var step = 0
    private var requests: [Request] = []
    private var launched = 0
    /// Buckets reaching below this storage offset wait for `beforeHeld` (pipeline parallelism: the tied
    /// token embedding's gradient is first summed between the first and last stage).
    public var holdBelow = 0
    public var beforeHeld: (() throws -> Void)?
    private var heldDone = false

    /// Statistics of the last `finish()`.
    public private(set) var lastWaitNs: UInt64 = 0

    public init(group: Communicator, params: ParameterSet, grads: ParameterSet, bucketBytes: Int, zero: Bool) {
        self.group = group
        self.zero = zero
        self.grads = grads.storage.ptr
        let storageCount = params.count
        self.storageCount = storageCount
        // Buckets: walk tensors from the last, close a bucket once it holds bucketBytes.
        var bounds: [Int] = [], size = 0, end = params.count
        for i in stride(from: params.specs.count - 1, through: 0, by: -1) {
            size += params.count(forTensor: i) * 4
            if size >= bucketBytes || i == 0 {
                bounds.append(params.offsets[i]); size = 0
            }
        }
        var b: [Range<Int>] = []
        for lo in bounds { b.append(lo..<end); end = lo }
        buckets = b
        let n = group.size
        if zero {
            // Equal partitions, aligned to 16 floats; the last takes the remainder.
            let per = (storageCount + n - 1) / n
            let aligned = (per + 15) / 16 * 16
            partitions = (0..<n).map { r in min(r * aligned, storageCount)..<min((r + 1) * aligned, storageCount) }
            gradShard = FloatBuffer(partitions[group.rank].count)
        } else {
            partitions = [0..<storageCount]
            gradShard = nil
        }
    }

    /// The range of storage this rank's optimizer updates.
    public var ownedRange: Range<Int> { zero ? partitions[group.rank] : 0..<storageCount }
    /// Where the optimizer reads reduced gradients (state layout of `ownedRange`).
    public var reducedGradients: UnsafeMutablePointer<Float> { gradShard?.ptr ?? grads }

    /// Call before the backward pass of a step's last micro-batch.
    public func beginReduction(step: Int) {
        self.step = step; active = true; launched = 0; heldDone = false; requests.removeAll(keepingCapacity: true)
    }

    // MARK: BackwardObserver

    public func gradientsFinal(from offset: Int) {
        guard active else { return }
        orAbort {
            while launched < buckets.count && buckets[launched].lowerBound >= offset
                    && buckets[launched].lowerBound >= holdBelow {
                try launch(launched); launched += 1
            }
            try Request.testAll(requests)  // drive progress of buckets in flight
        }
    }

    /// ZeRO-1: how much of bucket r goes to each rank (its overlap with the rank's partition), and where this
    /// rank's piece lands in its gradient shard.
    func scatterPieces(_ r: Range<Int>) -> (counts: [Int], at: Int) {
        let counts = partitions.map { p in max(0, min(p.upperBound, r.upperBound) - max(p.lowerBound, r.lowerBound)) }
        let mine = partitions[group.rank]
        return (counts, min(max(0, max(mine.lowerBound, r.lowerBound) - mine.lowerBound), mine.count))
    }

    private func launch(_ k: Int) throws {
        let r = buckets[k]
        let label = "\(zero ? "reduce-scatter" : "allreduce") grad bucket \(k) (\(r.count * 4 / 1024) KiB)"
        if zero {
            let (counts, at) = scatterPieces(r)
            requests.append(try group.ireduceScatter(send: grads + r.lowerBound, recv: gradShard!.ptr + at,
                                                     counts: counts, label: label))
        } else {
            requests.append(try group.iallreduce(grads + r.lowerBound, count: r.count, label: label))
        }
    }

    /// The same reduction, bucket by bucket, blocking, with nothing to overlap (the benchmarks' reference).
    public func reduceBlocking() throws {
        for r in buckets {
            if zero {
                let (counts, at) = scatterPieces(r)
                try group.reduceScatter(send: grads + r.lowerBound, recv: gradShard!.ptr + at, counts: counts)
            } else {
                try group.allreduce(grads + r.lowerBound, count: r.count)
            }
        }
    }

    /// Starts any bucket not yet started and waits for all. Afterwards the reduced gradients are in place.
    public func finish() {
        orAbort {
            if !heldDone, let f = beforeHeld { try f() }
            heldDone = true
            while launched < buckets.count { try launch(launched); launched += 1 }
            let t0 = nowNs()
            try Request.waitAll(requests)
            lastWaitNs = nowNs() - t0
        }
        active = false
    }

    /// ZeRO-1: every rank's updated partition to every rank.
    public func allgatherParameters(_ params: ParameterSet) {
        guard zero else { return }
        orAbort {
            try group.allgather(inPlace: params.storage.ptr, counts: partitions.map(\.count),
                                displacements: partitions.map(\.lowerBound), label: "parameters (ZeRO-1)")
        }
    }

    /// Sums a value over the replicas.
    public func sum(_ x: Double, label: String) -> Double {
        orAbort { try group.allreduce(x, op: .sum, label: label) }
    }

    /// Runs communication; an MPI error ends the job with a message naming rank, operation and step.
    public func orAbort<T>(_ body: () throws -> T) -> T {
        do { return try body() } catch {
            MPIRuntime.abort("\(error) at step \(step + 1); aborting the job")
        }
    }
}

extension ParameterSet {
    /// Elements of tensor i including its alignment padding (up to the next tensor or the end).
    func count(forTensor i: Int) -> Int {
        (i + 1 < offsets.count ? offsets[i + 1] : count) - offsets[i]
    }
}
