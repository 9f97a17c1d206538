//! This machine: what it offers (CPUs, memory) and its name.

/// CPU millicores and memory MiB of this machine (1 CPU and 1 GiB where they cannot be read).
pub fn detect_resources() -> (i64, i64) {
    let cpus = std::thread::available_parallelism().map(|n| n.get() as i64).unwrap_or(1);
    let memory_mib = total_memory_mib().and_then(|mib| i64::try_from(mib).ok()).unwrap_or(1024);
    (cpus * 1000, memory_mib)
}

/// This machine's memory in MiB (`MemTotal` in `/proc/meminfo`), if it can be read. The
/// one reader of `/proc/meminfo`: the API's `local` provider asks it too.
pub fn total_memory_mib() -> Option<u64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    mem_total_kib(&meminfo).map(|kib| kib / 1024)
}

/// `MemTotal`, in KiB, from the text of `/proc/meminfo`.
fn mem_total_kib(meminfo: &str) -> Option<u64> {
    meminfo.lines().find_map(|line| line.strip_prefix("MemTotal:"))?.split_whitespace().next()?.parse().ok()
}

/// The host name, from `/etc/hostname` (`worker` if there is none).
pub fn host_name() -> String {
    std::fs::read_to_string("/etc/hostname").map(|h| h.trim().to_owned()).unwrap_or_else(|_| "worker".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mem_total_is_read_in_kib() {
        let meminfo = "MemTotal:       16318784 kB\nMemFree:         1048576 kB\n";
        assert_eq!(mem_total_kib(meminfo), Some(16_318_784));
        assert_eq!(mem_total_kib("MemFree: 1 kB\n"), None);
        assert_eq!(mem_total_kib("MemTotal: lots\n"), None);
        assert!(total_memory_mib().is_some_and(|mib| mib > 0), "this machine has a /proc/meminfo");
    }
}
