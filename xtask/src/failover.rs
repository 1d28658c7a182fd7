//! `cargo xtask bench failover`: kill -9 drills under a steady write load, through the forwarder
//! (consulting Sentinel) and through HAProxy with the seed guide's configuration, side by side.
//!
//! Each drill starts fresh: a master, its replica, three Sentinels (`down-after-milliseconds`
//! 1000), the proxy in front, and a client writing `SET k<i> <i>` in a loop (a new connection
//! after any error). Then the master is killed with SIGKILL; once writes succeed again the old
//! master is restarted empty on its port (it says `role:master` until Sentinel demotes it: the
//! guide's split-brain window), writing goes on for 5 s, and every acknowledged key is looked up on
//! the final master.
//!
//! Reported per target: the client-visible write outage (the longest gap between two
//! acknowledged writes after the kill), failed write attempts, and acknowledged writes lost —
//! split between those acknowledged before the kill (Redis' asynchronous replication may lose
//! them whatever the proxy does) and those acknowledged after it, which a proxy that routes only
//! to the Sentinel master never loses.

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use harness::{wait_until, Conn, Forwarder, Proc, Redis, Reply, Sentinel};

use bench::summarize;

use crate::bench::charts::{draw, Bar, Panel};
use crate::prereq::{self, HAPROXY, REDIS, SENTINEL};

#[derive(Debug, Default, Clone, Copy)]
struct Drill {
    /// From the kill to the first `+switch-master` a Sentinel published.
    sentinel: Duration,
    outage: Duration,
    failed: u64,
    acked: u64,
    lost_before_kill: u64,
    lost_after_kill: u64,
}

/// One write attempt's outcome.
struct Ack {
    at: Instant,
    key: u64,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Target {
    Forwarder,
    Haproxy,
}

impl Target {
    fn name(self) -> &'static str {
        match self {
            Target::Forwarder => "forwarder (Sentinel)",
            Target::Haproxy => "HAProxy (guide config)",
        }
    }
}

pub fn run(drills: u32) -> anyhow::Result<()> {
    prereq::ensure(&[REDIS, SENTINEL, HAPROXY])?;
    prereq::run(crate::cargo().args(["build", "--release", "-p", "forwarder"]))?;
    let bin = crate::root().join("target/release/forwarder");
    // The harness starts the forwarder from FORWARDER_BIN.
    std::env::set_var("FORWARDER_BIN", &bin);
    let mut results: Vec<(Target, Vec<Drill>)> = vec![
        (Target::Forwarder, Vec::new()),
        (Target::Haproxy, Vec::new()),
    ];
    for n in 1..=drills {
        for (target, out) in &mut results {
            eprintln!("failover: drill {n}/{drills}, {}", target.name());
            out.push(drill(*target).with_context(|| format!("drill {n} {}", target.name()))?);
        }
    }
    let table = render(&results, drills);
    println!("{table}");
    let dir = crate::root().join("bench/results");
    std::fs::create_dir_all(&dir)?;
    chart(&results, &dir.join(CHART))?;
    std::fs::write(
        dir.join("failover.md"),
        format!("{table}\n![failover drills]({CHART})\n"),
    )?;
    eprintln!(
        "failover: wrote {} and {}",
        dir.join("failover.md").display(),
        dir.join(CHART).display()
    );
    Ok(())
}

/// The chart next to failover.md.
const CHART: &str = "failover.svg";

/// The chart's bars: per target, the write outage and the outage beyond Sentinel's decision
/// (median, min-max over the drills, ms); and the acknowledged writes lost, before and after the
/// kill (sums over the drills, as in the table).
fn chart_bars(results: &[(Target, Vec<Drill>)]) -> (Vec<Bar>, Vec<Bar>) {
    let ms = |d: Duration| d.as_nanos() as f64 / 1e6;
    let (mut outage, mut lost) = (Vec::new(), Vec::new());
    for (ti, (_, ds)) in results.iter().enumerate() {
        let series = [
            ds.iter().map(|d| ms(d.outage)).collect::<Vec<f64>>(),
            ds.iter().map(|d| ms(d.outage) - ms(d.sentinel)).collect(),
        ];
        for (metric, v) in series.iter().enumerate() {
            if let Some(s) = summarize(v) {
                outage.push(Bar {
                    metric,
                    target: ti,
                    value: s.median,
                    low: s.min,
                    high: s.max,
                });
            }
        }
        let sums = [
            ds.iter().map(|d| d.lost_before_kill).sum::<u64>(),
            ds.iter().map(|d| d.lost_after_kill).sum(),
        ];
        for (metric, n) in sums.into_iter().enumerate() {
            let value = n as f64;
            lost.push(Bar {
                metric,
                target: ti,
                value,
                low: value,
                high: value,
            });
        }
    }
    (outage, lost)
}

