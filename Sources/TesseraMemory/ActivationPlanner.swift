// `memory.policy = auto`: pick a policy per layer so that the predicted activation peak fits
// `memory.activation_budget` at the least predicted extra step time.
//
// Prediction. Memory: what the activation store will allocate (the same sizes it allocates): the bytes that
// do not depend on the policies (residual stream, ln_f, per activation set), plus per layer and per set its
// kept tensors (keep: the whole block; selective: the attention's inputs and outputs), plus one recompute
// buffer if any layer recomputes and two staging slots if any layer offloads. Time, per step: a recomputed
// layer runs its recomputation once per micro-batch; an offloaded layer costs the I/O that its neighbours'
// compute cannot hide (a write has one block's forward to finish, a read one block's backward), plus a
// small charge for the I/O thread's CPU, so that keeping wins whenever it fits.
//
// Search. Layers with the same costs are interchangeable, so for each group of them every split into
// (keep, selective, offload, full) counts is tried; groups combine through their Pareto fronts of
// (bytes, seconds), separately for whether any layer recomputes or offloads (the shared buffers). Exact,
// and cheap: a group of L layers has (L+1)(L+2)(L+3)/6 splits.

import Foundation

public struct ActivationPlanner: Sendable {
    /// One layer of this rank: how many activation sets hold it and what each policy costs.
    public struct Layer: Sendable, Equatable, Hashable {
        /// Activation sets alive at once holding this layer (1 without pipeline parallelism; the chunk's pool).
        public var sets: Int
        /// Bytes per set kept by `keep` and by `selective` (full and offload keep nothing per set).
        public var keepBytes: Int, selectiveBytes: Int
        /// Extra seconds per step of each policy for this layer.
        public var fullSeconds: Double, selectiveSeconds: Double, offloadSeconds: Double
        public init(sets: Int, keepBytes: Int, selectiveBytes: Int, fullSeconds: Double, selectiveSeconds: Double,
                    offloadSeconds: Double) {
            self.sets = sets; self.keepBytes = keepBytes; self.selectiveBytes = selectiveBytes
            self.fullSeconds = fullSeconds; self.selectiveSeconds = selectiveSeconds; self.offloadSeconds = offloadSeconds
        }
        func bytes(_ p: LayerPolicy) -> Int {
            switch p { case .keep: sets * keepBytes; case .selective: sets * selectiveBytes; case .full, .offload: 0 }
        }
        func seconds(_ p: LayerPolicy) -> Double {
            switch p { case .keep: 0; case .selective: selectiveSeconds; case .full: fullSeconds; case .offload: offloadSeconds }
        }
    }

    public struct Plan: Sendable, Equatable {
        public var policies: [LayerPolicy]
        public var predictedBytes: Int
        public var predictedSeconds: Double
    }

    public var layers: [Layer]
    /// Bytes that every plan holds (residual stream, ln_f, ...).
    public var fixedBytes: Int
    /// The recompute buffer (if any layer is full or selective) and the staging slots (if any is offloaded).
    public var recomputeBufferBytes: Int, stagingBytes: Int

    public init(layers: [Layer], fixedBytes: Int, recomputeBufferBytes: Int, stagingBytes: Int) {
        self.layers = layers; self.fixedBytes = fixedBytes
        self.recomputeBufferBytes = recomputeBufferBytes; self.stagingBytes = stagingBytes
    }

    /// Predicted activation bytes of a plan.
    public func bytes(_ policies: [LayerPolicy]) -> Int {
        precondition(policies.count == layers.count, "\(policies.count) policies for \(layers.count) layers")
        var b = fixedBytes + zip(layers, policies).reduce(0) { $0 + $1.0.bytes($1.1) }
        if policies.contains(where: { $0 == .full || $0 == .selective }) { b += recomputeBufferBytes }
        if policies.contains(.offload) { b += stagingBytes }
        return b
    }

    /// Predicted extra seconds per step of a plan (over keeping everything).
    public func seconds(_ policies: [LayerPolicy]) -> Double {
        zip(layers, policies).reduce(0) { $0 + $1.0.seconds($1.1) }
    }

