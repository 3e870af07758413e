//! Health checks that must pass before a deploy is confirmed: a command on the target, a TCP port, an HTTP
//! URL (status and optional body match) from the deployer or the target, and a systemd unit being active.

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

use nixpave_remote::{shell_quote, Transport};
use serde::{Deserialize, Serialize};

/// Where a network check runs from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum CheckFrom {
    /// The machine running nixpave.
    #[default]
    Deployer,
    /// The host being deployed (through its transport).
    Target,
}

/// What a check looks at.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum CheckKind {
    /// A shell command on the target must exit 0.
    Command {
        /// The command (run with `sh -c`).
        command: String,
    },
    /// A TCP port must accept connections.
    Tcp {
        /// Host to connect to (default: the node's hostname, or 127.0.0.1 from the target).
        host: Option<String>,
        /// The port.
        port: u16,
    },
    /// An HTTP URL must answer with the expected status (and body substring).
    Http {
        /// `http://host[:port]/path`.
        url: String,
        /// Expected status (default 200).
        status: Option<u16>,
        /// A substring the body must contain.
        body: Option<String>,
    },
    /// A systemd unit must be active.
    Systemd {
        /// The unit, e.g. `nginx.service`.
        unit: String,
    },
}

/// One health check with its timing.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct HealthCheck {
    /// What is checked.
    #[serde(flatten)]
    pub kind: CheckKind,
    /// Name shown in reports (default: derived from the check).
    pub name: Option<String>,
    /// Where network checks run from.
    #[serde(default)]
    pub from: CheckFrom,
    /// Seconds one attempt may take (default 5).
    pub timeout: Option<u64>,
    /// Attempts before giving up (default 3).
    pub retries: Option<u32>,
    /// Seconds between attempts (default 1).
    pub interval: Option<f64>,
}

/// The outcome of a check that did not pass.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CheckFailure {
    /// The check's name.
    pub check: String,
    /// What the last attempt saw.
    pub output: String,
    /// How many attempts were made.
    pub attempts: u32,
}

impl HealthCheck {
    /// The name shown in reports.
    pub fn display_name(&self) -> String {
        if let Some(n) = &self.name {
            return n.clone();
        }
        match &self.kind {
            CheckKind::Command { command } => format!("command `{command}`"),
            CheckKind::Tcp { host, port } => {
                format!("tcp {}:{port}", host.as_deref().unwrap_or("<host>"))
            }
            CheckKind::Http { url, .. } => format!("http {url}"),
            CheckKind::Systemd { unit } => format!("systemd unit {unit}"),
        }
    }

    fn timeout(&self) -> Duration {
        Duration::from_secs(self.timeout.unwrap_or(5).max(1))
    }

    /// Runs the check with its retries; `hostname` is the node's address for deployer-side checks.
    pub fn run(&self, hostname: &str, transport: &dyn Transport) -> Result<(), CheckFailure> {
        let attempts = self.retries.unwrap_or(3).max(1);
        let interval = Duration::from_secs_f64(self.interval.unwrap_or(1.0).max(0.0));
        let mut last = String::new();
        for attempt in 1..=attempts {
            match self.attempt(hostname, transport) {
                Ok(()) => return Ok(()),
                Err(output) => last = output,
            }
            if attempt < attempts {
                std::thread::sleep(interval);
            }
        }
        Err(CheckFailure {
            check: self.display_name(),
            output: last,
            attempts,
        })
    }

