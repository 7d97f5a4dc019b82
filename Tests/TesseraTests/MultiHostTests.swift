import Foundation
import XCTest

/// Several hosts on this one machine (Launch/netns-hosts: network namespaces joined by a bridge, each with
/// its own address and hostname; Open MPI starts the remote daemons through the harness's rsh agent), and
/// jobs across them: shared memory between the ranks of one host, TCP between hosts.
/// - `tessera mpi-check` on 2 hosts × 2 ranks passes every check, each rank on the host the hostfile gives it;
/// - dp 2 × pp 2 × ring 2 through `Launch/tessera-run --hostfile` on 2 and on 4 hosts reproduces the single-rank
///   run (every loss, the validation losses and step 1's gradients within 1e-5 relative, DataParallelTests);
/// - a rank killed on another host than mpirun's ends the job promptly, naming that host and the rank;
/// - checkpoints written on 2 hosts (pp 2 × dp 2 + ZeRO-1) resume on 4 hosts (ring 2 × dp 2) and continue the
///   uninterrupted single-rank run within 1e-5;
/// - the harness itself: shaped links carry their traffic through their rate's class, delays go through netem or the
///   delay line (on every kernel, forced), a failed up leaves nothing, down leaves nothing.
/// Needs root, iproute2, iptables and python3 (Launch/setup.sh installs them); without them every test fails saying
/// what is missing.
final class MultiHostTests: XCTestCase {
    static let script = repoRoot.appendingPathComponent("Launch/netns-hosts").path
    static let tesseraRun = repoRoot.appendingPathComponent("Launch/tessera-run").path

    /// Hosts made by `Launch/netns-hosts up` in a directory of their own; `down()` removes them.
    struct Hosts {
        let dir: String
        let names: [String]
        /// The contents of DIR/mpirun-args: the options for TESSERA_MPIRUN_ARGS.
        let mpirunArgs: String
        var hostfile: String { dir + "/hostfile" }

        init(_ name: String, hosts: Int, slots: Int, _ options: [String] = [], file: StaticString = #filePath, line: UInt = #line) throws {
            dir = scratchDirectory("tessera-hosts").appendingPathComponent(name).path
            try? FileManager.default.removeItem(atPath: dir)
            let (status, out) = try runProcess([MultiHostTests.script, "up", dir, "--hosts", "\(hosts)", "--slots", "\(slots)"] + options,
                                               timeout: 60)
            guard status == 0 else { throw TestFailure("netns-hosts up \(name) failed (exit \(status)):\n\(out)") }
            let hostfile = try String(contentsOfFile: dir + "/hostfile", encoding: .utf8)
            names = hostfile.split(separator: "\n").map { String($0.split(separator: " ")[0]) }
            mpirunArgs = try String(contentsOfFile: dir + "/mpirun-args", encoding: .utf8).trimmingCharacters(in: .whitespacesAndNewlines)
            XCTAssertEqual(names.count, hosts, hostfile, file: file, line: line)
        }

        /// `netns-hosts down`; asserts it succeeded.
        func down(file: StaticString = #filePath, line: UInt = #line) {
            guard let (status, out) = try? runProcess([MultiHostTests.script, "down", dir], timeout: 60) else {
                return XCTFail("netns-hosts down \(dir) did not run", file: file, line: line)
            }
            XCTAssertEqual(status, 0, "netns-hosts down \(dir):\n\(out)", file: file, line: line)
        }

        /// argv that runs `command` on host 0 (mpirun must run there).
        func onHost0(_ command: [String]) -> [String] { [MultiHostTests.script, "run", dir, "--"] + command }

        /// The launcher for DataParallelTests.run / CheckpointJobTests.job: Launch/tessera-run with this hostfile
        /// and the harness's mpirun options, on host 0.
        var tesseraRun: [String] {
            onHost0(["env", "TESSERA_BIN=\(CommandTests.binary)", "TESSERA_MPIRUN_ARGS=\(mpirunArgs)",
                     MultiHostTests.tesseraRun, "--hostfile", hostfile])
        }

