//! The `dashboard` mode: how long each dashboard page takes with a large history in PostgreSQL.
//!
//! It fills a fresh database in bulk (SQL `generate_series`, seconds, not an executor's hours):
//! `runs` runs over 20 workflows, 90 % COMPLETED, 8 % FAILED, 2 % RUNNING, three attempts each (a
//! failed run's last attempt FAILED after two retries), plus one run of 1,000 attempts (a long loop).
//! Then it serves the API in this process (embedded broker: nothing is executed) and times each
//! page over HTTP, as a browser would ask for it, taking the median of several requests.

use std::time::{Duration, Instant};

use anyhow::Context;
use serde_json::{Value, json};

use super::services::BenchDatabase;
use crate::config::Config;
use crate::kafka::Broker;
use crate::modes::ApiServer;

/// Requests per page; the median is reported.
const SAMPLES: usize = 7;
/// Attempts of the one long run.
const LONG_RUN_ATTEMPTS: i64 = 1_000;

pub async fn measure(database: &BenchDatabase, runs: i64) -> anyhow::Result<Value> {
    database.prepare().await?;
    let mut config = Config::defaults();
    config.database.url = database.url.clone();
    config.api.listen = "127.0.0.1:0".into();
    let db = crate::db::connect(&config.database).await?;
    let seeded = Instant::now();
    seed(&db, runs).await?;
    let seed_s = seeded.elapsed().as_secs_f64();

    let broker = Broker::start(&config.kafka).context("the embedded broker")?;
    let server = ApiServer::start(&config, db.clone(), &broker).await?;
    let base = format!("http://{}", server.addr());
    let client = reqwest::Client::new();
    let pages = [
        ("runs", "/ui/runs".to_string()),
        ("runs_failed", "/ui/runs?status=FAILED".to_string()),
        ("runs_workflow", "/ui/runs?workflow=workflow-7".to_string()),
        ("runs_page_100", "/ui/runs?page=100".to_string()),
        ("run_3_attempts", "/ui/runs/bench-run-5".to_string()),
        ("run_1000_attempts", "/ui/runs/bench-long-run".to_string()),
        ("agents", "/ui/agents".to_string()),
        ("system", "/ui/system".to_string()),
    ];
    let mut timings = serde_json::Map::new();
    for (name, path) in pages {
        let mut samples = Vec::with_capacity(SAMPLES);
        for _ in 0..SAMPLES {
            let started = Instant::now();
            let response = client.get(format!("{base}{path}")).header("accept", "text/html").send().await?;
            let status = response.status();
            let body = response.bytes().await?;
            anyhow::ensure!(status.is_success(), "{path} answered {status}");
            samples.push((started.elapsed(), body.len()));
        }
        samples.sort();
        let (median, bytes) = samples[SAMPLES / 2];
        timings.insert(name.into(), json!({"path": path, "median_ms": ms(median), "bytes": bytes}));
    }
    server.stop().await;
    db.close().await?;
    Ok(json!({
        "engine": "runvisor",
        "mode": "dashboard",
        "runs": runs,
        "attempts": runs * 3 + LONG_RUN_ATTEMPTS,
        "seed_s": (seed_s * 10.0).round() / 10.0,
        "samples": SAMPLES,
        "pages": timings,
    }))
}

fn ms(duration: Duration) -> f64 {
    (duration.as_secs_f64() * 10_000.0).round() / 10.0
}

/// Fills the tables in a few statements.
async fn seed(db: &sea_orm::DatabaseConnection, runs: i64) -> anyhow::Result<()> {
    use sea_orm::ConnectionTrait;
    let statements = [
        format!(
            "INSERT INTO workflow_runs (run_id, workflow_id, workflow_name, status, input_data, triggered_by,
                 created_at, updated_at, completed_at, error_message, owner_id)
             SELECT 'bench-run-' || i, 'wf-' || (i % 20), 'workflow-' || (i % 20),
                 CASE WHEN i % 50 = 1 THEN 'RUNNING' WHEN i % 12 = 0 THEN 'FAILED' ELSE 'COMPLETED' END,
                 jsonb_build_object('order', i), 'bench',
                 t, t + interval '2 seconds',
                 CASE WHEN i % 50 = 1 THEN NULL ELSE t + interval '2 seconds' END,
                 CASE WHEN i % 12 = 0 AND i % 50 <> 1 THEN 'Step ''c'' (agent: fail) failed: declined (attempt 3 of 3)' END,
                 CASE WHEN i % 50 = 1 THEN 'bench-executor-' || (i % 3) END
             FROM generate_series(1, {runs}) AS i,
                 LATERAL (SELECT (now() AT TIME ZONE 'utc') - (i * interval '1 second') AS t) AS times"
        ),
        "INSERT INTO step_executions (id, run_id, step_id, step_name, agent_name, status, input_data, output_data,
                 started_at, completed_at, error_message, attempt)
             SELECT r.run_id || '/' || s.step, r.run_id, s.step, s.agent, s.agent,
                 CASE WHEN r.status = 'RUNNING' AND s.n = 3 THEN 'RUNNING'
                      WHEN r.status = 'FAILED' AND s.n = 3 THEN 'FAILED' ELSE 'COMPLETED' END,
                 r.input_data, CASE WHEN r.status = 'COMPLETED' OR s.n < 3 THEN r.input_data END,
                 r.created_at + (s.n * interval '500 milliseconds'),
                 CASE WHEN r.status = 'RUNNING' AND s.n = 3 THEN NULL
                      ELSE r.created_at + (s.n * interval '500 milliseconds') + interval '120 milliseconds' END,
                 CASE WHEN r.status = 'FAILED' AND s.n = 3 THEN 'declined' END,
                 1
             FROM workflow_runs r,
                 (VALUES (1, 'a', 'echo'), (2, 'b', 'sleep'), (3, 'c', 'fail')) AS s(n, step, agent)"
            .to_string(),
        "INSERT INTO workflow_runs (run_id, workflow_id, workflow_name, status, input_data, created_at, updated_at)
             VALUES ('bench-long-run', 'wf-long', 'long-loop', 'RUNNING', '{}',
                 (now() AT TIME ZONE 'utc') - interval '10 minutes', (now() AT TIME ZONE 'utc') - interval '10 minutes')"
            .to_string(),
        format!(
            "INSERT INTO step_executions (id, run_id, step_id, step_name, agent_name, status, input_data, output_data,
                 started_at, completed_at, parent_step_id, loop_iteration_index, attempt)
             SELECT 'bench-long-run/' || i, 'bench-long-run', 'body', 'echo', 'echo', 'COMPLETED',
                 jsonb_build_object('item', i), jsonb_build_object('item', i),
                 (now() AT TIME ZONE 'utc') - interval '10 minutes' + i * interval '300 milliseconds',
                 (now() AT TIME ZONE 'utc') - interval '10 minutes' + i * interval '300 milliseconds' + interval '200 milliseconds',
                 'each', i, 1
             FROM generate_series(0, {}) AS i",
            LONG_RUN_ATTEMPTS - 1
        ),
        "ANALYZE".to_string(),
    ];
    for statement in statements {
        db.execute_unprepared(&statement).await.with_context(|| format!("seeding: {statement}"))?;
    }
    Ok(())
}
