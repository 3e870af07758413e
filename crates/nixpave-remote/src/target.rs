//! Where to connect: `user@host:port` targets.

use std::fmt;
use std::str::FromStr;

/// One SSH destination: `[ssh://][user@]host[:port]`, IPv6 as `[addr]:port`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct Target {
    /// Login user; `None` lets ssh decide (ssh_config, then the local user name).
    pub user: Option<String>,
    /// Host name, address, or an alias from ssh_config.
    pub host: String,
    /// TCP port; `None` lets ssh decide (ssh_config, then 22).
    pub port: Option<u16>,
}

/// Why a target string is not a valid destination.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid target `{input}`: {reason} (expected [user@]host[:port])")]
pub struct TargetParseError {
    /// The rejected input.
    pub input: String,
    /// What is wrong with it.
    pub reason: &'static str,
}

impl Target {
    /// A target for `host` with ssh's defaults for user and port.
    pub fn new(host: impl Into<String>) -> Self {
        Target {
            user: None,
            host: host.into(),
            port: None,
        }
    }

    /// `user@host` as ssh and nix store URIs want it (no port; IPv6 unbracketed for ssh).
    pub fn user_at_host(&self) -> String {
        match &self.user {
            Some(user) => format!("{user}@{}", self.host),
            None => self.host.clone(),
        }
    }

    /// True when the login user is root (an unspecified user is not assumed to be root).
    pub fn is_root_user(&self) -> bool {
        self.user.as_deref() == Some("root")
    }
}

impl FromStr for Target {
    type Err = TargetParseError;

    fn from_str(input: &str) -> Result<Self, Self::Err> {
        let err = |reason| TargetParseError {
            input: input.to_string(),
            reason,
        };
        let rest = input.strip_prefix("ssh://").unwrap_or(input);
        let rest = rest.strip_suffix('/').unwrap_or(rest);
        let (user, hostport) = match rest.rsplit_once('@') {
            Some(("", _)) => return Err(err("empty user name")),
            Some((user, hp)) => (Some(user.to_string()), hp),
            None => (None, rest),
        };
        let (host, port) = if let Some(bracketed) = hostport.strip_prefix('[') {
            let (addr, after) = bracketed
                .split_once(']')
                .ok_or_else(|| err("unclosed `[` in IPv6 address"))?;
            match after {
                "" => (addr.to_string(), None),
                _ => {
                    let port = after
                        .strip_prefix(':')
                        .ok_or_else(|| err("unexpected text after `]`"))?;
                    (
                        addr.to_string(),
                        Some(parse_port(port).ok_or_else(|| err("bad port"))?),
                    )
                }
            }
        } else if hostport.matches(':').count() > 1 {
            // A bare IPv6 address has no port.
            (hostport.to_string(), None)
        } else if let Some((host, port)) = hostport.split_once(':') {
            (
                host.to_string(),
                Some(parse_port(port).ok_or_else(|| err("bad port"))?),
            )
        } else {
            (hostport.to_string(), None)
        };
        if host.is_empty() {
            return Err(err("empty host"));
        }
        if host.starts_with('-') || host.chars().any(|c| c.is_whitespace() || c == '/') {
            return Err(err("host contains characters ssh would misread"));
        }
        if user
            .as_deref()
            .is_some_and(|u| u.starts_with('-') || u.chars().any(char::is_whitespace))
        {
            return Err(err("user contains characters ssh would misread"));
        }
        Ok(Target { user, host, port })
    }
}

fn parse_port(text: &str) -> Option<u16> {
    text.parse::<u16>().ok().filter(|p| *p != 0)
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(user) = &self.user {
            write!(f, "{user}@")?;
        }
        match (self.host.contains(':'), self.port) {
            (true, Some(port)) => write!(f, "[{}]:{port}", self.host),
            (false, Some(port)) => write!(f, "{}:{port}", self.host),
            (_, None) => write!(f, "{}", self.host),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Target {
        s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    #[test]
    fn parses_the_usual_forms() {
        assert_eq!(parse("example.org"), Target::new("example.org"));
        let t = parse("root@10.0.0.2:2222");
        assert_eq!(t.user.as_deref(), Some("root"));
        assert_eq!(t.host, "10.0.0.2");
        assert_eq!(t.port, Some(2222));
        assert_eq!(parse("ssh://alice@h/"), parse("alice@h"));
        let v6 = parse("root@[fd00::1]:22");
        assert_eq!((v6.host.as_str(), v6.port), ("fd00::1", Some(22)));
        assert_eq!(parse("fd00::1").host, "fd00::1");
    }

    #[test]
    fn round_trips_through_display() {
        for s in ["h", "u@h", "u@h:2", "u@[fd00::1]:22", "10.1.2.3:22"] {
            assert_eq!(parse(s).to_string(), s);
        }
    }

    #[test]
    fn rejects_what_ssh_would_misread() {
        for s in [
            "",
            "@h",
            "-oProxyCommand=x",
            "h:0",
            "h:99999",
            "h:x",
            "[::1",
            "u@h h",
        ] {
            assert!(s.parse::<Target>().is_err(), "{s} should be rejected");
        }
    }
}
