// Which world rank takes which place in the mesh. Open MPI puts ranks on hosts; the placement chooses the
// order of the mesh's dimensions (innermost first: consecutive mesh indices differ in it and share a host first)
// and the order of the hosts (which hosts are neighbours along the outer dimensions), so that the groups that
// send the most per step stay inside a host and the slow links carry the least (as Holmes puts pipeline
// boundaries on the slowest links). It does not assume which group talks most: it estimates each candidate's
// communication time per step from the bytes each group sends (MeshTraffic, computed from the config) and the
// links (LinkMatrix), and keeps the cheapest.
//
// The estimate, per group kind (all instances of a kind run at once, so they share links): the bytes each
// directed host pair carries, over its bandwidth, at the most loaded pair; plus the kind's messages on the
// critical path times the slowest latency any instance meets. Inside a host the "link" is shared memory. It
// ignores overlap with compute (ring attention hides its transfers behind attention blocks; the gradient
// reduction overlaps the last backward): it ranks placements, it does not predict step time.

import Foundation
import TesseraComm

/// What each group of the mesh sends per training step, per rank.
public struct MeshTraffic: Sendable, Equatable {
    /// Ulysses: bytes each rank sends in its all-to-alls (to the other U − 1 ranks), and the all-to-alls.
    public var ulyssesBytes = 0.0, ulyssesCalls = 0.0
    /// Ring attention: bytes each rank sends to its next ring neighbour, and the messages.
    public var ringBytes = 0.0, ringMessages = 0.0
    /// Gradient reduction over the replicas (the data × ring × Ulysses ranks of a stage): the gradient bytes of a
    /// stage (a ring all-reduce, or reduce-scatter + all-gather, sends 2(n − 1)/n of it per rank), and buckets.
    public var gradientBytes = 0.0, gradientBuckets = 0.0
    /// Pipeline: bytes of one activation (or activation gradient) message between adjacent stages, and how many
    /// cross each boundary in each direction; `pipelineWrapMessages` go from the last stage to the first
    /// (interleaved schedules).
    public var pipelineBytes = 0.0, pipelineMessages = 0.0, pipelineWrapMessages = 0.0
    /// The tied embedding's gradient, summed between the first and the last stage.
    public var embeddingBytes = 0.0

    public init() {}
}

/// The estimated communication of one placement, by group kind (seconds per step).
public struct CommEstimate: Sendable, Equatable {
    public var seconds: [String: Double] = [:]
    /// The most hosts any one group of each kind spans.
    public var hostsSpanned: [String: Int] = [:]
    public var total: Double { seconds.values.reduce(0, +) }
    public static let kinds = ["ulysses", "ring", "gradients", "pipeline", "embedding"]

    public var breakdown: String {
        Self.kinds.compactMap { k in
            guard let s = seconds[k] else { return nil }
            return "\(k) \(Link.time(s))" + ((hostsSpanned[k] ?? 1) > 1 ? " (across \(hostsSpanned[k]!) hosts)" : " (inside hosts)")
        }.joined(separator: ", ")
    }
}

public struct Placement: Sendable {
    public var shape: MeshShape
    /// Host indices (into `hosts.names`) in the order they take mesh indices.
    public var hostOrder: [Int]
    public var hosts: HostMap
    /// indexOfWorldRank[w] = the mesh index world rank w takes (ProcessMesh's placement).
    public var indexOfWorldRank: [Int]
    public var estimate: CommEstimate
    /// The default: dimensions in the default order, ranks in world order.
    public var naive: CommEstimate
    public var candidates: Int

    /// The mesh indices of world ranks when the hosts take indices in `hostOrder`: host by host, inside a host
    /// by world rank.
    static func indices(hosts: HostMap, hostOrder: [Int]) -> [Int] {
        var out = [Int](repeating: 0, count: hosts.ranks), next = 0
        for h in hostOrder { for w in hosts.ranks(on: h) { out[w] = next; next += 1 } }
        return out
    }

