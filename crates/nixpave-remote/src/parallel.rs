//! The one bounded parallel executor: one job per host on a bounded number of threads, with a
//! stop condition, cancellation and panics turned into results.
//!
//! Used by `exec`, `facts`, `status`, and by deploy and rollback (per wave). A worker takes the
//! next item as soon as it is free (no lock-step batches), so one slow host holds one worker
//! only.

use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

/// How the job of one item ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Slot<R> {
    /// The job returned this.
    Done(R),
    /// The job panicked; the panic's message. The other items carry on.
    Panicked(String),
    /// The job was never started: cancellation was requested ([`crate::cancel`]) or the stop
    /// condition held when its turn came.
    NotStarted,
}

impl<R> Slot<R> {
    /// The job's result, `None` when it panicked or never started.
    pub fn done(self) -> Option<R> {
        match self {
            Slot::Done(r) => Some(r),
            _ => None,
        }
    }
}

/// Calls `job(item)` for every item, at most `max_parallel` at a time (0 means all at once),
/// and returns how each ended, in the order of `items`.
///
/// Before an item is started, `stop()` is asked (e.g. "too many hosts failed already") and
/// cancellation is checked; when either holds, that item and all later ones are
/// [`Slot::NotStarted`]. Items already running finish. A panicking job becomes
/// [`Slot::Panicked`] instead of taking the others down or vanishing.
pub fn run<T, R, F, S>(items: &[T], max_parallel: usize, stop: S, job: F) -> Vec<Slot<R>>
where
    T: Sync,
    R: Send,
    F: Fn(&T) -> R + Sync,
    S: Fn() -> bool + Sync,
{
    let workers = match max_parallel {
        0 => items.len(),
        n => n.min(items.len()),
    };
    let next = AtomicUsize::new(0);
    let results: Mutex<Vec<Slot<R>>> =
        Mutex::new((0..items.len()).map(|_| Slot::NotStarted).collect());
    std::thread::scope(|scope| {
        for _ in 0..workers {
            scope.spawn(|| loop {
                if crate::cancel::is_cancelled() || stop() {
                    break;
                }
                let index = next.fetch_add(1, Ordering::SeqCst);
                let Some(item) = items.get(index) else { break };
                let slot = match catch_panic(|| job(item)) {
                    Ok(result) => Slot::Done(result),
                    Err(message) => Slot::Panicked(message),
                };
                results.lock().unwrap_or_else(|p| p.into_inner())[index] = slot;
            });
        }
    });
    results.into_inner().unwrap_or_else(|p| p.into_inner())
}

/// Runs `f`, turning a panic into `Err(its message)`. For jobs that must report a panic in
/// their own terms right away (a deploy counts it as a failed host before the next one starts).
pub fn catch_panic<R>(f: impl FnOnce() -> R) -> Result<R, String> {
    std::panic::catch_unwind(AssertUnwindSafe(f)).map_err(|payload| {
        payload
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "panicked".to_string())
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    #[test]
    fn keeps_order_and_bounds_concurrency() {
        let running = AtomicUsize::new(0);
        let peak = AtomicUsize::new(0);
        let items: Vec<u32> = (0..8).collect();
        let out = run(
            &items,
            3,
            || false,
            |x| {
                let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                peak.fetch_max(now, Ordering::SeqCst);
                std::thread::sleep(Duration::from_millis(30));
                running.fetch_sub(1, Ordering::SeqCst);
                x * 11
            },
        );
        assert_eq!(
            out,
            (0..8).map(|i| Slot::Done(i * 11)).collect::<Vec<_>>(),
            "results come back in input order"
        );
        assert_eq!(peak.load(Ordering::SeqCst), 3);
    }

    #[test]
    fn zero_means_all_at_once() {
        let items = [(); 6];
        let started = Instant::now();
        let out = run(
            &items,
            0,
            || false,
            |_| std::thread::sleep(Duration::from_millis(100)),
        );
        assert_eq!(out.len(), 6);
        assert!(started.elapsed() < Duration::from_millis(500));
    }

    #[test]
    fn a_slow_item_does_not_hold_the_others_back() {
        // Two workers, one item slow: the other worker runs all the rest meanwhile. In lock-step
        // chunks of two this would take 5 × 300 ms.
        let items: Vec<u64> = vec![1500, 0, 0, 0, 0, 0, 0, 0, 0, 0];
        let started = Instant::now();
        let out = run(
            &items,
            2,
            || false,
            |ms| std::thread::sleep(Duration::from_millis(*ms)),
        );
        assert!(out.iter().all(|s| matches!(s, Slot::Done(()))));
        assert!(started.elapsed() < Duration::from_millis(2500));
    }

    #[test]
    fn a_panicking_item_is_a_row_of_its_own() {
        let items = [1, 2, 3];
        let out = run(
            &items,
            2,
            || false,
            |&x| {
                if x == 2 {
                    panic!("host {x} broke");
                }
                x
            },
        );
        assert_eq!(
            out,
            vec![
                Slot::Done(1),
                Slot::Panicked("host 2 broke".into()),
                Slot::Done(3)
            ]
        );
        assert_eq!(
            catch_panic(|| -> u8 { panic!("static") }),
            Err("static".into())
        );
        assert_eq!(out.into_iter().next().and_then(Slot::done), Some(1));
    }

    #[test]
    fn the_stop_condition_keeps_later_items_from_starting() {
        let failures = AtomicUsize::new(0);
        let items: Vec<u32> = (0..6).collect();
        // One worker, stop after two failures: items 0 and 1 fail, nothing after starts.
        let out = run(
            &items,
            1,
            || failures.load(Ordering::SeqCst) >= 2,
            |&x| {
                failures.fetch_add(1, Ordering::SeqCst);
                x
            },
        );
        assert_eq!(out[..2], [Slot::Done(0), Slot::Done(1)]);
        assert!(out[2..].iter().all(|s| *s == Slot::NotStarted), "{out:?}");
    }
}
