//! What the process costs: resident memory from `/proc/self/status` (Linux; `None` elsewhere).

/// Resident set size now (`VmRSS`), in bytes.
pub fn rss_bytes() -> Option<u64> {
    status_kib("VmRSS:").map(|kib| kib.saturating_mul(1024))
}

/// Peak resident set size (`VmHWM`), in bytes.
pub fn rss_bytes_peak() -> Option<u64> {
    status_kib("VmHWM:").map(|kib| kib.saturating_mul(1024))
}

fn status_kib(field: &str) -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    parse_kib(&status, field)
}

/// The value of `field` (e.g. `VmRSS:`) in a `/proc/*/status` text, in KiB.
pub fn parse_kib(status: &str, field: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with(field))?;
    line[field.len()..]
        .split_whitespace()
        .next()?
        .parse::<u64>()
        .ok()
}

/// The 1-minute load average (`/proc/loadavg`): other work on the machine skews a benchmark.
pub fn load_average() -> Option<f64> {
    let text = std::fs::read_to_string("/proc/loadavg").ok()?;
    text.split_whitespace().next()?.parse().ok()
}

/// Logical CPUs available to this process.
pub fn cpus() -> usize {
    std::thread::available_parallelism()
        .map(std::num::NonZeroUsize::get)
        .unwrap_or(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rss_is_parsed_from_a_status_text() {
        let status = "Name:\ttally-bench\nVmHWM:\t  20480 kB\nVmRSS:\t   10240 kB\n";
        assert_eq!(parse_kib(status, "VmRSS:"), Some(10_240));
        assert_eq!(parse_kib(status, "VmHWM:"), Some(20_480));
        assert_eq!(parse_kib(status, "VmSwap:"), None);
    }
}
