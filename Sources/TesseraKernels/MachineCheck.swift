import Foundation

/// Facts about this machine that decide kernel speed, and the environment traps that halve it.
public enum MachineCheck {
    /// CPU flags from /proc/cpuinfo (Linux).
    public static let cpuFlags: Set<String> = {
        guard let s = try? String(contentsOfFile: "/proc/cpuinfo", encoding: .utf8),
              let line = s.split(separator: "\n").first(where: { $0.hasPrefix("flags") }) else { return [] }
        return Set(line.split(separator: ":").last.map { $0.split(separator: " ").map(String.init) } ?? [])
    }()

    public static var hasAVX512: Bool { cpuFlags.contains("avx512f") }
    /// bf16 dot products in hardware (AVX512_BF16: Cooper Lake, Sapphire Rapids, Zen 4 and later).
    public static var hasBF16: Bool { cpuFlags.contains("avx512_bf16") }

    /// OpenBLAS core types that use no AVX-512 kernels.
    static let narrowCoreTypes: Set<String> = ["haswell", "zen", "sandybridge", "nehalem", "core2", "prescott",
                                               "barcelona", "bulldozer", "piledriver", "steamroller", "excavator"]

    /// A warning when OPENBLAS_CORETYPE forces kernels narrower than this CPU supports, else nil.
    public static var coreTypeWarning: String? {
        guard let forced = ProcessInfo.processInfo.environment["OPENBLAS_CORETYPE"], hasAVX512,
              narrowCoreTypes.contains(forced.lowercased()) else { return nil }
        return "OPENBLAS_CORETYPE=\(forced) forces AVX2 kernels on this AVX-512 CPU (on many AVX-512 CPUs that halves sgemm; `tessera bench` measures it)"
    }

    /// Re-executes this process without a harmful OPENBLAS_CORETYPE (OpenBLAS reads it when the library
    /// loads, so it cannot be fixed in-process). Opt out with TESSERA_KEEP_OPENBLAS_CORETYPE=1.
    /// Returns the warning that triggered the re-exec (printed by the new process), or nil.
    public static func reexecWithoutNarrowCoreType() -> String? {
        let env = ProcessInfo.processInfo.environment
        if let note = env["TESSERA_CORETYPE_NOTE"] { return note }
        guard let warning = coreTypeWarning, env["TESSERA_KEEP_OPENBLAS_CORETYPE"] != "1" else { return nil }
        unsetenv("OPENBLAS_CORETYPE")
        setenv("TESSERA_CORETYPE_NOTE", warning + "; re-executed without it (TESSERA_KEEP_OPENBLAS_CORETYPE=1 keeps it)", 1)
        let args = CommandLine.arguments.map { strdup($0) } + [nil]
        execv("/proc/self/exe", args)
        return warning + " (re-exec failed; continuing)"
    }
}
