import Foundation
import XCTest
import TesseraComm
import TesseraSelfCheck

/// The communication layer: `tessera mpi-check` under mpirun on several world sizes and meshes (every call
/// of the layer on real data, on the world and on each mesh group), its failure paths, and the mesh
/// arithmetic and argument parsing without MPI.
final class CommTests: XCTestCase {
    static var binary: String {
        URL(fileURLWithPath: "/proc/self/exe").resolvingSymlinksInPath().deletingLastPathComponent()
            .appendingPathComponent("tessera").path
    }

    /// 7 mesh checks (coordinates, six groups) + 52 checks on each of 7 communicators (world + six groups).
    static let checksPerRun = 7 + 7 * 53
    static let communicators = ["world", "pipeline", "data", "sequence", "ring", "ulysses", "replicas"]

    func mpiCheck(np: Int, _ flags: [String] = []) throws -> (Int32, String) {
        try runProcess(["mpirun", "-np", "\(np)", Self.binary, "mpi-check"] + flags, timeout: 240)
    }

    /// Runs mpi-check and expects every check to pass on every rank; returns the output.
    @discardableResult
    func expectAllOK(np: Int, _ flags: [String] = [], file: StaticString = #filePath, line: UInt = #line) throws -> String {
        let (status, out) = try mpiCheck(np: np, flags)
        XCTAssertEqual(status, 0, out, file: file, line: line)
        XCTAssertTrue(out.contains("mpi-check: ALL OK (\(Self.checksPerRun) checks on \(np) ranks)"), out,
                      file: file, line: line)
        let lines = out.split(separator: "\n")
        XCTAssertEqual(lines.filter { $0.hasPrefix("ok  ") }.count, Self.checksPerRun, out, file: file, line: line)
        XCTAssertFalse(lines.contains { $0.hasPrefix("FAIL") }, out, file: file, line: line)
        for comm in Self.communicators {
            for check in ["alltoall v, unequal counts with a zero", "isend/irecv both ways, receives posted first, waitAll",
                          "broadcast root = size is MPI_ERR_ROOT", "isendRows (column block, vector type) around the ring"] {
                XCTAssertTrue(out.contains("ok  \(check) (\(comm))"), "missing '\(check) (\(comm))'", file: file, line: line)
            }
        }
        return out
    }

    /// The mesh table's row for a world rank, split on whitespace:
    /// [rank, "pp,dp,ring,ulysses", pipeline, data, sequence, ring, ulysses, replicas members].
    func tableRow(_ out: String, rank: Int) -> [String] {
        let rows = out.split(separator: "\n").map { $0.split(separator: " ").map(String.init) }
        return rows.first { $0.count == 8 && $0[0] == "\(rank)" } ?? []
    }

    func expectTable(_ out: String, _ expected: [[String]], file: StaticString = #filePath, line: UInt = #line) {
        for (rank, row) in expected.enumerated() {
            XCTAssertEqual(tableRow(out, rank: rank), ["\(rank)"] + row, "mesh table row of rank \(rank)\n\(out)",
                           file: file, line: line)
        }
    }

    // MARK: world sizes (mesh pp 1 × dp world)

    func testOneRank() throws { try expectAllOK(np: 1) }
    func testTwoRanks() throws { try expectAllOK(np: 2) }
    func testThreeRanks() throws { try expectAllOK(np: 3) }
    func testFourRanks() throws { try expectAllOK(np: 4) }
    func testEightRanksOversubscribed() throws { try expectAllOK(np: 8) }

    // MARK: meshes

    func testMeshPipeline2Data2Ring2() throws {
        let out = try expectAllOK(np: 8, ["--pp", "2", "--dp", "2", "--ring", "2"])
        // coordinate, then the world ranks of pipeline, data, sequence, ring, ulysses, replicas
        expectTable(out, [
            ["0,0,0,0", "0,4", "0,2", "0,1", "0,1", "0", "0,1,2,3"],
            ["0,0,1,0", "1,5", "1,3", "0,1", "0,1", "1", "0,1,2,3"],
            ["0,1,0,0", "2,6", "0,2", "2,3", "2,3", "2", "0,1,2,3"],
            ["0,1,1,0", "3,7", "1,3", "2,3", "2,3", "3", "0,1,2,3"],
            ["1,0,0,0", "0,4", "4,6", "4,5", "4,5", "4", "4,5,6,7"],
            ["1,0,1,0", "1,5", "5,7", "4,5", "4,5", "5", "4,5,6,7"],
            ["1,1,0,0", "2,6", "4,6", "6,7", "6,7", "6", "4,5,6,7"],
            ["1,1,1,0", "3,7", "5,7", "6,7", "6,7", "7", "4,5,6,7"],
        ])
    }

