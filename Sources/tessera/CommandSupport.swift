// What the subcommands share: the machine check before computing, the run flags of train (which `config show`
// accepts too), and checks of option values with messages naming the command and the flag.

import ArgumentParser
import Foundation
import TesseraKernels

/// Re-executes this process without an OpenBLAS core type narrower than the CPU (`MachineCheck`), so that the
/// command computes at full speed; returns the note to print, if any. Commands call it first in `run()`, so
/// `--help` never re-executes.
func prepareMachine() -> String? { MachineCheck.reexecWithoutNarrowCoreType() }

/// Writes `tessera: message` to standard error.
func explain(_ message: String) { FileHandle.standardError.write(Data("tessera: \(message)\n".utf8)) }

/// Rejects arguments a command does not know (collected by a hidden `.allUnrecognized` argument), naming the first.
func rejectUnexpected(_ arguments: [String]) throws {
    if let first = arguments.first { throw ValidationError("unexpected argument '\(first)'") }
}

/// Checks integer options: each at least `low` (1 unless given), in the message form every command uses.
func requireAtLeast(_ command: String, _ values: [(flag: String, value: Int?, low: Int)]) throws {
    for (flag, value, low) in values {
        if let value, value < low { throw ValidationError("\(command): \(flag) expects an integer >= \(low), got '\(value)'") }
    }
}

/// Checks a number option is > 0.
func requirePositive(_ command: String, _ flag: String, _ value: Double?) throws {
    if let value, !(value > 0) { throw ValidationError("\(command): \(flag) expects a number > 0, got '\(value)'") }
}

/// A comma-separated list of positive integers (`--seq 1024,2048`), nil when absent.
func integerList(_ command: String, _ flag: String, _ text: String?, example: String) throws -> [Int]? {
    guard let text else { return nil }
    let values = text.split(separator: ",").compactMap { Int($0) }
    guard !values.isEmpty, values.allSatisfy({ $0 > 0 }) else {
        throw ValidationError("\(command): \(flag) expects values like \(example); got '\(text)'")
    }
    return values
}

/// A comma-separated list of names, each one of `known` (after `transform`), nil when absent.
func nameList(_ command: String, _ flag: String, _ text: String?, known: [String], what: String,
              transform: (String) -> String = { $0 }) throws -> [String]? {
    guard let text else { return nil }
    let names = text.split(separator: ",").map { transform(String($0)) }
    for n in names where !known.contains(n) {
        throw ValidationError("\(command): unknown \(what) '\(n)' (\(known.joined(separator: ", ")))")
    }
    return names
}

/// train's run flags. `config show` accepts and ignores them, so a launcher can pass train's arguments unchanged.
struct RunFlags: ParsableArguments {
    @Option(name: .customLong("trace"), help: ArgumentHelp(
        "Write a Chrome trace per rank (DIR/trace-rank<R>.json; open in ui.perfetto.dev).", valueName: "dir"))
    var traceDir: String?

    @Option(name: .customLong("dump-grads"), help: ArgumentHelp(
        "Write step 1's reduced gradients (safetensors, rank 0) for layout comparisons.", valueName: "file"))
    var dumpGradientsPath: String?

    @Option(help: ArgumentHelp(
        "Continue from the newest valid checkpoint under checkpoint.dir (auto), or from PATH (a step-N checkpoint or a "
        + "directory of them); any layout can resume any checkpoint.", valueName: "auto|path"))
    var resume: String?

    @Option(name: .customLong("init-from"), help: ArgumentHelp(
        "Start from the weights of a Hugging Face GPT-2 or Llama directory (the same as --model.init_from DIR).", valueName: "dir"))
    var initFrom: String?

    @Option(name: .customLong("fault-inject"), help: ArgumentHelp(
        "Debugging: at step STEP rank RANK exits (MODE exit), hangs (MODE hang) or writes NaN into a gradient (MODE nan).", valueName: "mode:rank:step"))
    var fault: String?

    @Option(name: .customLong("checkpoint-copy-delay-ms"), help: ArgumentHelp(
        "Debugging: a lazy checkpoint's writer sleeps MS before copying each piece.", valueName: "ms"))
    var checkpointCopyDelayMs: Double?

    func validate() throws {
        if let ms = checkpointCopyDelayMs, !(ms >= 0) {
            throw ValidationError("--checkpoint-copy-delay-ms expects a number >= 0, got '\(ms)'")
        }
    }
}

/// The help of the `--section.key VALUE` config overrides that train, config show and plan pass to the config loader.
let overridesHelp = ArgumentHelp(
    "The config file, then any config key as --section.key VALUE (or --section.key=VALUE), e.g. --training.steps 50.",
    valueName: "config.toml> <--section.key value")
