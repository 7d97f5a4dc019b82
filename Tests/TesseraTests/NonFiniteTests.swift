import Foundation
import TesseraCheckpoint
import XCTest

/// The guard against non-finite steps (`training.on_nonfinite`), end to end with the binary: a learning rate
/// of 1e30 stops with an error instead of training on NaN; a NaN written into one rank's gradient
/// (`--fault-inject nan:RANK:STEP`) stops the run naming the step and the tensor, keeps the last good
/// checkpoint and resumes from it; under "skip" the step's update is dropped on every rank (the layouts dp 2
/// and pp 2, with the NaN on rank 1, reproduce the single rank's skipped run) and the run stops after
/// `training.max_skipped` skips in a row.
final class NonFiniteTests: XCTestCase {
    static let dir = scratchDirectory("tessera-nonfinite")
    static let poisoned = "transformer.h.0.mlp.c_fc.weight"


    struct Run {
        let status: Int32, output: String
        /// Per logged step: the loss and the gradient norm (nil when not finite) and the skipped-step count.
        let losses: [Double?], norms: [Double?], skipped: [Int]
    }

    /// Runs the test job (2 layers, 10 steps, log every step) on `np` ranks (1: a plain process).
    static func run(np: Int, _ name: String, _ overrides: [String]) throws -> Run {
        try writeTrainingText(in: dir, lines: 400)
        let out = dir.appendingPathComponent(name).path
        let toml = """
        [job]
        name = "nonfinite"
        output_dir = "\(out)"
        [model]
        n_layer = 2
        n_head = 2
        d_model = 32
        block_size = 32
        [training]
        steps = 10
        batch_size = 8
        seq_len = 32
        log_every = 1
        eval_every = 0
        threads = 1
        [optimizer]
        lr = 1e-2
        warmup_steps = 2
        [data]
        train = "\(dir.path)/text.txt"
        [sample]
        tokens = 0
        """
        let cfg = dir.appendingPathComponent("\(name).toml").path
        try toml.write(toFile: cfg, atomically: true, encoding: .utf8)
        let launcher = np > 1 ? ["mpirun", "-np", "\(np)"] : []
        let (status, output) = try runProcess(launcher + [CommandTests.binary, "train", cfg] + overrides, timeout: 300)
        var losses: [Double?] = [], norms: [Double?] = [], skipped: [Int] = []
        if let text = try? String(contentsOfFile: out + "/metrics.jsonl", encoding: .utf8) {
            for line in text.split(separator: "\n") {
                let obj = try XCTUnwrap(JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any])
                guard obj.keys.contains("loss") else { continue }  // a checkpoint's line
                losses.append(obj["loss"] as? Double)
                norms.append(obj["grad_norm"] as? Double)
                skipped.append(obj["skipped_steps"] as? Int ?? -1)
            }
        }
        return Run(status: status, output: output, losses: losses, norms: norms, skipped: skipped)
    }

    func testHugeLearningRateStopsInsteadOfTrainingOnNaN() throws {
        let r = try Self.run(np: 1, "lr1e30", ["--optimizer.lr", "1e30"])
        XCTAssertNotEqual(r.status, 0, r.output)
        XCTAssertTrue(r.output.contains("no update applied; stopping (training.on_nonfinite = \"stop\")"), r.output)
        XCTAssertFalse(r.output.contains("step 10/10"), "trained on past the non-finite step:\n\(r.output)")
        // Every recorded step but the last is finite; the last, the one that stopped the run, is not.
        let finite = zip(r.losses, r.norms).map { $0 != nil && $1 != nil }
        XCTAssertEqual(finite.last, false, "the failing step is not recorded: \(r.losses) \(r.norms)")
        XCTAssertTrue(finite.dropLast().allSatisfy { $0 }, "trained on after a non-finite step: \(r.losses) \(r.norms)")
    }

    /// Stop: the error names the step and the first tensor whose gradient is NaN; the step-2 checkpoint (lazy,
    /// in flight when step 3 failed) is committed, nothing of step 3 is; a resume continues from step 2.
    func testNaNGradientStopsKeepsLastCheckpointAndResumes() throws {
        let ck = ["--checkpoint.every", "2"]
        let r = try Self.run(np: 1, "stop1", ck + ["--fault-inject", "nan:0:3"])
        XCTAssertNotEqual(r.status, 0, r.output)
        XCTAssertTrue(r.output.contains("step 3: "), r.output)
        XCTAssertTrue(r.output.contains("the first non-finite gradient is \(Self.poisoned)'s"), r.output)
        XCTAssertTrue(r.output.contains("the last checkpoint is"), r.output)
        let root = Self.dir.appendingPathComponent("stop1/checkpoints").path
        let names = try FileManager.default.contentsOfDirectory(atPath: root)
        XCTAssertTrue(names.contains("step-000002"), "\(names)")
        XCTAssertFalse(names.contains { $0.contains("000003") || $0.contains("000004") }, "\(names)")
        let resumed = try Self.run(np: 1, "stop1", ck + ["--resume", "auto"])
        XCTAssertEqual(resumed.status, 0, resumed.output)
        XCTAssertTrue(resumed.output.contains("(step 2,"), resumed.output)
        XCTAssertTrue(resumed.output.contains("step 10/10"), resumed.output)
    }

    /// Skip on one rank: the run goes on, counts the skip, and the step-4 checkpoint has taken 3 optimizer
    /// steps. The skipped step follows a save: lazily (its copy slowed down), the next update still waits for
    /// the copy, so the lazy checkpoints hold the same tensors as the synchronous ones.
    func testSkipDropsTheUpdateAndContinues() throws {
        let skip = ["--training.on_nonfinite", "skip", "--fault-inject", "nan:0:3", "--checkpoint.every", "2", "--checkpoint.keep", "10"]
        let r = try Self.run(np: 1, "skip1", skip + ["--checkpoint.mode", "sync"])
        XCTAssertEqual(r.status, 0, r.output)
        XCTAssertTrue(r.output.contains("update skipped (1 in a row, 1 in all)"), r.output)
        XCTAssertTrue(r.output.contains("skipped 1"), r.output)
        XCTAssertEqual(r.skipped.count, 10)
        guard r.skipped.count == 10 else { return }
        XCTAssertEqual(r.skipped.first, 0)
        XCTAssertEqual(r.skipped.last, 1)
        XCTAssertNotNil(r.losses[2], "step 3's loss (computed before the NaN reached a gradient): \(r.losses)")
        XCTAssertNil(r.norms[2], "step 3's gradient norm is finite: \(r.norms)")
        let sync = Self.dir.appendingPathComponent("skip1/checkpoints").path
        let step4 = try CheckpointReader(path: sync + "/step-000004")
        XCTAssertEqual(step4.manifest.state["optimizer_step"], "3", "\(step4.manifest.state)")
        let lazy = try Self.run(np: 1, "skip1-lazy", skip + ["--checkpoint.mode", "lazy", "--checkpoint-copy-delay-ms", "10"])
        XCTAssertEqual(lazy.status, 0, lazy.output)
        let lazyRoot = Self.dir.appendingPathComponent("skip1-lazy/checkpoints").path
        for step in ["step-000002", "step-000004"] {
            let a = try CheckpointReader(path: lazyRoot + "/" + step), b = try CheckpointReader(path: sync + "/" + step)
            XCTAssertEqual(a.manifest.state["optimizer_step"], b.manifest.state["optimizer_step"], step)
            try CheckpointJobTests.assertSameTensors(a, b, "\(step): the lazy copy differs from the synchronous save")
        }
    }

    func testSkipStopsAfterMaxSkippedInARow() throws {
        let r = try Self.run(np: 1, "maxskip", ["--optimizer.lr", "1e30", "--training.on_nonfinite", "skip",
                                                "--training.max_skipped", "2"])
        XCTAssertNotEqual(r.status, 0, r.output)
        XCTAssertTrue(r.output.contains("2 steps in a row skipped as non-finite; stopping (training.max_skipped = 2)"), r.output)
        XCTAssertEqual(r.skipped.last, 2, "the last recorded step counts both skips: \(r.skipped)")
        XCTAssertFalse(r.output.contains("step 10/10"), r.output)
    }

    /// dp 2 and pp 2 with the NaN on rank 1: under "stop" every rank stops (no hang) naming the tensor; under
    /// "skip" no rank updates at step 3 and the losses equal the single rank's skipped run.
    func testLayoutsAgreeOnNonFiniteSteps() throws {
        let skip = ["--training.on_nonfinite", "skip"]
        let base = try Self.run(np: 1, "skip-single", skip + ["--fault-inject", "nan:0:3"])
        XCTAssertEqual(base.status, 0, base.output)
        for (name, shape) in [("dp2", ["--parallelism.dp", "2"]), ("pp2", ["--parallelism.pp", "2", "--training.microbatches", "2"]),
                              ("dp2zero", ["--parallelism.dp", "2", "--parallelism.zero", "1"])] {
            let stop = try Self.run(np: 2, "stop-\(name)", shape + ["--fault-inject", "nan:1:3"])
            XCTAssertNotEqual(stop.status, 0, "\(name):\n\(stop.output)")
            XCTAssertTrue(stop.output.contains("step 3: "), "\(name):\n\(stop.output)")
            // pp 2: rank 1 is the last stage and holds layer 1 (poisoned there).
            let tensor = name == "pp2" ? "transformer.h.1.mlp.c_fc.weight" : Self.poisoned
            XCTAssertTrue(stop.output.contains("the first non-finite gradient is \(tensor)'s"), "\(name):\n\(stop.output)")
            let r = try Self.run(np: 2, "skip-\(name)", shape + skip + ["--fault-inject", "nan:1:3"])
            XCTAssertEqual(r.status, 0, "\(name):\n\(r.output)")
            XCTAssertEqual(r.skipped.last, 1, name)
            XCTAssertEqual(r.losses.count, base.losses.count, name)
            for (i, (a, b)) in zip(r.losses, base.losses).enumerated() {
                guard let a, let b else { XCTAssertTrue(a == nil && b == nil, "\(name) step \(i + 1): \(String(describing: a)) vs \(String(describing: b))"); continue }
                XCTAssertLessThanOrEqual(abs(a - b) / abs(b), 1e-5, "\(name) step \(i + 1): loss \(a) vs \(b)")
            }
        }
    }
}
