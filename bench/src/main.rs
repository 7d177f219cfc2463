//! The anybus benchmark: prints a markdown table of what the runtime costs on the embedded
//! (`memory://`) broker, each row beside the target it is measured against.
//!
//! ```text
//! cargo run --release -p anybus-bench                       # the whole table (about 30 s)
//! cargo run --release -p anybus-bench -- memory             # the same, memory rows only
//! cargo run --release -p anybus-bench --features kafka      # + Kafka rows (broker on :9092)
//! cargo run --release -p anybus-bench --features rabbitmq   # + RabbitMQ rows (broker on :5672)
//! cargo run --release -p anybus-bench -- ordering           # the ordering rows alone (+ Kafka with the feature)
//! cargo run --release -p anybus-bench -- retry              # the retry rows alone (+ brokers with the features)
//! cargo run --release -p anybus-bench --features redis,postgres -- dedup   # the dedup rows (Redis on :6379, PostgreSQL on :5432)
//! cargo run --release -p anybus-bench -- scenario end-to-end raw 1 multi 20   # one scenario, for perf
//! cargo run --release -p anybus-bench -- memory-retention 10000000 1000000   # resident memory while 10M flow
//! cargo run --release -p anybus-bench --features kafka -- kafka-vs-raw   # the Kafka rows against raw rdkafka alone
//! cargo run --release -p anybus-bench --features kafka -- kafka-consume 4 5 anybus   # Kafka consume runs, for perf
//! cargo run --release -p anybus-bench --features kafka -- kafka-publish 5 anybus     # Kafka publish runs, for perf
//! ```
//!
//! What it measures, for raw 512-byte payloads (the handler takes the `anybus::Message`) and for
//! a 512-byte JSON event decoded with serde, on 1 and 4 partitions:
//!
//! * **Throughput**: a task publishes N messages one after another while the app handles them;
//!   the clock runs from the first publish until the group's committed offsets sum to N (the
//!   last ack). Best and median of several runs, each in a fresh process after a warm-up run
//!   (each run's broker lives on in the process with what it retains, so a long-lived process
//!   would run each scenario on a bigger heap than the last), on a 2-worker multi-thread runtime and on a current-thread one;
//!   also consume alone (pre-published) and publish alone.
//! * **Allocations per message**, from a counting global allocator: N messages are appended to
//!   the broker first, then the app starts and consumes them; what was allocated from the start
//!   until the last commit, for two values of N, differenced so that start-up cancels out. The
//!   publish side is counted separately.
//! * **Instructions per message**, from `valgrind --tool=callgrind` on this same binary
//!   (`bench callgrind-run N raw|json consume|publish|decode [PARTITIONS]`): instructions of a
//!   2,000-message run minus those of a 1,000-message run, divided by 1,000. Callgrind collects
//!   only inside the measured phase (`--toggle-collect`), so appending the messages beforehand is
//!   not counted. Set `ANYBUS_BENCH_CALLGRIND_DIR` to keep the output files for
//!   `callgrind_annotate`.
//! * **Ordering** (see `ordering.rs`): Confluent Parallel Consumer's scenario, 10,000 messages in
//!   one partition with 0–5 ms of timer work each at concurrency 100, under partition, key and
//!   no ordering; wall time against the ideal, on memory and (with the feature) on Kafka.
//! * **Dedup** (see `dedup.rs`): consume throughput on the memory backend with each dedup store
//!   (memory; Redis and PostgreSQL with their features) against none, at concurrency 64.
//! * **Retry** (see `retry.rs`): consume throughput with 1 % of the messages failing once and
//!   retried in process, against none failing, on memory and on each broker compiled in.

mod alloc;
mod dedup;
#[cfg(feature = "kafka")]
mod kafka;
mod memory;
mod ordering;
#[cfg(feature = "rabbitmq")]
mod rabbitmq;
mod retention;
mod retry;

use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering as AtomicOrdering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::Notify;

