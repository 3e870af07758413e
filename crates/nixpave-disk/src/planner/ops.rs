//! Small constructors for plan operations, shared by the create/mount/unmount walkers.

use crate::plan::{Guard, Operation, StdinSource};

/// A non-destructive operation without guard.
pub(crate) fn op(device: &str, description: impl Into<String>, argv: Vec<String>) -> Operation {
    Operation {
        argv,
        device: device.to_string(),
        destructive: false,
        description: description.into(),
        guard: None,
        stdin: None,
    }
}

/// Builder-style setters on [`Operation`].
pub(crate) trait OpExt {
    /// Marks the operation as able to destroy data.
    fn destructive(self) -> Self;
    /// Runs the operation only when `guard` holds.
    fn guard(self, guard: Guard) -> Self;
    /// Feeds `stdin` to the operation.
    fn stdin(self, stdin: StdinSource) -> Self;
}

impl OpExt for Operation {
    fn destructive(mut self) -> Self {
        self.destructive = true;
        self
    }
    fn guard(mut self, guard: Guard) -> Self {
        self.guard = Some(guard);
        self
    }
    fn stdin(mut self, stdin: StdinSource) -> Self {
        self.stdin = Some(stdin);
        self
    }
}

/// `argv![a, b, …]`: a `Vec<String>` from anything string-like.
macro_rules! argv {
    ($($x:expr),* $(,)?) => { vec![$(String::from($x)),*] };
}
pub(crate) use argv;

/// A hook script as a `bash -c` operation, or nothing when the hook is empty. Like disko, the
/// script sees the node's `device` (or `name`, for pools, datasets and VGs) as a shell variable.
pub(crate) fn hook(script: &str, device: &str, which: &str) -> Option<Operation> {
    if script.trim().is_empty() {
        return None;
    }
    let var = if device.starts_with('/') {
        "device"
    } else {
        "name"
    };
    let body = format!("{var}={}\n{script}", nixpave_remote::shell_quote(device));
    Some(op(
        device,
        format!("run {which} of {device}"),
        argv!["bash", "-c", body],
    ))
}

/// `root` + `mountpoint` without doubled or trailing slashes (`/mnt` + `/` = `/mnt`).
pub(crate) fn target(root: &str, mountpoint: &str) -> String {
    let root = root.trim_end_matches('/');
    let mp = mountpoint.trim_end_matches('/');
    match (root.is_empty(), mp.is_empty()) {
        (true, true) => "/".to_string(),
        (true, false) => mp.to_string(),
        (false, true) => root.to_string(),
        (false, false) => format!("{root}{mp}"),
    }
}

/// `-o opt` pairs for each mount option.
pub(crate) fn mount_opts(options: &[String]) -> Vec<String> {
    options
        .iter()
        .flat_map(|o| ["-o".to_string(), o.clone()])
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_join_cleanly() {
        assert_eq!(target("/mnt", "/"), "/mnt");
        assert_eq!(target("/mnt", "/boot"), "/mnt/boot");
        assert_eq!(target("/mnt/", "/boot/"), "/mnt/boot");
        assert_eq!(target("/", "/"), "/");
        assert_eq!(target("/", "/home"), "/home");
    }
}
