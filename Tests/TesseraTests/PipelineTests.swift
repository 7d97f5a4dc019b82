import Foundation
import XCTest

/// Pipeline parallelism against the single-rank run of the same config, with real `mpirun` jobs: GPipe and
/// 1F1B at pp 2 and 4 with 1, 4 and 8 micro-batches, interleaved 1F1B (2 chunks per rank) at pp 2 and 4 with
/// 4 and 8, an explicit layer split, and the compositions pp 2 × dp 2 (ZeRO-1), pp 2 × ring 2, pp 2 ×
/// Ulysses 2 (GPipe: four micro-batches' head-sharded tensors alive at once) and the 8-rank pp 2 × dp 2 × ring 2. Every step's loss (10 steps, clipping active) and the validation loss within
/// 1e-5 relative, step 1's gradients — gathered from every stage, the tied embedding from the first —
/// within 1e-5 relative norm.
final class PipelineTests: XCTestCase {
    /// 8 layers (pp 4 × 2 chunks), batch 16 (8 micro-batches of 1 under dp 2), 32 tokens (ring 2: 4 chunks).
    static let shape = ["--model.n_layer", "8"]
    func check(np: Int, _ name: String, _ overrides: [String], file: StaticString = #filePath, line: UInt = #line) throws {
        let r = try DataParallelTests.checkLayout(np: np, name, shape: Self.shape, overrides, file: file, line: line)
        XCTAssertTrue(r.output.contains("pipeline: "), r.output, file: file, line: line)
    }

    func pipeline(_ schedule: String, pp: Int, microbatches m: Int, _ extra: [String] = []) -> [String] {
        ["--parallelism.pp", "\(pp)", "--parallelism.pipeline_schedule", schedule, "--training.microbatches", "\(m)"]
            + (schedule == "interleaved" ? ["--parallelism.virtual_stages", "2"] : []) + extra
    }

    func testGPipe() throws {
        for pp in [2, 4] { for m in [1, 4, 8] { try check(np: pp, "gpipe-p\(pp)-m\(m)", pipeline("gpipe", pp: pp, microbatches: m)) } }
    }
    func test1F1B() throws {
        for pp in [2, 4] { for m in [1, 4, 8] { try check(np: pp, "1f1b-p\(pp)-m\(m)", pipeline("1f1b", pp: pp, microbatches: m)) } }
    }
    func testInterleaved() throws {
        for pp in [2, 4] { for m in [4, 8] { try check(np: pp, "int-p\(pp)-m\(m)", pipeline("interleaved", pp: pp, microbatches: m)) } }
    }
    func testExplicitSplit() throws {
        try check(np: 2, "split-5-3", pipeline("1f1b", pp: 2, microbatches: 4, ["--parallelism.stage_layers", "5,3"]))
    }
    func testPipelineTimesDataParallelZeRO1() throws {
        try check(np: 4, "pp2dp2z", pipeline("1f1b", pp: 2, microbatches: 4, ["--parallelism.dp", "2", "--parallelism.zero", "1"]))
    }
    func testPipelineTimesRing() throws {
        try check(np: 4, "pp2ring2", pipeline("1f1b", pp: 2, microbatches: 4, ["--parallelism.ring", "2"]))
    }
    func testPipelineTimesUlysses() throws {
        try check(np: 4, "pp2uly2", pipeline("gpipe", pp: 2, microbatches: 4, ["--parallelism.ulysses", "2"]))
    }
    func testPipelineTimesDataTimesRing() throws {
        try check(np: 8, "pp2dp2ring2", pipeline("interleaved", pp: 2, microbatches: 4, ["--parallelism.dp", "2", "--parallelism.ring", "2"]))
    }

    /// A stage that stops responding mid-step does not hang the job: its partner's wait for the tied
    /// embedding's gradient times out, and the watchdog names the rank, the operation, the group and the step.
    func testHangingStageEndsTheJob() throws {
        let out = try DataParallelTests.assertHangEndsJob(Self.shape + pipeline("1f1b", pp: 2, microbatches: 4))
        XCTAssertTrue(out.contains("tied transformer.wte.weight gradient (first + last stage) on communicator 'embedding' at step 2"), out)
    }

    /// Impossible pipelines stop before any work, naming the keys and what was expected.
    func testConfigErrorsBeforeAnyWork() throws {
        let cfg = try DataParallelTests.config()
        for (flags, expected) in [
            (["--parallelism.pp", "4", "--model.n_layer", "2"],
             "model.n_layer = 2 is less than parallelism.pp × parallelism.virtual_stages = 4 × 1 = 4"),
            (["--parallelism.pp", "2", "--parallelism.pipeline_schedule", "interleaved", "--parallelism.virtual_stages", "2",
              "--model.n_layer", "4", "--training.microbatches", "1"],
             "training.microbatches = 1 is not a multiple of parallelism.pp = 2"),
            (["--parallelism.pp", "2", "--model.n_layer", "8", "--parallelism.stage_layers", "4,3"],
             "parallelism.stage_layers = \"4,3\" gives 2 stage(s) with 7 layers; expected 2 comma-separated layer counts"),
            (["--parallelism.pp", "2", "--parallelism.stage_layers", "one,two"], "is not a list of integers"),
        ] {
            let (status, out) = try runProcess([CommandTests.binary, "train", cfg] + flags, timeout: 60)
            XCTAssertEqual(status, 2, out)
            XCTAssertTrue(out.contains(expected), "expected '\(expected)' in:\n\(out)")
            XCTAssertFalse(out.contains("step 1/"), out)
        }
    }

