//! What the process costs: resident memory from `/proc/self/status`, CPU time from
//! `/proc/self/stat` and the machine's from `/proc/stat` (Linux; `None` elsewhere).

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

/// Clock ticks per second of `/proc` CPU times (`USER_HZ`, 100 on every Linux architecture
/// tally runs on; reading `sysconf` would need `libc`).
const USER_HZ: f64 = 100.0;

/// CPU time this process has used so far (user + system, all threads), in seconds.
pub fn process_cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    parse_process_cpu_ticks(&stat).map(ticks_to_seconds)
}

/// `utime + stime` (clock ticks) of a `/proc/*/stat` line.
pub fn parse_process_cpu_ticks(stat: &str) -> Option<u64> {
    // The command name is in parentheses and may hold spaces: fields count from the last `)`.
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After the name: state (field 3) is fields[0], utime (14) fields[11], stime (15) fields[12].
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime.saturating_add(stime))
}

/// The machine's CPU time so far, all CPUs together: `(busy, total)` in clock ticks.
pub fn machine_cpu_ticks() -> Option<(u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    parse_machine_cpu_ticks(&stat)
}

/// `(busy, total)` ticks of the `cpu` line of a `/proc/stat` text (idle and iowait are not busy;
/// guest time is already counted in user).
pub fn parse_machine_cpu_ticks(stat: &str) -> Option<(u64, u64)> {
    let line = stat.lines().find(|l| l.starts_with("cpu "))?;
    let ticks: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .take(8)
        .map(|t| t.parse().ok())
        .collect::<Option<_>>()?;
    let total: u64 = ticks.iter().sum();
    let idle = ticks.get(3)?.saturating_add(*ticks.get(4)?);
    Some((total.saturating_sub(idle), total))
}

fn ticks_to_seconds(ticks: u64) -> f64 {
    // Precision loss above 2^53 ticks is irrelevant.
    #[allow(clippy::cast_precision_loss)]
    let t = ticks as f64;
    t / USER_HZ
}

/// CPU use between two [`CpuSample`]s.
#[derive(Clone, Copy, Debug, Default, PartialEq, serde::Serialize)]
pub struct CpuFigures {
    /// Logical CPUs of the machine.
    pub cpus: usize,
    /// CPU seconds this process (the load generator, and the engine when in process) used.
    pub process_cpu_s: f64,
    /// `process_cpu_s` divided by the elapsed time: CPUs' worth this process kept busy.
    pub process_cpus_busy: f64,
    /// Share of all the machine's CPUs that were busy (every process), 0 to 1.
    pub machine_busy_share: Option<f64>,
}

/// A point in time to measure CPU use from.
#[derive(Clone, Copy, Debug)]
pub struct CpuSample {
    at: std::time::Instant,
    process_s: Option<f64>,
    machine: Option<(u64, u64)>,
}

impl CpuSample {
    /// Now.
    pub fn now() -> CpuSample {
        CpuSample {
            at: std::time::Instant::now(),
            process_s: process_cpu_seconds(),
            machine: machine_cpu_ticks(),
        }
    }

    /// CPU use from `self` to now (`None` where `/proc` is not readable).
    pub fn since(&self) -> Option<CpuFigures> {
        let end = CpuSample::now();
        let elapsed = end.at.duration_since(self.at).as_secs_f64();
        let process_cpu_s = (end.process_s? - self.process_s?).max(0.0);
        let machine_busy_share = match (self.machine, end.machine) {
            (Some((b0, t0)), Some((b1, t1))) if t1 > t0 => {
                Some(ticks_to_seconds(b1.saturating_sub(b0)) / ticks_to_seconds(t1 - t0))
            }
            _ => None,
        };
        Some(CpuFigures {
            cpus: cpus(),
            process_cpu_s,
            process_cpus_busy: if elapsed > 0.0 {
                process_cpu_s / elapsed
            } else {
                0.0
            },
            machine_busy_share,
        })
    }
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

    #[test]
    fn cpu_ticks_are_parsed_from_stat_texts() {
        let stat = "4242 (tally bench) S 1 4242 4242 0 -1 4194304 100 0 0 0 250 50 0 0 20 0 9 0";
        assert_eq!(parse_process_cpu_ticks(stat), Some(300));
        let machine = "cpu  100 5 50 800 40 3 2 0 0 0\ncpu0 50 2 25 400 20 1 1 0 0 0\n";
        assert_eq!(parse_machine_cpu_ticks(machine), Some((160, 1_000)));
        assert_eq!(parse_machine_cpu_ticks("intr 1"), None);
    }
}
