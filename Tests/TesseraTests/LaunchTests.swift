import Foundation
import XCTest

/// Launch/tessera-run's decisions, read from the mpirun command its dry run prints: ranks from the mesh,
/// threads per rank, binding, oversubscription, the hostfile and the exported environment. One real launch
/// through the wrapper, and Launch/slurm.sbatch's checks with a stand-in `srun`.
final class LaunchTests: XCTestCase {
    static var binary: String {
        URL(fileURLWithPath: "/proc/self/exe").resolvingSymlinksInPath().deletingLastPathComponent()
            .appendingPathComponent("tessera").path
    }
    static let launcher = repoRoot.appendingPathComponent("Launch/tessera-run").path
    /// Variables that would change the wrapper's decisions if the caller happened to set them.
    static let unsetCallerSettings = ["TESSERA_THREADS", "TESSERA_HOSTFILE", "TESSERA_NODE_CPUS", "TESSERA_MPIRUN_ARGS",
                                      "TESSERA_DRY_RUN", "TESSERA_RANKS", "OMP_NUM_THREADS", "OMP_THREAD_LIMIT"].flatMap { ["-u", $0] }

    var dir = URL(fileURLWithPath: "/tmp")
    var config = ""

    override func setUpWithError() throws {
        let tag = name.filter { $0.isLetter || $0.isNumber }
        dir = FileManager.default.temporaryDirectory.appendingPathComponent("tessera-launch-\(tag)-\(getpid())")
        try? FileManager.default.removeItem(at: dir)
        try writeTrainingText(in: dir, lines: 200)
        // training.threads is left at its default, 0: the wrapper chooses the thread count.
        let toml = """
        [job]
        output_dir = "\(dir.path)/out"
        [model]
        n_layer = 1
        n_head = 2
        d_model = 32
        block_size = 32
        [training]
        steps = 2
        batch_size = 4
        seq_len = 32
        log_every = 1
        eval_every = 0
        [data]
        train = "\(dir.path)/text.txt"
        [sample]
        tokens = 0
        """
        config = dir.appendingPathComponent("job.toml").path
        try toml.write(toFile: config, atomically: true, encoding: .utf8)
    }

    override func tearDown() { try? FileManager.default.removeItem(at: dir) }

    // MARK: the machine, read as the wrapper reads it

    func shellInt(_ command: String) throws -> Int {
        let (status, out) = try runProcess(["sh", "-c", command])
        XCTAssertEqual(status, 0, out)
        return try XCTUnwrap(Int(out.trimmingCharacters(in: .whitespacesAndNewlines)), "'\(command)' printed '\(out)'")
    }
    /// CPUs this process may use (what training.threads = 0 means).
    lazy var cpus = try! shellInt("env -u OMP_NUM_THREADS -u OMP_THREAD_LIMIT nproc")
    lazy var online = try! shellInt("getconf _NPROCESSORS_ONLN")
    /// Physical cores (Open MPI's default slot count).
    lazy var cores = try! shellInt("n=$(lscpu -p=core,socket 2>/dev/null | grep -v '^#' | sort -u | wc -l); [ \"$n\" -gt 0 ] && echo $n || getconf _NPROCESSORS_ONLN")
    /// Whether the wrapper may bind on this machine at all: it sees every CPU, one hardware thread per core.
    var bindable: Bool { cpus == online && cores == online }

    // MARK: running the wrapper

    struct DryRun {
        let status: Int32
        let output: String   // stdout and stderr
        let argv: [String]   // the printed mpirun command, split as the shell splits it
        func value(after flag: String) -> String? {
            guard let i = argv.lastIndex(of: flag), i + 1 < argv.count else { return nil }
            return argv[i + 1]
        }
        func count(_ word: String) -> Int { argv.filter { $0 == word }.count }
        var threads: Int? { value(after: "--training.threads").flatMap { Int($0) } }
    }

