import Foundation
import XCTest
@testable import TesseraCheckpoint
@testable import TesseraModel

/// The checkpoint format in process: shards written by several ranks in different slicings read back as
/// any range (resharding); a checkpoint is visible only once committed; `keep` prunes; a flipped byte is
/// caught by its checksum with the file and tensor named, and the newest valid checkpoint is found.
final class CheckpointTests: XCTestCase {
    func tempRoot() -> String {
        let d = NSTemporaryDirectory() + "tessera-ckpt-\(getpid())-\(UInt64.random(in: 0..<UInt64.max))"
        try? FileManager.default.createDirectory(atPath: d, withIntermediateDirectories: true)
        return d
    }

    let a = (0..<1000).map { Float($0) * 0.5 }, b = (0..<24).map { Float(-$0) }

    /// Rank 0 holds a[0..<400] and all of b; rank 1 holds a[400..<1000] (and its moments as exp_avg).
    func save(root: String, step: Int, keep: Int) throws {
        var shards: [CheckpointManifest.Shard] = []
        try a.withUnsafeBufferPointer { ap in
            try b.withUnsafeBufferPointer { bp in
                shards += try CheckpointStore.writeShards(root: root, step: step, rank: 0, pieces: [
                    .init(tensor: "a", kind: "param", start: 0, values: UnsafeBufferPointer(rebasing: ap[0..<400])),
                    .init(tensor: "b", kind: "param", start: 0, values: bp)])
                shards += try CheckpointStore.writeShards(root: root, step: step, rank: 1, pieces: [
                    .init(tensor: "a", kind: "param", start: 400, values: UnsafeBufferPointer(rebasing: ap[400..<1000])),
                    .init(tensor: "a", kind: "exp_avg", start: 0, values: ap)])
            }
        }
        let m = CheckpointManifest(step: step, tensors: [.init(name: "a", shape: [10, 100]), .init(name: "b", shape: [24])],
                                   shards: shards, mesh: ["dp": 2], config: "[model]\n", state: ["data_step": "\(step)"])
        try CheckpointStore.commit(root: root, manifest: m, keep: keep)
    }

    func testShardsReadBackAsAnyRange() throws {
        let root = tempRoot()
        defer { try? FileManager.default.removeItem(atPath: root) }
        try save(root: root, step: 10, keep: 3)
        let r = try CheckpointReader(path: try XCTUnwrap(CheckpointStore.latest(root: root)))
        XCTAssertEqual(r.manifest.step, 10)
        XCTAssertEqual(r.manifest.state["data_step"], "10")
        for range in [0..<1000, 350..<450, 399..<401, 999..<1000, 123..<777] {
            var out = [Float](repeating: .nan, count: range.count)
            try out.withUnsafeMutableBufferPointer { try r.read(tensor: "a", kind: "param", range: range, into: $0.baseAddress!) }
            XCTAssertEqual(out, Array(a[range]), "a[\(range)]")
        }
        var out = [Float](repeating: 0, count: 24)
        try out.withUnsafeMutableBufferPointer { try r.read(tensor: "b", kind: "param", range: 0..<24, into: $0.baseAddress!) }
        XCTAssertEqual(out, b)
        // Each rank's file is plain safetensors: any reader sees its shards as 1-D tensors.
        let file = try SafeTensorsFile(path: root + "/step-000010/rank-1.safetensors")
        XCTAssertEqual(try file.floats("param/a/400"), Array(a[400..<1000]))
        XCTAssertThrowsError(try out.withUnsafeMutableBufferPointer {
            try r.read(tensor: "b", kind: "exp_avg", range: 0..<24, into: $0.baseAddress!) }) {
            XCTAssertTrue("\($0)".contains("not all in the checkpoint"), "\($0)")
        }
    }

    func testVisibleOnlyWhenCommittedAndPruned() throws {
        let root = tempRoot()
        defer { try? FileManager.default.removeItem(atPath: root) }
        for step in [10, 20, 30] { try save(root: root, step: step, keep: 2) }
        XCTAssertEqual(CheckpointStore.list(root: root).map(\.step), [30, 20])
        // A save that wrote its shards but never committed (a crash) is not a checkpoint.
        _ = try a.withUnsafeBufferPointer {
            try CheckpointStore.writeShards(root: root, step: 35, rank: 0, pieces: [.init(tensor: "a", kind: "param", start: 0, values: $0)])
        }
        XCTAssertEqual(CheckpointStore.list(root: root).map(\.step), [30, 20])
        XCTAssertEqual(CheckpointStore.latest(root: root), root + "/step-000030")
        // The next commit removes it.
        try save(root: root, step: 40, keep: 2)
        XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: root).sorted(), ["latest", "step-000030", "step-000040"])
    }

    func testFlippedByteIsCaughtAndTheNewestValidCheckpointIsFound() throws {
        let root = tempRoot()
        defer { try? FileManager.default.removeItem(atPath: root) }
        try save(root: root, step: 10, keep: 3)
        try save(root: root, step: 20, keep: 3)
        let file = root + "/step-000020/rank-1.safetensors"
        var bytes = try Data(contentsOf: URL(fileURLWithPath: file))
        let r = try CheckpointReader(path: root + "/step-000020")
        let shard = try XCTUnwrap(r.manifest.shards.first { $0.rank == 1 && $0.kind == "param" })
        bytes[shard.byteOffset + 4 * 17 + 2] ^= 0x10
        try bytes.write(to: URL(fileURLWithPath: file))
        var out = [Float](repeating: 0, count: 600)
        XCTAssertThrowsError(try out.withUnsafeMutableBufferPointer {
            try CheckpointReader(path: root + "/step-000020").read(tensor: "a", kind: "param", range: 400..<1000, into: $0.baseAddress!)
        }) { e in
            XCTAssertTrue("\(e)".contains("rank-1.safetensors") && "\(e)".contains("tensor 'a'") && "\(e)".contains("checksum"), "\(e)")
        }
        var skipped: [String] = []
        let valid = CheckpointReader.newestValid(root: root, skipped: &skipped)
        XCTAssertEqual(valid?.manifest.step, 10)
        XCTAssertEqual(skipped.count, 1)
        XCTAssertTrue(skipped.first?.contains("step-000020/rank-1.safetensors") == true, "\(skipped)")
    }
}
