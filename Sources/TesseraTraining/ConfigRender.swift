// Renders a configuration as TOML: every section and key in schema order, with "# default: X"
// after each value that differs from its default. The output loads back to an equal configuration.

enum ConfigRenderer {
    static func render(_ config: TesseraConfig) -> String {
        let defaults = TesseraConfig()
        var lines = ["# Tessera configuration: every key; \"# default: X\" marks values that differ from the default."]
        for section in ConfigSchema.sections {
            lines.append("")
            lines.append("[\(section)]")
            for field in ConfigSchema.fields where field.section == section {
                let value = field.get(config), standard = field.get(defaults)
                var line = "\(field.key) = \(literal(value))"
                if value != standard { line += "  # default: \(literal(standard))" }
                lines.append(line)
            }
        }
        return lines.joined(separator: "\n") + "\n"
    }

    /// The TOML literal of a value. Doubles always carry a '.' or an exponent, so they stay floats.
    static func literal(_ value: ConfigValue) -> String {
        switch value {
        case .int(let v): return String(v)
        case .double(let v): return v.isFinite ? String(v) : (v.isNaN ? "nan" : (v > 0 ? "inf" : "-inf"))
        case .bool(let v): return v ? "true" : "false"
        case .string(let v): return quoted(v)
        }
    }

    /// A TOML basic string: backslash, quote and control characters escaped.
    static func quoted(_ text: String) -> String {
        var out = "\""
        for scalar in text.unicodeScalars {
            switch scalar {
            case "\"": out += "\\\""
            case "\\": out += "\\\\"
            case "\n": out += "\\n"
            case "\t": out += "\\t"
            case "\r": out += "\\r"
            case "\u{08}": out += "\\b"
            case "\u{0C}": out += "\\f"
            case _ where scalar.value < 0x20 || scalar.value == 0x7F:
                let hex = String(scalar.value, radix: 16, uppercase: true)
                out += "\\u" + String(repeating: "0", count: 4 - hex.count) + hex
            default: out.unicodeScalars.append(scalar)
            }
        }
        return out + "\""
    }
}
