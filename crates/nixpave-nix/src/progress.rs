//! nix's machine-readable log (`--log-format internal-json`): which derivations finished building, and
//! the counters nix keeps for builds and copies (paths done / expected, bytes done / expected).
//!
//! Each line is `@nix {json}`: `start` of an activity (its id, type and fields), `stop` of an id, `result`
//! of an id (progress numbers, or a line a builder printed), `msg` (what nix would have printed).
//!
//! Builders' output comes as `result`s of type `resBuildLogLine` of their `actBuild` activity (nix 2.8 to
//! 2.26 alike), and nix leaves it out of its own error message in this format (its JSON logger counts as
//! verbose). The reader keeps the last [`BUILD_LOG_LINES`] of each build, for the error of a failed build
//! ([`crate::invoke::NixError::Failed`]); they are no [`LogEvent`]s, so no progress view shows them.

use std::collections::{HashMap, VecDeque};

/// Activity types of nix's logger (`ActivityType` in nix's `logging.hh`, the same from 2.8 to 2.26).
const ACT_COPY_PATH: u64 = 100;
const ACT_COPY_PATHS: u64 = 103;
const ACT_BUILDS: u64 = 104;
const ACT_BUILD: u64 = 105;
/// Result types: `resProgress` (done, expected, running, failed) and `resSetExpected` (activity type, n).
const RES_PROGRESS: u64 = 105;
const RES_SET_EXPECTED: u64 = 106;
/// Result type `resBuildLogLine`: one line a builder printed (stdout and stderr alike), in `fields[0]`.
const RES_BUILD_LOG_LINE: u64 = 101;

/// How many of a build's last log lines are kept (nix's own error shows 10 by default).
pub const BUILD_LOG_LINES: usize = 20;
/// Longer log lines are cut to this many characters (a builder may print anything).
const LOG_LINE_CHARS: usize = 300;

/// The end of one derivation's build log, as nix passed it on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuildLog {
    /// The derivation built (`/nix/store/…-NAME.drv`).
    pub drv: String,
    /// Its last lines (at most [`BUILD_LOG_LINES`]), oldest first, without terminal escapes.
    pub lines: Vec<String>,
    /// How many lines it printed before those.
    pub earlier: usize,
}

impl std::fmt::Display for BuildLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.lines.is_empty() {
            return write!(f, "the build of {} printed nothing", self.drv);
        }
        let more = if self.earlier > 0 { "last " } else { "" };
        let s = if self.lines.len() == 1 { "" } else { "s" };
        write!(
            f,
            "{more}{} log line{s} of the build of {}:",
            self.lines.len(),
            self.drv
        )?;
        for line in &self.lines {
            write!(f, "\n> {line}")?;
        }
        Ok(())
    }
}

/// The log tail of one build while it runs.
#[derive(Debug, Default)]
struct Tail {
    lines: VecDeque<String>,
    earlier: usize,
}

impl Tail {
    fn push(&mut self, line: &str) {
        if self.lines.len() == BUILD_LOG_LINES {
            self.lines.pop_front();
            self.earlier += 1;
        }
        let mut line = strip_escapes(line);
        if let Some((cut, _)) = line.char_indices().nth(LOG_LINE_CHARS) {
            line.truncate(cut);
            line.push('…');
        }
        self.lines.push_back(line);
    }
}

/// `text` without terminal escape sequences (CSI: `ESC [ … final`), which nix and builders use for colour.
pub fn strip_escapes(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c != '\u{1b}' {
            out.push(c);
            continue;
        }
        // ESC [ parameters… final byte in '@'..='~'; a lone ESC (or another escape) is dropped.
        if chars.clone().next() == Some('[') {
            chars.next();
            for c in chars.by_ref() {
                if ('@'..='~').contains(&c) {
                    break;
                }
            }
        }
    }
    out
}

