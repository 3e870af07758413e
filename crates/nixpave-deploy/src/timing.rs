//! Where a deploy's wall time goes: one `tracing` event per finished step, at target `nixpave::timing`
//! (`NIXPAVE_LOG=nixpave::timing=info`), as `step=STEP host=HOST ms=MS`. `bench/breakdown.sh` sums them up.
//! Fleet-wide steps (eval, build) carry `host=-`.

use std::time::Instant;

/// Records that `step` of `host` took from `since` until now.
pub fn record(host: &str, step: &str, since: Instant) {
    tracing::info!(
        target: "nixpave::timing",
        "step={step} host={host} ms={}",
        since.elapsed().as_millis()
    );
}

/// Runs `f` and records its time as `step` of `host`.
pub fn timed<T>(host: &str, step: &str, f: impl FnOnce() -> T) -> T {
    let since = Instant::now();
    let out = f();
    record(host, step, since);
    out
}