    fn attempt(&self, hostname: &str, transport: &dyn Transport) -> Result<(), String> {
        let t = self.timeout();
        match (&self.kind, self.from) {
            (CheckKind::Command { command }, _) => on_target(transport, command, t),
            (CheckKind::Systemd { unit }, _) => on_target(
                transport,
                &format!("systemctl is-active {}", shell_quote(unit)),
                t,
            ),
            (CheckKind::Tcp { host, port }, CheckFrom::Deployer) => {
                tcp_connect(host.as_deref().unwrap_or(hostname), *port, t).map(|_| ())
            }
            (CheckKind::Tcp { host, port }, CheckFrom::Target) => {
                let host = host.as_deref().unwrap_or("127.0.0.1");
                let probe = format!(
                    "if command -v nc >/dev/null; then nc -z -w {s} {h} {port}; \
                     else bash -c 'exec 3<>/dev/tcp/{h}/{port}'; fi",
                    s = t.as_secs(),
                    h = shell_quote(host)
                );
                on_target(transport, &probe, t)
            }
            (CheckKind::Http { url, status, body }, CheckFrom::Deployer) => {
                let (got, text) = http_get(url, hostname, t)?;
                judge_http(got, &text, status.unwrap_or(200), body.as_deref())
            }
            (CheckKind::Http { url, status, body }, CheckFrom::Target) => {
                let cmd = format!(
                    "curl -sS -m {} -o - -w '\\n%{{http_code}}' {}",
                    t.as_secs(),
                    shell_quote(url)
                );
                let out = run_target(transport, &cmd, t)?;
                let (text, code) = out.rsplit_once('\n').unwrap_or(("", out.as_str()));
                let got = code.trim().parse::<u16>().map_err(|_| out.clone())?;
                judge_http(got, text, status.unwrap_or(200), body.as_deref())
            }
        }
    }
}

fn judge_http(got: u16, text: &str, want: u16, body: Option<&str>) -> Result<(), String> {
    if got != want {
        return Err(format!("HTTP status {got}, expected {want}"));
    }
    if let Some(b) = body {
        if !text.contains(b) {
            return Err(format!("body does not contain {b:?}: {}", excerpt(text)));
        }
    }
    Ok(())
}

fn excerpt(text: &str) -> String {
    text.chars().take(200).collect()
}

fn run_target(transport: &dyn Transport, command: &str, t: Duration) -> Result<String, String> {
    let argv = vec![
        "timeout".to_string(),
        t.as_secs().to_string(),
        "sh".to_string(),
        "-c".to_string(),
        command.to_string(),
    ];
    match transport.run(&argv, None) {
        Ok(out) if out.success() => Ok(out.stdout_str()),
        Ok(out) => {
            let mut text = out.stdout_str();
            text.push_str(&String::from_utf8_lossy(&out.stderr));
            let status = match out.status {
                Some(124) => "timed out".to_string(),
                s => format!("exit {s:?}"),
            };
            Err(format!(
                "{status}: {}",
                nixpave_remote::last_lines(&text, 10)
            ))
        }
        Err(e) => Err(e.to_string()),
    }
}

fn on_target(transport: &dyn Transport, command: &str, t: Duration) -> Result<(), String> {
    run_target(transport, command, t).map(|_| ())
}

fn tcp_connect(host: &str, port: u16, t: Duration) -> Result<TcpStream, String> {
    let addrs = (host, port)
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve {host}:{port}: {e}"))?;
    let mut last = format!("{host}:{port}: no address");
    for addr in addrs {
        match TcpStream::connect_timeout(&addr, t) {
            Ok(s) => return Ok(s),
            Err(e) => last = format!("connect {addr}: {e}"),
        }
    }
    Err(last)
}

/// A minimal HTTP/1.0 GET (plain http only): returns status code and body.
fn http_get(url: &str, default_host: &str, t: Duration) -> Result<(u16, String), String> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| format!("{url}: only http:// URLs can be checked from the deployer"))?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let authority = if authority.is_empty() {
        default_host
    } else {
        authority
    };
    let (host, port) = match authority.rsplit_once(':') {
        Some((h, p)) => (
            h,
            p.parse::<u16>().map_err(|_| format!("bad port in {url}"))?,
        ),
        None => (authority, 80),
    };
    let mut stream = tcp_connect(host, port, t)?;
    let _ = stream.set_read_timeout(Some(t));
    let _ = stream.set_write_timeout(Some(t));
    let request = format!("GET {path} HTTP/1.0\r\nHost: {authority}\r\nConnection: close\r\n\r\n");
    stream
        .write_all(request.as_bytes())
        .map_err(|e| format!("sending request to {authority}: {e}"))?;
    let mut response = Vec::new();
    stream
        .take(1 << 20)
        .read_to_end(&mut response)
        .map_err(|e| format!("reading response from {authority}: {e}"))?;
    let text = String::from_utf8_lossy(&response);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse::<u16>().ok())
        .ok_or_else(|| format!("not an HTTP response: {}", excerpt(head)))?;
    Ok((code, body.to_string()))
}

