import Foundation
import TesseraMemory
import TesseraTimeline

/// One logged step: what the progress line shows, the metrics file records and TensorBoard plots.
public struct StepRecord: Sendable {
    public var step: Int, steps: Int
    public var loss: Double, lr: Double, gradNorm: Double
    public var tokensPerSecond: Double, mfu: Double, stepSeconds: Double
    public var peakRSSBytes: Int
    public var etaSeconds: Double
    public var valLoss: Double?
    /// Compute / communication wait / idle seconds per step since the previous logged step, over ranks.
    public var phases: PhaseSummary? = nil
    /// Bytes of AdamW moments on this rank (falls by the data-parallel degree under ZeRO-1).
    public var optimizerStateBytes: Int = 0
    /// Activation memory per rank (at log steps).
    public var activations: ActivationSummary? = nil
    /// Steps so far whose update was dropped as non-finite (`training.on_nonfinite = "skip"`).
    public var skippedSteps = 0
    /// Variable-length documents: what the step's plan did (nil with fixed rows).
    public var documents: DocumentStepStats? = nil
}

/// Activation memory of one step on this rank.
public struct ActivationStep: Sendable {
    /// Most activation bytes held at once (saved tensors, recompute buffer, offload staging).
    public var peakBytes = 0
    /// Time recomputing blocks before their backward.
    public var recomputeSeconds = 0.0
    /// Offload I/O of the step (nil without an offload tier) and what the tier still holds after it.
    public var offload: OffloadTier.Stats?
    public var tierHeldBytes = 0
    /// Bytes sent over the sequence-parallel groups (ring key/value blocks, Ulysses all-to-alls).
    public var sequenceBytes = 0
    /// Bytes sent to neighbour pipeline stages (activations and their gradients).
    public var pipelineBytes = 0
    public init() {}
}

/// Activation memory over the ranks, for the log interval's last step.
public struct ActivationSummary: Sendable, Equatable {
    /// Peak activation bytes of each rank (world rank order) and rank 0's prediction.
    public var peakBytes: [Int]
    public var predictedBytes: [Int]
    public var recomputeSecondsMax: Double
    /// Offload totals over the ranks: bytes written and read, I/O thread time, compute time spent waiting.
    public var offloadWritten: Int, offloadRead: Int, offloadIOSeconds: Double, offloadWaitSeconds: Double
    /// Bytes left on the tiers after the step (0 unless something leaked).
    public var tierHeldBytes: Int
    /// Most bytes any rank sent over its sequence-parallel groups in the step.
    public var sequenceBytesMax: Int
    /// Most bytes any rank sent to its neighbour pipeline stages in the step.
    public var pipelineBytesMax: Int
    /// Each rank's sequence-parallel buffers as allocated, and as the memory preflight predicts them.
    public var sequenceBufferBytes: [Int] = [], predictedSequenceBufferBytes: [Int] = []
    public var offloadHiddenFraction: Double {
        offloadIOSeconds > 0 ? max(0, 1 - offloadWaitSeconds / offloadIOSeconds) : 1
    }
}

public struct PhaseSummary: Sendable, Equatable {
    public var ranks: Int
    public var computeMean: Double, computeMax: Double
    public var commMean: Double, commMax: Double
    public var idleMean: Double, idleMax: Double
    /// Pipeline parallelism: the part of the communication wait spent waiting for a neighbour stage's
    /// activation or gradient (the bubble, plus transfers not yet done); nil without a pipeline.
    public var pipelineWaitMean: Double? = nil, pipelineWaitMax: Double? = nil
}

extension PhaseTotals {
    mutating func add(_ o: PhaseTotals) {
        wallNs += o.wallNs; computeNs += o.computeNs; commNs += o.commNs
    }
}

/// Rank 0's outputs: the progress line, the JSON-lines metrics file and TensorBoard scalars.
public final class MetricsSink {
    let file: FileHandle?
    let tensorboard: TensorBoardWriter?

