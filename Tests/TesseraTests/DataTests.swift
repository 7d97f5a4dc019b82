import Foundation
import XCTest
@testable import TesseraTraining

final class DataTests: XCTestCase {
    private var dir: URL!

    override func setUpWithError() throws {
        dir = FileManager.default.temporaryDirectory.appendingPathComponent("tessera-data-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
    }

    override func tearDownWithError() throws {
        try? FileManager.default.removeItem(at: dir)
    }

    private func path(_ name: String) -> String { dir.appendingPathComponent(name).path }

    private func tokens(_ s: any TokenSource, _ start: Int = 0, _ n: Int? = nil) -> [Int32] {
        let n = n ?? s.count - start
        var out = [Int32](repeating: -1, count: n)
        out.withUnsafeMutableBufferPointer { s.copy(from: start, count: n, into: $0.baseAddress!) }
        return out
    }

    // MARK: shards

    func testShardRoundTripAndHeaderBytes() throws {
        let toks: [UInt16] = (0..<1000).map { UInt16(($0 * 7919) % 50257) } + [0, 65535]
        let p = path("a.bin")
        try TokenShard.write(toks, to: p)

        let raw = try [UInt8](Data(contentsOf: URL(fileURLWithPath: p)))
        XCTAssertEqual(raw.count, 1024 + 2 * toks.count)
        func le32(_ i: Int) -> Int32 {
            Int32(bitPattern: UInt32(raw[4 * i]) | UInt32(raw[4 * i + 1]) << 8 | UInt32(raw[4 * i + 2]) << 16 | UInt32(raw[4 * i + 3]) << 24)
        }
        XCTAssertEqual(le32(0), 20240520)
        XCTAssertEqual(le32(1), 1)
        XCTAssertEqual(le32(2), Int32(toks.count))
        for i in 3..<256 { XCTAssertEqual(le32(i), 0) }
        // First token little-endian right after the header.
        XCTAssertEqual(UInt16(raw[1024]) | UInt16(raw[1025]) << 8, toks[0])

        XCTAssertEqual(try TokenShard.readHeader(path: p), toks.count)
        let s = try ShardTokens(paths: [p])
        XCTAssertEqual(s.count, toks.count)
        XCTAssertEqual(tokens(s), toks.map(Int32.init))
        XCTAssertEqual(tokens(s, 10, 5), toks[10..<15].map(Int32.init))
        XCTAssertEqual(s.maxToken, 65535)
        XCTAssertFalse(FileManager.default.fileExists(atPath: p + ".tmp"))
    }

    func testMultipleShardsConcatenate() throws {
        let a: [UInt16] = Array(0..<100)
        let b: [UInt16] = []
        let c: [UInt16] = Array(100..<137)
        let d: [UInt16] = Array(137..<300)
        for (name, t) in [("s0.bin", a), ("s1.bin", b), ("s2.bin", c), ("s3.bin", d)] { try TokenShard.write(t, to: path(name)) }
        let s = try ShardTokens(paths: ["s0.bin", "s1.bin", "s2.bin", "s3.bin"].map(path))
        XCTAssertEqual(s.count, 300)
        XCTAssertEqual(tokens(s), (0..<300).map(Int32.init))
        // Ranges crossing shard boundaries (including the empty shard).
        for (start, n) in [(95, 10), (99, 2), (100, 37), (130, 20), (0, 300), (299, 1), (136, 1), (137, 0)] {
            XCTAssertEqual(tokens(s, start, n), (start..<(start + n)).map(Int32.init), "range \(start)+\(n)")
        }
        XCTAssertEqual(s.maxToken, 299)

        // Glob through openDataset: sorted matches, bin by suffix.
        let (train, val) = try openDataset(format: "auto", train: path("s*.bin"), val: path("s0.bin"), valFraction: 0)
        XCTAssertEqual(train.count, 300)
        XCTAssertEqual(val.count, 100)
    }

    func testBadShardsNameTheFile() throws {
        let good = path("good.bin")
        try TokenShard.write([1, 2, 3, 4] as [UInt16], to: good)
        var raw = try Data(contentsOf: URL(fileURLWithPath: good))

        // Bad magic.
        let badMagic = path("badmagic.bin")
        var m = raw
        m[0] = 0x11
        try m.write(to: URL(fileURLWithPath: badMagic))
        assertThrows({ _ = try ShardTokens(paths: [badMagic]) }, mentioning: ["badmagic.bin", "magic", "20240520"])
        assertThrows({ _ = try TokenShard.readHeader(path: badMagic) }, mentioning: ["badmagic.bin", "magic"])

        // Bad version (1 and 2 are read; TokenizedDataTests covers 2).
        let badVersion = path("badversion.bin")
        var v = raw
        v[4] = 7
        try v.write(to: URL(fileURLWithPath: badVersion))
        assertThrows({ _ = try ShardTokens(paths: [badVersion]) }, mentioning: ["badversion.bin", "version 7"])

        // Truncated: one token missing.
        let truncated = path("truncated.bin")
        raw.removeLast(2)
        try raw.write(to: URL(fileURLWithPath: truncated))
        assertThrows({ _ = try ShardTokens(paths: [good, truncated]) }, mentioning: ["truncated.bin", "1032"])
        assertThrows({ _ = try TokenShard.readHeader(path: truncated) }, mentioning: ["truncated.bin", "truncated"])

        // Shorter than a header; missing file.
        let tiny = path("tiny.bin")
        try Data([1, 2, 3]).write(to: URL(fileURLWithPath: tiny))
        assertThrows({ _ = try ShardTokens(paths: [tiny]) }, mentioning: ["tiny.bin", "1024"])
        assertThrows({ _ = try ShardTokens(paths: [self.path("missing.bin")]) }, mentioning: ["missing.bin"])
        assertThrows({ _ = try openDataset(format: "auto", train: self.path("nothing_*.bin"), val: "", valFraction: 0.1) },
                     mentioning: ["nothing_*.bin", "matches no file"])
    }

    // MARK: text

    func testTextSourceAndValidationSplit() throws {
        let text = "hello, tessera! \u{00e9}\n" + String(repeating: "abcdefghij", count: 10)
        let p = path("input.txt")
        try text.write(toFile: p, atomically: true, encoding: .utf8)
        let bytes = Array(text.utf8)

        let s = try ByteTokens.load(path: p)
        XCTAssertEqual(s.count, bytes.count)
        XCTAssertEqual(tokens(s), bytes.map(Int32.init))
        XCTAssertEqual(s.maxToken, Int(bytes.max()!))
        XCTAssertNoThrow(try s.checkTokens(vocabSize: 256))
        assertThrows({ try s.checkTokens(vocabSize: 100) }, mentioning: ["input.txt", "vocab_size 100"])

        let (train, val) = try openDataset(format: "auto", train: p, val: "", valFraction: 0.1)
        let nVal = bytes.count / 10
        XCTAssertEqual(val.count, nVal)
        XCTAssertEqual(train.count, bytes.count - nVal)
        XCTAssertEqual(tokens(train), bytes[..<(bytes.count - nVal)].map(Int32.init))
        XCTAssertEqual(tokens(val), bytes[(bytes.count - nVal)...].map(Int32.init))
        XCTAssertEqual(val.maxToken, Int(bytes[(bytes.count - nVal)...].max()!))

        // Explicit validation file.
        let vp = path("val.txt")
        try "xyz".write(toFile: vp, atomically: true, encoding: .utf8)
        let (t2, v2) = try openDataset(format: "text", train: p, val: vp, valFraction: 0.5)
        XCTAssertEqual(t2.count, bytes.count)
        XCTAssertEqual(tokens(v2), Array("xyz".utf8).map(Int32.init))

        assertThrows({ _ = try openDataset(format: "auto", train: self.path("nope.txt"), val: "", valFraction: 0.1) },
                     mentioning: ["nope.txt", "no such file"])
        assertThrows({ _ = try openDataset(format: "csv", train: p, val: "", valFraction: 0.1) }, mentioning: ["csv"])
    }

    func testBinValidationTailIsASlice() throws {
        let toks: [UInt16] = (0..<1000).map { UInt16($0) }
        try TokenShard.write(Array(toks[..<600]), to: path("train_000000.bin"))
        try TokenShard.write(Array(toks[600...]), to: path("train_000001.bin"))
        let (train, val) = try openDataset(format: "auto", train: path("train_*.bin"), val: "", valFraction: 0.25)
        XCTAssertEqual(train.count, 750)
        XCTAssertEqual(val.count, 250)
        XCTAssertEqual(tokens(val), (750..<1000).map(Int32.init))
        XCTAssertEqual(tokens(train, 590, 20), (590..<610).map(Int32.init))
        XCTAssertEqual(val.maxToken, 999)
        XCTAssertEqual(train.maxToken, 749)
    }

    // MARK: loader

    private func counting(_ n: Int) -> ByteTokens {
        // Bytes that identify their position modulo 251 (a prime), so windows are easy to tell apart.
        ByteTokens(bytes: (0..<n).map { UInt8($0 % 251) }, description: "counting(\(n))")
    }

    private func fill(_ l: DataLoader, step: Int, batch: Int, _ seqs: Range<Int>, _ toks: Range<Int>? = nil) -> ([Int32], [Int32]) {
        let w = (toks ?? 0..<l.seqLen).count
        var x = [Int32](repeating: -1, count: seqs.count * w), y = x
        x.withUnsafeMutableBufferPointer { xp in
            y.withUnsafeMutableBufferPointer { yp in
                l.fill(step: step, globalBatch: batch, sequences: seqs, tokens: toks, inputs: xp.baseAddress!, targets: yp.baseAddress!)
            }
        }
        return (x, y)
    }

    func testLoaderSlicesAgree() throws {
        let src = counting(10_000)
        let T = 16, B = 8
        let l = try DataLoader(source: src, seqLen: T, seed: 1234)
        let (x, y) = fill(l, step: 3, batch: B, 0..<B)
        let (x0, y0) = fill(l, step: 3, batch: B, 0..<4)
        let (x1, y1) = fill(l, step: 3, batch: B, 4..<8)
        XCTAssertEqual(x, x0 + x1)
        XCTAssertEqual(y, y0 + y1)
        // A single sequence, and token sub-ranges that tile it.
        for j in 0..<B {
            let (xj, yj) = fill(l, step: 3, batch: B, j..<(j + 1))
            XCTAssertEqual(xj, Array(x[(j * T)..<((j + 1) * T)]))
            let tiles = [0..<5, 5..<11, 11..<16]
            var xt: [Int32] = [], yt: [Int32] = []
            for t in tiles {
                let (a, b) = fill(l, step: 3, batch: B, j..<(j + 1), t)
                xt += a; yt += b
            }
            XCTAssertEqual(xt, xj)
            XCTAssertEqual(yt, yj)
        }
        // Sub-range over several sequences: row-major by sequence, each row the sub-range.
        let (xs, _) = fill(l, step: 3, batch: B, 2..<5, 4..<9)
        for r in 0..<3 {
            XCTAssertEqual(Array(xs[(r * 5)..<((r + 1) * 5)]), Array(x[((2 + r) * T + 4)..<((2 + r) * T + 9)]))
        }
        // Windows are where start() says, and targets are inputs shifted by one.
        for j in 0..<B {
            let s = l.start(step: 3, sequence: j, globalBatch: B)
            XCTAssertTrue(s >= 0 && s <= src.count - T - 1)
            XCTAssertEqual(Array(x[(j * T)..<((j + 1) * T)]), tokens(src, s, T))
            XCTAssertEqual(Array(y[(j * T)..<((j + 1) * T)]), tokens(src, s + 1, T))
            XCTAssertEqual(Array(y[(j * T)..<((j + 1) * T - 1)]), Array(x[(j * T + 1)..<((j + 1) * T)]))
        }
        // The window does not depend on the global batch size (only checked against it).
        XCTAssertEqual(l.start(step: 3, sequence: 2, globalBatch: 4), l.start(step: 3, sequence: 2, globalBatch: 64))
    }

    func testLoaderWindowsVaryAndAreStateless() throws {
        let src = counting(100_000)
        let a = try DataLoader(source: src, seqLen: 32, seed: 1)
        let a2 = try DataLoader(source: src, seqLen: 32, seed: 1)
        let b = try DataLoader(source: src, seqLen: 32, seed: 2)
        let starts = { (l: DataLoader, step: Int) in (0..<16).map { l.start(step: step, sequence: $0, globalBatch: 16) } }
        XCTAssertEqual(starts(a, 7), starts(a2, 7))       // a fresh loader (a resumed run) agrees
        XCTAssertNotEqual(starts(a, 0), starts(a, 1))     // different steps
        XCTAssertNotEqual(starts(a, 5), starts(b, 5))     // different seeds
        XCTAssertEqual(Set(starts(a, 0)).count, 16)       // distinct within a batch (overwhelmingly likely)
        XCTAssertNotEqual(fill(a, step: 0, batch: 4, 0..<4).0, fill(a, step: 1, batch: 4, 0..<4).0)
        XCTAssertNotEqual(fill(a, step: 0, batch: 4, 0..<4).0, fill(b, step: 0, batch: 4, 0..<4).0)
        // Starts stay in range, also for the tightest source.
        let tight = try DataLoader(source: counting(17), seqLen: 16, seed: 9)
        for step in 0..<50 { XCTAssertEqual(tight.start(step: step, sequence: 0, globalBatch: 1), 0) }
        let (x, y) = fill(tight, step: 0, batch: 1, 0..<1)
        XCTAssertEqual(x, (0..<16).map(Int32.init))
        XCTAssertEqual(y, (1..<17).map(Int32.init))
        // Starts cover the range roughly uniformly.
        let small = try DataLoader(source: counting(20), seqLen: 10, seed: 3)
        var seen = Set<Int>()
        for step in 0..<200 { seen.insert(small.start(step: step, sequence: 0, globalBatch: 1)) }
        XCTAssertEqual(seen, Set(0..<10))
    }

    func testLoaderTooShortSourceErrors() {
        assertThrows({ _ = try DataLoader(source: self.counting(16), seqLen: 16, seed: 0) }, mentioning: ["counting(16)", "17"])
        assertThrows({ _ = try DataLoader(source: self.counting(100), seqLen: 0, seed: 0) }, mentioning: ["counting(100)"])
    }

    func testEvalWindowsSpreadEvenly() throws {
        let T = 8
        let src = counting(4 * 2 * T + 1)  // exactly tiles 8 windows
        let l = try DataLoader(source: src, seqLen: T, seed: 0)
        XCTAssertEqual(l.evalBatchesCovering(batchSize: 2), 4)
        var all: [Int32] = []
        for batch in 0..<4 {
            var x = [Int32](repeating: 0, count: 2 * T), y = x
            x.withUnsafeMutableBufferPointer { xp in
                y.withUnsafeMutableBufferPointer { yp in
                    l.fillEval(batch: batch, batches: 4, batchSize: 2, sequences: 0..<2, inputs: xp.baseAddress!, targets: yp.baseAddress!)
                }
            }
            all += x
            XCTAssertEqual(Array(y[0..<(T - 1)]), Array(x[1..<T]))
        }
        XCTAssertEqual(all, (0..<(8 * T)).map { Int32($0 % 251) })
        // Larger source: first window at 0, last at the last valid start, evenly spaced, and in range.
        let big = try DataLoader(source: counting(1000), seqLen: T, seed: 0)
        XCTAssertEqual(big.evalStart(window: 0, total: 10), 0)
        XCTAssertEqual(big.evalStart(window: 9, total: 10), 1000 - T - 1)
        XCTAssertEqual(big.evalStart(window: 0, total: 1), 0)
        let starts = (0..<10).map { big.evalStart(window: $0, total: 10) }
        XCTAssertEqual(starts, starts.sorted())
    }

    // MARK: prepare

    func testPrepareRoundTrip() throws {
        let a = path("a.txt"), b = path("b.txt")
        let textA = String(repeating: "To be, or not to be, that is the question.\n", count: 30)
        let textB = "Whether 'tis nobler in the mind to suffer \u{2014} the slings and arrows.\n"
        try textA.write(toFile: a, atomically: true, encoding: .utf8)
        try textB.write(toFile: b, atomically: true, encoding: .utf8)
        let bytes = Array(textA.utf8) + Array(textB.utf8)
        let out = path("out/nested")

        let summary = try Prepare.run(inputs: [a, b], outDir: out, valFraction: 0.1, shardTokens: 500)
        XCTAssertTrue(summary.contains("train_000000.bin"), summary)
        let nVal = bytes.count / 10
        let nTrain = bytes.count - nVal
        let nShards = (nTrain + 499) / 500
        XCTAssertTrue(summary.contains("train_\(String(format: "%06d", nShards - 1)).bin"), summary)
        let trainPaths = (0..<nShards).map { "\(out)/train_\(String(format: "%06d", $0)).bin" }
        for (i, p) in trainPaths.enumerated() {
            XCTAssertEqual(try TokenShard.readHeader(path: p), i < nShards - 1 ? 500 : nTrain - 500 * (nShards - 1))
        }
        XCTAssertFalse(FileManager.default.fileExists(atPath: "\(out)/train_\(String(format: "%06d", nShards)).bin"))

        let train = try ShardTokens(paths: trainPaths)
        let val = try ShardTokens(paths: ["\(out)/val_000000.bin"])
        XCTAssertEqual(tokens(train), bytes[..<nTrain].map(Int32.init))
        XCTAssertEqual(tokens(val), bytes[nTrain...].map(Int32.init))

        // The dataset opens through a glob, with the same split as the text itself.
        let (t, v) = try openDataset(format: "auto", train: "\(out)/train_*.bin", val: "\(out)/val_000000.bin", valFraction: 0)
        XCTAssertEqual(tokens(t), bytes[..<nTrain].map(Int32.init))
        XCTAssertEqual(v.count, nVal)
        let (tt, vt) = try openDataset(format: "text", train: a, val: "", valFraction: 0.1)
        XCTAssertEqual(tt.count + vt.count, textA.utf8.count)

        // Re-running into the same directory overwrites; a run that would leave stale shards is refused.
        XCTAssertNoThrow(try Prepare.run(inputs: [a, b], outDir: out, valFraction: 0.1, shardTokens: 500))
        assertThrows({ _ = try Prepare.run(inputs: [a, b], outDir: out, valFraction: 0.1, shardTokens: 100_000) },
                     mentioning: ["train_000001.bin", "remove"])

        // The command-line form.
        let out2 = path("out2")
        let s2 = try Prepare.command(arguments: ["--input", a, b, "--out", out2, "--val-fraction", "0.2"])
        XCTAssertTrue(s2.contains("val_000000.bin"), s2)
        XCTAssertEqual(try TokenShard.readHeader(path: "\(out2)/val_000000.bin"), bytes.count / 5)
    }

    func testPrepareErrors() throws {
        let a = path("a.txt")
        try "some text".write(toFile: a, atomically: true, encoding: .utf8)
        let empty = path("empty.txt")
        XCTAssertTrue(FileManager.default.createFile(atPath: empty, contents: Data()))
        assertThrows({ _ = try Prepare.run(inputs: [a, self.path("missing.txt")], outDir: self.path("o"), valFraction: 0.1) },
                     mentioning: ["missing.txt", "no such input file"])
        assertThrows({ _ = try Prepare.run(inputs: [empty], outDir: self.path("o"), valFraction: 0.1) },
                     mentioning: ["empty.txt", "empty"])
        let file = path("notadir")
        try "x".write(toFile: file, atomically: true, encoding: .utf8)
        assertThrows({ _ = try Prepare.run(inputs: [a], outDir: file, valFraction: 0.1) }, mentioning: ["notadir", "not a directory"])
        assertThrows({ _ = try Prepare.run(inputs: [a], outDir: "\(file)/sub", valFraction: 0.1) }, mentioning: ["notadir/sub"])
        if getuid() != 0 {  // root writes anywhere
            let ro = path("readonly")
            try FileManager.default.createDirectory(atPath: ro, withIntermediateDirectories: true)
            chmod(ro, 0o555)
            assertThrows({ _ = try Prepare.run(inputs: [a], outDir: ro, valFraction: 0.1) }, mentioning: ["readonly", "not writable"])
            chmod(ro, 0o755)
        }
        assertThrows({ _ = try Prepare.run(inputs: [a], outDir: self.path("o"), valFraction: 0) }, mentioning: ["val-fraction"])
        assertThrows({ _ = try Prepare.command(arguments: ["--input", a]) }, mentioning: ["--out"])
    }
}
