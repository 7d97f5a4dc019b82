// The links between a job's hosts: bandwidth and latency of every ordered pair of hosts, and of each host to
// itself (shared memory between two of its ranks). Measured at start by LinkProbe, or given in a hostfile
// (Hostfile.swift); the placement (Placement.swift) and `tessera plan` read them.

import Foundation

/// One direction of a link.
public struct Link: Sendable, Equatable, CustomStringConvertible {
    /// Bytes per second.
    public var bandwidth: Double
    /// Seconds for a small message.
    public var latency: Double
    public init(bandwidth: Double, latency: Double) { self.bandwidth = bandwidth; self.latency = latency }

    /// Seconds to move `bytes` in `messages` messages.
    public func seconds(bytes: Double, messages: Double) -> Double { messages * latency + bytes / bandwidth }

    /// "1.00 Gbit/s, 1.00 ms".
    public var description: String { "\(Link.rate(bandwidth)), \(Link.time(latency))" }

    public static func rate(_ bytesPerSecond: Double) -> String {
        let bits = bytesPerSecond * 8
        if bits >= 1e9 { return String(format: "%.2f Gbit/s", bits / 1e9) }
        if bits >= 1e6 { return String(format: "%.1f Mbit/s", bits / 1e6) }
        return String(format: "%.0f kbit/s", bits / 1e3)
    }

    public static func time(_ seconds: Double) -> String {
        seconds >= 1e-3 ? String(format: "%.2f ms", seconds * 1e3) : String(format: "%.1f µs", seconds * 1e6)
    }

    /// Shared memory inside a host when nothing was measured: far faster than any network, so that the
    /// placement keeps traffic inside hosts (about what two ranks of this machine reach through Open MPI).
    public static let sharedMemoryDefault = Link(bandwidth: 5e9, latency: 1e-6)
    /// A network link the hostfile does not describe and nothing measured: 10 Gbit/s, 50 µs.
    public static let networkDefault = Link(bandwidth: 1.25e9, latency: 50e-6)
}

/// Links between every pair of hosts: `self[i, j]` carries traffic from host i to host j; `self[i, i]` is
/// inside host i.
public struct LinkMatrix: Sendable, Equatable {
    public var hosts: [String]
    var links: [Link]
    /// Where the numbers come from ("measured at start", "hostfile FILE", ...), for reports.
    public var source: String

    public init(hosts: [String], network: Link = Link.networkDefault, sharedMemory: Link = Link.sharedMemoryDefault,
                source: String) {
        self.hosts = hosts
        self.source = source
        let n = hosts.count
        links = (0..<(n * n)).map { $0 / n == $0 % n ? sharedMemory : network }
    }

    public subscript(_ i: Int, _ j: Int) -> Link {
        get { links[i * hosts.count + j] }
        set { links[i * hosts.count + j] = newValue }
    }

    /// One line per host pair (both directions when they differ), and the shared memory inside hosts; with more than
    /// four hosts, one line per distinct link with the pairs that have it.
    public func describe(indent: String = "  ") -> String {
        var lines: [String] = []
        let n = hosts.count
        var pairs: [(String, String)] = []   // (pair, link)
        for i in 0..<n { for j in (i + 1)..<max(n, i + 1) {
            let there = self[i, j], back = self[j, i]
            pairs.append(("\(hosts[i]) ↔ \(hosts[j])", there == back ? "\(there)" : "→ \(there); ← \(back)"))
        }}
        if n <= 4 {
            lines = pairs.map { "\(indent)\($0.0): \($0.1)" }
        } else {
            var order: [String] = [], members: [String: [String]] = [:]
            for (pair, link) in pairs {
                if members[link] == nil { order.append(link) }
                members[link, default: []].append(pair)
            }
            for link in order {
                let m = members[link]!
                lines.append("\(indent)\(link): \(m.count) pair(s): " + m.prefix(6).joined(separator: ", ") + (m.count > 6 ? ", …" : ""))
            }
        }
        let inside = Set((0..<n).map { self[$0, $0].description })
        if inside.count == 1 { lines.append("\(indent)inside each host: \(inside.first!)") }
        else { for i in 0..<n { lines.append("\(indent)inside \(hosts[i]): \(self[i, i])") } }
        return lines.joined(separator: "\n")
    }
}