use alloc::Counts;
use memory::{Payload, Phase};

/// Counts every allocation of the process, for the allocation rows.
#[global_allocator]
static GLOBAL: alloc::Counting = alloc::Counting;

/// Messages per throughput run.
const THROUGHPUT_N: usize = 200_000;
/// Throughput runs per row.
const RUNS: usize = 5;
/// Messages of the warm-up run before each timed one.
const WARMUP_N: usize = 10_000;
/// The two message counts whose allocations are differenced.
const ALLOC_N: (usize, usize) = (50_000, 150_000);
/// The two message counts whose instructions are differenced.
const CALLGRIND_N: (usize, usize) = (1_000, 2_000);

/// The issue's targets, printed above the table.
const TARGETS: &str =
    "targets: ≥ 1,000,000 msg/s end-to-end with raw bytes on this 2-core machine; \
≤ 1 allocation per message in the dispatch path; fewer instructions per consumed JSON message than \
the closest Rust peer (~1,700 instructions and 0 allocations on its in-process broker)";

/// One line of the table.
pub struct Row {
    /// What was measured.
    pub what: String,
    /// The result.
    pub result: String,
    /// What it is compared with.
    pub versus: String,
}

impl Row {
    /// A row of three cells.
    fn new(what: impl Into<String>, result: impl Into<String>, versus: impl Into<String>) -> Self {
        Self {
            what: what.into(),
            result: result.into(),
            versus: versus.into(),
        }
    }
}

/// A row comparing anybus with the raw client, both runs of `n` messages, by rate.
#[cfg(any(feature = "kafka", feature = "rabbitmq"))]
pub fn comparison(
    what: String,
    n: usize,
    ours: &mut [Duration],
    raw: &mut [Duration],
    target: &str,
) -> Row {
    let (best, median) = rates(n, ours);
    let (raw_best, raw_median) = rates(n, raw);
    Row {
        what,
        result: format!(
            "anybus {} / {}; raw {} / {}",
            thousands(best),
            thousands(median),
            thousands(raw_best),
            thousands(raw_median)
        ),
        versus: format!(
            "anybus/raw {:.2} (best), {:.2} (median){target}",
            best / raw_best,
            median / raw_median
        ),
    }
}

/// Best and median of a list of durations, as messages per second for `n` messages.
pub fn rates(n: usize, runs: &mut [Duration]) -> (f64, f64) {
    runs.sort();
    let per_sec = |d: Duration| n as f64 / d.as_secs_f64();
    (per_sec(runs[0]), per_sec(runs[runs.len() / 2]))
}

/// How long a run that times an app may take before the bench gives up on it.
pub const GIVE_UP: Duration = Duration::from_secs(300);

/// The clock of the rows that time an app: from the first handler start to the n-th handled
/// message. Cloned into the handler.
#[derive(Clone, Default)]
pub struct Clock {
    first: Arc<Mutex<Option<Instant>>>,
    handled: Arc<AtomicUsize>,
    all: Arc<Notify>,
}

impl Clock {
    /// A handler started: the first call starts the clock.
    pub fn start(&self) {
        self.first
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get_or_insert_with(Instant::now);
    }

    /// A message was handled, of `n` in all.
    pub fn done(&self, n: usize) {
        if self.handled.fetch_add(1, AtomicOrdering::SeqCst) + 1 == n {
            self.all.notify_one();
        }
    }

    /// Waits until `n` were handled (panicking after [`GIVE_UP`]), and says how long that took
    /// from the first start.
    pub async fn wait(&self, n: usize) -> Duration {
        tokio::time::timeout(GIVE_UP, self.all.notified())
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "{} of {n} handled after {GIVE_UP:?}",
                    self.handled.load(AtomicOrdering::SeqCst)
                )
            });
        self.first
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .map_or(Duration::ZERO, |f| f.elapsed())
    }
}

