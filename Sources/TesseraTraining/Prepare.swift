// `tessera prepare`: text files -> byte-level llm.c token shards (train_000000.bin ..., val_000000.bin).
// Streams the inputs in chunks, so memory use does not grow with the corpus. See docs/data.md.

import Foundation
#if canImport(Glibc)
import Glibc
#endif

public enum Prepare {
    public static let usage = """
        usage: tessera prepare --input FILE... --out DIR [--val-fraction 0.1] [--shard-tokens N]
          Tokenizes text files byte-level (token = byte, vocabulary 256), concatenated in order, and writes llm.c
          token shards DIR/train_000000.bin ... (at most N tokens each, default 100000000) and DIR/val_000000.bin
          (the last --val-fraction of the tokens).
        """

    /// Reads the input text files (concatenated in order, byte-level tokens), splits off the last `valFraction` as
    /// validation, writes `<outDir>/train_000000.bin` (and further shards of at most `shardTokens` tokens:
    /// train_000001.bin, ...) and `<outDir>/val_000000.bin`. Returns a summary (token counts, files).
    public static func run(inputs: [String], outDir: String, valFraction: Double,
                           shardTokens: Int = 100_000_000) throws -> String {
        guard !inputs.isEmpty else { throw DataError("prepare: no input files given\n\(usage)") }
        guard valFraction > 0 && valFraction < 1 else {
            throw DataError("prepare: --val-fraction \(valFraction) must be greater than 0 and less than 1")
        }
        guard shardTokens > 0 && shardTokens <= Int(Int32.max) else {
            throw DataError("prepare: --shard-tokens \(shardTokens) must be in 1...\(Int32.max)")
        }

        // Sizes first: the split point and every shard's token count are known before anything is written.
        var sizes: [Int] = []
        for path in inputs {
            var isDir: ObjCBool = false
            guard FileManager.default.fileExists(atPath: path, isDirectory: &isDir) else {
                throw DataError("\(path): no such input file")
            }
            guard !isDir.boolValue else { throw DataError("\(path): is a directory, expected a text file") }
            guard let attrs = try? FileManager.default.attributesOfItem(atPath: path),
                  let size = (attrs[.size] as? NSNumber)?.intValue else {
                throw DataError("\(path): cannot read the file's size")
            }
            guard size > 0 else { throw DataError("\(path): input file is empty") }
            sizes.append(size)
        }
        let total = sizes.reduce(0, +)
        let nVal = validationTokens(total, fraction: valFraction)
        let nTrain = total - nVal
        guard nTrain > 0 else {
            throw DataError("\(inputs.joined(separator: ", ")): \(total) tokens are too few to split off a validation fraction of \(valFraction)")
        }

        try makeDirectory(outDir)
        var trainCounts: [Int] = []
        var left = nTrain
        while left > 0 { let c = min(left, shardTokens); trainCounts.append(c); left -= c }
        let trainPaths = trainCounts.indices.map { shardPath(outDir, "train", $0) }
        let valPath = shardPath(outDir, "val", 0)
        try checkNoStaleShards(outDir, keeping: Set(trainPaths + [valPath]))

        let reader = try ConcatenatedReader(paths: inputs, sizes: sizes)
        defer { reader.close() }
        for (path, count) in zip(trainPaths, trainCounts) {
            try writeShard(path, count: count, from: reader)
        }
        try writeShard(valPath, count: nVal, from: reader)

        var lines = ["prepared \(total) tokens (byte-level, vocabulary 256) from \(inputs.count) file(s) into \(outDir)"]
        for (path, count) in zip(trainPaths, trainCounts) { lines.append("  train  \(count) tokens  \(path)") }
        lines.append("  val    \(nVal) tokens  \(valPath)")
        lines.append("config: train = \"\(trainPaths.count == 1 ? trainPaths[0] : shardPath(outDir, "train", nil))\", val = \"\(valPath)\"")
        return lines.joined(separator: "\n")
    }

