import Foundation
import XCTest
@testable import TesseraSequenceParallel

/// Sequence parallelism against the single-rank run of the same config, with real `mpirun` jobs: ring 2,
/// 4 and 8, Ulysses 2 and 4, the 2×2 hybrid and dp 2 × ring 2 (with ZeRO-1). Every step's loss (10
/// steps) and the validation loss within 1e-5 relative, step 1's gradients within 1e-5 relative norm.
final class SequenceParallelTests: XCTestCase {
    /// 4 heads (Ulysses 4), 64 tokens (ring 8: 16 chunks of 4), batch 4.
    static let shape = ["--model.n_head", "4", "--model.block_size", "64", "--training.seq_len", "64",
                        "--training.batch_size", "4"]
    func check(np: Int, _ name: String, _ overrides: [String], file: StaticString = #filePath, line: UInt = #line) throws {
        try DataParallelTests.checkLayout(np: np, name, shape: Self.shape, overrides, file: file, line: line)
    }

    func testRing2() throws { try check(np: 2, "ring2", ["--parallelism.ring", "2"]) }
    func testRing4() throws { try check(np: 4, "ring4", ["--parallelism.ring", "4"]) }
    func testRing8() throws { try check(np: 8, "ring8", ["--parallelism.ring", "8"]) }
    func testUlysses2() throws { try check(np: 2, "ulysses2", ["--parallelism.ulysses", "2"]) }
    func testUlysses4() throws { try check(np: 4, "ulysses4", ["--parallelism.ulysses", "4"]) }
    func testHybridRing2Ulysses2() throws {
        try check(np: 4, "hybrid22", ["--parallelism.ring", "2", "--parallelism.ulysses", "2"])
    }
    func testDataParallel2Ring2() throws {
        try check(np: 4, "dp2ring2", ["--parallelism.dp", "2", "--parallelism.ring", "2", "--parallelism.zero", "1"])
    }

    /// `tessera bench-sp` on real ranks: the attention bytes each rank sends equal the formulas, the
    /// activation memory equals the plan the budget table is computed from, and the work is balanced.
    func testBenchReportsTrafficMemoryAndBalanceAsPlanned() throws {
        for (np, flags) in [(2, ["--ring", "2"]), (2, ["--ulysses", "2"]), (4, ["--ring", "2", "--ulysses", "2"])] {
            let (status, out) = try runProcess(["mpirun", "-np", "\(np)", CommandTests.binary, "bench-sp", "--seq", "128",
                                                "--steps", "1", "--warmup", "0", "--json"] + flags, timeout: 300)
            XCTAssertEqual(status, 0, out)
            guard let row = benchReports(out, bench: "bench-sp").first(where: { $0["seq"] as? Int == 128 }) else {
                XCTFail("no result report: \(out)"); continue
            }
            let sent = try XCTUnwrap(number(row, "sent_mb")), theory = try XCTUnwrap(number(row, "theory_mb"))
            let work = try XCTUnwrap(number(row, "work_max_over_mean"))
            let acts = try XCTUnwrap(number(row, "activation_mib")), planned = try XCTUnwrap(number(row, "planned_mib"))
            XCTAssertGreaterThan(sent, 0, "\(row)")
            XCTAssertEqual(sent, theory, accuracy: 0.005, "MB sent vs theory: \(row)")
            XCTAssertLessThanOrEqual(work, 1.05, "attention work max/mean: \(row)")
            XCTAssertEqual(acts, planned, accuracy: 0.005, "activation MiB vs plan: \(row)")
        }
    }

    /// A head count Ulysses cannot split stops every rank before any work with the arithmetic.
    func testImpossibleHeadSplitIsAConfigError() throws {
        let cfg = try DataParallelTests.config()
        let (status, out) = try runProcess(["mpirun", "-np", "3", CommandTests.binary, "train", cfg] + Self.shape
                                           + ["--parallelism.ulysses", "3"])
        XCTAssertNotEqual(status, 0, out)
        XCTAssertTrue(out.contains("model.n_head = 4 is not divisible by parallelism.ulysses = 3"), out)
        XCTAssertFalse(out.contains("step 1/"), out)
    }

    /// Zigzag: rank r holds chunks r and 2R−1−r; every position appears exactly once over the group; each
    /// rank's causal attention work is the same (max/mean ≤ 1.05 for ring 2, 4, 8).
    func testZigzagLayoutCoversTheSequenceAndBalancesWork() {
        for (ring, ulysses) in [(2, 1), (4, 1), (8, 1), (1, 2), (2, 2), (4, 2)] {
            let seq = 64 * ring * ulysses
            var seen = [Int](repeating: 0, count: seq)
            for r in 0..<ring {
                for u in 0..<ulysses {
                    let l = SequenceLayout(seqLen: seq, ring: ring, ulysses: ulysses, ringRank: r, ulyssesRank: u)
                    XCTAssertEqual(l.positions.count, seq / (ring * ulysses))
                    for p in l.positions { seen[p] += 1 }
                }
            }
            XCTAssertEqual(seen, [Int](repeating: 1, count: seq), "ring \(ring) × ulysses \(ulysses)")
        }
        for ring in [2, 4, 8] {
            let seq = 1024
            var work: [Double] = []
            for r in 0..<ring {
                let l = SequenceLayout(seqLen: seq, ring: ring, ulysses: 1, ringRank: r, ulyssesRank: 0)
                var w = 0.0
                for src in 0..<ring {
                    for q in l.runs(ringRank: r) {
                        for k in l.runs(ringRank: src) where !RingCore.masked(q, k) {
                            w += RingCore.pairFlops(q, k, batch: 1, heads: 1, headDim: 1)
                        }
                    }
                }
                work.append(w)
            }
            let mean = work.reduce(0, +) / Double(ring)
            XCTAssertLessThanOrEqual(work.max()! / mean, 1.05, "ring \(ring) attention work per rank \(work)")
            // Contiguous chunks (rank r holds r·S/R ..< (r+1)·S/R) would give the last rank 2R−1 times the first's work.
        }
    }
}
