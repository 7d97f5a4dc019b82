// Writing and reading checkpoint directories. A checkpoint becomes visible only when complete:
//   1. every rank writes its shard file into <root>/.tmp-step-NNNNNN/ and fsyncs it;
//   2. rank 0, once all of them have (the caller synchronises), writes manifest.json, fsyncs it and the
//      directory, renames the directory to step-NNNNNN, fsyncs the root;
//   3. the `latest` pointer is replaced the same way (write latest.tmp, fsync, rename), and checkpoints
//      beyond the newest `keep` are removed.
// A crash at any point leaves either the previous `latest` or the new one, each complete. Temporary
// directories of crashed saves are never read, and the next commit removes them.

import Foundation
#if canImport(Glibc)
import Glibc
#endif

public enum CheckpointStore {
    public static func name(step: Int) -> String { String(format: "step-%06d", step) }
    static func tempName(step: Int) -> String { ".tmp-" + name(step: step) }
    public static func fileName(rank: Int) -> String { "rank-\(rank).safetensors" }

    /// One shard to write: elements `start..<start+values.count` of `kind` of tensor `tensor`.
    public struct Piece {
        public let tensor: String, kind: String, start: Int, values: UnsafeBufferPointer<Float>
        public init(tensor: String, kind: String, start: Int, values: UnsafeBufferPointer<Float>) {
            self.tensor = tensor; self.kind = kind; self.start = start; self.values = values
        }
    }

