//! Lab hosts come up, answer over ssh with their own /nix, and go away completely.

use nixpave_lab::testing::Lab;
use nixpave_remote::Transport;

fn argv(words: &[&str]) -> Vec<String> {
    words.iter().map(|w| w.to_string()).collect()
}

#[test]
fn lab_hosts_answer_over_ssh_and_disappear_on_drop() {
    let lab = Lab::up(2).expect("lab up");
    let dir = lab.dir().to_path_buf();
    let netns: Vec<String> = lab
        .hosts()
        .iter()
        .map(|h| h.state().netns.clone())
        .collect();
    for host in lab.hosts() {
        let ssh = host.connect().expect("connect");
        let out = ssh
            .run(
                &argv(&[
                    "sh",
                    "-c",
                    "ip -4 -o addr show eth0; id -u; ls /nix/var/nix/db",
                ]),
                None,
            )
            .expect("run");
        assert!(out.success(), "{}", out.stderr_tail(5));
        let text = out.stdout_str();
        assert!(text.contains(host.address()), "{text}");
        assert!(text.contains("\n0\n"), "root: {text}");
        assert!(
            text.contains("db.sqlite"),
            "private store initialised: {text}"
        );
    }
    drop(lab);
    assert!(!dir.exists(), "lab dir removed");
    let list = std::process::Command::new("ip")
        .args(["netns", "list"])
        .output()
        .expect("ip");
    let list = String::from_utf8_lossy(&list.stdout);
    for ns in netns {
        assert!(!list.contains(&ns), "{ns} still exists");
    }
}

#[test]
fn labs_up_at_once_get_their_own_subnets_and_route_nowhere_else() {
    let (a, b) = std::thread::scope(|s| {
        let a = s.spawn(|| Lab::up(1).expect("lab a"));
        let b = s.spawn(|| Lab::up(1).expect("lab b"));
        (a.join().expect("a"), b.join().expect("b"))
    });
    assert_ne!(a.state().subnet, b.state().subnet);
    assert_ne!(a.state().bridge, b.state().bridge);
    let route = |lab: &Lab, to: &str| {
        lab.host(0)
            .run_inside(&["ip", "route", "get", to])
            .expect("nsenter")
            .status
            .success()
    };
    // Each host reaches its own bridge (this machine) and nothing else: no default route,
    // no way into the other lab.
    assert!(route(&a, &format!("10.77.{}.1", a.state().subnet)));
    assert!(!route(&a, b.host(0).address()));
    assert!(!route(&b, a.host(0).address()));
    assert!(!route(&a, "1.1.1.1"));
    let routes = a.host(0).run_inside(&["ip", "route"]).expect("ip route");
    let routes = String::from_utf8_lossy(&routes.stdout);
    assert_eq!(routes.lines().count(), 1, "{routes}");
    assert!(!routes.contains("default"));
}