/// `1234567.8` → `1,234,568`.
pub fn thousands(x: f64) -> String {
    let digits = format!("{x:.0}");
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 && c != '-' {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// The runtime of the throughput rows.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Flavor {
    /// Multi-thread, 2 workers: one per core.
    MultiThread,
    /// Current-thread: publisher, dispatch loop and handler share one thread.
    CurrentThread,
}

impl Flavor {
    /// A runtime of this flavor, timers and I/O enabled.
    fn runtime(self) -> tokio::runtime::Runtime {
        let mut builder = match self {
            Self::MultiThread => {
                let mut b = tokio::runtime::Builder::new_multi_thread();
                b.worker_threads(2);
                b
            }
            Self::CurrentThread => tokio::runtime::Builder::new_current_thread(),
        };
        builder.enable_all().build().expect("a tokio runtime")
    }

    /// How the table names it.
    fn name(self) -> &'static str {
        match self {
            Self::MultiThread => "multi-thread ×2",
            Self::CurrentThread => "current-thread",
        }
    }

    /// How the command line names it: `multi` or `current`.
    fn arg(self) -> &'static str {
        match self {
            Self::MultiThread => "multi",
            Self::CurrentThread => "current",
        }
    }

    /// Parses [`Flavor::arg`].
    fn parse(arg: &str) -> Option<Self> {
        [Self::MultiThread, Self::CurrentThread]
            .into_iter()
            .find(|f| f.arg() == arg)
    }
}

/// A throughput scenario.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Scenario {
    /// A task publishes while the app handles; first publish → last ack.
    EndToEnd,
    /// The messages are appended beforehand; app start → last ack.
    Consume,
    /// Publishing alone, with no subscriber.
    Publish,
}

impl Scenario {
    /// How the command line names it.
    fn arg(self) -> &'static str {
        match self {
            Self::EndToEnd => "end-to-end",
            Self::Consume => "consume",
            Self::Publish => "publish",
        }
    }

    /// Parses [`Scenario::arg`].
    fn parse(arg: &str) -> Option<Self> {
        [Self::EndToEnd, Self::Consume, Self::Publish]
            .into_iter()
            .find(|s| s.arg() == arg)
    }

    /// What the table says it measures.
    fn describe(self) -> &'static str {
        match self {
            Self::EndToEnd => "end to end, publish → handler → ack",
            Self::Consume => "consume alone, pre-published, app start → last ack",
            Self::Publish => "publish alone, no subscriber, one await after another",
        }
    }

    /// One run of `n` messages on `rt`.
    fn run(
        self,
        rt: &tokio::runtime::Runtime,
        payload: Payload,
        partitions: u32,
        n: usize,
    ) -> Duration {
        match self {
            Self::EndToEnd => rt.block_on(memory::end_to_end(payload, partitions, n)),
            Self::Consume => rt.block_on(memory::consume_only(payload, partitions, n)),
            Self::Publish => rt.block_on(memory::publish_only(payload, n)),
        }
    }
}

/// The arguments of `bench scenario` and `bench time-run`:
/// `SCENARIO PAYLOAD [PARTITIONS] [multi|current]`, with defaults for what is missing.
/// `bench time-run SCENARIO PAYLOAD PARTITIONS FLAVOR`: a warm-up run, then one timed run of
/// [`THROUGHPUT_N`] messages; prints its nanoseconds.
fn time_run(run: &Run) {
    let rt = run.flavor.runtime();
    run.scenario.run(&rt, run.payload, run.partitions, WARMUP_N);
    let took = run
        .scenario
        .run(&rt, run.payload, run.partitions, THROUGHPUT_N);
    println!("{}", took.as_nanos());
}

