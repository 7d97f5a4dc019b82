// llm.c token shards (`.bin`), the format of llm.c's and nanoGPT-style data preparation scripts:
//
//   bytes [0, 1024)          header: 256 little-endian int32
//                              header[0] = 20240520   magic
//                              header[1] = 1 or 2     version: 1 = uint16 tokens (vocabularies up to 65536),
//                                                     2 = uint32 tokens (llm.c's format for larger ones)
//                              header[2] = N          number of tokens
//                              header[3...] = 0       reserved
//   bytes [1024, 1024 + wN)  the tokens, little-endian, w = 2 (version 1) or 4 (version 2) bytes each
//
// Shards of either version are memory-mapped read-only, so a multi-gigabyte dataset costs page cache, not process memory.

import Foundation
#if canImport(Glibc)
import Glibc
#endif

public enum TokenShard {
    public static let magic: Int32 = 20240520
    /// Version 1: uint16 tokens.
    public static let version: Int32 = 1
    /// Version 2: uint32 tokens.
    public static let wideVersion: Int32 = 2
    public static let headerInts = 256
    public static let headerBytes = 1024

    /// The version whose tokens hold every id of a vocabulary of `vocabSize`: 1 up to 65536, else 2.
    public static func version(forVocabSize vocabSize: Int) -> Int32 {
        vocabSize <= 1 << 16 ? version : wideVersion
    }

    /// Bytes per token of a supported version (2 or 4), nil for any other.
    public static func tokenBytes(version v: Int32) -> Int? {
        switch v {
        case version: return 2
        case wideVersion: return 4
        default: return nil
        }
    }

    /// Writes `tokens` as a version 1 llm.c shard at `path` (through a temporary file, renamed into place).
    public static func write(_ tokens: UnsafeBufferPointer<UInt16>, to path: String) throws {
        try write(count: tokens.count, to: path, version: version) { start, out in
            for i in 0..<out.count { out[i] = UInt32(tokens[start + i]) }
        }
    }

    /// Writes `tokens` as a version 1 llm.c shard at `path`.
    public static func write(_ tokens: [UInt16], to path: String) throws {
        try tokens.withUnsafeBufferPointer { try write($0, to: path) }
    }

    /// Writes `tokens` as a version 2 (uint32) llm.c shard at `path`.
    public static func write(_ tokens: [UInt32], to path: String) throws {
        try tokens.withUnsafeBufferPointer { t in
            try write(count: t.count, to: path, version: wideVersion) { start, out in
                for i in 0..<out.count { out[i] = t[start + i] }
            }
        }
    }

    /// Writes a shard of `count` tokens in format `version` (1 or 2), produced in chunks: `produce(start, buffer)`
    /// fills `buffer` with tokens [start, start + buffer.count). Throws from `produce`, or a token too large for a
    /// version 1 shard, abort the write and remove the temporary file.
    static func write(count: Int, to path: String, version v: Int32,
                      produce: (Int, UnsafeMutableBufferPointer<UInt32>) throws -> Void) throws {
        guard let width = tokenBytes(version: v) else {
            throw DataError("\(path): cannot write shard version \(v) (expected \(version) or \(wideVersion))")
        }
        guard count >= 0 && count <= Int(Int32.max) else {
            throw DataError("\(path): \(count) tokens do not fit an llm.c shard (at most \(Int32.max))")
        }
        let tmp = path + ".tmp"
        guard let f = fopen(tmp, "wb") else {
            throw DataError("\(path): cannot create shard file: \(String(cString: strerror(errno)))")
        }
        var ok = false
        defer {
            if !ok { fclose(f); unlink(tmp) }
        }
        func put(_ p: UnsafeRawPointer, _ bytes: Int) throws {
            guard fwrite(p, 1, bytes, f) == bytes else {
                throw DataError("\(path): write failed: \(String(cString: strerror(errno)))")
            }
        }
        var header = [Int32](repeating: 0, count: headerInts)
        header[0] = magic.littleEndian
        header[1] = v.littleEndian
        header[2] = Int32(count).littleEndian
        try header.withUnsafeBytes { try put($0.baseAddress!, headerBytes) }

        let chunk = 1 << 20
        let buf = UnsafeMutableBufferPointer<UInt32>.allocate(capacity: min(max(count, 1), chunk))
        defer { buf.deallocate() }
        let narrow = UnsafeMutableBufferPointer<UInt16>.allocate(capacity: width == 2 ? buf.count : 0)
        defer { narrow.deallocate() }
        var done = 0
        while done < count {
            let m = min(buf.count, count - done)
            let part = UnsafeMutableBufferPointer(rebasing: buf[0..<m])
            try produce(done, part)
            if width == 2 {
                for i in 0..<m {
                    guard part[i] <= UInt32(UInt16.max) else {
                        throw DataError("\(path): token id \(part[i]) does not fit a version 1 (uint16) shard; "
                                        + "write version 2 (uint32)")
                    }
                    narrow[i] = UInt16(part[i]).littleEndian
                }
                try put(narrow.baseAddress!, m * 2)
            } else {
                for i in 0..<m { part[i] = part[i].littleEndian }
                try put(part.baseAddress!, m * 4)
            }
            done += m
        }
        guard fflush(f) == 0 else { throw DataError("\(path): write failed: \(String(cString: strerror(errno)))") }
        ok = true
        guard fclose(f) == 0 else {
            unlink(tmp)
            throw DataError("\(path): write failed: \(String(cString: strerror(errno)))")
        }
        guard rename(tmp, path) == 0 else {
            let msg = String(cString: strerror(errno))
            unlink(tmp)
            throw DataError("\(path): cannot move \(tmp) into place: \(msg)")
        }
    }

