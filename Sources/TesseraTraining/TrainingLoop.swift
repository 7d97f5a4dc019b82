// The loop over steps: train a step, deal with a non-finite one (`training.on_nonfinite`), evaluate when due,
// log and record metrics, agree on stop signals, checkpoint. Everything that is a collective happens at the
// same steps on every rank, decided from values every rank holds.

import Foundation
import TesseraCheckpoint
import TesseraComm
import TesseraModel
import TesseraPipeline
import TesseraTimeline

extension Trainer {
    /// Runs all steps; rank 0 prints progress and writes metrics. Returns the step records. A run stopped by
    /// a non-finite step sets `failure`.
    @discardableResult
    public func run(metrics: MetricsSink?) -> [StepRecord] {
        let t = config.training
        let flopsPerStep = model.config.flopsPerToken(seqLen: t.seqLen) * Double(tokensPerStep)
        if isRank0 { log(banner()) }
        var stepTimes: [Double] = []
        var interval = PhaseTotals(), intervalSteps = 0, intervalPipelineWaitNs: UInt64 = 0
        StopSignal.install()
        for step in startStep..<t.steps {
            Watchdog.shared?.step = step + 1
            timeline.beginStep()
            let t0 = DispatchTime.now().uptimeNanoseconds
            let outcome = runStep(step)
            let dt = Double(DispatchTime.now().uptimeNanoseconds - t0) / 1e9
            timeline.endStep()
            interval.add(timeline.step); intervalSteps += 1
            intervalPipelineWaitNs += pipeline?.waitNs ?? 0
            stepTimes.append(dt)
            // A non-finite step is logged and recorded like any other (its loss or norm shows what went wrong),
            // then either stops the run before any checkpoint of it, or goes on with its update dropped.
            var stop: String? = nil
            if let problem = outcome.nonFinite { stop = handleNonFinite(problem, step: step) } else { consecutiveSkips = 0 }
            let last = step == t.steps - 1
            let doEval = stop == nil && t.evalEvery > 0 && ((step + 1) % t.evalEvery == 0 || last)
            let val = doEval ? evaluate() : nil
            let recent = stepTimes.suffix(10)
            let meanStep = recent.reduce(0, +) / Double(recent.count)
            // Packed rows and variable-length documents: each document's attention at its own length (not the row's);
            // variable-length documents: the step's own tokens.
            let documents = documentSteps?.last
            let stepTokens = documents?.tokens ?? tokensPerStep
            let stepFlops = documents?.flops ?? (data.train.packer == nil ? flopsPerStep
                : data.train.flops(step: step, globalBatch: t.batchSize) { model.config.flopsPerToken(seqLen: $0) })
            var record = StepRecord(step: step + 1, steps: t.steps, loss: outcome.loss, lr: schedule.lr(step),
                                    gradNorm: outcome.gradNorm, tokensPerSecond: Double(stepTokens) / dt,
                                    mfu: sgemmPeak > 0 ? stepFlops / dt / (sgemmPeak * Double(worldSize)) : 0, stepSeconds: dt,
                                    peakRSSBytes: peakRSSBytes(), etaSeconds: meanStep * Double(t.steps - step - 1), valLoss: val)
            record.optimizerStateBytes = optimizer.stateBytes
            record.skippedSteps = skippedSteps
            record.documents = documents
            // Log steps are the same on every rank, so the phase summary (a collective) is too.
            if (step + 1) % t.logEvery == 0 || step == 0 || last || val != nil || outcome.nonFinite != nil {
                record.phases = phaseSummary(interval, steps: intervalSteps, pipelineWaitNs: intervalPipelineWaitNs)
                record.activations = activationSummary()
                interval = PhaseTotals(); intervalSteps = 0; intervalPipelineWaitNs = 0
                if isRank0 {
                    log(MetricsSink.line(record))
                    if let ph = record.phases, ph.ranks > 1 { log(MetricsSink.phaseLine(ph)) }
                    if let a = record.activations, memory.policies.contains(where: { $0 != .keep }) || memory.auto {
                        log(MetricsSink.activationLine(a))
                    }
                    metrics?.record(record)
                }
            }
            history.append(record)
            if let stop { failure = stop; break }
            let signal = agreedStopSignal(step)
            checkpointAfter(step: step + 1, force: signal != 0, metrics: metrics)
            if signal != 0 { stoppedBy = signal; break }
        }
        // Saves of earlier (good) steps still in flight commit; a failed step was never saved.
        orAbort(t.steps) { try checkpointer.finish() }
        reportCheckpoints(metrics)
        if let s = stoppedBy, isRank0, let saved = checkpointer.events.last {
            log("tessera: \(StopSignal.name(s)) received: stopped after step \(saved.step), saved \(saved.path); exiting")
        }
        if let failure, isRank0 {
            let kept = checkpointer.events.last.map { "; the last checkpoint is \($0.path) (step \($0.step))" } ?? ""
            FileHandle.standardError.write(Data("tessera: \(failure)\(kept)\n".utf8))
        }
        writeTrace()
        if failure == nil, pipeline != nil && config.sample.tokens > 0, let whole = gatherWholeModel(model.params) {
            let m = Transformer.make(config: model.config, seed: 0)
            m.precision = model.precision
            m.params.storage.ptr.update(from: whole.storage.ptr, count: whole.count)
            wholeModel = m
        }
        return history
    }

