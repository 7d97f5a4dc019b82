// Token sources: read-only, random-access streams of token ids that the data loader cuts windows from.
// Raw text is byte-level (token = byte, vocabulary 256); llm.c `.bin` shards are memory-mapped (TokenShard.swift).
// See docs/data.md.

import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// An error in the data pipeline. The message names the file (or source) and what was expected.
public struct DataError: Error, CustomStringConvertible {
    public let description: String
    public init(_ description: String) { self.description = description }
}

/// A read-only sequence of token ids with random access.
public protocol TokenSource: AnyObject, Sendable {
    /// Number of tokens.
    var count: Int { get }
    /// What the tokens come from (file names), for messages.
    var description: String { get }
    /// Largest token id present, for validation against the model's vocab_size.
    /// Computed on first use (a full scan) and cached.
    var maxToken: Int { get }
    /// Copies tokens [start, start + n) into `dst` as Int32. The range must lie inside 0..<count.
    func copy(from start: Int, count n: Int, into dst: UnsafeMutablePointer<Int32>)
}

// MARK: - Lazily computed, cached maximum

/// A value computed once on first use, thread-safe. Holds the only mutable state of a token source.
final class LazyInt: @unchecked Sendable {  // guarded by `lock`
    private let lock = NSLock()
    private var value: Int?
    func get(_ compute: () -> Int) -> Int {
        lock.lock()
        defer { lock.unlock() }
        if let v = value { return v }
        let v = compute()
        value = v
        return v
    }
}

/// Largest token of `source` in [start, start + n), scanned through `copy` in fixed-size chunks (no allocation
/// proportional to n). Returns -1 for an empty range.
func scanMaxToken(_ source: any TokenSource, from start: Int, count n: Int) -> Int {
    let chunk = 1 << 16
    var best: Int32 = -1
    withUnsafeTemporaryAllocation(of: Int32.self, capacity: chunk) { buf in
        var i = 0
        while i < n {
            let m = min(chunk, n - i)
            source.copy(from: start + i, count: m, into: buf.baseAddress!)
            for k in 0..<m where buf[k] > best { best = buf[k] }
            i += m
        }
    }
    return Int(best)
}

@inline(__always)
func checkRange(_ start: Int, _ n: Int, _ count: Int, _ what: String) {
    precondition(n >= 0 && start >= 0 && start + n <= count,
                 "\(what): token range [\(start), \(start + n)) outside 0..<\(count)")
}

// MARK: - Byte-level text

/// Raw bytes as tokens (byte-level vocabulary of 256): a whole text file, or a contiguous slice of one.
/// Slices share the underlying storage.
public final class ByteTokens: TokenSource {
    private let bytes: [UInt8]
    private let base: Int
    public let count: Int
    public let description: String
    private let cachedMax = LazyInt()

    /// All of `bytes`.
    public convenience init(bytes: [UInt8], description: String) {
        self.init(storage: bytes, range: 0..<bytes.count, description: description)
    }

    private init(storage: [UInt8], range: Range<Int>, description: String) {
        bytes = storage
        base = range.lowerBound
        count = range.count
        self.description = description
    }

    /// Reads the file at `path`; its bytes are the tokens.
    public static func load(path: String) throws -> ByteTokens {
        ByteTokens(bytes: try readFileBytes(path), description: path)
    }

    /// A view of tokens [range] of this source (no copy).
    public func slice(_ range: Range<Int>, description: String? = nil) -> ByteTokens {
        precondition(range.lowerBound >= 0 && range.upperBound <= count, "ByteTokens.slice: \(range) outside 0..<\(count)")
        return ByteTokens(storage: bytes, range: (base + range.lowerBound)..<(base + range.upperBound),
                          description: description ?? "\(self.description)[\(range.lowerBound)..<\(range.upperBound)]")
    }

    public var maxToken: Int {
        cachedMax.get {
            bytes.withUnsafeBufferPointer { b in
                var m = -1
                for i in base..<(base + count) where Int(b[i]) > m { m = Int(b[i]) }
                return m
            }
        }
    }

    public func copy(from start: Int, count n: Int, into dst: UnsafeMutablePointer<Int32>) {
        checkRange(start, n, count, description)
        bytes.withUnsafeBufferPointer { b in
            let src = b.baseAddress! + base + start
            for i in 0..<n { dst[i] = Int32(src[i]) }
        }
    }
}

/// The contents of a file, with errors that name it.
func readFileBytes(_ path: String) throws -> [UInt8] {
    var isDir: ObjCBool = false
    guard FileManager.default.fileExists(atPath: path, isDirectory: &isDir) else {
        throw DataError("\(path): no such file")
    }
    guard !isDir.boolValue else { throw DataError("\(path): is a directory, expected a file") }
    do {
        let data = try Data(contentsOf: URL(fileURLWithPath: path), options: .alwaysMapped)
        return [UInt8](data)
    } catch {
        throw DataError("\(path): cannot read: \(error.localizedDescription)")
    }
}

// MARK: - Slices of any source

/// A contiguous view [range] of another source (no copy). Used for a validation tail split off a train stream.
public final class TokenSlice: TokenSource {
    public let base: any TokenSource
    public let offset: Int
    public let count: Int
    public let description: String
    private let cachedMax = LazyInt()