/// Seconds all `checks` may take at most (every attempt timing out, plus the pauses between attempts).
pub fn budget_seconds(checks: &[HealthCheck]) -> u64 {
    checks
        .iter()
        .map(|c| {
            let attempts = u64::from(c.retries.unwrap_or(3).max(1));
            let pause = c.interval.unwrap_or(1.0).max(0.0).ceil() as u64;
            attempts * c.timeout().as_secs() + (attempts - 1) * pause
        })
        .sum()
}

/// Runs every check; returns all failures (empty when healthy).
pub fn run_all(
    checks: &[HealthCheck],
    hostname: &str,
    transport: &dyn Transport,
) -> Vec<CheckFailure> {
    checks
        .iter()
        .filter_map(|c| c.run(hostname, transport).err())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use nixpave_remote::LocalTransport;
    use std::net::TcpListener;

    fn check(kind: CheckKind) -> HealthCheck {
        HealthCheck {
            kind,
            name: None,
            from: CheckFrom::Deployer,
            timeout: Some(2),
            retries: Some(2),
            interval: Some(0.05),
        }
    }

    #[test]
    fn parses_all_kinds_from_json() {
        let checks: Vec<HealthCheck> = serde_json::from_str(
            r#"[{"type":"command","command":"true"},{"type":"tcp","port":22,"from":"target"},
                {"type":"http","url":"http://x/","status":204,"body":"ok","retries":5},
                {"type":"systemd","unit":"sshd.service"}]"#,
        )
        .expect("valid");
        assert_eq!(checks.len(), 4);
        assert_eq!(checks[1].from, CheckFrom::Target);
        assert_eq!(checks[2].retries, Some(5));
    }

    #[test]
    fn command_check_reports_output_on_failure() {
        let c = check(CheckKind::Command {
            command: "echo broken-thing; exit 3".into(),
        });
        let err = c.run("localhost", &LocalTransport).unwrap_err();
        assert_eq!(err.attempts, 2);
        assert!(err.output.contains("broken-thing"), "{}", err.output);
        assert!(check(CheckKind::Command {
            command: "true".into()
        })
        .run("localhost", &LocalTransport)
        .is_ok());
    }

    #[test]
    fn tcp_check_sees_listening_and_closed_ports() {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let c = check(CheckKind::Tcp { host: None, port });
        assert!(c.run("127.0.0.1", &LocalTransport).is_ok());
        drop(listener);
        assert!(c.run("127.0.0.1", &LocalTransport).is_err());
    }

    #[test]
    fn http_check_matches_status_and_body() {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let server = std::thread::spawn(move || {
            for _ in 0..2 {
                let (mut s, _) = listener.accept().expect("accept");
                let mut buf = [0u8; 1024];
                let _ = s.read(&mut buf);
                let _ = s.write_all(b"HTTP/1.0 200 OK\r\n\r\nall good\n");
            }
        });
        let url = format!("http://127.0.0.1:{port}/health");
        let ok = HealthCheck {
            retries: Some(1),
            ..check(CheckKind::Http {
                url: url.clone(),
                status: None,
                body: Some("good".into()),
            })
        };
        assert!(ok.run("x", &LocalTransport).is_ok());
        let bad = HealthCheck {
            retries: Some(1),
            ..check(CheckKind::Http {
                url,
                status: None,
                body: Some("great".into()),
            })
        };
        let err = bad.run("x", &LocalTransport).unwrap_err();
        assert!(err.output.contains("all good"), "{}", err.output);
        server.join().expect("server");
    }
}