    /// `keepThrough`: a resumed run keeps the records of steps up to the checkpoint's step from an existing
    /// metrics file (the history before the interruption) and replaces the rest.
    public init(metricsPath: String?, tensorboardDir: String?, keepThrough: Int? = nil) throws {
        if let path = metricsPath {
            let key = "metrics.path (or job.output_dir + /metrics.jsonl when it is empty) = '\(path)'"
            if let why = OutputPaths.makeDirectory((path as NSString).deletingLastPathComponent.isEmpty ? "."
                                                   : (path as NSString).deletingLastPathComponent) {
                throw TrainingError("\(key): \(why); expected a file in a writable directory")
            }
            var kept = Data()
            if let keepThrough, keepThrough > 0, let old = try? String(contentsOfFile: path, encoding: .utf8) {
                for line in old.split(separator: "\n") {
                    guard let obj = try? JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any] else { continue }
                    let step = (obj["step"] as? Int) ?? ((obj["checkpoint"] as? [String: Any])?["step"] as? Int) ?? Int.max
                    if step <= keepThrough { kept.append(Data((line + "\n").utf8)) }
                }
            }
            guard FileManager.default.createFile(atPath: path, contents: kept),
                  let h = FileHandle(forWritingAtPath: path) else {
                throw TrainingError("\(key): cannot create the metrics file"
                                    + (OutputPaths.isDirectory(path) ? " (it is a directory)" : "") + "; expected a file that can be created")
            }
            h.seekToEndOfFile()
            file = h
        } else { file = nil }
        tensorboard = try tensorboardDir.map { try TensorBoardWriter(directory: $0) }
    }

    /// One line per checkpoint: {"checkpoint": {...}} (no "loss": readers of step records skip it).
    public func recordCheckpoint(_ e: CheckpointEvent) {
        var c: [String: Any] = ["step": e.step, "mode": e.mode, "path": e.path, "blocked_s": e.blockedSeconds,
                                "durable_s": e.durableSeconds, "bytes": e.bytes]
        if let p = e.persistedPath { c["persisted_path"] = p; c["persisted_s"] = e.persistedSeconds ?? 0 }
        let obj: [String: Any] = ["checkpoint": c]
        if let data = try? JSONSerialization.data(withJSONObject: obj, options: [.sortedKeys]) {
            file?.write(data + Data("\n".utf8))
        }
    }

    public func record(_ r: StepRecord) {
        var obj: [String: Any] = [
            // JSON has no NaN or infinity: a non-finite loss or norm is written as null.
            "step": r.step, "loss": r.loss.isFinite ? r.loss : NSNull(), "lr": r.lr,
            "grad_norm": r.gradNorm.isFinite ? r.gradNorm : NSNull(), "tokens_per_s": r.tokensPerSecond,
            "mfu": r.mfu, "step_s": r.stepSeconds, "peak_rss_bytes": r.peakRSSBytes,
            "optimizer_state_bytes": r.optimizerStateBytes, "skipped_steps": r.skippedSteps,
        ]
        if let v = r.valLoss { obj["val_loss"] = v }
        if let d = r.documents {
            obj["documents"] = ["sequences": d.sequences, "tokens": d.tokens, "sequence_tokens": d.sequenceTokens, "items": d.items, "ring_items": d.ringItems, "ring_sizes": d.ringSizes, "idle_ranks": d.idleRanks,
                                "longest": d.longest, "attention_max_mean": d.attentionImbalance,
                                "tokens_max_mean": d.tokenImbalance, "work_max_mean": d.workImbalance,
                                "padding": d.paddingFraction, "flops": d.flops, "pair_per_token": d.pairPerToken] as [String: Any]
        }
        if let a = r.activations {
            obj["activations"] = ["peak_bytes": a.peakBytes, "predicted_bytes": a.predictedBytes,
                                  "peak_bytes_max": a.peakBytes.max() ?? 0, "recompute_s_max": a.recomputeSecondsMax,
                                  "offload_written_bytes": a.offloadWritten, "offload_read_bytes": a.offloadRead,
                                  "offload_io_s": a.offloadIOSeconds, "offload_wait_s": a.offloadWaitSeconds,
                                  "offload_hidden": a.offloadHiddenFraction, "tier_held_bytes": a.tierHeldBytes,
                                  "sequence_bytes_max": a.sequenceBytesMax,
                                  "pipeline_bytes_max": a.pipelineBytesMax, "sequence_buffer_bytes": a.sequenceBufferBytes,
                                  "predicted_sequence_buffer_bytes": a.predictedSequenceBufferBytes] as [String: Any]
        }
        if let p = r.phases {
            obj["phases"] = ["ranks": p.ranks, "compute_s_mean": p.computeMean, "compute_s_max": p.computeMax,
                             "comm_s_mean": p.commMean, "comm_s_max": p.commMax, "idle_s_mean": p.idleMean,
                             "idle_s_max": p.idleMax] as [String: Any]
            if let m = p.pipelineWaitMean, let x = p.pipelineWaitMax {
                obj["phases"] = (obj["phases"] as! [String: Any]).merging(["pipeline_wait_s_mean": m, "pipeline_wait_s_max": x]) { a, _ in a }
            }
        }
        if let file, let data = try? JSONSerialization.data(withJSONObject: obj, options: [.sortedKeys]) {
            file.write(data + Data("\n".utf8))
        }
        var scalars: [(String, Double)] = [("train/loss", r.loss), ("train/lr", r.lr), ("train/grad_norm", r.gradNorm),
                                           ("perf/tokens_per_s", r.tokensPerSecond), ("perf/mfu", r.mfu),
                                           ("perf/step_s", r.stepSeconds)]
        if let v = r.valLoss { scalars.append(("val/loss", v)) }
        if let a = r.activations { scalars.append(("memory/activation_peak_mib_max", Double(a.peakBytes.max() ?? 0) / 1_048_576)) }
        if let p = r.phases {
            scalars += [("phases/compute_s_max", p.computeMax), ("phases/comm_s_max", p.commMax), ("phases/idle_s_max", p.idleMax)]
            if let x = p.pipelineWaitMax { scalars.append(("phases/pipeline_wait_s_max", x)) }
        }
        tensorboard?.scalars(scalars, step: r.step)
        tensorboard?.flush()
    }

    public func close() {
        try? file?.close()
        tensorboard?.close()
    }

    /// The per-step phase breakdown printed under the progress line of multi-rank jobs.
    public static func phaseLine(_ p: PhaseSummary) -> String {
        let ms = { (x: Double) in fmt(1000 * x, 1) }
        return "    per step, mean/max over \(p.ranks) ranks: compute \(ms(p.computeMean))/\(ms(p.computeMax)) ms  "
            + "comm wait \(ms(p.commMean))/\(ms(p.commMax)) ms"
            + (p.pipelineWaitMean.map { "  (of which waiting for pipeline neighbours \(ms($0))/\(ms(p.pipelineWaitMax ?? 0)) ms)" } ?? "")
            + "  idle \(ms(p.idleMean))/\(ms(p.idleMax)) ms"
    }

    /// The activation line printed under the progress line.
    public static func activationLine(_ a: ActivationSummary) -> String {
        var s = "    activations: peak " + (a.peakBytes.count == 1 ? "\(mib(a.peakBytes[0])) MiB"
            : "\(mib(a.peakBytes.min() ?? 0))–\(mib(a.peakBytes.max() ?? 0)) MiB per rank")
        let pred = a.predictedBytes
        s += " (predicted " + (pred.count == 1 ? "\(mib(pred[0])) MiB)" : "\(mib(pred.min() ?? 0))–\(mib(pred.max() ?? 0)) MiB)")
        if a.recomputeSecondsMax > 0 { s += "  recompute \(fmt(1000 * a.recomputeSecondsMax, 1)) ms" }
        if a.offloadWritten > 0 || a.offloadRead > 0 {
            s += "  offload \(mib(a.offloadWritten)) MiB out, \(mib(a.offloadRead)) MiB in, "
            s += "\(fmt(100 * a.offloadHiddenFraction, 0))% of \(fmt(1000 * a.offloadIOSeconds, 1)) ms I/O hidden"
        }
        return s
    }

    /// The progress line printed at each log interval.
    public static func line(_ r: StepRecord) -> String {
        let width = String(r.steps).count
        var s = "step \(String(r.step).leftPad(width))/\(r.steps)  loss \(fmt(r.loss, 4))"
        if let v = r.valLoss { s += "  val \(fmt(v, 4))" }
        s += "  lr \(sci(r.lr))  norm \(fmt(r.gradNorm, 3))  \(fmt(r.tokensPerSecond, 0)) tok/s"
        s += "  MFU \(fmt(100 * r.mfu, 1))%  \(fmt(1000 * r.stepSeconds, 0)) ms/step"
        s += "  mem \(fmt(Double(r.peakRSSBytes) / 1_048_576, 0)) MiB  ETA \(duration(r.etaSeconds))"
        if r.skippedSteps > 0 { s += "  skipped \(r.skippedSteps)" }
        return s
    }
}

/// Peak resident set size of this process, in bytes.
public func peakRSSBytes() -> Int {
    var u = rusage()
    getrusage(RUSAGE_SELF.rawValue, &u)
    return Int(u.ru_maxrss) * 1024
}

public struct TrainingError: Error, CustomStringConvertible {
    public let description: String
    public init(_ d: String) { description = d }
}

package func fmt(_ x: Double, _ digits: Int) -> String { String(format: "%.\(digits)f", x) }
/// Bytes as MiB with `digits` decimals.
package func mib(_ bytes: Int, _ digits: Int = 1) -> String { fmt(Double(bytes) / 1_048_576, digits) }
func sci(_ x: Double) -> String { String(format: "%.2e", x) }
func duration(_ s: Double) -> String {
    guard s.isFinite else { return "?" }
    let t = Int(s.rounded())
    return t >= 3600 ? "\(t / 3600)h\(String(format: "%02d", t % 3600 / 60))m" : t >= 60 ? "\(t / 60)m\(String(format: "%02d", t % 60))s" : "\(t)s"
}
extension String {
    package func leftPad(_ n: Int) -> String { count >= n ? self : String(repeating: " ", count: n - count) + self }
}