    public init(_ base: any TokenSource, range: Range<Int>, description: String? = nil) {
        precondition(range.lowerBound >= 0 && range.upperBound <= base.count,
                     "TokenSlice: \(range) outside 0..<\(base.count) of \(base.description)")
        self.base = base
        offset = range.lowerBound
        count = range.count
        self.description = description ?? "\(base.description)[\(range.lowerBound)..<\(range.upperBound)]"
    }

    public var maxToken: Int {
        cachedMax.get { scanMaxToken(base, from: offset, count: count) }
    }

    public func copy(from start: Int, count n: Int, into dst: UnsafeMutablePointer<Int32>) {
        checkRange(start, n, count, description)
        base.copy(from: offset + start, count: n, into: dst)
    }
}

// MARK: - Opening a dataset

/// Which stream a source is for.
public enum Split: Sendable { case train, validation }

/// Paths named by `pattern`: the pattern itself if it has no glob characters (it must exist), otherwise its sorted
/// matches (there must be at least one).
public func expandPaths(_ pattern: String) throws -> [String] {
    guard pattern.contains(where: { "*?[".contains($0) }) else {
        var isDir: ObjCBool = false
        guard FileManager.default.fileExists(atPath: pattern, isDirectory: &isDir) else {
            throw DataError("\(pattern): no such file")
        }
        guard !isDir.boolValue else { throw DataError("\(pattern): is a directory, expected a file or a glob") }
        return [pattern]
    }
    let paths = globFiles(pattern)
    if paths.isEmpty { throw DataError("\(pattern): the pattern matches no file") }
    return paths
}

/// The regular files a glob pattern matches, sorted (empty when none match).
func globFiles(_ pattern: String) -> [String] {
    var g = glob_t()
    defer { globfree(&g) }
    guard glob(pattern, 0, nil, &g) == 0 else { return [] }
    var paths: [String] = []
    for i in 0..<Int(g.gl_pathc) {
        if let p = g.gl_pathv[i] { paths.append(String(cString: p)) }
    }
    return paths.filter { path in
        var isDir: ObjCBool = false
        return FileManager.default.fileExists(atPath: path, isDirectory: &isDir) && !isDir.boolValue
    }.sorted()
}

/// Number of tokens at the end of an `n`-token stream that form the validation split for `fraction`:
/// floor(n * fraction), but at least one token when fraction > 0.
func validationTokens(_ n: Int, fraction: Double) -> Int {
    guard fraction > 0 else { return 0 }
    return max(1, Int((Double(n) * fraction).rounded(.down)))
}

/// Opens the train and validation token sources for a data config.
///
/// - `format`: "auto" (a `train` ending in ".bin", including a glob like "dir/train_*.bin", means bin; anything else
///   text), "text" or "bin".
/// - text: the train file's bytes (a glob concatenates its sorted matches); bin: the sorted matches of the path or glob,
///   mmap'd and concatenated logically.
/// - `val`: a path or glob in the same format; if empty, the last `valFraction` of the train stream is validation and
///   the rest train (views, no copy). `valFraction` 0 with an empty `val` gives an empty validation source.
public func openDataset(format: String, train: String, val: String, valFraction: Double) throws
    -> (train: any TokenSource, val: any TokenSource)
{
    let isBin: Bool
    switch format.lowercased() {
    case "auto": isBin = train.hasSuffix(".bin")
    case "bin": isBin = true
    case "text", "txt": isBin = false
    default: throw DataError("data format \"\(format)\": expected \"auto\", \"text\" or \"bin\"")
    }
    guard !train.isEmpty else { throw DataError("data: no train path given") }

    func open(_ pattern: String) throws -> any TokenSource {
        let paths = try expandPaths(pattern)
        if isBin { return try ShardTokens(paths: paths) }
        if paths.count == 1 { return try ByteTokens.load(path: paths[0]) }
        var all: [UInt8] = []
        for p in paths { all += try readFileBytes(p) }
        return ByteTokens(bytes: all, description: paths.joined(separator: "+"))
    }

    let trainAll = try open(train)
    if !val.isEmpty {
        let v = try open(val)
        guard trainAll.count > 0 else { throw DataError("\(trainAll.description): no train tokens") }
        return (trainAll, v)
    }
    guard valFraction >= 0 && valFraction < 1 else {
        throw DataError("data: val_fraction \(valFraction) must be in [0, 1) when no val path is given")
    }
    let n = trainAll.count
    let nVal = validationTokens(n, fraction: valFraction)
    guard n - nVal > 0 else {
        throw DataError("\(trainAll.description): \(n) tokens are too few to split off a validation fraction of \(valFraction)")
    }
    let cut = n - nVal
    let d = trainAll.description
    if let bytes = trainAll as? ByteTokens {
        return (bytes.slice(0..<cut, description: "\(d) (train, first \(cut) tokens)"),
                bytes.slice(cut..<n, description: "\(d) (validation, last \(nVal) tokens)"))
    }
    return (TokenSlice(trainAll, range: 0..<cut, description: "\(d) (train, first \(cut) tokens)"),
            TokenSlice(trainAll, range: cut..<n, description: "\(d) (validation, last \(nVal) tokens)"))
}
