import Foundation
import XCTest

/// Pipeline parallelism against the single-rank run of the same config, with real `mpirun` jobs: GPipe and
/// 1F1B at pp 2 and 4 with 1, 4 and 8 micro-batches, interleaved 1F1B (2 chunks per rank) at pp 2 and 4 with
/// 4 and 8, an explicit layer split, and the compositions pp 2 × dp 2 (ZeRO-1), pp 2 × ring 2 and the
/// 8-rank pp 2 × dp 2 × ring 2. Every step's loss (10 steps, clipping active) and the validation loss within
/// 1e-5 relative, step 1's gradients — gathered from every stage, the tied embedding from the first —
/// within 1e-5 relative norm.
final class PipelineTests: XCTestCase {
    /// 8 layers (pp 4 × 2 chunks), batch 16 (8 micro-batches of 1 under dp 2), 32 tokens (ring 2: 4 chunks).
    static let shape = ["--model.n_layer", "8"]
    nonisolated(unsafe) static var baseline: DataParallelTests.Run?

    func baseline() throws -> DataParallelTests.Run {
        if let b = Self.baseline { return b }
        let b = try DataParallelTests.run(np: 1, "pp-single", Self.shape)
        Self.baseline = b
        return b
    }

    func check(np: Int, _ name: String, _ overrides: [String], file: StaticString = #filePath, line: UInt = #line) throws {
        let base = try baseline()
        let r = try DataParallelTests.run(np: np, name, Self.shape + overrides)
        DataParallelTests.assertSame(r, base, name: name, file: file, line: line)
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
    func testPipelineTimesDataTimesRing() throws {
        try check(np: 8, "pp2dp2ring2", pipeline("interleaved", pp: 2, microbatches: 4, ["--parallelism.dp", "2", "--parallelism.ring", "2"]))
    }
}
