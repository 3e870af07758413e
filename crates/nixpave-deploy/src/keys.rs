//! Secrets uploaded beside a deploy (colmena's `keys` schema). Contents travel on the transport's stdin into a
//! temp file with the final mode, then are renamed into place: never in the nix store, logs or argv.

use std::path::PathBuf;
use std::process::{Command, Stdio};

use nixpave_remote::{Transport, UploadSpec};
use serde::Deserialize;

/// When a key is uploaded relative to activation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
pub enum UploadAt {
    /// Before the new system is activated (default).
    #[default]
    #[serde(rename = "pre-activation")]
    PreActivation,
    /// After activation (e.g. when the owner is created by the new system).
    #[serde(rename = "post-activation")]
    PostActivation,
}

/// One key. Exactly one of `text`, `key_file`, `key_command` gives the contents.
#[derive(Clone, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct KeySpec {
    /// Literal contents.
    pub text: Option<String>,
    /// A local file with the contents.
    pub key_file: Option<String>,
    /// A local command (argv) printing the contents.
    pub key_command: Option<Vec<String>>,
    /// Directory on the target (default `/run/keys`).
    pub dest_dir: Option<String>,
    /// Owner (default `root`).
    pub user: Option<String>,
    /// Group (default `root`).
    pub group: Option<String>,
    /// Octal mode (default `0600`).
    pub permissions: Option<String>,
    /// When to upload.
    #[serde(default)]
    pub upload_at: UploadAt,
}

// Hand-written so that a stray `{:?}` can never print a secret.
impl std::fmt::Debug for KeySpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeySpec")
            .field("text", &self.text.as_ref().map(|_| "<redacted>"))
            .field("key_file", &self.key_file)
            .field("key_command", &self.key_command)
            .field("dest_dir", &self.dest_dir)
            .field("user", &self.user)
            .field("group", &self.group)
            .field("permissions", &self.permissions)
            .field("upload_at", &self.upload_at)
            .finish()
    }
}

/// A key could not be produced or uploaded.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// The spec itself is wrong.
    #[error("key `{key}`: {message}")]
    Invalid {
        /// The key's name.
        key: String,
        /// What is wrong.
        message: String,
    },
    /// Reading the contents locally failed.
    #[error("key `{key}`: {message}")]
    Source {
        /// The key's name.
        key: String,
        /// What failed (never the contents).
        message: String,
    },
    /// Uploading failed.
    #[error("key `{key}`: upload failed")]
    Upload {
        /// The key's name.
        key: String,
        /// The transport error.
        #[source]
        source: nixpave_remote::TransportError,
    },
}

impl KeySpec {
    /// Where the key lands on the target.
    pub fn dest(&self, name: &str) -> PathBuf {
        PathBuf::from(self.dest_dir.as_deref().unwrap_or("/run/keys")).join(name)
    }

    /// The permission bits.
    pub fn mode(&self, name: &str) -> Result<u32, KeyError> {
        let text = self.permissions.as_deref().unwrap_or("0600");
        u32::from_str_radix(text, 8)
            .ok()
            .filter(|m| *m <= 0o7777)
            .ok_or_else(|| KeyError::Invalid {
                key: name.into(),
                message: format!("permissions {text:?} is not an octal mode"),
            })
    }

    /// Reads the contents on the deployer.
    pub fn contents(&self, name: &str) -> Result<Vec<u8>, KeyError> {
        let err = |message: String| KeyError::Source {
            key: name.into(),
            message,
        };
        match (&self.text, &self.key_file, &self.key_command) {
            (Some(t), None, None) => Ok(t.as_bytes().to_vec()),
            (None, Some(f), None) => std::fs::read(f).map_err(|e| err(format!("reading {f}: {e}"))),
            (None, None, Some(argv)) => {
                let (prog, args) = argv
                    .split_first()
                    .ok_or_else(|| err("keyCommand is empty".into()))?;
                let out = Command::new(prog)
                    .args(args)
                    .stdin(Stdio::null())
                    .output()
                    .map_err(|e| err(format!("running keyCommand {prog}: {e}")))?;
                if !out.status.success() {
                    return Err(err(format!(
                        "keyCommand {prog} failed ({}): {}",
                        out.status,
                        nixpave_remote::last_lines(&String::from_utf8_lossy(&out.stderr), 5)
                    )));
                }
                Ok(out.stdout)
            }
            _ => Err(KeyError::Invalid {
                key: name.into(),
                message: "needs exactly one of text, keyFile, keyCommand".into(),
            }),
        }
    }