    func dryRun(_ args: [String], env: [String: String] = [:], options: [String] = ["--dry-run"]) throws -> DryRun {
        let assignments = (["TESSERA_BIN": Self.binary].merging(env) { $1 }).map { "\($0.key)=\($0.value)" }.sorted()
        let (status, out) = try runProcess(Self.unsetCallerSettings + assignments + [Self.launcher] + options + args)
        let lines = out.split(separator: "\n").map(String.init).filter { $0.hasPrefix("mpirun ") }
        guard status == 0 else { return DryRun(status: status, output: out, argv: []) }
        XCTAssertEqual(lines.count, 1, "expected one mpirun line: \(out)")
        // The line must be valid shell: let bash split it back into words.
        let (s, words) = try runProcess(["bash", "-c", "eval \"set -- $1\"; printf '%s\\n' \"$@\"", "_", lines.first ?? ""])
        XCTAssertEqual(s, 0, words)
        return DryRun(status: status, output: out, argv: words.split(separator: "\n").map(String.init))
    }

    /// Whether mpirun, without --oversubscribe, starts this many ranks of /bin/true on this machine.
    /// (--do-not-launch would not do here: without a launch Open MPI counts one slot on this machine.)
    func openMPIAccepts(ranks: Int) throws -> Bool {
        let (status, out) = try runProcess(["-u", "OMPI_MCA_rmaps_base_oversubscribe", "mpirun", "-np", String(ranks),
                                            "--bind-to", "none", "/bin/true"], timeout: 60)
        XCTAssertTrue(status == 0 || out.contains("not enough slots"), out)
        return status == 0
    }

    /// The checks every dry run of the test config must pass: the command's frame and the exports.
    func checkFrame(_ run: DryRun, ranks: Int, file: StaticString = #filePath, line: UInt = #line) {
        XCTAssertEqual(run.status, 0, run.output, file: file, line: line)
        XCTAssertEqual(run.argv.first, "mpirun", run.output, file: file, line: line)
        XCTAssertEqual(run.value(after: "-np"), String(ranks), run.output, file: file, line: line)
        XCTAssertEqual(run.count("-np"), 1, run.output, file: file, line: line)
        XCTAssertTrue(run.argv.contains("OPENBLAS_NUM_THREADS=1"), run.output, file: file, line: line)
        XCTAssertTrue(run.argv.contains("OMPI_MCA_btl_vader_single_copy_mechanism"), run.output, file: file, line: line)
        if let b = run.argv.firstIndex(of: Self.binary) {
            XCTAssertEqual(Array(run.argv[b...].prefix(3)), [Self.binary, "train", config], file: file, line: line)
        } else {
            XCTFail("the tessera binary is not in the command: \(run.output)", file: file, line: line)
        }
    }

    /// Binding as the wrapper promises: each rank on its own `threads` cores where that fits and the machine
    /// allows it, otherwise none.
    func checkBinding(_ run: DryRun, ranks: Int, threads: Int, file: StaticString = #filePath, line: UInt = #line) {
        if bindable && ranks * threads <= cpus {
            XCTAssertEqual(run.value(after: "--bind-to"), "core", run.output, file: file, line: line)
            XCTAssertEqual(run.value(after: "--map-by"), "slot:PE=\(threads)", run.output, file: file, line: line)
        } else {
            XCTAssertEqual(run.value(after: "--bind-to"), "none", run.output, file: file, line: line)
            XCTAssertNil(run.value(after: "--map-by"), run.output, file: file, line: line)
        }
        XCTAssertEqual(run.count("--bind-to"), 1, run.output, file: file, line: line)
    }

    // MARK: one machine

    /// training.layout = "auto": the job plans its layout for the ranks it gets, so the wrapper takes the count from
    /// TESSERA_RANKS, and says so when it is missing.
    func testAutoLayoutTakesTheRankCountFromTheEnvironment() throws {
        let run = try dryRun([config, "--training.layout", "auto"], env: ["TESSERA_RANKS": "2"])
        checkFrame(run, ranks: 2)
        XCTAssertTrue(run.output.contains("2 rank(s) (layout planned at start)"), run.output)
        for env in [[:], ["TESSERA_RANKS": "two"]] {
            let bad = try dryRun([config, "--training.layout", "auto"], env: env)
            XCTAssertNotEqual(bad.status, 0, bad.output)
            XCTAssertTrue(bad.output.contains("set TESSERA_RANKS=N"), bad.output)
        }
    }

