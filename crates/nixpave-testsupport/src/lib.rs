//! Test support shared by nixpave's test suites (a dev-dependency only, never published): real
//! loop-device disks in a scratch directory, cleaned up even on panic; partition facts read
//! with partx/blkid/findmnt; the one skip rule (`NIXPAVE_REQUIRE_ALL=1` makes a skip fail); the
//! test `nix.conf` and `nix-build`/`nix-instantiate` of fixtures; JSON shapes for snapshots. Lab
//! helpers are `nixpave_lab::testing`'s.
//!
//! Everything is named uniquely (pid + counter) and only what this crate created is touched:
//! other tests on the same machine use loop devices too.
#![warn(missing_docs)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};

static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// Runs a command and returns its stdout; panics with its stderr when it fails.
pub fn sh(argv: &[&str]) -> String {
    let out = Command::new(argv[0])
        .args(&argv[1..])
        .output()
        .unwrap_or_else(|e| panic!("cannot run {argv:?}: {e}"));
    assert!(
        out.status.success(),
        "{argv:?} failed ({:?}): {}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs a command, ignoring failures (cleanup).
fn quiet(argv: &[&str]) {
    let _ = Command::new(argv[0]).args(&argv[1..]).output();
}

/// Fails the calling test, with the reason, when this process cannot create loop devices: a
/// test that needs them must not pass without having run. `scripts/test.sh` runs as root.
pub fn require_loop_devices() {
    assert!(
        loop_devices_available(),
        "this test needs root and loop devices (`losetup -f` must work): run it as root"
    );
}

/// Skips the calling test (which then returns) for a reason of this machine's making, e.g. `/`
/// not on a block device. Under `NIXPAVE_REQUIRE_ALL=1` (CI, `scripts/test.sh`) every test must
/// really run, so a skip fails instead.
pub fn skip(why: &str) {
    skip_unless_required(
        why,
        std::env::var_os("NIXPAVE_REQUIRE_ALL").is_some_and(|v| v == "1"),
    );
}

/// [`skip`] with the switch given: fails when `require_all`, else reports the skip.
pub fn skip_unless_required(why: &str, require_all: bool) {
    assert!(
        !require_all,
        "NIXPAVE_REQUIRE_ALL=1 and this test cannot run here: {why}"
    );
    eprintln!("SKIPPED (NIXPAVE_REQUIRE_ALL=1 makes this a failure): {why}");
}

/// True when this process can create loop devices (root on a kernel with loop support).
pub fn loop_devices_available() -> bool {
    Command::new("losetup")
        .arg("-f")
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
        && nix_is_root()
}

fn nix_is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

/// A scratch directory with loop disks and a root mountpoint inside it.
pub struct Scratch {
    /// The directory (removed on drop).
    pub dir: PathBuf,
    /// Loop devices attached for this scratch, e.g. `/dev/loop7`.
    pub disks: Vec<String>,
    images: Vec<PathBuf>,
}

impl Scratch {
    /// A new, empty scratch directory under /tmp.
    pub fn new(tag: &str) -> Scratch {
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let dir = std::env::temp_dir().join(format!("nixpave-{tag}-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("create scratch dir");
        Scratch {
            dir,
            disks: Vec::new(),
            images: Vec::new(),
        }
    }

    /// Writes `text` to the file `name` in the scratch directory and returns its path.
    pub fn write_file(&self, name: &str, text: &str) -> String {
        let path = self.dir.join(name);
        std::fs::write(&path, text).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
        path.to_string_lossy().into_owned()
    }

    /// The root mountpoint for layouts (created).
    pub fn root(&self) -> String {
        let root = self.dir.join("root");
        std::fs::create_dir_all(&root).expect("create root mountpoint");
        root.to_string_lossy().into_owned()
    }

    /// Attaches a new sparse disk of `mib` MiB and returns its device path.
    pub fn disk(&mut self, mib: u64) -> String {
        let image = self.dir.join(format!("disk{}.img", self.images.len()));
        let file = std::fs::File::create(&image).expect("create image");
        file.set_len(mib * 1024 * 1024).expect("size image");
        drop(file);
        let dev = sh(&[
            "losetup",
            "-f",
            "--show",
            image.to_str().expect("utf-8 path"),
        ])
        .trim()
        .to_string();
        // The kernel keeps partition nodes that `partx -a` made on a loop device after it is
        // detached (a killed test, a lazily unmounted filesystem still busy): a fresh, zeroed
        // image must not inherit them, or it looks like a disk with unknown content.
        quiet(&["partx", "-d", &dev]);
        self.images.push(image);
        self.disks.push(dev.clone());
        dev
    }

    /// Grows the backing file of disk `i` to `mib` MiB (`truncate`, the cloud's "the disk got
    /// bigger") and makes the kernel see the new size (`losetup -c`).
    pub fn grow(&self, i: usize, mib: u64) {
        let file = std::fs::OpenOptions::new()
            .write(true)
            .open(&self.images[i])
            .expect("open the disk image");
        file.set_len(mib * 1024 * 1024)
            .expect("grow the disk image");
        drop(file);
        sh(&["losetup", "-c", &self.disks[i]]);
    }

    /// SHA-256 of the backing file of disk `i` (what a dry run must leave unchanged).
    pub fn checksum(&self, i: usize) -> String {
        use sha2::Digest;
        quiet(&["sync"]);
        let mut file = std::fs::File::open(&self.images[i]).expect("open the disk image");
        let mut hasher = sha2::Sha256::new();
        std::io::copy(&mut file, &mut hasher).expect("read the disk image");
        format!("{:x}", hasher.finalize())
    }

    /// Mount targets below the scratch directory, deepest first.
    pub fn mounts_below(&self) -> Vec<String> {
        let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        let base = self.dir.to_string_lossy().into_owned();
        let mut targets: Vec<String> = info
            .lines()
            .filter_map(|l| l.split(' ').nth(4))
            .map(|t| t.replace("\\040", " "))
            .filter(|t| Path::new(t).starts_with(&base))
            .collect();
        targets.sort_by_key(|t| std::cmp::Reverse(t.len()));
        targets
    }

    /// Active swap areas that belong to this scratch (its disks or files below it).
    fn swaps(&self) -> Vec<String> {
        let swaps = std::fs::read_to_string("/proc/swaps").unwrap_or_default();
        let base = self.dir.to_string_lossy().into_owned();
        swaps
            .lines()
            .skip(1)
            .filter_map(|l| l.split_whitespace().next())
            .map(|p| p.replace("\\040", " "))
            .filter(|p| {
                p.starts_with(&base)
                    || self
                        .disks
                        .iter()
                        .any(|d| p == d || p.starts_with(&format!("{d}p")))
            })
            .collect()
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        for swap in self.swaps() {
            quiet(&["swapoff", &swap]);
        }
        for target in self.mounts_below() {
            quiet(&["umount", "-l", &target]);
        }
        for dev in &self.disks {
            quiet(&["partx", "-d", dev]);
            quiet(&["losetup", "-d", dev]);
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// `sgdisk -p`-style facts of one partition, read with `partx` and `blkid -p`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Part {
    /// Partition number.
    pub number: u32,
    /// Start in 512-byte sectors.
    pub start: u64,
    /// Length in 512-byte sectors.
    pub sectors: u64,
    /// GPT name (empty for msdos).
    pub name: String,
    /// Type GUID (gpt) or `0xNN` (msdos).
    pub parttype: String,
}

/// The partitions in the on-disk table of `dev`.
pub fn partitions(dev: &str) -> Vec<Part> {
    let out = sh(&["partx", "-P", "-g", "-o", "NR,START,SECTORS,NAME,TYPE", dev]);
    out.lines()
        .map(|line| {
            let field = |key: &str| {
                let pat = format!("{key}=\"");
                line.find(&pat)
                    .map(|i| {
                        let rest = &line[i + pat.len()..];
                        rest[..rest.find('"').unwrap_or(rest.len())].to_string()
                    })
                    .unwrap_or_default()
            };
            Part {
                number: field("NR").parse().expect("NR"),
                start: field("START").parse().expect("START"),
                sectors: field("SECTORS").parse().expect("SECTORS"),
                name: field("NAME").replace("\\x20", " "),
                parttype: field("TYPE"),
            }
        })
        .collect()
}

/// `blkid -p -s TYPE -o value DEV`, empty when there is no signature.
pub fn fstype(dev: &str) -> String {
    let out = Command::new("blkid")
        .args(["-p", "-s", "TYPE", "-o", "value", dev])
        .output()
        .expect("run blkid");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// The source mounted at `target` (`findmnt -n -o SOURCE`), if any.
pub fn mounted_source(target: &str) -> Option<String> {
    let out = Command::new("findmnt")
        .args(["-n", "-o", "SOURCE", "--mountpoint", target])
        .output()
        .expect("run findmnt");
    let s = String::from_utf8_lossy(&out.stdout).trim().to_string();
    (!s.is_empty()).then_some(s)
}

/// True when `dev` has no signature at all (`blkid -p` finds nothing) and no partitions.
pub fn is_blank(dev: &str) -> bool {
    let out = Command::new("blkid")
        .args(["-p", "-o", "export", dev])
        .output()
        .expect("run blkid");
    out.status.code() == Some(2) && out.stdout.is_empty()
}

/// Kernel partition nodes of `dev` that exist now (`/dev/loop7p1`, …).
pub fn partition_nodes(dev: &str) -> Vec<String> {
    let name = dev.trim_start_matches("/dev/");
    let mut nodes: Vec<String> = std::fs::read_dir(format!("/sys/class/block/{name}"))
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with(name) && n.len() > name.len())
                .map(|n| format!("/dev/{n}"))
                .collect()
        })
        .unwrap_or_default();
    nodes.sort();
    nodes
}

/// The directory of pre-evaluated disk layouts: the JSON that the real nix loader makes of each
/// `crates/nixpave-disk/fixtures/*.nix` and `examples/*.nix`, so that the pure planner's tests
/// run without a nix binary. `scripts/update-disk-fixtures.sh` writes them; a test in
/// `nixpave-disk/tests/plan_loader.rs` evaluates every layout with nix and fails when one is stale.
pub fn evaluated_layouts_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../nixpave-disk/fixtures/evaluated")
}

/// The pre-evaluated JSON of the layout `source` (a `.nix` file in nixpave-disk's `fixtures/`
/// or in the repository's `examples/`): `evaluated/NAME.json`, or `evaluated/examples/NAME.json`
/// for an example.
pub fn evaluated_layout(source: &Path) -> PathBuf {
    let stem = source
        .file_stem()
        .unwrap_or_else(|| panic!("{} has no file name", source.display()));
    let is_example = source
        .parent()
        .and_then(|p| p.file_name())
        .is_some_and(|d| d == "examples");
    let dir = evaluated_layouts_dir();
    let dir = if is_example {
        dir.join("examples")
    } else {
        dir
    };
    dir.join(stem).with_extension("json")
}

/// The shape of a JSON value, for snapshot tests of `--json` output that must not depend on
/// times, addresses or devices: every leaf becomes its type (`"<string>"`, `"<number>"`,
/// `"<bool>"`; `null` stays), an array becomes the shape of its first element, and objects
/// deeper than `depth` become `"<object>"`. Strings under the keys in `keep` (closed vocabularies
/// such as `event`, `state`, `phase`) stay as they are.
pub fn json_shape(value: &serde_json::Value, depth: usize, keep: &[&str]) -> serde_json::Value {
    use serde_json::Value;
    match value {
        Value::Null => Value::Null,
        Value::Bool(_) => "<bool>".into(),
        Value::Number(_) => "<number>".into(),
        Value::String(_) => "<string>".into(),
        Value::Array(items) => match items.first() {
            Some(first) => Value::Array(vec![json_shape(first, depth, keep)]),
            None => Value::Array(Vec::new()),
        },
        Value::Object(_) if depth == 0 => "<object>".into(),
        Value::Object(fields) => Value::Object(
            fields
                .iter()
                .map(|(k, v)| {
                    let shaped = match v {
                        Value::String(_) if keep.contains(&k.as_str()) => v.clone(),
                        _ => json_shape(v, depth - 1, keep),
                    };
                    (k.clone(), shaped)
                })
                .collect(),
        ),
    }
}

/// [`json_shape`] of every line of a JSON-lines stream, each distinct shape once, in order of
/// first appearance (what an event stream's snapshot pins: its kinds of events and their fields).
pub fn json_lines_shapes(text: &str, depth: usize, keep: &[&str]) -> Vec<serde_json::Value> {
    let mut shapes: Vec<serde_json::Value> = Vec::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let value: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not a JSON line ({e}): {line}"));
        let shape = json_shape(&value, depth, keep);
        if !shapes.contains(&shape) {
            shapes.push(shape);
        }
    }
    shapes
}

/// Held by tests that mount loop partitions, and by tests while they create a lab host: the lab
/// host's new mount namespace (`unshare --mount`) copies every mount that exists at that moment
/// and keeps those filesystems busy after the test unmounts them, so their partitions could not
/// be deleted when a disk is wiped. One lock per test binary.
pub fn mounts_lock() -> std::sync::MutexGuard<'static, ()> {
    static MOUNT_NAMESPACES: std::sync::Mutex<()> = std::sync::Mutex::new(());
    MOUNT_NAMESPACES
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The nix.conf of test builds: flakes on, no sandbox, no build users, no substituters (Debian's
/// nix 2.8 as root, no binary cache on this machine).
pub const TEST_NIX_CONF: &str =
    "experimental-features = nix-command flakes\nbuild-users-group =\nsubstituters =\nsandbox = false\n";

/// Writes [`TEST_NIX_CONF`] to `dir/nix.conf` (creating `dir`) and returns `dir`, a value for
/// `NIX_CONF_DIR` (for a nix process of the test's own, e.g. a child the test starts).
pub fn write_nix_conf(dir: &Path) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
    std::fs::write(dir.join("nix.conf"), TEST_NIX_CONF).expect("write nix.conf");
    dir.to_path_buf()
}

/// This test process's `NIX_CONF_DIR` with [`TEST_NIX_CONF`]: made and exported once, before the
/// first nix this process starts, and the same for every test of the binary (tests run on
/// threads, so a per-test `set_var` would race).
pub fn nix_conf_dir() -> &'static Path {
    static DIR: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    DIR.get_or_init(|| {
        let dir = write_nix_conf(
            &std::env::temp_dir().join(format!("nixpave-test-nixconf-{}", std::process::id())),
        );
        std::env::set_var("NIX_CONF_DIR", &dir);
        dir
    })
}

/// `nix-build --no-out-link FILE` with `--argstr` pairs `strs` and `--arg` pairs `exprs` (nix
/// expressions: `true`, a path), under [`nix_conf_dir`]; returns the out path.
pub fn nix_build(file: &Path, strs: &[(&str, &str)], exprs: &[(&str, &str)]) -> String {
    let mut cmd = Command::new("nix-build");
    cmd.env("NIX_CONF_DIR", nix_conf_dir())
        .arg("--no-out-link")
        .arg(file);
    for (k, v) in strs {
        cmd.args(["--argstr", k, v]);
    }
    for (k, v) in exprs {
        cmd.args(["--arg", k, v]);
    }
    let out = cmd.output().expect("nix-build runs");
    assert!(
        out.status.success(),
        "nix-build {} failed: {}",
        file.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// `nix-instantiate FILE` with `--argstr` pairs under [`nix_conf_dir`], without building:
/// returns the derivation and its out path.
pub fn nix_instantiate(file: &Path, strs: &[(&str, &str)]) -> (String, String) {
    let mut cmd = Command::new("nix-instantiate");
    cmd.env("NIX_CONF_DIR", nix_conf_dir()).arg(file);
    for (k, v) in strs {
        cmd.args(["--argstr", k, v]);
    }
    let out = cmd.output().expect("nix-instantiate runs");
    assert!(
        out.status.success(),
        "nix-instantiate {} failed: {}",
        file.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let drv = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let out_path = sh(&["nix-store", "-q", "--outputs", &drv])
        .trim()
        .to_string();
    (drv, out_path)
}

/// Number of generations of a nix profile (`nix-env -p PROFILE --list-generations`).
pub fn generation_count(profile: &Path) -> usize {
    let out = Command::new("nix-env")
        .arg("-p")
        .arg(profile)
        .arg("--list-generations")
        .output()
        .expect("nix-env runs");
    String::from_utf8_lossy(&out.stdout).lines().count()
}

/// Where a symlink (a profile, a generation) finally points, if it resolves.
pub fn resolve(path: &Path) -> Option<String> {
    std::fs::canonicalize(path)
        .ok()
        .map(|p| p.to_string_lossy().into_owned())
}

/// A tag unique to this moment (`PREFIX-<nanoseconds, hex>`), so each test builds store paths,
/// lab names and generations of its own.
pub fn unique(prefix: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970")
        .as_nanos();
    format!("{prefix}-{nanos:x}")
}

/// A finished command's exit status, stdout and stderr as one text, for assertion messages.
pub fn output_text(out: &std::process::Output) -> String {
    format!(
        "status {:?}\nstdout:\n{}\nstderr:\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}
