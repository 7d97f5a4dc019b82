// `tessera mpi-check`: a self-test of the communication layer under mpirun. It builds the process mesh,
// then runs every call of the Swift MPI layer (blocking and non-blocking, every completion style) on the
// world communicator and on each mesh group, with data that identifies the sender (rank · 1000 + index),
// and compares every result element exactly. It also checks the error path (an invalid root must become
// an MPIError carrying MPI_Error_string's text, not a crash).
//
// Every check is collective: all ranks run the same checks in the same order, and after each one the
// ranks agree on its outcome with an allreduce, so a failure on one rank is a failure everywhere and no
// rank leaves early (which would hang the others). Rank 0 prints one line per check; a failing rank
// prints what it expected and what it got.

import CMPI
import Foundation
import TesseraComm

public enum CommSelfCheck {
    public struct Outcome: Sendable, Equatable {
        public let checks: Int
        public let failed: Int
        public let ranks: Int
        /// The ranks' common verdict (an allreduce MIN over each rank's flag).
        public let passed: Bool
    }

    public struct Options: Sendable, Equatable {
        public var shape: MeshShape
        /// Debugging: this rank corrupts its result in one check, to show a failure stops every rank.
        public var faultRank: Int?
    }

    public struct UsageError: Error, CustomStringConvertible, Sendable {
        public let description: String
    }

    /// The check `--inject-fault RANK` corrupts on RANK.
    public static let faultCheck = "allreduce float sum (world)"

    /// Parses `[--pp N] [--dp N] [--ring N] [--ulysses N] [--inject-fault RANK]`. Without mesh flags the
    /// mesh is pp 1 × dp (world size); a flag that is not given is 1.
    public static func parse(_ arguments: [String], worldSize: Int) throws -> Options {
        let degreeFlags = ["--pp", "--dp", "--ring", "--ulysses"]
        var degrees: [String: Int] = [:]
        var fault: Int? = nil
        var rest = arguments[...]
        while let flag = rest.popFirst() {
            guard degreeFlags.contains(flag) || flag == "--inject-fault" else {
                throw UsageError(description: "mpi-check: unknown argument '\(flag)' "
                    + "(expected --pp, --dp, --ring, --ulysses, --inject-fault)")
            }
            guard let text = rest.popFirst(), let value = Int(text) else {
                throw UsageError(description: "mpi-check: \(flag) needs an integer")
            }
            if flag == "--inject-fault" {
                fault = value
            } else {
                guard degrees[flag] == nil else { throw UsageError(description: "mpi-check: \(flag) given twice") }
                degrees[flag] = value
            }
        }
        return try options(degrees: degrees, fault: fault, worldSize: worldSize)
    }

    /// The options from mesh degrees keyed by flag (`--pp`, `--dp`, `--ring`, `--ulysses`; each >= 1) and the fault
    /// rank, checked against the world size. Without degrees the mesh is pp 1 × dp (world size); a flag that is not
    /// given is 1.
    public static func options(degrees: [String: Int], fault: Int?, worldSize: Int) throws -> Options {
        for (flag, value) in degrees.sorted(by: { $0.key < $1.key }) where value < 1 {
            throw UsageError(description: "mpi-check: \(flag) must be >= 1, got \(value)")
        }
        if let fault, !(fault >= 0 && fault < worldSize) {
            throw UsageError(description: "mpi-check: --inject-fault expects a rank in 0..<\(worldSize), got \(fault)")
        }
        let shape = degrees.isEmpty ? MeshShape(pp: 1, dp: worldSize)
            : MeshShape(pp: degrees["--pp"] ?? 1, dp: degrees["--dp"] ?? 1, ring: degrees["--ring"] ?? 1,
                        ulysses: degrees["--ulysses"] ?? 1)
        return Options(shape: shape, faultRank: fault)
    }

    /// The whole subcommand: MPI up, watchdog armed, checks run, MPI down. Returns the exit status
    /// (0 all checks passed, 1 a check failed, 2 bad arguments or a mesh that does not fit the job).
    public static func command(degrees: [String: Int], fault: Int?, timeoutSeconds: Double = 60) -> Int32 {
        let runtime = MPIRuntime()
        Watchdog.shared = Watchdog(rank: runtime.rank, timeoutSeconds: timeoutSeconds) { MPIRuntime.abort($0) }
        do {
            let options = try options(degrees: degrees, fault: fault, worldSize: runtime.size)
            if runtime.rank == 0 { say("mpi-check: \(runtime.size) rank(s), \(runtime.threadLevelName)") }
            let outcome = try run(world: runtime.worldCommunicator, shape: options.shape,
                                  faultRank: options.faultRank, output: say)
            runtime.finalize()
            return outcome.passed ? 0 : 1
        } catch let error where error is UsageError || error is MeshError {
            // Found before any communication and the same on every rank: rank 0 explains, then every rank
            // finalizes (a collective: no rank exits, and makes mpirun stop the job, before the message is out).
            if runtime.rank == 0 { FileHandle.standardError.write(Data("tessera: \(explain(error))\n".utf8)) }
            runtime.finalize()
            return 2
        } catch {
            MPIRuntime.abort("mpi-check: \(error)")
        }
    }

