import Foundation
import XCTest

/// The `tessera` binary end to end: a tiny job under `mpirun -np 1` and as a plain process, its metrics
/// and TensorBoard files, and the errors a user sees for a bad config.
final class CommandTests: XCTestCase {
    static var binary: String {
        URL(fileURLWithPath: "/proc/self/exe").resolvingSymlinksInPath().deletingLastPathComponent()
            .appendingPathComponent("tessera").path
    }

    func run(_ argv: [String]) throws -> (Int32, String) { try runProcess(argv) }

    static func tinyJob(_ dir: URL) throws -> String {
        try writeTrainingText(in: dir, lines: 300)
        let toml = """
        [job]
        name = "tiny"
        output_dir = "\(dir.path)/out"
        [model]
        n_layer = 2
        n_head = 2
        d_model = 32
        block_size = 32
        [training]
        steps = 12
        batch_size = 4
        seq_len = 32
        log_every = 4
        eval_every = 6
        eval_batches = 2
        threads = 1
        [optimizer]
        lr = 3e-3
        warmup_steps = 2
        [data]
        train = "\(dir.path)/text.txt"
        [sample]
        tokens = 20
        """
        let path = dir.appendingPathComponent("tiny.toml").path
        try toml.write(toFile: path, atomically: true, encoding: .utf8)
        return path
    }

    func checkRun(launcher: [String], name: String) throws {
        let dir = scratchDirectory("tessera-cmd-\(name)")
        try? FileManager.default.removeItem(at: dir)
        let cfg = try Self.tinyJob(dir)
        let (status, out) = try run(launcher + [Self.binary, "train", cfg])
        XCTAssertEqual(status, 0, out)
        XCTAssertTrue(out.contains("step 12/12"), out)
        XCTAssertTrue(out.contains("--- sample"), out)
        // Metrics: one JSON object per logged step with the promised fields.
        let lines = try String(contentsOfFile: dir.path + "/out/metrics.jsonl", encoding: .utf8).split(separator: "\n")
        XCTAssertGreaterThanOrEqual(lines.count, 4)
        var steps: [Int] = []
        for l in lines {
            let o = try XCTUnwrap(JSONSerialization.jsonObject(with: Data(l.utf8)) as? [String: Any])
            for k in ["step", "loss", "lr", "tokens_per_s", "mfu", "step_s", "peak_rss_bytes"] {
                XCTAssertNotNil(o[k], "metrics line lacks '\(k)': \(l)")
            }
            steps.append(o["step"] as? Int ?? -1)
        }
        XCTAssertEqual(steps.last, 12)
        XCTAssertTrue(lines.contains { $0.contains("val_loss") }, "no evaluation recorded")
        let tb = try FileManager.default.contentsOfDirectory(atPath: dir.path + "/out/tensorboard")
        XCTAssertTrue(tb.contains { $0.hasPrefix("events.out.tfevents.") }, "no TensorBoard event file: \(tb)")
    }

    func testTrainUnderMpirunOneRank() throws { try checkRun(launcher: ["mpirun", "-np", "1"], name: "mpirun") }
    func testTrainAsPlainProcess() throws { try checkRun(launcher: [], name: "plain") }

    func testWrongRankCountStopsEveryRankWithTheNeededCount() throws {
        let dir = scratchDirectory("tessera-cmd-np")
        let cfg = try Self.tinyJob(dir)
        let (status, out) = try run(["mpirun", "-np", "2", Self.binary, "train", cfg])
        XCTAssertNotEqual(status, 0, out)
        XCTAssertTrue(out.contains("mpirun -np 1"), out)
        XCTAssertFalse(out.contains("step 1/"), "no rank may start training: \(out)")
    }

