import Foundation
import XCTest
import TesseraCheckpoint
import TesseraMemory
import TesseraTimeline
@testable import TesseraTraining

/// Unusable output paths: the binary stops with a message naming the config key (or flag), the path and what
/// was expected, never a raw Foundation error, and under mpirun every rank stops.
final class PathErrorTests: XCTestCase {
    var dir = ""
    /// A regular file: no directory can be made under it.
    var blocker = ""
    var config = ""

    override func setUpWithError() throws {
        let base = FileManager.default.temporaryDirectory.appendingPathComponent("tessera-paths-\(UUID().uuidString)")
        dir = base.path
        config = try writeSmallJob(in: base, name: "tiny", model: (layers: 2, heads: 2, width: 32), steps: 2)
        blocker = dir + "/blocker"
        XCTAssertTrue(FileManager.default.createFile(atPath: blocker, contents: Data("x".utf8)))
    }

    override func tearDownWithError() throws { try? FileManager.default.removeItem(atPath: dir) }

    /// Runs `tessera train` with `args`; asserts a non-zero exit and a message with every one of `parts`.
    func assertRefused(_ args: [String], np: Int = 0, contains parts: [String], file: StaticString = #filePath, line: UInt = #line) throws {
        let launcher = np > 0 ? ["mpirun", "-np", "\(np)"] : []
        let (status, out) = try runProcess(launcher + [CommandTests.binary, "train", config] + args, timeout: 120)
        XCTAssertNotEqual(status, 0, out, file: file, line: line)
        for part in parts where !out.contains(part) {
            XCTFail("missing \"\(part)\" in:\n\(out)", file: file, line: line)
        }
        for raw in ["NSCocoaErrorDomain", "NSPOSIXErrorDomain", "The operation could not be completed", "Fatal error"] {
            XCTAssertFalse(out.contains(raw), "\"\(raw)\" in:\n\(out)", file: file, line: line)
        }
    }

    func testOutputDirUnderAFile() throws {
        try assertRefused(["--job.output_dir", blocker + "/run"],
                          contains: ["job.output_dir", blocker + "/run", "'\(blocker)' is a file, not a directory", "expected"])
    }

    func testOutputDirUnderAFileStopsEveryRank() throws {
        try assertRefused(["--job.output_dir", blocker + "/run", "--parallelism.dp", "2"], np: 2,
                          contains: ["job.output_dir", blocker + "/run", "is a file, not a directory"])
    }

    func testMetricsPathIsADirectory() throws {
        try FileManager.default.createDirectory(atPath: dir + "/taken", withIntermediateDirectories: true)
        try assertRefused(["--metrics.path", dir + "/taken"], contains: ["metrics.path = '\(dir)/taken': it is a directory",
                                                                          "expected a file that can be created"])
    }

    func testTensorboardDirUnderAFile() throws {
        try assertRefused(["--metrics.tensorboard_dir", blocker + "/tb"], contains: ["metrics.tensorboard_dir = '\(blocker)/tb'",
                                                                                     "is a file, not a directory"])
    }

    func testCheckpointDirsUnderAFile() throws {
        try assertRefused(["--checkpoint.every", "1", "--checkpoint.dir", blocker + "/ck"],
                          contains: ["checkpoint.dir = '\(blocker)/ck'", "expected a writable directory"])
        try assertRefused(["--checkpoint.every", "1", "--checkpoint.dir", dir + "/ck", "--checkpoint.persist_dir", blocker + "/p"],
                          contains: ["checkpoint.persist_dir = '\(blocker)/p'", "is a file, not a directory"])
    }

    func testOffloadDirUnderAFile() throws {
        try assertRefused(["--memory.policy", "offload", "--memory.offload_dir", blocker + "/off"],
                          contains: ["memory.offload_dir = '\(blocker)/off'", "is a file, not a directory"])
        // Derived from job.output_dir: the message says so.
        try assertRefused(["--memory.policy", "offload", "--job.output_dir", blocker + "/run", "--metrics.tensorboard", "false",
                           "--metrics.path", dir + "/metrics.jsonl"],
                          contains: ["job.output_dir (memory.offload_dir is empty", blocker + "/run"])
    }

    func testTraceAndGradientDumpUnderAFile() throws {
        try assertRefused(["--trace", blocker + "/trace"], contains: ["--trace = '\(blocker)/trace'", "is a file, not a directory"])
        try assertRefused(["--dump-grads", blocker + "/g.safetensors"],
                          contains: ["--dump-grads = '\(blocker)/g.safetensors'", "expected a file that can be created"])
    }

    func testDataPathsNameTheirKey() throws {
        try assertRefused(["--data.train", dir + "/missing.txt"], contains: ["data.train = '\(dir)/missing.txt'", "file not found"])
        try assertRefused(["--data.val", dir], contains: ["data.val = '\(dir)'", "is a directory, expected a file"])
    }

