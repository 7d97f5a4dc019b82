// Where `tessera prepare` puts its tokens: the split into train shards of at most N tokens and a validation tail,
// the output directory's checks, the writing of the shards from a token stream, and the summary. See docs/data.md.

import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// The shards of a prepare run of `total` tokens: the train shards' paths and counts, then the validation shard.
/// Creating one makes the output directory and refuses stale shards there.
struct ShardLayout {
    let trainPaths: [String]
    let trainCounts: [Int]
    let valPath: String
    let valCount: Int
    let outDir: String

    init(total: Int, valFraction: Double, shardTokens: Int, inputs: [String], outDir: String) throws {
        let nVal = validationTokens(total, fraction: valFraction)
        let nTrain = total - nVal
        guard nTrain > 0 else {
            throw DataError("\(inputs.joined(separator: ", ")): \(total) tokens are too few to split off a validation fraction of \(valFraction)")
        }
        try Self.makeDirectory(outDir)
        var counts: [Int] = []
        var left = nTrain
        while left > 0 { let c = min(left, shardTokens); counts.append(c); left -= c }
        trainCounts = counts
        trainPaths = counts.indices.map { Self.shardPath(outDir, "train", $0) }
        valPath = Self.shardPath(outDir, "val", 0)
        valCount = nVal
        self.outDir = outDir
        try Self.checkNoStaleShards(outDir, keeping: Set(trainPaths + [valPath]))
    }

    /// Writes the shards in format `version`, taking the tokens in order from `next`, which fills its buffer.
    func write(version: Int32, from next: (UnsafeMutableBufferPointer<UInt32>) throws -> Void) throws {
        for (path, count) in zip(trainPaths + [valPath], trainCounts + [valCount]) {
            try TokenShard.write(count: count, to: path, version: version) { _, out in try next(out) }
        }
    }

    /// `first`, a line per shard, the config line for the data section and an optional `last` line.
    func summary(first: String, last: String? = nil) -> String {
        var lines = [first]
        for (path, count) in zip(trainPaths, trainCounts) { lines.append("  train  \(count) tokens  \(path)") }
        lines.append("  val    \(valCount) tokens  \(valPath)")
        lines.append("config: train = \"\(trainPaths.count == 1 ? trainPaths[0] : Self.shardPath(outDir, "train", nil))\", val = \"\(valPath)\"")
        if let last { lines.append(last) }
        return lines.joined(separator: "\n")
    }

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
}