/// failover.svg: the write outage and the lost acknowledged writes per target, drawn like the
/// bench charts.
fn chart(results: &[(Target, Vec<Drill>)], path: &Path) -> anyhow::Result<()> {
    let (outage, lost) = chart_bars(results);
    let outage_metrics = ["write outage".to_string(), "beyond Sentinel".to_string()];
    let lost_metrics = [
        "acked before the kill".to_string(),
        "acked after the kill".to_string(),
    ];
    let panels = [
        Panel {
            title: "Write outage after kill -9 of the master",
            y: "ms, median over the drills (lower is better)",
            metrics: &outage_metrics,
            bars: &outage,
            ratio_line: false,
        },
        Panel {
            title: "Acknowledged writes lost, all drills",
            y: "writes (lower is better)",
            metrics: &lost_metrics,
            bars: &lost,
            ratio_line: false,
        },
    ];
    let names: Vec<String> = results.iter().map(|(t, _)| t.name().to_string()).collect();
    let targets: Vec<&String> = names.iter().collect();
    // The colours of forwarder-userspace and haproxy in the bench charts.
    draw(path, &panels, &targets, 0)
}

fn drill(target: Target) -> anyhow::Result<Drill> {
    let (mut master, replica) = Redis::pair();
    let sentinels: Vec<Sentinel> = (0..3)
        .map(|_| Sentinel::start("mymaster", master.addr(), 2, 1000))
        .collect();
    // Sentinels must know the replica and each other before a failover can happen.
    anyhow::ensure!(
        wait_until(Duration::from_secs(20), || sentinels
            .iter()
            .all(|s| s.ready("mymaster"))),
        "Sentinels did not discover each other"
    );
    let (listen, _proxy) = start_proxy(target, &master, &replica, &sentinels)?;
    anyhow::ensure!(
        wait_until(Duration::from_secs(15), || Conn::open(listen)
            .and_then(|mut c| c.cmd(&["SET", "probe", "1"]))
            .is_ok_and(|r| r == Reply::Simple("OK".into()))),
        "{} never served a write",
        target.name()
    );

    let stop = Arc::new(AtomicBool::new(false));
    let acks = Arc::new(Mutex::new(Vec::<Ack>::new()));
    let failed = Arc::new(Mutex::new(0u64));
    let writer = {
        let (stop, acks, failed) = (Arc::clone(&stop), Arc::clone(&acks), Arc::clone(&failed));
        std::thread::spawn(move || write_loop(listen, &stop, &acks, &failed))
    };
    // When the Sentinels decide: the first +switch-master on one of them.
    let switched = Arc::new(Mutex::new(None::<Instant>));
    {
        let mut sub = Conn::open(sentinels[0].addr())?;
        sub.stream()
            .set_read_timeout(Some(Duration::from_secs(60)))?;
        sub.cmd(&["SUBSCRIBE", "+switch-master"])?;
        let switched = Arc::clone(&switched);
        std::thread::spawn(move || {
            if sub.read_reply().is_ok() {
                *switched.lock().unwrap() = Some(Instant::now());
            }
        });
    }
    std::thread::sleep(Duration::from_secs(1));
    let old_port = master.port;
    master.proc().kill();
    let killed = Instant::now();
    let resumed = wait_until(Duration::from_secs(30), || {
        acks.lock().unwrap().last().is_some_and(|a| a.at > killed)
    });
    // The old master returns, empty and saying role:master, until Sentinel demotes it.
    let _old = Redis::start_on(old_port, &[]);
    std::thread::sleep(Duration::from_secs(5));
    stop.store(true, Ordering::Relaxed);
    writer
        .join()
        .map_err(|_| anyhow::anyhow!("writer panicked"))?;
    anyhow::ensure!(resumed, "writes never resumed after the kill");

    // The final master: whichever the Sentinels name now.
    let final_master = sentinel_master(&sentinels[0]).context("asking Sentinel")?;
    let fm = if final_master == replica.addr() {
        &replica
    } else {
        anyhow::bail!("unexpected final master {final_master}");
    };
    let acks = std::mem::take(&mut *acks.lock().unwrap());
    let mut d = Drill {
        sentinel: switched
            .lock()
            .unwrap()
            .map_or(Duration::ZERO, |t| t.saturating_duration_since(killed)),
        failed: *failed.lock().unwrap(),
        acked: acks.len() as u64,
        ..Drill::default()
    };
    let mut prev = killed;
    for a in acks.iter().filter(|a| a.at > killed) {
        d.outage = d.outage.max(a.at - prev);
        prev = a.at;
    }
    for a in &acks {
        let present = fm.cmd(&["GET", &format!("k{}", a.key)]) != Reply::Bulk(None);
        if !present {
            if a.at < killed {
                d.lost_before_kill += 1;
            } else {
                d.lost_after_kill += 1;
            }
        }
    }
    Ok(d)
}