    /// Writes this rank's shards as one safetensors file in the step's temporary directory (made if missing)
    /// and fsyncs it. Returns the manifest records of its shards.
    public static func writeShards(root: String, step: Int, rank: Int, pieces: [Piece]) throws -> [CheckpointManifest.Shard] {
        let dir = root + "/" + tempName(step: step)
        do { try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true) } catch {
            throw CheckpointError("checkpoint.dir = '\(root)': cannot create \(dir): \((error as NSError).localizedDescription)")
        }
        let file = fileName(rank: rank), path = dir + "/" + file
        var header: [String: Any] = [:]
        var offset = 0
        for p in pieces {
            header["\(p.kind)/\(p.tensor)/\(p.start)"] = ["dtype": "F32", "shape": [p.values.count],
                                                          "data_offsets": [offset, offset + 4 * p.values.count]] as [String: Any]
            offset += 4 * p.values.count
        }
        var json = try JSONSerialization.data(withJSONObject: header, options: [.sortedKeys])
        while (json.count + 8) % 8 != 0 { json.append(0x20) }
        let dataStart = 8 + json.count
        let fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o644)
        guard fd >= 0 else { throw CheckpointError("\(path): cannot create: \(String(cString: strerror(errno)))") }
        defer { close(fd) }
        var records: [CheckpointManifest.Shard] = []
        var prefix = Data()
        withUnsafeBytes(of: UInt64(json.count).littleEndian) { prefix.append(contentsOf: $0) }
        prefix.append(json)
        try prefix.withUnsafeBytes { try writeAll(fd, $0, path: path) }
        var at = dataStart
        for p in pieces {
            let bytes = UnsafeRawBufferPointer(p.values)
            try writeAll(fd, bytes, path: path)
            records.append(.init(tensor: p.tensor, kind: p.kind, start: p.start, count: p.values.count, rank: rank, file: file,
                                 byteOffset: at, checksum: Checksum.hex(Checksum.hash(bytes))))
            at += bytes.count
        }
        guard fsync(fd) == 0 else { throw CheckpointError("\(path): fsync failed: \(String(cString: strerror(errno)))") }
        return records
    }

    static func writeAll(_ fd: Int32, _ b: UnsafeRawBufferPointer, path: String) throws {
        var done = 0
        while done < b.count {
            let n = write(fd, b.baseAddress! + done, b.count - done)
            if n < 0 && errno == EINTR { continue }
            guard n > 0 else { throw CheckpointError("\(path): write failed: \(String(cString: strerror(errno)))") }
            done += n
        }
    }

    static func fsyncPath(_ path: String) throws {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { throw CheckpointError("\(path): cannot open to fsync: \(String(cString: strerror(errno)))") }
        defer { close(fd) }
        guard fsync(fd) == 0 else { throw CheckpointError("\(path): fsync failed: \(String(cString: strerror(errno)))") }
    }

    /// Before a run saves into `root`: makes the directory (an error names `setting`) and removes temporary
    /// directories that crashed saves or removals left (no save is running yet).
    /// The system's reason for a file-system error and the path it concerns ("'/a/b': Not a directory"),
    /// not Foundation's "The operation could not be completed".
    static func reason(_ error: Error) -> String {
        let e = error as NSError, path = e.userInfo[NSFilePathErrorKey] as? String
        if let under = e.userInfo[NSUnderlyingErrorKey] as? NSError { return (path.map { "'\($0)': " } ?? "") + under.localizedDescription }
        // Foundation gives no reason here: the system's, by making the directory it stopped at.
        if let path, mkdir(path, 0o777) != 0 { return "'\(path)': " + String(cString: strerror(errno)) }
        return "error \(e.code)"
    }

    public static func prepare(root: String, setting: String) throws {
        let fm = FileManager.default
        do { try fm.createDirectory(atPath: root, withIntermediateDirectories: true) } catch {
            throw CheckpointError("\(setting) = '\(root)': cannot create the directory: \(Self.reason(error)); "
                                  + "expected a writable directory (or a path where one can be created)")
        }
        guard access(root, W_OK) == 0 else {
            throw CheckpointError("\(setting) = '\(root)': the directory is not writable; expected a writable directory")
        }
        for n in (try? fm.contentsOfDirectory(atPath: root)) ?? [] where n.hasPrefix(".tmp-step-") || n.hasPrefix(".discard-") {
            try? fm.removeItem(atPath: root + "/" + n)
        }
    }

    /// Rank 0, after every rank's `writeShards` returned: makes the checkpoint visible and keeps the newest
    /// `keep`. Returns its path.
    @discardableResult
    public static func commit(root: String, manifest: CheckpointManifest, keep: Int) throws -> String {
        let fm = FileManager.default
        let temp = root + "/" + tempName(step: manifest.step), final = root + "/" + name(step: manifest.step)
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
        let data = try encoder.encode(manifest)
        try? fm.createDirectory(atPath: temp, withIntermediateDirectories: true)
        try writeDurably(temp + "/manifest.json", data)
        try publish(root: root, temp: temp, final: final, step: manifest.step, keep: keep)
        return final
    }

    /// Writes `data` to a new file at `path` and fsyncs it.
    static func writeDurably(_ path: String, _ data: Data) throws {
        let fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o644)
        guard fd >= 0 else { throw CheckpointError("\(path): cannot create: \(String(cString: strerror(errno)))") }
        defer { close(fd) }
        try data.withUnsafeBytes { try writeAll(fd, $0, path: path) }
        guard fsync(fd) == 0 else { throw CheckpointError("\(path): fsync failed: \(String(cString: strerror(errno)))") }
    }

    /// The end of a commit, once `temp` holds every file fsynced: fsync it, rename it to `final`, fsync the
    /// root, point `latest` at it, prune to `keep`.
    static func publish(root: String, temp: String, final: String, step: Int, keep: Int) throws {
        try fsyncPath(temp)
        try replace(root: root, temp: temp, final: final)
        try fsyncPath(root)
        try setLatest(root: root, name: name(step: step))
        try prune(root: root, keep: keep, committed: step)
    }

    /// Copies committed checkpoint `path` into `root` (a second, persistent level: a shared file system) with
    /// the same protocol as a commit: files into `.tmp-step-N`, fsynced, renamed, `latest` updated, pruned to
    /// `keep`. Returns the copy's path.
    @discardableResult
    public static func persist(checkpoint path: String, to root: String, keep: Int) throws -> String {
        let fm = FileManager.default
        let name = (path as NSString).lastPathComponent
        guard name.hasPrefix("step-"), let step = Int(name.dropFirst(5)) else { throw CheckpointError("\(path): not a step-N checkpoint") }
        let temp = root + "/" + tempName(step: step), final = root + "/" + name
        do { try fm.createDirectory(atPath: root, withIntermediateDirectories: true) } catch {
            throw CheckpointError("checkpoint.persist_dir = '\(root)': cannot create the directory: \((error as NSError).localizedDescription)")
        }
        try? fm.removeItem(atPath: temp)
        try fm.createDirectory(atPath: temp, withIntermediateDirectories: true)
        // The rank files first and manifest.json last, each fsynced.
        let names = try fm.contentsOfDirectory(atPath: path).filter { $0 != "manifest.json" }.sorted()
        let files = names + ["manifest.json"]
        for f in files {
            try fm.copyItem(atPath: path + "/" + f, toPath: temp + "/" + f)
            try fsyncPath(temp + "/" + f)
        }
        try publish(root: root, temp: temp, final: final, step: step, keep: keep)
        return final
    }

    /// Points `latest` at checkpoint `name` (atomically).
    public static func setLatest(root: String, name: String) throws {
        let tmp = root + "/latest.tmp"
        try writeDurably(tmp, Data((name + "\n").utf8))
        guard rename(tmp, root + "/latest") == 0 else { throw CheckpointError("cannot update \(root)/latest: \(String(cString: strerror(errno)))") }
        try fsyncPath(root)
    }

    /// Complete checkpoints under `root` (a directory step-N holding manifest.json), newest first.
    public static func list(root: String) -> [(step: Int, path: String)] {
        let names = (try? FileManager.default.contentsOfDirectory(atPath: root)) ?? []
        return names.compactMap { n -> (Int, String)? in
            guard n.hasPrefix("step-"), let s = Int(n.dropFirst(5)),
                  FileManager.default.fileExists(atPath: root + "/" + n + "/manifest.json") else { return nil }
            return (s, root + "/" + n)
        }.sorted { $0.0 > $1.0 }
    }

    /// Complete checkpoints under `root` in the order a resume tries them: the one `latest` names, then the
    /// others, newest first.
    public static func candidates(root: String) -> [String] {
        var paths = list(root: root).map(\.path)
        if let l = latest(root: root), let i = paths.firstIndex(of: l) { paths.remove(at: i); paths.insert(l, at: 0) }
        return paths
    }

    /// The checkpoint `latest` names (nil when there is none).
    public static func latest(root: String) -> String? {
        guard let text = try? String(contentsOfFile: root + "/latest", encoding: .utf8) else { return nil }
        let n = text.trimmingCharacters(in: .whitespacesAndNewlines)
        let path = root + "/" + n
        return FileManager.default.fileExists(atPath: path + "/manifest.json") ? path : nil
    }

    /// Removes all but the newest `keep` complete checkpoints (never the one `latest` names) and the
    /// temporary directories of saves that never committed, at or below step `committed` (the one just
    /// committed: saves commit in step order, so a save still in progress is of a later step).
    static func prune(root: String, keep: Int, committed: Int) throws {
        let fm = FileManager.default
        let current = latest(root: root)
        for (i, c) in list(root: root).enumerated() where i >= keep && c.path != current {
            try discard(root: root, path: c.path)
        }
        // Temporary directories of saves that never committed, and discarded checkpoints a crash left half
        // removed. (Not "at or below the newest listed step": an abandoned newer checkpoint, e.g. one a
        // resume fell back past, must not make this remove a save that another rank is writing.)
        for n in (try? fm.contentsOfDirectory(atPath: root)) ?? [] {
            if n.hasPrefix(".tmp-step-"), let s = Int(n.dropFirst(".tmp-step-".count)), s <= committed { try? fm.removeItem(atPath: root + "/" + n) }
            if n.hasPrefix(".discard-") { try? fm.removeItem(atPath: root + "/" + n) }
        }
    }

    /// Renames `temp` to `final`. The same step saved again: the old one is renamed out of sight first and
    /// deleted after, or renamed back if the new one cannot take its place.
    static func replace(root: String, temp: String, final: String) throws {
        let hidden = root + "/.discard-" + (final as NSString).lastPathComponent
        let had = FileManager.default.fileExists(atPath: final)
        if had {
            try? FileManager.default.removeItem(atPath: hidden)
            guard rename(final, hidden) == 0 else { throw CheckpointError("cannot rename \(final) to \(hidden): \(String(cString: strerror(errno)))") }
        }
        guard rename(temp, final) == 0 else {
            let e = String(cString: strerror(errno))
            if had { _ = rename(hidden, final) }
            throw CheckpointError("cannot rename \(temp) to \(final): \(e)")
        }
        if had { try? FileManager.default.removeItem(atPath: hidden) }
    }

    /// Removes a checkpoint: first renamed out of sight (atomic), then deleted, so a crash during the deletion
    /// never leaves a visible checkpoint with files missing.
    static func discard(root: String, path: String) throws {
        let hidden = root + "/.discard-" + (path as NSString).lastPathComponent
        try? FileManager.default.removeItem(atPath: hidden)
        guard rename(path, hidden) == 0 else { throw CheckpointError("cannot rename \(path) to \(hidden): \(String(cString: strerror(errno)))") }
        try? FileManager.default.removeItem(atPath: hidden)
    }
}