    public func evaluate(_ policies: [LayerPolicy]) -> Plan {
        Plan(policies: policies, predictedBytes: bytes(policies), predictedSeconds: seconds(policies))
    }

    /// The plan that holds the least: every layer recomputed in full.
    public var smallest: Plan { evaluate(Array(repeating: .full, count: layers.count)) }

    /// The fastest plan whose predicted peak fits `budget` bytes.
    public func plan(budget: Int) throws -> Plan {
        let least = smallest
        guard budget >= least.predictedBytes else {
            throw LayerPolicyError("memory.activation_budget = \(budget) bytes (\(Self.mib(budget)) MiB) is below the smallest feasible "
                + "plan on this rank: \(least.predictedBytes) bytes (\(Self.mib(least.predictedBytes)) MiB, every layer recomputed in full); "
                + "expected a budget of at least \(least.predictedBytes)")
        }
        // Groups of interchangeable layers, in order of first appearance.
        var groups: [(layer: Layer, indices: [Int])] = []
        for (i, l) in layers.enumerated() {
            if let g = groups.firstIndex(where: { $0.layer == l }) { groups[g].indices.append(i) } else { groups.append((l, [i])) }
        }
        // Per flag class (bit 0: something recomputes, bit 1: something offloads), a Pareto front of
        // (bytes, seconds, counts per group).
        typealias Point = (bytes: Int, seconds: Double, counts: [[Int]])
        var fronts: [[Point]] = [[(0, 0, [])], [], [], []]
        for g in groups {
            let n = g.indices.count, l = g.layer
            var next: [[Point]] = [[], [], [], []]
            for keep in 0...n { for sel in 0...(n - keep) { for off in 0...(n - keep - sel) {
                let full = n - keep - sel - off
                let b = keep * l.bytes(.keep) + sel * l.bytes(.selective)
                let s = Double(sel) * l.selectiveSeconds + Double(off) * l.offloadSeconds + Double(full) * l.fullSeconds
                let flags = (sel + full > 0 ? 1 : 0) | (off > 0 ? 2 : 0)
                for (f, front) in fronts.enumerated() {
                    for p in front {
                        next[f | flags].append((p.bytes + b, p.seconds + s, p.counts + [[keep, sel, off, full]]))
                    }
                }
            }}}
            fronts = next.map(Self.pareto)
        }
        var best: (plan: Plan, counts: [[Int]])?
        for (f, front) in fronts.enumerated() {
            let extra = (f & 1 != 0 ? recomputeBufferBytes : 0) + (f & 2 != 0 ? stagingBytes : 0)
            for p in front where fixedBytes + extra + p.bytes <= budget {
                let total = fixedBytes + extra + p.bytes
                if let b = best, b.plan.predictedSeconds < p.seconds - 1e-12
                    || (abs(b.plan.predictedSeconds - p.seconds) <= 1e-12 && b.plan.predictedBytes <= total) { continue }
                best = (Plan(policies: [], predictedBytes: total, predictedSeconds: p.seconds), p.counts)
            }
        }
        guard let best else { return least }
        // Within a group, from its first layer: full, selective, offload, keep (the top layers, whose backward
        // comes first, keep).
        var policies = Array(repeating: LayerPolicy.keep, count: layers.count)
        for (g, counts) in zip(groups, best.counts) {
            let order = Array(repeating: LayerPolicy.full, count: counts[3]) + Array(repeating: .selective, count: counts[1])
                + Array(repeating: .offload, count: counts[2]) + Array(repeating: .keep, count: counts[0])
            for (i, p) in zip(g.indices, order) { policies[i] = p }
        }
        return evaluate(policies)
    }

    /// Points not beaten on both bytes and seconds.
    static func pareto<C>(_ points: [(bytes: Int, seconds: Double, counts: C)]) -> [(bytes: Int, seconds: Double, counts: C)] {
        var out: [(bytes: Int, seconds: Double, counts: C)] = []
        for p in points.sorted(by: { $0.bytes != $1.bytes ? $0.bytes < $1.bytes : $0.seconds < $1.seconds }) {
            if let last = out.last, last.seconds <= p.seconds { continue }
            out.append(p)
        }
        return out
    }

    static func mib(_ b: Int) -> String { String(format: "%.1f", Double(b) / 1_048_576) }
}
