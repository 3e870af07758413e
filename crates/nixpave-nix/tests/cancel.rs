//! Cancellation (Ctrl-C) stops nix calls. A test binary of its own: the cancellation flag is
//! process-wide.

use std::time::{Duration, Instant};

use nixpave_nix::invoke::{run_nix, NixError, NixOptions};
use nixpave_nix::{eval_file, EvalError};

#[test]
fn cancellation_stops_a_running_call_and_refuses_new_ones() {
    let started = Instant::now();
    // Cancelled once the command runs (it leaves a marker file), not after a guessed delay.
    let marker =
        std::env::temp_dir().join(format!("nixpave-cancel-{}.running", std::process::id()));
    let _ = std::fs::remove_file(&marker);
    let seen = marker.clone();
    let canceller = std::thread::spawn(move || {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !seen.exists() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        nixpave_remote::cancel::request_cancel();
        seen.exists()
    });
    // `sleep` stands in for a hung `nix copy`: no deadline, only cancellation stops it.
    let script = format!("touch '{}'; exec sleep 30", marker.display());
    let err = run_nix("sh", &["-c".into(), script], &NixOptions::default(), &[]).unwrap_err();
    assert!(matches!(err, NixError::Interrupted { .. }), "{err}");
    assert!(started.elapsed() < Duration::from_secs(10));
    assert!(
        canceller.join().expect("canceller thread"),
        "the command never ran"
    );
    let _ = std::fs::remove_file(&marker);
    // Once cancelled, an evaluation does not start at all.
    let file = std::env::temp_dir().join(format!("nixpave-cancel-{}.nix", std::process::id()));
    std::fs::write(&file, "{ a = 1; }").expect("write");
    let err = eval_file(&file, &[]).unwrap_err();
    let _ = std::fs::remove_file(&file);
    assert!(matches!(err, EvalError::Interrupted { .. }), "{err}");
}
