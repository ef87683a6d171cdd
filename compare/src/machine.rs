//! A description of the machine a run happened on: CPU, cores, memory,
//! kernel, the disk under the benchmark directory, and the load. Every field
//! falls back to `"unknown"` when its source is missing; nothing here fails.

use std::path::Path;
use std::process::Command;

use serde::{Deserialize, Serialize};

/// Where and on what a run happened.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Machine {
    /// CPU model (`lscpu`'s "Model name", else `/proc/cpuinfo`).
    pub cpu_model: String,
    /// Logical CPUs available to this process.
    pub cores: usize,
    /// Total memory, bytes (`/proc/meminfo` MemTotal).
    pub memory_bytes: u64,
    /// Kernel release.
    pub kernel: String,
    /// Hypervisor, if any (`lscpu`'s "Hypervisor vendor").
    pub hypervisor: String,
    /// The benchmark directory.
    pub bench_dir: String,
    /// Its file system: device and type (`findmnt`).
    pub bench_fs: String,
    /// The block device: model, rotational flag, size (`lsblk`).
    pub bench_disk: String,
    /// `/proc/loadavg` when the run started.
    pub load_at_start: String,
}

const UNKNOWN: &str = "unknown";

impl Machine {
    /// Describes this machine, with `bench_dir` as the benchmark directory.
    pub fn describe(bench_dir: &Path) -> Machine {
        let lscpu = command_output("lscpu", &[]).unwrap_or_default();
        let cpu_model = field(&lscpu, "Model name")
            .or_else(|| {
                let info = std::fs::read_to_string("/proc/cpuinfo").ok()?;
                field(&info, "model name")
            })
            .unwrap_or_else(|| UNKNOWN.into());
        let memory_bytes = std::fs::read_to_string("/proc/meminfo")
            .ok()
            .and_then(|info| field(&info, "MemTotal"))
            .and_then(|kib| kib.trim_end_matches("kB").trim().parse::<u64>().ok())
            .map_or(0, |kib| kib * 1024);
        let dir = bench_dir.display().to_string();
        let fs = command_output("findmnt", &["-n", "-o", "SOURCE,FSTYPE", "--target", &dir]);
        let device = fs
            .as_deref()
            .and_then(|line| line.split_whitespace().next())
            .map(str::to_owned);
        let disk = device
            .as_deref()
            .and_then(|dev| command_output("lsblk", &["-dn", "-o", "NAME,MODEL,ROTA,SIZE", dev]))
            .map(|line| line.split_whitespace().collect::<Vec<_>>().join(" "));
        Machine {
            cpu_model,
            cores: std::thread::available_parallelism().map_or(0, |n| n.get()),
            memory_bytes,
            kernel: read_trimmed("/proc/sys/kernel/osrelease"),
            hypervisor: field(&lscpu, "Hypervisor vendor").unwrap_or_else(|| "none".into()),
            bench_dir: dir,
            bench_fs: fs.unwrap_or_else(|| UNKNOWN.into()),
            bench_disk: disk
                .map(|d| format!("{d} (NAME MODEL ROTA SIZE)"))
                .unwrap_or_else(|| UNKNOWN.into()),
            load_at_start: load_average(),
        }
    }

    /// Whether the benchmark directory is on a memory file system.
    pub fn bench_dir_in_memory(&self) -> bool {
        ["tmpfs", "ramfs"]
            .iter()
            .any(|fs| self.bench_fs.split_whitespace().any(|word| word == *fs))
    }

    /// One line for reports.
    pub fn summary(&self) -> String {
        format!(
            "{} ({} cores, {:.1} GiB RAM, {} hypervisor), Linux {}; bench dir {} on {} [{}]",
            self.cpu_model,
            self.cores,
            self.memory_bytes as f64 / (1u64 << 30) as f64,
            self.hypervisor,
            self.kernel,
            self.bench_dir,
            self.bench_fs,
            self.bench_disk
        )
    }
}

/// `/proc/loadavg`, trimmed.
pub fn load_average() -> String {
    read_trimmed("/proc/loadavg")
}

fn read_trimmed(path: &str) -> String {
    std::fs::read_to_string(path)
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|_| UNKNOWN.into())
}

/// The trimmed stdout of a successful command, or `None`.
fn command_output(program: &str, args: &[&str]) -> Option<String> {
    let output = Command::new(program).args(args).output().ok()?;
    if !output.status.success() {
        return None;
    }
    let text = String::from_utf8_lossy(&output.stdout).trim().to_owned();
    (!text.is_empty()).then_some(text)
}

/// The value of the first `name: value` line of `text`.
fn field(text: &str, name: &str) -> Option<String> {
    text.lines().find_map(|line| {
        let (key, value) = line.split_once(':')?;
        (key.trim() == name).then(|| value.trim().to_owned())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn field_reads_colon_separated_lines() {
        let text = "Vendor ID:  AuthenticAMD\nModel name:   AMD EPYC\nMemTotal: 24684084 kB\n";
        assert_eq!(field(text, "Model name").as_deref(), Some("AMD EPYC"));
        assert_eq!(field(text, "MemTotal").as_deref(), Some("24684084 kB"));
        assert_eq!(field(text, "Model"), None);
    }

    #[test]
    fn memory_file_systems_are_recognised() {
        let mut machine = Machine::describe(Path::new("."));
        machine.bench_fs = "tmpfs tmpfs".into();
        assert!(machine.bench_dir_in_memory());
        machine.bench_fs = "/dev/vda ext4".into();
        assert!(!machine.bench_dir_in_memory());
    }
}
