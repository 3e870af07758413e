//! Evaluating Nix expressions to JSON with the real nix CLI.
//!
//! - [`eval_file`]: a `.nix` file through `nix-instantiate --eval --strict --json`. A file that is a
//!   function is called with `{ lib; } // <--arg/--argstr values>`, like disko does; `lib` is
//!   nixpkgs' lib when `<nixpkgs>` resolves, else a small built-in shim ([`LIB_SHIM`]).
//! - [`eval_flake_attr`]: an attribute of a flake through `nix eval --json` (`--flake REF#NAME`).
//!
//! Both strip the module-system markers that `mkDefault`/`mkForce`/`mkIf`/`mkMerge` leave in a
//! plain evaluation, so the JSON is what the module system would have produced for plain data.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::invoke::{run_local, NixError};

/// How long one evaluation may take before it is killed.
pub const EVAL_TIMEOUT: Duration = Duration::from_secs(300);

/// A `--arg NAME EXPR` or `--argstr NAME VALUE` passed to a function-valued file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NixArg {
    /// `--arg NAME EXPR`: the value is a Nix expression.
    Expr {
        /// Argument name.
        name: String,
        /// Nix expression.
        expr: String,
    },
    /// `--argstr NAME VALUE`: the value is a string.
    Str {
        /// Argument name.
        name: String,
        /// String value.
        value: String,
    },
}

/// Failures of an evaluation.
#[derive(Debug, thiserror::Error)]
pub enum EvalError {
    /// The nix program could not be started.
    #[error("cannot run `{program}` (is nix installed?): {source}")]
    Spawn {
        /// Program name.
        program: String,
        /// OS error.
        source: std::io::Error,
    },
    /// The file does not exist or cannot be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// File path.
        path: PathBuf,
        /// OS error.
        source: std::io::Error,
    },
    /// nix reported an error (syntax, undefined variable, missing attribute, ...).
    #[error("nix evaluation of {what} failed:\n{stderr}")]
    Nix {
        /// What was evaluated (file or flake attribute).
        what: String,
        /// nix's error message (tail of stderr).
        stderr: String,
    },
    /// The evaluation did not finish in time.
    #[error("nix evaluation of {what} did not finish within {seconds}s")]
    Timeout {
        /// What was evaluated.
        what: String,
        /// The timeout.
        seconds: u64,
    },
    /// Cancellation was requested (Ctrl-C) and the evaluation was stopped.
    #[error("nix evaluation of {what} was interrupted")]
    Interrupted {
        /// What was evaluated.
        what: String,
    },
    /// nix printed something that is not JSON.
    #[error("nix evaluation of {what} printed invalid JSON: {source}")]
    Json {
        /// What was evaluated.
        what: String,
        /// Parse error.
        source: serde_json::Error,
    },
}

