//! Cancellation of local commands. A test binary of its own: the cancellation flag is
//! process-wide and would stop the crate's other tests.

use std::time::{Duration, Instant};

use nixpave_remote::{cancel, LocalTransport, Transport, TransportError};

fn argv(words: &[&str]) -> Vec<String> {
    words.iter().map(|w| w.to_string()).collect()
}

#[test]
fn cancellation_stops_run_within_but_not_a_plain_run() {
    let started = Instant::now();
    // Cancelled when the command says it runs (its first line), not after a guessed delay.
    let mut ran = false;
    let err = LocalTransport
        .run_within(
            &argv(&["sh", "-c", "echo running; exec sleep 30"]),
            None,
            None,
            &mut |_, line| {
                if line == "running" {
                    ran = true;
                    cancel::request_cancel();
                }
            },
        )
        .unwrap_err();
    assert!(ran, "the command ran before it was cancelled");
    assert!(matches!(err, TransportError::Interrupted { .. }), "{err}");
    assert!(started.elapsed() < Duration::from_secs(10));
    // Cancelled: run_within does not start anything more …
    let err = LocalTransport
        .run_within(&argv(&["true"]), None, None, &mut |_, _| {})
        .unwrap_err();
    assert!(matches!(err, TransportError::Interrupted { .. }), "{err}");
    // … while the Transport methods still run a command to its end (a local disk step is never
    // cut in half by nixpave).
    let out = LocalTransport
        .run(&argv(&["sh", "-c", "sleep 0.2; echo done"]), None)
        .expect("runs");
    assert_eq!(out.stdout_str(), "done\n");
}
