// Features the configuration can describe but this build cannot run yet.
// Remove a line here when the feature lands.

extension TesseraConfig {
    /// Rejects settings for features not built yet; throws a ConfigError listing each one.
    public func validateForThisBuild() throws {
        var errors: [String] = []
        if checkpoint.every > 0 {
            errors.append("checkpoint.every = \(checkpoint.every): checkpointing is not available in this build yet")
        }
        guard errors.isEmpty else { throw ConfigError(lines: errors) }
    }
}
