// Features the configuration can describe but this build cannot run yet: none at present. A feature that
// lands before it runs everywhere adds a check here, so the config fails early with a clear message.

extension TesseraConfig {
    /// Rejects settings for features not built yet; throws a ConfigError listing each one.
    public func validateForThisBuild() throws {
        let errors: [String] = []
        guard errors.isEmpty else { throw ConfigError(lines: errors) }
    }
}