    func testOneRankGetsAllCPUs() throws {
        let run = try dryRun([config])
        checkFrame(run, ranks: 1)
        XCTAssertEqual(run.threads, cpus, run.output)
        XCTAssertFalse(run.argv.contains("--oversubscribe"), run.output)
        XCTAssertNil(run.value(after: "--hostfile"), run.output)
        checkBinding(run, ranks: 1, threads: cpus)
        XCTAssertTrue(run.output.contains("1 rank(s) (pp 1 × dp 1 × ring 1 × ulysses 1)"), run.output)
        // TESSERA_DRY_RUN=1 is the same as --dry-run.
        let viaEnv = try dryRun([config], env: ["TESSERA_DRY_RUN": "1"], options: [])
        XCTAssertEqual(viaEnv.argv, run.argv, viaEnv.output)
    }

    /// The printed line is shell-quoted: a value with a space and quotes comes back as one word.
    func testDryRunLineIsShellQuoted() throws {
        let name = "run 'one' \"two\" $HOME"
        let run = try dryRun([config, "--job.name", name])
        checkFrame(run, ranks: 1)
        XCTAssertEqual(run.value(after: "--job.name"), name, run.output)
    }

    /// `config show` only parses and validates, so a dp = 2 mesh can be planned even where this build
    /// cannot train it yet.
    func testTwoDataParallelRanksShareTheCPUs() throws {
        let run = try dryRun([config, "--parallelism.dp", "2"])
        checkFrame(run, ranks: 2)
        let threads = max(1, cpus / 2)
        XCTAssertEqual(run.threads, threads, run.output)
        XCTAssertEqual(run.argv.contains("--oversubscribe"), 2 > min(cpus, cores), run.output)
        if !run.argv.contains("--oversubscribe") { XCTAssertTrue(try openMPIAccepts(ranks: 2)) }
        checkBinding(run, ranks: 2, threads: threads)
        XCTAssertTrue(run.output.contains("dp 2"), run.output)
    }

    func testMeshIsTheProductOfAllDegrees() throws {
        // n_head 2 and seq_len 32 allow ulysses 2; 2 layers allow pp 2; batch 4 allows dp 2.
        let run = try dryRun([config, "--parallelism.dp", "2", "--parallelism.ulysses", "2", "--parallelism.pp", "2",
                              "--model.n_layer", "2"])
        checkFrame(run, ranks: 8)
        XCTAssertEqual(run.threads, max(1, cpus / 8), run.output)
    }

    func testMoreRanksThanCoresOversubscribeAndAreNotBound() throws {
        let n = online + 1  // more than the cores and than the CPUs, on any machine
        let run = try dryRun([config, "--parallelism.dp", String(n), "--training.batch_size", String(n)])
        checkFrame(run, ranks: n)
        XCTAssertTrue(run.argv.contains("--oversubscribe"), run.output)
        XCTAssertFalse(try openMPIAccepts(ranks: n), "Open MPI would have accepted \(n) ranks without --oversubscribe")
        XCTAssertEqual(run.value(after: "--bind-to"), "none", run.output)
        XCTAssertNil(run.value(after: "--map-by"), run.output)
        XCTAssertEqual(run.threads, 1, run.output)
    }

