//! Health samples: CPU, memory, disks per mount, load, uptime (sysinfo) and the systemd
//! state of the services the agent's roles rely on.
//!
//! Collection is blocking (procfs reads, `systemctl` runs): call [`Collector::collect`]
//! from `spawn_blocking`. The collector keeps its `System` between samples, which is what
//! makes the CPU percentage mean "since the last sample".

use std::{collections::BTreeMap, path::Path, process::Command};

use chrono::Utc;
use mpanel_protocol::messages::{DiskUsage, MetricsReport, Role, ServiceState, Text};
use sysinfo::{DiskRefreshKind, Disks, System};

/// The systemd units each role relies on.
pub fn services_of(role: Role) -> &'static [&'static str] {
    match role {
        Role::Web => &["nginx"],
        Role::Dns => &["pdns"],
        Role::Mail => &["postfix", "dovecot"],
        Role::Db => &["postgresql"],
        Role::Backup => &[],
    }
}

/// Mounts worth reporting: real filesystems, not the kernel's pseudo ones.
fn is_reported(fs: &str, mount: &Path) -> bool {
    const PSEUDO: &[&str] = &[
        "proc",
        "sysfs",
        "tmpfs",
        "devtmpfs",
        "devpts",
        "cgroup",
        "cgroup2",
        "overlay",
        "squashfs",
        "nsfs",
        "autofs",
        "mqueue",
        "tracefs",
        "debugfs",
        "securityfs",
        "fusectl",
        "configfs",
        "pstore",
        "bpf",
        "hugetlbfs",
        "ramfs",
        "efivarfs",
        "binfmt_misc",
    ];
    !PSEUDO.contains(&fs) && !mount.starts_with("/proc") && !mount.starts_with("/sys")
}

pub struct Collector {
    system: Option<System>,
    services: Vec<&'static str>,
    systemctl: bool,
}

impl Collector {
    pub fn new(roles: &[Role]) -> Collector {
        let mut system = System::new().ok();
        if let Some(s) = system.as_mut() {
            s.refresh_cpu_usage();
        }
        let mut services: Vec<&'static str> = roles
            .iter()
            .flat_map(|r| services_of(*r))
            .copied()
            .collect();
        services.sort_unstable();
        services.dedup();
        Collector {
            system,
            services,
            systemctl: ["/usr/bin/systemctl", "/bin/systemctl"]
                .iter()
                .any(|p| Path::new(p).exists()),
        }
    }

    pub fn collect(&mut self) -> MetricsReport {
        let (cpu, used, total) = match self.system.as_mut() {
            Some(s) => {
                s.refresh_cpu_usage();
                s.refresh_memory();
                (s.global_cpu_usage(), s.used_memory(), s.total_memory())
            }
            None => (0.0, 0, 0),
        };
        let load = System::load_average().ok();
        // Sizes only: a disk's kind and I/O counters (/sys, /proc/diskstats) are not sent.
        let disks =
            Disks::new_with_refreshed_list_specifics(DiskRefreshKind::nothing().with_storage())
                .map(|d| {
                    (&d).into_iter()
                        .filter(|d| {
                            is_reported(&d.file_system().to_string_lossy(), d.mount_point())
                        })
                        .filter_map(|d| {
                            Some(DiskUsage {
                                mount: Text::parse(d.mount_point().to_string_lossy().into_owned())
                                    .ok()?,
                                used_bytes: d.total_space().saturating_sub(d.available_space()),
                                total_bytes: d.total_space(),
                            })
                        })
                        .take(64)
                        .collect()
                })
                .unwrap_or_default();
        let services = self
            .services
            .iter()
            .map(|unit| (unit.to_string(), self.service_state(unit)))
            .collect::<BTreeMap<_, _>>();
        MetricsReport {
            collected_at: Utc::now(),
            cpu_percent: if cpu.is_finite() {
                cpu.clamp(0.0, 100.0)
            } else {
                0.0
            },
            memory_used_bytes: used,
            memory_total_bytes: total,
            load1: load.as_ref().map_or(0.0, |l| l.one),
            load5: load.as_ref().map_or(0.0, |l| l.five),
            load15: load.as_ref().map_or(0.0, |l| l.fifteen),
            uptime_secs: System::uptime().unwrap_or(0),
            disks,
            services,
        }
    }

    /// `systemctl is-active <unit>`; `Unknown` without systemd.
    fn service_state(&self, unit: &str) -> ServiceState {
        if !self.systemctl {
            return ServiceState::Unknown;
        }
        let out = Command::new("systemctl")
            .args(["is-active", "--", unit])
            .output();
        match out {
            Ok(o) => parse_state(String::from_utf8_lossy(&o.stdout).trim()),
            Err(_) => ServiceState::Unknown,
        }
    }
}

fn parse_state(s: &str) -> ServiceState {
    match s {
        "active" => ServiceState::Active,
        "activating" => ServiceState::Activating,
        "deactivating" => ServiceState::Deactivating,
        "reloading" => ServiceState::Reloading,
        "inactive" => ServiceState::Inactive,
        "failed" => ServiceState::Failed,
        _ => ServiceState::Unknown,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn collects_a_sane_sample() {
        let mut c = Collector::new(&[Role::Web, Role::Mail]);
        let m = c.collect();
        assert!(m.memory_total_bytes >= m.memory_used_bytes);
        assert!((0.0..=100.0).contains(&m.cpu_percent));
        assert_eq!(
            m.services.keys().collect::<Vec<_>>(),
            ["dovecot", "nginx", "postfix"]
        );
        // What is sent must also decode.
        let text = mpanel_protocol::messages::AgentMessage::Metrics(m)
            .encode()
            .unwrap();
        mpanel_protocol::messages::AgentMessage::decode(&text).unwrap();
    }

    #[test]
    fn states() {
        assert_eq!(parse_state("active"), ServiceState::Active);
        assert_eq!(parse_state("unknown"), ServiceState::Unknown);
        assert_eq!(parse_state(""), ServiceState::Unknown);
    }
}