        /// The network namespace (its inode) of host `i`, as /proc/PID/ns/net of a process in it reads.
        func netns(_ i: Int) -> String? {
            guard let attrs = try? FileManager.default.attributesOfItem(atPath: "/run/netns/\(names[i])"),
                  let inode = attrs[.systemFileNumber] as? NSNumber else { return nil }
            return "net:[\(inode)]"
        }

        /// Processes in host `i`'s namespace: (pid, comm, OMPI_COMM_WORLD_RANK if set).
        func processes(on i: Int) -> [(pid: pid_t, comm: String, rank: Int?)] {
            guard let ns = netns(i) else { return [] }
            let pids = ((try? FileManager.default.contentsOfDirectory(atPath: "/proc")) ?? []).compactMap { pid_t($0) }
            return pids.compactMap { pid in
                guard (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/\(pid)/ns/net")) == ns,
                      let comm = try? String(contentsOfFile: "/proc/\(pid)/comm", encoding: .utf8),
                      let env = FileManager.default.contents(atPath: "/proc/\(pid)/environ") else { return nil }
                let rank = env.split(separator: 0).lazy.map { String(decoding: $0, as: UTF8.self) }
                    .first { $0.hasPrefix("OMPI_COMM_WORLD_RANK=") }.flatMap { Int($0.dropFirst(21)) }
                return (pid, comm.trimmingCharacters(in: .whitespacesAndNewlines), rank)
            }
        }
    }

    /// Fails (no skip: CI runs as root on a machine where Launch/setup.sh installed iproute2) unless this process is
    /// root and `ip`, `tc` and `unshare` are on the PATH; returns whether the hosts can be made.
    func requireHarness(file: StaticString = #filePath, line: UInt = #line) -> Bool {
        var missing: [String] = []
        if getuid() != 0 { missing.append("root (network namespaces need it; run the tests as root)") }
        let path: [String] = (ProcessInfo.processInfo.environment["PATH"] ?? "").split(separator: ":").map(String.init) + ["/usr/sbin", "/sbin"]
        for (tool, package) in [("ip", "iproute2"), ("tc", "iproute2"), ("unshare", "util-linux"), ("iptables", "iptables"),
                                ("python3", "python3")]
        where !path.contains(where: { FileManager.default.isExecutableFile(atPath: "\($0)/\(tool)") }) {
            missing.append("the command '\(tool)' (apt-get install \(package); Launch/setup.sh's tessera_install_missing does)")
        }
        if !missing.isEmpty { XCTFail("MultiHostTests need " + missing.joined(separator: " and "), file: file, line: line) }
        return missing.isEmpty
    }

    static let threeD = ["--parallelism.dp", "2", "--parallelism.pp", "2", "--parallelism.ring", "2", "--training.microbatches", "4"]

    // MARK: jobs across hosts

    func testMPICheckAcrossTwoHosts() throws {
        guard requireHarness() else { return }
        let hosts = try Hosts("mpi-check", hosts: 2, slots: 2)
        defer { hosts.down() }
        // Each rank says where it runs (hostname, network namespace), then becomes `tessera mpi-check`.
        let probe = "echo \"rank $OMPI_COMM_WORLD_RANK on $(hostname) in $(readlink /proc/self/ns/net)\"; exec \"$0\" mpi-check"
        let mpirun = ["mpirun", "-np", "4", "--hostfile", hosts.hostfile] + hosts.mpirunArgs.split(separator: " ").map(String.init)
            + ["-x", "OMPI_MCA_btl_vader_single_copy_mechanism=none", "bash", "-c", probe, CommandTests.binary]
        let (status, out) = try runProcess(hosts.onHost0(mpirun), timeout: 180)
        XCTAssertEqual(status, 0, out)
        XCTAssertTrue(out.contains("mpi-check: ALL OK ("), out)
        XCTAssertTrue(out.contains(" checks on 4 ranks)"), out)
        XCTAssertFalse(out.contains("FAIL"), out)
        // The hostfile's slots: ranks 0, 1 on host 0 and 2, 3 on host 1, each host its own network namespace.
        for rank in 0..<4 {
            let host = rank / 2
            let ns = try XCTUnwrap(hosts.netns(host))
            XCTAssertTrue(out.contains("rank \(rank) on \(hosts.names[host]) in \(ns)\n"), "rank \(rank) not on \(hosts.names[host]):\n\(out)")
        }
        XCTAssertNotEqual(hosts.netns(0), hosts.netns(1))
    }

