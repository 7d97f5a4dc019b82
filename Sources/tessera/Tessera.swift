// The `tessera` command: one subcommand per file in this directory, parsed by swift-argument-parser, so the
// help (`tessera --help`, `tessera help CMD`, `tessera CMD --help`) is generated from the declarations.
// Errors: a bad command line prints `tessera: <what>` and the usage; an error of the work (a config, a file)
// prints `tessera: <what>`; both exit with status 2. A training run stopped by a non-finite step exits 4; a
// rank ended by fault injection exits 3.

import ArgumentParser
import Foundation

@main
struct Tessera: ParsableCommand {
    static let version = "0.14.0"

    static let configuration = CommandConfiguration(
        commandName: "tessera",
        abstract: "A distributed GPT training runtime in Swift over MPI and OpenBLAS.",
        discussion: "Commands that need several ranks run under mpirun (Launch/tessera-run sets up a training job). "
            + "train, config show and plan take a config file and any config key as an override, e.g. --training.steps 50.",
        version: version,
        subcommands: [
            TrainCommand.self, ConfigCommand.self, PrepareCommand.self, TokenizerCommand.self, ExportCommand.self, GenerateCommand.self,
            PlanCommand.self, BenchCommand.self, BenchDPCommand.self, BenchSPCommand.self, BenchPPCommand.self,
            BenchMemoryCommand.self, BenchCheckpointCommand.self, BenchCommCommand.self, MPICheckCommand.self,
        ])

    static func main() {
        var command: ParsableCommand
        do {
            command = try parseAsRoot()
        } catch {
            commandLineError(error)
        }
        do {
            try command.run()
        } catch let code as ExitCode {
            Foundation.exit(code.rawValue)
        } catch where exitCode(for: error) == .success || String(describing: type(of: error)) == "CommandError" {
            // `tessera help CMD` runs ArgumentParser's help command, which reports through its own errors.
            commandLineError(error)
        } catch {
            explain("\(error)")
            Foundation.exit(2)
        }
    }

    /// Help and --version print and exit 0; a bad command line says what (after the subcommand's name) and shows
    /// the usage, exit 2.
    static func commandLineError(_ error: Error) -> Never {
        guard exitCode(for: error) != .success else { exit(withError: error) }
        var message = fullMessage(for: error)
        if message.hasPrefix("Error: ") { message.removeFirst("Error: ".count) }
        let name = commandPath(Array(CommandLine.arguments.dropFirst()))
        explain(name.isEmpty || message.hasPrefix(name) ? message : "\(name): \(message)")
        Foundation.exit(2)
    }

    /// The subcommand names at the start of `arguments` ("config show", "bench", or "" for none).
    static func commandPath(_ arguments: [String]) -> String {
        var path: [String] = [], commands = configuration.subcommands
        for a in arguments {
            guard let c = commands.first(where: { $0.configuration.commandName == a }) else { break }
            path.append(a)
            commands = c.configuration.subcommands
        }
        return path.joined(separator: " ")
    }
}