/// What one log line told.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LogEvent {
    /// The build of this derivation ended (successfully when its outputs now exist).
    BuildStopped(String),
    /// Counters of all builds: derivations done, expected, running, failed.
    Builds {
        /// Built so far.
        done: u64,
        /// To build in all.
        expected: u64,
        /// Building now.
        running: u64,
        /// Failed.
        failed: u64,
    },
    /// Counters of a copy: paths done and expected.
    CopyPaths {
        /// Paths copied so far.
        done: u64,
        /// Paths to copy in all.
        expected: u64,
    },
    /// Bytes of one path being copied: done and expected.
    CopyBytes {
        /// The path's activity (several are copied at once).
        id: u64,
        /// Bytes copied of this path.
        done: u64,
        /// Its size.
        expected: u64,
    },
    /// Bytes a copy will move in all.
    CopyBytesExpected(u64),
    /// A message nix printed (errors and warnings, at nix's level 0 or 1), as text.
    Message(String),
}

/// Reads `@nix` lines one after the other (it remembers which id is which activity).
#[derive(Debug, Default)]
pub struct LogReader {
    activities: HashMap<u64, (u64, Option<String>)>,
    /// The log tail of every derivation built, in the order the builds started.
    builds: Vec<(String, Tail)>,
    /// Build activity id → its index in `builds`.
    build_of: HashMap<u64, usize>,
}

impl LogReader {
    /// The event of one stderr line, if it tells one.
    pub fn line(&mut self, line: &str) -> Option<LogEvent> {
        let json: serde_json::Value = serde_json::from_str(line.strip_prefix("@nix ")?).ok()?;
        let id = json.get("id").and_then(|v| v.as_u64());
        let num = |i: usize| {
            json.get("fields")
                .and_then(|f| f.get(i))
                .and_then(|v| v.as_u64())
                .unwrap_or(0)
        };
        match json.get("action")?.as_str()? {
            "start" => {
                let kind = json.get("type")?.as_u64()?;
                let first = json
                    .get("fields")
                    .and_then(|f| f.get(0))
                    .and_then(|v| v.as_str())
                    .map(String::from);
                if let (ACT_BUILD, Some(drv)) = (kind, &first) {
                    // A derivation built again in one run (`--rounds`) keeps one log.
                    let at = match self.builds.iter().position(|(d, _)| d == drv) {
                        Some(at) => at,
                        None => {
                            self.builds.push((drv.clone(), Tail::default()));
                            self.builds.len() - 1
                        }
                    };
                    self.build_of.insert(id?, at);
                }
                self.activities.insert(id?, (kind, first));
                None
            }
            "stop" => match self.activities.remove(&id?)? {
                (ACT_BUILD, Some(drv)) => Some(LogEvent::BuildStopped(drv)),
                _ => None,
            },
            "result" if json.get("type")?.as_u64()? == RES_PROGRESS => {
                match self.activities.get(&id?)?.0 {
                    ACT_BUILDS => Some(LogEvent::Builds {
                        done: num(0),
                        expected: num(1),
                        running: num(2),
                        failed: num(3),
                    }),
                    ACT_COPY_PATHS => Some(LogEvent::CopyPaths {
                        done: num(0),
                        expected: num(1),
                    }),
                    ACT_COPY_PATH => Some(LogEvent::CopyBytes {
                        id: id?,
                        done: num(0),
                        expected: num(1),
                    }),
                    _ => None,
                }
            }
            "result" if json.get("type")?.as_u64()? == RES_BUILD_LOG_LINE => {
                let line = json.get("fields")?.get(0)?.as_str()?;
                let at = *self.build_of.get(&id?)?;
                self.builds.get_mut(at)?.1.push(line);
                None
            }
            "result"
                if json.get("type")?.as_u64()? == RES_SET_EXPECTED
                    && num(0) == ACT_COPY_PATH
                    && self.activities.get(&id?)?.0 == ACT_COPY_PATHS =>
            {
                Some(LogEvent::CopyBytesExpected(num(1)))
            }
            "msg" if json.get("level")?.as_u64()? <= 1 => {
                Some(LogEvent::Message(strip_escapes(json.get("msg")?.as_str()?)))
            }
            _ => None,
        }
    }

    /// The log tails of the derivations built so far (also those that succeeded), in the order their
    /// builds started.
    pub fn build_logs(&self) -> Vec<BuildLog> {
        self.builds
            .iter()
            .map(|(drv, tail)| BuildLog {
                drv: drv.clone(),
                lines: tail.lines.iter().cloned().collect(),
                earlier: tail.earlier,
            })
            .collect()
    }
}

