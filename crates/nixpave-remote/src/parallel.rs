//! Running one job per host on a bounded number of threads.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

/// Calls `job(item)` for every item, at most `max_parallel` at a time (0 means all at
/// once), and returns the results in the order of `items`. Items not yet started when
/// [`crate::cancel`] is requested are skipped (`None`).
pub fn for_each<T, R, F>(items: &[T], max_parallel: usize, job: F) -> Vec<Option<R>>
where
    T: Sync,
    R: Send,
    F: Fn(&T) -> R + Sync,
{
    let workers = match max_parallel {
        0 => items.len(),
        n => n.min(items.len()),
    };
    let next = AtomicUsize::new(0);
    let results: Mutex<Vec<Option<R>>> = Mutex::new((0..items.len()).map(|_| None).collect());
    std::thread::scope(|scope| {
        for _ in 0..workers {
            scope.spawn(|| loop {
                let index = next.fetch_add(1, Ordering::SeqCst);
                let Some(item) = items.get(index) else { break };
                if crate::cancel::is_cancelled() {
                    break;
                }
                let result = job(item);
                results.lock().unwrap_or_else(|p| p.into_inner())[index] = Some(result);
            });
        }
    });
    results.into_inner().unwrap_or_else(|p| p.into_inner())
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
        let out = for_each(&items, 3, |x| {
            let now = running.fetch_add(1, Ordering::SeqCst) + 1;
            peak.fetch_max(now, Ordering::SeqCst);
            std::thread::sleep(Duration::from_millis(30));
            running.fetch_sub(1, Ordering::SeqCst);
            x * 11
        });
        assert_eq!(
            out,
            (0..8).map(|i| Some(i * 11)).collect::<Vec<_>>(),
            "results come back in input order"
        );
        assert_eq!(peak.load(Ordering::SeqCst), 3);
    }

    #[test]
    fn zero_means_all_at_once() {
        let items = [(); 6];
        let started = Instant::now();
        let out = for_each(&items, 0, |_| {
            std::thread::sleep(Duration::from_millis(100))
        });
        assert_eq!(out.len(), 6);
        assert!(started.elapsed() < Duration::from_millis(500));
    }
}