    func testThreadsFromEnvironmentOrConfig() throws {
        // TESSERA_THREADS sets the count and the binding follows it.
        var run = try dryRun([config], env: ["TESSERA_THREADS": "1"])
        checkFrame(run, ranks: 1)
        XCTAssertEqual(run.threads, 1, run.output)
        checkBinding(run, ranks: 1, threads: 1)
        // A count fixed in the config is left alone, and a rank that needs more threads than CPUs is not bound.
        let fixed = String(cpus + 1)
        run = try dryRun([config, "--training.threads", fixed])
        checkFrame(run, ranks: 1)
        XCTAssertEqual(run.count("--training.threads"), 1, run.output)
        XCTAssertEqual(run.value(after: "--training.threads"), fixed, run.output)
        XCTAssertEqual(run.value(after: "--bind-to"), "none", run.output)
        // TESSERA_THREADS wins over the config: its value comes last.
        run = try dryRun([config, "--training.threads", fixed], env: ["TESSERA_THREADS": "1"])
        XCTAssertEqual(run.threads, 1, run.output)
        XCTAssertEqual(run.argv.last, "1", run.output)
    }

    func testMpirunArgumentsFromTheEnvironment() throws {
        // Binding options of the user's replace the wrapper's.
        var run = try dryRun([config], env: ["TESSERA_MPIRUN_ARGS": "--bind-to socket --report-bindings"])
        checkFrame(run, ranks: 1)
        XCTAssertEqual(run.count("--bind-to"), 1, run.output)
        XCTAssertEqual(run.value(after: "--bind-to"), "socket", run.output)
        XCTAssertNil(run.value(after: "--map-by"), run.output)
        XCTAssertTrue(run.argv.contains("--report-bindings"), run.output)
        // The rank count and hostfile are the wrapper's to set.
        run = try dryRun([config], env: ["TESSERA_MPIRUN_ARGS": "-np 3"])
        XCTAssertNotEqual(run.status, 0, run.output)
        XCTAssertTrue(run.output.contains("mesh"), run.output)
        run = try dryRun([config], env: ["TESSERA_MPIRUN_ARGS": "--hostfile hosts"])
        XCTAssertNotEqual(run.status, 0, run.output)
        XCTAssertTrue(run.output.contains("TESSERA_HOSTFILE"), run.output)
    }

    func testErrorsStopBeforeMpirun() throws {
        var run = try dryRun([config, "--model.n_layr", "2"])
        XCTAssertNotEqual(run.status, 0, run.output)
        XCTAssertTrue(run.output.contains("model.n_layr"), run.output)
        XCTAssertFalse(run.output.contains("mpirun -np"), run.output)
        run = try dryRun([config], env: ["TESSERA_THREADS": "0"])
        XCTAssertNotEqual(run.status, 0, run.output)
        XCTAssertTrue(run.output.contains("TESSERA_THREADS"), run.output)
        run = try dryRun([config], options: ["--dry-run", "--hostfile", dir.path + "/missing"])
        XCTAssertNotEqual(run.status, 0, run.output)
        XCTAssertTrue(run.output.contains("missing"), run.output)
        run = try dryRun([])
        XCTAssertNotEqual(run.status, 0, run.output)
        XCTAssertTrue(run.output.contains("usage"), run.output)
    }

    // MARK: several machines

    func writeHostfile(_ text: String) throws -> String {
        let path = dir.appendingPathComponent("hosts").path
        try text.write(toFile: path, atomically: true, encoding: .utf8)
        return path
    }

    func testHostfileTwoHostsTwoSlots() throws {
        let hosts = try writeHostfile("# two machines\nnodeA slots=2\n\nnodeB slots=2   # the second\n")
        let run = try dryRun([config, "--parallelism.dp", "4"], options: ["--dry-run", "--hostfile", hosts])
        checkFrame(run, ranks: 4)
        XCTAssertEqual(run.value(after: "--hostfile"), hosts, run.output)
        XCTAssertFalse(run.argv.contains("--oversubscribe"), run.output)  // 4 ranks fit 4 slots
        XCTAssertEqual(run.threads, max(1, cpus / 2), run.output)          // 2 ranks per node
        XCTAssertEqual(run.value(after: "--bind-to"), "none", run.output)
        XCTAssertTrue(run.output.contains("on 2 host(s)") && run.output.contains("2 per node"), run.output)
        // TESSERA_HOSTFILE is the same as --hostfile.
        let viaEnv = try dryRun([config, "--parallelism.dp", "4"], env: ["TESSERA_HOSTFILE": hosts])
        XCTAssertEqual(viaEnv.argv, run.argv, viaEnv.output)
    }

