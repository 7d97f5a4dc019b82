import Foundation
import XCTest
@testable import TesseraMemory
@testable import TesseraModel

/// Activation policies in real jobs: on one rank and under ring 2, Ulysses 2 and pp 2 (1F1B), every policy
/// (full, selective, offload and a per-layer mix) reproduces keep's losses, validation losses and step-1
/// gradients bit for bit; the measured activation peak of every rank equals the prediction and is below
/// keep's; selective sends no extra sequence-parallel bytes while full does; the offload directory is
/// empty after the run, also after a rank dies mid-run. Then `memory.policy = auto` fits its budget.
final class MemoryJobTests: XCTestCase {
    static let dir = DataParallelTests.dir.appendingPathComponent("memory")
    /// 4 layers so that a per-layer mix gives each pipeline stage two policies.
    static let shape = ["--model.n_layer", "4", "--training.microbatches", "2", "--training.steps", "4",
                        "--training.eval_every", "2"]

    struct Job {
        let run: DataParallelTests.Run
        /// Per logged step: the "activations" object of the metrics file.
        let activations: [[String: Any]]
        var peaks: [Int] { activations.last?["peak_bytes"] as? [Int] ?? [] }
        var predicted: [Int] { activations.last?["predicted_bytes"] as? [Int] ?? [] }
        var sequenceBytes: Int { activations.last?["sequence_bytes_max"] as? Int ?? -1 }
    }

    static func job(np: Int, _ name: String, _ overrides: [String]) throws -> Job {
        let r = try DataParallelTests.run(np: np, name, shape + overrides)
        let metrics = DataParallelTests.dir.appendingPathComponent("\(name).jsonl").path
        let acts = try String(contentsOfFile: metrics, encoding: .utf8).split(separator: "\n").compactMap {
            (try JSONSerialization.jsonObject(with: Data($0.utf8)) as? [String: Any])?["activations"] as? [String: Any]
        }
        return Job(run: r, activations: acts)
    }

