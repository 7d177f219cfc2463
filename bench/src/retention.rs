//! `bench memory-retention [N] [EVERY]`: whether the embedded broker's memory stays flat while
//! N messages (10 million unless told) flow publish → handler → ack through it, on the
//! broker's default retention bounds.
//!
//! A task publishes 512-byte raw messages while the app handles them on a 2-worker runtime;
//! the publisher stays at most [`WINDOW`] messages ahead of the handler, as a producer whose
//! consumers keep up would, so that every message is consumed rather than dropped by a bound.
//! Every EVERY handled messages (1 million unless told), it prints the process's resident
//! memory (`VmRSS` of `/proc/self/status`) and how many messages the broker still retains.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::memory::{Payload, Rig};

/// How far the publisher may run ahead of the handler.
const WINDOW: usize = 100_000;

/// Messages published between two looks at how far the handler got.
const CHUNK: usize = 10_000;

/// The resident memory of this process in KiB, from `/proc/self/status`.
fn resident_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

fn row(handled: usize, retained: usize, started: Instant) {
    let rss = resident_kib().map_or_else(|| "?".into(), |k| format!("{:.1}", k as f64 / 1024.0));
    println!(
        "| {:>10} | {rss:>10} | {retained:>9} | {:>6.1} |",
        crate::thousands(handled as f64),
        started.elapsed().as_secs_f64()
    );
}

/// The body of `bench memory-retention`.
pub fn run(args: &[String]) {
    let n = args
        .first()
        .and_then(|n| n.parse().ok())
        .unwrap_or(10_000_000);
    let every = args
        .get(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or(1_000_000);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime");
    rt.block_on(async {
        let rig = Arc::new(Rig::with_options(Payload::Raw, 4, ""));
        let app = rig.start(n).await;
        let publisher = app.publisher();
        println!("memory-retention: {n} raw 512-byte messages, 4 partitions, default retention");
        println!("| handled | VmRSS (MiB) | retained | seconds |");
        println!("| ---: | ---: | ---: | ---: |");
        let started = Instant::now();
        row(0, 0, started);
        let publishing = tokio::spawn({
            let rig = Arc::clone(&rig);
            async move {
                let mut published = 0;
                while published < n {
                    let chunk = CHUNK.min(n - published);
                    rig.publish(&publisher, chunk).await;
                    published += chunk;
                    while published - rig.handled().min(published) > WINDOW {
                        tokio::time::sleep(Duration::from_millis(1)).await;
                    }
                }
            }
        });
        let mut next = every;
        let mut tick = tokio::time::interval(Duration::from_millis(10));
        while next <= n {
            tick.tick().await;
            while rig.handled() >= next && next <= n {
                row(next, rig.retained(), started);
                next += every;
            }
        }
        rig.finish(n).await;
        publishing.await.expect("the publisher task");
        app.shutdown().await.expect("shutdown");
        row(n, rig.retained(), started);
    });
}