    /// dp 2 × pp 2 × ring 2 through Launch/tessera-run on `count` hosts against the single-rank run.
    /// `linksInHostfile`: the hostfile describes the links (`# link` comments, which the ranks read through
    /// TESSERA_HOSTFILE); otherwise the job measures them. Either way the placement is chosen on these hosts.
    func assertThreeDLayout(hosts count: Int, linksInHostfile: Bool, file: StaticString = #filePath, line: UInt = #line) throws {
        let hosts = try Hosts("3d-\(count)", hosts: count, slots: 8 / count)
        defer { hosts.down() }
        if linksInHostfile {
            let h = try FileHandle(forWritingTo: URL(fileURLWithPath: hosts.hostfile))
            h.seekToEndOfFile(); h.write(Data("# link * * 1gbit 1ms\n".utf8)); h.closeFile()
        }
        let base = try DataParallelTests.baseline(shape: [], name: "single")
        let r = try DataParallelTests.run(np: 8, "hosts\(count)-dp2-pp2-ring2", Self.threeD, launch: hosts.tesseraRun)
        DataParallelTests.assertSame(r, base, name: "\(count) hosts", file: file, line: line)
        XCTAssertTrue(r.output.contains("tessera-run: 8 rank(s) (pp 2 × dp 2 × ring 2 × ulysses 1) on \(count) host(s) of \(hosts.hostfile), "
                                        + "\(8 / count) per node"), r.output, file: file, line: line)
        XCTAssertTrue(r.output.contains("MPI: 8 rank(s)"), r.output, file: file, line: line)
        XCTAssertTrue(r.output.contains("placement (parallelism.placement = \"auto\"): "), r.output, file: file, line: line)
        XCTAssertTrue(r.output.contains("8 rank(s) on \(count) host(s)"), r.output, file: file, line: line)
        XCTAssertTrue(r.output.contains(linksInHostfile ? "links (hostfile \(hosts.hostfile)):" : "links (measured at start"), r.output,
                      file: file, line: line)
        if linksInHostfile { XCTAssertTrue(r.output.contains("1.00 Gbit/s, 1.00 ms"), r.output, file: file, line: line) }
    }

    func testThreeDLayoutOnTwoHosts() throws {
        guard requireHarness() else { return }
        try assertThreeDLayout(hosts: 2, linksInHostfile: false)
    }

    func testThreeDLayoutOnFourHosts() throws {
        guard requireHarness() else { return }
        try assertThreeDLayout(hosts: 4, linksInHostfile: true)
    }

