//! HTTP agents against a real HTTP server started in each test: both protocols, headers, the
//! retryable/permanent split, time-outs, malformed replies, and the circuit breaker.

mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use axum::{Json, Router};
use common::{TestDb, plan, request, test_config};
use entity::{RunStatus, StepStatus};
use runvisor::agents::breaker::BreakerState;
use runvisor::agents::{AgentRegistry, CallContext, StepFailure};
use runvisor::config::{AgentConfig, AgentProtocol, AuthType, CircuitBreakerConfig, Config};
use serde_json::{Value, json};

/// What the server saw: hits per path, and the headers of the last request.
#[derive(Default, Clone)]
struct Seen {
    hits: Arc<Mutex<HashMap<String, usize>>>,
    headers: Arc<Mutex<Option<HeaderMap>>>,
    bodies: Arc<Mutex<Vec<Value>>>,
}

impl Seen {
    fn hit(&self, path: &str, headers: HeaderMap, body: Value) -> usize {
        *self.headers.lock().unwrap() = Some(headers);
        self.bodies.lock().unwrap().push(body);
        let mut hits = self.hits.lock().unwrap();
        let count = hits.entry(path.to_string()).or_default();
        *count += 1;
        *count
    }

    fn hits(&self, path: &str) -> usize {
        self.hits.lock().unwrap().get(path).copied().unwrap_or(0)
    }

    fn header(&self, name: &str) -> Option<String> {
        self.headers.lock().unwrap().as_ref()?.get(name).map(|v| v.to_str().unwrap().to_string())
    }
}

fn completed(id: &Value, text: &str) -> Value {
    json!({"jsonrpc": "2.0", "id": id, "result": {
        "id": "task-1", "contextId": "ctx-1", "kind": "task",
        "status": {"state": "completed"},
        "artifacts": [{"parts": [{"kind": "text", "text": text}]}],
        "history": [{"role": "agent", "parts": [{"kind": "text", "text": format!("reply to {text}")}]}]
    }})
}

