// What rank 0 prints before the first step (the run's shape, mesh, memory and machine) and the text sampled
// from the trained model after the last.

import Foundation
import TesseraComm
import TesseraKernels
import TesseraModel

extension Trainer {
    /// The start-up banner: model, batch, data, mesh, optimizer state, reduction, MPI, memory, machine warnings.
    func banner() -> String {
        let m = model.config, t = config.training
        var s = "tessera: \(config.job.name): \(m.familyName) \(m.nLayer) layers, d \(m.dModel), \(m.nHead) heads"
        if m.family == .llama { s += " (\(m.nKVHead) key/value), MLP \(m.intermediate)" + (m.tied ? ", tied head" : "") }
        s += ", vocab \(m.vocabSize), "
        s += "\(fmt(Double(m.parameterCount) / 1e6, 2))M parameters\n"
        s += data.documents != nil ? "  up to \(tokensPerStep) tokens/step (batch \(t.batchSize) × seq \(t.seqLen)) in sequences of up to \(t.seqLen); "
            : "  batch \(t.batchSize) × seq \(t.seqLen) = \(tokensPerStep) tokens/step in \(t.microbatches) micro-batch(es) of \(microBatch); "
        s += "\(t.steps) steps; \(Threads.count) thread(s); "
        s += "sgemm peak \(fmt(sgemmPeak / 1e9, 0)) GFLOP/s per rank (OpenBLAS \(BLAS.coreName); MFU is against \(worldSize) × that)\n"
        s += "  precision: \(model.precision.rawValue): \(model.precision.productsDescription)\n"
        s += "  attention kernel: \(BlockProduct.isaDescription)\n"
        if !config.model.initFrom.isEmpty { s += "  weights: from the Hugging Face directory \(config.model.initFrom) (model.init_from)\n" }
        s += "  data: \(data.train.source.count) training tokens from \(data.train.source.description)"
        if let v = data.val { s += "; \(v.source.count) validation tokens" }
        else if let v = data.valDocuments { s += "; \(v.source.count) validation tokens" }
        if let d = data.documents {
            s += "\n  packing: variable-length documents (data.max_tokens_per_rank = \(config.data.maxTokensPerRank)): each step whole "
                + "documents up to \(tokensPerStep) tokens, \(d.documents) documents (before token "
                + "\(config.data.documentToken >= 0 ? "\(config.data.documentToken)" : "<|endoftext|>")), \(d.splitDocuments) longer than "
                + "seq_len \(t.seqLen) split, \(d.pieces.count) sequences; schedule: \(config.data.schedule)"
                + (config.data.schedule == "aware" ? " (short sequences whole on one rank, long ones as rings over aligned groups of ranks)" : "")
        }
        if let packer = data.train.packer {
            s += "\n  packing: documents (block-causal attention, positions restart per document): \(packer.documents) documents "
                + "(before token \(config.data.documentToken >= 0 ? "\(config.data.documentToken)" : "<|endoftext|>")) in \(packer.rows.count) rows "
                + "of \(packer.rowLength) tokens, \(packer.splitDocuments) split (longer than a row), "
                + "\(fmt(100 * packer.paddingFraction, 1))% padding"
        }
        if let mesh {
            s += "\n  mesh: \(mesh.shape) = \(mesh.shape.size) rank(s); "
                + (data.documents != nil ? "each step's plan gives every rank its sequences" : "\(data.localBatch) sequence(s) per data-parallel rank")
            if let placed = mesh.placementReport { s += "\n" + placed }
            if let layout = pipelineLayout {
                s += "\n" + layout.describe(microbatches: t.microbatches)
                if let p = pipeline { s += "\n  pipeline messages: \(p.wire.rawValue) activations and gradients" }
            }
            if let l = sequenceLayout {
                s += "; \(l.local) of \(l.seqLen) tokens per sequence on each rank"
                s += l.ring > 1 ? " (ring: \(2 * l.ring) zigzag chunks of \(l.chunk)" + (l.ulysses > 1 ? "; Ulysses inside each ring position)" : ")") : " (Ulysses)"
            }
        }
        if let dpl = dataParallel, dpl.zero {
            s += "\n  optimizer state: \(mib(optimizer.stateBytes, 2)) MiB per rank (ZeRO-1 over \(dpl.group.size) data-parallel "
            s += "rank(s); unsharded \(mib(unshardedOptimizerBytes, 2)) MiB)"
        } else {
            s += "\n  optimizer state: \(mib(optimizer.stateBytes, 2)) MiB per rank"
        }
        if let dpl = dataParallel {
            s += "\n  gradient reduction: \(dpl.buckets.count) bucket(s) of ≥ \(fmt(config.parallelism.bucketMb, 1)) MiB, "
            s += dpl.zero ? "reduce-scatter + parameter allgather" : "allreduce"
            s += data.documents != nil ? ", overlapped with each rank's last item's backward pass"
                : ", overlapped with the last micro-batch's backward pass"
        }
        if let r = runtime {
            s += "\n  MPI: \(r.size) rank(s), thread level \(r.threadLevelName) granted (MPI_THREAD_MULTIPLE asked)"
            s += "; shared-memory single copy: \(MPIRuntime.singleCopyMechanism)"
        }
        s += "\n" + memory.describe()
        if let w = MachineCheck.coreTypeWarning { s += "\n  warning: \(w)" }
        return s
    }

    /// Text sampled from the trained model (`[sample]` section): decoded by data.tokenizer when set, else text for a
    /// byte-level model and token ids for others (SampleText). The prompt was checked when the data was opened.
    public func sample() throws -> String {
        let s = config.sample
        let codec = try SampleText(config: config, vocabSize: model.config.vocabSize)
        let prompt = try codec.encode(s.prompt, what: "sample.prompt")
        let out = Sampler(model: wholeModel ?? model).generate(prompt: prompt, count: s.tokens, temperature: s.temperature,
                                                 topK: s.topK, seed: UInt64(bitPattern: Int64(config.training.seed)))
        return codec.render(prompt: s.prompt, output: out)
    }
}