    /// Builds the mesh and runs every check. Collective over `world`. `output` prints a line: rank 0's
    /// table and check lines, and any rank's failure details.
    public static func run(world: Communicator, shape: MeshShape, faultRank: Int? = nil,
                           output: @escaping (String) -> Void) throws -> Outcome {
        let mesh = try ProcessMesh(world: world, shape: shape)
        let table = try meshTable(mesh)
        if world.rank == 0 { table.forEach(output) }
        let runner = CheckRunner(world: world, output: output, fault: faultRank.map { ($0, faultCheck) })
        try checkMesh(mesh, runner)
        for comm in [world] + mesh.groups { try Suite(c: comm, runner: runner).runAll() }
        let verdict = try world.allreduce(Int32(runner.failed == 0 ? 1 : 0), op: .min, label: "mpi-check verdict")
        let outcome = Outcome(checks: runner.checks, failed: runner.failed, ranks: world.size, passed: verdict == 1)
        if world.rank == 0 {
            output(outcome.passed ? "mpi-check: ALL OK (\(outcome.checks) checks on \(outcome.ranks) ranks)"
                   : "mpi-check: FAILED (\(outcome.failed) of \(outcome.checks) checks failed on \(outcome.ranks) ranks)")
        }
        return outcome
    }

    static func say(_ line: String) { print(line); fflush(nil) }

    /// MeshError speaks of a config; here the mesh comes from the flags.
    static func explain(_ error: Error) -> String {
        guard case let MeshError.wrongSize(shape, worldSize)? = error as? MeshError else { return "\(error)" }
        return "mpi-check: the flags describe a mesh of \(shape.size) rank(s) (\(shape)), but this job has "
            + "\(worldSize): run it with mpirun -np \(shape.size)"
    }
}

// MARK: - the mesh

extension CommSelfCheck {
    static let groupNames = ["pipeline", "data", "sequence", "ring", "ulysses", "replicas"]

    /// The mesh as the communicators see it: every rank's coordinate and the world ranks of each of its
    /// groups (allgathered inside the group, then over the world). Lines for rank 0 to print.
    static func meshTable(_ mesh: ProcessMesh) throws -> [String] {
        let world = mesh.world, n = world.size, c = mesh.coordinate
        let width = 4 + groupNames.count * n
        var row = [Int32](repeating: -1, count: width)
        for (k, v) in [c.pp, c.dp, c.ring, c.ulysses].enumerated() { row[k] = Int32(v) }
        for (g, group) in mesh.groups.enumerated() {
            for (k, member) in try worldRanks(in: group).enumerated() { row[4 + g * n + k] = member }
        }
        let all = Buf<Int32>(n * width) { _ in -1 }
        try row.withUnsafeBufferPointer { try world.allgather(send: $0.baseAddress!, recv: all.p, count: width) }
        guard world.rank == 0 else { return [] }
        let v = all.values
        var cells = [["rank", "pp,dp,ring,ulysses"] + groupNames]
        for w in 0..<n {
            let r = v[(w * width)..<((w + 1) * width)].map(Int.init)
            var line = ["\(w)", r[0..<4].map(String.init).joined(separator: ",")]
            for g in 0..<groupNames.count {
                line.append(r[(4 + g * n)..<(4 + (g + 1) * n)].filter { $0 >= 0 }.map(String.init).joined(separator: ","))
            }
            cells.append(line)
        }
        let s = mesh.shape
        return ["mesh \(s): world rank = ((pp·\(s.dp) + dp)·\(s.ring) + ring)·\(s.ulysses) + ulysses; "
                + "group columns list world ranks"] + columns(cells)
    }

    /// The world ranks of a group's members, in group-rank order, as the group reports them.
    static func worldRanks(in group: Communicator) throws -> [Int32] {
        let mine = Buf<Int32>(1) { _ in Int32(group.worldRank) }, all = Buf<Int32>(group.size) { _ in -1 }
        try group.allgather(send: mine.p, recv: all.p, count: 1, label: "mpi-check members")
        return all.values
    }

