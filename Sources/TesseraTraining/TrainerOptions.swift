// The switches of one run that are not config: observation (traces, gradient dumps) and debugging (fault
// injection, slow checkpoint copies). `tessera train` sets them from its flags.

import Foundation
import TesseraModel

/// Debugging and observation switches of a run (command-line flags, not config).
public struct TrainerOptions: Sendable {
    /// Write Chrome trace files (trace-rank<R>.json) into this directory.
    public var traceDir: String?
    /// Make one rank fail on purpose (tests of the failure paths).
    public var fault: FaultInjection?
    /// Write the reduced gradients of step 1 (rank 0, full model, safetensors) to this file.
    public var dumpGradientsPath: String?
    public var measurePeak = true
    /// Debugging: a lazy checkpoint's writer thread sleeps this long before copying each piece, so that the
    /// next optimizer step has to wait for pieces not copied yet (`--checkpoint-copy-delay-ms`).
    public var checkpointCopyDelayMs = 0.0
    public init(traceDir: String? = nil, fault: FaultInjection? = nil, dumpGradientsPath: String? = nil,
                measurePeak: Bool = true) {
        self.traceDir = traceDir; self.fault = fault; self.dumpGradientsPath = dumpGradientsPath
        self.measurePeak = measurePeak
    }
}

/// `--fault-inject MODE:RANK:STEP`: at step STEP (1-based) world rank RANK, after its backward pass and before
/// the gradient reduction, exits (`exit`, status 3, without MPI_Finalize) or stops responding (`hang`); or,
/// before its backward pass, writes NaN into its gradient of the first block it holds (`nan`: the non-finite
/// guard's tests).
public struct FaultInjection: Sendable, Equatable {
    public enum Mode: String, Sendable { case exit, hang, nan }
    public let mode: Mode, rank: Int, step: Int

    public init(parsing spec: String) throws {
        let f = spec.split(separator: ":").map(String.init)
        guard f.count == 3, let mode = Mode(rawValue: f[0]), let rank = Int(f[1]), let step = Int(f[2]), rank >= 0, step >= 1 else {
            throw TrainingError("--fault-inject expects MODE:RANK:STEP with MODE exit, hang or nan, RANK >= 0, STEP >= 1; got '\(spec)'")
        }
        self.mode = mode; self.rank = rank; self.step = step
    }

    /// The tensor `nan` poisons on a rank holding `stage`: the MLP input weight of its first block.
    public static func poisonedTensor(stage: ModelStage, family: ModelFamily) -> String {
        family == .llama ? "model.layers.\(stage.layers[0]).mlp.up_proj.weight" : "transformer.h.\(stage.layers[0]).mlp.c_fc.weight"
    }

    /// Applies an `exit` or `hang` fault if it is due at `step` (0-based) on `rank`: after the backward pass.
    func apply(step: Int, rank: Int) {
        guard self.step == step + 1, self.rank == rank, mode != .nan else { return }
        print("tessera: rank \(rank): fault injection: \(mode == .exit ? "exiting" : "hanging") at step \(self.step)")
        fflush(nil)
        if mode == .exit { exit(3) }
        while true { sleep(60) }
    }

    /// Applies a `nan` fault if it is due: before the backward pass, so the NaN is accumulated into and
    /// reduced with the gradient like any value the backward could have produced.
    func poison(step: Int, rank: Int, grads: ParameterSet, stage: ModelStage, family: ModelFamily) {
        guard self.step == step + 1, self.rank == rank, mode == .nan else { return }
        let tensor = Self.poisonedTensor(stage: stage, family: family)
        print("tessera: rank \(rank): fault injection: NaN in the gradient of \(tensor) at step \(self.step)")
        fflush(nil)
        grads[tensor][0] = .nan
    }
}
