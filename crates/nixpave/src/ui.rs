//! Output conventions every renderer honours: `--color auto|always|never` (and `NO_COLOR`), and
//! `-q/--quiet`. Set once by `main` from the global flags; read by the commands' renderers.

use std::io::IsTerminal;
use std::sync::OnceLock;

/// `--color`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ColorChoice {
    // Plain comments, not doc comments: documented variants would turn every command's --help
    // into the long form. The meanings are in the flag's own help.
    #[allow(missing_docs)]
    Auto,
    #[allow(missing_docs)]
    Always,
    #[allow(missing_docs)]
    Never,
}

/// The output settings of this run.
#[derive(Debug, Clone, Copy)]
pub struct Ui {
    /// Colour on stdout.
    pub color_stdout: bool,
    /// Colour on stderr.
    pub color_stderr: bool,
    /// `-q`: no progress and no informational messages; results and errors only.
    pub quiet: bool,
}

static UI: OnceLock<Ui> = OnceLock::new();

/// Decides colour (pure): `always`/`never` win; `auto` colours a terminal unless `NO_COLOR` is set to
/// a non-empty value (<https://no-color.org>).
pub fn decide(choice: ColorChoice, no_color: Option<&str>, terminal: bool) -> bool {
    match choice {
        ColorChoice::Always => true,
        ColorChoice::Never => false,
        ColorChoice::Auto => terminal && no_color.is_none_or(str::is_empty),
    }
}

/// Sets this run's settings (once, from `main`) and applies them to miette's error reports.
pub fn init(choice: ColorChoice, quiet: bool) -> Ui {
    let no_color = std::env::var("NO_COLOR").ok();
    let ui = Ui {
        color_stdout: decide(choice, no_color.as_deref(), std::io::stdout().is_terminal()),
        color_stderr: decide(choice, no_color.as_deref(), std::io::stderr().is_terminal()),
        quiet,
    };
    let _ = UI.set(ui);
    let color = ui.color_stderr;
    let _ = miette::set_hook(Box::new(move |_| {
        // Not wrapped: reports carry paths and commands that must stay copyable.
        Box::new(
            miette::MietteHandlerOpts::new()
                .color(color)
                .wrap_lines(false)
                .build(),
        )
    }));
    ui
}

fn get() -> Ui {
    UI.get().copied().unwrap_or(Ui {
        color_stdout: false,
        color_stderr: false,
        quiet: false,
    })
}

/// True with `-q/--quiet`.
pub fn quiet() -> bool {
    get().quiet
}

/// A status word (`ok`, `failed`, …) coloured for stdout when colour is on: green for success,
/// red for failure, yellow for anything else.
pub fn status(word: &str) -> String {
    paint(get().color_stdout, word)
}

/// [`status`] for stderr.
pub fn status_stderr(word: &str) -> String {
    paint(get().color_stderr, word)
}

fn paint(on: bool, word: &str) -> String {
    if !on {
        return word.to_string();
    }
    let code = match word.trim().to_ascii_lowercase().as_str() {
        "ok" | "deployed" | "unchanged" | "dry-activated" => "32",
        "failed" | "error" | "refused" | "rolled-back" | "killed" => "31",
        _ => "33",
    };
    format!("\x1b[{code}m{word}\x1b[0m")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_color_and_the_flag() {
        assert!(decide(ColorChoice::Auto, None, true));
        assert!(decide(ColorChoice::Auto, Some(""), true));
        assert!(!decide(ColorChoice::Auto, Some("1"), true));
        assert!(!decide(ColorChoice::Auto, None, false));
        assert!(decide(ColorChoice::Always, Some("1"), false));
        assert!(!decide(ColorChoice::Never, None, true));
        assert_eq!(paint(true, "failed"), "\x1b[31mfailed\x1b[0m");
        assert_eq!(paint(false, "failed"), "failed");
    }
}
