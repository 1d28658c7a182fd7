//! Benchmark building blocks: statistics over rounds, parsers for the outputs of
//! `redis-benchmark --csv` and `iperf3 --json`, and the load generators run by the `loadgen`
//! binary (ping-pong latency, connection rate, echo server, idle connections).
#![forbid(unsafe_code)]

pub mod load;

use anyhow::{anyhow, bail, Context};
use serde::{Deserialize, Serialize};

/// Median, minimum and maximum of one metric over the rounds of a run.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    /// The middle sample, or the mean of the two middle ones for an even count.
    pub median: f64,
    /// The smallest sample.
    pub min: f64,
    /// The largest sample.
    pub max: f64,
    /// How many samples (rounds) it summarizes; at least 1.
    pub n: usize,
}

/// Summarizes samples; `None` when there are none (or any is not a number).
pub fn summarize(samples: &[f64]) -> Option<Summary> {
    if samples.is_empty() || samples.iter().any(|x| !x.is_finite()) {
        return None;
    }
    let mut v = samples.to_vec();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    let median = if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    };
    Some(Summary {
        median,
        min: v[0],
        max: v[n - 1],
        n,
    })
}

/// `a / b`, or `None` when `b` is zero.
pub fn ratio(a: f64, b: f64) -> Option<f64> {
    (b != 0.0 && a.is_finite() && b.is_finite()).then(|| a / b)
}

/// Requests per second of each test in `redis-benchmark --csv` output, e.g. `[("SET", 81300.8)]`.
pub fn parse_redis_benchmark_csv(out: &str) -> anyhow::Result<Vec<(String, f64)>> {
    let mut rows = Vec::new();
    for line in out.lines() {
        let cols: Vec<&str> = line
            .split(',')
            .map(|c| c.trim().trim_matches('"'))
            .collect();
        if cols.len() < 2 || cols[0] == "test" {
            continue;
        }
        let rps: f64 = cols[1]
            .parse()
            .with_context(|| format!("redis-benchmark: bad rps in {line:?}"))?;
        rows.push((cols[0].to_string(), rps));
    }
    if rows.is_empty() {
        bail!("redis-benchmark printed no results: {out:?}");
    }
    Ok(rows)
}

/// What one `iperf3 --json` client run measured.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Iperf {
    /// Throughput the server received, in bits per second.
    pub bits_per_second: f64,
    /// Bytes the server received over the run.
    pub bytes: f64,
}

/// Reads `end.sum_received` of `iperf3 --json` output (what the server really got).
pub fn parse_iperf3_json(out: &str) -> anyhow::Result<Iperf> {
    let v: serde_json::Value = serde_json::from_str(out).context("iperf3: output is not JSON")?;
    if let Some(e) = v["error"].as_str() {
        bail!("iperf3: {e}");
    }
    let sum = &v["end"]["sum_received"];
    let get = |k: &str| {
        sum[k]
            .as_f64()
            .ok_or_else(|| anyhow!("iperf3: no end.sum_received.{k}"))
    };
    Ok(Iperf {
        bits_per_second: get("bits_per_second")?,
        bytes: get("bytes")?,
    })
}

/// Per-round differences `a[i] - b[i]` (e.g. a target's latency minus direct's in the same
/// round); `None` unless both have the same, non-zero number of rounds.
pub fn differences(a: &[f64], b: &[f64]) -> Option<Vec<f64>> {
    (!a.is_empty() && a.len() == b.len()).then(|| a.iter().zip(b).map(|(x, y)| x - y).collect())
}

/// Proxy CPU seconds per GB (10^9 bytes) forwarded; `None` when nothing was forwarded.
pub fn cpu_seconds_per_gb(cpu_seconds: f64, bytes: f64) -> Option<f64> {
    (bytes > 0.0 && cpu_seconds >= 0.0).then(|| cpu_seconds / (bytes / 1e9))
}

/// RSS growth per connection in KiB; `None` for no connections.
pub fn per_connection_kib(
    rss_before_kib: f64,
    rss_after_kib: f64,
    connections: usize,
) -> Option<f64> {
    (connections > 0).then(|| (rss_after_kib - rss_before_kib) / connections as f64)
}

