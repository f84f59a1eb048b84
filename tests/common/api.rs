//! An executor and the HTTP API in one test process, on a real listener on 127.0.0.1, with the
//! embedded broker: what the API tests talk to with a real HTTP client.

use std::time::Duration;

use reqwest::{Method, StatusCode};
use runvisor::Config;
use runvisor::kafka::Broker;
use runvisor::modes::{ApiServer, ExecutorNode};
use serde_json::Value;

use super::{TestDb, test_config};

pub struct TestApi {
    pub base: String,
    pub client: reqwest::Client,
    pub config: Config,
    pub db: TestDb,
    server: Option<ApiServer>,
    node: Option<ExecutorNode>,
    pub broker: Broker,
}

/// A response: status, headers and the body as JSON (`null` when it is not JSON).
pub struct Answer {
    pub status: StatusCode,
    pub headers: reqwest::header::HeaderMap,
    pub body: Value,
    pub text: String,
}

impl std::fmt::Debug for Answer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.status, self.text)
    }
}

impl TestApi {
    /// Starts the executor and the API on `db` with `configure` applied to the test config.
    pub async fn start(db: TestDb, configure: impl FnOnce(&mut Config)) -> TestApi {
        let db = db.migrated().await;
        let mut config = test_config();
        config.database = db.config.clone();
        config.api.listen = "127.0.0.1:0".into();
        config.outbox.grace_ms = 200;
        configure(&mut config);
        let broker = Broker::start(&config.kafka).expect("the embedded broker starts");
        let node = ExecutorNode::start(&config, &broker, db.db.clone()).await.expect("the executor starts");
        let server = ApiServer::start(&config, db.db.clone(), &broker).await.expect("the API starts");
        TestApi {
            base: format!("http://{}", server.addr()),
            // Deadlines on every request, so a server that stops answering fails the test with
            // a message instead of stalling CI (the callers' polling deadlines cannot fire while
            // one request hangs). A per-read timeout, not a total one: event streams stay open.
            client: reqwest::Client::builder()
                .connect_timeout(Duration::from_secs(10))
                .read_timeout(Duration::from_secs(60))
                .build()
                .expect("an HTTP client"),
            config,
            db,
            server: Some(server),
            node: Some(node),
            broker,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// `path` under the API prefix (`/api/v1`).
    pub fn api(&self, path: &str) -> String {
        format!("{}{}{path}", self.base, self.config.api.prefix)
    }

    pub async fn send(&self, method: Method, url: &str, body: Option<&Value>) -> Answer {
        let mut request = self.client.request(method.clone(), url);
        if let Some(body) = body {
            request = request.json(body);
        }
        let response = request.send().await.unwrap_or_else(|e| panic!("{method} {url}: {e}"));
        let status = response.status();
        let headers = response.headers().clone();
        let text = response.text().await.unwrap();
        let body = serde_json::from_str(&text).unwrap_or(Value::Null);
        Answer { status, headers, body, text }
    }

    pub async fn get(&self, path: &str) -> Answer {
        self.send(Method::GET, &self.api(path), None).await
    }

    pub async fn post(&self, path: &str, body: &Value) -> Answer {
        self.send(Method::POST, &self.api(path), Some(body)).await
    }

    pub async fn put(&self, path: &str, body: &Value) -> Answer {
        self.send(Method::PUT, &self.api(path), Some(body)).await
    }

    pub async fn delete(&self, path: &str) -> Answer {
        self.send(Method::DELETE, &self.api(path), None).await
    }

    /// Polls `/runs/{id}` (and its steps, as the platform's UI does) every 200 ms until `done`
    /// holds for the run; fails after `within`.
    pub async fn poll_run(&self, run_id: &str, within: Duration, done: impl Fn(&Value) -> bool) -> (Value, Vec<Value>) {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let run = self.get(&format!("/runs/{run_id}")).await;
            assert_eq!(run.status, StatusCode::OK, "{run:?}");
            let steps = self.get(&format!("/runs/{run_id}/steps")).await;
            assert_eq!(steps.status, StatusCode::OK, "{steps:?}");
            let steps = steps.body.as_array().cloned().expect("steps are a bare array");
            if done(&run.body) {
                return (run.body, steps);
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "run {run_id} did not get there in {within:?}: {}",
                run.text
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Polls until the run's status is terminal.
    pub async fn until_terminal(&self, run_id: &str) -> (Value, Vec<Value>) {
        self.poll_run(run_id, Duration::from_secs(60), |run| {
            matches!(run["status"].as_str(), Some("COMPLETED" | "FAILED" | "CANCELLED"))
        })
        .await
    }

    /// Stops the API, then the executor.
    pub async fn stop(mut self) {
        if let Some(server) = self.server.take() {
            server.stop().await;
        }
        if let Some(node) = self.node.take() {
            node.stop(&self.config).await;
        }
    }
}