    /// Coordinates round-trip, and each group holds exactly the ranks `members(of:)` names, in order.
    static func checkMesh(_ mesh: ProcessMesh, _ runner: CheckRunner) throws {
        let shape = mesh.shape, me = mesh.world.rank
        try runner.check("mesh coordinate round trip") { e in
            e.that(mesh.coordinate == shape.coordinate(of: me),
                   "mesh coordinate \(mesh.coordinate), shape.coordinate(of: \(me)) = \(shape.coordinate(of: me))")
            e.that(shape.rank(of: mesh.coordinate) == me, "rank(of: \(mesh.coordinate)) = \(shape.rank(of: mesh.coordinate))")
            for r in 0..<shape.size where shape.rank(of: shape.coordinate(of: r)) != r {
                e.fail("rank(of: coordinate(of: \(r))) = \(shape.rank(of: shape.coordinate(of: r)))")
            }
        }
        let degrees = ["pipeline": shape.pp, "data": shape.dp, "sequence": shape.ring * shape.ulysses,
                       "ring": shape.ring, "ulysses": shape.ulysses, "replicas": shape.dp * shape.ring * shape.ulysses]
        for group in mesh.groups {
            try runner.check("mesh group members (\(group.name))") { e in
                let expected = mesh.members(of: group)
                e.equal(try worldRanks(in: group), expected.map(Int32.init), "world ranks in group order")
                e.that(group.size == degrees[group.name], "size \(group.size), expected \(degrees[group.name] ?? -1)")
                e.that(expected.firstIndex(of: me) == group.rank,
                       "group rank \(group.rank), expected \(expected.firstIndex(of: me) ?? -1)")
            }
        }
    }

    /// Left-aligned columns, two spaces apart.
    static func columns(_ rows: [[String]]) -> [String] {
        let widths = (0..<rows[0].count).map { k in rows.map { $0[k].count }.max() ?? 0 }
        return rows.map { row in
            row.enumerated().map { k, cell in cell.padding(toLength: widths[k], withPad: " ", startingAt: 0) }
                .joined(separator: "  ").trimmingCharacters(in: .whitespaces)
        }
    }
}

// MARK: - the checks on one communicator

/// Every call of the layer on one communicator. Rank r contributes `value(r, i)` = r · 1000 + i; the
/// expected results are computed here from those values.
struct Suite {
    let c: Communicator
    let runner: CheckRunner
    var n: Int { c.size }
    var r: Int { c.rank }
    var next: Int { (r + 1) % n }
    var prev: Int { (r + n - 1) % n }

    func check(_ what: String, _ body: (inout Expectations) throws -> Void) throws {
        try runner.check("\(what) (\(c.name))", body)
    }

    func runAll() throws {
        try allreduces()
        try reduceScatterBlock(.blocking); try reduceScatterBlock(.nonBlocking(.test))
        try reduceScatterV(.blocking); try reduceScatterV(.nonBlocking(.wait))
        try allgatherBlock(.blocking); try allgatherBlock(.nonBlocking(.waitAll))
        try allgatherV()
        try allgatherInPlaceV(.blocking); try allgatherInPlaceV(.nonBlocking(.testAll))
        try alltoallBlock(.blocking); try alltoallBlock(.nonBlocking(.wait))
        try alltoallV(.blocking); try alltoallV(.nonBlocking(.test))
        try broadcast(.blocking); try broadcast(.nonBlocking(.testAll))
        try barrier(.blocking); try barrier(.nonBlocking(.test))
        try sendRecv(); try sendrecvRing(); try isendIrecv(); try isendRowsRing()
        try requestsInFlight()
        try errorPaths()
    }

    // MARK: allreduce

    /// Contributions that make max and min come from the last rank (not rank 0's own buffer).
    func contribution(_ op: ReduceOp, _ rank: Int, _ i: Int) -> Int { (op == .min ? -rank : rank) * 1000 + i }

    func reduced(_ op: ReduceOp, _ i: Int) -> Int {
        let xs = (0..<n).map { contribution(op, $0, i) }
        switch op {
        case .sum: return xs.reduce(0, +)
        case .max: return xs.max()!
        case .min: return xs.min()!
        }
    }

    func allreduces() throws {
        let ops: [ReduceOp] = [.sum, .max, .min]
        var k = 0
        func each<T: CheckValue>(_ t: T.Type) throws {
            for op in ops { try allreduce(t, op) }
            try allreduceSingle(t)
            for op in ops { try iallreduce(t, op, Completion.allCases[k % 4]); k += 1 }
        }
        try each(Float.self); try each(Double.self); try each(Int32.self); try each(Int64.self)
    }

