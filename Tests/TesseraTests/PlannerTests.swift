import Foundation
import XCTest
@testable import TesseraMemory
@testable import TesseraPlanner
@testable import TesseraTraining

/// The layout planner (`tessera plan --auto`, `training.layout = "auto"`). Step-time predictions are benchmarked
/// (bench/plan_validate.py, docs/planner.md), not asserted here; these tests check the candidates, the memory
/// predictions against runs under mpirun, the memory limit, --write and the automatic layout.
final class PlannerTests: XCTestCase {
    static let dir = madeScratchDirectory("tessera-planner")

    static func tiny() throws -> TesseraConfig {
        var c = TesseraConfig()
        c.model.nLayer = 4; c.model.nHead = 4; c.model.dModel = 32; c.model.blockSize = 64; c.model.vocabSize = 256
        c.training.seqLen = 64; c.training.batchSize = 8; c.training.threads = 1
        c.data.train = "unused.txt"
        return c
    }

    /// The candidates on 2 and 4 ranks: every degree split the config allows, each valid as train checks it.
    func testCandidatesAreTheValidLayouts() throws {
        var c = try Self.tiny()
        let two = LayoutSpace.enumerate(base: c, ranks: 2)
        let names = Set(two.map(\.name))
        for n in ["dp2 keep", "dp2 zero1 full", "ring2 selective", "ulysses2 zero1 keep", "pp2 1f1b m2 keep", "pp2 gpipe m8 full",
                  "pp2 interleaved×2 m4 selective"] {
            XCTAssertTrue(names.contains(n), "\(n) missing from \(names.sorted())")
        }
        XCTAssertEqual(two.count, names.count, "no duplicates")
        for cand in two { XCTAssertNoThrow(try cand.config.validateWithoutFiles(), cand.name) }
        // 3 heads: Ulysses 2 cannot split them.
        c.model.nHead = 3; c.model.dModel = 48
        XCTAssertFalse(LayoutSpace.enumerate(base: c, ranks: 2).contains { $0.config.parallelism.ulysses > 1 })
        // 4 ranks: hybrids, and nothing whose degrees do not multiply to 4.
        let four = LayoutSpace.enumerate(base: try Self.tiny(), ranks: 4)
        XCTAssertTrue(four.contains { $0.name == "pp2 1f1b m4 dp2 keep" }, four.map(\.name).joined(separator: ", "))
        XCTAssertTrue(four.contains { $0.name == "ring2 ulysses2 zero1 keep" })
        for cand in four {
            let p = cand.config.parallelism
            XCTAssertEqual(p.pp * p.dp * p.ring * p.ulysses, 4, cand.name)
        }
    }