    /// Keep and every other policy on one layout; returns the runs by policy.
    @discardableResult
    func checkPolicies(np: Int, _ layout: String, _ overrides: [String], file: StaticString = #filePath,
                       line: UInt = #line) throws -> [String: Job] {
        let offloadDir = Self.dir.appendingPathComponent("offload-\(layout)").path
        let keep = try Self.job(np: np, "\(layout)-keep", overrides)
        var jobs = ["keep": keep]
        for (name, memory) in [("full", ["--memory.policy", "full"]), ("selective", ["--memory.policy", "selective"]),
                               ("offload", ["--memory.policy", "offload"]),
                               ("mixed", ["--memory.layer_policy", "full,offload,selective,keep"])] {
            let j = try Self.job(np: np, "\(layout)-\(name)", overrides + memory + ["--memory.offload_dir", offloadDir])
            jobs[name] = j
            let what = "\(layout) \(name)"
            XCTAssertEqual(j.run.losses, keep.run.losses, "\(what): losses differ from keep", file: file, line: line)
            XCTAssertEqual(j.run.valLosses, keep.run.valLosses, "\(what): validation losses differ from keep", file: file, line: line)
            XCTAssertEqual(Set(j.run.grads.keys), Set(keep.run.grads.keys), file: file, line: line)
            var differ = 0
            for (k, g) in keep.run.grads { differ += g.count == j.run.grads[k]?.count ? zip(g, j.run.grads[k]!).filter { $0 != $1 }.count : g.count }
            XCTAssertEqual(differ, 0, "\(what): \(differ) gradient elements differ from keep's", file: file, line: line)
            XCTAssertEqual(j.peaks.count, np, "\(what): one peak per rank", file: file, line: line)
            XCTAssertEqual(j.peaks, j.predicted, "\(what): measured activation peaks vs predicted", file: file, line: line)
            // A uniform policy holds less than keep (a 4-layer mix pays for both the recompute buffer and the
            // staging slots, so it need not).
            for (a, b) in zip(j.peaks, keep.peaks) where name != "mixed" {
                XCTAssertLessThan(a, b, "\(what): activation peak not below keep's", file: file, line: line)
            }
            XCTAssertTrue(j.run.output.contains("activations: peak"), "\(what): no activation line\n\(j.run.output)", file: file, line: line)
        }
        XCTAssertEqual(keep.peaks, keep.predicted, "\(layout) keep: measured vs predicted", file: file, line: line)
        let offloaded = jobs["offload"]!.activations.last!
        XCTAssertGreaterThan(offloaded["offload_written_bytes"] as? Int ?? 0, 0, "\(layout): offload wrote nothing", file: file, line: line)
        XCTAssertEqual(offloaded["tier_held_bytes"] as? Int, 0, "\(layout): the tier still holds data after the step", file: file, line: line)
        XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: offloadDir), [],
                       "\(layout): offload directory not empty", file: file, line: line)
        return jobs
    }

    func testPoliciesOnOneRank() throws {
        let jobs = try checkPolicies(np: 1, "single", [])
        // full < selective < keep on one rank (the planner's ordering, measured).
        XCTAssertLessThan(jobs["full"]!.peaks[0], jobs["selective"]!.peaks[0])
    }

    func testPoliciesUnderRing2() throws {
        let jobs = try checkPolicies(np: 2, "ring2", ["--parallelism.ring", "2"])
        // Selective never runs attention again: not one extra byte over the ring. Full re-sends the keys and values.
        let keep = jobs["keep"]!.sequenceBytes
        XCTAssertGreaterThan(keep, 0)
        XCTAssertEqual(jobs["selective"]!.sequenceBytes, keep, "selective sent extra sequence-parallel bytes")
        XCTAssertGreaterThan(jobs["full"]!.sequenceBytes, keep, "full recomputation should re-send key/value blocks")
    }

    func testPoliciesUnderUlysses2() throws {
        let jobs = try checkPolicies(np: 2, "uly2", ["--parallelism.ulysses", "2"])
        XCTAssertEqual(jobs["selective"]!.sequenceBytes, jobs["keep"]!.sequenceBytes, "selective sent extra all-to-all bytes")
    }

    func testPoliciesUnderPipeline1F1B() throws {
        try checkPolicies(np: 2, "pp2", ["--parallelism.pp", "2", "--parallelism.pipeline_schedule", "1f1b",
                                         "--training.microbatches", "4"])
    }

    /// GPipe (all micro-batches alive) and interleaved 1F1B (two chunks per stage, each with its own pool)
    /// with a per-layer mix: keep's results bit for bit, and the measured peak of every rank = the prediction.
    func testMixedPoliciesUnderGPipeAndInterleaved() throws {
        for (name, schedule) in [("gpipe", ["--parallelism.pipeline_schedule", "gpipe"]),
                                 ("inter", ["--parallelism.pipeline_schedule", "interleaved", "--parallelism.virtual_stages", "2"])] {
            let layout = ["--parallelism.pp", "2", "--training.microbatches", "4"] + schedule
            let keep = try Self.job(np: 2, "\(name)-keep", layout)
            let mixed = try Self.job(np: 2, "\(name)-mixed", layout + ["--memory.layer_policy", "selective,offload,full,keep",
                                     "--memory.offload_dir", Self.dir.appendingPathComponent("offload-\(name)").path])
            XCTAssertEqual(mixed.run.losses, keep.run.losses, name)
            XCTAssertEqual(mixed.run.valLosses, keep.run.valLosses, name)
            var differ = 0
            for (k, g) in keep.run.grads { differ += g.count == mixed.run.grads[k]?.count ? zip(g, mixed.run.grads[k]!).filter { $0 != $1 }.count : g.count }
            XCTAssertEqual(differ, 0, "\(name): \(differ) gradient elements differ from keep's")
            XCTAssertEqual(keep.peaks, keep.predicted, "\(name) keep: measured vs predicted")
            XCTAssertEqual(mixed.peaks, mixed.predicted, "\(name) mixed: measured vs predicted")
        }
    }

    func testOffloadDirectoryIsEmptyAfterARankDies() throws {
        let offloadDir = Self.dir.appendingPathComponent("offload-fault").path
        let cfg = try DataParallelTests.config()
        let (status, out) = try runProcess(["mpirun", "-np", "2", CommandTests.binary, "train", cfg] + Self.shape
            + ["--parallelism.ring", "2", "--memory.policy", "offload", "--memory.offload_dir", offloadDir,
               "--fault-inject", "exit:1:3"], timeout: 300)
        XCTAssertNotEqual(status, 0, out)
        XCTAssertTrue(out.contains("fault injection"), out)
        XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: offloadDir), [], "offload files left after a failure")
    }

    func testUnwritableOffloadDirectoryFailsBeforeTraining() throws {
        try FileManager.default.createDirectory(at: Self.dir, withIntermediateDirectories: true)
        let file = Self.dir.appendingPathComponent("a-file").path
        XCTAssertTrue(FileManager.default.createFile(atPath: file, contents: Data("x".utf8)))
        let cfg = try DataParallelTests.config()
        let (status, out) = try runProcess([CommandTests.binary, "train", cfg, "--memory.policy", "offload",
                                            "--memory.offload_dir", file + "/offload"], timeout: 120)
        XCTAssertNotEqual(status, 0, out)
        XCTAssertTrue(out.contains("memory.offload_dir = '\(file)/offload'") && out.contains("expected a writable directory"), out)
        XCTAssertFalse(out.contains("step 1/"), "training started despite the bad offload directory\n\(out)")
    }

    /// With `--trace`, each recomputation is a span inside its backward.
    func testTraceMarksRecomputation() throws {
        let traceDir = Self.dir.appendingPathComponent("trace").path
        let cfg = try DataParallelTests.config()
        let (status, out) = try runProcess([CommandTests.binary, "train", cfg, "--training.steps", "1", "--training.eval_every", "0",
                                            "--memory.layer_policy", "selective,full", "--trace", traceDir], timeout: 120)
        XCTAssertEqual(status, 0, out)
        let trace = try String(contentsOfFile: traceDir + "/trace-rank0.json", encoding: .utf8)
        XCTAssertTrue(trace.contains("recompute L0 (selective)") && trace.contains("recompute L1 (full)"), String(trace.prefix(2000)))
    }

    /// `tessera bench-memory` reports every policy with measured = predicted activation memory (its JSON report).
    func testBenchMemoryCommand() throws {
        let (status, out) = try runProcess([CommandTests.binary, "bench-memory", "--sizes", "XS", "--policies", "keep,full,offload,auto",
                                            "--steps", "1", "--warmup", "0", "--rounds", "1", "--json",
                                            "--offload-dir", Self.dir.appendingPathComponent("offload-bench").path], timeout: 300)
        XCTAssertEqual(status, 0, out)
        let reports = benchReports(out, bench: "bench-memory")
        for policy in ["keep", "full", "offload", "auto"] {
            let report = reports.first { $0["policy"] as? String == policy && $0["size"] as? String == "XS" }
            XCTAssertNotNil(report, "no \(policy) report\n\(out)")
            if let report {
                let measured = try XCTUnwrap(number(report, "activation_bytes")), predicted = try XCTUnwrap(number(report, "predicted_bytes"))
                XCTAssertEqual(measured, predicted, "\(policy): measured vs predicted activation bytes\n\(out)")
            }
        }
    }

    func testAutoFitsTheBudgetAndMatchesKeep() throws {
        // Budgets between the least plan and keeping everything: the plan fits, the measurement equals the
        // prediction, and training equals keep's.
        let keep = try Self.job(np: 2, "auto-keep", ["--parallelism.pp", "2", "--training.microbatches", "4"])
        let least = try Self.job(np: 2, "auto-full", ["--parallelism.pp", "2", "--training.microbatches", "4",
                                                     "--memory.policy", "full"])
        let budget = (keep.peaks.max()! + least.peaks.max()!) / 2
        let auto = try Self.job(np: 2, "auto", ["--parallelism.pp", "2", "--training.microbatches", "4", "--memory.policy", "auto",
                                                "--memory.activation_budget", "\(budget)",
                                                "--memory.offload_dir", Self.dir.appendingPathComponent("offload-auto").path])
        XCTAssertTrue(auto.run.output.contains("auto plan for a budget"), auto.run.output)
        XCTAssertEqual(auto.peaks, auto.predicted)
        for p in auto.peaks { XCTAssertLessThanOrEqual(p, budget) }
        XCTAssertEqual(auto.run.losses, keep.run.losses)
        // Too small a budget: a clear error naming the smallest feasible one.
        let cfg = try DataParallelTests.config()
        let (status, out) = try runProcess([CommandTests.binary, "train", cfg] + Self.shape + ["--memory.policy", "auto",
                                            "--memory.activation_budget", "1000"], timeout: 120)
        XCTAssertNotEqual(status, 0, out)
        XCTAssertTrue(out.contains("memory.activation_budget = 1000 bytes") && out.contains("smallest feasible"), out)
    }
}