fn sentinel_master(s: &Sentinel) -> anyhow::Result<SocketAddr> {
    let mut c = Conn::open(s.addr())?;
    match c.cmd(&["SENTINEL", "get-master-addr-by-name", "mymaster"])? {
        Reply::Array(Some(v)) => match v.as_slice() {
            [Reply::Bulk(Some(ip)), Reply::Bulk(Some(port))] => Ok(format!(
                "{}:{}",
                String::from_utf8_lossy(ip),
                String::from_utf8_lossy(port)
            )
            .parse()?),
            _ => anyhow::bail!("bad reply"),
        },
        other => anyhow::bail!("bad reply {other:?}"),
    }
}

/// Whatever keeps the proxy running; dropping it stops the proxy.
type Running = Box<dyn std::any::Any>;

fn start_proxy(
    target: Target,
    master: &Redis,
    replica: &Redis,
    sentinels: &[Sentinel],
) -> anyhow::Result<(SocketAddr, Running)> {
    match target {
        Target::Forwarder => {
            let list: Vec<String> = sentinels
                .iter()
                .map(|s| format!("\"{}\"", s.addr()))
                .collect();
            let f = Forwarder::start_with(
                &format!(
                    "[[service]]\nname = \"mymaster\"\nlisten = \"{{LISTEN}}\"\n\
                     servers = [\"{}\", \"{}\"]\n\
                     timeout = {{ connect = \"1s\", queue = \"10s\" }}\n\n\
                     [service.check]\nkind = \"redis-master\"\ninterval = \"1s\"\n\n\
                     [service.sentinel]\naddresses = [{}]\nmaster_name = \"mymaster\"\n",
                    master.addr(),
                    replica.addr(),
                    list.join(", ")
                ),
                "mode = \"auto\"",
                &[],
            );
            Ok((f.listen[0], Box::new(f)))
        }
        Target::Haproxy => {
            let listen = SocketAddr::from(([127, 0, 0, 1], harness::free_port()));
            let dir = tempfile::tempdir()?;
            let cfg = dir.path().join("haproxy.cfg");
            // The seed guide's configuration (defaults: rise 2, fall 3).
            std::fs::write(
                &cfg,
                format!(
                    "defaults\n  mode tcp\n  timeout connect 4s\n  timeout client 60s\n  \
                     timeout server 60s\n\nfrontend fe\n  bind {listen}\n  default_backend be\n\n\
                     backend be\n  option tcp-check\n  tcp-check connect\n  \
                     tcp-check send PING\\r\\n\n  tcp-check expect string +PONG\n  \
                     tcp-check send info\\ replication\\r\\n\n  tcp-check expect string role:master\n  \
                     tcp-check send QUIT\\r\\n\n  tcp-check expect string +OK\n  \
                     server redis1 {} check inter 1s\n  server redis2 {} check inter 1s\n",
                    master.addr(),
                    replica.addr()
                ),
            )?;
            let proc = Proc::spawn(
                Command::new("haproxy")
                    .args(["-db", "-f"])
                    .arg(Path::new(&cfg))
                    .stdout(std::process::Stdio::null())
                    .stderr(std::process::Stdio::null()),
            )?;
            Ok((listen, Box::new((proc, dir))))
        }
    }
}

