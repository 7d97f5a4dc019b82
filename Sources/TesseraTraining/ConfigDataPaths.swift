// Data paths in the configuration: plain files or globs, resolved against the current working directory.

import Foundation

enum ConfigDataPaths {
    /// Whether a path is a glob pattern (contains `*`, `?` or `[`).
    static func isGlob(_ path: String) -> Bool {
        path.contains { $0 == "*" || $0 == "?" || $0 == "[" }
    }

    /// The regular files a path names: the sorted matches of a glob, otherwise the path itself if it is a file.
    static func expand(_ path: String) -> [String] {
        if isGlob(path) { return globFiles(path) }
        return isRegularFile(path) ? [path] : []
    }

    /// Why a data path names no file, or nil when it names at least one.
    static func problem(_ path: String) -> String? {
        if isGlob(path) {
            return globFiles(path).isEmpty ? "no file matches this glob" : nil
        }
        var isDirectory: ObjCBool = false
        guard FileManager.default.fileExists(atPath: path, isDirectory: &isDirectory) else { return "file not found" }
        return isDirectory.boolValue ? "is a directory, expected a file" : nil
    }

    private static func isRegularFile(_ path: String) -> Bool {
        var isDirectory: ObjCBool = false
        return FileManager.default.fileExists(atPath: path, isDirectory: &isDirectory) && !isDirectory.boolValue
    }
}
