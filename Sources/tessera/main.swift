import Foundation
import TesseraComm
import TesseraKernels
import TesseraPipeline
import TesseraTraining

// The `tessera` command. Subcommands: train, config show, prepare, bench, bench-dp, bench-sp, bench-pp, bench-comm,
// plan, mpi-check.

let usage = """
usage: tessera <command> [arguments]

  train CONFIG.toml [--section.key VALUE ...] [--trace DIR]   train a model as the config describes
        --trace DIR                 write a Chrome trace per rank (DIR/trace-rank<R>.json; open in ui.perfetto.dev)
        --dump-grads FILE           write step 1's reduced gradients (safetensors, rank 0) for layout comparisons
        --resume auto|PATH          continue from the newest valid checkpoint under checkpoint.dir (auto), or from PATH
                                    (a step-N checkpoint or a directory of them); any layout can resume any checkpoint
        --fault-inject MODE:RANK:STEP   debugging: rank RANK exits (MODE exit) or hangs (MODE hang) at step STEP
        --checkpoint-copy-delay-ms MS   debugging: a lazy checkpoint's writer sleeps MS before copying each piece
  config show CONFIG.toml [--section.key VALUE ...]   print the effective config
  export --hf DIR --checkpoint PATH   write a Hugging Face GPT-2 directory (config.json, model.safetensors)
        PATH: one checkpoint (step-NNNNNN/) or a checkpoint root (its newest valid checkpoint)
  generate --checkpoint PATH [--prompt TEXT] [--tokens N] [--temperature T] [--top-k K] [--seed S]
        sample from a checkpoint (defaults from its config's [sample] section)
  prepare --input FILE... --out DIR [--val-fraction F]   turn text into llm.c token shards
  bench [--sizes S,M,L] [--threads N] [--steps N] [--warmup N] [--json] [--profile]   sgemm ceiling, tokens/s and MFU
  plan CONFIG.toml [--section.key VALUE ...]   the pipeline schedule grid (ranks × time), bubble and live micro-batches
  mpi-check [--pp N] [--dp N] [--ring N] [--ulysses N] [--inject-fault RANK]   under mpirun: check every MPI call and the mesh
  bench-dp [--size M] [--steps N] [--rounds N] [--threads N] [--bucket-mb X] [--zero]   (under mpirun -np 2)
        data-parallel scaling against one rank, in one run, and the share of the reduction hidden behind backward
  bench-sp [--ring R] [--ulysses U] [--seq 1024,2048,4096] [--steps N] [--budget-mib X]   (under mpirun -np R×U)
        sequence-parallel steps: ring overlap, attention bytes vs theory, balance, memory; --budget-mib plans lengths
  bench-pp [--size M] [--layers 8] [--microbatches 1,2,4,8] [--schedules gpipe,1f1b,interleaved] [--steps N] [--rounds N]
        (under mpirun -np P: one stage per rank) pipeline bubble per stage vs theory, live
        micro-batches and activation memory per stage
  bench-memory [--sizes M,M-long] [--policies keep,full,selective,offload,auto] [--steps N] [--rounds N]
        [--budget-mib X | --budget-fraction F] [--offload-dir DIR] [--ring R] [--ulysses U]   (mpirun -np R×U for R×U > 1)
        activation memory and step time per policy against keep, offload I/O hidden, auto plan vs measured peak
  bench-checkpoint [--sizes M,L] [--every 10] [--after 3] [--rounds N] [--threads N] [--dir DIR] [--no-zero]
        (1 rank, or mpirun -np 2: data-parallel + ZeRO-1) training blocked per checkpoint, lazy vs sync, time to
        durable, and the slowdown of checkpointing every N steps
  bench-comm [--max-mib 64] [--iters auto|N] [--rounds 9] [--json] [--breakdown]   under mpirun: allreduce busbw, Swift layer vs plain C

Any config key can be overridden on the command line, e.g. --training.steps 50.
"""

func fail(_ message: String) -> Never {
    FileHandle.standardError.write(Data("tessera: \(message)\n".utf8))
    exit(2)
}

/// Removes `name VALUE` from args and returns VALUE (nil if absent).
func takeOption(_ args: inout [String], _ name: String) -> String? {
    guard let i = args.firstIndex(of: name) else { return nil }
    guard i + 1 < args.count else { fail("\(name) needs a value") }
    let v = args[i + 1]
    args.removeSubrange(i...(i + 1))
    return v
}