    func allreduce<T: CheckValue>(_: T.Type, _ op: ReduceOp) throws {
        try check("allreduce \(T.typeName) \(op)") { e in
            let count = 5
            let mine = (0..<count).map { T(contribution(op, r, $0)) }, expected = (0..<count).map { T(reduced(op, $0)) }
            let inPlace = Buf(mine)
            try c.allreduce(inPlace.p, count: count, op: op, label: "mpi-check")
            e.equal(inPlace.values, expected, "in place")
            let send = Buf(mine), recv = Buf<T>(count) { _ in sentinel() }
            try c.allreduce(send: send.p, recv: recv.p, count: count, op: op, label: "mpi-check")
            e.equal(recv.values, expected, "send/recv result")
            e.equal(send.values, mine, "send/recv send buffer (must be unchanged)")
        }
    }

    func allreduceSingle<T: CheckValue>(_: T.Type) throws {
        try check("allreduce single value \(T.typeName) sum/max/min") { e in
            for op in [ReduceOp.sum, .max, .min] {
                let got = try c.allreduce(T(contribution(op, r, 7)), op: op, label: "mpi-check")
                e.equal([got], [T(reduced(op, 7))], "\(op)")
            }
        }
    }

    func iallreduce<T: CheckValue>(_: T.Type, _ op: ReduceOp, _ how: Completion) throws {
        try check("iallreduce \(T.typeName) \(op), \(how)") { e in
            let count = 5
            let buf = Buf((0..<count).map { T(contribution(op, r, $0)) })
            try complete([c.iallreduce(buf.p, count: count, op: op)], how, &e)
            e.equal(buf.values, (0..<count).map { T(reduced(op, $0)) }, "result")
        }
    }

    // MARK: reduce-scatter

    /// Block j of rank r's send buffer holds value(r, j·10 + i); rank r receives the sum of block r.
    func reduceScatterBlock(_ mode: Mode) throws {
        try check(mode.label("reduceScatter", "block")) { e in
            let k = 3
            let send = Buf<Float>(n * k) { x in Float(value(r, (x / k) * 10 + x % k)) }
            let recv = Buf<Float>(k + 1) { _ in sentinel() }
            try perform(mode, &e, { try c.reduceScatter(send: send.p, recv: recv.p, count: k) },
                        { try c.ireduceScatter(send: send.p, recv: recv.p, count: k) })
            let expected = (0..<k).map { i in Float(sumOverRanks { value($0, r * 10 + i) }) } + [sentinel()]
            e.equal(recv.values, expected, "block \(r) of the sum (+ one guard element)")
        }
    }

    /// Unequal counts with zeros (rank 1 of every group of two or more receives nothing).
    func reduceScatterV(_ mode: Mode) throws {
        try check(mode.label("reduceScatter", "v, unequal counts with a zero")) { e in
            let layout = Layout.packed(unequalCounts(shift: 2))
            let send = Buf<Double>(layout.fill { j, i in value(r, j * 10 + i) })
            let mine = layout.counts[r]
            let recv = Buf<Double>(mine + 1) { _ in sentinel() }
            try perform(mode, &e, { try c.reduceScatter(send: send.p, recv: recv.p, counts: layout.counts) },
                        { try c.ireduceScatter(send: send.p, recv: recv.p, counts: layout.counts) })
            let expected = (0..<mine).map { i in Double(sumOverRanks { value($0, r * 10 + i) }) } + [sentinel()]
            e.equal(recv.values, expected, "\(mine) element(s) of the sum (+ one guard element)")
        }
    }

    // MARK: allgather

    func allgatherBlock(_ mode: Mode) throws {
        try check(mode.label("allgather", "block")) { e in
            let k = 4
            let send = Buf<Int32>(k) { Int32(value(r, $0)) }, recv = Buf<Int32>(n * k + 1) { _ in sentinel() }
            try perform(mode, &e, { try c.allgather(send: send.p, recv: recv.p, count: k) },
                        { try c.iallgather(send: send.p, recv: recv.p, count: k) })
            let expected = (0..<(n * k)).map { Int32(value($0 / k, $0 % k)) } + [sentinel()]
            e.equal(recv.values, expected, "block s from rank s (+ one guard element)")
        }
    }

    /// Blocking only (the layer has no non-blocking allgather-v with a separate send buffer).
    func allgatherV() throws {
        try check("allgather v, displacements with gaps") { e in
            let layout = Layout.gapped(unequalCounts(shift: 2))
            let send = Buf<Int64>(layout.counts[r]) { Int64(value(r, $0)) }
            let recv = Buf<Int64>(layout.total) { _ in sentinel() }
            try c.allgather(send: send.p, count: layout.counts[r], recv: recv.p, counts: layout.counts,
                            displacements: layout.displacements)
            e.equal(recv.values, layout.fill { s, i in value(s, i) }, "blocks at their displacements, gaps untouched")
        }
    }