fn write_loop(to: SocketAddr, stop: &AtomicBool, acks: &Mutex<Vec<Ack>>, failed: &Mutex<u64>) {
    let mut conn: Option<Conn> = None;
    let mut i = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let c = match conn.as_mut() {
            Some(c) => c,
            None => match Conn::open(to) {
                Ok(c) => {
                    let _ = c.stream().set_read_timeout(Some(Duration::from_secs(2)));
                    conn.insert(c)
                }
                Err(_) => {
                    *failed.lock().unwrap() += 1;
                    std::thread::sleep(Duration::from_millis(10));
                    continue;
                }
            },
        };
        i += 1;
        match c.cmd(&["SET", &format!("k{i}"), &i.to_string()]) {
            Ok(Reply::Simple(s)) if s == "OK" => {
                acks.lock().unwrap().push(Ack {
                    at: Instant::now(),
                    key: i,
                });
                // Real clients open new connections (pools, restarts): every 10 writes, so
                // each new connection is routed afresh.
                if i.is_multiple_of(10) {
                    conn = None;
                }
            }
            _ => {
                *failed.lock().unwrap() += 1;
                conn = None;
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

fn render(results: &[(Target, Vec<Drill>)], drills: u32) -> String {
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let mut out = format!(
        "Failover drills (`cargo xtask bench failover --drills {drills}`): kill -9 of the master \
         under a write loop, old master restarted empty once writes resume; Sentinel \
         down-after-milliseconds 1000.\n\n\
         | target | write outage ms, median [min–max] | Sentinel decided after, ms (median) | \
         outage beyond Sentinel, ms (median) | failed attempts (median) | acked writes | \
         lost, acked before the kill | lost, acked after the kill (split brain) |\n\
         |---|---:|---:|---:|---:|---:|---:|---:|\n"
    );
    for (t, ds) in results {
        let mut outages: Vec<f64> = ds.iter().map(|d| ms(d.outage)).collect();
        outages.sort_by(f64::total_cmp);
        let mut failed: Vec<u64> = ds.iter().map(|d| d.failed).collect();
        failed.sort_unstable();
        let med = |v: &[f64]| v.get(v.len() / 2).copied().unwrap_or(f64::NAN);
        let mut decided: Vec<f64> = ds.iter().map(|d| ms(d.sentinel)).collect();
        decided.sort_by(f64::total_cmp);
        let mut beyond: Vec<f64> = ds.iter().map(|d| ms(d.outage) - ms(d.sentinel)).collect();
        beyond.sort_by(f64::total_cmp);
        out.push_str(&format!(
            "| {} | {:.0} [{:.0}–{:.0}] | {:.0} | {:.0} | {} | {} | {} | {} |\n",
            t.name(),
            med(&outages),
            outages.first().copied().unwrap_or(f64::NAN),
            outages.last().copied().unwrap_or(f64::NAN),
            med(&decided),
            med(&beyond),
            failed.get(failed.len() / 2).copied().unwrap_or(0),
            ds.iter().map(|d| d.acked).sum::<u64>(),
            ds.iter().map(|d| d.lost_before_kill).sum::<u64>(),
            ds.iter().map(|d| d.lost_after_kill).sum::<u64>(),
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn drill(outage_ms: u64, sentinel_ms: u64, lost_before: u64, lost_after: u64) -> Drill {
        Drill {
            sentinel: Duration::from_millis(sentinel_ms),
            outage: Duration::from_millis(outage_ms),
            failed: 2,
            acked: 1000,
            lost_before_kill: lost_before,
            lost_after_kill: lost_after,
        }
    }

    fn results() -> Vec<(Target, Vec<Drill>)> {
        vec![
            (
                Target::Forwarder,
                vec![
                    drill(2246, 2245, 0, 0),
                    drill(2285, 2240, 1, 0),
                    drill(2242, 2238, 0, 0),
                ],
            ),
            (
                Target::Haproxy,
                vec![drill(4084, 2238, 0, 1000), drill(4041, 2230, 0, 2458)],
            ),
        ]
    }

    #[test]
    fn chart_has_the_table_numbers() {
        let (outage, lost) = chart_bars(&results());
        let v = |b: &[Bar], m: usize, t: usize| {
            b.iter()
                .find(|x| x.metric == m && x.target == t)
                .map(|x| (x.value, x.low, x.high))
        };
        assert_eq!(v(&outage, 0, 0), Some((2246.0, 2242.0, 2285.0)));
        // Beyond Sentinel: 1, 45, 4 ms.
        assert_eq!(v(&outage, 1, 0), Some((4.0, 1.0, 45.0)));
        // Two drills: the median is their mean.
        assert_eq!(v(&outage, 0, 1), Some((4062.5, 4041.0, 4084.0)));
        assert_eq!(v(&lost, 0, 0), Some((1.0, 1.0, 1.0)));
        assert_eq!(v(&lost, 1, 1), Some((3458.0, 3458.0, 3458.0)));
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(CHART);
        chart(&results(), &path).unwrap();
        let svg = std::fs::read_to_string(&path).unwrap();
        assert!(svg.contains("<svg") && svg.contains("HAProxy (guide config)"));
        assert!(svg.contains("Acknowledged writes lost"));
        // Each metric's label sits under its own bars: the second panel's are not piled up at
        // its edge.
        let label_x = |label: &str| -> f64 {
            let at = svg.find(&format!("{label}\n</text>")).unwrap();
            let tag = &svg[svg[..at].rfind("<text x=\"").unwrap() + 9..];
            tag[..tag.find('"').unwrap()].parse().unwrap()
        };
        let (before, after) = (
            label_x("acked before the kill"),
            label_x("acked after the kill"),
        );
        assert!(label_x("beyond Sentinel") < before && before + 100.0 < after);
    }
}