    /// SIGKILL to a rank on host 1 (mpirun runs on host 0): the job ends within seconds, not at the watchdog's
    /// 300 s or the test's limit, and the output names the host and the rank.
    func testRankKilledOnARemoteHostEndsTheJob() throws {
        guard requireHarness() else { return }
        let hosts = try Hosts("kill", hosts: 2, slots: 2)
        defer { hosts.down() }
        let log = scratchDirectory("tessera-hosts").appendingPathComponent("kill.log").path
        let job = try CheckpointJobTests.Background(hosts.tesseraRun + [try DataParallelTests.config(), "--parallelism.dp", "4",
                                                                       "--training.steps", "1000", "--training.log_every", "1"], log: log)
        defer { if job.process.isRunning { job.killAll() } }
        XCTAssertTrue(job.waitFor(" 2/1000  loss"), job.output)
        let ranks = hosts.processes(on: 1).filter { $0.comm == "tessera" && $0.rank != nil }
        XCTAssertEqual(Set(ranks.compactMap(\.rank)), [2, 3], "the ranks on \(hosts.names[1])\n\(job.output)")
        let victim = try XCTUnwrap(ranks.max { $0.rank! < $1.rank! }, job.output)
        XCTAssertEqual(kill(victim.pid, SIGKILL), 0)
        // Liveness, not speed: a job that hangs after losing a rank never ends; 60 s is far beyond the few seconds
        // mpirun takes and far below the 300 s watchdog.
        let status = job.wait(timeout: 60)
        let out = job.output
        XCTAssertNotNil(status, "the job did not end within 60 s of the kill:\n\(out)")
        XCTAssertNotEqual(status, 0, out)
        XCTAssertFalse(out.contains("watchdog:"), "ended by mpirun, not the watchdog:\n\(out)")
        XCTAssertFalse(out.contains("step 1000/1000"), out)
        // mpirun: "process rank 3 with PID 1234 on node t123h1 exited on signal 9 (Killed)."
        let named = out.split(separator: "\n").contains { $0.contains("rank \(victim.rank!) ") && $0.contains("PID \(victim.pid) on node \(hosts.names[1])") }
        XCTAssertTrue(named, "no line of the output names both rank \(victim.rank!) and host \(hosts.names[1]):\n\(out)")
        // Host 1's daemon ends the other ranks there too.
        let end = Date().addingTimeInterval(10)
        while Date() < end && hosts.processes(on: 1).contains(where: { $0.comm == "tessera" }) { usleep(100_000) }
        XCTAssertEqual(hosts.processes(on: 1).filter { $0.comm == "tessera" }.map(\.rank), [], "ranks left on \(hosts.names[1])")
    }

    /// Lazy checkpoints of pp 2 × dp 2 + ZeRO-1 on 2 hosts (2 ranks each) resume as ring 2 × dp 2 on 4 hosts
    /// (1 rank each, so every exchange crosses hosts) and continue the uninterrupted single-rank run.
    func testCheckpointOnTwoHostsResumesOnFourHosts() throws {
        guard requireHarness() else { return }
        let base = try CheckpointJobTests.baseline()
        let root = CheckpointJobTests.root("hosts")
        let two = try Hosts("ckpt-2", hosts: 2, slots: 2)
        defer { two.down() }
        let w = try CheckpointJobTests.job(np: 4, "hosts-w", ["--parallelism.pp", "2", "--parallelism.dp", "2", "--parallelism.zero", "1",
                                                             "--training.microbatches", "2", "--checkpoint.every", "4",
                                                             "--checkpoint.dir", root], launch: two.tesseraRun)
        XCTAssertEqual(w.checkpoints.map { $0["step"] as? Int }, [4, 8, 10], w.output)
        XCTAssertTrue(w.output.contains("on 2 host(s) of \(two.hostfile), 2 per node"), w.output)
        two.down()
        let four = try Hosts("ckpt-4", hosts: 4, slots: 1)
        defer { four.down() }
        let r = try CheckpointJobTests.job(np: 4, "hosts-r", ["--parallelism.ring", "2", "--parallelism.dp", "2",
                                                             "--resume", root + "/step-000004", "--checkpoint.dir", root + "-r"],
                                           launch: four.tesseraRun)
        XCTAssertTrue(r.output.contains("continuing from \(root)/step-000004"), r.output)
        XCTAssertTrue(r.output.contains("on 4 host(s) of \(four.hostfile), 1 per node"), r.output)
        CheckpointJobTests.assertContinues(r, base, from: 5, tolerance: DataParallelTests.tolerance, "2 hosts → 4 hosts")
    }

    // MARK: the harness