    /// Validates the header of the shard at `path` against its size and returns its token count.
    public static func readHeader(path: String) throws -> Int {
        try readInfo(path: path).count
    }

    /// Validates the header of the shard at `path` against its size and returns its token count and version.
    public static func readInfo(path: String) throws -> (count: Int, version: Int32) {
        let fd = try openShard(path)
        defer { close(fd) }
        let size = try fileSize(fd, path)
        var header = [Int32](repeating: 0, count: 3)
        let got = header.withUnsafeMutableBytes { pread(fd, $0.baseAddress!, 12, 0) }
        guard got == 12 else { throw DataError("\(path): cannot read the shard header") }
        let count = try validate(path: path, size: size, magic: header[0], version: header[1], count: header[2])
        return (count, Int32(littleEndian: header[1]))
    }

    // MARK: internals shared with MappedShard

    static func openShard(_ path: String) throws -> Int32 {
        let fd = open(path, O_RDONLY)
        guard fd >= 0 else { throw DataError("\(path): cannot open token shard: \(String(cString: strerror(errno)))") }
        return fd
    }

    static func fileSize(_ fd: Int32, _ path: String) throws -> Int {
        var st = stat()
        guard fstat(fd, &st) == 0 else { throw DataError("\(path): cannot stat: \(String(cString: strerror(errno)))") }
        guard (st.st_mode & S_IFMT) == S_IFREG else { throw DataError("\(path): not a regular file") }
        let size = Int(st.st_size)
        guard size >= headerBytes else {
            throw DataError("\(path): \(size) bytes, too small for an llm.c token shard (expected a \(headerBytes)-byte header)")
        }
        return size
    }

    /// Checks the header fields (given as stored, little-endian) against the file size; returns the token count.
    static func validate(path: String, size: Int, magic m: Int32, version v: Int32, count c: Int32) throws -> Int {
        let m = Int32(littleEndian: m), v = Int32(littleEndian: v), c = Int32(littleEndian: c)
        guard m == magic else {
            throw DataError("\(path): bad magic \(m) (expected \(magic)); not an llm.c token shard "
                            + "(a headerless nanoGPT .bin needs a header first: see docs/data.md)")
        }
        guard let width = tokenBytes(version: v) else {
            throw DataError("\(path): unsupported shard version \(v) (expected \(version), uint16 tokens, "
                            + "or \(wideVersion), uint32 tokens)")
        }
        guard c >= 0 else { throw DataError("\(path): negative token count \(c) in header") }
        let expected = headerBytes + width * Int(c)
        guard size == expected else {
            throw DataError("\(path): file is \(size) bytes but its header says \(c) tokens of version \(v) "
                            + "(\(width) bytes each), so expected \(expected) bytes (\(size < expected ? "truncated" : "trailing data"))")
        }
        return Int(c)
    }
}

