//! `runvisor bench`: how fast runvisor is on this machine, and where the time goes.
//!
//! - [`services`]: the broker (tansu) and database it starts, and the executor process it measures;
//! - [`workload`]: the plans (the peers' no-op steps) and the client that publishes and hears ends;
//! - [`engine`]: the actor runtime alone, and its memory with many runs in flight;
//! - [`bound`]: how fast PostgreSQL absorbs runvisor's writes when nothing else limits them;
//! - [`procstat`]: CPU and memory per component from `/proc`.
//!
//! Every mode prints one JSON line on stdout as it finishes; a table of them follows (human
//! output). Timings are never compared across runs of the command: the machine's other load
//! changes them. `--peer restate` runs `../shared/peers/restate/run.sh` in the same invocation,
//! before runvisor's modes, so the two stand side by side.

pub mod bound;
pub mod dashboard;
pub mod engine;
pub mod procstat;
pub mod services;
pub mod workload;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde_json::{Value, json};

use crate::cli::output::{Format, Out};
use services::{BenchDatabase, ExecutorProcess, Tansu};
use workload::{Client, Percentiles, Shape, round3};

pub const HELP: &str = "\
Examples:
  runvisor bench                                   # every mode at full size (PostgreSQL on 127.0.0.1)
  runvisor bench --modes latency --latency-runs 100
  runvisor bench --peer restate                    # Restate on the same workload, same invocation
  runvisor bench --executor-env RUNVISOR__PERSISTENCE__BATCH_MAX=64

Modes: throughput (3 steps), throughput-10 (10 steps), throughput-par8 (parallel block of 8),
latency (one run at a time), bound (PostgreSQL's rate for runvisor's writes), engine (the actor
runtime alone), memory (resident memory with many runs in flight).

Needs tansu (or --brokers) and PostgreSQL (--postgres-admin-url, or --database-url).";

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Modes to run, comma-separated (default: all).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "throughput,throughput-10,throughput-par8,latency,bound,engine,memory"
    )]
    modes: Vec<String>,
    /// Runs published at once by each throughput mode.
    #[arg(long, default_value_t = 10_000)]
    runs: usize,
    /// Runs made one at a time by the latency mode.
    #[arg(long, default_value_t = 500)]
    latency_runs: usize,
    /// Runs of the engine mode.
    #[arg(long, default_value_t = 50_000)]
    engine_runs: usize,
    /// Runs in the database for the dashboard mode (with three attempts each).
    #[arg(long, default_value_t = 100_000)]
    dashboard_runs: i64,
    /// Runs in flight at once in the memory mode.
    #[arg(long, default_value_t = 100_000)]
    memory_runs: usize,
    /// A broker to use instead of starting tansu.
    #[arg(long)]
    brokers: Option<String>,
    /// A database to use as it is (not created, not dropped) instead of a fresh one.
    #[arg(long)]
    database_url: Option<String>,
    /// Where a fresh database `runvisor_bench_<pid>` is created (and dropped afterwards).
    #[arg(long, env = "RUNVISOR_BENCH_POSTGRES", default_value = "postgres://postgres@127.0.0.1:5432/postgres")]
    postgres_admin_url: String,
    /// KEY=VALUE settings for the measured executor, e.g. RUNVISOR__PERSISTENCE__FLUSH_INTERVAL_MS=0.
    #[arg(long, value_name = "KEY=VALUE")]
    executor_env: Vec<String>,
    /// A TOML file for the measured executor (`--config`), e.g. with [kafka.properties].
    #[arg(long, value_name = "FILE")]
    executor_config: Option<PathBuf>,
    /// Also run a peer engine on the same workload first (`restate`: ../shared/peers/restate/run.sh).
    #[arg(long)]
    peer: Option<String>,
    /// Where the peers' scripts are.
    #[arg(long, default_value = "../shared/peers")]
    peers_dir: PathBuf,
}

impl Args {
    fn wants(&self, mode: &str) -> bool {
        self.modes.iter().any(|m| m == mode)
    }
}

