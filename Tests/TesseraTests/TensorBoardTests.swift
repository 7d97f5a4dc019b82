import Foundation
import XCTest
@testable import TesseraTraining

/// A tiny TFRecord + Event decoder, independent of the writer's encoder, that checks both CRCs.
private struct DecodedEvent {
    var wallTime: Double = 0
    var step: Int64 = 0
    var fileVersion: String?
    var values: [(tag: String, value: Float)] = []
}

private enum DecodeError: Error { case truncated, badLengthCRC(Int), badPayloadCRC(Int), badProto(String) }

private func readLE<T: FixedWidthInteger>(_ bytes: [UInt8], _ at: Int, as: T.Type) throws -> T {
    let n = MemoryLayout<T>.size
    guard at + n <= bytes.count else { throw DecodeError.truncated }
    var v: T = 0
    for i in 0..<n { v |= T(bytes[at + i]) << (8 * i) }
    return v
}

private func records(_ bytes: [UInt8]) throws -> [[UInt8]] {
    var out: [[UInt8]] = []
    var p = 0
    while p < bytes.count {
        let len = Int(try readLE(bytes, p, as: UInt64.self))
        let lenCRC = try readLE(bytes, p + 8, as: UInt32.self)
        guard CRC32C.mask(CRC32C.checksum(bytes[p..<p + 8])) == lenCRC else { throw DecodeError.badLengthCRC(p) }
        let start = p + 12
        guard start + len + 4 <= bytes.count else { throw DecodeError.truncated }
        let payload = Array(bytes[start..<start + len])
        let dataCRC = try readLE(bytes, start + len, as: UInt32.self)
        guard CRC32C.mask(CRC32C.checksum(payload)) == dataCRC else { throw DecodeError.badPayloadCRC(p) }
        out.append(payload)
        p = start + len + 4
    }
    return out
}

/// Iterates protobuf fields: (field number, wire type, varint or fixed value, length-delimited bytes).
private func fields(_ b: [UInt8]) throws -> [(Int, Int, UInt64, [UInt8])] {
    var out: [(Int, Int, UInt64, [UInt8])] = []
    var p = 0
    func varint() throws -> UInt64 {
        var v: UInt64 = 0, shift: UInt64 = 0
        while true {
            guard p < b.count else { throw DecodeError.truncated }
            let byte = b[p]; p += 1
            v |= UInt64(byte & 0x7F) << shift
            if byte & 0x80 == 0 { return v }
            shift += 7
            guard shift < 64 else { throw DecodeError.badProto("varint too long") }
        }
    }
    while p < b.count {
        let key = try varint()
        let field = Int(key >> 3), wire = Int(key & 7)
        switch wire {
        case 0: out.append((field, wire, try varint(), []))
        case 1: out.append((field, wire, UInt64(try readLE(b, p, as: UInt64.self)), [])); p += 8
        case 5: out.append((field, wire, UInt64(try readLE(b, p, as: UInt32.self)), [])); p += 4
        case 2:
            let n = Int(try varint())
            guard p + n <= b.count else { throw DecodeError.truncated }
            out.append((field, wire, 0, Array(b[p..<p + n]))); p += n
        default: throw DecodeError.badProto("wire type \(wire)")
        }
    }
    return out
}

private func decodeEvent(_ payload: [UInt8]) throws -> DecodedEvent {
    var e = DecodedEvent()
    for (field, wire, num, bytes) in try fields(payload) {
        switch (field, wire) {
        case (1, 1): e.wallTime = Double(bitPattern: num)
        case (2, 0): e.step = Int64(bitPattern: num)
        case (3, 2): e.fileVersion = String(decoding: bytes, as: UTF8.self)
        case (5, 2):
            for (vf, vw, _, vbytes) in try fields(bytes) where vf == 1 && vw == 2 {
                var tag = "", value: Float = .nan
                for (f, w, n, b) in try fields(vbytes) {
                    if f == 1 && w == 2 { tag = String(decoding: b, as: UTF8.self) }
                    if f == 2 && w == 5 { value = Float(bitPattern: UInt32(n)) }
                }
                e.values.append((tag, value))
            }
        default: throw DecodeError.badProto("unexpected field \(field) wire \(wire)")
        }
    }
    return e
}

private func tempDir(_ name: String) -> String {
    scratchDirectory("tessera-tb-\(name)-\(UUID().uuidString)").path
}

