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

    /// Parses `[--pp N] [--dp N] [--ring N] [--ulysses N] [--order D,D,D,D] [--inject-fault RANK]`. Without mesh
    /// flags the mesh is pp 1 × dp (world size); a flag that is not given is 1.
    public static func parse(_ arguments: [String], worldSize: Int) throws -> Options {
        let degreeFlags = ["--pp", "--dp", "--ring", "--ulysses"]
        var degrees: [String: Int] = [:]
        var fault: Int? = nil, order: String? = nil
        var rest = arguments[...]
        while let flag = rest.popFirst() {
            guard degreeFlags.contains(flag) || flag == "--inject-fault" || flag == "--order" else {
                throw UsageError(description: "mpi-check: unknown argument '\(flag)' "
                    + "(expected --pp, --dp, --ring, --ulysses, --order, --inject-fault)")
            }
            if flag == "--order" {
                guard let text = rest.popFirst() else { throw UsageError(description: "mpi-check: --order needs the four dimensions") }
                order = text
                continue
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
        return try options(degrees: degrees, fault: fault, worldSize: worldSize, order: order)
    }

    /// The options from mesh degrees keyed by flag (`--pp`, `--dp`, `--ring`, `--ulysses`; each >= 1), the fault
    /// rank, checked against the world size, and the order of the dimensions (innermost first, e.g. "pp,dp,ring,ulysses";
    /// nil = the default). Without degrees the mesh is pp 1 × dp (world size); a flag that is not given is 1.
    public static func options(degrees: [String: Int], fault: Int?, worldSize: Int, order: String? = nil) throws -> Options {
        for (flag, value) in degrees.sorted(by: { $0.key < $1.key }) where value < 1 {
            throw UsageError(description: "mpi-check: \(flag) must be >= 1, got \(value)")
        }
        if let fault, !(fault >= 0 && fault < worldSize) {
            throw UsageError(description: "mpi-check: --inject-fault expects a rank in 0..<\(worldSize), got \(fault)")
        }
        let shape = degrees.isEmpty ? MeshShape(pp: 1, dp: worldSize)
            : MeshShape(pp: degrees["--pp"] ?? 1, dp: degrees["--dp"] ?? 1, ring: degrees["--ring"] ?? 1,
                        ulysses: degrees["--ulysses"] ?? 1)
        var options = Options(shape: shape, faultRank: fault)
        if let order {
            guard let dims = MeshDimension.order(order) else {
                throw UsageError(description: "mpi-check: --order expects the four dimensions innermost first, e.g. pp,dp,ring,ulysses; got '\(order)'")
            }
            options.shape.order = dims
        }
        return options
    }

    /// The whole subcommand: MPI up, watchdog armed, checks run, MPI down. Returns the exit status
    /// (0 all checks passed, 1 a check failed, 2 bad arguments or a mesh that does not fit the job).
    public static func command(degrees: [String: Int], fault: Int?, order: String? = nil, timeoutSeconds: Double = 60) -> Int32 {
        let runtime = MPIRuntime()
        Watchdog.shared = Watchdog(rank: runtime.rank, timeoutSeconds: timeoutSeconds) { MPIRuntime.abort($0) }
        do {
            let options = try options(degrees: degrees, fault: fault, worldSize: runtime.size, order: order)
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
        var index = "0"
        for d in s.order.reversed() where s.degree(d) > 1 { index = index == "0" ? d.rawValue : (index.contains(" ") ? "(\(index))" : index) + "·\(s.degree(d)) + \(d.rawValue)" }
        return ["mesh \(s): world rank = \(index); group columns list world ranks"] + columns(cells)
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
