// Features the configuration can describe but this build cannot run yet.
// Remove a line here when the feature lands.

extension TesseraConfig {
    /// Rejects settings for features not built yet; throws a ConfigError listing each one.
    public func validateForThisBuild() throws {
        var errors: [String] = []
        let p = parallelism
        if p.pp > 1 && p.ulysses > 1 {
            errors.append("parallelism.pp = \(p.pp) with parallelism.ulysses = \(p.ulysses): pipeline stages with Ulysses attention "
                + "are not available in this build yet (Ulysses keeps one micro-batch's head-sharded tensors per layer); "
                + "use parallelism.ring for sequence parallelism under a pipeline")
        }
        if checkpoint.every > 0 {
            errors.append("checkpoint.every = \(checkpoint.every): checkpointing is not available in this build yet")
        }
        if memory.policy != "keep" {
            errors.append("memory.policy = \(String(reflecting: memory.policy)): activation memory policies other"
                + " than \"keep\" are not available in this build yet")
        }
        guard errors.isEmpty else { throw ConfigError(lines: errors) }
    }
}