/// The broker modes, with the plan shape each measures.
fn broker_modes() -> [(&'static str, Shape); 3] {
    [
        ("throughput", Shape::Sequence(3)),
        ("throughput-10", Shape::Sequence(10)),
        ("throughput-par8", Shape::Parallel(8)),
    ]
}

/// Every mode; `dashboard` (page timings over a large history) only when asked for.
const ALL_MODES: [&str; 8] =
    ["throughput", "throughput-10", "throughput-par8", "latency", "bound", "engine", "memory", "dashboard"];

pub async fn bench(out: Out, args: Args) -> anyhow::Result<()> {
    if let Some(unknown) = args.modes.iter().find(|m| !ALL_MODES.contains(&m.as_str())) {
        bail!("--modes: unknown mode '{unknown}'; the modes are {}", ALL_MODES.join(", "));
    }
    let wants = |mode: &str| args.wants(mode);
    let mut lines: Vec<Value> = Vec::new();
    let mut emit = |line: Value| {
        println!("{line}");
        lines.push(line);
    };
    emit(machine());

    if let Some(peer) = &args.peer {
        for line in run_peer(&args, peer)? {
            emit(line);
        }
    }

    let needs_services = broker_modes().iter().any(|(m, _)| wants(m)) || wants("latency") || wants("bound");
    if needs_services {
        let tansu = match &args.brokers {
            Some(_) => None,
            None => Some(Tansu::start().await?),
        };
        let brokers = args.brokers.clone().unwrap_or_else(|| tansu.as_ref().map(Tansu::brokers).unwrap_or_default());
        let database = match &args.database_url {
            Some(url) => BenchDatabase::given(url).await?,
            None => BenchDatabase::create(&args.postgres_admin_url).await?,
        };
        let result = measure_on_services(&args, &brokers, tansu.as_ref(), &database, &mut emit).await;
        database.drop_database().await;
        result?;
    }
    if wants("engine") {
        let mut figures = Vec::new();
        for shape in [Shape::Sequence(3), Shape::Parallel(8)] {
            let measured = engine::throughput(shape, args.engine_runs, 1000).await?;
            figures.push(json!({"plan": shape.label(), "figures": measured}));
        }
        emit(json!({"engine": "runvisor", "mode": "engine", "results": figures}));
    }
    if wants("dashboard") {
        let database = match &args.database_url {
            Some(url) => BenchDatabase::given(url).await?,
            None => BenchDatabase::create(&args.postgres_admin_url).await?,
        };
        let result = dashboard::measure(&database, args.dashboard_runs).await;
        database.drop_database().await;
        emit(result?);
    }
    if wants("memory") {
        let figures = engine::memory(args.memory_runs).await?;
        emit(json!({"engine": "runvisor", "mode": "memory", "figures": figures}));
    }
    if out.format == Format::Human {
        eprintln!("\n{}", table(&lines));
        if let Some(split) = lines.iter().find_map(latency_split) {
            eprintln!("{split}");
        }
    }
    Ok(())
}

/// The latency mode's split at the claim, in one sentence under the table.
fn latency_split(line: &Value) -> Option<String> {
    if line.get("engine")?.as_str()? != "runvisor" || line.get("mode")?.as_str()? != "latency" {
        return None;
    }
    let ms = |v: &Value| v.as_f64().map_or("–".into(), |x| format!("{x:.1}"));
    let tail = &line["slowest_1pct"];
    Some(format!(
        "latency split at the claim: publish → claim p50 {} / p99 {} ms, claim → COMPLETED p50 {} / p99 {} ms; \
         the slowest 1 % of runs (n = {}, {} ms on average) spent {} ms before the claim and {} ms after it",
        ms(&line["publish_to_claim"]["p50_ms"]),
        ms(&line["publish_to_claim"]["p99_ms"]),
        ms(&line["claim_to_completed"]["p50_ms"]),
        ms(&line["claim_to_completed"]["p99_ms"]),
        tail["runs"],
        ms(&tail["latency_ms"]),
        ms(&tail["publish_to_claim_ms"]),
        ms(&tail["claim_to_completed_ms"]),
    ))
}

/// The modes that need the broker and the database, against one executor process.
async fn measure_on_services(
    args: &Args,
    brokers: &str,
    tansu: Option<&Tansu>,
    database: &BenchDatabase,
    emit: &mut impl FnMut(Value),
) -> anyhow::Result<()> {
    let wants = |mode: &str| args.wants(mode);
    let config = crate::config::Config::defaults();
    let group = format!("runvisor-bench-{}", std::process::id());
    let mut env: Vec<(String, String)> = vec![
        ("RUNVISOR__KAFKA__BROKERS".into(), brokers.into()),
        ("RUNVISOR__DATABASE__URL".into(), database.url.clone()),
        ("RUNVISOR__KAFKA__GROUP_ID".into(), group.clone()),
        ("RUNVISOR__EXECUTOR__OWNER_ID".into(), format!("{group}-executor")),
    ];
    for setting in &args.executor_env {
        let Some((key, value)) = setting.split_once('=') else {
            bail!("--executor-env: '{setting}' is not KEY=VALUE");
        };
        env.push((key.into(), value.into()));
    }
    // The executor would migrate too; the trigger that times runs needs the tables first.
    database.prepare().await?;
    let binary = std::env::current_exe().context("cannot find this program to start the executor")?;
    let log = std::env::temp_dir().join(format!("{group}-executor.log"));
    let mut executor = ExecutorProcess::start(&binary, args.executor_config.as_deref(), &env, &log)?;
    eprintln!(
        "bench: executor pid {} (log {}), broker {brokers}, database {}",
        executor.pid(),
        log.display(),
        crate::db::redact(&database.url)
    );

    let components = Components { executor: executor.pid(), broker: tansu.map(Tansu::pid), database };
    let topic = &config.kafka.requests_topic;
    let mut client = Client::connect(brokers, topic, &database.url, 5).await?;
    warm_up(&mut client, &mut executor).await?;

    let mut bound_rows_per_s = None;
    if wants("bound") {
        let figures = bound::bound(&database.url, args.runs.min(5_000), 3).await?;
        bound_rows_per_s = Some(figures.rows_per_s);
        emit(json!({"engine": "runvisor", "mode": "bound", "plan": Shape::Sequence(3).label(), "figures": figures}));
    }
    for (mode, shape) in broker_modes() {
        if wants(mode) {
            let line = throughput(&mut client, &components, mode, shape, args.runs, bound_rows_per_s).await?;
            executor.check_alive()?;
            emit(line);
        }
    }
    if wants("latency") {
        drop(client);
        let mut client = Client::connect(brokers, topic, &database.url, 0).await?;
        warm_up(&mut client, &mut executor).await?;
        let line = latency(&mut client, &components, args.latency_runs).await?;
        executor.check_alive()?;
        emit(line);
    }
    executor.stop();
    Ok(())
}

/// The processes whose CPU is counted, by component.
struct Components<'a> {
    executor: u32,
    broker: Option<u32>,
    database: &'a BenchDatabase,
}