async fn start_server() -> (String, Seen) {
    let seen = Seen::default();
    let app = Router::new()
        .route(
            "/rpc/{mode}",
            post(|State(seen): State<Seen>, Path(mode): Path<String>, headers: HeaderMap, Json(body): Json<Value>| async move {
                seen.hit(&format!("/rpc/{mode}"), headers, body.clone());
                let id = body["id"].clone();
                let text = body["params"]["message"]["parts"][0]["text"].as_str().unwrap_or_default().to_string();
                Json(match mode.as_str() {
                    "ok" => completed(&id, &text),
                    "error" => json!({"jsonrpc": "2.0", "id": id, "error": {"code": -32602, "message": "invalid params"}}),
                    _ => json!({"jsonrpc": "2.0", "id": id, "result": {"id": "t", "status": {"state": "failed"}}}),
                })
            }),
        )
        .route(
            "/simple/{mode}",
            post(|State(seen): State<Seen>, Path(mode): Path<String>, headers: HeaderMap, Json(body): Json<Value>| async move {
                seen.hit(&format!("/simple/{mode}"), headers, body.clone());
                Json(match mode.as_str() {
                    "ok" => json!({"status": "success", "output": {"got": body["input"], "task_id": body["task_id"]}}),
                    _ => json!({"status": "error", "error": "cannot do that"}),
                })
            }),
        )
        .route(
            "/status/{code}/{failures}",
            post(|State(seen): State<Seen>, Path((code, failures)): Path<(u16, usize)>, headers: HeaderMap, Json(body): Json<Value>| async move {
                let n = seen.hit(&format!("/status/{code}/{failures}"), headers, body);
                if n <= failures {
                    (StatusCode::from_u16(code).unwrap(), "try later".to_string())
                } else {
                    (StatusCode::OK, json!({"status": "success", "output": {"calls": n}}).to_string())
                }
            }),
        )
        .route(
            "/slow",
            post(|State(seen): State<Seen>, headers: HeaderMap, Json(body): Json<Value>| async move {
                seen.hit("/slow", headers, body);
                tokio::time::sleep(Duration::from_secs(30)).await;
                Json(json!({"status": "success", "output": {}}))
            }),
        )
        .route(
            "/malformed",
            post(|State(seen): State<Seen>, headers: HeaderMap, Json(body): Json<Value>| async move {
                seen.hit("/malformed", headers, body);
                "this is not json"
            }),
        )
        .with_state(seen.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (format!("http://{address}"), seen)
}

fn agent(url: String, protocol: AgentProtocol) -> AgentConfig {
    AgentConfig { protocol, timeout_ms: 2_000, ..AgentConfig::at_url(url) }
}

fn context(attempt: u32) -> CallContext {
    CallContext {
        run_id: "run-1".into(),
        step_id: "step-1".into(),
        attempt,
        idempotency_key: "run-1/step-1".into(),
        correlation_id: "attempt-row-1".into(),
    }
}

async fn call(config: &Config, name: &str, input: Value) -> Result<Value, StepFailure> {
    let registry = AgentRegistry::new(config, &[]);
    registry.get(name).unwrap().call(&input, &context(1)).await
}

#[tokio::test]
async fn jsonrpc_agents_send_message_send_with_headers_and_return_the_task() {
    let (base, seen) = start_server().await;
    let mut config = Config::defaults();
    config.agents.insert(
        "Researcher".into(),
        AgentConfig {
            auth_type: AuthType::Bearer,
            auth_config: [("token".to_string(), "s3cret".to_string())].into(),
            ..agent(format!("{base}/rpc/ok"), AgentProtocol::Jsonrpc)
        },
    );
    let output = call(&config, "Researcher", json!({"query": "rust actors", "depth": 2})).await.unwrap();
    assert_eq!(output["text"], "rust actors");
    assert_eq!(output["response"], "reply to rust actors");
    assert_eq!(output["task_id"], "task-1");
    assert_eq!(output["context_id"], "ctx-1");
    assert_eq!(seen.header("authorization").as_deref(), Some("Bearer s3cret"));
    assert_eq!(seen.header("idempotency-key").as_deref(), Some("run-1/step-1"));
    assert_eq!(seen.header("x-correlation-id").as_deref(), Some("attempt-row-1"));
    assert_eq!(seen.header("content-type").as_deref(), Some("application/json"));
    let body = seen.bodies.lock().unwrap()[0].clone();
    assert_eq!(body["jsonrpc"], "2.0");
    assert_eq!(body["method"], "message/send");
    assert_eq!(body["params"]["message"]["role"], "user");
    assert_eq!(body["params"]["message"]["messageId"], format!("msg-{}", body["id"].as_str().unwrap()));
}

#[tokio::test]
async fn simple_agents_and_api_keys() {
    let (base, seen) = start_server().await;
    let mut config = Config::defaults();
    config.agents.insert(
        "Writer".into(),
        AgentConfig {
            auth_type: AuthType::Apikey,
            auth_config: [("key".to_string(), "k-1".to_string()), ("header_name".to_string(), "X-Key".to_string())]
                .into(),
            ..agent(format!("{base}/simple/ok"), AgentProtocol::Simple)
        },
    );
    config.agents.insert("Refuser".into(), agent(format!("{base}/simple/error"), AgentProtocol::Simple));
    let output = call(&config, "Writer", json!({"notes": [1, 2]})).await.unwrap();
    assert_eq!(output["got"], json!({"notes": [1, 2]}));
    assert_eq!(output["task_id"], "attempt-row-1");
    assert_eq!(seen.header("x-key").as_deref(), Some("k-1"));
    let error = call(&config, "Refuser", json!({})).await.unwrap_err();
    assert_eq!(error, StepFailure::Permanent("agent 'Refuser' reported an error: cannot do that".into()));
}

#[tokio::test]
async fn failures_are_classified_as_the_contract_says() {
    let (base, _) = start_server().await;
    let mut config = Config::defaults();
    let cases = [
        ("S500", "/status/500/9", true),
        ("S503", "/status/503/9", true),
        ("S408", "/status/408/9", true),
        ("S429", "/status/429/9", true),
        ("S400", "/status/400/9", false),
        ("S404", "/status/404/9", false),
        ("Malformed", "/malformed", false),
        ("RpcError", "/rpc/error", false),
        ("RpcFailed", "/rpc/failed", false),
    ];
    for (name, path, _) in cases {
        let protocol = if path.starts_with("/rpc") { AgentProtocol::Jsonrpc } else { AgentProtocol::Simple };
        config.agents.insert(name.into(), agent(format!("{base}{path}"), protocol));
    }
    config
        .agents
        .insert("Slow".into(), AgentConfig { timeout_ms: 100, ..agent(format!("{base}/slow"), AgentProtocol::Simple) });
    config.agents.insert("Down".into(), agent("http://127.0.0.1:9/nothing-listens".into(), AgentProtocol::Simple));
    for (name, _, retryable) in cases {
        let error = call(&config, name, json!({})).await.unwrap_err();
        assert_eq!(error.is_retryable(), retryable, "{name}: {error}");
    }
    let slow = call(&config, "Slow", json!({})).await.unwrap_err();
    assert_eq!(slow, StepFailure::Retryable("agent 'Slow' timed out after 100 ms".into()));
    let down = call(&config, "Down", json!({})).await.unwrap_err();
    assert!(down.is_retryable() && down.message().contains("unreachable"), "{down}");
    let error = call(&config, "RpcError", json!({})).await.unwrap_err();
    assert_eq!(error.message(), "agent 'RpcError' returned JSON-RPC error -32602: invalid params");
}

#[tokio::test]
async fn runs_retry_5xx_408_and_429_but_not_other_4xx() {
    let (base, seen) = start_server().await;
    let db = TestDb::sqlite().await.migrated().await;
    let mut config = test_config();
    for code in [500, 408, 429, 400] {
        config.agents.insert(format!("A{code}"), agent(format!("{base}/status/{code}/2"), AgentProtocol::Simple));
    }
    let test = db.executor(&config).await;
    for code in [500, 408, 429] {
        let outcome = test
            .executor
            .run(request(
                &format!("run-{code}"),
                plan("a", json!({"a": {"agent_name": format!("A{code}")}})),
                json!({}),
            ))
            .await
            .unwrap();
        assert_eq!(outcome.status, RunStatus::Completed, "{code}: {:?}", outcome.error);
        assert_eq!(outcome.output, Some(json!({"calls": 3})));
        assert_eq!(seen.hits(&format!("/status/{code}/2")), 3);
    }
    let outcome = test
        .executor
        .run(request("run-400", plan("a", json!({"a": {"agent_name": "A400"}})), json!({})))
        .await
        .unwrap();
    assert_eq!(outcome.status, RunStatus::Failed);
    assert_eq!(
        outcome.error.as_deref(),
        Some("Step 'a' (agent: A400) failed: agent 'A400' answered HTTP 400: try later")
    );
    assert_eq!(seen.hits("/status/400/2"), 1);
    let (_, steps) = test.executor.persistence().load_run("run-500").await.unwrap().unwrap();
    let attempts: Vec<(i32, StepStatus)> = steps.iter().map(|s| (s.attempt, s.status)).collect();
    assert_eq!(attempts, [(1, StepStatus::Failed), (2, StepStatus::Failed), (3, StepStatus::Completed)]);
    assert!(steps[0].error_message.as_deref().unwrap().contains("HTTP 500"));
}

#[tokio::test]
async fn the_breaker_opens_on_failures_fails_fast_and_closes_after_its_timeout() {
    let (base, seen) = start_server().await;
    let mut config = Config::defaults();
    let breaker = CircuitBreakerConfig {
        failure_threshold: 3,
        failure_rate_threshold: 0.5,
        timeout_seconds: 60,
        half_open_max_calls: 1,
    };
    // Fails 3 times, then succeeds.
    config.agents.insert(
        "Flaky".into(),
        AgentConfig { circuit_breaker: Some(breaker), ..agent(format!("{base}/status/503/3"), AgentProtocol::Simple) },
    );
    let registry = AgentRegistry::new(&config, &[]);
    let flaky = registry.get("Flaky").unwrap();
    for _ in 0..3 {
        assert!(flaky.call(&json!({}), &context(1)).await.unwrap_err().is_retryable());
    }
    assert_eq!(flaky.breaker().unwrap().state(), BreakerState::Open);
    let error = flaky.call(&json!({}), &context(1)).await.unwrap_err();
    assert_eq!(error, StepFailure::Permanent("Circuit breaker is OPEN for agent 'Flaky'".into()));
    assert_eq!(seen.hits("/status/503/3"), 3, "an open breaker sends nothing");

    // Move tokio's clock past the breaker's timeout: one trial call goes through and closes it.
    tokio::time::pause();
    tokio::time::advance(Duration::from_secs(61)).await;
    tokio::time::resume();
    assert_eq!(flaky.call(&json!({}), &context(1)).await.unwrap(), json!({"calls": 4}));
    assert_eq!(flaky.breaker().unwrap().state(), BreakerState::Closed);
}

#[tokio::test]
async fn max_concurrency_limits_calls_in_flight_across_a_parallel_block() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    #[derive(Clone, Default)]
    struct Gauge {
        now: Arc<AtomicUsize>,
        peak: Arc<AtomicUsize>,
    }
    let gauge = Gauge::default();
    let app = Router::new()
        .route(
            "/work",
            post(|State(gauge): State<Gauge>| async move {
                let now = gauge.now.fetch_add(1, Ordering::SeqCst) + 1;
                gauge.peak.fetch_max(now, Ordering::SeqCst);
                // The agent's work: long enough for the executor to try to overlap calls.
                tokio::time::sleep(Duration::from_millis(30)).await;
                gauge.now.fetch_sub(1, Ordering::SeqCst);
                Json(json!({"status": "success", "output": {}}))
            }),
        )
        .with_state(gauge.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });

    let db = TestDb::sqlite().await.migrated().await;
    let mut config = test_config();
    config.agents.insert(
        "Worker".into(),
        AgentConfig { max_concurrency: Some(2), ..agent(format!("http://{address}/work"), AgentProtocol::Simple) },
    );
    let test = db.executor(&config).await;
    let members: Vec<String> = (0..6).map(|i| format!("w{i}")).collect();
    let mut steps = json!({"p": {"type": "parallel", "parallel_steps": members}});
    for member in &members {
        steps[member] = json!({"agent_name": "Worker"});
    }
    let outcome = test.executor.run(request("limited", plan("p", steps), json!({}))).await.unwrap();
    assert_eq!(outcome.status, RunStatus::Completed, "{:?}", outcome.error);
    assert_eq!(gauge.peak.load(Ordering::SeqCst), 2);
}

