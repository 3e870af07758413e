//! Large flakes deployed as they evaluate: the fleet is listed (names only), the rollout starts from the list,
//! and the hosts of a chunk connect, push and activate while the next chunk evaluates.
//!
//! The evaluator, the builders and the rollout share an `Arrivals` store: the evaluator evaluates the chunks
//! one after the other (one `nix eval` of at most `limit` nodes at a time, so memory stays bounded) and hands
//! each chunk's build to the builders, which run up to [`build_parallelism`] chunks' builds at once, in chunk order of starting (a
//! chunk's slow build does not hold back the next chunk's); the rollout ([`run_waves_named`]: canary,
//! batches, max-failures by index, exactly as for a fleet evaluated in one go) starts every host's job, which
//! waits for its chunk's hosts and build, then deploys as usual ([`deploy_host`]: same safety). A chunk whose
//! evaluation or build fails fails its hosts (they count as failures for `maxFailures`); the others deploy.
//! The build progress heard is the fleet's: summed over the chunks' builds ([`BuildTally`]).

use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use crate::connection::Connector;
use crate::event::{Event, EventSink, HostReport, Outcome};
use crate::fleet::{bare_report, run_waves_named, BuildError, Builds, FleetReport};
use crate::host::{deploy_host, DeployOptions};
use crate::inventory::{Host, InventoryError, Listed};
use crate::rollout::RolloutSettings;

/// A chunk of the fleet could not be made ready to deploy: its hosts were not deployed.
#[derive(Debug, thiserror::Error)]
pub enum ChunkError {
    /// Its evaluation failed (or its nodes are invalid).
    #[error(
        "evaluating its chunk of the fleet ({first} and {more} other node(s)) failed: {source}"
    )]
    Eval {
        /// The chunk's first node.
        first: String,
        /// How many other nodes the chunk has.
        more: usize,
        /// Why (boxed: the error is large, the chunk's rows only read it).
        source: Box<InventoryError>,
    },
    /// Its evaluation gave other nodes than the listing (the flake changed meanwhile?).
    #[error("its chunk's evaluation has no node `{node}` (did the flake change while deploying?)")]
    Missing {
        /// The node asked for.
        node: String,
    },
    /// Its build could not be set up.
    #[error("preparing its chunk's build failed: {0}")]
    Build(#[source] BuildError),
    /// The rollout stopped (max failures, failed canary or Ctrl-C), or the evaluator ended by an internal
    /// error, before the chunk was evaluated.
    #[error("not evaluated: the rollout stopped (or the evaluator ended by an internal error)")]
    Stopped,
}

/// What [`deploy_listed`] did.
#[derive(Debug)]
pub struct ListedReport {
    /// One row per listed host, in listing order.
    pub report: FleetReport,
    /// The hosts evaluated (for `--rollback-succeeded`).
    pub hosts: Vec<Host>,
    /// Failed builds (their hosts' rows say so too).
    pub build_errors: Vec<BuildError>,
}

/// Where each host's job gets its host and its chunk's build, once its chunk is evaluated.
struct Arrivals {
    /// Host index → chunk number.
    chunk_of: Vec<usize>,
    state: Mutex<ArrivalState>,
    changed: Condvar,
}

type Ready = Result<(Vec<Host>, Arc<Builds>), Arc<ChunkError>>;

struct ArrivalState {
    /// Per chunk: `Some` once evaluated (or failed).
    chunks: Vec<Option<Ready>>,
    /// The rollout has ended: evaluate nothing more.
    stopped: bool,
}