    func testMeshData2Ulysses2() throws {
        let out = try expectAllOK(np: 4, ["--dp", "2", "--ulysses", "2"])
        expectTable(out, [
            ["0,0,0,0", "0", "0,2", "0,1", "0", "0,1", "0,1,2,3"],
            ["0,0,0,1", "1", "1,3", "0,1", "1", "0,1", "0,1,2,3"],
            ["0,1,0,0", "2", "0,2", "2,3", "2", "2,3", "0,1,2,3"],
            ["0,1,0,1", "3", "1,3", "2,3", "3", "2,3", "0,1,2,3"],
        ])
    }

    func testMeshRing2Ulysses2() throws {
        let out = try expectAllOK(np: 4, ["--ring", "2", "--ulysses", "2"])
        expectTable(out, [
            ["0,0,0,0", "0", "0", "0,1,2,3", "0,2", "0,1", "0,1,2,3"],
            ["0,0,0,1", "1", "1", "0,1,2,3", "1,3", "0,1", "0,1,2,3"],
            ["0,0,1,0", "2", "2", "0,1,2,3", "0,2", "2,3", "0,1,2,3"],
            ["0,0,1,1", "3", "3", "0,1,2,3", "1,3", "2,3", "0,1,2,3"],
        ])
    }

    /// Another order of the dimensions (pipeline innermost, as a placement may choose): the groups follow the
    /// coordinates, whatever world ranks hold them.
    func testMeshInAnotherOrder() throws {
        let out = try expectAllOK(np: 4, ["--pp", "2", "--dp", "2", "--order", "pp,dp,ring,ulysses"])
        XCTAssertTrue(out.contains("world rank = dp·2 + pp"), out)
        expectTable(out, [
            ["0,0,0,0", "0,1", "0,2", "0", "0", "0", "0,2"],
            ["1,0,0,0", "0,1", "1,3", "1", "1", "1", "1,3"],
            ["0,1,0,0", "2,3", "0,2", "2", "2", "2", "0,2"],
            ["1,1,0,0", "2,3", "1,3", "3", "3", "3", "1,3"],
        ])
    }

    // MARK: failure paths

    func testMeshThatDoesNotFitTheWorldNamesTheRankCount() throws {
        let (status, out) = try mpiCheck(np: 3, ["--dp", "2"])
        XCTAssertNotEqual(status, 0, out)
        XCTAssertTrue(out.contains("mpirun -np 2"), out)
        XCTAssertFalse(out.contains("ok  "), "no rank may run checks: \(out)")
    }

    /// One rank sees a wrong result in one check: every rank must decide FAIL (exit non-zero, no hang),
    /// and the failing rank names the check, what it expected and what it got.
    func testFailureOnOneRankFailsTheJob() throws {
        let (status, out) = try mpiCheck(np: 3, ["--inject-fault", "1"])
        XCTAssertNotEqual(status, 0, out)
        XCTAssertTrue(out.contains("FAIL allreduce float sum (world): rank 1: in place: element 0: expected 3000.0, got -999999.0"), out)
        XCTAssertTrue(out.contains("FAIL allreduce float sum (world): failed on 1 of 3 rank(s)"), out)
        XCTAssertTrue(out.contains("mpi-check: FAILED (1 of \(Self.checksPerRun) checks failed on 3 ranks)"), out)
        XCTAssertFalse(out.contains("ALL OK"), out)
        XCTAssertEqual(out.split(separator: "\n").filter { $0.hasPrefix("ok  ") }.count, Self.checksPerRun - 1, out)
    }

    func testBadArgumentsAreRejected() throws {
        for flags in [["--dp", "0"], ["--tp", "2"]] {  // the other cases: testArgumentsGiveTheMesh
            let (status, out) = try mpiCheck(np: 1, flags)
            XCTAssertNotEqual(status, 0, "\(flags): \(out)")
            XCTAssertTrue(out.contains("mpi-check: "), "\(flags): \(out)")
            XCTAssertFalse(out.contains("ok  "), "\(flags): \(out)")
        }
    }

    // MARK: without MPI

    func testArgumentsGiveTheMesh() throws {
        XCTAssertEqual(try CommSelfCheck.parse([], worldSize: 6).shape, MeshShape(pp: 1, dp: 6, ring: 1, ulysses: 1))
        XCTAssertEqual(try CommSelfCheck.parse(["--ring", "2"], worldSize: 6).shape, MeshShape(ring: 2))
        let o = try CommSelfCheck.parse(["--pp", "2", "--dp", "3", "--ulysses", "4", "--inject-fault", "5"], worldSize: 24)
        XCTAssertEqual(o.shape, MeshShape(pp: 2, dp: 3, ring: 1, ulysses: 4))
        XCTAssertEqual(o.faultRank, 5)
        XCTAssertEqual(try CommSelfCheck.parse(["--inject-fault", "0"], worldSize: 4).shape, MeshShape(dp: 4))
        XCTAssertEqual(try CommSelfCheck.parse(["--dp", "4", "--order", "dp,pp,ring,ulysses"], worldSize: 4).shape,
                       MeshShape(dp: 4, order: [.dp, .pp, .ring, .ulysses]))
        for bad in [["--dp", "0"], ["--dp", "two"], ["--ulysses"], ["-dp", "2"], ["--inject-fault", "4"], ["--pp", "2", "--pp", "2"],
                    ["--order", "dp,pp,ring"], ["--order", "dp,dp,ring,ulysses"], ["--order", "dp,pp,ring,tp"], ["--order"]] {
            XCTAssertThrowsError(try CommSelfCheck.parse(bad, worldSize: 4), "\(bad)")
        }
    }

