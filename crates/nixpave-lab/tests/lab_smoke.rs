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