final class TensorBoardTests: XCTestCase {
    func testCRC32CKnownVectors() {
        XCTAssertEqual(CRC32C.checksum(Array("123456789".utf8)), 0xE306_9283)
        XCTAssertEqual(CRC32C.checksum([UInt8]()), 0)
        // RFC 3720 (iSCSI) B.4 test vectors.
        XCTAssertEqual(CRC32C.checksum([UInt8](repeating: 0, count: 32)), 0x8A91_36AA)
        XCTAssertEqual(CRC32C.checksum([UInt8](repeating: 0xFF, count: 32)), 0x62A8_AB43)
        XCTAssertEqual(CRC32C.checksum((0..<32).map { UInt8($0) }), 0x46DD_794E)
        XCTAssertEqual(CRC32C.checksum((0..<32).map { UInt8(31 - $0) }), 0x113F_DB5C)
        // Incremental update equals one-shot.
        let a = Array("hello, ".utf8), b = Array("tensorboard".utf8)
        XCTAssertEqual(CRC32C.update(CRC32C.checksum(a), b), CRC32C.checksum(a + b))
        // Mask / unmask round trip, and the mask of 0 is the constant.
        XCTAssertEqual(CRC32C.mask(0), 0xA282_EAD8)
        for c: UInt32 in [0, 1, 0xE306_9283, 0xFFFF_FFFF] { XCTAssertEqual(CRC32C.unmask(CRC32C.mask(c)), c) }
    }

    func testEventEncodingMatchesKnownBytes() {
        // wall_time 1.0, step 3, Summary{ Value{ tag "a", simple_value 1.0 } }
        let bytes = TensorBoardEncoding.event(wallTime: 1.0, step: 3, values: [("a", 1.0)])
        XCTAssertEqual(bytes, [0x09, 0, 0, 0, 0, 0, 0, 0xF0, 0x3F,
                               0x10, 0x03,
                               0x2A, 0x0A, 0x0A, 0x08, 0x0A, 0x01, 0x61, 0x15, 0, 0, 0x80, 0x3F])
    }

    func testWriterRecordsParseBack() throws {
        let dir = tempDir("roundtrip") + "/nested/run"
        defer { try? FileManager.default.removeItem(atPath: (dir as NSString).deletingLastPathComponent) }
        let w = try TensorBoardWriter(directory: dir)
        let name = (w.path as NSString).lastPathComponent
        XCTAssertTrue(name.hasPrefix("events.out.tfevents."), name)
        XCTAssertTrue(name.hasSuffix(".\(ProcessInfo.processInfo.processIdentifier).tessera"), name)

        w.scalar("train/loss", 5.5, step: 1)
        w.scalars([("train/loss", 4.25), ("train/lr", 3e-4), ("perf/tokens_per_s", 123456.0)], step: 2)
        w.scalar("neg/step", -1.5, step: -7)
        w.scalar("big/step", 0.125, step: 1 << 40)
        // Buffered: nothing but an empty file before flush.
        XCTAssertEqual(try Data(contentsOf: URL(fileURLWithPath: w.path)).count, 0)
        w.flush()
        let afterFlush = try Data(contentsOf: URL(fileURLWithPath: w.path)).count
        XCTAssertGreaterThan(afterFlush, 0)
        w.scalar("train/loss", 3.0, step: 3)
        w.close()
        w.scalar("ignored", 1, step: 4)  // after close: dropped
        w.flush()

        let bytes = [UInt8](try Data(contentsOf: URL(fileURLWithPath: w.path)))
        XCTAssertGreaterThan(bytes.count, afterFlush)
        let events = try records(bytes).map(decodeEvent)
        XCTAssertEqual(events.count, 6)

        XCTAssertEqual(events[0].fileVersion, "brain.Event:2")
        XCTAssertEqual(events[0].step, 0)
        XCTAssertTrue(events[0].values.isEmpty)
        XCTAssertEqual(events[0].wallTime, Date().timeIntervalSince1970, accuracy: 600)

        XCTAssertNil(events[1].fileVersion)
        XCTAssertEqual(events[1].step, 1)
        XCTAssertEqual(events[1].values.map(\.tag), ["train/loss"])
        XCTAssertEqual(events[1].values[0].value, 5.5)

        XCTAssertEqual(events[2].step, 2)
        XCTAssertEqual(events[2].values.map(\.tag), ["train/loss", "train/lr", "perf/tokens_per_s"])
        XCTAssertEqual(events[2].values.map(\.value), [4.25, Float(3e-4), 123456.0])

        XCTAssertEqual(events[3].step, -7)
        XCTAssertEqual(events[3].values[0].value, -1.5)
        XCTAssertEqual(events[4].step, 1 << 40)
        XCTAssertEqual(events[5].step, 3)
        XCTAssertEqual(events[5].values[0].tag, "train/loss")
        XCTAssertEqual(events[5].values[0].value, 3.0)
        XCTAssertTrue(events.allSatisfy { $0.values.allSatisfy { $0.tag != "ignored" } })
        XCTAssertTrue(zip(events, events.dropFirst()).allSatisfy { $0.wallTime <= $1.wallTime })
    }