    /// Plans on 2 ranks, then trains four different layouts for 2 steps under mpirun: each stage's measured activation
    /// peak equals the plan's prediction, and so the predicted memory per rank.
    func testPredictedMemoryMatchesRuns() throws {
        let cfg = try DataParallelTests.config()
        let json = Self.dir.appendingPathComponent("plan.json").path
        let shape = ["--model.n_layer", "4", "--model.n_head", "4", "--training.seq_len", "32", "--training.batch_size", "8"]
        let (status, out) = try runProcess([CommandTests.binary, "plan", "--auto", cfg, "--ranks", "2", "--threads", "1", "--json", json] + shape,
                                           timeout: 120)
        XCTAssertEqual(status, 0, out)
        XCTAssertTrue(out.contains("choice: "), out)
        let plan = try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: json))) as! [String: Any]
        let layouts = plan["layouts"] as! [[String: Any]]
        for name in ["dp2 zero1 keep", "ring2 selective", "pp2 1f1b m4 full", "pp2 interleaved×2 m4 keep"] {
            let l = try XCTUnwrap(layouts.first { $0["layout"] as? String == name }, name)
            let overrides = (l["overrides"] as! [[String: String]]).flatMap { ["--" + $0["key"]!, $0["value"]!] }
            let metrics = Self.dir.appendingPathComponent("\(name.replacingOccurrences(of: " ", with: "_")).jsonl").path
            let (s, o) = try runProcess(["mpirun", "-np", "2", CommandTests.binary, "train", cfg, "--metrics.path", metrics,
                                         "--training.steps", "2", "--training.eval_every", "0"] + shape + overrides, timeout: 120)
            XCTAssertEqual(s, 0, o)
            let last = try String(contentsOfFile: metrics, encoding: .utf8).split(separator: "\n").last { $0.contains("step_s") }!
            let record = try JSONSerialization.jsonObject(with: Data(last.utf8)) as! [String: Any]
            let measured = (record["activations"] as! [String: Any])["peak_bytes"] as! [Int]
            let stages = l["memory_stages"] as! [[String: Int]]
            // Ranks 0 and 1: one stage each under pp 2, one stage of two replicas otherwise.
            let predicted = stages.count == 2 ? stages.map { $0["activations"]! } : [stages[0]["activations"]!, stages[0]["activations"]!]
            XCTAssertEqual(measured, predicted, "\(name): measured activation peaks per rank vs the plan's")
            XCTAssertEqual(l["memory_bytes"] as? Int, stages.map { $0["total"]! }.max(), name)
        }
    }

    /// A memory limit drops the layouts over it (marked, ranked after the others); none fitting is an error for --write.
    func testMemoryLimitAndWrite() throws {
        let cfg = try DataParallelTests.config()
        let all = try LayoutPlan.plan(base: try ConfigLoader.load(path: cfg, overrides: [], dataFiles: false), ranks: 2, threads: 1)
        let sizes = all.entries.map(\.prediction.memory).sorted()
        let limit = sizes[sizes.count / 2]
        let (status, out) = try runProcess([CommandTests.binary, "plan", "--auto", cfg, "--ranks", "2", "--threads", "1",
                                            "--memory-per-rank", "\(limit)", "--write", Self.dir.appendingPathComponent("chosen.toml").path,
                                            "--json", Self.dir.appendingPathComponent("limited.json").path],
                                           timeout: 120)
        XCTAssertEqual(status, 0, out)
        let limited = try JSONSerialization.jsonObject(with: Data(contentsOf: Self.dir.appendingPathComponent("limited.json"))) as! [String: Any]
        let fits = (limited["layouts"] as! [[String: Any]]).map { $0["fits"] as! Bool }
        XCTAssertTrue(fits.contains(false) && fits.contains(true), out)
        XCTAssertEqual(fits, fits.sorted { $0 && !$1 }, "the layouts that fit come first")
        // The written config is the choice, and trains.
        let chosen = try ConfigLoader.load(path: Self.dir.appendingPathComponent("chosen.toml").path, overrides: [])
        XCTAssertLessThanOrEqual(MemoryPreflight.stageNeeds(chosen)!.map(\.total).max()!, limit)
        let p = chosen.parallelism
        XCTAssertEqual(p.pp * p.dp * p.ring * p.ulysses, 2)
        let (s, o) = try runProcess(["mpirun", "-np", "2", CommandTests.binary, "train", Self.dir.appendingPathComponent("chosen.toml").path,
                                     "--training.steps", "2", "--training.eval_every", "0"], timeout: 120)
        XCTAssertEqual(s, 0, o)
        // Nothing fits 4 KiB.
        let (bad, msg) = try runProcess([CommandTests.binary, "plan", "--auto", cfg, "--ranks", "2", "--threads", "1",
                                         "--memory-per-rank", "4KiB", "--write", Self.dir.appendingPathComponent("none.toml").path],
                                        timeout: 120)
        XCTAssertNotEqual(bad, 0, msg)
        XCTAssertTrue(msg.contains("no layout fits"), msg)
        XCTAssertFalse(FileManager.default.fileExists(atPath: Self.dir.appendingPathComponent("none.toml").path))
    }

    /// Where keep does not fit: per stage the fewest layers under full recomputation that fit (PolicyMix), minimal
    /// (one layer fewer on any stage would not fit), listed by the planner and chosen over uniform full, and a run of
    /// it under mpirun measures the activation peaks per rank the plan predicted.
    func testPerLayerPolicyMixWhereKeepDoesNotFit() throws {
        let cfg = try DataParallelTests.config()
        let shape = [("model.n_layer", "6"), ("model.n_head", "4"), ("training.seq_len", "32"), ("training.batch_size", "8")]
        let base = try ConfigLoader.load(path: cfg, overrides: shape, dataFiles: false)
        let keep = try XCTUnwrap(LayoutSpace.enumerate(base: base, ranks: 2).first { $0.name == "pp2 1f1b m4 keep" })
        var full = keep.config
        full.memory.policy = "full"
        let keepNeed = MemoryPreflight.stageNeeds(keep.config)!.map(\.total), fullNeed = MemoryPreflight.stageNeeds(full)!.map(\.total)
        let limit = (keepNeed.max()! + fullNeed.max()!) / 2
        XCTAssertGreaterThan(keepNeed.max()!, limit)
        let mix = try XCTUnwrap(PolicyMix.candidate(keep, policy: "full", memory: limit), "a mix between keep \(keepNeed) and full \(fullNeed)")
        let list = try LayerPolicy.parseList(mix.config.memory.layerPolicy, layers: 6, key: "mix")
        let needs = MemoryPreflight.stageNeeds(mix.config)!
        XCTAssertTrue(needs.allSatisfy { $0.total <= limit }, "\(needs.map(\.total)) over \(limit)")
        XCTAssertTrue(list.contains(.keep) && list.contains(.full), mix.config.memory.layerPolicy)
        // Minimal: giving back any stage's last recomputed layer to keep breaks the limit on that stage.
        let stages = PolicyMix.stageLayers(mix.config)
        for (s, layers) in stages.enumerated() {
            guard let last = layers.last(where: { list[$0] == .full }) else { continue }
            var fewer = list
            fewer[last] = .keep
            var c = mix.config
            c.memory.layerPolicy = PolicyMix.text(fewer)
            XCTAssertGreaterThan(MemoryPreflight.stageNeeds(c)![s].total, limit, "stage \(s) with one recomputed layer fewer (\(c.memory.layerPolicy))")
        }
        XCTAssertEqual(mix.overrides.first { $0.key == "memory.layer_policy" }?.value, mix.config.memory.layerPolicy)
        // The planner lists it, fitting, and predicts less recomputation than uniform full on the same layout.
        let plan = try LayoutPlan.plan(base: base, ranks: 2, memoryPerRank: limit, threads: 1)
        let listed = try XCTUnwrap(plan.entries.first { $0.candidate.name == mix.name }, plan.report(limit: 200))
        XCTAssertTrue(listed.fits)
        let uniform = try XCTUnwrap(plan.entries.first { $0.candidate.name == "pp2 1f1b m4 full" })
        XCTAssertLessThanOrEqual(listed.prediction.recompute, uniform.prediction.recompute)
        // Its run: the activation peak of each rank (one stage each) is the plan's prediction.
        let metrics = Self.dir.appendingPathComponent("mix.jsonl").path
        let overrides = mix.overrides.flatMap { ["--" + $0.key, $0.value] } + shape.flatMap { ["--" + $0.0, $0.1] }
        let (status, out) = try runProcess(["mpirun", "-np", "2", CommandTests.binary, "train", cfg, "--metrics.path", metrics,
                                            "--training.steps", "2", "--training.eval_every", "0"] + overrides, timeout: 120)
        XCTAssertEqual(status, 0, out)
        let last = try String(contentsOfFile: metrics, encoding: .utf8).split(separator: "\n").last { $0.contains("step_s") }!
        let record = try JSONSerialization.jsonObject(with: Data(last.utf8)) as! [String: Any]
        XCTAssertEqual((record["activations"] as! [String: Any])["peak_bytes"] as? [Int], needs.map(\.activations), mix.name)
    }

    /// `training.layout = "auto"` on 2 ranks: rank 0 plans, every rank trains the choice, and the run reproduces the
    /// single-rank run (as every layout does).
    func testAutomaticLayoutTrainsLikeOneRank() throws {
        let r = try DataParallelTests.checkLayout(np: 2, "layout-auto", shape: [], ["--training.layout", "auto"])
        XCTAssertTrue(r.output.contains("training.layout = \"auto\": parallelism.pp = "), r.output)
    }

    func testPlanArgumentsAreChecked() throws {
        let cfg = try DataParallelTests.config()
        for (args, words) in [(["--auto"], "needs --ranks"), (["--ranks", "2"], "belong to plan --auto"), (["--auto", "--ranks", "2", "--policies", "keep,lazy"], "--policies expects"),
                              (["--auto", "--ranks", "0"], "positive integer"), (["--auto", "--ranks", "2", "--memory-per-rank", "lots"], "KiB, MiB or GiB")] {
            let (status, out) = try runProcess([CommandTests.binary, "plan", cfg] + args, timeout: 60)
            XCTAssertNotEqual(status, 0, out)
            XCTAssertTrue(out.contains(words), "\(args): \(out)")
        }
    }
}
