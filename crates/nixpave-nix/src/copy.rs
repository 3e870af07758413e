//! Copying closures to other machines with `nix copy`.

use std::time::Duration;

use crate::invoke::{experimental_args, run_nix, NixError, NixOptions};

/// How long one `nix copy` may run when [`NixOptions::timeout`] is not set: long enough for a
/// large closure over a slow link, short enough that a hung copy frees its deploy worker.
pub const COPY_TIMEOUT: Duration = Duration::from_secs(60 * 60);

/// How to push a closure to a host.
#[derive(Debug, Clone)]
pub struct CopyTo {
    /// Destination store, e.g. `ssh://root@10.0.0.2`.
    pub store_uri: String,
    /// Value for `NIX_SSHOPTS` (ssh options, e.g. the host's ControlPath so the copy reuses its master connection).
    pub ssh_opts: String,
    /// Let the target fetch what it can from its own substituters.
    pub substitute_on_destination: bool,
}

impl CopyTo {
    /// Where `nix copy` pushes to `conn`'s host, through its master connection; `None` when the
    /// host shares this machine's store.
    pub fn over(conn: &dyn nixpave_remote::Connection) -> Option<CopyTo> {
        Some(CopyTo {
            store_uri: conn.store_uri()?,
            ssh_opts: conn.nix_sshopts(),
            substitute_on_destination: false,
        })
    }
}

/// Copies `.drv` files and their closures (not their outputs) so the destination can build them.
pub fn copy_derivations(to: &CopyTo, drvs: &[String], opts: &NixOptions) -> Result<(), NixError> {
    let mut extended = opts.clone();
    extended.extra_args.insert(0, "--derivation".into());
    copy_closure(to, drvs, &extended)
}

/// Copies the closures of `paths` to the destination store with one `nix copy`.
pub fn copy_closure(to: &CopyTo, paths: &[String], opts: &NixOptions) -> Result<(), NixError> {
    copy_closure_with(to, paths, opts, None)
}

/// [`copy_closure`], telling `on_event` how far the copy is (paths and bytes, see [`crate::progress`]).
pub fn copy_closure_streaming(
    to: &CopyTo,
    paths: &[String],
    opts: &NixOptions,
    on_event: &mut dyn FnMut(crate::progress::LogEvent),
) -> Result<(), NixError> {
    copy_closure_with(to, paths, opts, Some(on_event))
}

fn copy_closure_with(
    to: &CopyTo,
    paths: &[String],
    opts: &NixOptions,
    on_event: Option<&mut dyn FnMut(crate::progress::LogEvent)>,
) -> Result<(), NixError> {
    let mut args = experimental_args();
    args.extend(["copy", "--to"].map(String::from));
    args.push(to.store_uri.clone());
    if to.substitute_on_destination {
        args.push("--substitute-on-destination".into());
    }
    args.extend(opts.extra_args.iter().cloned());
    args.extend(paths.iter().cloned());
    let opts = NixOptions {
        timeout: opts.timeout.or(Some(COPY_TIMEOUT)),
        ..opts.clone()
    };
    let env = [("NIX_SSHOPTS".to_string(), to.ssh_opts.clone())];
    match on_event {
        None => run_nix("nix", &args, &opts, &env)?,
        Some(on_event) => crate::progress::run_with_log(&args, &opts, &env, on_event)?,
    };
    Ok(())
}
