import Foundation
import XCTest
@testable import TesseraComm
@testable import TesseraTraining

/// The memory preflight: the prediction against what Trainer allocates, the verdict with its suggestions,
/// the reader of the machine's limit, and the refusal of a model too big for the machine by the binary.
final class MemoryPreflightTests: XCTestCase {
    func tempDir(_ name: String) throws -> URL {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("tessera-preflight-\(name)-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        addTeardownBlock { try? FileManager.default.removeItem(at: dir) }
        return dir
    }

    func tiny(_ extra: [(String, String)] = [], data: String = "/dev/null") throws -> TesseraConfig {
        let base: [(String, String)] = [
            ("data.train", data), ("model.n_layer", "4"), ("model.n_head", "2"), ("model.d_model", "32"),
            ("model.block_size", "32"), ("training.seq_len", "32"), ("training.batch_size", "4"), ("training.threads", "1"),
            ("training.eval_every", "0"), ("sample.tokens", "0"),
        ]
        var c = TesseraConfig()
        for (key, value) in base + extra {
            let field = try XCTUnwrap(ConfigSchema.field(key), key)
            switch field.kind {
            case .int: field.set(&c, .int(try XCTUnwrap(Int(value))))
            case .double: field.set(&c, .double(try XCTUnwrap(Double(value))))
            case .bool: field.set(&c, .bool(value == "true"))
            case .string: field.set(&c, .string(value))
            }
        }
        return c
    }

    /// The model: d_model 8192, 48 layers (154.6 GB of parameters).
    func huge(_ extra: [(String, String)] = []) throws -> TesseraConfig {
        try tiny([("model.d_model", "8192"), ("model.n_layer", "48"), ("model.n_head", "8"), ("model.block_size", "32"),
                  ("training.seq_len", "16"), ("training.batch_size", "2")] + extra)
    }

    let whole = MeshCoordinate(pp: 0, dp: 0, ring: 0, ulysses: 0)

    /// The prediction is what Trainer allocates: parameters and the activation peak the banner prints.
    func testPredictionMatchesTheTrainer() throws {
        let dir = try tempDir("match")
        let data = try writeTrainingText(in: dir, lines: 50)
        for policy in ["keep", "selective", "full"] {
            let c = try tiny([("memory.policy", policy), ("job.output_dir", dir.path + "/out")], data: data)
            let trainer = try Trainer(config: c, runtime: nil, measurePeak: false)
            let p = MemoryPreflight.predict(config: c, coordinate: whole)
            XCTAssertEqual(p.parameters, 4 * trainer.model.params.count, policy)
            XCTAssertEqual(p.gradients, 4 * trainer.model.grads.count, policy)
            XCTAssertEqual(p.optimizer, trainer.unshardedOptimizerBytes, policy)
            XCTAssertEqual(p.activations, trainer.memory.plan.predictedBytes, policy)
            XCTAssertEqual(p.total, p.parameters + p.gradients + p.optimizer + p.activations + p.workspace)
            XCTAssertEqual(p.productWeights, 0)
        }
        // bf16 adds the rounded copy of the weights the products read.
        let c = try tiny([("training.precision", "bf16"), ("job.output_dir", dir.path + "/out")], data: data)
        let trainer = try Trainer(config: c, runtime: nil, measurePeak: false)
        let p = MemoryPreflight.predict(config: c, coordinate: whole)
        XCTAssertGreaterThan(trainer.model.productWeightBytes, 0)
        XCTAssertEqual(p.productWeights, trainer.model.productWeightBytes)
        XCTAssertEqual(p.total, p.parameters + p.productWeights + p.gradients + p.optimizer + p.activations + p.workspace)
    }

    func testZeroAndPipelineShrinkTheLargestRank() throws {
        let plain = MemoryPreflight.predict(config: try tiny([("parallelism.dp", "4")]), coordinate: whole)
        let zero = MemoryPreflight.predict(config: try tiny([("parallelism.dp", "4"), ("parallelism.zero", "1")]), coordinate: whole)
        XCTAssertEqual(zero.parameters, plain.parameters)
        // Moments and the gradient shard of a quarter of the storage, against both moments of all of it.
        XCTAssertLessThan(zero.optimizer, plain.optimizer / 2)
        let pp = try tiny([("parallelism.pp", "2")])
        let stages = try XCTUnwrap(MemoryPreflight.stageNeeds(pp))
        XCTAssertEqual(stages.count, 2)
        for s in stages { XCTAssertLessThan(s.parameters, plain.parameters) }
    }

    func testVerdictFits() throws {
        let v = MemoryPreflight.verdict(config: try tiny(), coordinate: whole, availableBytes: 8 << 30, ranksPerHost: 2)
        XCTAssertTrue(v.fits, v.message)
        XCTAssertEqual(v.share, 4 << 30)
        XCTAssertTrue(MemoryPreflight.jobVerdict(config: try tiny(), availableBytes: 8 << 30, ranksPerHost: 2).fits)
    }

    func testVerdictRefusesWithSizesAndWhatWouldFit() throws {
        let c = try huge()
        let v = MemoryPreflight.verdict(config: c, coordinate: whole, availableBytes: 24_000_000_000, ranksPerHost: 1)
        XCTAssertFalse(v.fits)
        XCTAssertEqual(v.need.parameters, 154_648_772_608, "the allocation that used to fail")
        for part in ["does not fit in memory", "the rank at (pp 0, dp 0, ring 0, ulysses 0)", "parameters 154.6 GB (154648772608 bytes)", "gradients 154.6 GB",
                     "optimizer state 309.3 GB", "can have 24.0 GB (24000000000 bytes)", "divided among 1 rank of the job",
                     "What would fit:", "parallelism.pp = ", "memory.preflight = false"] {
            XCTAssertTrue(v.message.contains(part), "missing \"\(part)\" in:\n\(v.message)")
        }
        // More pipeline stages: the one suggested fits, one fewer does not.
        let pp = try XCTUnwrap(v.message.range(of: "parallelism.pp = ").map { Int(v.message[$0.upperBound...].prefix { $0.isNumber }) } ?? nil)
        var fewer = c
        fewer.parallelism.pp = pp - 1
        var suggested = c
        suggested.parallelism.pp = pp
        XCTAssertFalse(MemoryPreflight.jobVerdict(config: fewer, availableBytes: 24_000_000_000, ranksPerHost: 1).fits)
        XCTAssertTrue(MemoryPreflight.jobVerdict(config: suggested, availableBytes: 24_000_000_000, ranksPerHost: 1).fits)
        // Two ranks on the host: each has half, and the verdict says so.
        let shared = MemoryPreflight.verdict(config: c, coordinate: whole, availableBytes: 24_000_000_000, ranksPerHost: 2)
        XCTAssertEqual(shared.share, 12_000_000_000)
        XCTAssertTrue(shared.message.contains("divided among 2 ranks"), shared.message)
    }

    func testSuggestsZeroWhenTheOptimizerStateIsTooMuch() throws {
        let c = try tiny([("parallelism.dp", "8"), ("model.d_model", "256"), ("model.n_head", "4")])
        let need = MemoryPreflight.predict(config: c, coordinate: whole)
        var zero = c
        zero.parallelism.zero = 1
        let zeroNeed = MemoryPreflight.predict(config: zero, coordinate: whole)
        let share = (need.total + zeroNeed.total) / 2  // fits with ZeRO-1 only
        let v = MemoryPreflight.verdict(config: c, coordinate: whole, availableBytes: share, ranksPerHost: 1)
        XCTAssertFalse(v.fits)
        XCTAssertTrue(v.message.contains("parallelism.zero = 1 (ZeRO-1 shards the optimizer state over the 8 replicas"), v.message)
    }

    func testSuggestsAMemoryPolicyWhenActivationsAreTooMuch() throws {
        // Long sequences, small model: activations dominate.
        let c = try tiny([("model.block_size", "1024"), ("training.seq_len", "1024"), ("training.batch_size", "16")])
        let keep = MemoryPreflight.predict(config: c, coordinate: whole)
        var full = c
        full.memory.policy = "full"
        let least = MemoryPreflight.predict(config: full, coordinate: whole)
        XCTAssertLessThan(least.activations, keep.activations)
        let v = MemoryPreflight.verdict(config: c, coordinate: whole, availableBytes: (keep.total + least.total) / 2, ranksPerHost: 1)
        XCTAssertFalse(v.fits)
        XCTAssertTrue(v.message.contains("memory.policy = \"full\""), v.message)
        XCTAssertFalse(v.message.contains("memory.policy = \"keep\""), v.message)
    }

    func testNothingFitsSaysSo() throws {
        let v = MemoryPreflight.verdict(config: try huge(), coordinate: whole, availableBytes: 1_000_000, ranksPerHost: 1)
        XCTAssertFalse(v.fits)
        XCTAssertTrue(v.message.contains("Nothing tried fits"), v.message)
    }

    func testMachineMemoryTakesTheSmallestLimit() throws {
        let root = try tempDir("machine")
        func write(_ path: String, _ text: String) throws {
            let url = root.appendingPathComponent(path)
            try FileManager.default.createDirectory(at: url.deletingLastPathComponent(), withIntermediateDirectories: true)
            try text.write(to: url, atomically: true, encoding: .utf8)
        }
        try write("proc/meminfo", "MemTotal:       16000000 kB\nMemFree:         1000 kB\nMemAvailable:    8000000 kB\n")
        XCTAssertEqual(MachineMemory.read(root: root.path), MachineMemory(bytes: 8_192_000_000, source: "MemAvailable in /proc/meminfo"))
        // cgroup v2: the process's group has no limit ("max"), its parent has 2 GiB.
        try write("proc/self/cgroup", "0::/job/rank\n")
        try write("sys/fs/cgroup/job/rank/memory.max", "max\n")
        try write("sys/fs/cgroup/job/memory.max", "2147483648\n")
        XCTAssertEqual(MachineMemory.read(root: root.path),
                       MachineMemory(bytes: 2_147_483_648, source: "the cgroup limit \(root.path)/sys/fs/cgroup/job/memory.max"))
        // cgroup v1's "unlimited" is ignored, a real v1 limit counts.
        try write("sys/fs/cgroup/memory/memory.limit_in_bytes", "9223372036854771712\n")
        XCTAssertEqual(MachineMemory.read(root: root.path)?.bytes, 2_147_483_648)
        try write("sys/fs/cgroup/memory/memory.limit_in_bytes", "1073741824\n")
        XCTAssertEqual(MachineMemory.read(root: root.path)?.bytes, 1_073_741_824)
        XCTAssertNil(MachineMemory.read(root: root.path + "/nothing"))
    }

    func testTheMachineHasMemory() throws {
        let m = try XCTUnwrap(MachineMemory.read(), "neither /proc/meminfo nor a cgroup limit is readable")
        XCTAssertGreaterThan(m.bytes, 0)
    }

    // MARK: The binary

    /// The model (d_model 8192, 48 layers) in a one-step config.
    func hugeJob(_ dir: URL) throws -> String {
        try writeSmallJob(in: dir, name: "huge", model: (layers: 48, heads: 8, width: 8192), steps: 1)
    }

    func assertRefused(_ status: Int32, _ out: String, ranks: Int, file: StaticString = #filePath, line: UInt = #line) {
        XCTAssertNotEqual(status, 0, out, file: file, line: line)
        for part in ["memory preflight: the job does not fit in memory", "parameters 154.6 GB (154648772608 bytes)",
                     "divided among \(ranks) rank", "What would fit:"] {
            XCTAssertTrue(out.contains(part), "missing \"\(part)\" in:\n\(out)", file: file, line: line)
        }
        for crash in ["Fatal error", "failed to allocate", "Stack dump", "backtrace", "MPI_ABORT"] {
            XCTAssertFalse(out.contains(crash), "\"\(crash)\" in:\n\(out)", file: file, line: line)
        }
    }

    /// The model as a plain process: refused with the sizes, before the 154 GB allocation.
    func testBinaryRefusesAModelTooBigForTheMachine() throws {
        let dir = try tempDir("huge")
        let (status, out) = try runProcess([CommandTests.binary, "train", try hugeJob(dir)], timeout: 120)
        assertRefused(status, out, ranks: 1)
        XCTAssertEqual(status, 2, out)
    }

    /// Two ranks on this host (MPI_Comm_split_type): each has half, both stop, neither hangs.
    func testBinaryRefusesUnderMpirunWithTheRanksOfTheHost() throws {
        let dir = try tempDir("huge-mpi")
        let (status, out) = try runProcess(["mpirun", "-np", "2", CommandTests.binary, "train", try hugeJob(dir),
                                            "--parallelism.dp", "2"], timeout: 120)
        assertRefused(status, out, ranks: 2)
    }
}
