// The documents of `tessera prepare --tokenizer`: a whole file, the records of a file split at a delimiter, or the
// `text` fields of a JSON-lines file. Files are read in 1 MiB chunks and documents handed out one at a time, so
// memory holds one document (and one chunk), not the file. Text is decoded as UTF-8, invalid bytes becoming U+FFFD.
// See docs/data.md.

import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// How an input file is cut into documents.
public enum DocumentFormat: Equatable, Sendable {
    /// The whole file is one document.
    case wholeFile
    /// Records separated by this string (not part of any record); empty records are skipped.
    case delimited(String)
    /// One JSON object per line; its string field `text` is the document. Blank lines are skipped.
    case jsonl

    /// Calls `body` with each document of the file at `path`, in order.
    func forEachDocument(in path: String, _ body: (String) throws -> Void) throws {
        switch self {
        case .wholeFile:
            try body(String(decoding: try readFileBytes(path), as: UTF8.self))
        case .delimited(let delimiter):
            try forEachRecord(in: path, delimiter: Array(delimiter.utf8)) { record, _ in
                if !record.isEmpty { try body(String(decoding: record, as: UTF8.self)) }
            }
        case .jsonl:
            try forEachRecord(in: path, delimiter: [UInt8(ascii: "\n")]) { line, number in
                if let text = try Self.jsonlText(line, path: path, line: number) { try body(text) }
            }
        }
    }

    /// The `text` of one JSON line (1-based `line`), nil for a blank line.
    static func jsonlText(_ bytes: ArraySlice<UInt8>, path: String, line: Int) throws -> String? {
        let blank: Set<UInt8> = [0x20, 0x09, 0x0D]
        if bytes.allSatisfy({ blank.contains($0) }) { return nil }
        let object: Any
        do {
            object = try JSONSerialization.jsonObject(with: Data(bytes), options: [.fragmentsAllowed])
        } catch {
            throw DataError("\(path):\(line): not a JSON line (expected an object with a string field \"text\")")
        }
        guard let dict = object as? [String: Any] else {
            throw DataError("\(path):\(line): not a JSON object (expected an object with a string field \"text\")")
        }
        guard let text = dict["text"] as? String else {
            throw DataError("\(path):\(line): \(dict["text"] == nil ? "no" : "a non-string") field \"text\" "
                            + "(expected an object with a string field \"text\")")
        }
        return text
    }
}

/// Calls `body(record, number)` with each record of the file at `path` (the bytes between delimiters, the
/// delimiter removed; `number` counts from 1), reading 1 MiB at a time. The part after the last delimiter is the
/// last record (empty when the file ends with the delimiter).
func forEachRecord(in path: String, delimiter: [UInt8],
                   _ body: (ArraySlice<UInt8>, Int) throws -> Void) throws {
    precondition(!delimiter.isEmpty, "forEachRecord: empty delimiter")
    var isDir: ObjCBool = false
    guard FileManager.default.fileExists(atPath: path, isDirectory: &isDir) else { throw DataError("\(path): no such file") }
    guard !isDir.boolValue else { throw DataError("\(path): is a directory, expected a file") }
    guard let file = fopen(path, "rb") else {
        throw DataError("\(path): cannot open: \(String(cString: strerror(errno)))")
    }
    defer { fclose(file) }
    var pending: [UInt8] = []
    var searched = 0  // pending[..<searched] holds no delimiter start
    var number = 0
    var chunk = [UInt8](repeating: 0, count: 1 << 20)
    while true {
        let got = chunk.withUnsafeMutableBytes { fread($0.baseAddress!, 1, $0.count, file) }
        if got == 0 {
            if ferror(file) != 0 { throw DataError("\(path): read failed: \(String(cString: strerror(errno)))") }
            break
        }
        pending += chunk[..<got]
        var start = 0
        while let at = firstIndex(of: delimiter, in: pending, from: max(start, searched)) {
            number += 1
            try body(pending[start..<at], number)
            start = at + delimiter.count
        }
        pending.removeFirst(start)
        searched = max(0, pending.count - delimiter.count + 1)
    }
    number += 1
    try body(pending[...], number)
}

/// The first index ≥ `from` where `needle` starts in `haystack`.
private func firstIndex(of needle: [UInt8], in haystack: [UInt8], from: Int) -> Int? {
    let n = needle.count, last = haystack.count - n
    guard from <= last else { return nil }
    let first = needle[0]
    var i = from
    while i <= last {
        if haystack[i] == first && (n == 1 || haystack[(i + 1)..<(i + n)].elementsEqual(needle[1...])) { return i }
        i += 1
    }
    return nil
}
