// A layout's predicted step, from the calibration and the links:
//   compute    the pipeline simulation of the schedule with each stage's measured forward (1/3) and backward (2/3)
//              per micro-batch (the whole step without stages: micro-batches × one pass), which includes the bubble;
//              a stage's pass = its layers × (linear work at the rank's tokens + attention scaled to the rank's
//              share of the causal sequence: ring × Ulysses × the calibration at the rank's tokens) + the head on
//              the last stage + the embeddings on the first;
//   recompute  per layer (memory.layer_policy, else memory.policy): selective: the layer's attention forward again;
//              full: the layer's forward again; under pipelining simulated as part of each stage's backward (the
//              step's lengthening: a stage's recomputation may fill its bubble);
//   optimizer  AdamW over the rank's parameters (its ZeRO-1 partition);
//   exposed communication, per group (the per-kind times of the placement the job would choose on these hosts
//              and links, Placement.choose):
//              Ulysses' all-to-alls block (all exposed); inside a host the ring's transfers overlap attention and
//              the gradient reduction the last micro-batch's backward (exposed beyond them), across hosts neither
//              overlaps (MPI's TCP transport progresses only inside MPI calls); ZeRO-1 also all-gathers parameters
//              after the update; each pipeline message delays the stage that waits for it in a third simulation
//              (the exposed part is what that lengthens the step by); the tied embedding's sum is exposed.

import TesseraComm
import TesseraMemory
import TesseraModel
import TesseraPipeline
import TesseraTopology
import TesseraTraining

public struct StepPrediction: Sendable {
    public var compute = 0.0, bubble = 0.0, recompute = 0.0, optimizer = 0.0
    public var communication: [String: Double] = [:]
    /// The largest stage's predicted memory per rank.
    public var memory = 0
    public var memoryParts: MemoryPrediction?
    /// Every stage's prediction (its first rank's), in stage order.
    public var stageMemory: [MemoryPrediction] = []
    public var total: Double { compute + recompute + optimizer + communication.values.reduce(0, +) }
}

public enum StepTimeModel {
    /// The calibration shapes a candidate needs: its micro-batch and the tokens each rank holds.
    public static func shape(_ c: TesseraConfig) -> Calibration.Shape {
        let p = c.parallelism, t = c.training
        return Calibration.Shape(batch: c.rankMicroBatch, tokens: t.seqLen / (p.ring * p.ulysses))
    }