/// Takes integer options `flags` out of `args` into `options` (at least 1; `--warmup` may be 0).
func takeIntegers<O>(_ args: inout [String], _ command: String, into options: inout O, _ flags: [(String, WritableKeyPath<O, Int>)]) {
    for (flag, ref) in flags {
        guard let v = takeOption(&args, flag) else { continue }
        guard let i = Int(v), i >= (flag == "--warmup" ? 0 : 1) else { fail("\(command): \(flag) expects a positive integer, got '\(v)'") }
        options[keyPath: ref] = i
    }
}

/// Takes a comma-separated list of positive integers (`--seq 1024,2048`), nil when absent.
func takeIntegerList(_ args: inout [String], _ command: String, _ flag: String, example: String) -> [Int]? {
    guard let v = takeOption(&args, flag) else { return nil }
    let values = v.split(separator: ",").compactMap { Int($0) }
    guard !values.isEmpty, values.allSatisfy({ $0 > 0 }) else { fail("\(command): \(flag) expects values like \(example); got '\(v)'") }
    return values
}

func option(_ args: [String], _ name: String) -> String? {
    guard let i = args.firstIndex(of: name), i + 1 < args.count else { return nil }
    return args[i + 1]
}

let coreTypeNote = MachineCheck.reexecWithoutNarrowCoreType()
var args = Array(CommandLine.arguments.dropFirst())
guard let command = args.first else { print(usage); exit(0) }
args.removeFirst()