impl Arrivals {
    fn new(listed: &Listed) -> Arrivals {
        let chunk_of = listed
            .chunks()
            .enumerate()
            .flat_map(|(i, chunk)| std::iter::repeat_n(i, chunk.len()))
            .collect();
        Arrivals {
            chunk_of,
            state: Mutex::new(ArrivalState {
                chunks: (0..listed.chunks().len()).map(|_| None).collect(),
                stopped: false,
            }),
            changed: Condvar::new(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, ArrivalState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn arrive(&self, chunk: usize, ready: Ready) {
        self.lock().chunks[chunk] = Some(ready);
        self.changed.notify_all();
    }

    /// Fails every chunk not evaluated yet (the evaluator ended, normally or not).
    fn fail_rest(&self) {
        let mut state = self.lock();
        for slot in state.chunks.iter_mut().filter(|c| c.is_none()) {
            *slot = Some(Err(Arc::new(ChunkError::Stopped)));
        }
        drop(state);
        self.changed.notify_all();
    }

    fn stop(&self) {
        self.lock().stopped = true;
    }

    fn stopped(&self) -> bool {
        self.lock().stopped || nixpave_remote::cancel::is_cancelled()
    }

    /// Waits for the chunk of host `index` (named `name`): its host and build, or why there are none. The
    /// wait ends when the evaluator has dealt with the chunk: it always does (a failed, stopped or panicked
    /// evaluator fails the chunks left), and Ctrl-C stops it between chunks.
    fn wait(&self, index: usize, name: &str) -> Result<(Host, Arc<Builds>), Arc<ChunkError>> {
        let chunk = self.chunk_of[index];
        let mut state = self.lock();
        loop {
            match &state.chunks[chunk] {
                Some(Ok((hosts, builds))) => {
                    return hosts
                        .iter()
                        .find(|h| h.name == name)
                        .map(|h| (h.clone(), Arc::clone(builds)))
                        .ok_or_else(|| {
                            Arc::new(ChunkError::Missing {
                                node: name.to_string(),
                            })
                        })
                }
                Some(Err(e)) => return Err(Arc::clone(e)),
                None => {}
            }
            state = self
                .changed
                .wait_timeout(state, Duration::from_millis(200))
                .map(|(guard, _)| guard)
                .unwrap_or_else(|p| p.into_inner().0);
        }
    }
}

/// Fails the chunks left when the evaluator ends, also by a panic: no host waits forever.
struct FailRest<'a>(&'a Arrivals);

impl Drop for FailRest<'_> {
    fn drop(&mut self) {
        self.0.fail_rest();
    }
}

/// How many chunks' `nix build`s run at once: the cores, at least 2 and at most 4.
///
/// Each `nix build` runs its own builders (nix's `max-jobs`), so builds are bounded like the evaluator: a few
/// processes, not one per chunk. Two at least, so that one chunk's slow tail (its last derivation, nix's
/// start and store queries) does not hold back the next chunk's build, also on one core; four at most, as
/// more concurrent builds only compete for the same cores and store.
pub fn build_parallelism() -> usize {
    std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .clamp(2, 4)
}

/// The fleet's build progress from its chunks' builds: each chunk's latest built and most to build,
/// summed over the chunks heard so far, so that the counter line counts up across chunks instead of
/// starting again with each chunk.
#[derive(Debug, Default)]
pub struct BuildTally {
    /// Chunk number → its latest built and its most to build; chunks not heard yet are (0, 0).
    chunks: Vec<(u64, u64)>,
}

impl BuildTally {
    /// Records that chunk `chunk`'s build has built `done` of `expected` derivations; returns the fleet's
    /// (built, to build). A chunk's count to build never shrinks: nix's last count of a failed build leaves
    /// the failed derivation out, and the line would then read as complete.
    pub fn heard(&mut self, chunk: usize, done: u64, expected: u64) -> (u64, u64) {
        if self.chunks.len() <= chunk {
            self.chunks.resize(chunk + 1, (0, 0));
        }
        let most = self.chunks[chunk].1.max(expected);
        self.chunks[chunk] = (done, most);
        self.chunks
            .iter()
            .fold((0, 0), |(d, e), (cd, ce)| (d + cd, e + ce))
    }
}

/// Why a chunk's build ended without running.
const NOT_BUILT: &str =
    "its chunk's build did not run (the rollout stopped, Ctrl-C or an internal error)";

/// Ends a chunk's build when its builder is done with it, also by a panic or without running it: no host
/// waits for a build that never ends.
struct Abandon<'a>(&'a Builds);

impl Drop for Abandon<'_> {
    fn drop(&mut self) {
        self.0.abandon(NOT_BUILT);
    }
}