    public static func predict(_ c: TesseraConfig, calibration cal: Calibration, hosts: HostMap, links: LinkMatrix) throws -> StepPrediction {
        let p = c.parallelism, t = c.training, m = c.transformer
        guard let costs = cal.costs[shape(c)] else { throw TrainingError("no calibration for \(shape(c))") }
        var out = StepPrediction()
        let layout = p.pp > 1 ? try PipelineLayout(config: c) : nil
        let stages = (0..<p.pp).map { layout?.stage(rank: $0) ?? .whole(m) }
        let attention = costs.attention * Double(p.ring * p.ulysses)
        // One micro-batch's forward + backward per stage, and what recomputation adds.
        var pass: [Double] = [], again: [Double] = []
        let uniform = LayerPolicy(rawValue: c.memory.policy) ?? .keep
        let perLayer = c.memory.layerPolicy.isEmpty ? Array(repeating: uniform, count: m.nLayer)
            : try LayerPolicy.parseList(c.memory.layerPolicy, layers: m.nLayer, key: "memory.layer_policy")
        for (s, stage) in stages.enumerated() {
            let layers = Double(stage.layers.count)
            var x = layers * (costs.layer + attention)
            if s == p.pp - 1 { x += costs.head }
            if s == 0 { x += costs.embedding }
            pass.append(x)
            again.append(stage.layers.reduce(0.0) { sum, l in
                switch perLayer[l] {
                case .selective: return sum + attention / 3
                case .full: return sum + (costs.layer + attention) / 3
                default: return sum
                }
            })
        }
        let micro = t.microbatches
        // Communication on these hosts, placed as the job would place it (docs/placement.md; the host orders tried are
        // the world order and a chain along the fastest links, not every permutation: this runs for every candidate).
        let traffic = MeshTraffic(config: c)
        let estimate = Placement.of(config: c, hosts: hosts, links: links, searchHostOrders: false, traffic: traffic).estimate
        let raw = estimate.seconds
        func acrossHosts(_ kind: String) -> Bool { (estimate.hostsSpanned[kind] ?? 1) > 1 }
        if let layout {
            // The simulation in 10 µs units; each action is one chunk (1/virtual stages of the rank's layers).
            // Recomputation runs before each chunk's backward, on its stage: simulated with it, so that a stage's
            // recomputation can fill its bubble; the part that lengthens the step is the recompute term.
            let v = Double(p.virtualStages), unit = 1e-5
            let fwd = pass.map { max(Int(($0 / 3 / v / unit).rounded()), 1) }, bwd = pass.map { max(Int((2 * $0 / 3 / v / unit).rounded()), 1) }
            let sim = try PipelineSimulation(plan: layout.plan, forwardPerRank: fwd, backwardPerRank: bwd)
            let busiest = zip(fwd, bwd).map { Double(($0 + $1) * micro) * v * unit }.max() ?? 0
            out.compute = Double(sim.makespan) * unit
            out.bubble = max(out.compute - busiest, 0)
            let bwdAgain = zip(bwd, again).map { $0 + Int(($1 / v / unit).rounded()) }
            let withRecompute = try PipelineSimulation(plan: layout.plan, forwardPerRank: fwd, backwardPerRank: bwdAgain)
            out.recompute = max(Double(withRecompute.makespan - sim.makespan) * unit, 0)
            // Each activation and its gradient between stages take one message's time (the estimate's pipeline time
            // over its messages); what the step lengthens by is the exposed pipeline communication.
            if let pl = raw["pipeline"], traffic.pipelineMessages > 0 {
                var perMessage = pl / Double(2 * (traffic.pipelineMessages + traffic.pipelineWrapMessages))
                // Across hosts a message above the TCP transport's eager limit (64 KiB) moves only once the receiver's
                // answer reaches the sender inside one of its MPI calls: after the sender's next action, counted as
                // one forward (the shorter action; the runs of docs/planner.md fit it better than 1.5). The message
                // time is the estimate's pipeline time per message, the same at every stage boundary (the slowest
                // boundary's, where stages cross hosts: boundaries inside a host are charged as much).
                if acrossHosts("pipeline") && traffic.pipelineBytes > 65536 {
                    perMessage += Double(fwd.reduce(0, +)) * unit / Double(fwd.count)
                }
                let sent = try PipelineSimulation(plan: layout.plan, forwardPerRank: fwd, backwardPerRank: bwdAgain,
                                                  transfer: Int((perMessage / unit).rounded()))
                out.communication["pipeline"] = max(Double(sent.makespan - withRecompute.makespan) * unit, 0)
            }
        } else {
            out.compute = Double(micro) * pass[0]
            out.recompute = Double(micro) * again[0]
        }
        // The optimizer over the largest stage's parameters (ZeRO-1: a 1/replicas share).
        let replicas = p.dp * p.ring * p.ulysses
        let params = stages.map { ModelParameters.specs(m, stage: $0).reduce(0) { $0 + $1.count } }.max() ?? 0
        out.optimizer = cal.optimizerPerParameter * Double(params) / Double(p.zero == 1 ? replicas : 1)
        // What overlaps compute: inside a host (shared memory) the ring's transfers hide behind attention and the
        // gradient buckets behind the last micro-batch's backward. Across hosts (TCP) they do not: Open MPI's TCP
        // transport moves a message only inside MPI calls, and a rank computing a product makes none.
        let lastBackward = 2 * (pass.max() ?? 0) / 3
        if let u = raw["ulysses"] { out.communication["ulysses"] = u }
        if let r = raw["ring"] {
            let hidden = acrossHosts("ring") ? 0 : Double(micro) * Double(stages.map { $0.layers.count }.max() ?? 0) * attention
            out.communication["ring"] = max(r - hidden, 0)
        }
        if let g = raw["gradients"] {
            var exposed = max(g - (acrossHosts("gradients") ? 0 : lastBackward), 0)
            if p.zero == 1 { exposed += g / 2 }  // the parameter all-gather after the update: half an all-reduce's bytes
            out.communication["gradients"] = exposed
        }
        if let e = raw["embedding"] { out.communication["embedding"] = e }
        // Memory: the largest stage's prediction (MemoryPreflight's, the sizes the trainer allocates).
        if let needs = MemoryPreflight.stageNeeds(c), let most = needs.max(by: { $0.total < $1.total }) {
            out.memory = most.total; out.memoryParts = most; out.stageMemory = needs
        }
        return out
    }
}