/// Runs `nix ARGS` (ARGS starting with [`crate::invoke::experimental_args`]) with its log as JSON, handing
/// every event to `on_event`. A failure carries nix's error messages as text, not the JSON log, and the log
/// tails of the derivations it built ([`LogReader::build_logs`]: all of them, the caller knows which failed).
pub fn run_with_log(
    args: &[String],
    opts: &crate::invoke::NixOptions,
    env: &[(String, String)],
    on_event: &mut dyn FnMut(LogEvent),
) -> Result<crate::invoke::NixOutput, crate::invoke::NixError> {
    let mut args = args.to_vec();
    let at = 2.min(args.len());
    args.splice(
        at..at,
        ["--log-format".to_string(), "internal-json".to_string()],
    );
    let mut reader = LogReader::default();
    let mut messages: Vec<String> = Vec::new();
    let result = crate::invoke::run_nix_streaming("nix", &args, opts, env, &mut |stream, line| {
        if stream != nixpave_remote::OutputStream::Stderr {
            return;
        }
        match reader.line(line) {
            Some(LogEvent::Message(text)) => messages.push(text),
            Some(event) => on_event(event),
            None => {}
        }
    });
    match result {
        Err(crate::invoke::NixError::Failed {
            command, status, ..
        }) => Err(crate::invoke::NixError::Failed {
            command,
            status,
            stderr: crate::invoke::tail(&messages.join("\n"), 20),
            builds: reader.build_logs(),
        }),
        other => other,
    }
}

/// How far a copy is, summed up from its [`LogEvent`]s.
#[derive(Debug, Default, Clone)]
pub struct CopyProgress {
    /// Paths copied and to copy.
    pub paths: (u64, u64),
    /// Bytes expected in all.
    pub bytes_expected: u64,
    by_path: HashMap<u64, u64>,
}

impl CopyProgress {
    /// Takes in one event; true when something changed.
    pub fn add(&mut self, event: &LogEvent) -> bool {
        match *event {
            LogEvent::CopyPaths { done, expected } => self.paths = (done, expected),
            LogEvent::CopyBytes { id, done, .. } => {
                self.by_path.insert(id, done);
            }
            LogEvent::CopyBytesExpected(n) => self.bytes_expected = n,
            _ => return false,
        }
        true
    }

    /// Bytes copied so far.
    pub fn bytes_done(&self) -> u64 {
        self.by_path.values().sum()
    }