/// utime + stime + cutime + cstime (clock ticks) from the text of `/proc/PID/stat`: fields 14 to
/// 17 of proc(5), counted after the `(comm)` field, which may itself hold spaces and parentheses.
pub fn parse_proc_stat_ticks(stat: &str) -> anyhow::Result<u64> {
    let close = stat.rfind(')').context("/proc/PID/stat: no ')'")?;
    let fields: Vec<&str> = stat[close + 1..].split_whitespace().collect();
    // fields[0] is field 3 (state), so field 14 (utime) is fields[11].
    let ticks = fields
        .get(11..15)
        .context("/proc/PID/stat: too few fields")?;
    ticks.iter().try_fold(0u64, |acc, t| {
        let v: u64 = t
            .parse()
            .with_context(|| format!("/proc/PID/stat: bad tick count {t:?}"))?;
        Ok(acc + v)
    })
}

/// The parent pid and utime + stime + cutime + cstime (clock ticks) from the text of
/// `/proc/PID/stat`: field 4 (ppid) and fields 14 to 17 of proc(5).
pub fn parse_proc_stat_ppid_ticks(stat: &str) -> anyhow::Result<(u32, u64)> {
    let close = stat.rfind(')').context("/proc/PID/stat: no ')'")?;
    // fields[0] is field 3 (state), so field 4 (ppid) is fields[1].
    let ppid = stat[close + 1..]
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .context("/proc/PID/stat: no ppid")?;
    Ok((ppid, parse_proc_stat_ticks(stat)?))
}

/// `root` and all its descendants, from `(pid, ppid, ticks)` of every process (as read from
/// `/proc/*/stat`), `root` first; empty when `root` is not among the processes.
pub fn tree_pids(procs: &[(u32, u32, u64)], root: u32) -> Vec<u32> {
    if !procs.iter().any(|p| p.0 == root) {
        return Vec::new();
    }
    let mut tree = vec![root];
    let mut next = 0;
    while let Some(&parent) = tree.get(next) {
        next += 1;
        for &(pid, ppid, _) in procs {
            // A pid is never its own parent, but guard against cycles.
            if ppid == parent && !tree.contains(&pid) {
                tree.push(pid);
            }
        }
    }
    tree
}

/// The clock ticks of `root` and of all its descendants, from `(pid, ppid, ticks)` of every
/// process (as read from `/proc/*/stat`). A child's own ticks are counted while it lives and,
/// once its parent has reaped it, in the parent's cutime + cstime; either way once. `None` when
/// `root` is not among the processes.
pub fn tree_ticks(procs: &[(u32, u32, u64)], root: u32) -> Option<u64> {
    let tree = tree_pids(procs, root);
    (!tree.is_empty()).then(|| {
        procs
            .iter()
            .filter(|p| tree.contains(&p.0))
            .map(|p| p.2)
            .sum()
    })
}

/// Proxy CPU microseconds per request; `None` when no request completed.
pub fn cpu_us_per_op(cpu_seconds: f64, requests: u64) -> Option<f64> {
    (requests > 0 && cpu_seconds >= 0.0).then(|| cpu_seconds * 1e6 / requests as f64)
}

/// The best of `candidates` (name, summary) by median: the highest when higher is better, the
/// lowest otherwise; the first one wins a tie.
pub fn best_by_median<'a>(
    candidates: &[(&'a str, Summary)],
    higher_is_better: bool,
) -> Option<(&'a str, Summary)> {
    candidates.iter().copied().reduce(|best, c| {
        let better = if higher_is_better {
            c.1.median > best.1.median
        } else {
            c.1.median < best.1.median
        };
        if better {
            c
        } else {
            best
        }
    })
}

/// How many times better `a` is than `b` by median: `a / b` when higher is better, `b / a`
/// otherwise, so that above 1 always means `a` is better.
pub fn advantage(a: &Summary, b: &Summary, higher_is_better: bool) -> Option<f64> {
    if higher_is_better {
        ratio(a.median, b.median)
    } else {
        ratio(b.median, a.median)
    }
}

/// The noise rule: two targets are not told apart when the difference of their medians is
/// smaller than the larger of their spreads (max - min over the rounds).
pub fn within_noise(a: &Summary, b: &Summary) -> bool {
    let spread = (a.max - a.min).max(b.max - b.min);
    (a.median - b.median).abs() < spread
}

/// `VmRSS` in KiB from the text of `/proc/PID/status`.
pub fn parse_vmrss_kib(status: &str) -> anyhow::Result<f64> {
    let line = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .context("/proc/PID/status: no VmRSS")?;
    let mut it = line.split_whitespace();
    let v: f64 = it
        .next()
        .and_then(|v| v.parse().ok())
        .with_context(|| format!("/proc/PID/status: bad VmRSS {line:?}"))?;
    match it.next() {
        Some("kB") => Ok(v),
        other => bail!("/proc/PID/status: VmRSS unit {other:?}, expected kB"),
    }
}

/// `YYYY-MM-DDTHH-MM-SSZ` (UTC, no colons so it is a portable file name) of a Unix time.
pub fn utc_stamp(unix: u64) -> String {
    let days = i64::try_from(unix / 86_400).unwrap_or(i64::MAX / 2);
    let secs = unix % 86_400;
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}-{:02}-{:02}Z",
        secs / 3600,
        secs % 3600 / 60,
        secs % 60
    )
}

