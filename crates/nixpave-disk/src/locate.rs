//! Finds where an attribute path (`disk.main.content.partitions.ESP.sise`) is written in a Nix
//! file, with rnix, so layout errors can name `file:line`. Best effort: attributes built by
//! functions (e.g. `lib.genAttrs`) lead to the closest enclosing attribute that is written out.

use rnix::ast::{self, HasEntry};
use rowan::ast::AstNode;

/// The 1-based line of the deepest written prefix of `path` in `source`, if any.
pub fn line_of(source: &str, path: &[String]) -> Option<usize> {
    let root = rnix::Root::parse(source).tree();
    let expr = root.expr()?;
    let mut with_prefix: Vec<String> = vec!["disko".into(), "devices".into()];
    with_prefix.extend(path.iter().cloned());
    let best = [find(&expr, &with_prefix), find(&expr, path)]
        .into_iter()
        .flatten()
        .max_by_key(|(depth, _)| *depth)?;
    let offset: usize = best.1;
    Some(source[..offset.min(source.len())].matches('\n').count() + 1)
}

/// The name of an attribute when it is written literally (`name` or `"name"`).
fn attr_name(attr: &ast::Attr) -> Option<String> {
    match attr {
        ast::Attr::Ident(i) => i.ident_token().map(|t| t.text().to_string()),
        ast::Attr::Str(s) => match s.normalized_parts().as_slice() {
            [ast::InterpolPart::Literal(text)] => Some(text.clone()),
            [] => Some(String::new()),
            _ => None,
        },
        ast::Attr::Dynamic(_) => None,
    }
}

/// (segments matched, byte offset) of the deepest match of `path` below `expr`.
fn find(expr: &ast::Expr, path: &[String]) -> Option<(usize, usize)> {
    if path.is_empty() {
        return None;
    }
    match expr {
        ast::Expr::Lambda(l) => find(&l.body()?, path),
        ast::Expr::Paren(p) => find(&p.expr()?, path),
        ast::Expr::LetIn(l) => find(&l.body()?, path),
        ast::Expr::With(w) => find(&w.body()?, path),
        ast::Expr::BinOp(b) => {
            let r = b.rhs().and_then(|r| find(&r, path));
            let l = b.lhs().and_then(|l| find(&l, path));
            [r, l].into_iter().flatten().max_by_key(|(d, _)| *d)
        }
        ast::Expr::List(l) => {
            let i: usize = path[0].parse().ok()?;
            let item = l.items().nth(i)?;
            let here = (1, usize::from(item.syntax().text_range().start()));
            Some(
                find(&item, &path[1..])
                    .map(|(d, o)| (d + 1, o))
                    .unwrap_or(here),
            )
        }
        ast::Expr::AttrSet(set) => {
            let mut best: Option<(usize, usize)> = None;
            for entry in set.attrpath_values() {
                let Some(attrpath) = entry.attrpath() else {
                    continue;
                };
                let attrs: Vec<ast::Attr> = attrpath.attrs().collect();
                let names: Vec<Option<String>> = attrs.iter().map(attr_name).collect();
                let matched = names
                    .iter()
                    .zip(path)
                    .take_while(|(n, p)| n.as_deref() == Some(p.as_str()))
                    .count();
                if matched == 0 {
                    continue;
                }
                let at = usize::from(attrs[matched - 1].syntax().text_range().start());
                let candidate = if matched == names.len() && matched < path.len() {
                    entry
                        .value()
                        .and_then(|v| find(&v, &path[matched..]))
                        .map(|(d, o)| (d + matched, o))
                        .unwrap_or((matched, at))
                } else {
                    (matched, at)
                };
                if best.is_none_or(|(d, _)| candidate.0 > d) {
                    best = Some(candidate);
                }
            }
            best
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Vec<String> {
        s.split('.').map(str::to_string).collect()
    }

    #[test]
    fn finds_nested_and_dotted_attributes() {
        let src = "{\n  disko.devices = {\n    disk.main = {\n      content.partitions = {\n        ESP = {\n          sise = \"1M\";\n        };\n      };\n    };\n  };\n}\n";
        assert_eq!(
            line_of(src, &p("disk.main.content.partitions.ESP.sise")),
            Some(6)
        );
        assert_eq!(
            line_of(src, &p("disk.main.device")),
            Some(3),
            "closest written parent"
        );
    }

    #[test]
    fn sees_through_functions_lists_and_quoted_names() {
        let src = "{ lib, ... }:\n{\n  disko.devices.nodev.\"/tmp\" = {\n    fstype = \"tmpfs\";\n  };\n  disko.devices.disk.d.content.partitions = [\n    { a = 1; }\n    {\n      b = 2;\n    }\n  ];\n}\n";
        assert_eq!(
            line_of(src, &["nodev".into(), "/tmp".into(), "fstype".into()]),
            Some(4)
        );
        assert_eq!(line_of(src, &p("disk.d.content.partitions.1.b")), Some(9));
    }
}
