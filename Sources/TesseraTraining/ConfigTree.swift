// The configuration as a flat tree of "section.key" entries, each remembering where it came from:
// built from a TOML document, then overlaid with command-line overrides.

import TOMLKit

/// One value as written by the user, before it is checked against the schema.
struct ConfigEntry {
    enum Raw {
        /// A TOML scalar of a supported type.
        case value(ConfigValue)
        /// A command-line override, parsed only once the target key's type is known.
        case text(String)
        /// A TOML value no key accepts (array, table, date, ...), described for error messages.
        case unsupported(String)
    }

    var raw: Raw
    /// A file path, the `source` given to `load(text:)`, or "command line".
    var source: String
}

struct ConfigTree {
    /// Values inside sections, by full key "section.key".
    var entries: [String: ConfigEntry] = [:]
    /// Values outside any section, by key; every one of them is an error.
    var topLevel: [String: ConfigEntry] = [:]
    /// Every section present in the document, with its source; lets an empty unknown section be reported.
    var sections: [String: String] = [:]

    /// Parses a TOML document. Syntax errors are reported as "SOURCE:LINE:COLUMN: message".
    static func parse(text: String, source: String) throws -> ConfigTree {
        let document: TOMLTable
        do {
            document = try TOMLTable(string: text)
        } catch let error as TOMLParseError {
            let at = error.source.begin
            throw ConfigError("\(source):\(at.line):\(at.column): TOML syntax error: \(error.description)")
        }
        var tree = ConfigTree()
        for (name, value) in Self.items(of: document) {
            guard let section = value.table else {
                tree.topLevel[name] = ConfigEntry(raw: Self.raw(value), source: source)
                continue
            }
            tree.sections[name] = source
            for (key, item) in Self.items(of: section) {
                tree.entries[name + "." + key] = ConfigEntry(raw: Self.raw(item), source: source)
            }
        }
        return tree
    }

    /// Overlays command-line overrides; the last override of a key wins. Returns the errors for unknown keys.
    mutating func apply(_ overrides: [(key: String, value: String)]) -> [String] {
        var errors: [String] = []
        for (key, value) in overrides {
            guard ConfigSchema.field(key) != nil else {
                errors.append(ConfigSchema.unknownKeyMessage(key, source: ConfigLoader.commandLine))
                continue
            }
            entries[key] = ConfigEntry(raw: .text(value), source: ConfigLoader.commandLine)
        }
        return errors
    }

    /// The key/value pairs of a table. Avoids TOMLKit's iterator, which force-unwraps each lookup.
    private static func items(of table: TOMLTable) -> [(String, TOMLValueConvertible)] {
        table.keys.compactMap { key in table[key].map { (key, $0) } }
    }

    private static func raw(_ value: TOMLValueConvertible) -> ConfigEntry.Raw {
        switch value.type {
        case .int: return value.int.map { .value(.int($0)) } ?? .unsupported("integer")
        case .double: return value.double.map { .value(.double($0)) } ?? .unsupported("floating-point number")
        case .bool: return value.bool.map { .value(.bool($0)) } ?? .unsupported("boolean")
        case .string: return value.string.map { .value(.string($0)) } ?? .unsupported("string")
        case .table: return .unsupported("a table")
        case .array: return .unsupported("an array")
        case .date, .time, .dateTime: return .unsupported("\(value.type) \(value.debugDescription)")
        }
    }
}