    /// The estimate of one placement: `hostOfIndex[i]` is the host of mesh index i.
    public static func estimate(shape s: MeshShape, hostOfIndex: [Int], links: LinkMatrix, traffic t: MeshTraffic) -> CommEstimate {
        let n = links.hosts.count
        var out = CommEstimate()
        func kind(_ name: String, messages: Double, _ sends: (MeshCoordinate, (MeshCoordinate, Double) -> Void) -> Void,
                  span: (MeshCoordinate) -> [MeshCoordinate]) {
            var load = [Double](repeating: 0, count: n * n), latency = 0.0, spanned = 1
            for i in 0..<s.size {
                let c = s.coordinate(of: i), from = hostOfIndex[i]
                sends(c) { to, bytes in
                    let h = hostOfIndex[s.rank(of: to)]
                    load[from * n + h] += bytes
                    latency = max(latency, links[from, h].latency)
                }
                spanned = max(spanned, Set(span(c).map { hostOfIndex[s.rank(of: $0)] }).count)
            }
            var worst = 0.0
            for a in 0..<n { for b in 0..<n where load[a * n + b] > 0 { worst = max(worst, load[a * n + b] / links[a, b].bandwidth) } }
            out.seconds[name] = worst + messages * latency
            out.hostsSpanned[name] = spanned
        }
        func along(_ c: MeshCoordinate, _ d: MeshDimension) -> [MeshCoordinate] {
            (0..<s.degree(d)).map { var o = c; o[d] = $0; return o }
        }
        if s.ulysses > 1 {
            kind("ulysses", messages: t.ulyssesCalls, { c, send in
                for o in along(c, .ulysses) where o != c { send(o, t.ulyssesBytes / Double(s.ulysses - 1)) }
            }, span: { along($0, .ulysses) })
        }
        if s.ring > 1 {
            kind("ring", messages: t.ringMessages, { c, send in
                var o = c; o.ring = (c.ring + 1) % s.ring; send(o, t.ringBytes)
            }, span: { along($0, .ring) })
        }
        let replicas = s.dp * s.ring * s.ulysses
        if replicas > 1 {
            // Ring all-reduce in the group's rank order (dp, ring, Ulysses; Ulysses fastest).
            let share = 2 * Double(replicas - 1) / Double(replicas) * t.gradientBytes
            kind("gradients", messages: 2 * Double(replicas - 1) * t.gradientBuckets, { c, send in
                let k = ((c.dp * s.ring + c.ring) * s.ulysses + c.ulysses + 1) % replicas
                send(MeshCoordinate(pp: c.pp, dp: k / (s.ring * s.ulysses), ring: k / s.ulysses % s.ring, ulysses: k % s.ulysses), share)
            }, span: { c in
                (0..<replicas).map { MeshCoordinate(pp: c.pp, dp: $0 / (s.ring * s.ulysses), ring: $0 / s.ulysses % s.ring, ulysses: $0 % s.ulysses) }
            })
        }
        if s.pp > 1 {
            kind("pipeline", messages: 2 * (t.pipelineMessages + t.pipelineWrapMessages), { c, send in
                var next = c; next.pp = c.pp + 1
                var prev = c; prev.pp = c.pp - 1
                if c.pp + 1 < s.pp { send(next, t.pipelineMessages * t.pipelineBytes) }
                if c.pp > 0 { send(prev, t.pipelineMessages * t.pipelineBytes) }
                if t.pipelineWrapMessages > 0 {
                    var wrap = c; wrap.pp = c.pp == s.pp - 1 ? 0 : s.pp - 1
                    if c.pp == s.pp - 1 || c.pp == 0 { send(wrap, t.pipelineWrapMessages * t.pipelineBytes) }
                }
            }, span: { along($0, .pp) })
            if t.embeddingBytes > 0 {
                kind("embedding", messages: 2, { c, send in
                    guard c.pp == 0 || c.pp == s.pp - 1 else { return }
                    var o = c; o.pp = c.pp == 0 ? s.pp - 1 : 0; send(o, t.embeddingBytes)
                }, span: { c in [c, { var o = c; o.pp = s.pp - 1; return o }()] })
            }
        }
        return out
    }

    /// `shape`'s mesh in world rank order (no choice made), with its estimate.
    public static func worldOrder(shape: MeshShape, hosts: HostMap, links: LinkMatrix, traffic: MeshTraffic) -> Placement {
        let e = estimate(shape: shape, hostOfIndex: hosts.hostOfRank, links: links, traffic: traffic)
        return Placement(shape: shape, hostOrder: Array(hosts.names.indices), hosts: hosts, indexOfWorldRank: Array(0..<hosts.ranks),
                         estimate: e, naive: e, candidates: 1)
    }

