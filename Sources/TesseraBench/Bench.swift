import Foundation
import TesseraTraining
import TesseraComm
import TesseraKernels
import TesseraModel

/// `tessera bench`: the machine's sgemm ceiling and training throughput/MFU of the standard model sizes.
public enum Bench {

    public struct Row: Sendable {
        public let size: BenchSize, parameters: Int, stepSeconds: Double, tokensPerSecond: Double, mfu: Double
        public let activationBytes: Int
        /// Seconds per step in each op (when profiling).
        public let profile: [(OpProfile.Op, Double)]
    }

    /// Median step time of `steps` timed steps after `warmup` steps on synthetic tokens.
    public static func measure(_ s: BenchSize, threads: Int, steps: Int, warmup: Int, peak: Double,
                               precision: Precision = .fp32) -> Row {
        Threads.configure(threads)
        let cfg = s.model
        let model = Transformer.make(config: cfg, seed: 1)
        model.precision = precision
        let acts = model.activations(batch: s.batch, tokens: s.seq)
        let opt = AdamWOptimizer(params: model.params, grads: model.grads, beta1: 0.9, beta2: 0.95, eps: 1e-8,
                                 weightDecay: 0.1, clip: 1)
        var rng = SplitMix64(seed: 7)
        for i in 0..<acts.n {
            acts.tokenIds[i] = Int32(rng.next() % UInt64(s.vocab))
            acts.targets[i] = Int32(rng.next() % UInt64(s.vocab))
        }
        acts.setContiguousPositions()
        let tokens = s.batch * s.seq
        var times: [Double] = []
        for i in 0..<(warmup + steps) {
            if i == warmup { OpProfile.reset() }
            let t0 = DispatchTime.now().uptimeNanoseconds
            model.grads.zero()
            model.forwardBackward(acts, gradScale: 1 / Float(tokens))
            OpProfile.time(.optimizer) { _ = opt.step(lr: 3e-4) }
            model.parametersChanged()
            let dt = Double(DispatchTime.now().uptimeNanoseconds - t0) / 1e9
            if i >= warmup { times.append(dt) }
        }
        let med = BenchScaffold.median(times)
        let flops = cfg.flopsPerToken(seqLen: s.seq) * Double(tokens)
        return Row(size: s, parameters: cfg.parameterCount, stepSeconds: med, tokensPerSecond: Double(tokens) / med,
                   mfu: flops / med / peak, activationBytes: acts.totalBytes,
                   profile: OpProfile.totals.map { ($0.0, $0.1 / Double(steps)) })
    }