do {
    switch command {
    case "train":
        var options = TrainerOptions()
        options.traceDir = takeOption(&args, "--trace")
        options.dumpGradientsPath = takeOption(&args, "--dump-grads")
        options.fault = try takeOption(&args, "--fault-inject").map { try FaultInjection(parsing: $0) }
        let resume = takeOption(&args, "--resume")
        if let v = takeOption(&args, "--checkpoint-copy-delay-ms") {
            guard let ms = Double(v), ms >= 0 else { fail("--checkpoint-copy-delay-ms expects a number >= 0, got '\(v)'") }
            options.checkpointCopyDelayMs = ms
        }
        let (overrides, rest) = try ConfigLoader.splitOverrides(args)
        guard rest.count == 1, let path = rest.first else {
            fail(rest.isEmpty ? "train needs a config file\n\n" + usage
                 : "train takes one config file and --section.key VALUE overrides; unexpected: \(rest.dropFirst().joined(separator: " "))")
        }
        let config = try ConfigLoader.load(path: path, overrides: overrides)
        let runtime = MPIRuntime()
        if runtime.rank == 0, let note = coreTypeNote { print("tessera: note: \(note)") }
        let trainer: Trainer
        do { trainer = try Trainer(config: config, runtime: runtime, options: options) } catch {
            // Config-level errors are the same on every rank: rank 0 explains, then every rank finalizes (a
            // collective, so no rank exits, and makes mpirun stop the job, before the message is out).
            if runtime.rank == 0 { FileHandle.standardError.write(Data("tessera: \(path): \(error)\n".utf8)) }
            runtime.finalize()
            exit(2)
        }
        if let resume {
            do {
                let note = try trainer.resume(resume)
                if runtime.rank == 0 { print("tessera: " + note.replacingOccurrences(of: "\n", with: "\ntessera: ")) }
            } catch {
                // Decided together (the same on every rank): rank 0 explains, every rank stops.
                if runtime.rank == 0 { FileHandle.standardError.write(Data("tessera: \(error)\n".utf8)) }
                runtime.finalize()
                exit(2)
            }
        }
        var metrics: MetricsSink? = nil
        if runtime.rank == 0 {
            metrics = try MetricsSink(metricsPath: config.metricsPath,
                                      tensorboardDir: config.metrics.tensorboard ? config.tensorboardDir : nil,
                                      keepThrough: resume == nil ? nil : trainer.resumedStep ?? 0)
        }
        trainer.run(metrics: metrics)
        metrics?.close()
        if trainer.failure != nil {
            // A non-finite step stopped the run on every rank (rank 0 said why): finalize together, fail.
            runtime.finalize()
            exit(4)
        }
        if runtime.rank == 0 && config.sample.tokens > 0 && trainer.stoppedBy == nil {
            print("\n--- sample (\(config.sample.tokens) tokens, temperature \(config.sample.temperature)) ---")
            print(trainer.sample())
            print("---")
        }
        runtime.finalize()
    case "config":
        guard args.first == "show" else { fail("usage: tessera config show CONFIG.toml [--section.key VALUE ...]") }
        // Accepts (and ignores) train's run flags, so a launcher can pass train's arguments unchanged.
        var showArgs = Array(args.dropFirst())
        for flag in ["--trace", "--dump-grads", "--fault-inject", "--resume", "--checkpoint-copy-delay-ms"] { _ = takeOption(&showArgs, flag) }
        let (overrides, rest) = try ConfigLoader.splitOverrides(showArgs)
        guard rest.count == 1, let path = rest.first else {
            fail(rest.isEmpty ? "config show needs a config file" : "config show takes one config file; unexpected: \(rest.dropFirst().joined(separator: " "))")
        }
        print(ConfigLoader.render(try ConfigLoader.load(path: path, overrides: overrides)), terminator: "")
    case "prepare":
        print(try Prepare.command(arguments: args))
    case "export":
        print(try CheckpointCommands.export(arguments: args))
    case "generate":
        print(try CheckpointCommands.generate(arguments: args))
    case "bench":
        let names = (option(args, "--sizes") ?? "S,M,L").split(separator: ",").map { String($0).uppercased() }
        func count(_ name: String, _ def: Int, min: Int) -> Int {
            guard let s = option(args, name) else { return def }
            guard let v = Int(s), v >= min else { fail("bench: \(name) expects an integer >= \(min), got '\(s)'") }
            return v
        }
        let threads = count("--threads", Threads.availableCores(), min: 1)
        let steps = count("--steps", 5, min: 1)
        let warmup = count("--warmup", 2, min: 0)
        for n in names where !["S", "M", "L"].contains(n) { fail("bench: unknown size '\(n)' (sizes: S, M, L)") }
        if let note = coreTypeNote { print("note: \(note)") }
        print(Bench.run(names: names, threads: threads, steps: steps, warmup: warmup, json: args.contains("--json"),
                        profile: args.contains("--profile")))
    case "bench-dp":
        var o = ScalingBench.Options()
        o.size = (takeOption(&args, "--size") ?? o.size).uppercased()
        takeIntegers(&args, "bench-dp", into: &o, [("--steps", \.steps), ("--rounds", \.rounds), ("--threads", \.threads),
                                                   ("--warmup", \.warmup)])
        if let v = takeOption(&args, "--bucket-mb") {
            guard let x = Double(v), x > 0 else { fail("bench-dp: --bucket-mb expects a number > 0, got '\(v)'") }
            o.bucketMb = x
        }
        if let i = args.firstIndex(of: "--zero") { o.zero = true; args.remove(at: i) }
        guard args.isEmpty else { fail("bench-dp: unexpected arguments: \(args.joined(separator: " "))") }
        let runtime = MPIRuntime()
        if let report = try ScalingBench.run(runtime: runtime, options: o) { print(report) }
        runtime.finalize()
    case "bench-sp":
        var o = SequenceBench.Options()
        takeIntegers(&args, "bench-sp", into: &o, [("--ring", \.ring), ("--ulysses", \.ulysses), ("--steps", \.steps),
                                                   ("--warmup", \.warmup), ("--threads", \.threads)])
        if let seqs = takeIntegerList(&args, "bench-sp", "--seq", example: "1024,2048") { o.seqs = seqs }
        if let v = takeOption(&args, "--budget-mib") {
            guard let x = Double(v), x > 0 else { fail("bench-sp: --budget-mib expects a number > 0, got '\(v)'") }
            o.budgetMiB = x
        }
        guard args.isEmpty else { fail("bench-sp: unexpected arguments: \(args.joined(separator: " "))") }
        if let budget = o.budgetMiB { print(SequenceBench.plan(budgetMiB: budget)); break }
        let runtime = MPIRuntime()
        if let report = try SequenceBench.run(runtime: runtime, options: o) { print(report) }
        runtime.finalize()
    case "bench-pp":
        var o = PipelineBench.Options()
        o.size = (takeOption(&args, "--size") ?? o.size).uppercased()
        takeIntegers(&args, "bench-pp", into: &o, [("--layers", \.layers), ("--steps", \.steps), ("--warmup", \.warmup),
                                                   ("--threads", \.threads), ("--rounds", \.rounds)])
        if let ms = takeIntegerList(&args, "bench-pp", "--microbatches", example: "1,4,8") { o.microbatches = ms }
        if let v = takeOption(&args, "--schedules") {
            let names = v.split(separator: ",").map(String.init)
            for n in names where !PipelinePlanner.schedules.contains(n) { fail("bench-pp: unknown schedule '\(n)' (gpipe, 1f1b, interleaved)") }
            o.schedules = names
        }
        guard args.isEmpty else { fail("bench-pp: unexpected arguments: \(args.joined(separator: " "))") }
        let runtime = MPIRuntime()
        if let report = try PipelineBench.run(runtime: runtime, options: o) { print(report) }
        runtime.finalize()
    case "bench-memory":
        var o = MemoryBench.Options()
        if let v = takeOption(&args, "--sizes") { o.sizes = v.split(separator: ",").map { String($0) } }
        if let v = takeOption(&args, "--policies") {
            o.policies = v.split(separator: ",").map(String.init)
            for p in o.policies where !MemoryConfig.policyValues.contains(p) { fail("bench-memory: unknown policy '\(p)'") }
        }
        if let v = takeOption(&args, "--offload-dir") { o.offloadDir = v }
        if let v = takeOption(&args, "--budget-mib") { guard let x = Double(v), x > 0 else { fail("--budget-mib expects a positive number") }; o.budgetMiB = x }
        if let v = takeOption(&args, "--budget-fraction") {
            guard let x = Double(v), x > 0 else { fail("--budget-fraction expects a positive number") }
            o.budgetFraction = x
        }
        takeIntegers(&args, "bench-memory", into: &o, [("--steps", \.steps), ("--warmup", \.warmup), ("--threads", \.threads),
                                                       ("--rounds", \.rounds), ("--ring", \.ring), ("--ulysses", \.ulysses)])
        guard args.isEmpty else { fail("bench-memory: unexpected arguments: \(args.joined(separator: " "))") }
        let runtime = o.ring * o.ulysses > 1 || ProcessInfo.processInfo.environment["OMPI_COMM_WORLD_SIZE"] != nil ? MPIRuntime() : nil
        if let report = try MemoryBench.run(runtime: runtime, options: o) { print(report) }
        runtime?.finalize()
    case "bench-checkpoint":
        var o = CheckpointBench.Options()
        if let v = takeOption(&args, "--sizes") { o.sizes = v.split(separator: ",").map { String($0).uppercased() } }
        if let v = takeOption(&args, "--dir") { o.dir = v }
        if let i = args.firstIndex(of: "--no-zero") { o.zero = false; args.remove(at: i) }
        takeIntegers(&args, "bench-checkpoint", into: &o, [("--every", \.every), ("--after", \.after), ("--rounds", \.rounds),
                                                           ("--threads", \.threads), ("--warmup", \.warmup)])
        guard args.isEmpty else { fail("bench-checkpoint: unexpected arguments: \(args.joined(separator: " "))") }
        let runtime = ProcessInfo.processInfo.environment["OMPI_COMM_WORLD_SIZE"] != nil ? MPIRuntime() : nil
        if let report = try CheckpointBench.run(runtime: runtime, options: o) { print(report) }
        runtime?.finalize()
    case "plan":
        let (overrides, rest) = try ConfigLoader.splitOverrides(args)
        guard rest.count == 1, let path = rest.first else { fail("usage: tessera plan CONFIG.toml [--section.key VALUE ...]") }
        let config = try ConfigLoader.load(path: path, overrides: overrides, dataFiles: false)  // plans need no data
        let p = config.parallelism
        let plan = try PipelinePlanner.plan(schedule: p.pipelineSchedule, stages: p.pp,
                                            microbatches: config.training.microbatches, virtualStages: p.virtualStages)
        print(try PipelineSimulation(plan: plan).report(plan: plan))
        if p.pp > 1 { print("\n" + (try PipelineLayout(config: config)).describe(microbatches: config.training.microbatches)) }
    case "mpi-check":
        exit(CommSelfCheck.command(arguments: args))
    case "bench-comm":
        let options = try CommBench.Options(parsing: args)
        let runtime = MPIRuntime()
        let status = CommBench.command(options, runtime: runtime)
        runtime.finalize()
        if status != 0 { exit(status) }
    case "help", "--help", "-h":
        print(usage)
    default:
        fail("unknown command '\(command)'\n\n" + usage)
    }
} catch {
    fail("\(error)")
}
