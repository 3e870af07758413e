//! Parallel fleet rollout with magic rollback, health checks, rolling batches and keys.
