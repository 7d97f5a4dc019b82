// `tessera bench-comm`: allreduce bus bandwidth through the Swift communication layer (the public
// `Communicator.allreduce`, watchdog armed and wait recorded on the timeline, as in training) against a plain C
// MPI loop (Sources/CCommBench) over the same sizes, in one run, in the same processes, on the same buffer.
// For each size every round runs C, Swift, Swift, C (mirrored every other round); bandwidth comes
// from each kind's best round, the Swift/C ratio and the Swift − C time per call from the median over rounds of
// the within-round comparison, which cancels the slow drifts of a shared VM. Bandwidth follows nccl-tests:
// algbw = bytes / time, busbw = algbw × 2(n−1)/n. See docs/benchmarks.md, "Allreduce: Swift layer vs plain C".

import CCommBench
import Foundation
import TesseraTraining
import TesseraComm
import TesseraTimeline

public enum CommBench {
    public struct Options: Sendable, Equatable {
        /// Largest message, MiB (sizes run from 1 KiB up by factors of 2).
        public var maxMiB = 64
        /// Iterations per timed loop; nil = chosen per size for about `targetSeconds` per loop.
        public var iters: Int? = nil
        /// Timed loops of each kind (C, Swift) per size.
        public var rounds = 9
        public var json = false
        /// Also measures the Swift layer with no watchdog and the per-call cost of the layer's pieces.
        public var breakdown = false
        public var targetSeconds = 0.01
        public init() {}

        /// Checks the values a command line gave (`--max-mib`, `--iters`, `--rounds`), with messages naming the flag.
        public func validate() throws {
            guard maxMiB >= 1 else { throw CommBenchError("bench-comm: --max-mib expects an integer >= 1, got '\(maxMiB)'") }
            guard maxMiB <= 1024 else { throw CommBenchError("bench-comm: --max-mib is at most 1024, got \(maxMiB)") }
            if let iters, iters < 1 { throw CommBenchError("bench-comm: --iters expects an integer >= 1, got '\(iters)'") }
            guard rounds >= 1 else { throw CommBenchError("bench-comm: --rounds expects an integer >= 1, got '\(rounds)'") }
        }
    }

    /// One message size: seconds per allreduce of each kind, one entry per round (the mean of the round's two loops
    /// of that kind).
    public struct Row: Sendable {
        public let bytes: Int, iters: Int
        public let c: [Double], swift: [Double]
        /// Swift with `Watchdog.shared = nil` (breakdown only; a round then runs C, Swift, no-watchdog, no-watchdog, Swift, C).
        public let swiftNoWatchdog: [Double]?

        public var cBest: Double { c.min()! }
        public var swiftBest: Double { swift.min()! }
        /// Swift busbw / C busbw: the median over rounds of C time / Swift time within a round. Pairing the two
        /// loops of a round cancels the slow drifts of a shared machine that best-of-rounds leaves in.
        public var ratio: Double { BenchScaffold.median(zip(c, swift).map { $0 / $1 }) }
        /// Best-of-rounds Swift busbw / best-of-rounds C busbw.
        public var bestRatio: Double { cBest / swiftBest }
        /// Swift − C seconds per call, median over rounds of the within-round difference.
        public var extra: Double { BenchScaffold.median(zip(swift, c).map { $0 - $1 }) }
        public var extraNoWatchdog: Double? { swiftNoWatchdog.map { BenchScaffold.median(zip($0, c).map { $0 - $1 }) } }
    }

    /// 1 KiB, 2 KiB, ..., up to `maxMiB` MiB.
    public static func sizes(maxMiB: Int) -> [Int] {
        var out: [Int] = [], b = 1024
        while b <= maxMiB << 20 { out.append(b); b *= 2 }
        return out
    }

    /// nccl-tests' bus bandwidth factor for allreduce.
    public static func busFactor(ranks: Int) -> Double { 2 * Double(ranks - 1) / Double(ranks) }

    /// Seconds per call of `iters` Swift-layer allreduces, framed exactly like the C loop (barrier, MPI_Wtime,
    /// max over ranks).
    static func swiftSeconds(_ comm: Communicator, _ buf: UnsafeMutablePointer<Float>, count: Int, iters: Int,
                             label: String) throws -> Double {
        let t0 = ccb_begin(comm.handle)
        for _ in 0..<iters { try comm.allreduce(buf, count: count, op: .sum, label: label) }
        return ccb_end(t0, comm.handle) / Double(iters)
    }

