//! Which hosts a run is about: `--on` selectors (names, globs, `@tag`) and `FLAKE#node[.profile]`.

/// One selector: a node name glob or a tag glob.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Selector {
    /// Node names matching a glob (`web-*`, `db?`, `alpha`).
    Name(String),
    /// Nodes with a tag matching a glob (`@eu-*`).
    Tag(String),
}

/// The hosts (and optionally the one profile) a run targets. Empty means everything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Selection {
    /// Any matching selector selects a node.
    pub selectors: Vec<Selector>,
    /// Only this profile of the selected nodes (from `FLAKE#node.profile`).
    pub profile: Option<String>,
}

impl Selection {
    /// Parses comma- or whitespace-separated selectors as given to `--on`.
    pub fn parse_on(specs: &[String]) -> Selection {
        let selectors = specs
            .iter()
            .flat_map(|s| s.split([',', ' ']))
            .filter(|s| !s.is_empty())
            .map(|s| match s.strip_prefix('@') {
                Some(tag) => Selector::Tag(tag.to_string()),
                None => Selector::Name(s.to_string()),
            })
            .collect();
        Selection {
            selectors,
            profile: None,
        }
    }

    /// Adds the selection of a `#node[.profile]` flake fragment. Names with dots are quoted as deploy-rs
    /// quotes them: `"web1.example.com".system`.
    pub fn with_fragment(mut self, fragment: &str) -> Result<Selection, FragmentError> {
        let (node, profile) = parse_fragment(fragment)?;
        if let Some(node) = node {
            // Node names hold no glob characters (deploy-rs allows letters, digits, `_`, `-` and, quoted, dots).
            self.selectors.push(Selector::Name(node));
        }
        self.profile = profile;
        Ok(self)
    }

    /// True when `name` (with `tags`) is selected.
    pub fn matches(&self, name: &str, tags: &[String]) -> bool {
        self.selectors.is_empty()
            || self.selectors.iter().any(|s| match s {
                Selector::Name(g) => glob_match(g, name),
                Selector::Tag(g) => tags.iter().any(|t| glob_match(g, t)),
            })
    }

    /// The selection as JSON for the nix-side filter: `[{node: REGEX|null, tag: REGEX|null}]`.
    pub fn to_nix_json(&self) -> serde_json::Value {
        self.selectors
            .iter()
            .map(|s| match s {
                Selector::Name(g) => serde_json::json!({"node": glob_to_regex(g), "tag": null}),
                Selector::Tag(g) => serde_json::json!({"node": null, "tag": glob_to_regex(g)}),
            })
            .collect()
    }
}

/// A `#node.profile` fragment that cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("cannot read the flake fragment `{fragment}`: {reason} (expected node, node.profile or \"a.b\".profile)")]
pub struct FragmentError {
    /// The fragment as given.
    pub fragment: String,
    /// What is wrong.
    pub reason: &'static str,
}

/// Splits `node[.profile]` into its parts; either part may be a double-quoted string holding dots.
pub fn parse_fragment(fragment: &str) -> Result<(Option<String>, Option<String>), FragmentError> {
    let err = |reason| FragmentError {
        fragment: fragment.to_string(),
        reason,
    };
    let mut parts: Vec<String> = Vec::new();
    let mut chars = fragment.chars().peekable();
    while chars.peek().is_some() {
        let mut part = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            loop {
                match chars.next() {
                    Some('"') => break,
                    Some('\\') => part.extend(chars.next()),
                    Some(c) => part.push(c),
                    None => return Err(err("unclosed quote")),
                }
            }
            match chars.next() {
                None | Some('.') => {}
                Some(_) => return Err(err("text after a closing quote")),
            }
        } else {
            for c in chars.by_ref() {
                if c == '.' {
                    break;
                }
                part.push(c);
            }
        }
        parts.push(part);
    }
    let non_empty = |p: Option<String>| p.filter(|s| !s.is_empty());
    let mut it = parts.into_iter();
    let (node, profile) = (non_empty(it.next()), non_empty(it.next()));
    if it.next().is_some() {
        return Err(err(
            "more than node and profile; quote names that contain dots",
        ));
    }
    if node.is_none() && profile.is_some() {
        return Err(err("a profile without a node"));
    }
    Ok((node, profile))
}

