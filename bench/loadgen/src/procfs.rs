//! Reading a process's CPU time, resident memory and threads from `/proc` (Linux only): the
//! server's cost during a run (`--server-pid`) and the load generator's own.

use std::fs;
use std::sync::OnceLock;

/// One reading of a process.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Sample {
    /// utime + stime, in seconds (all threads).
    pub cpu_secs: f64,
    /// VmRSS, kB.
    pub rss_kb: u64,
    /// VmHWM (peak resident since start, or since the peak was last reset), kB.
    pub hwm_kb: u64,
    /// Threads of the process.
    pub threads: u64,
}

/// Clock ticks per second (`getconf CLK_TCK`; 100 when that is not available).
fn clk_tck() -> f64 {
    static TCK: OnceLock<f64> = OnceLock::new();
    *TCK.get_or_init(|| {
        std::process::Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .and_then(|s| s.trim().parse::<f64>().ok())
            .filter(|t| *t > 0.0)
            .unwrap_or(100.0)
    })
}

/// utime + stime in ticks from the text of `/proc/PID/stat`.
fn parse_stat_ticks(stat: &str) -> Option<u64> {
    // The command name (field 2) may hold spaces and parentheses: fields count from the
    // last ')'. After it: state (3), ppid (4), ... utime (14), stime (15).
    let after = stat.get(stat.rfind(')')? + 1..)?;
    let mut fields = after.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

/// The state letter (field 3) of `/proc/PID/stat`.
fn state(stat: &str) -> Option<char> {
    stat.get(stat.rfind(')')? + 1..)?
        .split_whitespace()
        .next()?
        .chars()
        .next()
}

/// A `Key:   123 kB` line of `/proc/PID/status`.
fn status_kb(status: &str, key: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

/// Reads `/proc/<pid>` (`"self"` for this process).
pub fn sample(pid: &str) -> Result<Sample, String> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat"))
        .map_err(|e| format!("/proc/{pid}/stat: {e}"))?;
    let status = fs::read_to_string(format!("/proc/{pid}/status"))
        .map_err(|e| format!("/proc/{pid}/status: {e}"))?;
    let ticks =
        parse_stat_ticks(&stat).ok_or_else(|| format!("/proc/{pid}/stat: unexpected format"))?;
    if state(&stat) == Some('Z') {
        return Err(format!("process {pid} has exited (zombie)"));
    }
    Ok(Sample {
        cpu_secs: ticks as f64 / clk_tck(),
        rss_kb: status_kb(&status, "VmRSS").unwrap_or(0),
        hwm_kb: status_kb(&status, "VmHWM").unwrap_or(0),
        threads: status_kb(&status, "Threads").unwrap_or(0),
    })
}

/// Resident memory only (cheap enough to poll).
pub fn rss_kb(pid: &str) -> Option<u64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status_kb(&status, "VmRSS")
}

/// The soft open-files limit of a process.
pub fn open_files_limit(pid: &str) -> Option<u64> {
    let limits = fs::read_to_string(format!("/proc/{pid}/limits")).ok()?;
    limits
        .lines()
        .find_map(|l| l.strip_prefix("Max open files"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

/// A counter of `/proc/net/netstat` (`TcpExt: <names>` then `TcpExt: <values>`).
fn netstat_counter(netstat: &str, group: &str, name: &str) -> Option<u64> {
    let mut rows = netstat.lines().filter(|l| l.starts_with(group));
    let names = rows.next()?;
    let values = rows.next()?;
    let at = names.split_whitespace().position(|n| n == name)?;
    values.split_whitespace().nth(at)?.parse().ok()
}

/// Connections the kernel dropped because a listen queue was full, system-wide
/// (`TcpExt: ListenOverflows`): non-zero during a run means the server did not accept
/// fast enough and clients waited for SYN retransmits (1 s, then 3 s...).
pub fn listen_overflows() -> Option<u64> {
    let netstat = fs::read_to_string("/proc/net/netstat").ok()?;
    netstat_counter(&netstat, "TcpExt:", "ListenOverflows")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_with_a_hostile_command_name() {
        let stat = "4242 (a) b (c) S 1 4242 4242 0 -1 4194560 1234 0 0 0 250 75 0 0 20 0 9 0 1000 \
                    123456789 2048 18446744073709551615";
        assert_eq!(parse_stat_ticks(stat), Some(325));
        assert_eq!(state(stat), Some('S'));
        assert_eq!(parse_stat_ticks("garbage"), None);
    }

    #[test]
    fn status_lines() {
        let status = "Name:\tswitchyard\nVmHWM:\t   20480 kB\nVmRSS:\t   10240 kB\n";
        assert_eq!(status_kb(status, "VmRSS"), Some(10240));
        assert_eq!(status_kb(status, "VmHWM"), Some(20480));
        assert_eq!(status_kb(status, "VmSwap"), None);
    }

    #[test]
    fn netstat() {
        let text = "TcpExt: SyncookiesSent ListenOverflows ListenDrops\nTcpExt: 0 32 33\n\
                    IpExt: InNoRoutes\nIpExt: 0\n";
        assert_eq!(
            netstat_counter(text, "TcpExt:", "ListenOverflows"),
            Some(32)
        );
        assert_eq!(netstat_counter(text, "TcpExt:", "Nope"), None);
    }

    #[test]
    fn this_process() {
        let s = sample("self").unwrap();
        assert!(s.rss_kb > 0 && s.hwm_kb >= s.rss_kb);
        assert!(open_files_limit("self").is_some());
    }
}