    static func cSeconds(_ comm: Communicator, _ buf: UnsafeMutablePointer<Float>, count: Int, iters: Int) throws -> Double {
        let s = ccb_allreduce_seconds(buf, Int32(count), Int32(iters), comm.handle)
        guard s >= 0 else { throw CommBenchError("bench-comm: MPI_Allreduce of \(count) floats failed in the C loop") }
        return s / Double(iters)
    }

    /// Both paths must produce the sum: every rank contributes rank+1.
    static func checkSum(_ comm: Communicator, _ buf: UnsafeMutablePointer<Float>, count: Int, label: String) throws {
        let want = Float(comm.size * (comm.size + 1) / 2)
        for path in ["C", "Swift"] {
            buf.update(repeating: Float(comm.rank + 1), count: count)
            if path == "C" { _ = try cSeconds(comm, buf, count: count, iters: 1) }
            else { try comm.allreduce(buf, count: count, op: .sum, label: label) }
            for i in [0, count / 2, count - 1] where buf[i] != want {
                throw CommBenchError("bench-comm: \(path) allreduce of \(count) floats gave \(buf[i]) at \(i), expected \(want)")
            }
        }
        buf.update(repeating: 0, count: count)
    }

    /// Runs the benchmark on `comm` (every rank); returns the rows (the same on every rank).
    public static func measure(_ comm: Communicator, options o: Options,
                               progress: (Row) -> Void = { _ in }) throws -> [Row] {
        let sizes = sizes(maxMiB: o.maxMiB)
        let maxCount = sizes.last! / 4
        let buf = UnsafeMutablePointer<Float>.allocate(capacity: maxCount)
        buf.initialize(repeating: 0, count: maxCount)
        defer { buf.deallocate() }
        var rows: [Row] = []
        for bytes in sizes {
            let count = bytes / 4
            // The caller's label, built once per size as training builds one per bucket.
            let label = "bench-comm \(bytes / 1024) KiB"
            try checkSum(comm, buf, count: count, label: label)
            // Warm up both paths, then size the loops from the slower one (max over ranks, so all agree).
            _ = try cSeconds(comm, buf, count: count, iters: 2)
            _ = try swiftSeconds(comm, buf, count: count, iters: 2, label: label)
            let probe = max(try cSeconds(comm, buf, count: count, iters: 4),
                            try swiftSeconds(comm, buf, count: count, iters: 4, label: label))
            let iters = o.iters ?? min(max(Int(o.targetSeconds / max(probe, 1e-9)), 1), 20_000)
            // Each round runs the loops in mirrored order (C, Swift, Swift, C, or the reverse on odd rounds) and
            // averages each kind's two loops, so order effects and drift within a round cancel.
            enum Kind { case c, swift, noWatchdog }
            let kinds: [Kind] = o.breakdown ? [.c, .swift, .noWatchdog] : [.c, .swift]
            var c: [Double] = [], s: [Double] = [], n: [Double] = []
            for round in 0..<o.rounds {
                let order = round % 2 == 0 ? kinds : kinds.reversed()
                var t: [Kind: Double] = [:]
                for k in order + order.reversed() {
                    let dt: Double
                    switch k {
                    case .c: dt = try cSeconds(comm, buf, count: count, iters: iters)
                    case .swift: dt = try swiftSeconds(comm, buf, count: count, iters: iters, label: label)
                    case .noWatchdog:
                        let dog = Watchdog.shared
                        Watchdog.shared = nil
                        defer { Watchdog.shared = dog }
                        dt = try swiftSeconds(comm, buf, count: count, iters: iters, label: label)
                    }
                    t[k, default: 0] += dt / 2
                }
                c.append(t[.c]!); s.append(t[.swift]!)
                if o.breakdown { n.append(t[.noWatchdog]!) }
            }
            let row = Row(bytes: bytes, iters: iters, c: c, swift: s, swiftNoWatchdog: o.breakdown ? n : nil)
            rows.append(row)
            progress(row)
        }
        return rows
    }

    // MARK: the pieces of one Swift-layer call, timed alone (no communication)

    public struct PieceCosts: Sendable {
        /// Nanoseconds per call.
        public let clockPair, labelString, watchdogString, armDisarm, timelineCommWait: Double
    }