    func allgatherInPlaceV(_ mode: Mode) throws {
        try check(mode.label("allgather", "in place v")) { e in
            let layout = Layout.gapped(unequalCounts(shift: 2))
            let buf = Buf<Float>(layout.fill { s, i in s == r ? value(s, i) : nil })
            try perform(mode, &e,
                        { try c.allgather(inPlace: buf.p, counts: layout.counts, displacements: layout.displacements) },
                        { try c.iallgather(inPlace: buf.p, counts: layout.counts, displacements: layout.displacements) })
            e.equal(buf.values, layout.fill { s, i in value(s, i) }, "blocks at their displacements, gaps untouched")
        }
    }

    // MARK: all-to-all

    /// Block j of rank r's send buffer (value(r, j·10 + i)) lands as block r on rank j.
    func alltoallBlock(_ mode: Mode) throws {
        try check(mode.label("alltoall", "block")) { e in
            let k = 2
            let send = Buf<Float>(n * k) { x in Float(value(r, (x / k) * 10 + x % k)) }
            let recv = Buf<Float>(n * k + 1) { _ in sentinel() }
            try perform(mode, &e, { try c.alltoall(send: send.p, recv: recv.p, count: k) },
                        { try c.ialltoall(send: send.p, recv: recv.p, count: k) })
            let expected = (0..<(n * k)).map { x in Float(value(x / k, r * 10 + x % k)) } + [sentinel()]
            e.equal(recv.values, expected, "block s from rank s (+ one guard element)")
        }
    }

    /// Rank a sends (a + b + 1) % 3 elements to rank b: unequal counts with zeros; received blocks gapped.
    func alltoallV(_ mode: Mode) throws {
        try check(mode.label("alltoall", "v, unequal counts with a zero")) { e in
            let count = { (from: Int, to: Int) in (from + to + 1) % 3 }
            let out = Layout.packed((0..<n).map { count(r, $0) })
            let into = Layout.gapped((0..<n).map { count($0, r) })
            let send = Buf<Int32>(out.fill { j, i in value(r, j * 10 + i) })
            let recv = Buf<Int32>(into.total) { _ in sentinel() }
            try perform(mode, &e,
                        { try c.alltoall(send: send.p, sendCounts: out.counts, sendDisplacements: out.displacements,
                                         recv: recv.p, recvCounts: into.counts, recvDisplacements: into.displacements) },
                        { try c.ialltoall(send: send.p, sendCounts: out.counts, sendDisplacements: out.displacements,
                                          recv: recv.p, recvCounts: into.counts, recvDisplacements: into.displacements) })
            e.equal(recv.values, into.fill { s, i in value(s, r * 10 + i) }, "blocks from each rank, gaps untouched")
        }
    }

    // MARK: broadcast, barrier

    func broadcast(_ mode: Mode) throws {
        try check(mode.label("broadcast", "from the last rank")) { e in
            let root = n - 1, k = 6
            let buf = Buf<Double>(k) { r == root ? Double(value(root, $0)) : sentinel() }
            try perform(mode, &e, { try c.broadcast(buf.p, count: k, root: root) },
                        { try c.ibroadcast(buf.p, count: k, root: root) })
            e.equal(buf.values, (0..<k).map { Double(value(root, $0)) }, "root \(root)'s values")
        }
    }

    /// A barrier has no data; it must complete without error on every rank.
    func barrier(_ mode: Mode) throws {
        try check(mode.label("barrier", "")) { e in
            try perform(mode, &e, { try c.barrier() }, { try c.ibarrier() })
        }
    }

    // MARK: point to point

    /// Around the ring: rank r sends 2 + r elements to r + 1, which posts room for more and must report
    /// the count it got. Rank 0 sends first, the others receive first (no deadlock). Alone, a rank sends to
    /// itself with isend.
    func sendRecv() throws {
        try check("send/recv around the ring, received count") { e in
            let capacity = n + 3
            let send = Buf<Float>(2 + r) { Float(value(r, $0)) }, recv = Buf<Float>(capacity) { _ in sentinel() }
            var got = -1
            if n == 1 {
                let request = try c.isend(send.p, count: send.count, to: 0, tag: 11)
                got = try c.recv(recv.p, count: capacity, from: 0, tag: 11)
                try complete([request], .wait, &e)
            } else if r == 0 {
                try c.send(send.p, count: send.count, to: next, tag: 11)
                got = try c.recv(recv.p, count: capacity, from: prev, tag: 11)
            } else {
                got = try c.recv(recv.p, count: capacity, from: prev, tag: 11)
                try c.send(send.p, count: send.count, to: next, tag: 11)
            }
            e.equal([Int32(got)], [Int32(2 + prev)], "received count from rank \(prev)")
            let expected = (0..<(2 + prev)).map { Float(value(prev, $0)) }
            e.equal(recv.values, expected + Array(repeating: sentinel(), count: capacity - expected.count), "values")
        }
    }