    /// Namespaces and /etc/netns entries of the harness run `prefix` (t<id>: t<id>br, t<id>h0, ...; "t": every run).
    func leftovers(_ prefix: String) -> [String] {
        let fm = FileManager.default
        func ours(_ name: String) -> Bool { prefix == "t" ? name.hasPrefix("t") : name == prefix + "br" || name.hasPrefix(prefix + "h") }
        return ((try? fm.contentsOfDirectory(atPath: "/run/netns")) ?? []).filter(ours).map { "/run/netns/" + $0 }
            + ((try? fm.contentsOfDirectory(atPath: "/etc/netns")) ?? []).filter(ours).map { "/etc/netns/" + $0 }
    }

    /// Seconds of `netns-hosts measure DIR I J MIB` (a TCP transfer from host i to host j).
    func transfer(_ dir: String, _ i: Int, _ j: Int, mib: Int) throws -> Double {
        let (status, out) = try runProcess([Self.script, "measure", dir, "\(i)", "\(j)", "\(mib)"], timeout: 120)
        guard status == 0, let s = out.range(of: " in "), let e = out.range(of: " s (", range: s.upperBound..<out.endIndex),
              let seconds = Double(out[s.upperBound..<e.lowerBound]) else { throw TestFailure("measure \(i) → \(j): exit \(status)\n\(out)") }
        print("MultiHostTests: \(out.trimmingCharacters(in: .whitespacesAndNewlines))")
        return seconds
    }

    /// Bytes sent through the shaping class of host `i` for destination host `j` and its rate, from `tc -s class show`
    /// (nil when the link is unshaped: no class).
    func shaped(_ hosts: Hosts, _ i: Int, _ j: Int) throws -> (rate: String, sent: Int)? {
        let (status, out) = try runProcess(["tc", "-n", hosts.names[i], "-s", "class", "show", "dev", "eth0", "classid", "1:\(10 + j)"])
        guard status == 0, let r = out.range(of: " rate "), let s = out.range(of: "Sent ") else { return nil }
        let rate = out[r.upperBound...].prefix { $0 != " " }
        let sent = Int(out[s.upperBound...].prefix { $0.isNumber }) ?? 0
        return (String(rate), sent)
    }

    /// A cluster of two fast pairs (h0-h1, h2-h3, unshaped) joined by slow links (100 mbit): an 8 MiB transfer on a
    /// slow link passes through that link's 100 Mbit class (tc's counters), one on a fast link through none, in both
    /// directions; `link` changes one pair; down leaves no namespace and no /etc/netns entry, and repeats safely.
    /// (The transfer times are printed, not asserted: timings belong in benchmarks.)
    func testHarnessShapesLinksAndCleansUp() throws {
        guard requireHarness() else { return }
        let hosts = try Hosts("harness", hosts: 4, slots: 1, ["--rate", "100mbit", "--link", "0:1:off", "--link", "2:3:off"])
        var down = false
        defer { if !down { hosts.down() } }
        let prefix = String(hosts.names[0].dropLast(2))  // t<id>
        XCTAssertEqual(hosts.names, (0..<4).map { "\(prefix)h\($0)" })
        XCTAssertEqual(Set(leftovers(prefix)), Set(hosts.names.map { "/run/netns/" + $0 } + ["/run/netns/\(prefix)br"]
                                                    + hosts.names.map { "/etc/netns/" + $0 }))
        // Each host resolves the others' names (its /etc/netns/NAME/hosts) and runs under its own hostname.
        let (status, out) = try runProcess(hosts.onHost0(["bash", "-c", "hostname; getent hosts \(hosts.names[3])"]))
        XCTAssertEqual(status, 0, out)
        XCTAssertTrue(out.hasPrefix(hosts.names[0] + "\n"), out)
        XCTAssertTrue(out.contains(" \(hosts.names[3])"), out)

        for (i, j) in [(0, 1), (3, 2)] {
            _ = try transfer(hosts.dir, i, j, mib: 8)
            XCTAssertNil(try shaped(hosts, i, j), "h\(i) → h\(j) is unshaped")
        }
        for (i, j) in [(0, 2), (3, 1), (2, 0)] {
            _ = try transfer(hosts.dir, i, j, mib: 8)
            let c = try XCTUnwrap(try shaped(hosts, i, j), "h\(i) → h\(j) has a shaping class")
            XCTAssertEqual(c.rate, "100Mbit", "h\(i) → h\(j)")
            XCTAssertGreaterThan(c.sent, 8 << 20, "the 8 MiB from h\(i) to h\(j) went through the class")
        }
        // The link command: h0-h2 unshaped, h0-h1 slow (both directions).
        for args in [["0", "2", "off"], ["0", "1", "100mbit"]] {
            let (s, o) = try runProcess([Self.script, "link", hosts.dir] + args)
            XCTAssertEqual(s, 0, o)
        }
        XCTAssertNil(try shaped(hosts, 2, 0), "after link: h2 → h0 unshaped")
        _ = try transfer(hosts.dir, 1, 0, mib: 8)
        let c = try XCTUnwrap(try shaped(hosts, 1, 0), "after link: h1 → h0 shaped")
        XCTAssertEqual(c.rate, "100Mbit")
        XCTAssertGreaterThan(c.sent, 8 << 20)

        hosts.down()
        down = true
        XCTAssertEqual(leftovers(prefix), [], "netns-hosts down left these")
        XCTAssertFalse(FileManager.default.fileExists(atPath: hosts.dir + "/state"))
        hosts.down()  // again: nothing to do, exit 0
    }

