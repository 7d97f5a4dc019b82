// The directories a run writes to, checked before any work (without making them): job.output_dir's files (metrics, TensorBoard),
// checkpoint.dir and checkpoint.persist_dir, memory.offload_dir, --trace and --dump-grads. A path that
// cannot be used stops every rank with one message naming the config key (or flag), the path and what
// was expected, instead of a Foundation error on one rank while the others wait for it.

import Foundation
import TesseraComm

/// Everything Trainer.init checks before it allocates: memory (MemoryPreflight) and output paths.
public enum Preflight {
    /// Collective over the world: every rank calls it, and every rank throws the same error or none does.
    public static func check(config: TesseraConfig, runtime: MPIRuntime?, options: TrainerOptions) throws {
        try MemoryPreflight.check(config: config, runtime: runtime)
        try OutputPaths.check(config: config, runtime: runtime, options: options)
    }
}

enum OutputPaths {
    /// One path a rank will write: `key` names the setting it comes from, `file` whether it is a file
    /// (then its directory is made and the file itself must not be a directory).
    struct Target: Equatable {
        var key: String, path: String, file: Bool
    }

    /// The paths world rank `rank` writes (rank 0 writes the metrics, TensorBoard files, gradient dump and
    /// both checkpoint levels; every rank its trace and offload files).
    static func targets(config: TesseraConfig, rank: Int, options: TrainerOptions) -> [Target] {
        let derived = { (key: String, name: String) in "job.output_dir (\(key) is empty, so \(name) goes under it)" }
        var out: [Target] = []
        if rank == 0 {
            let m = config.metrics
            out.append(Target(key: m.path.isEmpty ? derived("metrics.path", "metrics.jsonl") : "metrics.path",
                              path: config.metricsPath, file: true))
            if m.tensorboard {
                out.append(Target(key: m.tensorboardDir.isEmpty ? derived("metrics.tensorboard_dir", "tensorboard/") : "metrics.tensorboard_dir",
                                  path: config.tensorboardDir, file: false))
            }
            if let path = options.dumpGradientsPath { out.append(Target(key: "--dump-grads", path: path, file: true)) }
            if config.checkpoint.every > 0 {
                out.append(Target(key: config.checkpoint.dir.isEmpty ? derived("checkpoint.dir", "checkpoints/") : "checkpoint.dir",
                                  path: config.checkpointDir, file: false))
            }
            if config.checkpoint.every > 0, !config.checkpoint.persistDir.isEmpty {
                out.append(Target(key: "checkpoint.persist_dir", path: config.checkpoint.persistDir, file: false))
            }
        }
        if let dir = options.traceDir { out.append(Target(key: "--trace", path: dir, file: false)) }
        let mem = config.memory
        if mem.policy == "offload" || mem.policy == "auto" || mem.layerPolicy.contains("offload") {
            out.append(Target(key: mem.offloadDir.isEmpty ? derived("memory.offload_dir", "offload/") : "memory.offload_dir",
                              path: config.offloadDir, file: false))
        }
        return out
    }

    /// Checks this rank's paths; the first problem decides, and every rank learns it (the lowest
    /// failing rank's message is broadcast), so that all stop together with the same message.
    static func check(config: TesseraConfig, runtime: MPIRuntime?, options: TrainerOptions) throws {
        let rank = runtime?.rank ?? 0, size = runtime?.size ?? 1
        var problem: String?
        for t in targets(config: config, rank: rank, options: options) {
            if let p = self.problem(t) { problem = size > 1 ? "rank \(rank): " + p : p; break }
        }
        if let runtime, size > 1, runtime.size == config.parallelism.pp * config.parallelism.dp * config.parallelism.ring
            * config.parallelism.ulysses {
            let world = runtime.worldCommunicator
            let first = Int(try world.allreduce(Int32(problem == nil ? size : rank), op: .min, label: "output paths"))
            guard first < size else { return }
            var bytes = Array((problem ?? "").utf8)
            var count = Int32(bytes.count)
            try world.broadcast(&count, count: 1, root: first, label: "output path problem (length)")
            if rank != first { bytes = [UInt8](repeating: 0, count: Int(count)) }
            try bytes.withUnsafeMutableBufferPointer { b in
                if let base = b.baseAddress { try world.broadcast(base, count: b.count, root: first, label: "output path problem") }
            }
            problem = String(decoding: bytes, as: UTF8.self)
        }
        if let problem { throw TrainingError(problem) }
    }

    /// Why a target cannot be written (its directory made, the file not a directory), nil when it can.
    static func problem(_ t: Target) -> String? {
        let dir = t.file ? (t.path as NSString).deletingLastPathComponent : t.path
        let what = t.file ? "a file that can be created" : "a writable directory (or a path where one can be created)"
        let reason: String?
        if t.file, isDirectory(t.path) {
            reason = "it is a directory"
        } else {
            reason = usable(dir.isEmpty ? "." : dir)
        }
        return reason.map { "\(t.key) = '\(t.path)': \($0); expected \(what)" }
    }

    /// Whether a directory can be made at `path` without making it (no side effects): its deepest existing
    /// ancestor must be a writable directory. Nil when it can.
    static func usable(_ path: String) -> String? {
        var p = ConfigPaths.normalized(path)
        while true {
            var st = stat()
            if stat(p, &st) == 0 {
                if (st.st_mode & S_IFMT) != S_IFDIR { return "'\(p)' is a file, not a directory" }
                return access(p, W_OK | X_OK) == 0 ? nil : "the directory '\(p)' is not writable: \(String(cString: strerror(errno)))"
            }
            if p == "/" { return "no directory on the path exists" }
            p = (p as NSString).deletingLastPathComponent
        }
    }

    static func isDirectory(_ path: String) -> Bool {
        var st = stat()
        return stat(path, &st) == 0 && (st.st_mode & S_IFMT) == S_IFDIR
    }

    /// `mkdir -p`, explaining a failure: which component is not a directory, or which cannot be made or
    /// written and why (the system's reason). Nil when `path` is a writable directory afterwards.
    static func makeDirectory(_ path: String) -> String? {
        var prefix = path.hasPrefix("/") ? "" : "."
        for part in path.split(separator: "/", omittingEmptySubsequences: true) {
            prefix += "/" + part
            var st = stat()
            if stat(prefix, &st) == 0 {
                if (st.st_mode & S_IFMT) != S_IFDIR { return "'\(display(prefix))' is a file, not a directory" }
                continue
            }
            if mkdir(prefix, 0o777) != 0, errno != EEXIST {
                return "cannot create the directory '\(display(prefix))': \(String(cString: strerror(errno)))"
            }
        }
        if access(path, W_OK | X_OK) != 0 {
            return "the directory '\(path)' is not writable: \(String(cString: strerror(errno)))"
        }
        return nil
    }

    private static func display(_ prefix: String) -> String { prefix.hasPrefix("./") ? String(prefix.dropFirst(2)) : prefix }
}