/// Deploys a listed fleet ([`Listed`]) while it evaluates. `prepare` adjusts each chunk's hosts as the
/// command line says (overrides) before they are built and deployed; `build_progress` hears the fleet's
/// build (built, to build), summed over the chunks' builds so far ([`BuildTally`]). The report has one row
/// per listed host; a host of a chunk that failed to evaluate is a failed row whose message says why
/// ([`ChunkError`]).
pub fn deploy_listed(
    listed: &Listed,
    prepare: &(dyn Fn(&mut Vec<Host>) + Sync),
    connector: &dyn Connector,
    opts: &DeployOptions,
    rollout: &RolloutSettings,
    emit: EventSink<'_>,
    build_progress: &(dyn Fn(u64, u64) + Sync),
) -> ListedReport {
    let arrivals = Arrivals::new(listed);
    let evaluated: Mutex<Vec<Host>> = Mutex::new(Vec::new());
    let build_errors: Mutex<Vec<BuildError>> = Mutex::new(Vec::new());
    let total = listed.names.len();
    let tally = Mutex::new(BuildTally::default());
    let (to_build, builds) = std::sync::mpsc::channel::<(usize, Arc<Builds>)>();
    let builds = Mutex::new(builds);
    let report = std::thread::scope(|scope| {
        let (arrivals, tally, build_errors, builds) = (&arrivals, &tally, &build_errors, &builds);
        // The builders: up to `build_parallelism()` chunks' `nix build`s at once, started in chunk order.
        // Each takes the next chunk as it is free; they end when the evaluator has ended (its sender gone).
        for _ in 0..build_parallelism() {
            scope.spawn(move || loop {
                // One idle builder waits on the channel, the others on the lock.
                let next = builds.lock().unwrap_or_else(|p| p.into_inner()).recv();
                let Ok((chunk, build)) = next else { break };
                let _abandon = Abandon(&build);
                if arrivals.stopped() {
                    continue;
                }
                let progress = |done: u64, expected: u64| {
                    // Heard under the lock: the sums shown only grow, whichever builder spoke last.
                    let mut tally = tally.lock().unwrap_or_else(|p| p.into_inner());
                    let (done, expected) = tally.heard(chunk, done, expected);
                    build_progress(done, expected);
                };
                let ran = nixpave_remote::parallel::catch_panic(|| build.run(opts, &progress));
                if let Ok(Err(e)) = ran {
                    if let Ok(mut errors) = build_errors.lock() {
                        errors.push(e);
                    }
                }
            });
        }
        // The evaluator: one `nix eval` of one chunk at a time.
        let evaluated = &evaluated;
        scope.spawn(move || {
            // A panic fails the chunks left (the guard) and ends here: the hosts' rows still get reported.
            let _fail_rest = FailRest(arrivals);
            let _ = nixpave_remote::parallel::catch_panic(|| {
                let mut done = 0;
                for (i, names) in listed.chunks().enumerate() {
                    if arrivals.stopped() {
                        break;
                    }
                    let ready = listed
                        .eval_chunk(names, &opts.nix)
                        .map_err(|source| ChunkError::Eval {
                            first: names[0].clone(),
                            more: names.len() - 1,
                            source: Box::new(source),
                        })
                        .and_then(|mut inventory| {
                            prepare(&mut inventory.hosts);
                            let builds =
                                Builds::new(&inventory.hosts, opts).map_err(ChunkError::Build)?;
                            Ok((inventory.hosts, Arc::new(builds)))
                        });
                    done += names.len();
                    emit(Event::Evaluated { done, total });
                    match ready {
                        Ok((hosts, builds)) => {
                            if let Ok(mut all) = evaluated.lock() {
                                all.extend(hosts.iter().cloned());
                            }
                            // The builders end only when this thread drops the sender: they are alive.
                            // Should none be (a bug), the build ends unrun rather than be waited for.
                            if let Err(unsent) = to_build.send((i, Arc::clone(&builds))) {
                                unsent.0 .1.abandon(NOT_BUILT);
                            }
                            arrivals.arrive(i, Ok((hosts, builds)));
                        }
                        Err(e) => arrivals.arrive(i, Err(Arc::new(e))),
                    }
                }
            });
        });
        let report = run_waves_named(&listed.names, rollout, emit, &|index| {
            let name = &listed.names[index];
            match arrivals.wait(index, name) {
                Ok((host, builds)) => {
                    let opts = DeployOptions {
                        builds: Some(builds),
                        ..opts.clone()
                    };
                    deploy_host(&host, connector, &opts, emit, index)
                }
                Err(e) => failed(name, &e),
            }
        });
        arrivals.stop();
        report
    });
    ListedReport {
        report: report.with_handshakes(connector.handshakes()),
        hosts: evaluated.into_inner().unwrap_or_default(),
        build_errors: build_errors.into_inner().unwrap_or_default(),
    }
}

fn failed(name: &str, e: &ChunkError) -> HostReport {
    let mut message = e.to_string();
    if let ChunkError::Eval { source, .. } = e {
        // The nix error's tail (what failed in the flake) is in its source chain.
        let mut cause = std::error::Error::source(source);
        while let Some(c) = cause {
            message.push_str(&format!(": {c}"));
            cause = c.source();
        }
    }
    bare_report(name, Outcome::Failed, message)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn build_progress_is_summed_over_the_chunks_heard_so_far() {
        let mut tally = BuildTally::default();
        // Chunk 0 starts: its own counts.
        assert_eq!(tally.heard(0, 0, 5), (0, 5));
        assert_eq!(tally.heard(0, 2, 5), (2, 5));
        // Chunk 2 is heard before chunk 1 (parallel builds): both count, chunk 1 not yet.
        assert_eq!(tally.heard(2, 1, 4), (3, 9));
        // Chunk 1 starts while the others build: the line counts on, it does not start again at 0/n.
        assert_eq!(tally.heard(1, 0, 5), (3, 14));
        // A chunk's later count replaces its earlier one (nix may expect more as it goes).
        assert_eq!(tally.heard(0, 5, 6), (6, 15));
        assert_eq!(tally.heard(1, 5, 5), (11, 15));
        assert_eq!(tally.heard(2, 4, 4), (14, 15));
        assert_eq!(tally.heard(0, 6, 6), (15, 15));
        // A failed build's last count leaves its failed derivation out: the fleet still has it to build.
        assert_eq!(tally.heard(3, 0, 2), (15, 17));
        assert_eq!(tally.heard(3, 1, 1), (16, 17));
    }

    #[test]
    fn builds_run_a_few_at_a_time_never_none() {
        let k = build_parallelism();
        assert!((2..=4).contains(&k), "{k}");
    }
}