/// One timed run in a fresh process of this binary. Each run's broker keeps what it retains for
/// the life of the process, so runs in one process would each start on a bigger heap.
fn time_in_child(
    scenario: Scenario,
    payload: Payload,
    partitions: u32,
    flavor: Flavor,
) -> Result<Duration, String> {
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let output = Command::new(exe)
        .arg("time-run")
        .arg(scenario.arg())
        .arg(payload.arg())
        .arg(partitions.to_string())
        .arg(flavor.arg())
        .output()
        .map_err(|e| e.to_string())?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    match stdout.trim().parse() {
        Ok(nanos) if output.status.success() => Ok(Duration::from_nanos(nanos)),
        _ => Err(format!(
            "the run failed: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        )),
    }
}

/// The throughput row of one scenario: best and median of [`RUNS`] runs.
fn throughput_row(scenario: Scenario, payload: Payload, partitions: u32, flavor: Flavor) -> Row {
    let n = THROUGHPUT_N;
    let what = match scenario {
        Scenario::Publish => format!(
            "{}, {}: {}",
            payload.name(),
            flavor.name(),
            scenario.describe()
        ),
        _ => format!(
            "{}, {partitions} partition(s), {}: {}",
            payload.name(),
            flavor.name(),
            scenario.describe()
        ),
    };
    let what = format!("{what} ({RUNS} × {n} msgs, each run in a fresh process)");
    let runs: Result<Vec<Duration>, String> = (0..RUNS)
        .map(|_| time_in_child(scenario, payload, partitions, flavor))
        .collect();
    let mut runs = match runs {
        Ok(runs) => runs,
        Err(e) => return Row::new(what, e, ""),
    };
    let (best, median) = rates(n, &mut runs);
    let versus = match (scenario, payload, flavor) {
        (Scenario::EndToEnd, Payload::Raw, Flavor::MultiThread) => format!(
            "target ≥ 1,000,000 msg/s: {}",
            if median >= 1e6 {
                "met (median)"
            } else if best >= 1e6 {
                "met by the best run only"
            } else {
                "not met"
            }
        ),
        _ => String::new(),
    };
    let result = format!(
        "best {} msg/s ({:.0} ns/msg), median {} msg/s ({:.0} ns/msg)",
        thousands(best),
        1e9 / best,
        thousands(median),
        1e9 / median
    );
    Row::new(what, result, versus)
}

/// End-to-end, consume-only and publish-only throughput of every scenario.
fn throughput_rows(rows: &mut Vec<Row>) {
    for flavor in [Flavor::MultiThread, Flavor::CurrentThread] {
        for payload in Payload::ALL {
            for partitions in [1, 4] {
                rows.push(throughput_row(
                    Scenario::EndToEnd,
                    payload,
                    partitions,
                    flavor,
                ));
            }
        }
    }
    for payload in Payload::ALL {
        for partitions in [1, 4] {
            rows.push(throughput_row(
                Scenario::Consume,
                payload,
                partitions,
                Flavor::MultiThread,
            ));
        }
    }
    for payload in Payload::ALL {
        rows.push(throughput_row(
            Scenario::Publish,
            payload,
            1,
            Flavor::MultiThread,
        ));
    }
}

/// `allocations (bytes)` per message of `counts` over `n` messages.
fn per_message(counts: Counts, n: usize) -> String {
    format!(
        "{:.2} allocations ({:.0} bytes)",
        counts.allocations as f64 / n as f64,
        counts.bytes as f64 / n as f64
    )
}

/// Allocations per consumed and per published message.
fn allocation_rows(rows: &mut Vec<Row>) {
    let rt = Flavor::MultiThread.runtime();
    let (small, large) = ALLOC_N;
    let decoded = memory::decode_allocations(large);
    for payload in Payload::ALL {
        for partitions in [1, 4] {
            let a = rt.block_on(memory::consume_allocations(payload, partitions, small));
            let b = rt.block_on(memory::consume_allocations(payload, partitions, large));
            let versus = match payload {
                Payload::Raw => "target ≤ 1; peer: 0".to_owned(),
                Payload::Json => format!(
                    "target ≤ 1 for the dispatch path; decoding the event alone (its 2 Strings): {}",
                    per_message(decoded, large)
                ),
            };
            rows.push(Row::new(
                format!(
                    "{}, {partitions} partition(s): allocations per consumed message (pre-published; {large} − {small} messages)",
                    payload.name()
                ),
                per_message(b.minus(a), large - small),
                versus,
            ));
        }
    }
    for payload in Payload::ALL {
        let counted = rt.block_on(memory::publish_allocations(payload, large));
        rows.push(Row::new(
            format!(
                "{}: allocations per published message ({large} messages)",
                payload.name()
            ),
            per_message(counted, large),
            "",
        ));
    }
}

/// Where callgrind output goes: `ANYBUS_BENCH_CALLGRIND_DIR` (kept) or the temp dir (removed).
fn callgrind_dir() -> (PathBuf, bool) {
    match std::env::var_os("ANYBUS_BENCH_CALLGRIND_DIR") {
        Some(dir) => (PathBuf::from(dir), true),
        None => (std::env::temp_dir(), false),
    }
}

/// What callgrind counted in the measured phase of one run of this binary, and what the run
/// reported it allocated there.
fn instructions(
    phase: Phase,
    payload: Payload,
    partitions: u32,
    n: usize,
) -> Result<(u64, u64), String> {
    let (dir, keep) = callgrind_dir();
    let out_file = dir.join(format!(
        "anybus-callgrind.{}.{}.{partitions}p.{n}.{}",
        phase.arg(),
        payload.arg(),
        std::process::id()
    ));
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let output = Command::new("valgrind")
        .arg("--tool=callgrind")
        .arg("--collect-atstart=no")
        .arg("--toggle-collect=*measured_phase*")
        .arg(format!("--callgrind-out-file={}", out_file.display()))
        .arg(exe)
        .arg("callgrind-run")
        .arg(n.to_string())
        .arg(payload.arg())
        .arg(phase.arg())
        .arg(partitions.to_string())
        .output()
        .map_err(|e| format!("valgrind did not start: {e}"))?;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        let last = stderr.lines().last().unwrap_or_default();
        return Err(format!("valgrind failed: {last}"));
    }
    let text = std::fs::read_to_string(&out_file).map_err(|e| e.to_string())?;
    if !keep {
        let _ = std::fs::remove_file(&out_file);
    }
    let instructions = text
        .lines()
        .find_map(|l| {
            l.strip_prefix("totals:")
                .or_else(|| l.strip_prefix("summary:"))
        })
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .ok_or("no totals in the callgrind output")?;
    let allocations = String::from_utf8_lossy(&output.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("allocations: "))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .ok_or("the run did not report its allocations")?;
    Ok((instructions, allocations))
}

/// Instructions and allocations per message of one phase:
/// (I(large) − I(small)) / (large − small), and the same for allocations.
fn instructions_per_message(
    phase: Phase,
    payload: Payload,
    partitions: u32,
) -> Result<(f64, f64), String> {
    let (small, large) = CALLGRIND_N;
    let (i_small, a_small) = instructions(phase, payload, partitions, small)?;
    let (i_large, a_large) = instructions(phase, payload, partitions, large)?;
    let messages = (large - small) as f64;
    Ok((
        i_large.saturating_sub(i_small) as f64 / messages,
        a_large.saturating_sub(a_small) as f64 / messages,
    ))
}

/// Instructions per consumed and per published message, and per decode of the event.
fn callgrind_rows(rows: &mut Vec<Row>) {
    if Command::new("valgrind").arg("--version").output().is_err() {
        rows.push(Row::new(
            "instructions per message",
            "valgrind is missing: apt-get install -y valgrind",
            "",
        ));
        return;
    }
    let (small, large) = CALLGRIND_N;
    let how = format!("callgrind, ({large} − {small} msgs) / {}", large - small);
    let show = |r: &Result<(f64, f64), String>| match r {
        Ok((i, a)) => format!("{i:.0} instructions ({a:.2} allocations)"),
        Err(e) => e.clone(),
    };
    let decode = instructions_per_message(Phase::Decode, Payload::Json, 1);
    for payload in Payload::ALL {
        for partitions in [1, 4] {
            let consume = instructions_per_message(Phase::Consume, payload, partitions);
            let versus = match (payload, &consume, &decode) {
                (Payload::Raw, _, _) => "peer: ~1,700 per consumed JSON message".to_owned(),
                (Payload::Json, Ok((c, _)), Ok((d, _))) => format!(
                    "peer: ~1,700; of these, serde_json decoding the event: {d:.0}, anybus: {:.0}",
                    c - d
                ),
                (Payload::Json, _, _) => "peer: ~1,700".to_owned(),
            };
            rows.push(Row::new(
                format!(
                    "{}, {partitions} partition(s), current-thread: instructions per consumed message ({how})",
                    payload.name()
                ),
                show(&consume),
                versus,
            ));
        }
    }
    rows.push(Row::new(
        format!("512 B JSON: instructions per decode of the event alone, serde_json::from_slice ({how})"),
        show(&decode),
        "",
    ));
    for payload in Payload::ALL {
        let publish = instructions_per_message(Phase::Publish, payload, 1);
        rows.push(Row::new(
            format!(
                "{}, current-thread: instructions per published message ({how})",
                payload.name()
            ),
            show(&publish),
            "",
        ));
    }
}

/// `bench callgrind-run N raw|json [consume|publish|decode] [PARTITIONS]`.
fn callgrind_run(n: usize, payload: Payload, phase: Phase, partitions: u32) {
    memory::callgrind_run(phase, payload, partitions, n);
}

/// `bench scenario SCENARIO PAYLOAD [PARTITIONS] [FLAVOR] [RUNS]`: runs of one throughput
/// scenario in this process, one line each, for `perf record` and the like.
fn scenario(run: &Run, runs: usize) {
    let rt = run.flavor.runtime();
    let n = THROUGHPUT_N;
    for _ in 0..runs {
        let took = run.scenario.run(&rt, run.payload, run.partitions, n);
        println!(
            "{} {} {} {}: {} msg/s",
            run.scenario.arg(),
            run.payload.arg(),
            run.partitions,
            run.flavor.arg(),
            thousands(n as f64 / took.as_secs_f64())
        );
    }
}

/// What the bench is asked to do: a part of the table, or one of the runs that the table's
/// rows start in a child process (or that a person runs alone, under `perf`).
#[derive(clap::Parser)]
#[command(
    name = "bench",
    about = "anybus against the raw clients: prints a markdown table"
)]
struct Cli {
    /// Which rows to print; none: every row this build has.
    #[command(subcommand)]
    command: Option<Task>,
}

