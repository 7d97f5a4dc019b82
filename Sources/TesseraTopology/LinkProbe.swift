// Measures the links of a running job before the mesh is built: every rank's host name (gathered), then, one
// pair of hosts at a time, the first rank of each host ping-pongs with the first rank of the other (latency
// from small round trips, bandwidth each way from large one-way messages answered by a small one), and
// inside each host of two or more ranks its first two ranks do the same. Collective over the world; a
// fraction of a second on the links it is meant for (it sends a few MiB per pair).

import Foundation
import TesseraComm
#if canImport(Glibc)
import Glibc
#endif

public enum LinkProbe {
    /// This process's host name (the UTS name: what Open MPI's shared memory keys on).
    public static var hostName: String {
        var buf = [CChar](repeating: 0, count: 256)
        guard gethostname(&buf, buf.count - 1) == 0 else { return "localhost" }
        return String(decoding: buf.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }

    /// Every world rank's host. Collective over `world`.
    public static func hosts(_ world: Communicator) throws -> HostMap {
        let width = 256
        var mine = [UInt8](repeating: 0, count: width)
        for (i, b) in hostName.utf8.prefix(width - 1).enumerated() { mine[i] = b }
        var all = [UInt8](repeating: 0, count: width * world.size)
        try mine.withUnsafeBufferPointer { s in
            try all.withUnsafeMutableBufferPointer { r in
                try world.allgather(send: s.baseAddress!, recv: r.baseAddress!, count: width, label: "host names")
            }
        }
        let names = (0..<world.size).map { w -> String in
            let bytes = all[(w * width)..<((w + 1) * width)].prefix { $0 != 0 }
            return String(decoding: bytes, as: UTF8.self)
        }
        return HostMap(rankHosts: names)
    }

    /// The links between the hosts of `hosts` (and inside those with two ranks or more), measured. Collective
    /// over `world`; every rank returns the same matrix.
    public static func measure(_ world: Communicator, hosts: HostMap, bytes: Int = 1 << 20, rounds: Int = 3) throws -> LinkMatrix {
        let n = hosts.names.count
        var pairs: [(a: Int, b: Int, i: Int, j: Int)] = []   // world ranks a, b on hosts i, j
        let first = (0..<n).map { hosts.ranks(on: $0) }
        for i in 0..<n { for j in (i + 1)..<max(n, i + 1) { pairs.append((first[i][0], first[j][0], i, j)) } }
        for i in 0..<n where first[i].count > 1 { pairs.append((first[i][0], first[i][1], i, i)) }
        // results[(i·n + j)·2 + 0/1] = bandwidth / latency from host i to host j (filled by the pair's rank a).
        var results = [Double](repeating: 0, count: n * n * 2)
        let floats = max(bytes / 4, 1)
        var big = [Float](repeating: 1, count: floats), small = [Float](repeating: 0, count: 1)
        for p in pairs {
            let me = world.rank
            if me == p.a || me == p.b {
                let peer = me == p.a ? p.b : p.a, isA = me == p.a
                // Latency: small round trips timed by a. Then a → b timed by a, and b → a timed by b: each side
                // writes what it timed (the results are summed over the world below).
                var rtts: [Double] = []
                for _ in 0..<10 { rtts.append(try roundTrip(world, peer: peer, timer: isA, message: &small, count: 1, reply: &big)) }
                let latency = rtts.sorted()[rtts.count / 2] / 2
                var best = [Double.infinity, Double.infinity]
                for direction in 0..<2 {
                    let timer = (direction == 0) == isA
                    for _ in 0..<rounds {
                        let t = try roundTrip(world, peer: peer, timer: timer, message: &big, count: floats, reply: &small)
                        if timer { best[direction] = min(best[direction], t) }
                    }
                }
                // b's latency is not measured (it did not time the small round trips): it takes a's, sent over.
                var lat = [latency]
                try lat.withUnsafeMutableBufferPointer { l in
                    if isA { try world.send(l.baseAddress!, count: 1, to: peer, tag: MessageTag.linkProbe, label: "link probe latency") }
                    else { try world.recv(l.baseAddress!, count: 1, from: peer, tag: MessageTag.linkProbe, label: "link probe latency") }
                }
                // Inside a host both directions are the same slot: rank a writes it alone.
                if isA || p.i != p.j {
                    let (from, to, t) = isA ? (p.i, p.j, best[0]) : (p.j, p.i, best[1])
                    results[(from * n + to) * 2] = Double(floats * 4) / max(t - 2 * lat[0], 1e-9)
                    results[(from * n + to) * 2 + 1] = lat[0]
                }
            }
            // Sleeping, not spinning: the ranks outside the pair must not take the CPU from it.
            try world.sleepingBarrier(label: "link probe")
        }
        try results.withUnsafeMutableBufferPointer { try world.allreduce($0.baseAddress!, count: $0.count, label: "link probe results") }
        var m = LinkMatrix(hosts: hosts.names, source: "measured at start (\(bytes >> 10) KiB messages)")
        for i in 0..<n { for j in 0..<n where results[(i * n + j) * 2] > 0 {
            m[i, j] = Link(bandwidth: results[(i * n + j) * 2], latency: results[(i * n + j) * 2 + 1])
        }}
        return m
    }

    /// Seconds for `count` floats of `message` to go from the timing side (`timer`) to the other and one float to
    /// come back, as the timing side sees it (0 on the other side, which receives into `message` and answers from
    /// `reply`). Both sides call it with the same sizes.
    static func roundTrip(_ world: Communicator, peer: Int, timer: Bool, message: inout [Float], count: Int,
                          reply: inout [Float]) throws -> Double {
        let tag = MessageTag.linkProbe
        if timer {
            let t0 = DispatchTime.now().uptimeNanoseconds
            try message.withUnsafeBufferPointer { try world.send($0.baseAddress!, count: count, to: peer, tag: tag, label: "link probe") }
            _ = try reply.withUnsafeMutableBufferPointer { try world.recv($0.baseAddress!, count: 1, from: peer, tag: tag, label: "link probe") }
            return Double(DispatchTime.now().uptimeNanoseconds - t0) / 1e9
        }
        _ = try message.withUnsafeMutableBufferPointer { try world.recv($0.baseAddress!, count: count, from: peer, tag: tag, label: "link probe") }
        try reply.withUnsafeBufferPointer { try world.send($0.baseAddress!, count: 1, to: peer, tag: tag, label: "link probe") }
        return 0
    }
}