/// A minimal stand-in for nixpkgs' `lib`, enough for disko layout files when `<nixpkgs>` is not
/// on the NIX_PATH. `mk*` helpers produce the same markers as nixpkgs so [`RESOLVE`] handles both.
pub const LIB_SHIM: &str = r#"
let
  b = builtins;
  lib = rec {
    inherit (b) replaceStrings attrNames attrValues hasAttr head tail length elem elemAt filter
      map listToAttrs toString concatStringsSep concatMap isAttrs isList isString isInt isBool
      isFunction foldl' genList substring stringLength mapAttrs removeAttrs toJSON fromJSON
      match split trace seq deepSeq typeOf getAttr any all sort;
    id = x: x;
    const = x: _: x;
    flip = f: a: c: f c a;
    genAttrs = names: f: b.listToAttrs (b.map (n: { name = n; value = f n; }) names);
    nameValuePair = name: value: { inherit name value; };
    mapAttrs' = f: set: b.listToAttrs (b.map (n: f n set.${n}) (b.attrNames set));
    mapAttrsToList = f: set: b.map (n: f n set.${n}) (b.attrNames set);
    filterAttrs = pred: set: b.listToAttrs (b.concatMap (n: if pred n set.${n} then [ { name = n; value = set.${n}; } ] else [ ]) (b.attrNames set));
    optional = c: x: if c then [ x ] else [ ];
    optionals = c: xs: if c then xs else [ ];
    optionalString = c: s: if c then s else "";
    optionalAttrs = c: s: if c then s else { };
    flatten = x: if b.isList x then b.concatMap flatten x else [ x ];
    range = first: last: if first > last then [ ] else b.genList (n: first + n) (last - first + 1);
    imap0 = f: list: b.genList (n: f n (b.elemAt list n)) (b.length list);
    imap1 = f: list: b.genList (n: f (n + 1) (b.elemAt list n)) (b.length list);
    last = list: b.elemAt list (b.length list - 1);
    init = list: b.genList (n: b.elemAt list n) (b.length list - 1);
    foldl = b.foldl';
    foldr = op: nul: list: let len = b.length list; go = n: if n == len then nul else op (b.elemAt list n) (go (n + 1)); in go 0;
    hasPrefix = pre: s: b.substring 0 (b.stringLength pre) s == pre;
    hasSuffix = suf: s: let ls = b.stringLength s; lf = b.stringLength suf; in lf <= ls && b.substring (ls - lf) lf s == suf;
    removePrefix = pre: s: if hasPrefix pre s then b.substring (b.stringLength pre) (b.stringLength s) s else s;
    removeSuffix = suf: s: if hasSuffix suf s then b.substring 0 (b.stringLength s - b.stringLength suf) s else s;
    concatMapStringsSep = sep: f: list: b.concatStringsSep sep (b.map f list);
    concatStrings = b.concatStringsSep "";
    splitString = sep: s: b.filter b.isString (b.split (b.replaceStrings [ "." "*" "+" "?" "(" ")" "[" "]" "{" "}" "|" "^" "$" "\\" ] [ "\\." "\\*" "\\+" "\\?" "\\(" "\\)" "\\[" "\\]" "\\{" "\\}" "\\|" "\\^" "\\$" "\\\\" ] sep) s);
    recursiveUpdate = l: r: l // b.mapAttrs (n: v: if b.isAttrs v && b.isAttrs (l.${n} or null) then recursiveUpdate l.${n} v else v) r;
    unique = list: b.foldl' (acc: x: if b.elem x acc then acc else acc ++ [ x ]) [ ] list;
    zipListsWith = f: xs: ys: b.genList (n: f (b.elemAt xs n) (b.elemAt ys n)) (if b.length xs < b.length ys then b.length xs else b.length ys);
    mkOverride = priority: content: { _type = "override"; inherit priority content; };
    mkDefault = mkOverride 1000;
    mkForce = mkOverride 50;
    mkVMOverride = mkOverride 10;
    mkIf = condition: content: { _type = "if"; inherit condition content; };
    mkMerge = contents: { _type = "merge"; inherit contents; };
    mkBefore = x: x;
    mkAfter = x: x;
    mkOrder = _: x: x;
  };
in lib
"#;

/// A Nix function that removes module-system markers (override/if/merge) from plain data.
pub const RESOLVE: &str = r#"
let
  b = builtins;
  kind = v: if b.isAttrs v then (v._type or null) else null;
  dropped = v: kind v == "if" && !v.condition;
  merge = l: r: l // b.mapAttrs (n: v: if b.isAttrs v && b.isAttrs (l.${n} or null) then merge l.${n} v else v) r;
  resolve = v:
    if kind v == "override" then resolve v.content
    else if kind v == "if" then resolve v.content
    else if kind v == "merge" then b.foldl' merge { } (b.map resolve (b.filter (x: !dropped x) v.contents))
    else if b.isAttrs v then
      b.listToAttrs (b.map (n: { name = n; value = resolve v.${n}; })
        (b.filter (n: !dropped v.${n}) (b.attrNames v)))
    else if b.isList v then b.map resolve (b.filter (x: !dropped x) v)
    else v;
in resolve
"#;

/// A Nix string literal for `s`: escapes `"`, `\\`, `${` (as `\${`; a lone `$` stays), newline, tab and
/// carriage return. The one quoting function for text spliced into Nix expressions.
pub fn nix_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            '$' if chars.peek() == Some(&'{') => out.push_str("\\$"),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// The `lib` expression: nixpkgs' lib when `<nixpkgs>` is on the NIX_PATH, else [`LIB_SHIM`].
fn lib_expr() -> String {
    format!(
        "(let np = builtins.filter (e: e.prefix == \"nixpkgs\") builtins.nixPath; \
         in if np != [ ] && builtins.pathExists ((builtins.head np).path + \"/lib/default.nix\") \
         then import ((builtins.head np).path + \"/lib\") else {LIB_SHIM})"
    )
}