/// How a hostile agent answers, written byte by byte on a raw socket (what a well-behaved HTTP
/// server library will not do).
#[derive(Clone, Copy)]
enum Hostile {
    /// 100 MB of a JSON string, chunked, with no length announced.
    Huge,
    /// Announces 1,000 bytes, sends 10, then holds the connection open.
    NeverFinishes,
    /// Announces 1,000 bytes, sends 10, then closes the connection.
    ClosesMidAnswer,
    /// A well-formed JSON-RPC answer to another request.
    OtherId,
}

/// A one-behaviour agent on a free port; counts the body bytes it managed to send.
async fn hostile_agent(behaviour: Hostile) -> (String, Arc<std::sync::atomic::AtomicU64>) {
    use std::sync::atomic::{AtomicU64, Ordering};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/agent", listener.local_addr().unwrap());
    let sent = Arc::new(AtomicU64::new(0));
    let counter = Arc::clone(&sent);
    tokio::spawn(async move {
        loop {
            let Ok((mut socket, _)) = listener.accept().await else { return };
            let sent = Arc::clone(&counter);
            tokio::spawn(async move {
                // The request: headers, then as many body bytes as Content-Length says.
                let mut request = Vec::new();
                let mut buffer = [0u8; 4096];
                let body_start = loop {
                    let n = socket.read(&mut buffer).await.unwrap_or(0);
                    if n == 0 {
                        return;
                    }
                    request.extend_from_slice(&buffer[..n]);
                    if let Some(end) = request.windows(4).position(|w| w == b"\r\n\r\n") {
                        break end + 4;
                    }
                };
                let head = String::from_utf8_lossy(&request[..body_start]).to_lowercase();
                let length: usize = head
                    .lines()
                    .find_map(|line| line.strip_prefix("content-length:"))
                    .map_or(0, |value| value.trim().parse().unwrap());
                while request.len() < body_start + length {
                    let n = socket.read(&mut buffer).await.unwrap_or(0);
                    if n == 0 {
                        return;
                    }
                    request.extend_from_slice(&buffer[..n]);
                }
                let body: Value = serde_json::from_slice(&request[body_start..]).unwrap();
                match behaviour {
                    Hostile::Huge => {
                        let head =
                            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n";
                        if socket.write_all(head.as_bytes()).await.is_err() {
                            return;
                        }
                        let chunk = format!("{:x}\r\n{}\r\n", 64 * 1024, "x".repeat(64 * 1024));
                        let first = format!("1\r\n\"\r\n{chunk}");
                        let _ = socket.write_all(first.as_bytes()).await;
                        for _ in 0..(100 * 1024 * 1024 / (64 * 1024)) {
                            if socket.write_all(chunk.as_bytes()).await.is_err() {
                                return;
                            }
                            sent.fetch_add(64 * 1024, Ordering::Relaxed);
                        }
                    }
                    Hostile::NeverFinishes | Hostile::ClosesMidAnswer => {
                        let head = "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 1000\r\n\r\n";
                        let _ = socket.write_all(format!("{head}{{\"status\":").as_bytes()).await;
                        sent.fetch_add(10, Ordering::Relaxed);
                        if let Hostile::NeverFinishes = behaviour {
                            // Held until the client gives up and closes its end.
                            let _ = socket.read(&mut buffer).await;
                        }
                    }
                    Hostile::OtherId => {
                        let answer =
                            completed(&json!(format!("not-{}", body["id"].as_str().unwrap())), "hi").to_string();
                        let head = format!(
                            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
                            answer.len()
                        );
                        let _ = socket.write_all(format!("{head}{answer}").as_bytes()).await;
                    }
                }
            });
        }
    });
    (url, sent)
}