/// Shell-style glob (`*`, `?`) matching of a whole string.
///
/// `wildmatch` knows exactly these two wildcards, every other character being literal, as
/// [`glob_to_regex`] does for the nix-side filter, so both sides select the same hosts (globset
/// would add `[…]` classes and `{a,b}` alternation that the nix-side regex does not have).
pub fn glob_match(glob: &str, text: &str) -> bool {
    wildmatch::WildMatch::new(glob).matches(text)
}

/// Translates a glob into a POSIX extended regex for `builtins.match` (which matches whole strings).
pub fn glob_to_regex(glob: &str) -> String {
    let mut out = String::new();
    for c in glob.chars() {
        match c {
            '*' => out.push_str(".*"),
            '?' => out.push('.'),
            c if "\\.^$|()[]{}+".contains(c) => {
                out.push('[');
                if c == '\\' || c == '^' || c == ']' || c == '[' {
                    out.push('\\');
                }
                out.push(c);
                out.push(']');
            }
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_globs_and_tags() {
        let sel = Selection::parse_on(&["web-*,db1".into(), "@eu-?".into()]);
        assert!(sel.matches("web-3", &[]));
        assert!(sel.matches("db1", &[]));
        assert!(!sel.matches("db2", &[]));
        assert!(sel.matches("cache", &["eu-1".into()]));
        assert!(!sel.matches("cache", &["us-1".into()]));
        assert!(Selection::default().matches("anything", &[]));
    }

    #[test]
    fn fragment_selects_node_and_profile() {
        let sel = Selection::default()
            .with_fragment("alpha.app")
            .expect("valid");
        assert_eq!(sel.selectors, [Selector::Name("alpha".into())]);
        assert_eq!(sel.profile.as_deref(), Some("app"));
    }

    #[test]
    fn fragments_quote_names_with_dots_as_deploy_rs_does() {
        let some = |s: &str| Some(s.to_string());
        assert_eq!(parse_fragment("web1"), Ok((some("web1"), None)));
        assert_eq!(parse_fragment("web1."), Ok((some("web1"), None)));
        assert_eq!(parse_fragment(""), Ok((None, None)));
        assert_eq!(
            parse_fragment("\"web1.example.com\".system"),
            Ok((some("web1.example.com"), some("system")))
        );
        assert_eq!(
            parse_fragment("computer.\"something.nix\""),
            Ok((some("computer"), some("something.nix")))
        );
        assert!(parse_fragment("a.b.c").is_err());
        assert!(parse_fragment("\"a.b").is_err());
        let sel = Selection::default()
            .with_fragment("\"web1.example.com\"")
            .expect("valid");
        assert!(sel.matches("web1.example.com", &[]));
        assert!(!sel.matches("web1xexample.com", &[]));
    }

    #[test]
    fn globs_know_star_and_question_mark_only() {
        assert!(glob_match("web-*", "web-"));
        assert!(glob_match("*-db-*", "eu-db-1"));
        assert!(glob_match("a?c", "abc"));
        assert!(!glob_match("a?c", "ac"));
        assert!(!glob_match("web", "web1"), "whole string");
        // Brackets and braces are literal, as in glob_to_regex.
        assert!(glob_match("rack[1]", "rack[1]"));
        assert!(!glob_match("rack[12]", "rack1"));
        assert!(glob_match("{a,b}", "{a,b}"));
        assert!(!glob_match("{a,b}", "a"));
    }

    #[test]
    fn regex_escapes_special_characters() {
        assert_eq!(glob_to_regex("web-*.eu"), "web-.*[.]eu");
        assert_eq!(glob_to_regex("a?b"), "a.b");
    }
}