    func testLauncherComputesRanksAndRuns() throws {
        let dir = scratchDirectory("tessera-cmd-launch")
        try? FileManager.default.removeItem(at: dir)
        let cfg = try Self.tinyJob(dir)
        let launcher = repoRoot.appendingPathComponent("Launch/tessera-run").path
        // A plain run through the wrapper (mesh of 1, threads from the config).
        var (status, out) = try runProcess(["env", "TESSERA_BIN=\(Self.binary)", launcher, cfg, "--training.steps", "3"])
        XCTAssertEqual(status, 0, out)
        XCTAssertTrue(out.contains("step 3/3"), out)
        // A non-default mesh value is read through `config show` and sets -np: a dp = 2 job runs on 2 ranks.
        // train's run flags (--trace) pass through the wrapper's `config show` to tessera.
        let trace = dir.appendingPathComponent("trace").path
        (status, out) = try runProcess(["env", "TESSERA_BIN=\(Self.binary)", launcher, cfg, "--parallelism.dp", "2",
                                        "--training.steps", "2", "--trace", trace])
        XCTAssertEqual(status, 0, out)
        XCTAssertTrue(out.contains("mesh: pp 1 × dp 2 × ring 1 × ulysses 1 = 2 rank(s)"), out)
        XCTAssertTrue(out.contains("step 2/2"), out)
        for r in 0..<2 { XCTAssertTrue(FileManager.default.fileExists(atPath: "\(trace)/trace-rank\(r).json"), out) }
        // A pipeline job through the wrapper: 2 stages on 2 ranks, and the sample from the gathered model.
        (status, out) = try runProcess(["env", "TESSERA_BIN=\(Self.binary)", launcher, cfg, "--parallelism.pp", "2",
                                        "--training.microbatches", "2", "--training.steps", "2"])
        XCTAssertEqual(status, 0, out)
        XCTAssertTrue(out.contains("pipeline: 2 stages, 1f1b schedule, 2 micro-batch(es)"), out)
        XCTAssertTrue(out.contains("--- sample (20 tokens"), out)
        // A run flag the job cannot honour reaches tessera, which explains it — not a shell error.
        (status, out) = try runProcess(["env", "TESSERA_BIN=\(Self.binary)", launcher, cfg, "--resume", "/nonexistent/step-000005"])
        XCTAssertNotEqual(status, 0)
        XCTAssertTrue(out.contains("--resume /nonexistent/step-000005: no checkpoint there"), out)
        XCTAssertFalse(out.contains("value too great"), out)
        // A config error stops the wrapper before mpirun.
        (status, out) = try runProcess(["env", "TESSERA_BIN=\(Self.binary)", launcher, cfg, "--model.n_layr", "2"])
        XCTAssertNotEqual(status, 0)
        XCTAssertTrue(out.contains("model.n_layr"), out)
    }

    func testStrayArgumentsAndBadPromptAreRejected() throws {
        let dir = scratchDirectory("tessera-cmd-stray")
        let cfg = try Self.tinyJob(dir)
        var (status, out) = try run([Self.binary, "train", cfg, "--steps", "5"])
        XCTAssertNotEqual(status, 0)
        XCTAssertTrue(out.contains("unexpected") && out.contains("--steps"), out)
        (status, out) = try run([Self.binary, "train", cfg, "--model.vocab_size", "128", "--sample.prompt", "é"])
        XCTAssertNotEqual(status, 0)
        XCTAssertTrue(out.contains("sample.prompt"), out)
        (status, out) = try run([Self.binary, "bench", "--steps", "0"])
        XCTAssertNotEqual(status, 0)
        XCTAssertTrue(out.contains("--steps"), out)
    }

    func testConfigErrorsNameKeyAndFile() throws {
        let dir = scratchDirectory("tessera-cmd-errors")
        let cfg = try Self.tinyJob(dir)
        var (status, out) = try run([Self.binary, "train", cfg, "--model.n_layr", "3"])
        XCTAssertNotEqual(status, 0)
        XCTAssertTrue(out.contains("model.n_layr") && out.contains("n_layer"), out)
        (status, out) = try run([Self.binary, "train", cfg, "--model.d_model", "30", "--model.n_head", "4"])
        XCTAssertNotEqual(status, 0)
        XCTAssertTrue(out.contains("model.d_model") && out.contains("model.n_head"), out)
        (status, out) = try run([Self.binary, "train", cfg, "--training.seq_len", "64"])
        XCTAssertNotEqual(status, 0)
        XCTAssertTrue(out.contains("training.seq_len") && out.contains("block_size"), out)
        (status, out) = try run([Self.binary, "train", cfg, "--data.train", "/nonexistent/x.txt"])
        XCTAssertNotEqual(status, 0)
        XCTAssertTrue(out.contains("data.train") && out.contains("/nonexistent/x.txt"), out)
        (status, out) = try run([Self.binary, "config", "show", cfg, "--training.steps", "77"])
        XCTAssertEqual(status, 0, out)
        XCTAssertTrue(out.contains("steps = 77"), out)
    }
}