/// Latency percentiles in microseconds, as printed by `loadgen pingpong`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Latency {
    /// Median round trip.
    pub p50_us: f64,
    /// 99th percentile round trip.
    pub p99_us: f64,
    /// 99.9th percentile round trip.
    pub p999_us: f64,
    /// Round trips recorded (warm-up excluded); fewer than asked when the time limit hit.
    pub count: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summaries() {
        assert_eq!(summarize(&[]), None);
        assert_eq!(summarize(&[1.0, f64::NAN]), None);
        let s = summarize(&[3.0, 1.0, 2.0]).unwrap();
        assert_eq!((s.median, s.min, s.max, s.n), (2.0, 1.0, 3.0, 3));
        let s = summarize(&[4.0, 1.0, 2.0, 3.0]).unwrap();
        assert_eq!(s.median, 2.5);
        assert_eq!(ratio(1.0, 4.0), Some(0.25));
        assert_eq!(ratio(1.0, 0.0), None);
    }

    #[test]
    fn derived_metrics() {
        assert_eq!(
            differences(&[10.0, 12.0, 9.0], &[8.0, 8.5, 10.0]),
            Some(vec![2.0, 3.5, -1.0])
        );
        assert_eq!(differences(&[1.0], &[1.0, 2.0]), None);
        assert_eq!(differences(&[], &[]), None);
        // 0.5 s of CPU for 2.5 GB.
        assert_eq!(cpu_seconds_per_gb(0.5, 2.5e9), Some(0.2));
        assert_eq!(cpu_seconds_per_gb(0.5, 0.0), None);
        // 8,000 connections grew RSS from 10 MiB to 50 MiB: 5 KiB each.
        assert_eq!(per_connection_kib(10_240.0, 51_200.0, 8000), Some(5.12));
        assert_eq!(per_connection_kib(1.0, 2.0, 0), None);
    }

    #[test]
    fn proc_files() {
        // A real /proc/PID/stat line, with a comm holding a space and a parenthesis.
        let stat = "4242 (ha proxy)) S 1 4242 4242 0 -1 4194560 1843 0 0 0 123 45 6 7 20 0 2 0 \
                    9640 127258624 3906 18446744073709551615 1 1 0 0 0 0 0 4096 0 0 0 0 17 1 0";
        assert_eq!(parse_proc_stat_ticks(stat).unwrap(), 123 + 45 + 6 + 7);
        assert!(parse_proc_stat_ticks("1 (x) S 1 2").is_err());
        assert!(parse_proc_stat_ticks("no paren").is_err());
        let status =
            "Name:\thaproxy\nVmPeak:\t  130000 kB\nVmRSS:\t   15624 kB\nRssAnon:\t 9000 kB\n";
        assert_eq!(parse_vmrss_kib(status).unwrap(), 15624.0);
        assert!(parse_vmrss_kib("Name:\tx\n").is_err());
        assert!(parse_vmrss_kib("VmRSS:\t12 MB\n").is_err());
    }

    #[test]
    fn process_trees() {
        let stat = "77 (nginx: worker) S 76 76 76 0 -1 4194560 1 0 0 0 10 20 3 4 20 0 1 0 1 1 1";
        assert_eq!(parse_proc_stat_ppid_ticks(stat).unwrap(), (76, 37));
        assert!(parse_proc_stat_ppid_ticks("1 (x) S").is_err());
        // 10 is the master; 11 and 12 its workers; 13 a worker's child; 20 unrelated; 14 a
        // child of the unrelated one.
        let procs = [
            (1, 0, 1000),
            (10, 1, 5),
            (11, 10, 100),
            (12, 10, 200),
            (13, 11, 7),
            (20, 1, 50),
            (14, 20, 9),
        ];
        assert_eq!(tree_pids(&procs, 10), [10, 11, 12, 13]);
        assert_eq!(tree_pids(&procs, 99), Vec::<u32>::new());
        assert_eq!(tree_ticks(&procs, 10), Some(5 + 100 + 200 + 7));
        assert_eq!(tree_ticks(&procs, 12), Some(200));
        assert_eq!(tree_ticks(&procs, 99), None);
        // A (corrupt) cycle does not loop.
        assert_eq!(tree_ticks(&[(2, 3, 1), (3, 2, 1)], 2), Some(2));
        // 0.25 s over 50,000 requests: 5 us each.
        assert_eq!(cpu_us_per_op(0.25, 50_000), Some(5.0));
        assert_eq!(cpu_us_per_op(0.25, 0), None);
    }

    #[test]
    fn peers_and_noise() {
        let s = |median, min, max| Summary {
            median,
            min,
            max,
            n: 3,
        };
        let peers = [
            ("haproxy", s(100.0, 95.0, 105.0)),
            ("haproxy-splice", s(120.0, 110.0, 121.0)),
            ("nginx", s(90.0, 89.0, 91.0)),
        ];
        assert_eq!(best_by_median(&peers, true).unwrap().0, "haproxy-splice");
        assert_eq!(best_by_median(&peers, false).unwrap().0, "nginx");
        assert_eq!(best_by_median(&[], true), None);
        // A tie keeps the first.
        assert_eq!(
            best_by_median(&[("a", s(1.0, 1.0, 1.0)), ("b", s(1.0, 1.0, 1.0))], true)
                .unwrap()
                .0,
            "a"
        );
        let (a, b) = (s(120.0, 119.0, 121.0), s(100.0, 90.0, 110.0));
        assert_eq!(advantage(&a, &b, true), Some(1.2));
        assert_eq!(advantage(&b, &a, false), Some(1.2));
        // 20 apart, spreads 2 and 20: exactly the spread is not noise; a wider spread is.
        assert!(!within_noise(&a, &b));
        assert!(within_noise(&a, &s(100.0, 90.0, 110.5)));
        assert!(!within_noise(
            &s(100.0, 100.0, 100.0),
            &s(100.0, 100.0, 100.0)
        ));
        assert!(within_noise(
            &s(100.0, 99.0, 101.0),
            &s(101.0, 100.0, 102.0)
        ));
    }

    #[test]
    fn stamps() {
        assert_eq!(utc_stamp(0), "1970-01-01T00-00-00Z");
        // date -u -d @1795554277
        assert_eq!(utc_stamp(1_795_554_277), "2026-11-24T21-04-37Z");
        // A leap day.
        assert_eq!(utc_stamp(951_782_400 + 3661), "2000-02-29T01-01-01Z");
    }

    #[test]
    fn redis_benchmark_csv() {
        // redis-benchmark 7.0 --csv, verbatim.
        let out = "\"test\",\"rps\",\"avg_latency_ms\",\"min_latency_ms\",\"p50_latency_ms\",\"p95_latency_ms\",\"p99_latency_ms\",\"max_latency_ms\"\n\"SET\",\"81300.81\",\"0.318\",\"0.096\",\"0.303\",\"0.487\",\"0.623\",\"1.679\"\n\"GET\",\"90090.09\",\"0.287\",\"0.088\",\"0.279\",\"0.423\",\"0.543\",\"0.871\"\n";
        let rows = parse_redis_benchmark_csv(out).unwrap();
        assert_eq!(
            rows,
            vec![("SET".to_string(), 81300.81), ("GET".to_string(), 90090.09)]
        );
        assert!(parse_redis_benchmark_csv("").is_err());
        assert!(parse_redis_benchmark_csv("\"SET\",\"fast\"\n").is_err());
    }

    #[test]
    fn iperf3_json() {
        let out = r#"{"start":{},"end":{"sum_sent":{"bytes":100,"bits_per_second":9.0},
            "sum_received":{"start":0,"end":3.0,"seconds":3.0,"bytes":7425000000,"bits_per_second":19800000000.0}}}"#;
        let r = parse_iperf3_json(out).unwrap();
        assert_eq!(r.bits_per_second, 19.8e9);
        assert_eq!(r.bytes, 7.425e9);
        let err =
            parse_iperf3_json(r#"{"start":{},"end":{},"error":"unable to connect to server"}"#)
                .unwrap_err();
        assert!(err.to_string().contains("unable to connect"));
        assert!(parse_iperf3_json("not json").is_err());
        assert!(parse_iperf3_json(r#"{"end":{}}"#).is_err());
    }
}