    /// `--trace`: each stage's Chrome trace shows every micro-batch's forward and backward, in the order the
    /// 1F1B plan gives that stage, and the activation and gradient messages in flight between stages; the
    /// phase line says how much of the communication wait was waiting for a neighbour stage.
    func testTraceShowsEveryMicrobatchOnEveryStage() throws {
        let traceDir = DataParallelTests.dir.appendingPathComponent("pp-trace").path
        try? FileManager.default.removeItem(atPath: traceDir)
        let r = try DataParallelTests.run(np: 2, "pp-trace", Self.shape + pipeline("1f1b", pp: 2, microbatches: 4)
                                          + ["--training.steps", "1", "--training.eval_every", "0", "--trace", traceDir])
        XCTAssertTrue(r.output.contains("(of which waiting for pipeline neighbours"), "phase line names the pipeline wait: \(r.output)")
        let expected = [["F0", "F1", "B0", "F2", "B1", "F3", "B2", "B3"], ["F0", "B0", "F1", "B1", "F2", "B2", "F3", "B3"]]
        for rank in 0..<2 {
            let path = traceDir + "/trace-rank\(rank).json"
            let obj = try JSONSerialization.jsonObject(with: try Data(contentsOf: URL(fileURLWithPath: path))) as? [String: Any]
            let events = try XCTUnwrap(obj?["traceEvents"] as? [[String: Any]], path)
            let spans = events.filter { $0["ph"] as? String == "X" }
                .sorted { ($0["ts"] as? Double ?? 0) < ($1["ts"] as? Double ?? 0) }
            let actions = spans.compactMap { $0["name"] as? String }.filter { $0.range(of: #"^[FB]\d+$"#, options: .regularExpression) != nil }
            XCTAssertEqual(actions, expected[rank], "stage \(rank)'s forwards and backwards in \(path)")
            let inFlight = events.filter { $0["ph"] as? String == "b" }.compactMap { $0["name"] as? String }
            XCTAssertTrue(inFlight.contains { $0.hasPrefix("pipeline activation mb") }, "activations in flight: \(path)")
            XCTAssertTrue(inFlight.contains { $0.hasPrefix("pipeline gradient mb") }, "gradients in flight: \(path)")
        }
    }

    /// `tessera bench-pp` on real stages: GPipe keeps all m micro-batches' activations alive on every stage,
    /// 1F1B at most p (stage 0: p, stage 1: one finished forward plus the input arriving), and 1F1B's
    /// activation memory is below GPipe's. (The idle columns are timings: reported, not asserted.)
    func testBenchShowsLiveMicrobatchesPerStage() throws {
        let (status, out) = try runProcess(["mpirun", "-np", "2", CommandTests.binary, "bench-pp", "--size", "S", "--layers", "4",
                                            "--steps", "1", "--warmup", "0", "--microbatches", "4",
                                            "--schedules", "gpipe,1f1b", "--json"], timeout: 300)
        XCTAssertEqual(status, 0, out)
        let reports = benchReports(out, bench: "bench-pp")
        func report(_ schedule: String) throws -> [String: Any] {
            try XCTUnwrap(reports.first { $0["schedule"] as? String == schedule && $0["microbatches"] as? Int == 4 },
                          "no \(schedule) report: \(out)")
        }
        let gpipe = try report("gpipe"), oneF = try report("1f1b")
        XCTAssertEqual(try XCTUnwrap(number(gpipe, "theory_idle")), 0.2, accuracy: 0.0005, "theory (p−1)/(m+p−1) for p 2, m 4")
        XCTAssertEqual(numbers(gpipe, "live"), [4, 4], "GPipe keeps all 4 micro-batches alive: \(out)")
        XCTAssertEqual(numbers(oneF, "live"), [2, 2], "1F1B keeps at most p = 2: \(out)")
        let gpipeMiB = numbers(gpipe, "activation_mib"), oneFMiB = numbers(oneF, "activation_mib")
        XCTAssertEqual(gpipeMiB.count, 2, out)
        XCTAssertEqual(oneFMiB.count, 2, out)
        guard gpipeMiB.count == 2, oneFMiB.count == 2 else { return }
        XCTAssertLessThan(oneFMiB[0], gpipeMiB[0], "1F1B's activation memory on stage 0 is below GPipe's")
        XCTAssertLessThan(oneFMiB[1], gpipeMiB[1], "… and on stage 1")
    }
}
