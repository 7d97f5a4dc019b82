// `--resume`: continue from a checkpoint written by any layout. Every rank reads its own slice of each global
// tensor from whichever shards hold it; the ranks agree that each loaded the same step, or fall back together.

import Foundation
import TesseraCheckpoint
import TesseraComm

extension Trainer {
    /// `--resume auto|PATH`: restores parameters, optimizer state and the step from the newest checkpoint
    /// that loads on every rank (auto: under `checkpoint.dir`; PATH: one checkpoint, or a directory of them).
    /// A checkpoint that fails (a checksum, a missing file) is reported and the previous one tried. Returns
    /// what happened, for the log. Every rank calls it.
    public func resume(_ spec: String) throws -> String {
        let single = spec != "auto" && FileManager.default.fileExists(atPath: spec + "/manifest.json")
        let root = spec == "auto" ? config.checkpointDir : spec
        var isDirectory: ObjCBool = false
        if !single, FileManager.default.fileExists(atPath: root, isDirectory: &isDirectory),
           !isDirectory.boolValue || access(root, R_OK | X_OK) != 0 {
            throw CheckpointError("--resume \(spec): \(root) is " + (isDirectory.boolValue ? "not readable" : "a file")
                                  + "; expected a directory of checkpoints")
        }
        let candidates = single ? [spec] : CheckpointStore.candidates(root: root)
        if candidates.isEmpty {
            if spec == "auto" { return "resume: no checkpoint under \(root); starting from step 0" }
            throw CheckpointError("--resume \(spec): no checkpoint there (expected a step-N directory with manifest.json, or a directory of them)")
        }
        let rank = runtime?.rank ?? 0
        var notes: [String] = []
        for c in candidates {
            var failure: String?
            var manifest: CheckpointManifest?
            do {
                let reader = try CheckpointReader(path: c)
                manifest = reader.manifest
                try Checkpointer.checkCompatible(reader.manifest, path: c, config: config)
                try Checkpointer.restore(from: reader, params: model.params, optimizer: optimizer)
                model.parametersChanged()
            } catch let e as CheckpointIncompatible {
                throw e  // the config, not the checkpoint: no fallback
            } catch { failure = "\(error)" }
            var ok: Int32 = failure == nil ? 1 : 0
            if let world = mesh?.world, world.size > 1 { ok = try world.allreduce(ok, op: .min, label: "resume") }
            if ok == 1, let manifest {
                guard let step = Int(manifest.state["step"] ?? ""), let optStep = Int(manifest.state["optimizer_step"] ?? "") else {
                    throw CheckpointError("checkpoint \(c): manifest.json has no step/optimizer_step state")
                }
                // Every rank must have loaded the same step (a directory each rank sees differently would not).
                if let world = mesh?.world, world.size > 1 {
                    let lo = try world.allreduce(Int64(step), op: .min, label: "resume step"), hi = try world.allreduce(Int64(step), op: .max, label: "resume step")
                    guard lo == hi else {
                        throw CheckpointError("resume: the ranks loaded checkpoints of different steps (\(lo) and \(hi)) under \(root): "
                                              + "checkpoint.dir must be one directory every rank sees the same")
                    }
                }
                resumedStep = step
                startStep = min(step, config.training.steps)
                optimizer.step = optStep
                let from = manifest.mesh.sorted { $0.key < $1.key }.map { "\($0.key) \($0.value)" }.joined(separator: ", ")
                notes.append("resume: continuing from \(c) (step \(step), written by \(from))")
                if step >= config.training.steps { notes.append("resume: step \(step) >= training.steps = \(config.training.steps): nothing left to train") }
                return notes.joined(separator: "\n")
            }
            if let failure { log("tessera: rank \(rank): cannot load checkpoint \(c): \(failure)") }
            notes.append("resume: checkpoint \(c) failed to load (checksum or missing data; see the error above)"
                         + (single ? "" : "; falling back to the previous checkpoint"))
            if single { break }
        }
        throw CheckpointError((notes + ["resume: no usable checkpoint " + (single ? "at \(spec)" : "under \(root)")]).joined(separator: "\n"))
    }
}