/// A committed checkpoint: its manifest, and reads of any element range of any saved tensor from the
/// shards that overlap it, each shard checked against its checksum before its first use.
public final class CheckpointReader {
    public let path: String
    public let manifest: CheckpointManifest
    private var verified: Set<Int> = []

    public init(path: String) throws {
        self.path = path
        let m = path + "/manifest.json"
        guard let data = FileManager.default.contents(atPath: m) else { throw CheckpointError("\(m): cannot read the manifest") }
        do { manifest = try JSONDecoder().decode(CheckpointManifest.self, from: data) } catch {
            throw CheckpointError("\(m): not a Tessera checkpoint manifest: \(error)")
        }
        guard manifest.format == CheckpointManifest.formatName else {
            throw CheckpointError("\(m): format '\(manifest.format)', expected '\(CheckpointManifest.formatName)'")
        }
    }

    /// Elements `range` of `kind` of tensor `name` into `dst` (dst[0] is element range.lowerBound).
    public func read(tensor name: String, kind: String, range: Range<Int>, into dst: UnsafeMutablePointer<Float>) throws {
        guard let t = manifest.tensor(name) else { throw CheckpointError("\(path): no tensor '\(name)' in the checkpoint") }
        guard range.lowerBound >= 0, range.upperBound <= t.count else {
            throw CheckpointError("\(path): elements \(range) of '\(name)' outside its \(t.count)")
        }
        var covered = 0
        for (i, s) in manifest.shards.enumerated() where s.tensor == name && s.kind == kind {
            let lo = max(s.start, range.lowerBound), hi = min(s.start + s.count, range.upperBound)
            guard lo < hi else { continue }
            let values = try shardValues(i)
            (dst + (lo - range.lowerBound)).update(from: values + (lo - s.start), count: hi - lo)
            values.deallocate()
            covered += hi - lo
        }
        guard covered >= range.count else {
            throw CheckpointError("\(path): elements \(range) of \(kind) of '\(name)' are not all in the checkpoint (\(covered) found)")
        }
    }