    /// The cheapest placement of `shape`'s mesh on `hosts` (the default when nothing is cheaper, e.g. one host):
    /// every distinct order of the split dimensions × every order of the hosts that keeps world rank 0's host first
    /// (all of them up to 7 hosts, when `searchHostOrders`; beyond, or without it, the hosts in world order and a chain
    /// along the fastest links).
    public static func choose(shape: MeshShape, hosts: HostMap, links: LinkMatrix, traffic: MeshTraffic,
                              searchHostOrders: Bool = true) -> Placement {
        let n = hosts.names.count
        func hostOfIndex(_ order: [Int]) -> [Int] {
            var h = [Int](repeating: 0, count: hosts.ranks)
            for (w, i) in indices(hosts: hosts, hostOrder: order).enumerated() { h[i] = hosts.hostOfRank[w] }
            return h
        }
        var hostOrders: [[Int]] = [Array(0..<n)]
        if n > 2 && n <= 7 && searchHostOrders { hostOrders = permutations(Array(1..<n)).map { [0] + $0 } }
        else if n > 2 { hostOrders.append(chain(links)) }
        var orders: [[MeshDimension]] = [shape.order], seen: Set<[MeshDimension]> = [shape.order.filter { shape.degree($0) > 1 }]
        for o in permutations(MeshDimension.allCases) {
            let key = o.filter { shape.degree($0) > 1 }
            if seen.insert(key).inserted { orders.append(o) }
        }
        var naiveShape = shape
        naiveShape.order = MeshShape.defaultOrder
        let naive = estimate(shape: naiveShape, hostOfIndex: hostOfIndex(Array(0..<n)), links: links, traffic: traffic)
        var best = Placement(shape: naiveShape, hostOrder: Array(0..<n), hosts: hosts, indexOfWorldRank: Array(0..<hosts.ranks),
                             estimate: naive, naive: naive, candidates: orders.count * hostOrders.count)
        guard n > 1 else { return best }
        for hostOrder in hostOrders {
            let where_ = hostOfIndex(hostOrder)
            for order in orders {
                var s = shape
                s.order = order
                let e = estimate(shape: s, hostOfIndex: where_, links: links, traffic: traffic)
                if e.total < best.estimate.total * 0.999 {
                    best.shape = s; best.hostOrder = hostOrder; best.estimate = e
                    best.indexOfWorldRank = indices(hosts: hosts, hostOrder: hostOrder)
                }
            }
        }
        return best
    }

    /// Several lines for the banner and `tessera plan`.
    public func describe(links: LinkMatrix, chosen: String) -> String {
        var s = "  placement (\(chosen)): \(shape.orderDescription), \(hosts.ranks) rank(s) on \(hosts.names.count) host(s) "
        s += "(" + hostOrder.map { h in "\(hosts.names[h]): \(Self.ranges(hosts.ranks(on: h)))" }.joined(separator: "; ") + ")"
        if hosts.names.count > 1 {
            s += "\n  links (\(links.source)):\n" + links.describe(indent: "    ")
            s += "\n  estimated communication per step: \(Link.time(estimate.total))"
            if !estimate.seconds.isEmpty { s += " = " + estimate.breakdown }
            s += "\n  the world rank order (\(MeshShape.defaultOrder.filter { shape.degree($0) > 1 }.map(\.rawValue).joined(separator: " inside "))): "
            s += "\(Link.time(naive.total))" + (naive.seconds.isEmpty ? "" : " = " + naive.breakdown)
            s += "; \(candidates) placement(s) compared"
        }
        return s
    }

    /// "0-3, 8" for [0, 1, 2, 3, 8].
    static func ranges(_ r: [Int]) -> String {
        var parts: [String] = [], i = 0
        while i < r.count {
            var j = i
            while j + 1 < r.count && r[j + 1] == r[j] + 1 { j += 1 }
            parts.append(j == i ? "rank \(r[i])" : "ranks \(r[i])-\(r[j])")
            i = j + 1
        }
        return parts.joined(separator: ", ")
    }

    static func permutations<T>(_ a: [T]) -> [[T]] {
        guard a.count > 1 else { return [a] }
        var out: [[T]] = []
        for (i, x) in a.enumerated() {
            var rest = a; rest.remove(at: i)
            for p in permutations(rest) { out.append([x] + p) }
        }
        return out
    }

    /// Host 0, then repeatedly the host with the fastest link from the last one placed.
    static func chain(_ links: LinkMatrix) -> [Int] {
        var order = [0], left = Set(1..<links.hosts.count)
        while let last = order.last, !left.isEmpty {
            let next = left.max { links[last, $0].bandwidth < links[last, $1].bandwidth || (links[last, $0].bandwidth == links[last, $1].bandwidth && $0 > $1) }!
            order.append(next); left.remove(next)
        }
        return order
    }
}
