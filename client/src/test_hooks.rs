//! Misbehaviour an integration test can ask of an agent, to show that the
//! federation catches it: honoured only in a build with the cargo feature
//! `test-hooks` (enabled by the workspace's own tests through a
//! dev-dependency, never by a release build), and then only when the named
//! environment variable is `1`. Without the feature every hook is off,
//! whatever the environment says.

/// A dealer of a t-of-N key seals one bad subshare (signed as its own) to
/// the first other holder.
pub(crate) const BAD_SUBSHARE: &str = "CONSORTIA_TEST_BAD_SUBSHARE";

/// A holder of a t-of-N key complains about the first other dealer whose
/// dealing passed every check.
pub(crate) const FALSE_COMPLAINT: &str = "CONSORTIA_TEST_FALSE_COMPLAINT";

/// Whether the hook `name` is on.
pub(crate) fn enabled(name: &str) -> bool {
    #[cfg(feature = "test-hooks")]
    {
        std::env::var_os(name).is_some_and(|v| v == "1")
    }
    #[cfg(not(feature = "test-hooks"))]
    {
        let _ = name;
        false
    }
}

#[cfg(test)]
mod tests {
    /// A build without the feature ignores the environment.
    #[test]
    #[cfg(not(feature = "test-hooks"))]
    fn hooks_are_off_without_the_feature() {
        assert!(!super::enabled("PATH"));
    }
}
