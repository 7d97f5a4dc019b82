// Entry points of the configuration system: load a TOML file with command-line overrides,
// split overrides out of the command line, and render the effective configuration.

import Foundation

/// A configuration problem. `description` holds one line per problem, each naming its source
/// (file path or "command line"), the full key, what was expected and what was found.
public struct ConfigError: Error, CustomStringConvertible, Equatable {
    public let description: String

    public init(_ description: String) {
        self.description = description
    }

    init(lines: [String]) {
        self.description = lines.joined(separator: "\n")
    }
}

public enum ConfigLoader {
    /// The source named in messages about command-line overrides.
    public static let commandLine = "command line"

    /// Parses a TOML file, applies overrides like `[("training.steps", "50")]`, validates; throws ConfigError.
    /// `dataFiles: false` skips the check that the data files exist (for commands that never read them).
    public static func load(path: String, overrides: [(key: String, value: String)], dataFiles: Bool = true) throws -> TesseraConfig {
        try load(text: readConfigFile(path), source: path, overrides: overrides, dataFiles: dataFiles)
    }

    /// Like `load(path:overrides:)` for TOML text; `source` names the text in messages.
    /// `load(text: "", source: "defaults", overrides: [])` gives the defaults (if `data.train` is overridden).
    public static func load(text: String, source: String,
                            overrides: [(key: String, value: String)], dataFiles: Bool = true) throws -> TesseraConfig {
        var tree = try ConfigTree.parse(text: text, source: source)
        var errors = tree.apply(overrides)
        let reader = ConfigReader.read(tree)
        errors += reader.errors
        guard errors.isEmpty else { throw ConfigError(lines: errors) }
        try reader.config.validate(origins: reader.origins, fallbackSource: source, dataFiles: dataFiles)
        return reader.config
    }

    /// Splits command-line arguments: `--training.steps 50` and `--training.steps=50` become overrides;
    /// every other argument is returned in `rest`, in order. An argument is an override when it starts
    /// with `--` and its name (the part before any `=`) contains a dot, so `--config=a/b.toml` stays in `rest`.
    public static func splitOverrides(_ args: [String]) throws
        -> (overrides: [(key: String, value: String)], rest: [String]) {
        var overrides: [(key: String, value: String)] = []
        var rest: [String] = []
        var errors: [String] = []
        var index = 0
        while index < args.count {
            let arg = args[index]
            index += 1
            guard let (key, inlineValue) = overrideName(arg) else {
                rest.append(arg)
                continue
            }
            var value = inlineValue
            if value == nil, index < args.count {
                value = args[index]
                index += 1
            }
            guard let value else {
                errors.append("\(commandLine): override '--\(key)' needs a value (--\(key) VALUE or --\(key)=VALUE)")
                continue
            }
            guard ConfigSchema.field(key) != nil else {
                errors.append(ConfigSchema.unknownKeyMessage(key, source: commandLine))
                continue
            }
            overrides.append((key: key, value: value))
        }
        guard errors.isEmpty else { throw ConfigError(lines: errors) }
        return (overrides, rest)
    }

    /// The effective configuration as TOML text: every key, with a comment naming the default
    /// wherever the value differs from it. Loading the text gives back an equal configuration.
    public static func render(_ c: TesseraConfig) -> String {
        ConfigRenderer.render(c)
    }

    /// The files a data path names: the sorted matches of a glob (`*`, `?`, `[`), otherwise the path itself
    /// if it exists. Relative paths resolve against the current working directory.
    public static func expandDataPath(_ path: String) -> [String] {
        ConfigDataPaths.expand(path)
    }

    /// `--section.key[=value]` → ("section.key", value?); nil when the argument is not an override.
    private static func overrideName(_ arg: String) -> (String, String?)? {
        guard arg.hasPrefix("--") else { return nil }
        let body = arg.dropFirst(2)
        let name: Substring, value: Substring?
        if let equals = body.firstIndex(of: "=") {
            name = body[..<equals]
            value = body[body.index(after: equals)...]
        } else {
            name = body
            value = nil
        }
        guard name.contains(".") else { return nil }
        return (String(name), value.map(String.init))
    }

    private static func readConfigFile(_ path: String) throws -> String {
        var isDirectory: ObjCBool = false
        guard FileManager.default.fileExists(atPath: path, isDirectory: &isDirectory) else {
            throw ConfigError("\(path): config file not found (relative paths resolve against the working"
                + " directory \(FileManager.default.currentDirectoryPath))")
        }
        guard !isDirectory.boolValue else { throw ConfigError("\(path): is a directory, expected a TOML file") }
        guard let data = FileManager.default.contents(atPath: path) else {
            throw ConfigError("\(path): cannot read config file")
        }
        guard let text = String(data: data, encoding: .utf8) else {
            throw ConfigError("\(path): config file is not valid UTF-8")
        }
        return text
    }
}