    /// Times, on this thread, what `Communicator.blocking` does around the MPI call: the two clock reads, the
    /// operation string ("MPI_Allreduce <label>"), the watchdog's "... on communicator '<name>'" string, arming
    /// and disarming the watchdog with it (lock + dictionary insert and remove, the string built inside), and
    /// Timeline.commWait (lock + sums; no trace).
    public static func pieceCosts(communicatorName: String, label: String, calls: Int = 200_000) -> PieceCosts {
        func time(_ body: () -> Void) -> Double {
            var best = Double.infinity
            for _ in 0..<5 {
                let t0 = nowNs()
                body()
                best = min(best, Double(nowNs() - t0) / Double(calls))
            }
            return best
        }
        var sink = 0
        let clock = time { for _ in 0..<calls { sink &+= Int(truncatingIfNeeded: nowNs() &+ nowNs()) } }
        let op = { "MPI_Allreduce \(label)" }
        let opString = time { for _ in 0..<calls { sink &+= op().utf8.count } }
        let dogString = time { for _ in 0..<calls { sink &+= "\(op()) on communicator '\(communicatorName)'".utf8.count } }
        var armCost = 0.0
        if let dog = Watchdog.shared {
            armCost = time {
                for _ in 0..<calls { dog.disarm(dog.arm("MPI_Allreduce", label, nil)) }
            }
        }
        let t = Timeline()
        let tl = time { for i in 0..<calls { t.commWait(op(), beginNs: UInt64(i), endNs: UInt64(i + 1)) } }
        if sink == 42 { print("") }  // keeps the loops
        return PieceCosts(clockPair: clock, labelString: opString, watchdogString: dogString, armDisarm: armCost,
                          timelineCommWait: tl)
    }

    // MARK: the command