/// One read-only memory-mapped shard. Immutable after init; the mapping lives as long as the object.
final class MappedShard: @unchecked Sendable {  // read-only mapping, never written
    let path: String
    let count: Int
    /// 1 (uint16 tokens) or 2 (uint32 tokens).
    let version: Int32
    private let base: UnsafeMutableRawPointer
    private let length: Int
    /// The tokens (little-endian, 2 or 4 bytes each by version), `count` of them.
    private let tokens: UnsafeRawPointer

    init(path: String) throws {
        let fd = try TokenShard.openShard(path)
        defer { close(fd) }
        let size = try TokenShard.fileSize(fd, path)
        guard let p = mmap(nil, size, PROT_READ, MAP_PRIVATE, fd, 0), p != UnsafeMutableRawPointer(bitPattern: -1) else {
            throw DataError("\(path): mmap failed: \(String(cString: strerror(errno)))")
        }
        let h = p.assumingMemoryBound(to: Int32.self)
        do {
            count = try TokenShard.validate(path: path, size: size, magic: h[0], version: h[1], count: h[2])
        } catch {
            munmap(p, size)
            throw error
        }
        self.path = path
        version = Int32(littleEndian: h[1])
        base = p
        length = size
        tokens = UnsafeRawPointer(p + TokenShard.headerBytes)
    }

    deinit { munmap(base, length) }

    /// Copies tokens [start, start + n) of this shard into `dst` as Int32.
    func copy(from start: Int, count n: Int, into dst: UnsafeMutablePointer<Int32>) {
        if version == TokenShard.version {
            let src = tokens.assumingMemoryBound(to: UInt16.self) + start
            for i in 0..<n { dst[i] = Int32(UInt16(littleEndian: src[i])) }
        } else {
            let src = tokens.assumingMemoryBound(to: UInt32.self) + start
            for i in 0..<n { dst[i] = Int32(truncatingIfNeeded: UInt32(littleEndian: src[i])) }
        }
    }

    /// The largest token id (-1 when empty).
    func maxToken() -> Int {
        var m = -1
        if version == TokenShard.version {
            let src = tokens.assumingMemoryBound(to: UInt16.self)
            for i in 0..<count { m = max(m, Int(UInt16(littleEndian: src[i]))) }
        } else {
            let src = tokens.assumingMemoryBound(to: UInt32.self)
            for i in 0..<count { m = max(m, Int(UInt32(littleEndian: src[i]))) }
        }
        return m
    }
}

/// One or more llm.c shards, memory-mapped and concatenated logically (in the order given).
public final class ShardTokens: TokenSource {
    private let shards: [MappedShard]
    /// starts[i] = global index of shard i's first token; starts.last = count.
    private let starts: [Int]
    public let count: Int
    public let description: String
    private let cachedMax = LazyInt()

    public init(paths: [String]) throws {
        guard !paths.isEmpty else { throw DataError("token shards: no files given") }
        shards = try paths.map { try MappedShard(path: $0) }
        var s = [0]
        for sh in shards { s.append(s.last! + sh.count) }
        starts = s
        count = s.last!
        description = paths.count <= 3
            ? paths.joined(separator: ", ")
            : "\(paths[0]) ... \(paths[paths.count - 1]) (\(paths.count) shards)"
    }

    public var paths: [String] { shards.map(\.path) }

    public var maxToken: Int {
        cachedMax.get { shards.map { $0.maxToken() }.max() ?? -1 }
    }

    /// Index of the shard holding global token `i` (0 <= i < count): the last shard with starts[k] <= i.
    private func shardIndex(_ i: Int) -> Int {
        var lo = 0, hi = shards.count - 1
        while lo < hi {
            let mid = (lo + hi + 1) / 2
            if starts[mid] <= i { lo = mid } else { hi = mid - 1 }
        }
        return lo
    }

    public func copy(from start: Int, count n: Int, into dst: UnsafeMutablePointer<Int32>) {
        checkRange(start, n, count, description)
        guard n > 0 else { return }
        var k = shardIndex(start)
        var pos = start, done = 0
        while done < n {
            while starts[k + 1] <= pos { k += 1 }  // skip to the shard holding pos (empty shards included)
            let local = pos - starts[k]
            let m = min(n - done, shards[k].count - local)
            shards[k].copy(from: local, count: m, into: dst + done)
            done += m
            pos += m
        }
    }
}
