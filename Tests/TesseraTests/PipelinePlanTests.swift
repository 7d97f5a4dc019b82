import Foundation
import XCTest
@testable import TesseraPipeline

/// The pipeline planner without MPI: every valid combination of schedule, stages (1–8), micro-batches
/// (1–8) and virtual stages (1–8) completes without deadlock, runs every (micro-batch, virtual stage)
/// forward and backward exactly once, and meets the bubble and memory properties of its schedule.
final class PipelinePlanTests: XCTestCase {
    func testEveryValidPlanCompletesWithoutDeadlock() throws {
        var planned = 0
        for schedule in PipelinePlanner.schedules {
            for p in 1...8 { for m in 1...8 { for v in 1...8 {
                guard PipelinePlanner.problem(schedule: schedule, stages: p, microbatches: m, virtualStages: v) == nil else { continue }
                let plan = try PipelinePlanner.plan(schedule: schedule, stages: p, microbatches: m, virtualStages: v)
                let sim = try PipelineSimulation(plan: plan)
                planned += 1
                // Each (micro-batch, virtual stage) runs forward once and backward once.
                var seen: [String: Int] = [:]
                for r in 0..<p { for a in plan.actions[r] {
                    seen["\(a.kind.rawValue) \(a.microbatch) \(plan.virtualStage(rank: r, chunk: a.chunk))", default: 0] += 1
                }}
                XCTAssertEqual(seen.count, 2 * m * plan.virtualStageCount, "\(schedule) p\(p) m\(m) v\(v)")
                XCTAssertTrue(seen.values.allSatisfy { $0 == 1 }, "\(schedule) p\(p) m\(m) v\(v)")
                // Bubble: exact for GPipe and 1F1B with backward = 2 × forward.
                if schedule != "interleaved" {
                    for idle in sim.idleFraction {
                        XCTAssertEqual(idle, plan.theoreticalBubble, accuracy: 1e-9, "\(schedule) p\(p) m\(m)")
                    }
                } else {
                    XCTAssertLessThanOrEqual(sim.idleFraction.max()!, plan.theoreticalBubble + 1e-9,
                                             "interleaved p\(p) m\(m) v\(v): \(sim.idleFraction)")
                }
                // Memory: 1F1B keeps at most p − rank micro-batches alive; GPipe keeps all m.
                for r in 0..<p {
                    switch schedule {
                    case "1f1b": XCTAssertLessThanOrEqual(sim.peakAlive[r], min(p - r, m), "1f1b p\(p) m\(m) rank \(r)")
                    case "gpipe": XCTAssertEqual(sim.peakAlive[r], m)
                    default: break
                    }
                }
            }}}
        }
        // gpipe and 1f1b: 8 × 8 each; interleaved: m a multiple of p, v from 2 to 8.
        let interleavedValid = (1...8).reduce(0) { $0 + 8 / $1 } * 7
        XCTAssertEqual(planned, 64 + 64 + interleavedValid)
    }

    func testInvalidCombinationsAreRefusedWithReasons() {
        XCTAssertNotNil(PipelinePlanner.problem(schedule: "interleaved", stages: 4, microbatches: 6, virtualStages: 2)?
            .range(of: "multiple of parallelism.pp: 6 micro-batches on 4 stages"))
        XCTAssertNotNil(PipelinePlanner.problem(schedule: "interleaved", stages: 2, microbatches: 4, virtualStages: 1))
        XCTAssertNotNil(PipelinePlanner.problem(schedule: "1f1b", stages: 2, microbatches: 4, virtualStages: 2))
        XCTAssertNotNil(PipelinePlanner.problem(schedule: "zero-bubble", stages: 2, microbatches: 4, virtualStages: 1))
        XCTAssertThrowsError(try PipelinePlanner.plan(schedule: "interleaved", stages: 4, microbatches: 6, virtualStages: 2))
    }

    /// A plan whose orders contradict each other (a backward before its forward) is caught as a deadlock.
    func testSimulationDetectsDeadlock() {
        let bad = PipelinePlan(schedule: "1f1b", stages: 2, microbatches: 1, virtualStages: 1,
                               actions: [[.init(.backward, microbatch: 0), .init(.forward, microbatch: 0)],
                                         [.init(.forward, microbatch: 0), .init(.backward, microbatch: 0)]])
        XCTAssertThrowsError(try PipelineSimulation(plan: bad)) { e in
            XCTAssertTrue("\(e)".contains("deadlock"), "\(e)")
        }
    }