    // MARK: checkpoints

    /// After step `done`'s optimizer step: saves when due (every `checkpoint.every` steps, the last step, or
    /// `force`), else settles the blocked time of a lazy save taken a step ago (collectives, at the same steps
    /// on every rank).
    public func checkpointAfter(step done: Int, force: Bool, metrics: MetricsSink?) {
        let c = config.checkpoint, t = config.training
        let due = force || (c.every > 0 && (done % c.every == 0 || done == t.steps))
        orAbort(done - 1) {
            if due {
                try timeline.work("checkpoint save") { try checkpointer.save(step: done, state: checkpointState(step: done)) }
            } else {
                try checkpointer.settle()
            }
        }
        reportCheckpoints(metrics)
    }

    /// What the manifest records besides tensors: where training continues and what it depends on.
    func checkpointState(step: Int) -> [String: String] {
        let t = config.training
        return ["step": "\(step)", "optimizer_step": "\(optimizer.step)", "seed": "\(t.seed)",
                "data_next_step": "\(step)", "tokens_seen": "\(tokensSeen(before: step))",
                "next_lr": "\(schedule.lr(step))", "data": "batches are a function of (seed, step); next is step \(step)"]
    }

    func reportCheckpoints(_ metrics: MetricsSink?) {
        let done = checkpointer.collect()
        guard isRank0 else { return }
        for e in done {
            log("checkpoint: \(e.path) (\(e.mode)): \(fmt(Double(e.bytes) / 1_048_576, 1)) MiB; training blocked "
                + "\(fmt(e.blockedSeconds * 1000, 1)) ms (longest rank); durable \(fmt(e.durableSeconds, 3)) s after its step"
                + (e.persistedPath.map { "; copied to \($0) after \(fmt(e.persistedSeconds ?? 0, 3)) s" } ?? ""))
            metrics?.recordCheckpoint(e)
        }
    }

    /// The stop signal any rank has received (0: none); a collective, so every rank stops at the same step.
    func agreedStopSignal(_ step: Int) -> Int32 {
        let mine = StopSignal.received
        guard let world = mesh?.world, world.size > 1 else { return mine }
        return orAbort(step) { try world.allreduce(mine, op: .max, label: "stop signal") }
    }

    func writeTrace() {
        guard let dir = options.traceDir, let trace = timeline.trace else { return }
        do {
            let path = try trace.write(directory: dir)
            if isRank0 { log("trace: \(path) (one file per rank; open in https://ui.perfetto.dev)") }
        } catch { log("tessera: rank \(runtime?.rank ?? 0): cannot write the trace to \(dir): \(error)") }
    }
}
