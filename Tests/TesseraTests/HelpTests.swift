import Foundation
import XCTest
@testable import tessera

/// `--help` on every subcommand of `tessera`: exit 0, the usage, every option the command declares, and nothing
/// started (no MPI, no benchmark). The commands and their options come from the command types themselves, through
/// ArgumentParser's description of them (`--experimental-dump-help`).
final class HelpTests: XCTestCase {
    /// A command of the tree: its path under `tessera` and the options and flags it accepts.
    struct Command { let path: [String]; let options: [String] }

    /// Runs `tessera` as a plain process (no mpirun). MPI is poisoned (an unknown point-to-point layer), so a
    /// command that started MPI would fail instead of printing help.
    func tessera(_ args: [String]) throws -> (Int32, String) {
        try runProcess(["env", "OMPI_MCA_pml=no-such-pml", CommandTests.binary] + args, timeout: 60)
    }

    func commands() throws -> [Command] {
        let (status, out) = try runProcess([CommandTests.binary, "--experimental-dump-help"], timeout: 60)
        XCTAssertEqual(status, 0, out)
        let root = try XCTUnwrap(JSONSerialization.jsonObject(with: Data(out.utf8)) as? [String: Any])
        var found: [Command] = []
        func visit(_ command: [String: Any], _ path: [String]) {
            let options = (command["arguments"] as? [[String: Any]] ?? []).filter {
                ($0["kind"] as? String) != "positional" && ($0["shouldDisplay"] as? Bool ?? true)
            }.flatMap { argument in
                (argument["names"] as? [[String: Any]] ?? []).compactMap { name -> String? in
                    guard let n = name["name"] as? String else { return nil }
                    return (name["kind"] as? String) == "short" ? "-" + n : "--" + n
                }
            }
            if !path.isEmpty { found.append(Command(path: path, options: options)) }
            for sub in command["subcommands"] as? [[String: Any]] ?? [] {
                guard let name = sub["commandName"] as? String, name != "help" else { continue }
                visit(sub, path + [name])
            }
        }
        visit(try XCTUnwrap(root["command"] as? [String: Any]), [])
        return found
    }

    func testEverySubcommandHasHelpNamingEveryOptionAndStartsNothing() throws {
        let all = try commands()
        XCTAssertEqual(Set(all.map { $0.path.joined(separator: " ") }), [
            "train", "config", "config show", "prepare", "tokenizer", "tokenizer train", "tokenizer encode", "tokenizer decode", "export", "generate", "plan", "bench", "bench-dp", "bench-sp",
            "bench-pp", "bench-memory", "bench-checkpoint", "bench-comm", "mpi-check",
        ])
        for command in all {
            let name = command.path.joined(separator: " ")
            let (status, out) = try tessera(command.path + ["--help"])
            XCTAssertEqual(status, 0, "\(name) --help: \(out)")
            XCTAssertTrue(out.contains("USAGE: tessera \(name)"), "\(name) --help: \(out)")
            for option in command.options {
                XCTAssertTrue(out.contains(option), "\(name) --help does not name \(option): \(out)")
            }
            // Nothing ran: no MPI (poisoned, it would have failed), no report, no machine note.
            for started in ["MPI_Init", "pml", "tessera \(name) —", "GFLOP/s", "mpi-check: ", "note: "] {
                XCTAssertFalse(out.contains(started), "\(name) --help started something (\(started)): \(out)")
            }
            // -h and `tessera help CMD` give the same help.
            let (hStatus, hOut) = try tessera(command.path + ["-h"])
            XCTAssertEqual(hStatus, 0, hOut)
            XCTAssertEqual(hOut, out, "\(name) -h")
            let (helpStatus, helpOut) = try tessera(["help"] + command.path)
            XCTAssertEqual(helpStatus, 0, helpOut)
            XCTAssertTrue(helpOut.contains("USAGE: tessera \(name)"), "help \(name): \(helpOut)")
        }
        // The commands that take a config name the overrides.
        for path in [["train"], ["config", "show"], ["plan"]] {
            let (_, out) = try tessera(path + ["--help"])
            XCTAssertTrue(out.contains("--section.key"), "\(path) --help: \(out)")
        }
        // config show accepts train's run flags.
        let train = try XCTUnwrap(all.first { $0.path == ["train"] }), show = try XCTUnwrap(all.first { $0.path == ["config", "show"] })
        XCTAssertTrue(Set(train.options).isSubset(of: Set(show.options)), "\(train.options) vs \(show.options)")
    }

    func testRootHelpListsEveryCommand() throws {
        let (status, out) = try tessera(["--help"])
        XCTAssertEqual(status, 0, out)
        for command in try commands() where command.path.count == 1 {
            XCTAssertTrue(out.contains("  \(command.path[0]) "), "tessera --help does not list \(command.path[0]): \(out)")
        }
        let (bareStatus, bare) = try tessera([])
        XCTAssertEqual(bareStatus, 0, bare)
        XCTAssertEqual(bare, out, "tessera alone prints the help")
    }

    func testVersion() throws {
        let (status, out) = try tessera(["--version"])
        XCTAssertEqual(status, 0, out)
        XCTAssertEqual(out.trimmingCharacters(in: .whitespacesAndNewlines), Tessera.version)
        XCTAssertFalse(Tessera.version.isEmpty)
    }

    func testUnknownFlagsAndCommandsShowTheUsage() throws {
        for (args, usage) in [(["bench", "--nope"], "tessera bench"), (["mpi-check", "--tp", "2"], "tessera mpi-check"),
                              (["bench-comm", "--nope"], "tessera bench-comm"), (["train", "job.toml", "--nope"], "tessera train")] {
            let (status, out) = try tessera(args)
            XCTAssertNotEqual(status, 0, "\(args): \(out)")
            XCTAssertTrue(out.contains("Usage: \(usage)"), "\(args): \(out)")
            XCTAssertTrue(out.hasPrefix("tessera: "), "\(args): \(out)")
        }
        let (status, out) = try tessera(["nope"])
        XCTAssertNotEqual(status, 0, out)
        XCTAssertTrue(out.contains("nope"), out)
    }
}