    func testCorruptedRecordIsDetected() throws {
        var bytes = [UInt8]()
        TensorBoardEncoding.appendRecord(TensorBoardEncoding.event(wallTime: 2, step: 1, values: [("x", 2)]), to: &bytes)
        XCTAssertEqual(try records(bytes).count, 1)
        var badPayload = bytes
        badPayload[14] ^= 0x01
        XCTAssertThrowsError(try records(badPayload))
        var badLength = bytes
        badLength[8] ^= 0x01
        XCTAssertThrowsError(try records(badLength))
    }

    func testTwoWritersInOneDirectoryDoNotClobber() throws {
        let dir = tempDir("two")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let a = try TensorBoardWriter(directory: dir)
        let b = try TensorBoardWriter(directory: dir)
        XCTAssertNotEqual(a.path, b.path)
        a.close(); b.close()
        XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: dir).count, 2)
    }

    func testInitErrorNamesTheDirectory() throws {
        // A regular file where the directory should be.
        let file = tempDir("blocker")
        XCTAssertTrue(FileManager.default.createFile(atPath: file, contents: Data("x".utf8)))
        defer { try? FileManager.default.removeItem(atPath: file) }
        let dir = file + "/logs"
        XCTAssertThrowsError(try TensorBoardWriter(directory: dir)) { error in
            XCTAssertTrue(String(describing: error).contains(dir), String(describing: error))
        }
    }

    /// TensorBoard itself (its EventAccumulator, via scripts/check_tensorboard.py) reads what the metrics
    /// sink writes. TensorBoard is pip-installed into .build/tb-venv on first use; only where pip cannot
    /// reach its index is the test skipped, with the reason printed.
    func testTensorBoardReadsTheEventFiles() throws {
        let dir = scratchDirectory("tessera-tb-read").path
        try? FileManager.default.removeItem(atPath: dir)
        let sink = try MetricsSink(metricsPath: nil, tensorboardDir: dir)
        for step in 1...4 {
            sink.record(StepRecord(step: step, steps: 4, loss: 5.0 / Double(step), lr: 1e-3, gradNorm: 0.5,
                                   tokensPerSecond: 1000, mfu: 0.5, stepSeconds: 0.1, peakRSSBytes: 1 << 20,
                                   etaSeconds: 0, valLoss: step == 4 ? 1.5 : nil))
        }
        sink.close()
        let venv = repoRoot.appendingPathComponent(".build/tb-venv").path
        let python = venv + "/bin/python"
        if !FileManager.default.fileExists(atPath: python + "-tensorboard-ok") {
            let (s1, o1) = try shell(["python3", "-m", "venv", venv])
            XCTAssertEqual(s1, 0, o1)
            let (s2, o2) = try shell([venv + "/bin/pip", "install", "--quiet", "--disable-pip-version-check", "tensorboard"])
            if s2 != 0 {
                print("TensorBoard check skipped: pip could not install tensorboard:\n\(o2)")
                throw XCTSkip("pip could not install tensorboard (see the printed output)")
            }
            _ = FileManager.default.createFile(atPath: python + "-tensorboard-ok", contents: nil)
        }
        let (status, out) = try shell([python, repoRoot.appendingPathComponent("scripts/check_tensorboard.py").path, dir])
        XCTAssertEqual(status, 0, out)
        for tag in ["train/loss", "train/lr", "train/grad_norm", "perf/tokens_per_s", "perf/mfu", "val/loss"] {
            XCTAssertTrue(out.contains(tag), "TensorBoard did not read tag \(tag):\n\(out)")
        }
        XCTAssertTrue(out.contains("train/loss: 4 point(s)"), out)
    }

    func shell(_ argv: [String]) throws -> (Int32, String) { try runProcess(argv, timeout: 600) }
}