    func sendrecvRing() throws {
        try check("sendrecv around the ring") { e in
            let k = 4
            let send = Buf<Int64>(k) { Int64(value(r, $0)) }, recv = Buf<Int64>(k) { _ in sentinel() }
            try c.sendrecv(send: send.p, sendCount: k, to: next, sendTag: 12, recv: recv.p, recvCount: k, from: prev,
                           recvTag: 12)
            e.equal(recv.values, (0..<k).map { Int64(value(prev, $0)) }, "values from rank \(prev)")
        }
    }

    /// A block of columns sent without packing: each rank sends columns 1..<3 of a 4-row × 5-column matrix
    /// to the next rank, which receives them as 8 contiguous values.
    func isendRowsRing() throws {
        try check("isendRows (column block, vector type) around the ring") { e in
            let rows = 4, cols = 5, width = 2
            let matrix = Buf<Float>(rows * cols) { Float(value(r, $0)) }, recv = Buf<Float>(rows * width + 1) { _ in sentinel() }
            let receive = try c.irecv(recv.p, count: rows * width, from: prev, tag: 13)
            let send = try c.isendRows(matrix.p + 1, rows: rows, width: width, stride: cols, to: next, tag: 13)
            try complete([receive, send], .waitAll, &e)
            var expected: [Float] = []
            for row in 0..<rows { for col in 1...width { expected.append(Float(value(prev, row * cols + col))) } }
            e.equal(recv.values, expected + [sentinel()], "columns 1-2 of rank \(prev)'s matrix")
        }
    }

    /// Both receives are posted everywhere (then a barrier) before any send starts.
    func isendIrecv() throws {
        try check("isend/irecv both ways, receives posted first, waitAll") { e in
            let k = 3
            let fromPrev = Buf<Double>(k) { _ in sentinel() }, fromNext = Buf<Double>(k) { _ in sentinel() }
            let toNext = Buf<Double>(k) { Double(value(r, $0)) }, toPrev = Buf<Double>(k) { Double(value(r, 100 + $0)) }
            let receives = [try c.irecv(fromPrev.p, count: k, from: prev, tag: 21),
                            try c.irecv(fromNext.p, count: k, from: next, tag: 22)]
            try c.barrier()
            let sends = [try c.isend(toNext.p, count: k, to: next, tag: 21),
                         try c.isend(toPrev.p, count: k, to: prev, tag: 22)]
            try complete(receives + sends, .waitAll, &e)
            e.equal(fromPrev.values, (0..<k).map { Double(value(prev, $0)) }, "from rank \(prev)")
            e.equal(fromNext.values, (0..<k).map { Double(value(next, 100 + $0)) }, "from rank \(next)")
        }
    }

    // MARK: requests

    /// Four different operations in flight at once, polled with testAll; afterwards test and waitAll on
    /// the completed requests return at once.
    func requestsInFlight() throws {
        try check("four requests in flight, testAll then test/waitAll again") { e in
            let sum = Buf<Float>(4) { Float(value(r, $0)) }
            let bcast = Buf<Int64>(3) { r == 0 ? Int64(value(0, 50 + $0)) : sentinel() }
            let send = Buf<Int32>(n) { Int32(value(r, $0)) }, recv = Buf<Int32>(n) { _ in sentinel() }
            let requests = [try c.iallreduce(sum.p, count: 4), try c.ibroadcast(bcast.p, count: 3, root: 0),
                            try c.ibarrier(), try c.ialltoall(send: send.p, recv: recv.p, count: 1)]
            try complete(requests, .testAll, &e)
            e.that(try requests.allSatisfy { try $0.test() }, "test() on a completed request returned false")
            try Request.waitAll(requests)
            e.equal(sum.values, (0..<4).map { i in Float(sumOverRanks { value($0, i) }) }, "iallreduce")
            e.equal(bcast.values, (0..<3).map { Int64(value(0, 50 + $0)) }, "ibroadcast")
            e.equal(recv.values, (0..<n).map { Int32(value($0, r)) }, "ialltoall")
        }
    }

    // MARK: errors