    /// With TESSERA_NODE_CPUS = 8 the expected counts do not depend on the machine running the test.
    func testHostfileRanksFillHostsInOrderThenOversubscribe() throws {
        let hosts = try writeHostfile("nodeA slots=2\nnodeB slots=2\n")
        let env = ["TESSERA_HOSTFILE": hosts, "TESSERA_NODE_CPUS": "8"]
        // Four ranks, two per node: 8 / 2 threads each (not 8 / 4: the other two ranks are on the other node).
        var run = try dryRun([config, "--parallelism.dp", "4"], env: env)
        checkFrame(run, ranks: 4)
        XCTAssertEqual(run.threads, 4, run.output)
        XCTAssertFalse(run.argv.contains("--oversubscribe"), run.output)
        // Two ranks fill the first host's slots.
        run = try dryRun([config, "--parallelism.dp", "2"], env: env)
        checkFrame(run, ranks: 2)
        XCTAssertEqual(run.threads, 4, run.output)
        XCTAssertTrue(run.output.contains("on 1 host(s)"), run.output)
        // Eight ranks on four slots: oversubscribed, four per node.
        run = try dryRun([config, "--parallelism.dp", "8", "--training.batch_size", "8"], env: env)
        checkFrame(run, ranks: 8)
        XCTAssertTrue(run.argv.contains("--oversubscribe"), run.output)
        XCTAssertEqual(run.threads, 2, run.output)
        XCTAssertTrue(run.output.contains("4 per node"), run.output)
        // TESSERA_NODE_CPUS concerns the nodes of a hostfile only.
        run = try dryRun([config], env: ["TESSERA_NODE_CPUS": "8"])
        XCTAssertEqual(run.threads, cpus, run.output)
    }

    func testHostfileLinesWithoutSlots() throws {
        // Open MPI 4.1: a host listed once without slots= has as many slots as cores; listed n times, n slots.
        var hosts = try writeHostfile("nodeA\nnodeB\n")
        var run = try dryRun([config, "--parallelism.dp", "2"], env: ["TESSERA_HOSTFILE": hosts, "TESSERA_NODE_CPUS": "8"])
        checkFrame(run, ranks: 2)
        XCTAssertEqual(run.threads, 4, run.output)
        XCTAssertTrue(run.output.contains("on 1 host(s)"), run.output)
        hosts = try writeHostfile("nodeA\nnodeA\nnodeB\nnodeB\n")
        run = try dryRun([config, "--parallelism.dp", "4"], env: ["TESSERA_HOSTFILE": hosts, "TESSERA_NODE_CPUS": "8"])
        checkFrame(run, ranks: 4)
        XCTAssertFalse(run.argv.contains("--oversubscribe"), run.output)
        XCTAssertEqual(run.threads, 4, run.output)
        XCTAssertTrue(run.output.contains("on 2 host(s)"), run.output)
    }