    /// Runs the whole benchmark and returns the report text.
    public static func run(names: [String], threads: Int, steps: Int, warmup: Int, json: Bool, profile: Bool = false,
                           precision: Precision = .fp32, attention: Bool = false) -> String {
        OpProfile.enabled = profile
        var out: [String] = []
        let cores = Threads.availableCores()
        out.append("tessera bench — \(cores) core(s), OpenBLAS core \(BLAS.coreName), OPENBLAS_CORETYPE=\(ProcessInfo.processInfo.environment["OPENBLAS_CORETYPE"] ?? "(unset)")")
        if let w = MachineCheck.coreTypeWarning { out.append("WARNING: \(w)") }
        out.append("Open MPI single-copy mechanism: \(MPIRuntime.singleCopyMechanism)")
        out.append("attention kernel: \(BlockProduct.isaDescription)")
        let p1 = SgemmProbe.measure(threads: 1)
        let p2 = SgemmProbe.measure(threads: min(2, max(cores, 1)))
        let pt = threads == p2.threads ? p2 : threads == 1 ? p1 : SgemmProbe.measure(threads: threads)
        // Both ceilings, in this run: the fp32 sgemm and the bf16 product as this build runs it.
        let bf = SgemmProbe.measure(precision: .bf16, threads: threads)
        let dnnl = SgemmProbe.measureOneDNN(threads: threads)
        let ceiling = precision == .bf16 ? bf : pt
        out.append("sgemm ceiling (\(p1.n)³, OpenBLAS threads): 1 thread \(fmt(p1.flops / 1e9, 1)) GFLOP/s, "
                   + "\(p2.threads) threads \(fmt(p2.flops / 1e9, 1)) GFLOP/s")
        out.append("oneDNN f32 matmul (\(dnnl.n)³, \(dnnl.threads) thread(s)): \(fmt(dnnl.flops / 1e9, 1)) GFLOP/s "
                   + "(\(fmt(dnnl.flops / pt.flops, 2))× OpenBLAS's sgemm on as many threads; OpenBLAS runs the fp32 products)")
        out.append("bf16 product ceiling (\(bf.n)³, \(bf.threads) thread(s)): \(fmt(bf.flops / 1e9, 1)) GFLOP/s — \(Precision.bf16.productsDescription)")
        out.append("precision \(precision.rawValue): MFU below is against the \(precision.rawValue) ceiling on \(threads) thread(s): \(fmt(ceiling.flops / 1e9, 1)) GFLOP/s")
        out.append("")
        out.append("size     params      batch×seq  step ms   tokens/s   MFU     activations")
        var rows: [Row] = []
        for s in BenchSize.all where names.contains(s.name) {
            let r = measure(s, threads: threads, steps: steps, warmup: warmup, peak: ceiling.flops, precision: precision)
            rows.append(r)
            out.append(BenchScaffold.cell(s.name, 9) + BenchScaffold.cell("\(fmt(Double(r.parameters) / 1e6, 2))M", 12)
                       + BenchScaffold.cell("\(s.batch)×\(s.seq)", 11) + BenchScaffold.cell(fmt(1000 * r.stepSeconds, 1), 10)
                       + BenchScaffold.cell(fmt(r.tokensPerSecond, 0), 11) + BenchScaffold.cell(fmt(100 * r.mfu, 1) + "%", 8)
                       + "\(fmt(Double(r.activationBytes) / 1_048_576, 0)) MiB")
        }
        for r in rows where !r.profile.isEmpty {
            let total = r.profile.reduce(0) { $0 + $1.1 }
            out.append("\nwhere a step of \(r.size.name) goes (ms per step, share of the profiled total):")
            for (op, s) in r.profile.sorted(by: { $0.1 > $1.1 }) {
                out.append("  \(BenchScaffold.cell(op.name, 16))\(fmt(1000 * s, 1).leftPad(9))  \(fmt(100 * s / total, 1).leftPad(5))%")
            }
        }
        let attn = attention ? BenchSize.all.filter { names.contains($0.name) }.map { AttentionBench.measure($0, threads: threads) } : []
        if attention { out += AttentionBench.report(attn, ceiling: pt.flops) }
        out.append("\nMFU = (6N + 12·n_layer·d·seq) FLOPs/token × tokens/s ÷ the ceiling of the precision in use (N: the parameters; "
                   + "a Llama's untied embedding table, a lookup, not counted); median of \(steps) steps after \(warmup) warm-up; \(threads) kernel thread(s).")
        if json {
            for r in rows {
                out.append(BenchScaffold.jsonLine([
                    "bench": "bench", "size": r.size.name, "params": r.parameters, "step_s": r.stepSeconds,
                    "family": r.size.model.family.rawValue, "flops_per_token": r.size.model.flopsPerToken(seqLen: r.size.seq),
                    "tokens_per_s": r.tokensPerSecond, "mfu": r.mfu, "threads": threads, "activation_bytes": r.activationBytes,
                    "sgemm_flops": pt.flops, "sgemm_1t_flops": p1.flops, "sgemm_2t_flops": p2.flops,
                    "precision": precision.rawValue, "bf16_flops": bf.flops, "ceiling_flops": ceiling.flops,
                    "onednn_f32_flops": dnnl.flops, "bf16_backend": ProductBackend.bf16.rawValue,
                    "attention_isa": BlockProduct.isa.rawValue]))
            }
            for a in attn {
                out.append(BenchScaffold.jsonLine([
                    "bench": "attention", "size": a.size, "threads": threads, "forward_s": a.forwardSeconds,
                    "backward_s": a.backwardSeconds, "forward_flops": a.forwardFlops / a.forwardSeconds,
                    "backward_flops": a.backwardFlops / a.backwardSeconds, "sgemm_flops": pt.flops]))
            }
        }
        return out.joined(separator: "\n")
    }
}
