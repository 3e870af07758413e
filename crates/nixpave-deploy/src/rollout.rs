//! Rollout planning (pure): hosts + canary/batch settings → waves; and the stop rules between them.

use serde::{Deserialize, Serialize};

/// Size of a rolling wave.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Batch {
    /// A fixed number of hosts per wave.
    Count(usize),
    /// A percentage of all hosts per wave (rounded up, at least one host).
    Percent(u8),
}

impl std::str::FromStr for Batch {
    type Err = String;
    fn from_str(s: &str) -> Result<Batch, String> {
        let bad = || format!("batch {s:?}: expected a number of hosts (5) or a percentage (25%)");
        match s.strip_suffix('%') {
            Some(p) => match p.trim().parse::<u8>() {
                Ok(v) if (1..=100).contains(&v) => Ok(Batch::Percent(v)),
                _ => Err(bad()),
            },
            None => match s.trim().parse::<usize>() {
                Ok(v) if v > 0 => Ok(Batch::Count(v)),
                _ => Err(bad()),
            },
        }
    }
}

impl<'de> Deserialize<'de> for Batch {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Batch, D::Error> {
        let v = serde_json::Value::deserialize(d)?;
        let text = match v {
            serde_json::Value::Number(n) => n.to_string(),
            serde_json::Value::String(s) => s,
            other => return Err(serde::de::Error::custom(format!("bad batch {other}"))),
        };
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// Rollout settings (inventory `rollout` attribute or command line).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RolloutSettings {
    /// Hosts deployed at the same time (default 10).
    pub parallel: Option<usize>,
    /// Rolling wave size; `None` = one wave with everything.
    pub batch: Option<Batch>,
    /// Stop starting new hosts after this many failures.
    pub max_failures: Option<usize>,
    /// Deploy this many hosts first; continue only if they all succeed.
    pub canary: Option<usize>,
}

impl RolloutSettings {
    /// `self` with every setting `over` has replacing it.
    pub fn overridden_by(&self, over: &RolloutSettings) -> RolloutSettings {
        RolloutSettings {
            parallel: over.parallel.or(self.parallel),
            batch: over.batch.or(self.batch),
            max_failures: over.max_failures.or(self.max_failures),
            canary: over.canary.or(self.canary),
        }
    }

    /// Hosts deployed at once: `parallel`, else [`default_parallelism`].
    pub fn parallelism(&self) -> usize {
        self.parallel.unwrap_or_else(default_parallelism).max(1)
    }
}

/// The default number of hosts deployed at once, from the machine: 16 per core, between 10 and 64. A host's
/// deploy mostly waits on the network and on the target (the deployer's share is an ssh master, an ssh
/// client or a `nix copy` at a time), so it is many times the core count; the cap keeps processes and file
/// descriptors bounded.
pub fn default_parallelism() -> usize {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    (cores * 16).clamp(10, 64)
}

/// One wave of the rollout: indexes into the host list.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Wave {
    /// True for the canary wave (the rollout stops if any of it fails).
    pub canary: bool,
    /// Host indexes, in order.
    pub hosts: Vec<usize>,
}

/// Splits `host_count` hosts into waves: the canary wave first, then batches of the rest.
pub fn plan_waves(host_count: usize, settings: &RolloutSettings) -> Vec<Wave> {
    let mut waves = Vec::new();
    let mut next = 0;
    if let Some(c) = settings.canary.filter(|c| *c > 0) {
        let end = c.min(host_count);
        waves.push(Wave {
            canary: true,
            hosts: (0..end).collect(),
        });
        next = end;
    }
    let size = match settings.batch {
        None => host_count.max(1),
        Some(Batch::Count(n)) => n.max(1),
        Some(Batch::Percent(p)) => (host_count * p as usize).div_ceil(100).max(1),
    };
    while next < host_count {
        let end = (next + size).min(host_count);
        waves.push(Wave {
            canary: false,
            hosts: (next..end).collect(),
        });
        next = end;
    }
    waves
}

/// Whether the rollout may start another host, given the failures so far.
pub fn may_start(failures: usize, settings: &RolloutSettings) -> bool {
    settings.max_failures.is_none_or(|max| failures < max)
}

/// Whether the rollout continues after a finished wave.
pub fn continue_after(
    wave: &Wave,
    wave_failures: usize,
    total_failures: usize,
    settings: &RolloutSettings,
) -> bool {
    !(wave.canary && wave_failures > 0) && may_start(total_failures, settings)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(batch: Option<&str>, canary: Option<usize>) -> RolloutSettings {
        RolloutSettings {
            batch: batch.map(|b| b.parse().expect("batch")),
            canary,
            ..Default::default()
        }
    }

    #[test]
    fn one_wave_without_batch() {
        insta::assert_json_snapshot!(plan_waves(3, &s(None, None)), @r#"
        [
          {
            "canary": false,
            "hosts": [
              0,
              1,
              2
            ]
          }
        ]
        "#);
    }

    #[test]
    fn canary_then_batches() {
        let waves = plan_waves(7, &s(Some("2"), Some(1)));
        let hosts: Vec<Vec<usize>> = waves.iter().map(|w| w.hosts.clone()).collect();
        assert_eq!(hosts, vec![vec![0], vec![1, 2], vec![3, 4], vec![5, 6]]);
        assert!(waves[0].canary && !waves[1].canary);
    }

    #[test]
    fn percentage_rounds_up() {
        let waves = plan_waves(10, &s(Some("25%"), None));
        let sizes: Vec<usize> = waves.iter().map(|w| w.hosts.len()).collect();
        assert_eq!(sizes, vec![3, 3, 3, 1]);
    }

    #[test]
    fn stop_rules() {
        let st = RolloutSettings {
            max_failures: Some(1),
            ..Default::default()
        };
        assert!(may_start(0, &st));
        assert!(!may_start(1, &st));
        let canary = Wave {
            canary: true,
            hosts: vec![0],
        };
        assert!(!continue_after(&canary, 1, 1, &RolloutSettings::default()));
        assert!(continue_after(&canary, 0, 0, &RolloutSettings::default()));
        assert!("0".parse::<Batch>().is_err() && "150%".parse::<Batch>().is_err());
    }

    #[test]
    fn batch_from_json_number_or_string() {
        let r: RolloutSettings =
            serde_json::from_str(r#"{"batch": 3, "maxFailures": 2}"#).expect("valid");
        assert_eq!(r.batch, Some(Batch::Count(3)));
        let r: RolloutSettings = serde_json::from_str(r#"{"batch": "50%"}"#).expect("valid");
        assert_eq!(r.batch, Some(Batch::Percent(50)));
    }
}
