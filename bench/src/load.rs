//! Load generators: each is bounded in count and time.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use anyhow::Context;
use hdrhistogram::Histogram;
use tokio::io::AsyncWriteExt;

use crate::Latency;

/// Echoes every byte back on every connection, until the process is killed. One thread, so the
/// backend costs the same for every target.
pub fn echo_server(listen: SocketAddr) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let l = tokio::net::TcpListener::bind(listen)
            .await
            .with_context(|| format!("echo server: bind {listen}"))?;
        loop {
            let (mut s, _) = match l.accept().await {
                Ok(x) => x,
                Err(_) => {
                    // EMFILE and the like: back off instead of spinning.
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let _ = s.set_nodelay(true);
            tokio::spawn(async move {
                // The buffer lives only while there is data: thousands of idle connections
                // (the memory scenario) cost no buffers here.
                while s.readable().await.is_ok() {
                    let mut buf = vec![0u8; 64 * 1024];
                    loop {
                        match s.try_read(&mut buf) {
                            Ok(0) => return,
                            Ok(n) => {
                                if s.write_all(&buf[..n]).await.is_err() {
                                    return;
                                }
                            }
                            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                            Err(_) => return,
                        }
                    }
                }
            });
        }
    })
}

fn connect(addr: SocketAddr) -> anyhow::Result<TcpStream> {
    let s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
        .with_context(|| format!("connect {addr}"))?;
    s.set_nodelay(true)?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    s.set_write_timeout(Some(Duration::from_secs(5)))?;
    Ok(s)
}

/// One connection, `count` round trips of `size` bytes (after 1,000 unrecorded warm-up ones),
/// flat out or at `rate` per second. At a fixed rate, latency is taken from the scheduled send
/// time, so a stall is not hidden by the sends it delayed (coordinated omission).
pub fn pingpong(
    addr: SocketAddr,
    size: usize,
    count: u64,
    rate: Option<u32>,
    limit: Duration,
) -> anyhow::Result<Latency> {
    let mut s = connect(addr)?;
    let out = vec![0x5au8; size.max(1)];
    let mut back = vec![0u8; out.len()];
    let mut trip = |s: &mut TcpStream| -> anyhow::Result<()> {
        s.write_all(&out)?;
        s.read_exact(&mut back).context("echo")?;
        Ok(())
    };
    for _ in 0..1000 {
        trip(&mut s)?;
    }
    let mut h = Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3)?;
    let start = Instant::now();
    let mut done = 0;
    while done < count && start.elapsed() < limit {
        let sent_at = match rate {
            Some(r) => {
                let due = start + Duration::from_secs_f64(done as f64 / f64::from(r.max(1)));
                let now = Instant::now();
                if due > now {
                    std::thread::sleep(due - now);
                }
                due
            }
            None => Instant::now(),
        };
        trip(&mut s)?;
        let ns = u64::try_from(sent_at.elapsed().as_nanos()).unwrap_or(u64::MAX);
        h.saturating_record(ns.max(1));
        done += 1;
    }
    let us = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
    Ok(Latency {
        p50_us: us(0.50),
        p99_us: us(0.99),
        p999_us: us(0.999),
        count: done,
    })
}

/// Connections per second over `threads` threads for `duration`: connect, one 1-byte round trip,
/// close.
pub fn connrate(addr: SocketAddr, threads: usize, duration: Duration) -> anyhow::Result<f64> {
    let start = Instant::now();
    let workers: Vec<_> = (0..threads.max(1))
        .map(|_| {
            std::thread::spawn(move || -> anyhow::Result<u64> {
                let mut n = 0u64;
                let mut b = [0u8; 1];
                while start.elapsed() < duration {
                    let mut s = connect(addr)?;
                    s.write_all(b"x")?;
                    s.read_exact(&mut b)?;
                    n += 1;
                }
                Ok(n)
            })
        })
        .collect();
    let mut total = 0;
    for w in workers {
        total += w
            .join()
            .map_err(|_| anyhow::anyhow!("connrate thread panicked"))??;
    }
    Ok(total as f64 / start.elapsed().as_secs_f64())
}