    /// How the uploaded key looks on a host (mode, owner, group, contents hash; see
    /// [`crate::status::key_fingerprint`]), to tell whether an upload would change anything.
    pub fn fingerprint(&self, name: &str) -> Result<String, KeyError> {
        Ok(crate::status::key_fingerprint(
            self.mode(name)?,
            self.user.as_deref().unwrap_or("root"),
            self.group.as_deref().unwrap_or("root"),
            &self.contents(name)?,
        ))
    }

    /// Uploads the key atomically with its owner and mode.
    pub fn upload(&self, name: &str, transport: &dyn Transport) -> Result<(), KeyError> {
        if name.contains('/') || name.is_empty() {
            return Err(KeyError::Invalid {
                key: name.into(),
                message: "key names may not contain '/'".into(),
            });
        }
        let contents = self.contents(name)?;
        let spec = UploadSpec {
            dest: self.dest(name),
            mode: self.mode(name)?,
            owner: Some(format!(
                "{}:{}",
                self.user.as_deref().unwrap_or("root"),
                self.group.as_deref().unwrap_or("root")
            )),
        };
        transport
            .upload(&contents, &spec)
            .map_err(|source| KeyError::Upload {
                key: name.into(),
                source,
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nixpave_remote::LocalTransport;
    use std::os::unix::fs::{MetadataExt, PermissionsExt};

    #[test]
    fn debug_never_shows_text() {
        let k = KeySpec {
            text: Some("hunter2".into()),
            ..Default::default()
        };
        assert!(!format!("{k:?}").contains("hunter2"));
    }

    #[test]
    fn needs_exactly_one_source() {
        let k = KeySpec {
            text: Some("a".into()),
            key_file: Some("/etc/hostname".into()),
            ..Default::default()
        };
        assert!(matches!(k.contents("k"), Err(KeyError::Invalid { .. })));
    }

    #[test]
    fn uploads_text_file_and_command_with_mode_and_owner() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("src");
        std::fs::write(&file, "from-file").expect("write");
        let dest = dir.path().join("keys").to_string_lossy().into_owned();
        let keys = [
            ("a", Some("from-text".to_string()), None, None, "0640"),
            (
                "b",
                None,
                Some(file.to_string_lossy().into_owned()),
                None,
                "0600",
            ),
            (
                "c",
                None,
                None,
                Some(vec!["echo".to_string(), "from-cmd".to_string()]),
                "0400",
            ),
        ];
        for (name, text, key_file, key_command, perm) in keys {
            let spec = KeySpec {
                text,
                key_file,
                key_command,
                dest_dir: Some(dest.clone()),
                user: Some("root".into()),
                group: Some("daemon".into()),
                permissions: Some(perm.into()),
                upload_at: UploadAt::PreActivation,
            };
            spec.upload(name, &LocalTransport).expect("upload");
            let meta = std::fs::metadata(spec.dest(name)).expect("stat");
            assert_eq!(
                meta.permissions().mode() & 0o7777,
                u32::from_str_radix(perm, 8).expect("octal")
            );
            assert_eq!(meta.uid(), 0);
            assert_eq!(meta.gid(), 1, "group daemon");
        }
        let read =
            |n: &str| std::fs::read_to_string(dir.path().join("keys").join(n)).expect("read");
        assert_eq!(read("a"), "from-text");
        assert_eq!(read("b"), "from-file");
        assert_eq!(read("c"), "from-cmd\n");
    }
}
