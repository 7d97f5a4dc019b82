// Reads a TesseraConfig out of a ConfigTree: every schema key is taken once and checked against its
// type; whatever is left over is an unknown section or key (reported first). All problems are collected.

import Foundation

struct ConfigReader {
    var config = TesseraConfig()
    /// The source of every key that was set explicitly; keys left at their default are absent.
    var origins: [String: String] = [:]
    var errors: [String] = []

    static func read(_ tree: ConfigTree) -> ConfigReader {
        var reader = ConfigReader()
        var remaining = tree.entries
        for field in ConfigSchema.fields {
            guard let entry = remaining.removeValue(forKey: field.fullKey) else { continue }
            do {
                field.set(&reader.config, try typed(entry, as: field.kind, key: field.fullKey))
                reader.origins[field.fullKey] = entry.source
            } catch {
                reader.errors.append(error.description)
            }
        }
        reader.errors = unknownKeyErrors(remaining, tree: tree) + reader.errors
        return reader
    }

    /// Errors for top-level keys, unknown sections (reported once, not per key) and unknown keys.
    private static func unknownKeyErrors(_ remaining: [String: ConfigEntry], tree: ConfigTree) -> [String] {
        var errors: [String] = []
        for (key, entry) in tree.topLevel.sorted(by: { $0.key < $1.key }) {
            errors.append(ConfigSchema.unknownKeyMessage(key, source: entry.source))
        }
        let unknownSections = tree.sections.filter { !ConfigSchema.sections.contains($0.key) }
        for (section, source) in unknownSections.sorted(by: { $0.key < $1.key }) {
            errors.append(ConfigSchema.unknownSectionMessage(section, source: source))
        }
        for (key, entry) in remaining.sorted(by: { $0.key < $1.key })
        where unknownSections[ConfigSchema.split(key).section] == nil {
            errors.append(ConfigSchema.unknownKeyMessage(key, source: entry.source))
        }
        return errors
    }

    /// The entry's value as a value of `kind`. Integers are accepted for number keys; numbers must be finite.
    static func typed(_ entry: ConfigEntry, as kind: ConfigKind, key: String) throws(ConfigError) -> ConfigValue {
        func mismatch(_ found: String, expected: String = kind.expected) -> ConfigError {
            ConfigError("\(entry.source): key '\(key)' expects \(expected), found \(found)")
        }
        switch entry.raw {
        case .unsupported(let what):
            throw mismatch(what)
        case .value(let value):
            guard let converted = convert(value, to: kind) else { throw mismatch(value.described) }
            guard converted.isFinite else { throw mismatch(value.described, expected: "a finite number") }
            return converted
        case .text(let text):
            guard let parsed = parse(text, as: kind) else { throw mismatch(String(reflecting: text)) }
            guard parsed.isFinite else { throw mismatch(String(reflecting: text), expected: "a finite number") }
            return parsed
        }
    }

    private static func convert(_ value: ConfigValue, to kind: ConfigKind) -> ConfigValue? {
        switch (value, kind) {
        case (.int, .int), (.double, .double), (.bool, .bool), (.string, .string): return value
        case (.int(let i), .double): return .double(Double(i))
        default: return nil
        }
    }

    /// Parses a command-line value according to the target key's type; strings are taken as is.
    private static func parse(_ text: String, as kind: ConfigKind) -> ConfigValue? {
        let trimmed = text.trimmingCharacters(in: .whitespaces)
        switch kind {
        case .int: return Int(trimmed).map { .int($0) }
        case .double: return Double(trimmed).map { .double($0) }
        case .bool: return ["true": true, "false": false][trimmed].map { .bool($0) }
        case .string: return .string(text)
        }
    }
}

extension ConfigValue {
    /// The value with its TOML type, as shown after "found" in error messages.
    var described: String {
        switch self {
        case .int(let v): return "integer \(v)"
        case .double(let v): return "floating-point number \(v)"
        case .bool(let v): return "boolean \(v)"
        case .string(let v): return "string \(String(reflecting: v))"
        }
    }

    var isFinite: Bool {
        if case .double(let v) = self { return v.isFinite }
        return true
    }
}
