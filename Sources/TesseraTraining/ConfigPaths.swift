// Paths in the configuration compared as text: the same answer whether or not they exist yet.
// (`URL(fileURLWithPath:)` asks the file system whether a path is a directory, so `/tmp/ck` and `/tmp/ck/`
// compared equal only when /tmp/ck existed.)

import Foundation

enum ConfigPaths {
    /// The absolute, lexically normal form of `path`: relative paths are resolved against `directory`
    /// (the working directory by default), and `//`, `.`, `..` and a trailing `/` are collapsed without
    /// looking at the file system (symbolic links are not followed; `..` above `/` stays at `/`).
    static func normalized(_ path: String, against directory: String = FileManager.default.currentDirectoryPath) -> String {
        let absolute = path.hasPrefix("/") ? path : directory + "/" + path
        var parts: [Substring] = []
        for part in absolute.split(separator: "/", omittingEmptySubsequences: true) {
            switch part {
            case ".": continue
            case "..": _ = parts.popLast()
            default: parts.append(part)
            }
        }
        return "/" + parts.joined(separator: "/")
    }

    /// Whether two paths name the same location as text (see `normalized`).
    static func same(_ a: String, _ b: String, against directory: String = FileManager.default.currentDirectoryPath) -> Bool {
        normalized(a, against: directory) == normalized(b, against: directory)
    }
}
