//! nix's machine-readable log (`--log-format internal-json`): which derivations finished building, and
//! the counters nix keeps for builds and copies (paths done / expected, bytes done / expected).
//!
//! Each line is `@nix {json}`: `start` of an activity (its id, type and fields), `stop` of an id, `result`
//! of an id (progress numbers), `msg` (what nix would have printed).

use std::collections::HashMap;

/// Activity types of nix's logger (`ActivityType` in nix's `logging.hh`, the same from 2.8 to 2.26).
const ACT_COPY_PATH: u64 = 100;
const ACT_COPY_PATHS: u64 = 103;
const ACT_BUILDS: u64 = 104;
const ACT_BUILD: u64 = 105;
/// Result types: `resProgress` (done, expected, running, failed) and `resSetExpected` (activity type, n).
const RES_PROGRESS: u64 = 105;
const RES_SET_EXPECTED: u64 = 106;

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
            "result"
                if json.get("type")?.as_u64()? == RES_SET_EXPECTED
                    && num(0) == ACT_COPY_PATH
                    && self.activities.get(&id?)?.0 == ACT_COPY_PATHS =>
            {
                Some(LogEvent::CopyBytesExpected(num(1)))
            }
            "msg" if json.get("level")?.as_u64()? <= 1 => {
                Some(LogEvent::Message(json.get("msg")?.as_str()?.to_string()))
            }
            _ => None,
        }
    }
}

/// Runs `nix ARGS` (ARGS starting with [`crate::invoke::experimental_args`]) with its log as JSON, handing
/// every event to `on_event`. A failure carries nix's error messages as text, not the JSON log.
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
}