#[derive(Debug, Clone, Copy)]
struct CpuSample {
    executor: f64,
    broker: f64,
    database: f64,
    client: f64,
}

impl Components<'_> {
    async fn sample(&self) -> CpuSample {
        CpuSample {
            executor: procstat::cpu_seconds(&[self.executor]),
            broker: self.broker.map_or(0.0, |pid| procstat::cpu_seconds(&[pid])),
            database: procstat::cpu_seconds(&self.database.pids().await),
            client: procstat::cpu_seconds(&[std::process::id()]),
        }
    }

    /// CPU milliseconds per run between two samples, by component.
    fn per_run(before: CpuSample, after: CpuSample, runs: usize) -> Value {
        let ms = |a: f64, b: f64| round3((b - a) * 1000.0 / runs.max(1) as f64);
        json!({
            "executor": ms(before.executor, after.executor),
            "broker": ms(before.broker, after.broker),
            "postgres": ms(before.database, after.database),
            "client": ms(before.client, after.client),
        })
    }
}

/// The first run also waits for the executor to join its group and the topics to exist.
async fn warm_up(client: &mut Client, executor: &mut ExecutorProcess) -> anyhow::Result<()> {
    let run_id = format!("warm-up-{}", uuid::Uuid::now_v7());
    let deadline = Instant::now() + Duration::from_secs(120);
    // The requests topic may not exist until the executor created it: publishing retries until then.
    loop {
        executor.check_alive()?;
        match client.publish(&run_id, &Shape::Sequence(3).plan(), 0).await {
            Ok(()) => break,
            Err(_) if Instant::now() < deadline => tokio::task::yield_now().await,
            Err(error) => return Err(error.context("cannot publish the warm-up run")),
        }
    }
    let ended = client.ended(&run_id, Duration::from_secs(120)).await?;
    if ended.status != "COMPLETED" {
        bail!("the warm-up run ended {}", ended.status);
    }
    Ok(())
}