    /// `tessera bench-comm` on every rank; rank 0 prints the report. Returns the process exit status.
    public static func command(_ o: Options, runtime: MPIRuntime) -> Int32 {
        let world = runtime.worldCommunicator
        guard world.size >= 2 else {
            print("tessera bench-comm: needs at least 2 ranks (e.g. mpirun -np 2 tessera bench-comm); got \(world.size)")
            return 2
        }
        // As in training: every blocking call arms the watchdog, whose timeout ends the job.
        Watchdog.shared = Watchdog(rank: runtime.rank, timeoutSeconds: 300) { MPIRuntime.abort($0) }
        let rank0 = runtime.rank == 0
        func say(_ s: String) { if rank0 { print(s); fflush(nil) } }
        let factor = busFactor(ranks: world.size)
        func busbw(_ bytes: Int, _ s: Double) -> Double { Double(bytes) / s * factor / 1e9 }
        say("tessera bench-comm — allreduce (in place, float32, sum) on \(world.size) ranks, "
            + "\(ProcessInfo.processInfo.activeProcessorCount) core(s)")
        say("Open MPI single-copy mechanism: \(MPIRuntime.singleCopyMechanism)")
        say("C: plain MPI_Allreduce loop (CCommBench). Swift: Communicator.allreduce, watchdog armed, timeline recording.")
        say("\(o.rounds) rounds per size; a round runs C, Swift, Swift, C (mirrored every other round) and averages each "
            + "kind's two loops of " + (o.iters.map { "\($0) calls" } ?? "~\(Int(o.targetSeconds * 1000)) ms") + ".")
        say("µs and busbw: best round. busbw = bytes/time × 2(n−1)/n. Swift/C and Swift−C: median over rounds of the "
            + "within-round ratio (busbw) and difference (µs per call).")
        say("")
        say("size".leftPad(8) + "iters".leftPad(7) + "C µs".leftPad(11) + "Swift µs".leftPad(11)
            + "C busbw GB/s".leftPad(14) + "Swift busbw GB/s".leftPad(18) + "Swift/C".leftPad(9)
            + "Swift−C µs".leftPad(12)
            + (o.breakdown ? "no-watchdog µs".leftPad(16) + "no-watchdog−C µs".leftPad(18) : ""))
        func line(_ r: Row) -> String {
            var l = sizeName(r.bytes).leftPad(8) + "\(r.iters)".leftPad(7)
                + fmt(r.cBest * 1e6, 2).leftPad(11) + fmt(r.swiftBest * 1e6, 2).leftPad(11)
                + fmt(busbw(r.bytes, r.cBest), 3).leftPad(14) + fmt(busbw(r.bytes, r.swiftBest), 3).leftPad(18)
                + fmt(r.ratio, 3).leftPad(9) + fmt(r.extra * 1e6, 2).leftPad(12)
            if let n = r.swiftNoWatchdog, let e = r.extraNoWatchdog {
                l += fmt(n.min()! * 1e6, 2).leftPad(16) + fmt(e * 1e6, 2).leftPad(18)
            }
            return l
        }
        let rows: [Row]
        do { rows = try measure(world, options: o) { say(line($0)) } } catch {
            MPIRuntime.abort("\(error)")
        }
        say("")
        let big = rows.filter { $0.bytes >= 64 * 1024 }, small = rows.filter { $0.bytes < 64 * 1024 }
        if let worst = big.min(by: { $0.ratio < $1.ratio }), let worstBest = big.min(by: { $0.bestRatio < $1.bestRatio }) {
            say("Swift layer within \(fmt(max(0, 1 - worst.ratio) * 100, 1))% of C across sizes ≥ 64 KiB "
                + "(worst Swift/C \(fmt(worst.ratio, 3)) at \(sizeName(worst.bytes)); best round against best round: "
                + "worst \(fmt(worstBest.bestRatio, 3)) at \(sizeName(worstBest.bytes)))")
        }
        if let worst = small.min(by: { $0.ratio < $1.ratio }) {
            let extras = small.map(\.extra).sorted()
            say("Below 64 KiB (latency-bound): worst Swift/C \(fmt(worst.ratio, 3)) at \(sizeName(worst.bytes)); "
                + "Swift − C per call \(fmt(extras.first! * 1e6, 2))–\(fmt(extras.last! * 1e6, 2)) µs")
        }
        if o.breakdown && rank0 {
            let p = pieceCosts(communicatorName: world.name, label: "bench-comm 1 KiB")
            say("")
            say("What Communicator.blocking adds around the MPI call, each piece timed alone in a tight loop on rank 0 "
                + "(warm caches; between MPI calls the same pieces cost more: compare Swift−C with no-watchdog−C above), "
                + "ns per call:")
            say("  two clock reads (nowNs)                               \(fmt(p.clockPair, 1).leftPad(7))")
            say("  Watchdog arm + disarm                                 \(fmt(p.armDisarm, 1).leftPad(7))"
                + "   (clock read, 2 lock/unlock, a fixed slot; the message is built only on timeout)")
            say("  for reference, building \"MPI_Allreduce <label>\"         \(fmt(p.labelString, 1).leftPad(7))"
                + "   (not done per call: only for errors and traces)")
            say("  Timeline.commWait, no trace                           \(fmt(p.timelineCommWait, 1).leftPad(7))"
                + "   (its name closure is not evaluated without a trace)")
        }
        if o.json && rank0 {
            for r in rows {
                var obj: [String: Any] = [
                    "bench": "bench-comm", "bytes": r.bytes, "ranks": world.size, "iters": r.iters, "rounds": r.c.count,
                    "c_s": r.cBest, "swift_s": r.swiftBest, "c_median_s": BenchScaffold.median(r.c), "swift_median_s": BenchScaffold.median(r.swift),
                    "c_busbw_gbs": busbw(r.bytes, r.cBest), "swift_busbw_gbs": busbw(r.bytes, r.swiftBest),
                    "c_algbw_gbs": Double(r.bytes) / r.cBest / 1e9, "swift_algbw_gbs": Double(r.bytes) / r.swiftBest / 1e9,
                    "ratio": r.ratio, "best_ratio": r.bestRatio, "swift_extra_s": r.extra,
                ]
                if let n = r.swiftNoWatchdog, let e = r.extraNoWatchdog {
                    obj["swift_no_watchdog_s"] = n.min()!; obj["swift_no_watchdog_extra_s"] = e
                }
                say(BenchScaffold.jsonLine(obj))
            }
        }
        return 0
    }

    static func sizeName(_ bytes: Int) -> String {
        bytes >= 1 << 20 ? "\(bytes >> 20) MiB" : "\(bytes >> 10) KiB"
    }
}

public struct CommBenchError: Error, CustomStringConvertible {
    public let description: String
    init(_ d: String) { description = d }
}