    /// Invalid arguments come back as MPIErrors with MPI_Error_string's text, and the communicator still
    /// works afterwards.
    func errorPaths() throws {
        try check("broadcast root = size is MPI_ERR_ROOT") { e in
            let buf = Buf<Int32>(1) { _ in 5 }
            e.throwsMPIError(errorClass: MPI_ERR_ROOT, text: "MPI_ERR_ROOT", operation: "MPI_Bcast", rank: c.worldRank) {
                try c.broadcast(buf.p, count: 1, root: n)
            }
            e.equal(buf.values, [5], "buffer after the failed broadcast")
            e.equal([try c.allreduce(Int32(1), op: .sum)], [Int32(n)], "allreduce after the error")
        }
        try check("ibroadcast root = size is MPI_ERR_ROOT") { e in
            let buf = Buf<Int32>(1) { _ in 5 }
            e.throwsMPIError(errorClass: MPI_ERR_ROOT, text: "MPI_ERR_ROOT", operation: "MPI_Ibcast", rank: c.worldRank) {
                _ = try c.ibroadcast(buf.p, count: 1, root: n)
            }
            e.equal([try c.allreduce(Int32(1), op: .sum)], [Int32(n)], "allreduce after the error")
        }
        try check("negative count is an MPIError") { e in
            let buf = Buf<Float>(1) { _ in 0 }
            e.throwsMPIError(errorClass: nil, text: "count -1 outside", operation: "MPI_Allreduce", rank: c.worldRank) {
                try c.allreduce(buf.p, count: -1)
            }
        }
    }

    // MARK: helpers

    func value(_ rank: Int, _ i: Int) -> Int { rank * 1000 + i }

    func sumOverRanks(_ f: (Int) -> Int) -> Int { (0..<n).map(f).reduce(0, +) }

    /// Per-rank counts 2, 0, 1, 2, 0, ... shifted: unequal, with zeros from two ranks up.
    func unequalCounts(shift: Int) -> [Int] { (0..<n).map { ($0 + shift) % 3 } }

    /// Runs the blocking call, or starts the non-blocking one and completes it as `mode` says.
    func perform(_ mode: Mode, _ e: inout Expectations, _ blocking: () throws -> Void,
                 _ nonBlocking: () throws -> Request) throws {
        switch mode {
        case .blocking: try blocking()
        case .nonBlocking(let how): try complete([try nonBlocking()], how, &e)
        }
    }
}

/// A value no check ever produces, for guard elements and unwritten slots.
func sentinel<T: CheckValue>() -> T { T(-1) }

// MARK: - non-blocking completion

enum Completion: String, CaseIterable, CustomStringConvertible {
    case wait, test, waitAll, testAll
    var description: String { rawValue }
}

enum Mode {
    case blocking, nonBlocking(Completion)

    /// "allgather block" or "iallgather block, testAll".
    func label(_ call: String, _ detail: String) -> String {
        let d = detail.isEmpty ? "" : " \(detail)"
        switch self {
        case .blocking: return call + d
        case .nonBlocking(let how): return "i\(call)\(d), \(how)"
        }
    }
}

/// Completes requests the way `how` names, then expects every one complete.
func complete(_ requests: [Request], _ how: Completion, _ e: inout Expectations) throws {
    switch how {
    case .wait: for request in requests { try request.wait() }
    case .waitAll: try Request.waitAll(requests)
    case .test: try poll(requests) { try requests.allSatisfy { try $0.test() } }
    case .testAll: try poll(requests) { try Request.testAll(requests) == requests.count }
    }
    e.that(requests.allSatisfy(\.isComplete), "a request is not complete after \(how)")
}

/// Polls until `done`. Each test drives MPI's progress engine; the watchdog ends a poll that never finishes.
func poll(_ requests: [Request], _ done: () throws -> Bool) throws {
    let dog = Watchdog.shared
    let token = requests.first.flatMap { dog?.arm("MPI_Test polling", requests.map(\.label).joined(separator: ", "), $0.comm) }
    defer { if let token { dog?.disarm(token) } }
    while try !done() { sched_yield() }
}

// MARK: - running checks

/// Runs named checks collectively and agrees on each outcome over the world.
final class CheckRunner {
    let world: Communicator
    let output: (String) -> Void
    let fault: (rank: Int, check: String)?
    private(set) var checks = 0, failed = 0

    init(world: Communicator, output: @escaping (String) -> Void, fault: (rank: Int, check: String)?) {
        self.world = world; self.output = output; self.fault = fault
    }

    func check(_ name: String, _ body: (inout Expectations) throws -> Void) throws {
        var e = Expectations(corrupt: fault.map { $0.rank == world.rank && $0.check == name } ?? false)
        do { try body(&e) } catch { e.fail("threw \(error)") }
        for failure in e.failures { output("FAIL \(name): rank \(world.rank): \(failure)") }
        let failing = try world.allreduce(Int32(e.failures.isEmpty ? 0 : 1), op: .sum, label: "mpi-check agreement")
        checks += 1
        if failing > 0 { failed += 1 }
        guard world.rank == 0 else { return }
        output(failing == 0 ? "ok  \(name)" : "FAIL \(name): failed on \(failing) of \(world.size) rank(s)")
    }
}

