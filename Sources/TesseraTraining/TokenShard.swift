// llm.c token shards (`.bin`), the format of llm.c's and nanoGPT-style data preparation scripts:
//
//   bytes [0, 1024)          header: 256 little-endian int32
//                              header[0] = 20240520   magic
//                              header[1] = 1          version (1 = uint16 tokens, GPT-2 vocabulary)
//                              header[2] = N          number of tokens
//                              header[3...] = 0       reserved
//   bytes [1024, 1024 + 2N)  the tokens, little-endian uint16
//
// Shards are memory-mapped read-only, so a multi-gigabyte dataset costs page cache, not process memory.

import Foundation
#if canImport(Glibc)
import Glibc
#endif

public enum TokenShard {
    public static let magic: Int32 = 20240520
    public static let version: Int32 = 1
    public static let headerInts = 256
    public static let headerBytes = 1024

    /// Writes `tokens` as an llm.c shard at `path` (through a temporary file, renamed into place).
    public static func write(_ tokens: UnsafeBufferPointer<UInt16>, to path: String) throws {
        try write(count: tokens.count, to: path) { start, out in
            for i in 0..<out.count { out[i] = tokens[start + i] }
        }
    }

    /// Writes `tokens` as an llm.c shard at `path`.
    public static func write(_ tokens: [UInt16], to path: String) throws {
        try tokens.withUnsafeBufferPointer { try write($0, to: path) }
    }

    /// Writes a shard of `count` tokens, produced in chunks: `produce(start, buffer)` fills `buffer` with tokens
    /// [start, start + buffer.count). Throws from `produce` abort the write and remove the temporary file.
    static func write(count: Int, to path: String,
                      produce: (Int, UnsafeMutableBufferPointer<UInt16>) throws -> Void) throws {
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
        header[1] = version.littleEndian
        header[2] = Int32(count).littleEndian
        try header.withUnsafeBytes { try put($0.baseAddress!, headerBytes) }

        let chunk = 1 << 20
        let buf = UnsafeMutableBufferPointer<UInt16>.allocate(capacity: min(max(count, 1), chunk))
        defer { buf.deallocate() }
        var done = 0
        while done < count {
            let m = min(buf.count, count - done)
            let part = UnsafeMutableBufferPointer(rebasing: buf[0..<m])
            try produce(done, part)
            for i in 0..<m { part[i] = part[i].littleEndian }
            try put(part.baseAddress!, m * 2)
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
        let fd = try openShard(path)
        defer { close(fd) }
        let size = try fileSize(fd, path)
        var header = [Int32](repeating: 0, count: 3)
        let got = header.withUnsafeMutableBytes { pread(fd, $0.baseAddress!, 12, 0) }
        guard got == 12 else { throw DataError("\(path): cannot read the shard header") }
        return try validate(path: path, size: size, magic: header[0], version: header[1], count: header[2])
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
        guard v == version else {
            let hint = v == 2 ? " (version 2 holds uint32 tokens, which Tessera does not read)" : ""
            throw DataError("\(path): unsupported shard version \(v) (expected \(version), uint16 tokens)\(hint)")
        }
        guard c >= 0 else { throw DataError("\(path): negative token count \(c) in header") }
        let expected = headerBytes + 2 * Int(c)
        guard size == expected else {
            throw DataError("\(path): file is \(size) bytes but its header says \(c) tokens, so expected \(expected) bytes (\(size < expected ? "truncated" : "trailing data"))")
        }
        return Int(c)
    }
}

/// One read-only memory-mapped shard. Immutable after init; the mapping lives as long as the object.
final class MappedShard: @unchecked Sendable {  // read-only mapping, never written
    let path: String
    let count: Int
    private let base: UnsafeMutableRawPointer
    private let length: Int
    /// The tokens (little-endian uint16), `count` of them.
    let tokens: UnsafePointer<UInt16>

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
        base = p
        length = size
        tokens = UnsafePointer((p + TokenShard.headerBytes).assumingMemoryBound(to: UInt16.self))
    }

    deinit { munmap(base, length) }
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
        cachedMax.get {
            var m = -1
            for sh in shards {
                for i in 0..<sh.count {
                    let t = Int(UInt16(littleEndian: sh.tokens[i]))
                    if t > m { m = t }
                }
            }
            return m
        }
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
            let src = shards[k].tokens + local
            let out = dst + done
            for i in 0..<m { out[i] = Int32(UInt16(littleEndian: src[i])) }
            done += m
            pos += m
        }
    }
}
