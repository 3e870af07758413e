//! `nixpave status`.

use std::process::ExitCode;

use miette::IntoDiagnostic;

use super::fleet::load_fleet_as_it_is;
use super::StatusArgs;
use crate::exit;

/// Runs `nixpave status`.
pub fn status(args: StatusArgs) -> miette::Result<ExitCode> {
    let fleet = match load_fleet_as_it_is(&args.fleet) {
        Ok(f) => f,
        Err(e) => return Ok(e.exit()),
    };
    let hosts = &fleet.inventory.hosts;
    let rows = status_rows(hosts, |host| {
        nixpave_deploy::status::host_status(host, &fleet.connector)
    });
    if args.fleet.json {
        println!("{}", serde_json::to_string_pretty(&rows).into_diagnostic()?);
    } else {
        print!("{}", status_text(&rows));
    }
    Ok(exit::code(exit::aggregate(rows.iter().map(|r| {
        if r.error.is_some() {
            exit::FAILED
        } else {
            exit::OK
        }
    }))))
}

/// The status table (one row per host and profile; an unreachable host gets one row with the
/// reason), then a note for each host whose booted system is not its current one.
fn status_text(rows: &[nixpave_deploy::status::HostStatus]) -> String {
    let mut table = crate::cmd::table::new(&[
        "HOST",
        "REACHABLE",
        "PROFILE",
        "GEN",
        "BOOTED",
        "LAST DEPLOY",
        "current system",
    ]);
    let mut notes = Vec::new();
    for r in rows {
        if let Some(e) = &r.error {
            let mut row = vec![r.host.clone(), "no".into()];
            row.extend(["-"; 4].map(String::from));
            row.push(e.to_string());
            table.add_row(row);
            continue;
        }
        for p in &r.profiles {
            let last = p
                .last
                .as_ref()
                .map(|l| {
                    if l.reason.is_empty() {
                        l.state.to_string()
                    } else {
                        format!("{} ({})", l.state, l.reason)
                    }
                })
                .unwrap_or_else(|| "-".into());
            table.add_row(vec![
                r.host.clone(),
                "yes".into(),
                p.name.clone(),
                p.generation.map(|g| g.to_string()).unwrap_or("-".into()),
                p.booted_generation
                    .map(|g| g.to_string())
                    .unwrap_or("-".into()),
                last,
                p.current.as_deref().unwrap_or("-").to_string(),
            ]);
        }
        if r.state
            .as_ref()
            .is_some_and(|s| s.booted_system != s.current_system)
        {
            notes.push(format!(
                "{}: booted system differs from current: {}",
                r.host,
                r.state
                    .as_ref()
                    .and_then(|s| s.booted_system.clone())
                    .unwrap_or("-".into())
            ));
        }
    }
    let mut out = crate::cmd::table::render(table, &[3, 4]);
    out.push('\n');
    for note in notes {
        out.push_str(&note);
        out.push('\n');
    }
    out
}

/// Reads every host's status, at most 10 at a time (a worker takes the next host as soon as it
/// is free); a host whose reading panicked or never started gets an error row, never no row.
fn status_rows(
    hosts: &[nixpave_deploy::Host],
    read: impl Fn(&nixpave_deploy::Host) -> nixpave_deploy::status::HostStatus + Sync,
) -> Vec<nixpave_deploy::status::HostStatus> {
    use nixpave_remote::parallel::{self, Slot};
    let slots = parallel::run(hosts, 10, || false, read);
    hosts
        .iter()
        .zip(slots)
        .map(|(host, slot)| {
            let error = match slot {
                Slot::Done(row) => return row,
                Slot::Panicked(m) => format!("internal error: {m}"),
                Slot::NotStarted => "not read: interrupted".into(),
            };
            nixpave_deploy::status::HostStatus {
                host: host.name.clone(),
                error: Some(error),
                state: None,
                profiles: Vec::new(),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_gives_a_panicking_host_an_error_row_and_keeps_order() {
        let nodes: serde_json::Map<String, serde_json::Value> = (0..12)
            .map(|i| {
                let node = serde_json::json!({"hostname": "x", "profiles": {"system": {"path": "/nix/store/x"}}});
                (format!("h{i:02}"), node)
            })
            .collect();
        let inventory = nixpave_deploy::Inventory::from_json(
            serde_json::json!({ "nodes": nodes }),
            &nixpave_deploy::Selection::default(),
        )
        .expect("valid inventory");
        let rows = status_rows(&inventory.hosts, |host| {
            if host.name == "h03" {
                panic!("cannot read {}", host.name);
            }
            nixpave_deploy::status::HostStatus {
                host: host.name.clone(),
                error: None,
                state: None,
                profiles: Vec::new(),
            }
        });
        let names: Vec<&str> = rows.iter().map(|r| r.host.as_str()).collect();
        let expected: Vec<String> = (0..12).map(|i| format!("h{i:02}")).collect();
        assert_eq!(names, expected, "every host has a row, in inventory order");
        assert_eq!(
            rows[3].error.as_deref(),
            Some("internal error: cannot read h03")
        );
        assert!(rows.iter().filter(|r| r.error.is_some()).count() == 1);
    }

    /// The status table from fixed rows: a host on its deployed system, one that rolled back and
    /// booted an older system, and one that cannot be reached.
    #[test]
    fn status_table() {
        use nixpave_deploy::status::{
            AgentState, HostState, HostStatus, ProfileStatus, StatusRecord,
        };
        let record = |state: AgentState, reason: &str, generation: u64| StatusRecord {
            id: "d-1".into(),
            name: "system".into(),
            profile: "/nix/var/nix/profiles/system".into(),
            path: "/nix/store/aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa-nixos-system-web-24.05".into(),
            goal: "switch".into(),
            state,
            reason: reason.into(),
            previous_path: String::new(),
            previous_generation: Some(generation - 1),
            generation: Some(generation),
            failed_generation: None,
            started: 1_700_000_000,
            updated: 1_700_000_030,
        };
        let profile = |generation: u64, booted: Option<u64>, system: &str, last| ProfileStatus {
            name: "system".into(),
            current: Some(format!("/nix/store/{system}")),
            generation: Some(generation),
            booted_generation: booted,
            wanted: String::new(),
            last,
        };
        let web1_system =
            "/nix/store/aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa-nixos-system-web-24.05".to_string();
        let rows = vec![
            HostStatus {
                host: "web1".into(),
                error: None,
                state: Some(HostState {
                    current_system: Some(web1_system.clone()),
                    booted_system: Some(web1_system),
                    ..HostState::default()
                }),
                profiles: vec![profile(
                    12,
                    Some(12),
                    "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa-nixos-system-web-24.05",
                    Some(record(AgentState::Confirmed, "", 12)),
                )],
            },
            HostStatus {
                host: "db1".into(),
                error: None,
                state: Some(HostState {
                    current_system: Some("/nix/store/bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb-nixos-system-db-24.05".into()),
                    booted_system: Some("/nix/store/cccccccccccccccccccccccccccccccc-nixos-system-db-23.11".into()),
                    ..HostState::default()
                }),
                profiles: vec![profile(
                    7,
                    None,
                    "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb-nixos-system-db-24.05",
                    Some(record(AgentState::RolledBack, "health-check-failed", 7)),
                )],
            },
            HostStatus {
                host: "db2".into(),
                error: Some("cannot connect to db2: ssh: connect to host 192.0.2.7 port 22: Connection refused".into()),
                state: None,
                profiles: Vec::new(),
            },
        ];
        insta::assert_snapshot!("status-table", status_text(&rows));
    }
}