/// Evaluates a `.nix` file to JSON. A function-valued file is called with `lib` plus `args`.
pub fn eval_file(path: &Path, args: &[NixArg]) -> Result<serde_json::Value, EvalError> {
    let abs = std::fs::canonicalize(path).map_err(|source| EvalError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let file = nix_string(&abs.to_string_lossy());
    // The arguments are spelled into the expression (nix-instantiate only auto-calls the
    // top-level function when --arg is given, and a layout may not accept extra names).
    let mut passed = String::new();
    for arg in args {
        match arg {
            NixArg::Expr { name, expr } => {
                passed.push_str(&format!("{} = ({expr}\n); ", nix_string(name)))
            }
            NixArg::Str { name, value } => {
                passed.push_str(&format!("{} = {}; ", nix_string(name), nix_string(value)))
            }
        }
    }
    let expr = format!(
        "let f = import (/. + {file}); lib = {lib}; resolve = {RESOLVE}; args = {{ {passed}}}; \
         in resolve (if builtins.isFunction f then f ({{ inherit lib; }} // args) else f)",
        lib = lib_expr()
    );
    let mut cmd = Command::new("nix-instantiate");
    cmd.args(["--eval", "--strict", "--json", "--expr", &expr]);
    run_json(cmd, &abs.display().to_string())
}

/// Evaluates `attr` (e.g. `diskoConfigurations.x`) of the flake `flake_ref` to JSON, applying
/// `apply` (a Nix function) to the value first when given.
pub fn eval_flake_attr(
    flake_ref: &str,
    attr: &str,
    apply: Option<&str>,
) -> Result<serde_json::Value, EvalError> {
    let flake = crate::flake::normalise_flake_ref(flake_ref);
    let apply = match apply {
        Some(f) => format!("v: {RESOLVE} (({f}) v)"),
        None => RESOLVE.to_string(),
    };
    eval_installable(&format!("{flake}#{attr}"), &apply)
}

/// True when the flake has the attribute (evaluates `builtins.hasAttr` along the path).
pub fn flake_has_attr(flake_ref: &str, output: &str, name: &str) -> Result<bool, EvalError> {
    let flake = crate::flake::normalise_flake_ref(flake_ref);
    let apply = format!("o: builtins.hasAttr {} o", nix_string(name));
    match eval_installable(&format!("{flake}#{output}"), &apply) {
        Ok(v) => Ok(v.as_bool().unwrap_or(false)),
        Err(EvalError::Nix { stderr, .. }) if stderr.contains("does not provide attribute") => {
            Ok(false)
        }
        Err(e) => Err(e),
    }
}

/// `nix eval --json INSTALLABLE --apply APPLY`, parsed.
fn eval_installable(installable: &str, apply: &str) -> Result<serde_json::Value, EvalError> {
    let mut cmd = Command::new("nix");
    cmd.args(crate::invoke::experimental_args()).args([
        "eval",
        "--json",
        installable,
        "--apply",
        apply,
    ]);
    run_json(cmd, installable)
}

/// Runs a nix command (through the one process runner: [`EVAL_TIMEOUT`], cancellable) and
/// parses its stdout as JSON.
fn run_json(cmd: Command, what: &str) -> Result<serde_json::Value, EvalError> {
    let program = cmd.get_program().to_string_lossy().into_owned();
    tracing::debug!(?cmd, "evaluating");
    let shown = format!("{program} (evaluating {what})");
    let out = run_local(cmd, &shown, Some(EVAL_TIMEOUT)).map_err(|e| match e {
        NixError::Timeout { seconds, .. } => EvalError::Timeout {
            what: what.to_string(),
            seconds,
        },
        NixError::Interrupted { .. } => EvalError::Interrupted {
            what: what.to_string(),
        },
        NixError::Spawn { source, .. } => EvalError::Spawn { program, source },
        other => EvalError::Spawn {
            program,
            source: std::io::Error::other(other.to_string()),
        },
    })?;
    if !out.success() {
        let text = String::from_utf8_lossy(&out.stderr);
        // this machine-level warning says nothing about the evaluation
        let lines: Vec<&str> = text
            .lines()
            .filter(|l| !l.contains("build-users-group"))
            .collect();
        return Err(EvalError::Nix {
            what: what.to_string(),
            stderr: nixpave_remote::last_lines(&lines.join("\n"), 30),
        });
    }
    serde_json::from_slice(&out.stdout).map_err(|source| EvalError::Json {
        what: what.to_string(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nix_string_escapes_quotes_backslashes_and_interpolation() {
        assert_eq!(nix_string(r#"a"b\c${d}$e"#), r#""a\"b\\c\${d}$e""#);
        assert_eq!(nix_string("a\"b${c}\\"), "\"a\\\"b\\${c}\\\\\"");
        assert_eq!(nix_string("1\n2\t3\r$"), r#""1\n2\t3\r$""#);
        assert_eq!(nix_string("$${x}"), r#""$\${x}""#);
    }
}
