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

    /// Adds the selection of a `#node[.profile]` flake fragment.
    pub fn with_fragment(mut self, fragment: &str) -> Selection {
        let (node, profile) = match fragment.split_once('.') {
            Some((n, p)) => (n, Some(p.to_string())),
            None => (fragment, None),
        };
        if !node.is_empty() {
            self.selectors.push(Selector::Name(node.to_string()));
        }
        self.profile = profile;
        self
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

/// Shell-style glob (`*`, `?`) matching of a whole string.
pub fn glob_match(glob: &str, text: &str) -> bool {
    fn go(g: &[char], t: &[char]) -> bool {
        match (g.first(), t.first()) {
            (None, None) => true,
            (Some('*'), _) => go(&g[1..], t) || (!t.is_empty() && go(g, &t[1..])),
            (Some('?'), Some(_)) => go(&g[1..], &t[1..]),
            (Some(a), Some(b)) if a == b => go(&g[1..], &t[1..]),
            _ => false,
        }
    }
    let g: Vec<char> = glob.chars().collect();
    let t: Vec<char> = text.chars().collect();
    go(&g, &t)
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
        let sel = Selection::default().with_fragment("alpha.app");
        assert_eq!(sel.selectors, [Selector::Name("alpha".into())]);
        assert_eq!(sel.profile.as_deref(), Some("app"));
    }

    #[test]
    fn regex_escapes_special_characters() {
        assert_eq!(glob_to_regex("web-*.eu"), "web-.*[.]eu");
        assert_eq!(glob_to_regex("a?b"), "a.b");
    }
}
