//! What every result file says about where it was measured, and how result
//! files are written.

use std::path::Path;

use serde::Serialize;

/// Said in every result: the numbers are only comparable with that in mind.
pub const SHARED_CORES_NOTE: &str =
    "load generator and server share the same cores over loopback: \
     every figure includes the load generator's CPU use; compare servers with each other, not with \
     numbers from a separate client machine";

#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct Machine {
    pub cores: usize,
    pub cpu_model: String,
    pub mem_total_bytes: u64,
    pub kernel: String,
    pub open_files_limit: Option<u64>,
    pub note: String,
}

impl Machine {
    pub fn read() -> Machine {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu_model = cpuinfo
            .lines()
            .find_map(|l| l.strip_prefix("model name"))
            .and_then(|rest| rest.split_once(':'))
            .map(|(_, model)| model.trim().to_string())
            .unwrap_or_default();
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        Machine {
            cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
            cpu_model,
            mem_total_bytes: crate::procfs::parse_status_kib(&meminfo, "MemTotal:")
                .map_or(0, |kib| kib * 1024),
            kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
                .map(|s| s.trim().to_string())
                .unwrap_or_default(),
            open_files_limit: crate::sys::open_files_soft_limit().ok(),
            note: SHARED_CORES_NOTE.to_string(),
        }
    }
}

/// Writes via a temporary file and rename, so a script polling for the file
/// never reads half of it.
pub fn write_json<T: Serialize>(path: &Path, report: &T) -> Result<(), String> {
    let text = serde_json::to_string_pretty(report).map_err(|e| e.to_string())?;
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    std::fs::write(&tmp, text + "\n")
        .and_then(|()| std::fs::rename(&tmp, path))
        .map_err(|e| format!("{}: {e}", path.display()))
}
