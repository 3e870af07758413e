//! Privilege escalation: how root commands are wrapped when the login user is not root.

use super::options::Privilege;
use super::SshTransport;
use crate::transport::TransportError;

/// How root commands are wrapped on this host, decided once at connect time.
#[derive(Clone, Default)]
pub(super) enum Escalation {
    /// The login user is root (or escalation is off).
    #[default]
    Direct,
    /// `sudo -n`.
    SudoNoPassword,
    /// `sudo -S -k` with this password prepended to stdin.
    SudoPassword(String),
    /// `doas -n`.
    Doas,
    /// `run0`.
    Run0,
}

impl Escalation {
    /// The command line for `argv`: escalated, and under [`TARGET_PATH`](crate::TARGET_PATH)
    /// both before escalation (finding `sudo` on NixOS) and after it (sudo may reset `PATH`).
    pub(super) fn wrap(&self, argv: &[String]) -> Vec<String> {
        self.wrap_with_env(argv, &[])
    }

    /// [`wrap`](Self::wrap), with the variables `NAME=value` of `env` set for `argv` (after the
    /// escalation, which may reset the environment).
    pub(super) fn wrap_with_env(&self, argv: &[String], env: &[&str]) -> Vec<String> {
        let argv = crate::target_env::with_target_env(argv, env);
        let prefix: &[&str] = match self {
            Escalation::Direct => &[],
            Escalation::SudoNoPassword => &["sudo", "-n", "--"],
            Escalation::SudoPassword(_) => &["sudo", "-S", "-k", "-p", "", "--"],
            Escalation::Doas => &["doas", "-n", "--"],
            Escalation::Run0 => &["run0", "--"],
        };
        if prefix.is_empty() {
            return argv;
        }
        let escalated: Vec<String> = prefix.iter().map(|s| s.to_string()).chain(argv).collect();
        crate::with_target_path(&escalated)
    }

    pub(super) fn stdin<'a>(&self, stdin: Option<&'a [u8]>) -> Option<std::borrow::Cow<'a, [u8]>> {
        match self {
            Escalation::SudoPassword(pw) => {
                let mut data = Vec::with_capacity(pw.len() + 1 + stdin.map_or(0, <[u8]>::len));
                data.extend_from_slice(pw.as_bytes());
                data.push(b'\n');
                data.extend_from_slice(stdin.unwrap_or_default());
                Some(std::borrow::Cow::Owned(data))
            }
            _ => stdin.map(std::borrow::Cow::Borrowed),
        }
    }
}

impl SshTransport {
    /// Decides once how root commands run: directly when logged in as root, else through the
    /// configured escalation (asking for the sudo password at most once).
    pub(super) fn decide_escalation(&self) -> Result<Escalation, TransportError> {
        if self.target.is_root_user() || self.options.privilege == Privilege::None {
            return Ok(Escalation::Direct);
        }
        let uid = self.run_raw(&["id".into(), "-u".into()], None, &Escalation::Direct)?;
        if uid.stdout_str().trim() == "0" {
            return Ok(Escalation::Direct);
        }
        let check = |esc: &Escalation, input: Option<&[u8]>| -> Result<bool, TransportError> {
            Ok(self.run_raw(&["true".into()], input, esc)?.success())
        };
        match self.options.privilege {
            Privilege::None => Ok(Escalation::Direct),
            Privilege::Doas => Ok(Escalation::Doas),
            Privilege::Run0 => Ok(Escalation::Run0),
            Privilege::Sudo => {
                if check(&Escalation::SudoNoPassword, None)? {
                    return Ok(Escalation::SudoNoPassword);
                }
                let Some(prompt) = &self.options.sudo_password else {
                    return Err(TransportError::Connection {
                        host: self.name.clone(),
                        message: "logged in as a non-root user and `sudo -n true` failed: sudo \
                                  needs a password (ask for it with --ask-sudo-password) or is \
                                  not allowed for this user"
                            .into(),
                    });
                };
                let password = prompt(&self.name).ok_or_else(|| TransportError::Interrupted {
                    host: self.name.clone(),
                })?;
                let esc = Escalation::SudoPassword(password);
                if check(&esc, None)? {
                    Ok(esc)
                } else {
                    Err(TransportError::Connection {
                        host: self.name.clone(),
                        message: "sudo refused the password (or the user may not use sudo)".into(),
                    })
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sudo_password_goes_to_stdin_never_argv() {
        let esc = Escalation::SudoPassword("s3cret".into());
        let argv = esc.wrap(&["cat".into()]);
        assert!(!argv.iter().any(|a| a.contains("s3cret")));
        assert_eq!(argv[4..6], ["sudo".to_string(), "-S".to_string()]);
        let stdin = esc.stdin(Some(b"data")).expect("stdin");
        assert_eq!(&*stdin, b"s3cret\ndata");
    }
}