async fn throughput(
    client: &mut Client,
    components: &Components<'_>,
    mode: &str,
    shape: Shape,
    runs: usize,
    bound_rows_per_s: Option<f64>,
) -> anyhow::Result<Value> {
    let plan = shape.plan();
    let prefix = format!("{mode}-{}", uuid::Uuid::now_v7());
    let before = components.sample().await;
    let started = Instant::now();
    let mut published_at = std::collections::HashMap::with_capacity(runs);
    let mut deliveries = tokio::task::JoinSet::new();
    for i in 0..runs {
        let run_id = format!("{prefix}-{i}");
        deliveries.spawn(client.publish(&run_id, &plan, i));
        published_at.insert(run_id, Instant::now());
    }
    while let Some(delivered) = deliveries.join_next().await {
        delivered??;
    }
    let publish_s = started.elapsed().as_secs_f64();
    let (mut latencies, mut failed, mut last) = (Vec::with_capacity(runs), 0usize, started);
    while latencies.len() + failed < runs {
        let (run_id, ended) = client.next_end(Duration::from_secs(300)).await?;
        let Some(at) = published_at.remove(&run_id) else { continue };
        if ended.status == "COMPLETED" {
            latencies.push(ended.at - at);
        } else {
            failed += 1;
        }
        last = last.max(ended.at);
    }
    let after = components.sample().await;
    let wall = (last - started).as_secs_f64();
    let calls = runs * shape.calls();
    let rows_per_s = (runs * bound::rows_per_run(shape.calls())) as f64 / wall;
    Ok(json!({
        "engine": "runvisor", "mode": mode, "plan": shape.label(), "n": runs, "failed": failed,
        "wall_s": round3(wall), "publish_s": round3(publish_s),
        "runs_per_s": (runs as f64 / wall).round(), "calls_per_s": (calls as f64 / wall).round(),
        "latency_under_load": Percentiles::of(&mut latencies),
        "cpu_ms_per_run": Components::per_run(before, after, runs),
        "row_writes_per_s": rows_per_s.round(),
        "share_of_bound": bound_rows_per_s.map(|bound| round3(rows_per_s / bound)),
    }))
}

async fn latency(client: &mut Client, components: &Components<'_>, runs: usize) -> anyhow::Result<Value> {
    let shape = Shape::Sequence(3);
    let plan = shape.plan();
    let prefix = format!("latency-{}", uuid::Uuid::now_v7());
    let before = components.sample().await;
    let started = Instant::now();
    let mut measured = Vec::with_capacity(runs);
    for i in 0..runs {
        let run_id = format!("{prefix}-{i}");
        // The wall clock as well as the monotonic one: the executor's timestamps in the run's row
        // are wall-clock, and the split below compares them with the publish (same machine).
        let (at, published) = (Instant::now(), epoch_seconds());
        client.publish(&run_id, &plan, i).await?;
        let ack = at.elapsed();
        let ended = client.ended(&run_id, Duration::from_secs(60)).await?;
        if ended.status != "COMPLETED" {
            bail!("latency run {run_id} ended {}", ended.status);
        }
        measured.push(Measured { run_id, published, ack, latency: ended.at - at });
    }
    let wall = started.elapsed().as_secs_f64();
    let after = components.sample().await;
    let times = components.database.run_times(&format!("{prefix}-%")).await?;
    let split = LatencySplit::of(&measured, &times);
    let mut latencies: Vec<Duration> = measured.iter().map(|m| m.latency).collect();
    let mut acks: Vec<Duration> = measured.iter().map(|m| m.ack).collect();
    Ok(json!({
        "engine": "runvisor", "mode": "latency", "plan": shape.label(), "n": runs, "wall_s": round3(wall),
        "latency": Percentiles::of(&mut latencies),
        "broker_ack": Percentiles::of(&mut acks),
        "publish_to_claim": Percentiles::of(&mut split.each(|p| p.0)),
        "claim_to_completed": Percentiles::of(&mut split.each(|p| p.1)),
        "slowest_1pct": split.slowest(&measured),
        "cpu_ms_per_run": Components::per_run(before, after, runs),
    }))
}