    func testCoordinateAndRankAreInverse() {
        let shapes = [MeshShape(), MeshShape(dp: 5), MeshShape(pp: 2, dp: 2, ring: 2), MeshShape(dp: 2, ulysses: 2),
                      MeshShape(ring: 2, ulysses: 2), MeshShape(pp: 3, dp: 2, ring: 2, ulysses: 4),
                      MeshShape(pp: 3, dp: 2, ring: 2, ulysses: 4, order: [.pp, .ring, .ulysses, .dp]),
                      MeshShape(pp: 2, dp: 3, order: [.dp, .ulysses, .pp, .ring])]
        for s in shapes {
            var seen = Set<[Int]>()
            for r in 0..<s.size {
                let c = s.coordinate(of: r)
                XCTAssertTrue((0..<s.pp).contains(c.pp) && (0..<s.dp).contains(c.dp) && (0..<s.ring).contains(c.ring)
                              && (0..<s.ulysses).contains(c.ulysses), "\(s): rank \(r) -> \(c)")
                XCTAssertEqual(s.rank(of: c), r, "\(s): rank(of: coordinate(of: \(r)))")
                seen.insert([c.pp, c.dp, c.ring, c.ulysses])
            }
            XCTAssertEqual(seen.count, s.size, "\(s): coordinates are not distinct")
        }
    }

    /// World rank = ((pp·D + dp)·R + ring)·U + ulysses: Ulysses innermost (stride 1), then ring (U), data
    /// (R·U), pipeline outermost (D·R·U). Degrees differ so every stride is distinct.
    func testUlyssesIsInnermostAndPipelineOutermost() {
        let s = MeshShape(pp: 2, dp: 3, ring: 2, ulysses: 4)
        XCTAssertEqual(s.size, 48)
        XCTAssertEqual(s.coordinate(of: 1), MeshCoordinate(pp: 0, dp: 0, ring: 0, ulysses: 1))
        XCTAssertEqual(s.coordinate(of: 4), MeshCoordinate(pp: 0, dp: 0, ring: 1, ulysses: 0))
        XCTAssertEqual(s.coordinate(of: 8), MeshCoordinate(pp: 0, dp: 1, ring: 0, ulysses: 0))
        XCTAssertEqual(s.coordinate(of: 24), MeshCoordinate(pp: 1, dp: 0, ring: 0, ulysses: 0))
        XCTAssertEqual(s.coordinate(of: 47), MeshCoordinate(pp: 1, dp: 2, ring: 1, ulysses: 3))
        XCTAssertEqual(s.rank(of: MeshCoordinate(pp: 1, dp: 2, ring: 0, ulysses: 3)), 24 + 16 + 3)
        // Consecutive ranks walk Ulysses first.
        XCTAssertEqual((0..<4).map { s.coordinate(of: $0).ulysses }, [0, 1, 2, 3])
        XCTAssertEqual((0..<4).map { s.coordinate(of: $0).ring }, [0, 0, 0, 0])
    }

    func testWrongSizeMessageNamesTheRankCount() {
        let e = MeshError.wrongSize(shape: MeshShape(pp: 2, dp: 2, ring: 2), worldSize: 4)
        XCTAssertTrue(e.description.contains("mpirun -np 8"), e.description)
    }

    /// The watchdog's background thread checks deadlines while other threads arm and disarm. An entry
    /// armed between its clock reading and its lock used to make `now - since` wrap (a trap in this debug
    /// build, a false timeout in release). With a timeout far beyond the test, nothing may be reported.
    func testWatchdogUnderArmDisarmStormReportsNothing() {
        let reported = Reports()
        let dog = Watchdog(rank: 0, timeoutSeconds: 10_000) { reported.add($0) }
        DispatchQueue.concurrentPerform(iterations: 2) { _ in
            let end = Date().addingTimeInterval(2)
            while Date() < end {
                for _ in 0..<1000 { dog.disarm(dog.arm("storm", "", nil)) }
            }
        }
        XCTAssertEqual(reported.all, [])
    }
}

final class Reports: @unchecked Sendable {
    private let lock = NSLock()
    private var lines: [String] = []
    func add(_ s: String) { lock.lock(); lines.append(s); lock.unlock() }
    var all: [String] { lock.lock(); defer { lock.unlock() }; return lines }
}