#[derive(clap::Subcommand)]
enum Task {
    /// A part of the table.
    #[command(flatten)]
    Part(Part),
    /// Runs of one throughput scenario in this process, one line each.
    Scenario {
        #[command(flatten)]
        run: Run,
        /// How many runs.
        #[arg(default_value_t = RUNS)]
        runs: usize,
    },
    /// A warm-up run and one timed run; prints its nanoseconds (what a table row runs).
    TimeRun {
        #[command(flatten)]
        run: Run,
    },
    /// One run under callgrind (what an instruction-count row runs).
    CallgrindRun {
        /// Messages.
        #[arg(default_value_t = 1_000)]
        n: usize,
        /// `raw` or `json`.
        #[arg(default_value = "raw", value_parser = parsed(Payload::parse))]
        payload: Payload,
        /// `consume`, `publish` or `decode`.
        #[arg(default_value = "consume", value_parser = parsed(Phase::parse))]
        phase: Phase,
        /// Partitions.
        #[arg(default_value_t = 1)]
        partitions: u32,
    },
    /// Resident memory while messages flow through the embedded broker (see `retention.rs`).
    MemoryRetention {
        /// Its own arguments: messages, and how often to print.
        args: Vec<String>,
    },
    /// Kafka consume runs, for perf (see `kafka.rs`; feature `kafka`).
    KafkaConsume {
        /// Its own arguments: partitions, runs, `anybus` or `raw`.
        args: Vec<String>,
    },
    /// Kafka publish runs, for perf (see `kafka.rs`; feature `kafka`).
    KafkaPublish {
        /// Its own arguments: runs, `anybus` or `raw`.
        args: Vec<String>,
    },
}

