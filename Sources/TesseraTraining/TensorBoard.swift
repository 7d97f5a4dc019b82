// TensorBoard scalar event files, written without TensorFlow or a protobuf library.
//
// An event file is a sequence of TFRecords:
//
//     uint64 length (little-endian)
//     uint32 masked CRC32C of the 8 length bytes
//     length bytes of payload (a serialized `tensorflow.Event` protobuf)
//     uint32 masked CRC32C of the payload
//
// where mask(crc) = ((crc >> 15) | (crc << 17)) &+ 0xa282ead8. The payload is hand-encoded:
//
//     message Event   { double wall_time = 1; int64 step = 2; string file_version = 3; Summary summary = 5; }
//     message Summary { repeated Value value = 1; }
//     message Value   { string tag = 1; float simple_value = 2; }
//
// The first record of every file is an Event carrying only wall_time and file_version "brain.Event:2";
// TensorBoard uses it to recognise the format.

import Foundation

// MARK: - CRC32C

/// CRC-32C (Castagnoli, reflected polynomial 0x82F63B78), table-driven.
public enum CRC32C {
    /// 256-entry lookup table for the reflected polynomial.
    public static let table: [UInt32] = (0..<256).map { (n: Int) -> UInt32 in
        var c = UInt32(n)
        for _ in 0..<8 {
            c = (c & 1) != 0 ? (c >> 1) ^ 0x82F6_3B78 : c >> 1
        }
        return c
    }

    /// Continues a checksum: `update(checksum(a), b) == checksum(a + b)`.
    public static func update<S: Sequence>(_ crc: UInt32, _ bytes: S) -> UInt32 where S.Element == UInt8 {
        var c = ~crc
        table.withUnsafeBufferPointer { t in
            for b in bytes {
                c = t[Int((c ^ UInt32(b)) & 0xFF)] ^ (c >> 8)
            }
        }
        return ~c
    }

    /// The CRC32C of `bytes`. `checksum(Array("123456789".utf8)) == 0xE3069283`.
    public static func checksum<S: Sequence>(_ bytes: S) -> UInt32 where S.Element == UInt8 {
        update(0, bytes)
    }

    /// TFRecord's masked form of a CRC.
    public static func mask(_ crc: UInt32) -> UInt32 {
        ((crc >> 15) | (crc << 17)) &+ 0xA282_EAD8
    }

    /// Inverse of `mask`.
    public static func unmask(_ masked: UInt32) -> UInt32 {
        let rot = masked &- 0xA282_EAD8
        return (rot >> 17) | (rot << 15)
    }
}

// MARK: - Record and protobuf encoding

/// The byte-level encoders behind `TensorBoardWriter`, public so that tests and tools can reuse them.
public enum TensorBoardEncoding {
    /// The `file_version` string TensorBoard expects in the first event of a file.
    public static let fileVersion = "brain.Event:2"

    /// Frames `payload` as one TFRecord and appends it to `out`.
    public static func appendRecord(_ payload: [UInt8], to out: inout [UInt8]) {
        var header = [UInt8]()
        header.reserveCapacity(8)
        appendLittleEndian(UInt64(payload.count), to: &header)
        out.append(contentsOf: header)
        appendLittleEndian(CRC32C.mask(CRC32C.checksum(header)), to: &out)
        out.append(contentsOf: payload)
        appendLittleEndian(CRC32C.mask(CRC32C.checksum(payload)), to: &out)
    }

    /// Serializes an `Event`. `fileVersion` and `values` are omitted when nil / empty respectively.
    public static func event(wallTime: Double, step: Int64, fileVersion: String? = nil,
                             values: [(tag: String, value: Float)] = []) -> [UInt8] {
        var e = [UInt8]()
        // field 1, wire type 1 (64-bit): wall_time
        e.append(0x09)
        appendLittleEndian(wallTime.bitPattern, to: &e)
        // field 2, wire type 0 (varint): step. Negative int64 is encoded as its 10-byte two's complement.
        if step != 0 {
            e.append(0x10)
            appendVarint(UInt64(bitPattern: step), to: &e)
        }
        // field 3, wire type 2: file_version
        if let fileVersion {
            appendLengthDelimited(field: 3, Array(fileVersion.utf8), to: &e)
        }
        // field 5, wire type 2: summary
        if !values.isEmpty {
            var summary = [UInt8]()
            for (tag, value) in values {
                var v = [UInt8]()
                appendLengthDelimited(field: 1, Array(tag.utf8), to: &v)  // Value.tag
                v.append(0x15)                                              // Value.simple_value: field 2, wire type 5
                appendLittleEndian(value.bitPattern, to: &v)
                appendLengthDelimited(field: 1, v, to: &summary)            // Summary.value
            }
            appendLengthDelimited(field: 5, summary, to: &e)
        }
        return e
    }

    static func appendVarint(_ value: UInt64, to out: inout [UInt8]) {
        var v = value
        while v >= 0x80 {
            out.append(UInt8(truncatingIfNeeded: v) | 0x80)
            v >>= 7
        }
        out.append(UInt8(v))
    }