    /// Link delays: a netem qdisc where the kernel has one, else the delay line (Launch/delay-line behind an iptables
    /// NFQUEUE rule). Forced to the delay line (NETNS_HOSTS_DELAY=line, so that every kernel runs this path): packets
    /// in both directions go through it (its counters, not times: the delay's effect is a benchmark's to show),
    /// `link` without a delay stops it and removes its rule, down leaves nothing. A delay line that cannot start
    /// fails up, which then removes everything it made. With the default choice the delay is in place either way.
    func testLinkDelaysAndAFailedUpLeavesNothing() throws {
        guard requireHarness() else { return }
        let scratch = scratchDirectory("tessera-hosts")
        // A python3 that cannot run the delay line: up fails naming it and leaves nothing.
        let bin = scratch.appendingPathComponent("bin")
        try FileManager.default.createDirectory(at: bin, withIntermediateDirectories: true)
        try "#!/bin/sh\necho 'no python here' >&2\nexit 3\n".write(to: bin.appendingPathComponent("python3"), atomically: true, encoding: .utf8)
        chmod(bin.appendingPathComponent("python3").path, 0o755)
        let path = bin.path + ":" + (ProcessInfo.processInfo.environment["PATH"] ?? "/usr/bin:/bin")
        let failed = scratch.appendingPathComponent("failed").path
        let before = leftovers("t")
        let (status, out) = try runProcess(["env", "NETNS_HOSTS_DELAY=line", "PATH=\(path)", Self.script, "up", failed,
                                            "--hosts", "2", "--delay", "2ms"], timeout: 60)
        XCTAssertNotEqual(status, 0, out)
        XCTAssertTrue(out.contains("delay line") && out.contains("did not start") && out.contains("no python here"), out)
        XCTAssertTrue(out.contains("up failed; removing what it made"), out)
        XCTAssertEqual(Set(leftovers("t")), Set(before), "up left these behind:\n\(out)")
        XCTAssertFalse(FileManager.default.fileExists(atPath: failed + "/state"), out)

        // The delay line, forced.
        setenv("NETNS_HOSTS_DELAY", "line", 1)
        let hosts: Hosts
        do { defer { unsetenv("NETNS_HOSTS_DELAY") }; hosts = try Hosts("delay", hosts: 2, slots: 1, ["--rate", "1gbit", "--delay", "2ms"]) }
        var down = false
        defer { if !down { hosts.down() } }
        for (i, j) in [(0, 1), (1, 0)] {
            _ = try transfer(hosts.dir, i, j, mib: 4)
            XCTAssertEqual(try shaped(hosts, i, j)?.rate, "1Gbit", "h\(i) → h\(j) keeps its rate")
            let base = hosts.dir + "/delay-\(i)-\(j)"
            let pid = try XCTUnwrap(pid_t(try String(contentsOfFile: base + ".pid", encoding: .utf8).trimmingCharacters(in: .whitespacesAndNewlines)))
            XCTAssertTrue(hosts.processes(on: i).contains { $0.pid == pid }, "the delay line of h\(i) → h\(j) runs in h\(i)")
            let (rs, rules) = try runProcess(["ip", "netns", "exec", hosts.names[i], "iptables", "-S", "OUTPUT"])
            XCTAssertEqual(rs, 0, rules)
            XCTAssertTrue(rules.contains("NFQUEUE --queue-num \(10 + j)"), rules)
            // Its counters are rewritten every second: wait (liveness only) until they show the transfer.
            var held = 0
            for _ in 0..<100 where held < 10 {
                let stats = (try? String(contentsOfFile: base + ".stats", encoding: .utf8)) ?? ""
                held = stats.split(separator: "\n").first { $0.hasPrefix("packets ") }.flatMap { Int($0.dropFirst(8)) } ?? 0
                if held < 10 { usleep(100_000) }
            }
            XCTAssertGreaterThanOrEqual(held, 10, "the 4 MiB from h\(i) to h\(j) went through the delay line")
        }
        // link without a delay: the delay lines stop and their rules go; the rate stays.
        let (ls, lo) = try runProcess([Self.script, "link", hosts.dir, "0", "1", "100mbit"])
        XCTAssertEqual(ls, 0, lo)
        for i in 0..<2 {
            XCTAssertFalse(FileManager.default.fileExists(atPath: hosts.dir + "/delay-\(i)-\(1 - i).pid"))
            XCTAssertFalse(hosts.processes(on: i).contains { $0.comm.hasPrefix("python") }, "h\(i) still runs a delay line")
            let (_, rules) = try runProcess(["ip", "netns", "exec", hosts.names[i], "iptables", "-S", "OUTPUT"])
            XCTAssertFalse(rules.contains("NFQUEUE"), rules)
        }
        // And back: link with a delay starts them again; down then leaves nothing.
        let (ls2, lo2) = try runProcess([Self.script, "link", hosts.dir, "0", "1", "1gbit", "1ms"])
        XCTAssertEqual(ls2, 0, lo2)
        XCTAssertTrue(FileManager.default.fileExists(atPath: hosts.dir + "/delay-0-1.pid"))
        let prefix = String(hosts.names[0].dropLast(2))
        hosts.down()
        down = true
        XCTAssertEqual(leftovers(prefix), [], "netns-hosts down left these")
        let files = (try? FileManager.default.contentsOfDirectory(atPath: hosts.dir)) ?? []
        XCTAssertEqual(files.filter { $0.hasPrefix("delay-") }, [], "down left the delay lines' files")

        // The default choice: netem where the kernel has it, else the delay line; either way the delay is there.
        let auto = try Hosts("delay-auto", hosts: 2, slots: 1, ["--delay", "1ms"])
        defer { auto.down() }
        let (qs, q) = try runProcess(["tc", "-n", auto.names[0], "qdisc", "show", "dev", "eth0"])
        XCTAssertEqual(qs, 0, q)
        let lines = FileManager.default.fileExists(atPath: auto.dir + "/delay-0-1.pid")
        XCTAssertTrue(q.contains("netem") ? !lines : lines, "a delay by netem or by the delay line, not both nor neither:\n\(q)")
        print("MultiHostTests: on this kernel the default delay is " + (lines ? "the delay line (no netem)" : "netem"))
    }
}