    /// The wrapper's ranks per node against Open MPI's own placement, which mpirun shows without starting
    /// anything (--do-not-launch --display-map; the host names need not exist). Every host has slots=N:
    /// without a launch Open MPI cannot know a host's cores, which a host without slots= would get.
    func testHostfilePlacementMatchesOpenMPI() throws {
        for (file, ranks) in [("nodeA slots=2\nnodeB slots=2\n", 2), ("nodeA slots=2\nnodeB slots=2\n", 4),
                              ("nodeA slots=2\nnodeB slots=2\n", 5), ("nodeA slots=2\nnodeB slots=2\n", 8),
                              ("nodeA slots=3\nnodeB slots=1\n", 6), ("nodeA slots=1\nnodeB slots=3\nnodeC slots=1\n", 4)] {
            let hosts = try writeHostfile(file)
            let run = try dryRun([config, "--parallelism.dp", String(ranks), "--training.batch_size", String(ranks)],
                                 env: ["TESSERA_HOSTFILE": hosts])
            checkFrame(run, ranks: ranks)
            // runProcess allows oversubscription through the environment; here Open MPI must decide.
            var argv = ["-u", "OMPI_MCA_rmaps_base_oversubscribe", "mpirun", "-np", String(ranks), "--hostfile", hosts,
                        "--do-not-launch", "--display-map", "/bin/true"]
            if run.argv.contains("--oversubscribe") {
                // Needed: without it Open MPI refuses.
                let (_, refused) = try runProcess(argv, timeout: 60)
                XCTAssertTrue(refused.contains("not enough slots"), "\(file) \(ranks) ranks: \(refused)")
                argv.insert("--oversubscribe", at: 3)
            }
            let (_, map) = try runProcess(argv, timeout: 60)
            let perNode = map.split(separator: "\n").filter { $0.contains("Data for node:") }
                .compactMap { $0.components(separatedBy: "Num procs:").last.flatMap { Int($0.trimmingCharacters(in: .whitespaces)) } }
            XCTAssertFalse(perNode.isEmpty, "no map from Open MPI: \(map)")
            XCTAssertTrue(run.output.contains(", \(perNode.max() ?? -1) per node;"), "\(file) \(ranks) ranks: Open MPI places \(perNode); \(run.output)")
            XCTAssertTrue(run.output.contains("on \(perNode.count) host(s)"), "\(file) \(ranks) ranks: Open MPI places \(perNode); \(run.output)")
        }
    }

    // MARK: real runs

    func testWrapperLaunchesTheJob() throws {
        let (status, out) = try runProcess(Self.unsetCallerSettings + ["TESSERA_BIN=\(Self.binary)", Self.launcher, config])
        XCTAssertEqual(status, 0, out)
        XCTAssertTrue(out.contains("tessera-run: 1 rank(s)"), out)
        XCTAssertTrue(out.contains("step 2/2"), out)
    }

    /// The Slurm script's logic with a stand-in srun that prints its arguments (no Slurm here).
    func testSlurmScriptChecksTheTaskCountAndSetsThreads() throws {
        let fake = dir.appendingPathComponent("bin")
        try FileManager.default.createDirectory(at: fake, withIntermediateDirectories: true)
        let srun = fake.appendingPathComponent("srun").path
        try "#!/bin/sh\necho \"srun $*\"\n".write(toFile: srun, atomically: true, encoding: .utf8)
        try FileManager.default.setAttributes([.posixPermissions: 0o755], ofItemAtPath: srun)
        let path = fake.path + ":" + (ProcessInfo.processInfo.environment["PATH"] ?? "/usr/bin:/bin")
        let script = repoRoot.appendingPathComponent("Launch/slurm.sbatch").path
        func sbatch(tasks: Int, _ args: [String]) throws -> (Int32, String) {
            try runProcess(Self.unsetCallerSettings + ["PATH=\(path)", "TESSERA_BIN=\(Self.binary)", "SLURM_SUBMIT_DIR=\(repoRoot.path)",
                                                       "SLURM_NTASKS=\(tasks)", "SLURM_CPUS_PER_TASK=3", "bash", script, config] + args)
        }
        var (status, out) = try sbatch(tasks: 4, ["--parallelism.dp", "4"])
        XCTAssertEqual(status, 0, out)
        XCTAssertTrue(out.contains("srun --mpi=pmix --cpus-per-task=3 \(Self.binary) train \(config) --parallelism.dp 4 --training.threads 3"), out)
        (status, out) = try sbatch(tasks: 2, ["--parallelism.dp", "4"])
        XCTAssertNotEqual(status, 0, out)
        XCTAssertTrue(out.contains("needs 4 ranks") && !out.contains("srun --mpi"), out)
    }
}