/// One throughput scenario's settings, as `time-run` and `scenario` take them.
#[derive(clap::Args)]
struct Run {
    /// `end-to-end`, `consume` or `publish`.
    #[arg(default_value = "end-to-end", value_parser = parsed(Scenario::parse))]
    scenario: Scenario,
    /// `raw` or `json`.
    #[arg(default_value = "raw", value_parser = parsed(Payload::parse))]
    payload: Payload,
    /// Partitions.
    #[arg(default_value_t = 1)]
    partitions: u32,
    /// `multi` or `current`.
    #[arg(default_value = "multi", value_parser = parsed(Flavor::parse))]
    flavor: Flavor,
}

/// A clap value parser from one of the bench's own `parse` functions.
fn parsed<T: Clone + Send + Sync + 'static>(
    parse: fn(&str) -> Option<T>,
) -> impl Fn(&str) -> Result<T, String> + Clone {
    move |s: &str| parse(s).ok_or_else(|| format!("`{s}` is not one of the names this takes"))
}

/// A part of the table.
#[derive(Clone, Copy, PartialEq, Eq, clap::Subcommand)]
enum Part {
    /// The memory backend's rows: throughput, allocations, instructions, ordering, retry, dedup.
    Memory,
    /// The ordering rows (Parallel Consumer's scenario), on memory and Kafka.
    Ordering,
    /// The retry rows, on memory and each broker compiled in.
    Retry,
    /// The dedup rows, with each store compiled in.
    Dedup,
    /// Every Kafka row (feature `kafka`).
    Kafka,
    /// The Kafka rows against raw rdkafka alone (feature `kafka`).
    KafkaVsRaw,
    /// Every RabbitMQ row (feature `rabbitmq`).
    Rabbitmq,
}

