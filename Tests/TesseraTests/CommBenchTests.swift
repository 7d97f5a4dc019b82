import Foundation
import XCTest
@testable import tessera
import TesseraBench

/// `tessera bench-comm` end to end under `mpirun -np 2` (quick mode): the report parses and covers every size
/// with positive bandwidths for both the C loop and the Swift layer. No timing assertions.
final class CommBenchTests: XCTestCase {
    static var binary: String {
        URL(fileURLWithPath: "/proc/self/exe").resolvingSymlinksInPath().deletingLastPathComponent()
            .appendingPathComponent("tessera").path
    }

    func testBenchCommReportsEverySizeForBothPaths() throws {
        let (status, out) = try runProcess(["mpirun", "-np", "2", Self.binary, "bench-comm", "--max-mib", "1",
                                            "--rounds", "2", "--json"], timeout: 240)
        XCTAssertEqual(status, 0, out)
        XCTAssertTrue(out.contains("on 2 ranks"), out)
        XCTAssertTrue(out.contains("single-copy mechanism"), out)
        XCTAssertTrue(out.contains("Swift layer within"), out)
        let sizes = CommBench.sizes(maxMiB: 1)
        XCTAssertEqual(sizes.first, 1024)
        XCTAssertEqual(sizes.last, 1 << 20)
        var seen: [Int: [String: Any]] = [:]
        for o in benchReports(out, bench: "bench-comm") {
            let bytes = try XCTUnwrap(o["bytes"] as? Int, "\(o)")
            XCTAssertNil(seen[bytes], "size \(bytes) reported twice")
            seen[bytes] = o
        }
        XCTAssertEqual(Set(seen.keys), Set(sizes), out)
        for (bytes, o) in seen {
            XCTAssertEqual(o["ranks"] as? Int, 2)
            for key in ["c_busbw_gbs", "swift_busbw_gbs", "c_s", "swift_s", "ratio"] {
                let v = try XCTUnwrap((o[key] as? NSNumber)?.doubleValue, "\(bytes) B: no '\(key)'")
                XCTAssertTrue(v > 0 && v.isFinite, "\(bytes) B: \(key) = \(v)")
            }
            // 2 ranks: busbw = algbw × 2(n−1)/n = algbw.
            let c = (o["c_busbw_gbs"] as? NSNumber)?.doubleValue ?? 0
            let s = (o["c_s"] as? NSNumber)?.doubleValue ?? 0
            XCTAssertEqual(c, Double(bytes) / s / 1e9, accuracy: c * 1e-9)
        }
        // The human-readable table has a row per size too.
        for b in sizes {
            let name = b >= 1 << 20 ? "\(b >> 20) MiB" : "\(b >> 10) KiB"
            XCTAssertTrue(out.contains(" \(name) "), "no table row for \(name)\n\(out)")
        }
    }

    func testBenchCommNeedsTwoRanksAndRejectsBadArguments() throws {
        let (status, out) = try runProcess([Self.binary, "bench-comm", "--max-mib", "1"], timeout: 60)
        XCTAssertNotEqual(status, 0, out)
        XCTAssertTrue(out.contains("needs at least 2 ranks"), out)
        let (s2, o2) = try runProcess([Self.binary, "bench-comm", "--max-mib", "0"], timeout: 60)
        XCTAssertNotEqual(s2, 0, o2)
        XCTAssertTrue(o2.contains("--max-mib expects an integer >= 1"), o2)
    }

    func testOptionsAndSizes() throws {
        // The command line of `tessera bench-comm`, parsed by its command type.
        func options(_ args: [String]) throws -> CommBench.Options { try BenchCommCommand.parse(args).options() }
        let o = try options(["--max-mib", "4", "--iters", "10", "--json"])
        XCTAssertEqual(o.maxMiB, 4); XCTAssertEqual(o.iters, 10); XCTAssertTrue(o.json)
        XCTAssertNil(try options(["--iters", "auto"]).iters)
        XCTAssertThrowsError(try options(["--iters", "0"]))
        XCTAssertThrowsError(try options(["--nope"]))
        XCTAssertEqual(CommBench.sizes(maxMiB: 64).count, 17)  // 1 KiB ... 64 MiB
        XCTAssertEqual(CommBench.busFactor(ranks: 2), 1)
        XCTAssertEqual(CommBench.busFactor(ranks: 4), 1.5)
    }
}
