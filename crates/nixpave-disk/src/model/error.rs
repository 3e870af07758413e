//! Errors of layout parsing and validation; each names the attribute path it is about.

/// A layout that cannot be used, with the attribute path (e.g.
/// `disk.main.content.partitions.ESP.sise`) where the problem is.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LayoutError {
    /// An option that the type does not have (often a typo).
    #[error("`{path}`: unknown option `{option}`{}", suggestion.as_ref().map(|s| format!(" (did you mean `{s}`?)")).unwrap_or_default())]
    UnknownOption {
        /// Path of the unknown attribute.
        path: String,
        /// The unknown option name.
        option: String,
        /// The closest known option, if close enough.
        suggestion: Option<String>,
    },
    /// A required option is missing.
    #[error("`{path}`: required option is missing")]
    Missing {
        /// Path of the missing attribute.
        path: String,
    },
    /// A value of the wrong JSON/Nix type.
    #[error("`{path}`: expected {expected}, found {found}")]
    WrongType {
        /// Path of the attribute.
        path: String,
        /// What was expected.
        expected: String,
        /// What was found.
        found: String,
    },
    /// A value that is not allowed (bad size, unknown type code, …).
    #[error("`{path}`: {message}")]
    Invalid {
        /// Path of the attribute.
        path: String,
        /// What is wrong and what would be right.
        message: String,
    },
}

impl LayoutError {
    /// The attribute path the error is about.
    pub fn path(&self) -> &str {
        match self {
            LayoutError::UnknownOption { path, .. }
            | LayoutError::Missing { path }
            | LayoutError::WrongType { path, .. }
            | LayoutError::Invalid { path, .. } => path,
        }
    }

    /// Shorthand for [`LayoutError::Invalid`].
    pub(crate) fn invalid(path: impl Into<String>, message: impl Into<String>) -> Self {
        LayoutError::Invalid {
            path: path.into(),
            message: message.into(),
        }
    }
}

/// The known name closest to `unknown`, if it is within a third of its length (at least 2 edits)
/// or differs only in case.
pub fn suggest<'a>(unknown: &str, known: &[&'a str]) -> Option<&'a str> {
    let limit = (unknown.chars().count() / 3).max(2);
    known
        .iter()
        .map(|k| {
            let d = if k.eq_ignore_ascii_case(unknown) {
                0
            } else {
                strsim::levenshtein(unknown, k)
            };
            (d, *k)
        })
        .filter(|(d, _)| *d <= limit)
        .min_by_key(|(d, _)| *d)
        .map(|(_, k)| k)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn distance_and_suggestions() {
        assert_eq!(suggest("sise", &["size", "start", "end"]), Some("size"));
        assert_eq!(
            suggest("mountpiont", &["mountpoint", "mountOptions"]),
            Some("mountpoint")
        );
        assert_eq!(
            suggest("MountOptions", &["mountOptions"]),
            Some("mountOptions")
        );
        assert_eq!(suggest("zzzzzz", &["size"]), None);
    }
}