#[tokio::test]
async fn hostile_agents_fail_their_attempt_with_a_clear_error_and_memory_stays_bounded() {
    use std::sync::atomic::Ordering;
    let mut config = Config::defaults();
    config.executor.max_agent_response_bytes = 1024 * 1024;
    let mut sent = HashMap::new();
    for (name, behaviour, protocol) in [
        ("Huge", Hostile::Huge, AgentProtocol::Simple),
        ("Stuck", Hostile::NeverFinishes, AgentProtocol::Simple),
        ("Hangup", Hostile::ClosesMidAnswer, AgentProtocol::Simple),
        ("Impostor", Hostile::OtherId, AgentProtocol::Jsonrpc),
    ] {
        let (url, bytes) = hostile_agent(behaviour).await;
        config.agents.insert(name.into(), AgentConfig { timeout_ms: 500, ..agent(url, protocol) });
        sent.insert(name, bytes);
    }
    let (base, _) = start_server().await;
    config.agents.insert("Honest".into(), agent(format!("{base}/simple/ok"), AgentProtocol::Simple));

    let huge = call(&config, "Huge", json!({})).await.unwrap_err();
    assert_eq!(
        huge,
        StepFailure::Permanent(
            "agent 'Huge' answered more than 1048576 bytes (executor.max_agent_response_bytes); the answer was dropped"
                .into()
        )
    );
    // The executor hung up after about the limit; the rest of the 100 MB was never read. (The
    // agent may have pushed a few MB more into socket buffers before it noticed.)
    let pushed = sent["Huge"].load(Ordering::Relaxed);
    assert!(pushed < 50 * 1024 * 1024, "the agent sent {pushed} bytes: the answer was read past the limit");

    let stuck = call(&config, "Stuck", json!({})).await.unwrap_err();
    assert_eq!(stuck, StepFailure::Retryable("agent 'Stuck' timed out after 500 ms".into()));
    let hangup = call(&config, "Hangup", json!({})).await.unwrap_err();
    assert!(hangup.is_retryable() && hangup.message().starts_with("agent 'Hangup' broke off its answer"), "{hangup}");
    let impostor = call(&config, "Impostor", json!({})).await.unwrap_err();
    assert!(!impostor.is_retryable(), "{impostor}");
    assert!(impostor.message().contains("answered JSON-RPC request id \"not-attempt-row-1\""), "{impostor}");
    // And the executor is none the worse: the next agent answers as usual.
    assert!(call(&config, "Honest", json!({"n": 1})).await.is_ok());
}