    /// Parses `tessera prepare` arguments (those after "prepare"), runs it, and returns the summary.
    public static func command(arguments: [String]) throws -> String {
        var inputs: [String] = []
        var out: String?
        var valFraction = 0.1
        var shardTokens = 100_000_000
        var i = 0
        func value(_ flag: String) throws -> String {
            i += 1
            guard i < arguments.count else { throw DataError("prepare: \(flag) needs a value\n\(usage)") }
            return arguments[i]
        }
        while i < arguments.count {
            let a = arguments[i]
            switch a {
            case "--input", "-i":
                // One or more files, up to the next flag.
                let first = i
                while i + 1 < arguments.count, !arguments[i + 1].hasPrefix("--") { i += 1; inputs.append(arguments[i]) }
                if i == first { throw DataError("prepare: --input needs at least one file\n\(usage)") }
            case "--out", "-o":
                out = try value(a)
            case "--val-fraction":
                let v = try value(a)
                guard let f = Double(v) else { throw DataError("prepare: --val-fraction \"\(v)\" is not a number") }
                valFraction = f
            case "--shard-tokens":
                let v = try value(a)
                guard let n = Int(v) else { throw DataError("prepare: --shard-tokens \"\(v)\" is not an integer") }
                shardTokens = n
            case "--help", "-h":
                return usage
            default:
                throw DataError("prepare: unknown argument \"\(a)\"\n\(usage)")
            }
            i += 1
        }
        guard let outDir = out else { throw DataError("prepare: --out DIR is required\n\(usage)") }
        return try run(inputs: inputs, outDir: outDir, valFraction: valFraction, shardTokens: shardTokens)
    }

    // MARK: internals

    /// DIR/split_000000.bin; with a nil index, the glob matching all of a split's shards.
    static func shardPath(_ dir: String, _ split: String, _ index: Int?) -> String {
        let name = index.map { split + "_" + String(format: "%06d", $0) } ?? split + "_*"
        return (dir as NSString).appendingPathComponent(name + ".bin")
    }

    static func makeDirectory(_ dir: String) throws {
        var isDir: ObjCBool = false
        if FileManager.default.fileExists(atPath: dir, isDirectory: &isDir) {
            guard isDir.boolValue else { throw DataError("\(dir): exists and is not a directory") }
        } else {
            do { try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true) } catch {
                throw DataError("\(dir): cannot create output directory: \(error.localizedDescription)")
            }
        }
        guard access(dir, W_OK) == 0 else { throw DataError("\(dir): output directory is not writable") }
    }

    /// Refuses to leave shards of an earlier, larger run that a `train_*.bin` glob would pick up.
    static func checkNoStaleShards(_ dir: String, keeping: Set<String>) throws {
        let names = (try? FileManager.default.contentsOfDirectory(atPath: dir)) ?? []
        let stale = names.filter { ($0.hasPrefix("train_") || $0.hasPrefix("val_")) && $0.hasSuffix(".bin") }
            .map { (dir as NSString).appendingPathComponent($0) }
            .filter { !keeping.contains($0) }
            .sorted()
        guard stale.isEmpty else {
            throw DataError("\(dir): already holds shards this run would not overwrite (\(stale.joined(separator: ", "))); "
                            + "remove them or choose another --out")
        }
    }

    static func writeShard(_ path: String, count: Int, from reader: ConcatenatedReader) throws {
        try withUnsafeTemporaryAllocation(of: UInt8.self, capacity: 1 << 20) { bytes in
            try TokenShard.write(count: count, to: path) { _, out in
                let chunk = UnsafeMutableBufferPointer(rebasing: bytes[0..<out.count])
                try reader.read(into: chunk)
                for i in 0..<out.count { out[i] = UInt16(chunk[i]) }
            }
        }
    }
}

/// Reads the bytes of several files in order, as one stream.
final class ConcatenatedReader {
    private let paths: [String]
    private let sizes: [Int]
    private var index = -1
    private var file: UnsafeMutablePointer<FILE>?
    private var readFromFile = 0

    init(paths: [String], sizes: [Int]) throws {
        self.paths = paths
        self.sizes = sizes
    }

    /// Fills `buffer` exactly; throws if the inputs end early or cannot be read.
    func read(into buffer: UnsafeMutableBufferPointer<UInt8>) throws {
        var done = 0
        while done < buffer.count {
            if file == nil {
                index += 1
                guard index < paths.count else { throw DataError("prepare: the inputs ended early (did a file shrink?)") }
                guard let f = fopen(paths[index], "rb") else {
                    throw DataError("\(paths[index]): cannot open: \(String(cString: strerror(errno)))")
                }
                file = f
                readFromFile = 0
            }
            let got = fread(buffer.baseAddress! + done, 1, buffer.count - done, file)
            done += got
            readFromFile += got
            if got == 0 || done < buffer.count {
                if ferror(file) != 0 { throw DataError("\(paths[index]): read failed: \(String(cString: strerror(errno)))") }
                if feof(file) != 0 {
                    fclose(file)
                    file = nil
                    guard readFromFile == sizes[index] else {
                        throw DataError("\(paths[index]): read \(readFromFile) bytes, expected \(sizes[index]) (did the file change?)")
                    }
                }
            }
        }
    }

    func close() {
        if let f = file { fclose(f); file = nil }
    }
}
