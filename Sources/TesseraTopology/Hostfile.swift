// Hosts of a job. At run time each rank's host is its hostname (gathered over MPI); before a job (`tessera plan
// --hostfile`) it is where Open MPI's default mapping puts each rank of an Open MPI hostfile: host by host in
// file order, each filled to its slots.
//
// A hostfile may describe its links in comments, which Open MPI ignores:
//     # link hostA hostB 1gbit 1ms      (both directions; rates as tc writes them: kbit, mbit, gbit)
//     # link * * 10gbit 50us            (every pair of hosts not named otherwise)
//     # link hostA hostA 40gbit 1us     (inside a host: between two of its ranks)

import Foundation

/// Which host each world rank runs on.
public struct HostMap: Sendable, Equatable {
    /// Distinct hosts in the order of their first world rank.
    public var names: [String]
    /// hostOfRank[w] = index into `names` of world rank w's host.
    public var hostOfRank: [Int]

    public init(names: [String], hostOfRank: [Int]) { self.names = names; self.hostOfRank = hostOfRank }

    /// From each world rank's host name.
    public init(rankHosts: [String]) {
        var names: [String] = [], index: [String: Int] = [:]
        hostOfRank = rankHosts.map { name in
            if let i = index[name] { return i }
            index[name] = names.count; names.append(name)
            return names.count - 1
        }
        self.names = names
    }

    public var ranks: Int { hostOfRank.count }
    public func ranks(on host: Int) -> [Int] { hostOfRank.indices.filter { hostOfRank[$0] == host } }
}

public struct HostfileError: Error, CustomStringConvertible {
    public var description: String
    init(_ path: String, _ line: Int, _ what: String) { description = "\(path):\(line): \(what)" }
}

/// An Open MPI hostfile and the links its comments describe.
public struct Hostfile: Sendable {
    public var path: String
    /// Hosts in file order with their slots.
    public var hosts: [(name: String, slots: Int)]
    /// Links named in `# link` comments: (from, to, link); "*" matches any host.
    public var links: [(a: String, b: String, link: Link)]

    public init(path: String) throws {
        guard let text = try? String(contentsOfFile: path, encoding: .utf8) else {
            throw HostfileError(path, 0, "cannot read the hostfile")
        }
        try self.init(text: text, path: path)
    }

    public init(text: String, path: String = "hostfile") throws {
        self.path = path
        hosts = []; links = []
        var slots: [String: Int] = [:], order: [String] = []
        for (n, raw) in text.split(separator: "\n", omittingEmptySubsequences: false).enumerated() {
            let line = n + 1
            if let hash = raw.firstIndex(of: "#") {
                let words = raw[raw.index(after: hash)...].split(whereSeparator: { $0 == " " || $0 == "\t" }).map(String.init)
                if words.first == "link" {
                    guard words.count == 5 else {
                        throw HostfileError(path, line, "expected '# link HOST HOST RATE LATENCY' (e.g. '# link a b 1gbit 1ms'), got '\(raw)'")
                    }
                    guard let rate = Self.rate(words[3]) else {
                        throw HostfileError(path, line, "link rate '\(words[3])': expected a number with kbit, mbit, gbit or tbit (per second), e.g. 10gbit")
                    }
                    guard let latency = Self.seconds(words[4]) else {
                        throw HostfileError(path, line, "link latency '\(words[4])': expected a number with us, ms or s, e.g. 50us")
                    }
                    links.append((words[1], words[2], Link(bandwidth: rate, latency: latency)))
                }
            }
            let body = raw.split(separator: "#", maxSplits: 1, omittingEmptySubsequences: false).first ?? ""
            let fields = body.split(whereSeparator: { $0 == " " || $0 == "\t" }).map(String.init)
            guard let name = fields.first else { continue }
            var count = 0
            for f in fields.dropFirst() where f.hasPrefix("slots=") {
                guard let s = Int(f.dropFirst(6)), s > 0 else { throw HostfileError(path, line, "'\(f)': expected slots=N with N ≥ 1") }
                count += s
            }
            if slots[name] == nil { order.append(name) }
            slots[name, default: 0] += max(count, 1)
        }
        guard !order.isEmpty else { throw HostfileError(path, 0, "the hostfile names no host") }
        hosts = order.map { ($0, slots[$0]!) }
    }

    /// Where Open MPI's default mapping puts `ranks` ranks: each host's slots in file order, then (more ranks than
    /// slots, --oversubscribe) one more on each host in turn.
    public func map(ranks: Int) -> HostMap {
        var hostOfRank: [Int] = []
        for (i, h) in hosts.enumerated() { hostOfRank += Array(repeating: i, count: min(h.slots, ranks - hostOfRank.count)) }
        var next = 0
        while hostOfRank.count < ranks { hostOfRank.append(next % hosts.count); next += 1 }
        hostOfRank.sort()  // by-slot mapping numbers the ranks host by host
        let used = Array(Set(hostOfRank)).sorted()
        return HostMap(names: used.map { hosts[$0].name }, hostOfRank: hostOfRank.map { used.firstIndex(of: $0)! })
    }

    /// The links among `hosts` that the comments describe, nil unless a comment covers every pair of distinct hosts
    /// (then the job measures them instead). A comment naming both hosts wins over one with a wildcard; among equals
    /// the last wins. Inside a host: what a comment naming the host twice says, else the shared-memory default.
    public func linkMatrix(hosts names: [String]) -> LinkMatrix? {
        var m = LinkMatrix(hosts: names, source: "hostfile \(path)")
        for (i, a) in names.enumerated() { for (j, b) in names.enumerated() {
            var found: (link: Link, named: Bool)?
            for l in links {
                let wildcard = l.a == "*" || l.b == "*"
                let matches = ((l.a == a || l.a == "*") && (l.b == b || l.b == "*")) || ((l.a == b || l.a == "*") && (l.b == a || l.b == "*"))
                guard matches && (i != j || !wildcard) else { continue }
                if !wildcard || found?.named != true { found = (l.link, !wildcard) }
            }
            if let found { m[i, j] = found.link } else if i != j { return nil }
        }}
        return m
    }

    /// "10gbit" → bytes per second.
    static func rate(_ s: String) -> Double? {
        let units: [(String, Double)] = [("tbit", 1e12), ("gbit", 1e9), ("mbit", 1e6), ("kbit", 1e3), ("bit", 1)]
        let l = s.lowercased()
        for (u, f) in units where l.hasSuffix(u) {
            guard let v = Double(l.dropLast(u.count)), v > 0 else { return nil }
            return v * f / 8
        }
        return nil
    }

    /// "50us" → seconds.
    static func seconds(_ s: String) -> Double? {
        let units: [(String, Double)] = [("us", 1e-6), ("µs", 1e-6), ("ms", 1e-3), ("s", 1)]
        let l = s.lowercased()
        for (u, f) in units where l.hasSuffix(u) {
            guard let v = Double(l.dropLast(u.count)), v >= 0 else { return nil }
            return v * f
        }
        return nil
    }
}