/// One latency run as the client saw it.
struct Measured {
    run_id: String,
    /// Wall-clock seconds since the epoch at the publish.
    published: f64,
    ack: Duration,
    /// Publish → the COMPLETED commit's notification.
    latency: Duration,
}

/// Each run's latency cut at its claim: before it, the request was in the producer, the broker and
/// the executor's consumer; after it, in the executor and PostgreSQL. Per run, so that the tail can
/// be attributed (the p99 of two parts does not add up to the p99 of the whole).
struct LatencySplit {
    /// Publish → claim and claim → end, index-aligned with the measured runs; `None` for a run
    /// whose row was not found.
    parts: Vec<Option<(Duration, Duration)>>,
}

impl LatencySplit {
    fn of(measured: &[Measured], times: &std::collections::HashMap<String, services::RunTimes>) -> LatencySplit {
        let seconds = |s: f64| Duration::from_secs_f64(s.max(0.0));
        let parts = measured
            .iter()
            .map(|m| times.get(&m.run_id).map(|t| (seconds(t.claimed - m.published), seconds(t.ended - t.claimed))))
            .collect();
        LatencySplit { parts }
    }

    /// One part of every run whose row was found.
    fn each(&self, part: fn(&(Duration, Duration)) -> Duration) -> Vec<Duration> {
        self.parts.iter().flatten().map(part).collect()
    }

    /// The mean of each part over the slowest 1 % of runs (at least one): where the tail's time went.
    fn slowest(&self, measured: &[Measured]) -> Value {
        let mut order: Vec<usize> = (0..measured.len()).filter(|&i| self.parts[i].is_some()).collect();
        order.sort_unstable_by_key(|&i| std::cmp::Reverse(measured[i].latency));
        let tail = &order[..order.len().div_ceil(100).min(order.len())];
        if tail.is_empty() {
            return Value::Null;
        }
        let mean = |part: fn(&(Duration, Duration)) -> Duration| {
            let total: Duration = tail.iter().filter_map(|&i| self.parts[i].as_ref()).map(part).sum();
            round3(total.as_secs_f64() * 1000.0 / tail.len() as f64)
        };
        let latency: Duration = tail.iter().map(|&i| measured[i].latency).sum();
        json!({
            "runs": tail.len(),
            "latency_ms": round3(latency.as_secs_f64() * 1000.0 / tail.len() as f64),
            "publish_to_claim_ms": mean(|p| p.0),
            "claim_to_completed_ms": mean(|p| p.1),
        })
    }
}

fn epoch_seconds() -> f64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_secs_f64()
}

/// The machine, so a line read later says where it was measured.
fn machine() -> Value {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model =
        cpuinfo.lines().find_map(|l| l.strip_prefix("model name")).map(|l| l.trim_start_matches([' ', '\t', ':']));
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    json!({
        "machine": {
            "cpus": std::thread::available_parallelism().map(usize::from).unwrap_or(1),
            "cpu_model": model,
            "memory_mb": procstat::memory_total_mb(),
            "loadavg_1m": load.split_whitespace().next(),
            "runvisor": env!("CARGO_PKG_VERSION"),
        }
    })
}

/// Runs a peer's script on the same workload and returns its JSON lines.
fn run_peer(args: &Args, peer: &str) -> anyhow::Result<Vec<Value>> {
    let script = args.peers_dir.join(peer).join("run.sh");
    if !script.exists() {
        bail!("--peer {peer}: no script at {} (give --peers-dir)", script.display());
    }
    eprintln!("bench: running {} (N_THROUGHPUT={}, N_LATENCY={})", script.display(), args.runs, args.latency_runs);
    let output = std::process::Command::new("bash")
        .arg(&script)
        .env("N_THROUGHPUT", args.runs.to_string())
        .env("N_LATENCY", args.latency_runs.to_string())
        .stderr(std::process::Stdio::inherit())
        .output()
        .with_context(|| format!("cannot run {}", script.display()))?;
    if !output.status.success() {
        bail!("{} failed ({})", script.display(), output.status);
    }
    let lines: Vec<Value> = String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .filter(|line| line.get("peer").is_some())
        .collect();
    if lines.is_empty() {
        bail!("{} printed no result line", script.display());
    }
    Ok(lines)
}