    /// Reads shard i whole and checks it (the caller deallocates).
    private func shardValues(_ i: Int) throws -> UnsafeMutablePointer<Float> {
        let s = manifest.shards[i], file = path + "/" + s.file
        let buf = UnsafeMutablePointer<Float>.allocate(capacity: max(s.count, 1))
        let fd = open(file, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { buf.deallocate(); throw CheckpointError("\(file): cannot open: \(String(cString: strerror(errno)))") }
        defer { close(fd) }
        var done = 0
        let bytes = 4 * s.count
        while done < bytes {
            let n = pread(fd, UnsafeMutableRawPointer(buf) + done, bytes - done, off_t(s.byteOffset + done))
            if n < 0 && errno == EINTR { continue }
            guard n > 0 else { buf.deallocate(); throw CheckpointError("\(file): tensor '\(s.tensor)' (\(s.kind)) is truncated") }
            done += n
        }
        if !verified.contains(i) {
            let sum = Checksum.hex(Checksum.hash(UnsafeRawBufferPointer(start: buf, count: bytes)))
            guard sum == s.checksum else {
                buf.deallocate()
                throw CheckpointError("\(file): tensor '\(s.tensor)' (\(s.kind), elements \(s.range)) fails its checksum: "
                                      + "stored \(s.checksum), computed \(sum); the file is corrupt")
            }
            verified.insert(i)
        }
        return buf
    }

    /// Checks every shard's checksum.
    public func verifyAll() throws {
        for i in manifest.shards.indices { try shardValues(i).deallocate() }
    }

    /// The newest checkpoint under `root` that verifies, newest first from `latest`; `skipped` gets a line
    /// for each newer one that did not (so that the caller can say so).
    public static func newestValid(root: String, skipped: inout [String]) -> CheckpointReader? {
        for c in CheckpointStore.candidates(root: root) {
            do {
                let r = try CheckpointReader(path: c)
                try r.verifyAll()
                return r
            } catch { skipped.append("\(error)") }
        }
        return nil
    }
}
