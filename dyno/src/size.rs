//! Dyno sizes: the one table that turns a size name into cgroup limits, used by the agent
//! (which applies them) and the scheduler (which places dynos by their memory).
//!
//! The figures follow Heroku's published dyno types (HEROKU-SPEC §7). Heroku lets a dyno
//! run past its RAM quota (it swaps and logs R14) and kills it at twice the quota (R15);
//! Manifold mirrors that: `memory_quota` is the soft limit that R14 is measured against, and
//! the hard cgroup limit is `memory_limit`, where the kernel's OOM killer acts and the
//! dyno is reported with R15.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

const MIB: u64 = 1024 * 1024;

/// A named dyno size.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DynoSize {
    Eco,
    Basic,
    #[serde(rename = "standard-1x")]
    Standard1X,
    #[serde(rename = "standard-2x")]
    Standard2X,
    PerformanceM,
    PerformanceL,
}

/// Limits a dyno size stands for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// RAM quota: the cgroup's soft limit, above which R14 is logged.
    pub memory_quota: u64,
    /// Hard limit (RAM + swap): the OOM killer acts here and the dyno gets R15.
    pub memory_limit: u64,
    /// Relative CPU weight in cgroup v1 `cpu.shares` units (1024 = one share).
    pub cpu_shares: u64,
    /// Processes plus threads.
    pub pids: i64,
    /// Whether the dyno sleeps when its app sees no web traffic.
    pub sleeps: bool,
    /// Bytes the dyno's writable layer (or a build's directories) may hold. Heroku states no
    /// figure for its ephemeral filesystem; these keep one dyno from filling a host's disk
    /// and grow with the size as its RAM does.
    pub disk: u64,
}

impl DynoSize {
    /// Every size, smallest first, for help texts and tests.
    pub const ALL: [DynoSize; 6] = [
        DynoSize::Eco,
        DynoSize::Basic,
        DynoSize::Standard1X,
        DynoSize::Standard2X,
        DynoSize::PerformanceM,
        DynoSize::PerformanceL,
    ];

    /// The canonical lower-case name, as the CLI and API spell it.
    pub fn name(self) -> &'static str {
        match self {
            DynoSize::Eco => "eco",
            DynoSize::Basic => "basic",
            DynoSize::Standard1X => "standard-1x",
            DynoSize::Standard2X => "standard-2x",
            DynoSize::PerformanceM => "performance-m",
            DynoSize::PerformanceL => "performance-l",
        }
    }

    /// The name as Heroku writes it in log lines (`Scaled to web@2:Standard-1X`).
    pub fn heroku_name(self) -> &'static str {
        match self {
            DynoSize::Eco => "Eco",
            DynoSize::Basic => "Basic",
            DynoSize::Standard1X => "Standard-1X",
            DynoSize::Standard2X => "Standard-2X",
            DynoSize::PerformanceM => "Performance-M",
            DynoSize::PerformanceL => "Performance-L",
        }
    }

    /// The limits for this size (HEROKU-SPEC §7: RAM, "compute" share, max procs+threads).
    pub fn limits(self) -> Limits {
        let (quota_mib, shares, pids, sleeps, disk_gib) = match self {
            DynoSize::Eco => (512, 1024, 256, true, 1),
            DynoSize::Basic => (512, 1024, 256, false, 1),
            DynoSize::Standard1X => (512, 1024, 256, false, 2),
            DynoSize::Standard2X => (1024, 2048, 512, false, 4),
            DynoSize::PerformanceM => (2560, 12 * 1024, 16384, false, 8),
            DynoSize::PerformanceL => (14336, 50 * 1024, 32768, false, 32),
        };
        Limits {
            memory_quota: quota_mib * MIB,
            memory_limit: 2 * quota_mib * MIB,
            cpu_shares: shares,
            pids,
            sleeps,
            disk: disk_gib * 1024 * MIB,
        }
    }
}

impl fmt::Display for DynoSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A size name that is not in the table.
#[derive(Debug, thiserror::Error)]
#[error("unknown dyno size {given:?}: expected one of eco, basic, standard-1x, standard-2x, performance-m, performance-l")]
pub struct UnknownSize {
    pub given: String,
}

impl FromStr for DynoSize {
    type Err = UnknownSize;

    /// Accepts Heroku's spellings case-insensitively (`Standard-1X`, `standard-1x`, `1X`).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let lower = s.to_ascii_lowercase();
        let size = match lower.as_str() {
            "eco" => DynoSize::Eco,
            "basic" => DynoSize::Basic,
            "standard-1x" | "1x" => DynoSize::Standard1X,
            "standard-2x" | "2x" => DynoSize::Standard2X,
            "performance-m" | "pm" => DynoSize::PerformanceM,
            "performance-l" | "pl" => DynoSize::PerformanceL,
            _ => {
                return Err(UnknownSize {
                    given: s.to_string(),
                })
            }
        };
        Ok(size)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_matches_heroku_figures() {
        let l = DynoSize::Standard1X.limits();
        assert_eq!(l.memory_quota, 512 * MIB);
        assert_eq!(l.memory_limit, 1024 * MIB);
        assert_eq!(l.pids, 256);
        assert_eq!(DynoSize::Standard2X.limits().memory_quota, 1024 * MIB);
        assert_eq!(DynoSize::PerformanceM.limits().memory_quota, 2560 * MIB);
        assert_eq!(DynoSize::PerformanceL.limits().memory_quota, 14336 * MIB);
        assert_eq!(DynoSize::PerformanceL.limits().pids, 32768);
        assert!(DynoSize::Eco.limits().sleeps);
        assert_eq!(DynoSize::Eco.limits().disk, 1024 * MIB);
        assert_eq!(DynoSize::Standard2X.limits().disk, 4096 * MIB);
        assert!(!DynoSize::Basic.limits().sleeps);
    }

    #[test]
    fn names_round_trip() {
        for size in DynoSize::ALL {
            assert_eq!(size.name().parse::<DynoSize>().ok(), Some(size));
            assert_eq!(size.heroku_name().parse::<DynoSize>().ok(), Some(size));
            let json = serde_json::to_string(&size).expect("serialise");
            assert_eq!(json, format!("\"{}\"", size.name()));
        }
        assert_eq!(
            "Standard-2X".parse::<DynoSize>().ok(),
            Some(DynoSize::Standard2X)
        );
    }

    #[test]
    fn unknown_size_names_the_choices() {
        let err = "huge".parse::<DynoSize>().expect_err("must fail");
        let msg = err.to_string();
        assert!(
            msg.contains("\"huge\"") && msg.contains("standard-1x"),
            "{msg}"
        );
    }
}