    static func appendLengthDelimited(field: Int, _ bytes: [UInt8], to out: inout [UInt8]) {
        appendVarint(UInt64(field << 3 | 2), to: &out)
        appendVarint(UInt64(bytes.count), to: &out)
        out.append(contentsOf: bytes)
    }

    static func appendLittleEndian<T: FixedWidthInteger>(_ value: T, to out: inout [UInt8]) {
        var v = value.littleEndian
        withUnsafeBytes(of: &v) { out.append(contentsOf: $0) }
    }
}

// MARK: - Writer

/// Errors from `TensorBoardWriter`; each names the path involved.
public enum TensorBoardError: Error, CustomStringConvertible {
    case cannotCreateDirectory(String, underlying: String)
    case cannotCreateFile(directory: String, file: String)

    public var description: String {
        switch self {
        case .cannotCreateDirectory(let dir, let why):
            return "metrics.tensorboard_dir (or job.output_dir + /tensorboard when it is empty) = '\(dir)': \(why); "
                + "expected a writable directory (or a path where one can be created)"
        case .cannotCreateFile(let dir, let file):
            return "metrics.tensorboard_dir (or job.output_dir + /tensorboard when it is empty) = '\(dir)': cannot create "
                + "the event file '\(file)' there; expected a writable directory"
        }
    }
}

/// Writes scalar summaries to a TensorBoard event file in `directory`.
///
/// Records are buffered in memory and written at `flush()` and `close()` (and, as a safety net, whenever
/// the buffer passes 1 MiB). Thread-safe. Write errors after the file was created are reported once on
/// standard error and do not stop training.
public final class TensorBoardWriter: @unchecked Sendable {
    /// The log directory given to `init`.
    public let directory: String
    /// Full path of the event file.
    public let path: String

    private let lock = NSLock()
    private var handle: FileHandle?
    private var buffer: [UInt8] = []
    private var reportedError = false
    private static let autoFlushBytes = 1 << 20

    /// Creates `directory` (with intermediate directories) and a new event file
    /// `events.out.tfevents.<unix time>.<hostname>.<pid>.tessera` in it.
    public init(directory: String) throws {
        self.directory = directory
        let fm = FileManager.default
        if let why = OutputPaths.makeDirectory(directory) {
            throw TensorBoardError.cannotCreateDirectory(directory, underlying: why)
        }
        let now = Date().timeIntervalSince1970
        let host = ProcessInfo.processInfo.hostName
            .split(separator: "/").joined(separator: "_")  // never a path separator in a file name
        let pid = ProcessInfo.processInfo.processIdentifier
        let base = "events.out.tfevents.\(Int(now)).\(host.isEmpty ? "localhost" : host).\(pid).tessera"
        // Two writers in one process and second must not clobber each other: suffix a counter.
        var name = base
        var n = 1
        while fm.fileExists(atPath: (directory as NSString).appendingPathComponent(name)) {
            name = "\(base).\(n)"
            n += 1
        }
        let path = (directory as NSString).appendingPathComponent(name)
        guard fm.createFile(atPath: path, contents: nil),
              let handle = FileHandle(forWritingAtPath: path) else {
            throw TensorBoardError.cannotCreateFile(directory: directory, file: name)
        }
        self.path = path
        self.handle = handle
        TensorBoardEncoding.appendRecord(
            TensorBoardEncoding.event(wallTime: now, step: 0, fileVersion: TensorBoardEncoding.fileVersion),
            to: &buffer)
    }

    deinit {
        close()
    }

    /// Records one scalar at `step`.
    public func scalar(_ tag: String, _ value: Double, step: Int) {
        scalars([(tag, value)], step: step)
    }

    /// Records several scalars at `step`, as one event.
    public func scalars(_ values: [(String, Double)], step: Int) {
        guard !values.isEmpty else { return }
        let payload = TensorBoardEncoding.event(
            wallTime: Date().timeIntervalSince1970, step: Int64(step),
            values: values.map { (tag: $0.0, value: Float($0.1)) })
        lock.lock()
        defer { lock.unlock() }
        guard handle != nil else { return }
        TensorBoardEncoding.appendRecord(payload, to: &buffer)
        if buffer.count >= Self.autoFlushBytes { flushLocked() }
    }

    /// Writes buffered records to the file.
    public func flush() {
        lock.lock()
        defer { lock.unlock() }
        flushLocked()
    }

    /// Flushes and closes the file. Later calls to `scalar`, `flush` and `close` do nothing.
    public func close() {
        lock.lock()
        defer { lock.unlock() }
        flushLocked()
        if let handle {
            try? handle.close()
        }
        handle = nil
    }

    private func flushLocked() {
        guard let handle, !buffer.isEmpty else { return }
        do {
            try handle.write(contentsOf: buffer)
        } catch {
            if !reportedError {
                reportedError = true
                let msg = "TensorBoard: cannot write to '\(path)': \(error)\n"
                FileHandle.standardError.write(Data(msg.utf8))
            }
        }
        buffer.removeAll(keepingCapacity: true)
    }
}