/// What one rank found wrong in one check.
struct Expectations {
    private(set) var failures: [String] = []
    /// --inject-fault: the first compared result is corrupted before the comparison.
    var corrupt: Bool

    mutating func fail(_ message: String) { failures.append(message) }

    mutating func that(_ condition: Bool, _ message: @autoclosure () -> String) {
        if !condition { fail(message()) }
    }

    /// Element-wise exact comparison; reports the first difference and how many there are.
    mutating func equal<T: CheckValue>(_ got: [T], _ expected: [T], _ what: String) {
        var got = got
        if corrupt && !got.isEmpty { got[0] = T(-999_999); corrupt = false }
        guard got.count == expected.count else {
            return fail("\(what): \(got.count) elements, expected \(expected.count)")
        }
        let differing = got.indices.filter { got[$0] != expected[$0] }
        guard let i = differing.first else { return }
        let more = differing.count > 1 ? " (\(differing.count) of \(got.count) elements differ)" : ""
        fail("\(what): element \(i): expected \(expected[i]), got \(got[i])\(more)")
    }

    /// `body` must throw an MPIError for `operation` on `rank` whose message contains `text`, with MPI error
    /// class `errorClass` (nil: an error the layer raises before calling MPI).
    mutating func throwsMPIError(errorClass: Int32?, text: String, operation: String, rank: Int,
                                 _ body: () throws -> Void) {
        do {
            try body()
            fail("no error thrown")
        } catch let error as MPIError {
            that(error.message.contains(text), "message '\(error.message)' does not mention \(text)")
            that(error.operation.contains(operation), "operation '\(error.operation)', expected \(operation)")
            that(error.rank == rank, "error names rank \(error.rank), expected \(rank)")
            if let errorClass {
                var cls: Int32 = -1
                MPI_Error_class(error.code, &cls)
                that(cls == errorClass, "MPI error class \(cls), expected \(errorClass)")
                that(error.message == MPIError.text(error.code), "message is not MPI_Error_string's")
            }
        } catch {
            fail("threw \(type(of: error)) \(error), not an MPIError")
        }
    }
}

// MARK: - data

/// Element types the checks use (every MPIScalar the layer reduces), built from exact small integers.
protocol CheckValue: MPIScalar, Comparable, CustomStringConvertible {
    init(_ value: Int)
    static var typeName: String { get }
}
extension Float: CheckValue { static var typeName: String { "float" } }
extension Double: CheckValue { static var typeName: String { "double" } }
extension Int32: CheckValue { static var typeName: String { "int32" } }
extension Int64: CheckValue { static var typeName: String { "int64" } }

/// Stable storage for one buffer: non-blocking calls need memory that outlives the call.
final class Buf<T: MPIScalar> {
    let p: UnsafeMutablePointer<T>
    let count: Int

    init(_ values: [T]) {
        count = values.count
        p = .allocate(capacity: max(count, 1))
        p.initialize(from: values, count: count)
    }
    convenience init(_ count: Int, _ value: (Int) -> T) { self.init((0..<count).map(value)) }
    deinit { p.deinitialize(count: count); p.deallocate() }

    var values: [T] { Array(UnsafeBufferPointer(start: p, count: count)) }
}

/// Per-rank blocks in one buffer: counts and displacements (elements) for the v-variants.
struct Layout {
    let counts: [Int], displacements: [Int], total: Int

    /// Blocks back to back.
    static func packed(_ counts: [Int]) -> Layout {
        Layout(counts: counts, displacements: offsets(counts, gap: 0), total: counts.reduce(0, +))
    }

    /// One unused element before each block and one after the last, so a wrong displacement shows.
    static func gapped(_ counts: [Int]) -> Layout {
        Layout(counts: counts, displacements: offsets(counts, gap: 1), total: counts.reduce(0, +) + counts.count + 1)
    }

    static func offsets(_ counts: [Int], gap: Int) -> [Int] {
        var at = 0
        return counts.map { count in at += gap; defer { at += count }; return at }
    }

    /// The buffer with element i of block j = value(j, i) (a sentinel where value is nil and in the gaps).
    func fill<T: CheckValue>(_ value: (Int, Int) -> Int?) -> [T] {
        var out = [T](repeating: sentinel(), count: total)
        for (j, count) in counts.enumerated() {
            for i in 0..<count { if let v = value(j, i) { out[displacements[j] + i] = T(v) } }
        }
        return out
    }
}
