import ArgumentParser
import TesseraTraining

/// `tessera config show CONFIG.toml [--section.key VALUE ...]`.
struct ConfigCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "config", abstract: "Inspect a config.", subcommands: [ConfigShowCommand.self])
}

struct ConfigShowCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "show", abstract: "Print the effective config (the file with its overrides and defaults).",
        discussion: "Accepts (and ignores) train's run flags, so a launcher can pass train's arguments unchanged.")

    @OptionGroup var flags: RunFlags

    @Argument(parsing: .allUnrecognized, help: overridesHelp)
    var arguments: [String] = []

    func validate() throws {
        let (_, rest) = try configArguments(arguments, command: "config show")
        guard rest.count == 1 else {
            throw ValidationError(rest.isEmpty ? "config show needs a config file"
                : "config show takes one config file; unexpected: \(rest.dropFirst().joined(separator: " "))")
        }
    }

    func run() throws {
        _ = prepareMachine()
        let (overrides, rest) = try ConfigLoader.splitOverrides(arguments)
        print(ConfigLoader.render(try ConfigLoader.load(path: rest[0], overrides: overrides)), terminator: "")
    }
}
