//! One upload for N hosts: `--cache STORE-URI`. The deployer copies each closure once to a binary cache nix
//! understands (`file://`, `http(s)://`, `s3://`, `ssh-ng://` …), and every target fetches it from there in
//! parallel with `nix-store --realise`, trusting the cache's key for that one call only (`--option
//! extra-substituters` / `extra-trusted-public-keys`): nothing on the targets is changed for good. The
//! deployer's upload then grows with the closure, not with the number of hosts.

use std::collections::HashSet;
use std::sync::Mutex;

use nixpave_nix::invoke::{experimental_args, run_nix, NixError, NixOptions};

/// A binary cache the deploy goes through.
#[derive(Debug)]
pub struct Cache {
    /// Where the deployer pushes, as `nix copy --to` takes it (with its parameters, e.g.
    /// `file:///srv/cache?secret-key=/etc/nix/cache.sec&compression=zstd`).
    pub store_uri: String,
    /// Where the targets fetch from (the same cache as the targets reach it, e.g. `http://10.0.0.1:8080`).
    pub substituter: String,
    /// The key targets trust for it (`name:base64`).
    pub public_key: String,
    /// Store paths already pushed in this run; the lock is held during a push, so hosts that need the same
    /// closure wait for the one upload instead of making their own.
    pushed: Mutex<HashSet<String>>,
}

/// `--cache` settings that do not fit together.
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    /// The targets' URL cannot be guessed from a local store URI.
    #[error("--cache {0}: the targets cannot read a local store; give the URL they fetch it from (--cache-url)")]
    NoUrl(String),
    /// The public key cannot be derived without the secret key.
    #[error("--cache {0}: no secret-key=FILE parameter to sign with; give the key targets trust (--cache-public-key)")]
    NoKey(String),
    /// Deriving the public key failed.
    #[error("deriving the public key of the cache's secret key {path}: {source}")]
    Key {
        /// The secret key file.
        path: String,
        /// Why.
        #[source]
        source: NixError,
    },
}

impl Cache {
    /// The cache at `store_uri`; `url` (default: `store_uri` without parameters unless it is a local store)
    /// is what targets fetch from, `public_key` (default: derived from the URI's `secret-key=FILE`) what
    /// they trust.
    pub fn new(
        store_uri: &str,
        url: Option<&str>,
        public_key: Option<&str>,
        nix: &NixOptions,
    ) -> Result<Cache, CacheError> {
        let (base, query) = store_uri.split_once('?').unwrap_or((store_uri, ""));
        let substituter = match url {
            Some(u) => u.to_string(),
            None if base.starts_with("file://") || base.starts_with('/') => {
                return Err(CacheError::NoUrl(store_uri.into()))
            }
            None => base.to_string(),
        };
        let public_key = match public_key {
            Some(k) => k.to_string(),
            None => {
                let path = query
                    .split('&')
                    .find_map(|kv| kv.strip_prefix("secret-key="))
                    .ok_or_else(|| CacheError::NoKey(store_uri.into()))?;
                public_key_of(path, nix).map_err(|source| CacheError::Key {
                    path: path.into(),
                    source,
                })?
            }
        };
        Ok(Cache {
            store_uri: store_uri.to_string(),
            substituter,
            public_key,
            pushed: Mutex::new(HashSet::new()),
        })
    }

    /// Copies the closures of `paths` to the cache, unless this run already did.
    pub fn push(&self, paths: &[String], nix: &NixOptions) -> Result<(), NixError> {
        let mut pushed = self.pushed.lock().unwrap_or_else(|p| p.into_inner());
        let todo: Vec<String> = paths
            .iter()
            .filter(|p| !pushed.contains(*p))
            .cloned()
            .collect();
        if todo.is_empty() {
            return Ok(());
        }
        let mut args = experimental_args();
        args.extend([
            "copy".to_string(),
            "--to".to_string(),
            self.store_uri.clone(),
        ]);
        args.extend(nix.extra_args.iter().cloned());
        args.extend(todo.iter().cloned());
        let opts = NixOptions {
            timeout: nix.timeout.or(Some(nixpave_nix::copy::COPY_TIMEOUT)),
            ..nix.clone()
        };
        run_nix("nix", &args, &opts, &[])?;
        pushed.extend(todo);
        Ok(())
    }

    /// The command a target runs to fetch `paths` (and their closures) from the cache, trusting its key for
    /// this call only. Its own substituters stay (the cache is an extra one).
    pub fn fetch_argv(&self, paths: &[String]) -> Vec<String> {
        let mut argv: Vec<String> = [
            "nix-store",
            "--realise",
            "--option",
            "extra-substituters",
            &self.substituter,
            "--option",
            "extra-trusted-public-keys",
            &self.public_key,
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        argv.extend(paths.iter().cloned());
        argv
    }
}

/// The public key (`name:base64`) of the secret key file `path` (`nix key convert-secret-to-public`).
fn public_key_of(path: &str, nix: &NixOptions) -> Result<String, NixError> {
    let secret = std::fs::read(path).map_err(|source| NixError::Spawn {
        command: format!("reading {path}"),
        source,
    })?;
    let mut args = experimental_args();
    args.extend(["key", "convert-secret-to-public"].map(String::from));
    let out = nixpave_nix::invoke::run_nix_with_stdin("nix", &args, nix, &secret)?;
    Ok(out.stdout.trim().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_fetch_with_the_cache_trusted_for_one_call() {
        let cache = Cache::new(
            "s3://fleet-cache?region=eu-west-1",
            None,
            Some("fleet:AAAA"),
            &NixOptions::default(),
        )
        .expect("cache");
        assert_eq!(cache.substituter, "s3://fleet-cache");
        assert_eq!(
            cache.fetch_argv(&["/nix/store/x".into()]),
            [
                "nix-store",
                "--realise",
                "--option",
                "extra-substituters",
                "s3://fleet-cache",
                "--option",
                "extra-trusted-public-keys",
                "fleet:AAAA",
                "/nix/store/x"
            ]
        );
        let local = Cache::new(
            "file:///srv/cache",
            None,
            Some("k:1"),
            &NixOptions::default(),
        );
        assert!(matches!(local, Err(CacheError::NoUrl(_))));
        let unsigned = Cache::new(
            "file:///srv/cache",
            Some("http://10.0.0.1:8080"),
            None,
            &NixOptions::default(),
        );
        assert!(matches!(unsigned, Err(CacheError::NoKey(_))));
    }
}