    /// `tessera plan` prints the grid and the bubble of a config's schedule; a bad combination is a config error.
    func testPlanCommand() throws {
        // A config whose data file does not exist: planning needs no data.
        let dir = scratchDirectory("tessera-plan")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        let cfg = dir.appendingPathComponent("plan.toml").path
        try "[data]\ntrain = \"\(dir.path)/missing.txt\"\n[training]\nbatch_size = 16\n".write(toFile: cfg, atomically: true, encoding: .utf8)
        var (status, out) = try runProcess([CommandTests.binary, "plan", cfg, "--parallelism.pp", "2", "--training.microbatches", "4"])
        XCTAssertEqual(status, 0, out)
        XCTAssertTrue(out.contains("pipeline schedule 1f1b: 2 stage(s), 4 micro-batch(es)"), out)
        XCTAssertTrue(out.contains("rank 1 |"), out)
        XCTAssertEqual(out.components(separatedBy: " 20.0% ").count - 1, 4, "idle and theory 20% on both ranks: \(out)")
        (status, out) = try runProcess([CommandTests.binary, "plan", cfg, "--parallelism.pp", "4", "--training.microbatches", "6",
                                        "--training.batch_size", "48", "--parallelism.pipeline_schedule", "interleaved",
                                        "--parallelism.virtual_stages", "2", "--model.n_layer", "8"])
        XCTAssertNotEqual(status, 0)
        XCTAssertTrue(out.contains("training.microbatches = 6 is not a multiple of parallelism.pp = 4"), out)
    }

    /// Stage split: contiguous, every layer once, at least one per stage, and the most expensive stage as
    /// cheap as any contiguous split allows (checked against brute force for small cases).
    func testBalancedStagePartition() {
        let even = StagePartition.balanced(layerCount: 8, stages: 4, blockCost: 1)
        XCTAssertEqual(even.layers, [0..<2, 2..<4, 4..<6, 6..<8])
        // A heavy LM head on the last stage moves layers off it.
        let heavy = StagePartition.balanced(layerCount: 8, stages: 2, blockCost: 1, last: 2)
        XCTAssertEqual(heavy.layers, [0..<5, 5..<8])
        XCTAssertEqual(heavy.costs, [5, 5])
        for L in 1...9 { for n in 1...L { for last in [0.0, 0.5, 3] {
            let part = StagePartition.balanced(layerCount: L, stages: n, blockCost: 1, first: 0.25, last: last)
            XCTAssertEqual(part.layers.count, n)
            XCTAssertEqual(part.layers.first?.lowerBound, 0); XCTAssertEqual(part.layers.last?.upperBound, L)
            for (a, b) in zip(part.layers, part.layers.dropFirst()) { XCTAssertEqual(a.upperBound, b.lowerBound) }
            XCTAssertTrue(part.layers.allSatisfy { !$0.isEmpty })
            // Brute force over all cut positions.
            var bestMax = Double.infinity
            func search(_ k: Int, _ start: Int, _ worst: Double) {
                if k == n - 1 {
                    let c = Double(L - start) + (k == 0 ? 0.25 : 0) + last
                    if L - start >= 1 { bestMax = min(bestMax, max(worst, c)) }
                    return
                }
                for end in (start + 1)...max(start + 1, L - (n - 1 - k)) where end <= L {
                    search(k + 1, end, max(worst, Double(end - start) + (k == 0 ? 0.25 : 0)))
                }
            }
            search(0, 0, 0)
            XCTAssertEqual(part.costs.max()!, bestMax, accuracy: 1e-12, "L\(L) n\(n) last \(last)")
        }}}
    }

    /// The 1F1B order of Megatron-LM for p = 4, m = 8 on the first and last ranks.
    func testOneFOneBOrder() throws {
        let plan = try PipelinePlanner.plan(schedule: "1f1b", stages: 4, microbatches: 8)
        XCTAssertEqual(plan.actions[0].prefix(6).map(\.description), ["F0", "F1", "F2", "F3", "B0", "F4"])
        XCTAssertEqual(plan.actions[3].prefix(4).map(\.description), ["F0", "B0", "F1", "B1"])
    }
}
