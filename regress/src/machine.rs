//! What machine a measurement ran on: CPU model, cores, memory, kernel, a
//! short machine id, and the CPU features that steer runtime dispatch.
//!
//! Everything is read from `lscpu` (when installed) and `/proc`; a value
//! that cannot be read is `"unknown"` (or 0), never an error: describing the
//! machine must not stop a benchmark run.

use std::process::Command;

/// Placeholder for a value that could not be read.
pub const UNKNOWN: &str = "unknown";
/// Characters of `/etc/machine-id` kept in the short machine id.
const SHORT_ID_CHARS: usize = 8;

/// The machine a measurement ran on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Machine {
    /// CPU model name (`lscpu`'s "Model name").
    pub model: String,
    /// Logical CPUs this process may use.
    pub cpus: usize,
    /// Physical memory, bytes (0 when unknown).
    pub memory_bytes: u64,
    /// Kernel release (`uname -r`).
    pub kernel: String,
    /// A short, file-name-safe machine id: the start of `/etc/machine-id`, or
    /// the host name.
    pub id: String,
}

impl Machine {
    /// Describes this machine.
    pub fn detect() -> Machine {
        Machine {
            model: cpu_model(),
            cpus: std::thread::available_parallelism().map_or(0, |n| n.get()),
            memory_bytes: memory_bytes(),
            kernel: read_trimmed("/proc/sys/kernel/osrelease"),
            id: short_id(),
        }
    }

    /// One line: `model, N CPUs, M GiB, kernel K`.
    pub fn describe(&self) -> String {
        format!(
            "{}, {} CPUs, {:.1} GiB, kernel {}",
            self.model,
            self.cpus,
            self.memory_bytes as f64 / f64::from(1u32 << 30),
            self.kernel
        )
    }
}

/// The CPU features this process sees, space-separated, among those that
/// change which code runs (crc32fast, zstd, glibc string functions, the
/// merge kernels). Under valgrind these are valgrind's virtual CPU's.
pub fn cpu_features() -> String {
    #[cfg(target_arch = "x86_64")]
    {
        let mut found = Vec::new();
        macro_rules! check {
            ($($feature:tt),*) => {
                $(if std::arch::is_x86_feature_detected!($feature) {
                    found.push($feature);
                })*
            };
        }
        check!(
            "sse4.1",
            "sse4.2",
            "pclmulqdq",
            "popcnt",
            "avx",
            "avx2",
            "bmi1",
            "bmi2",
            "fma",
            "avx512f",
            "avx512bw"
        );
        found.join(" ")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        std::env::consts::ARCH.to_string()
    }
}

fn read_trimmed(path: &str) -> String {
    std::fs::read_to_string(path)
        .map(|text| text.trim().to_string())
        .ok()
        .filter(|text| !text.is_empty())
        .unwrap_or_else(|| UNKNOWN.to_string())
}

/// The value after `key:` on the first line of `text` that starts with `key`.
fn field(text: &str, key: &str) -> Option<String> {
    text.lines()
        .filter_map(|line| line.split_once(':'))
        .find(|(name, _)| name.trim().eq_ignore_ascii_case(key))
        .map(|(_, value)| value.trim().to_string())
        .filter(|value| !value.is_empty())
}

fn cpu_model() -> String {
    let from_lscpu = Command::new("lscpu")
        .env("LC_ALL", "C")
        .output()
        .ok()
        .filter(|output| output.status.success())
        .and_then(|output| field(&String::from_utf8_lossy(&output.stdout), "Model name"));
    from_lscpu
        .or_else(|| {
            let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").ok()?;
            field(&cpuinfo, "model name")
        })
        .unwrap_or_else(|| UNKNOWN.to_string())
}

fn memory_bytes() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|text| field(&text, "MemTotal"))
        .and_then(|value| value.split_whitespace().next()?.parse::<u64>().ok())
        .map_or(0, |kib| kib * 1024)
}

fn short_id() -> String {
    let id = std::fs::read_to_string("/etc/machine-id")
        .ok()
        .map(|id| id.trim().chars().take(SHORT_ID_CHARS).collect::<String>())
        .filter(|id| !id.is_empty())
        .unwrap_or_else(|| read_trimmed("/proc/sys/kernel/hostname"));
    sanitize(&id)
}

/// Keeps ASCII letters, digits, `-` and `_`; anything else becomes `-`.
pub fn sanitize(text: &str) -> String {
    text.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '-'
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn field_finds_the_value_after_the_colon() {
        let text = "Architecture:  x86_64\nModel name:    Some CPU @ 2.0GHz\n";
        assert_eq!(
            field(text, "Model name").as_deref(),
            Some("Some CPU @ 2.0GHz")
        );
        assert_eq!(field(text, "Missing"), None);
        assert_eq!(
            field("MemTotal:       1024 kB", "MemTotal").as_deref(),
            Some("1024 kB")
        );
    }

    #[test]
    fn sanitize_makes_a_file_name() {
        assert_eq!(sanitize("ab/c d.e_f-1"), "ab-c-d-e_f-1");
    }

    #[test]
    fn detect_fills_every_field() {
        let machine = Machine::detect();
        assert!(!machine.model.is_empty() && !machine.kernel.is_empty() && !machine.id.is_empty());
        assert!(machine.cpus >= 1);
        assert!(machine.describe().contains("CPUs"));
    }
}