/// One row per line: the figures people compare.
fn table(lines: &[Value]) -> String {
    let mut rows = vec![
        ["engine", "mode", "runs/s", "calls/s", "p50 ms", "p99 ms", "exec ms/run", "broker ms/run", "pg ms/run"]
            .map(String::from),
    ];
    let num = |v: &Value| match v {
        Value::Number(n) => n.to_string(),
        _ => "–".into(),
    };
    for line in lines {
        if let Some(peer) = line.get("peer").and_then(Value::as_str) {
            let runs = line.get("n").and_then(Value::as_f64).unwrap_or(0.0);
            let per_run = |key: &str| {
                line.get(key)
                    .and_then(Value::as_f64)
                    .map_or("–".into(), |s| format!("{:.3}", s * 1000.0 / runs.max(1.0)))
            };
            rows.push([
                peer.to_string(),
                line["mode"].as_str().unwrap_or("").to_string(),
                num(&line["runs_per_s"]),
                num(&line["steps_per_s"]),
                num(&line["p50_ms"]),
                num(&line["p99_ms"]),
                per_run("worker_cpu_s"),
                "–".into(),
                per_run("server_cpu_s"),
            ]);
            continue;
        }
        let Some(mode) = line.get("mode").and_then(Value::as_str) else { continue };
        if mode == "dashboard" {
            continue; // page timings, not run figures: its JSON line has them
        }
        let latency = line.get("latency").or_else(|| line.get("latency_under_load")).cloned().unwrap_or(Value::Null);
        let cpu = line.get("cpu_ms_per_run").cloned().unwrap_or(Value::Null);
        let (runs_per_s, calls_per_s) = match mode {
            "engine" => {
                (num(&line["results"][0]["figures"]["runs_per_s"]), num(&line["results"][0]["figures"]["calls_per_s"]))
            }
            "bound" => ("–".into(), format!("{} rows/s", num(&line["figures"]["rows_per_s"]))),
            "memory" => ("–".into(), format!("{} B/run", num(&line["figures"]["bytes_per_run"]))),
            _ => (num(&line["runs_per_s"]), num(&line["calls_per_s"])),
        };
        rows.push([
            "runvisor".into(),
            mode.into(),
            runs_per_s,
            calls_per_s,
            num(&latency["p50_ms"]),
            num(&latency["p99_ms"]),
            num(&cpu["executor"]),
            num(&cpu["broker"]),
            num(&cpu["postgres"]),
        ]);
    }
    let widths: Vec<usize> =
        (0..rows[0].len()).map(|c| rows.iter().map(|r| r[c].chars().count()).max().unwrap_or(0)).collect();
    rows.iter()
        .map(|row| {
            row.iter()
                .zip(&widths)
                .map(|(cell, width)| format!("{cell:<width$}"))
                .collect::<Vec<_>>()
                .join("  ")
                .trim_end()
                .to_string()
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The tail is attributed run by run: the slowest runs' own parts, not the parts' percentiles.
    #[test]
    fn the_slowest_runs_are_split_at_their_own_claims() {
        let mut measured = Vec::new();
        let mut times = std::collections::HashMap::new();
        for i in 0..200 {
            // Every run takes 10 ms, 4 of them before the claim; runs 7 and 9 wait 40 ms for it.
            let before_claim = if i == 7 || i == 9 { 0.040 } else { 0.004 };
            let published = 1_000.0 + i as f64;
            let run_id = format!("r{i}");
            let latency = Duration::from_secs_f64(before_claim + 0.006);
            times.insert(
                run_id.clone(),
                services::RunTimes { claimed: published + before_claim, ended: published + before_claim + 0.006 },
            );
            measured.push(Measured { run_id, published, ack: Duration::ZERO, latency });
        }
        let split = LatencySplit::of(&measured, &times);
        let tail = split.slowest(&measured);
        assert_eq!(tail["runs"], 2);
        assert!((tail["publish_to_claim_ms"].as_f64().unwrap() - 40.0).abs() < 0.01, "{tail}");
        assert!((tail["claim_to_completed_ms"].as_f64().unwrap() - 6.0).abs() < 0.01, "{tail}");
        assert_eq!(split.each(|p| p.0).len(), 200);
    }
}