/// Whether the rows of a section belonging to `parts` are printed when `asked` was asked for
/// (`None`: the whole table).
fn wants(asked: Option<Part>, parts: &[Part]) -> bool {
    asked.is_none_or(|part| parts.contains(&part))
}

fn main() {
    let cli = <Cli as clap::Parser>::parse();
    let asked = match cli.command {
        None => None,
        Some(Task::Part(part)) => Some(part),
        Some(Task::Scenario { run, runs }) => return scenario(&run, runs),
        Some(Task::TimeRun { run }) => return time_run(&run),
        Some(Task::CallgrindRun {
            n,
            payload,
            phase,
            partitions,
        }) => return callgrind_run(n, payload, phase, partitions),
        Some(Task::MemoryRetention { args }) => return retention::run(&args),
        #[cfg(feature = "kafka")]
        Some(Task::KafkaConsume { args }) => return kafka::consume_runs(&args),
        #[cfg(feature = "kafka")]
        Some(Task::KafkaPublish { args }) => return kafka::publish_runs(&args),
        #[cfg(not(feature = "kafka"))]
        Some(Task::KafkaConsume { .. } | Task::KafkaPublish { .. }) => {
            eprintln!("bench: this needs the `kafka` feature: cargo run --release -p anybus-bench --features kafka -- …");
            std::process::exit(2)
        }
    };
    let mut rows = Vec::new();
    // The ordering rows' plain-tokio times, measured once for every backend.
    let mut baselines = Vec::new();
    if wants(asked, &[Part::Memory]) {
        throughput_rows(&mut rows);
        allocation_rows(&mut rows);
        callgrind_rows(&mut rows);
    }
    if wants(asked, &[Part::Memory, Part::Ordering]) {
        let url = format!(
            "memory://bench-ordering-{}?partitions=1",
            anybus::MessageId::new()
        );
        Flavor::MultiThread.runtime().block_on(ordering::rows(
            "memory",
            &url,
            &url,
            |_| async {},
            &mut baselines,
            &mut rows,
        ));
    }
    #[cfg(feature = "kafka")]
    if wants(asked, &[Part::Kafka, Part::KafkaVsRaw]) {
        kafka::rows(&Flavor::MultiThread.runtime(), &mut rows);
    }
    if wants(asked, &[Part::Memory, Part::Retry]) {
        let url = format!("memory://bench-retry-{}", anybus::MessageId::new());
        Flavor::MultiThread.runtime().block_on(retry::rows(
            "memory",
            &url,
            &url,
            |_| async {},
            100_000,
            3,
            &mut rows,
        ));
    }
    if wants(asked, &[Part::Memory, Part::Dedup]) {
        // Without the features there is no Redis or PostgreSQL row to add.
        #[cfg_attr(not(any(feature = "redis", feature = "postgres")), allow(unused_mut))]
        let mut stores = vec![(
            "the memory dedup store",
            dedup::Store::Url("memory://".into()),
        )];
        #[cfg(feature = "redis")]
        stores.push((
            "the Redis dedup store",
            dedup::Store::Url(
                std::env::var("ANYBUS_REDIS_URL")
                    .unwrap_or_else(|_| "redis://127.0.0.1:6379".into()),
            ),
        ));
        #[cfg(feature = "postgres")]
        {
            let url = std::env::var("ANYBUS_POSTGRES_URL")
                .unwrap_or_else(|_| "postgres://anybus:anybus@127.0.0.1:5432/anybus".into());
            stores.push(("the PostgreSQL dedup store", dedup::Store::Url(url.clone())));
            stores.push((
                "the PostgreSQL store and an inbox transaction per message",
                dedup::Store::Inbox(url),
            ));
        }
        Flavor::MultiThread
            .runtime()
            .block_on(dedup::rows(&stores, 50_000, 3, &mut rows));
    }
    #[cfg(feature = "kafka")]
    if wants(asked, &[Part::Kafka, Part::Retry]) {
        Flavor::MultiThread.runtime().block_on(retry::rows(
            "kafka",
            &kafka::url(),
            &kafka::one_message_batches_url(),
            |topic| async move { kafka::create_topic(&topic, 4).await },
            20_000,
            2,
            &mut rows,
        ));
    }
    #[cfg(feature = "rabbitmq")]
    if wants(asked, &[Part::Rabbitmq, Part::Retry]) {
        Flavor::MultiThread.runtime().block_on(retry::rows(
            "rabbitmq",
            &rabbitmq::url(),
            &rabbitmq::url(),
            |_| async {},
            20_000,
            2,
            &mut rows,
        ));
    }
    #[cfg(feature = "kafka")]
    if wants(asked, &[Part::Kafka, Part::Ordering]) {
        Flavor::MultiThread.runtime().block_on(ordering::rows(
            "kafka",
            &kafka::url(),
            &kafka::one_message_batches_url(),
            |topic| async move { kafka::create_topic(&topic, 1).await },
            &mut baselines,
            &mut rows,
        ));
    }
    #[cfg(feature = "rabbitmq")]
    if wants(asked, &[Part::Rabbitmq]) {
        rabbitmq::rows(&Flavor::MultiThread.runtime(), &mut rows);
    }
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find_map(|l| l.strip_prefix("model name")?.split_once(':'))
                .map(|(_, model)| model.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    println!(
        "anybus bench, memory backend: {cores} cores (nproc), {cpu}; 512-byte payloads; fresh `memory://bench-<uuid>?partitions=P` broker per run\n"
    );
    println!("{TARGETS}\n");
    println!("| measured | result | compared with |");
    println!("| --- | --- | --- |");
    for row in rows {
        println!("| {} | {} | {} |", row.what, row.result, row.versus);
    }
}
