//! Cancellation (Ctrl-C) stops nix calls. A test binary of its own: the cancellation flag is
//! process-wide.

use std::time::{Duration, Instant};

use nixpave_nix::invoke::{run_nix, NixError, NixOptions};
use nixpave_nix::{eval_file, EvalError};

#[test]
fn cancellation_stops_a_running_call_and_refuses_new_ones() {
    let started = Instant::now();
    let canceller = std::thread::spawn(|| {
        std::thread::sleep(Duration::from_millis(300));
        nixpave_remote::cancel::request_cancel();
    });
    // `sleep` stands in for a hung `nix copy`: no deadline, only cancellation stops it.
    let err = run_nix("sleep", &["30".into()], &NixOptions::default(), &[]).unwrap_err();
    assert!(matches!(err, NixError::Interrupted { .. }), "{err}");
    assert!(started.elapsed() < Duration::from_secs(10));
    canceller.join().expect("canceller thread");
    // Once cancelled, an evaluation does not start at all.
    let file = std::env::temp_dir().join(format!("nixpave-cancel-{}.nix", std::process::id()));
    std::fs::write(&file, "{ a = 1; }").expect("write");
    let err = eval_file(&file, &[]).unwrap_err();
    let _ = std::fs::remove_file(&file);
    assert!(matches!(err, EvalError::Interrupted { .. }), "{err}");
}