    /// `3/10 paths, 12.5/50.0 MiB`.
    pub fn text(&self) -> String {
        let mib = |b: u64| b as f64 / 1048576.0;
        format!(
            "{}/{} paths, {:.1}/{:.1} MiB",
            self.paths.0,
            self.paths.1,
            mib(self.bytes_done()),
            mib(self.bytes_expected)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `nix build --log-format internal-json` of two derivations with nix 2.8.0 (captured, shortened).
    const BUILD_2_8: &str = r#"@nix {"action":"start","id":46634754899969,"level":0,"text":"","type":104}
@nix {"action":"result","fields":[0,2,0,0],"id":46634754899969,"type":105}
@nix {"action":"start","fields":["/nix/store/g1q5mmf654g0lwf7vshlcdqyaf2bjr0b-t-c.drv","",1,1],"id":46634754899972,"level":3,"text":"building '/nix/store/g1q5mmf654g0lwf7vshlcdqyaf2bjr0b-t-c.drv'","type":105}
@nix {"action":"result","fields":[0,2,1,0],"id":46634754899969,"type":105}
@nix {"action":"result","fields":["a build log line"],"id":46634754899972,"type":101}
@nix {"action":"stop","id":46634754899972}
@nix {"action":"result","fields":[1,2,0,0],"id":46634754899969,"type":105}
@nix {"action":"msg","level":0,"msg":"error: builder for '/nix/store/x.drv' failed with exit code 1"}
@nix {"action":"stop","id":46634754899969}
not json at all"#;

    #[test]
    fn reads_finished_builds_counters_and_errors() {
        let mut reader = LogReader::default();
        let events: Vec<LogEvent> = BUILD_2_8.lines().filter_map(|l| reader.line(l)).collect();
        assert_eq!(
            events,
            [
                LogEvent::Builds {
                    done: 0,
                    expected: 2,
                    running: 0,
                    failed: 0
                },
                LogEvent::Builds {
                    done: 0,
                    expected: 2,
                    running: 1,
                    failed: 0
                },
                LogEvent::BuildStopped(
                    "/nix/store/g1q5mmf654g0lwf7vshlcdqyaf2bjr0b-t-c.drv".into()
                ),
                LogEvent::Builds {
                    done: 1,
                    expected: 2,
                    running: 0,
                    failed: 0
                },
                LogEvent::Message(
                    "error: builder for '/nix/store/x.drv' failed with exit code 1".into()
                ),
            ]
        );
    }

    /// A failed `nix build` of three derivations (`tests/fixtures/build-log.nix`: one built, one failing after
    /// 27 log lines, one stopped) recorded from nix 2.8.0 and 2.26.3.
    const FAILED_2_8: &str = include_str!("../tests/fixtures/build-fail-2.8.log");
    const FAILED_2_26: &str = include_str!("../tests/fixtures/build-fail-2.26.log");

    #[test]
    fn keeps_the_last_log_lines_of_each_build_of_both_versions() {
        for (log, tag) in [(FAILED_2_8, "v28"), (FAILED_2_26, "v226")] {
            let mut reader = LogReader::default();
            let events: Vec<LogEvent> = log.lines().filter_map(|l| reader.line(l)).collect();
            let logs = reader.build_logs();
            let names: Vec<&str> = logs
                .iter()
                .map(|l| l.drv.rsplit_once('-').map_or("", |(_, t)| t))
                .collect();
            assert_eq!(logs.len(), 3, "{tag}: {logs:?}");
            let bad = logs
                .iter()
                .find(|l| l.drv.ends_with(&format!("-nixpave-log-bad-{tag}.drv")))
                .unwrap_or_else(|| panic!("{tag}: no log of the failed build in {names:?}"));
            // 28 lines printed: "bad starting", 25 steps, a coloured one, the failure; the last 20 kept.
            assert_eq!(bad.lines.len(), BUILD_LOG_LINES, "{tag}");
            assert_eq!(bad.earlier, 8, "{tag}");
            assert_eq!(bad.lines[0], "step 8", "{tag}");
            assert_eq!(bad.lines[18], "red", "{tag}: escapes are dropped");
            assert_eq!(bad.lines[19], "build failed on purpose: 42", "{tag}");
            let ok = logs
                .iter()
                .find(|l| l.drv.contains("-nixpave-log-ok-"))
                .expect("ok");
            assert_eq!(ok.lines, ["ok building"], "{tag}");
            let shown = bad.to_string();
            assert!(
                shown.starts_with(&format!(
                    "last 20 log lines of the build of {}:\n> step 8\n",
                    bad.drv
                )) && shown.ends_with("\n> build failed on purpose: 42"),
                "{tag}: {shown}"
            );
            // Log lines are no events (the progress view never sees them); nix's error is one, without escapes.
            assert!(
                !events.iter().any(|e| matches!(e, LogEvent::Message(m) if m.contains("step ") || m.contains("on purpose"))),
                "{tag}: {events:?}"
            );
            let errors: Vec<&String> = events
                .iter()
                .filter_map(|e| match e {
                    LogEvent::Message(m) => Some(m),
                    _ => None,
                })
                .collect();
            assert!(
                errors[0].starts_with("error: builder for '/nix/store/")
                    && errors[0].ends_with(&format!(
                        "-nixpave-log-bad-{tag}.drv' failed with exit code 1"
                    )),
                "{tag}: {errors:?}"
            );
            assert!(events.contains(&LogEvent::Builds {
                done: 1,
                expected: 2,
                running: 1,
                failed: 1
            }));
        }
    }

    #[test]
    fn long_lines_and_escapes() {
        assert_eq!(strip_escapes("\u{1b}[31;1merror:\u{1b}[0m x"), "error: x");
        assert_eq!(strip_escapes("a\u{1b}b\u{1b}"), "ab");
        let mut tail = Tail::default();
        tail.push(&"é".repeat(LOG_LINE_CHARS + 5));
        assert_eq!(tail.lines[0].chars().count(), LOG_LINE_CHARS + 1);
        assert!(tail.lines[0].ends_with('…'));
        let empty = BuildLog {
            drv: "/nix/store/a-x.drv".into(),
            lines: Vec::new(),
            earlier: 0,
        };
        assert_eq!(
            empty.to_string(),
            "the build of /nix/store/a-x.drv printed nothing"
        );
    }
}
