// Every layout of a job on N ranks that `tessera train` would accept: pipeline × data × ring × Ulysses degrees
// whose product is N, ZeRO-1 on or off where there are replicas, the pipeline schedule (GPipe, 1F1B, interleaved
// with 2 virtual stages) and micro-batch count (1, 2 and 4 per stage) where there are stages, and one memory
// policy for every layer (keep, selective, full); the planner adds per-layer mixes where keep does not fit
// (PolicyMix). The global batch, sequence and model stay the config's. A
// candidate is the config with those keys set, and it is valid when the config validation passes (the same
// rules the trainer applies: heads divisible by Ulysses, sequence by 2 × ring × Ulysses, batch by dp × micro-batches,
// layers by stages).

import TesseraPipeline
import TesseraTraining

public struct LayoutCandidate: Sendable {
    public var config: TesseraConfig
    /// The keys this layout sets, as `--section.key value` overrides (for reports and --write).
    public var overrides: [(key: String, value: String)]

    /// "pp2·1f1b·m4 dp1 ring1 u1 zero0 keep" in a compact form: the degrees above 1, then the rest.
    public var name: String {
        let p = config.parallelism, t = config.training
        var parts: [String] = []
        if p.pp > 1 {
            parts.append("pp\(p.pp) \(p.pipelineSchedule)" + (p.virtualStages > 1 ? "×\(p.virtualStages)" : "") + " m\(t.microbatches)")
        }
        if p.dp > 1 { parts.append("dp\(p.dp)") }
        if p.ring > 1 { parts.append("ring\(p.ring)") }
        if p.ulysses > 1 { parts.append("ulysses\(p.ulysses)") }
        if parts.isEmpty { parts.append("1 rank") }
        if p.zero == 1 { parts.append("zero1") }
        parts.append(config.memory.layerPolicy.isEmpty ? config.memory.policy : "layers " + config.memory.layerPolicy)
        return parts.joined(separator: " ")
    }
}

public enum LayoutSpace {
    public static let policies = ["keep", "selective", "full"]

    /// The valid candidates for `ranks` ranks, in a fixed order.
    public static func enumerate(base: TesseraConfig, ranks: Int, policies: [String] = policies) -> [LayoutCandidate] {
        var out: [LayoutCandidate] = []
        for pp in divisors(ranks) { for dp in divisors(ranks / pp) { for ring in divisors(ranks / (pp * dp)) {
            let ulysses = ranks / (pp * dp * ring)
            let replicas = dp * ring * ulysses
            let schedules: [(String, Int)] = pp > 1 ? [("gpipe", 1), ("1f1b", 1), ("interleaved", 2)] : [("1f1b", 1)]
            let micro = pp > 1 ? [pp, 2 * pp, 4 * pp] : [1]
            for zero in (replicas > 1 ? [0, 1] : [0]) { for (schedule, virtual) in schedules { for m in micro { for policy in policies {
                var c = base
                c.parallelism.pp = pp; c.parallelism.dp = dp; c.parallelism.ring = ring; c.parallelism.ulysses = ulysses
                c.parallelism.zero = zero; c.parallelism.pipelineSchedule = schedule; c.parallelism.virtualStages = virtual
                c.parallelism.stageLayers = ""
                c.training.microbatches = m; c.training.layout = "manual"
                c.memory.policy = policy; c.memory.layerPolicy = ""
                guard (try? c.validateWithoutFiles()) != nil else { continue }
                if pp > 1 { guard (try? PipelineLayout(config: c)) != nil else { continue } }
                let overrides: [(String, String)] = [
                    ("parallelism.pp", "\(pp)"), ("parallelism.dp", "\(dp)"), ("parallelism.ring", "\(ring)"),
                    ("parallelism.ulysses", "\(ulysses)"), ("parallelism.zero", "\(zero)"),
                    ("parallelism.pipeline_schedule", schedule), ("parallelism.virtual_stages", "\(virtual)"),
                    ("parallelism.stage_layers", ""), ("training.microbatches", "\(m)"), ("memory.policy", policy),
                    ("memory.layer_policy", ""), ("training.layout", "manual")]
                out.append(LayoutCandidate(config: c, overrides: overrides))
            }}}}
        }}}
        return out
    }

    static func divisors(_ n: Int) -> [Int] { (1...max(n, 1)).filter { n % $0 == 0 } }
}