    func testUsableMakesNothing() throws {
        XCTAssertNil(OutputPaths.usable(dir + "/new/deeper"))
        XCTAssertFalse(FileManager.default.fileExists(atPath: dir + "/new"), "the check made a directory")
        XCTAssertEqual(OutputPaths.usable(blocker + "/x/y"), "'\(blocker)' is a file, not a directory")
    }

    func testMakeDirectoryExplains() throws {
        XCTAssertNil(OutputPaths.makeDirectory(dir + "/a/b/c"))
        XCTAssertTrue(OutputPaths.isDirectory(dir + "/a/b/c"))
        XCTAssertNil(OutputPaths.makeDirectory(dir + "/a/b/c/"), "an existing directory is fine")
        XCTAssertEqual(OutputPaths.makeDirectory(blocker + "/x/y"), "'\(blocker)' is a file, not a directory")
        let t = OutputPaths.Target(key: "metrics.path", path: blocker, file: true)
        XCTAssertNil(OutputPaths.problem(t), "an existing file may be replaced")
        let d = OutputPaths.Target(key: "metrics.path", path: dir + "/a", file: true)
        XCTAssertEqual(OutputPaths.problem(d), "metrics.path = '\(dir)/a': it is a directory; expected a file that can be created")
    }

    /// The modules' own errors (reached when a path breaks after the start-up check) give the system's reason.
    func testModuleErrorsGiveTheSystemsReason() throws {
        func assertPlain(_ body: @autoclosure () throws -> Any, _ parts: [String], line: UInt = #line) {
            XCTAssertThrowsError(try body(), line: line) { error in
                let m = "\(error)"
                for part in parts { XCTAssertTrue(m.contains(part), "missing \"\(part)\" in: \(m)", line: line) }
                XCTAssertFalse(m.contains("NSCocoaErrorDomain") || m.contains("could not be completed"), m, line: line)
            }
        }
        assertPlain(try CheckpointStore.prepare(root: blocker + "/ck", setting: "checkpoint.dir"),
                    ["checkpoint.dir = '\(blocker)/ck'", "Not a directory", "expected a writable directory"])
        assertPlain(try OffloadTier(directory: blocker + "/off", rank: 1),
                    ["memory.offload_dir = '\(blocker)/off'", "Not a directory", "rank 1", "expected a writable directory"])
        assertPlain(try TraceRecorder(rank: 2).write(directory: blocker + "/trace"),
                    ["--trace = '\(blocker)/trace'", "Not a directory", "rank 2", "expected a writable directory"])
        assertPlain(try TensorBoardWriter(directory: blocker + "/tb"),
                    ["metrics.tensorboard_dir", "'\(blocker)/tb'", "'\(blocker)' is a file, not a directory"])
        assertPlain(try MetricsSink(metricsPath: blocker + "/m.jsonl", tensorboardDir: nil),
                    ["metrics.path", "'\(blocker)/m.jsonl'", "'\(blocker)' is a file, not a directory"])
    }

    func testTargetsOfEachRank() {
        var c = TesseraConfig()
        c.job.outputDir = "/o"
        c.memory.policy = "offload"
        var options = TrainerOptions(traceDir: "/t", dumpGradientsPath: "/g")
        let zero = OutputPaths.targets(config: c, rank: 0, options: options).map(\.path)
        XCTAssertEqual(zero, ["/o/metrics.jsonl", "/o/tensorboard", "/g", "/t", "/o/offload"])
        XCTAssertEqual(OutputPaths.targets(config: c, rank: 1, options: options).map(\.path), ["/t", "/o/offload"])
        options.traceDir = nil
        c.memory.policy = "keep"
        c.metrics.tensorboard = false
        XCTAssertEqual(OutputPaths.targets(config: c, rank: 1, options: options), [])
    }
}

/// A config file DIR/NAME.toml for a short job on a small text in DIR: output in DIR/out, no evaluation, no
/// sample, one thread, batch 2 of 16 tokens. Returns its path.
func writeSmallJob(in dir: URL, name: String, model: (layers: Int, heads: Int, width: Int), steps: Int) throws -> String {
    let data = try writeTrainingText(in: dir, lines: 60)
    let path = dir.appendingPathComponent(name + ".toml").path
    try """
    [job]
    output_dir = "\(dir.path)/out"
    [model]
    n_layer = \(model.layers)
    n_head = \(model.heads)
    d_model = \(model.width)
    block_size = 32
    [training]
    steps = \(steps)
    batch_size = 2
    seq_len = 16
    threads = 1
    eval_every = 0
    [data]
    train = "\(data)"
    [sample]
    tokens = 0
    """.write(toFile: path, atomically: true, encoding: .utf8)
    return path
}
