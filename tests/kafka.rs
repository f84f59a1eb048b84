//! Requests through Kafka end to end, on rdkafka's in-process mock cluster (the real-broker
//! tests in `tests/durability.rs` run the same paths against tansu and whole processes).

mod common;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use common::{TestDb, plan, test_config};
use entity::RunStatus;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::{Headers, Message};
use rdkafka::producer::{FutureProducer, FutureRecord};
use runvisor::actors::events::{ChannelSink, Event, EventSink, Fanout};
use runvisor::executor::{Executor, ExecutorOptions};
use runvisor::kafka::Broker;
use runvisor::kafka::ingress::GroupMember;
use runvisor::kafka::producer::MonitoringSink;
use runvisor::wire::ExecutionRequestMessage;
use serde_json::{Value, json};
use tokio::sync::mpsc;

async fn publish(producer: &FutureProducer, topic: &str, key: &str, payload: &[u8]) {
    producer
        .send(FutureRecord::to(topic).key(key).payload(payload), Duration::from_secs(10))
        .await
        .map_err(|(e, _)| e)
        .expect("published");
}

fn request(run_id: &str, plan: Value) -> Vec<u8> {
    serde_json::to_vec(&ExecutionRequestMessage::inline(run_id, plan, json!({"topic": "kafka"}))).unwrap()
}

/// Waits for terminal run events until every run in `expected` has one.
async fn terminal_runs(
    events: &mut mpsc::UnboundedReceiver<Event>,
    expected: &HashSet<String>,
) -> HashMap<String, RunStatus> {
    let mut seen = HashMap::new();
    while !expected.iter().all(|r| seen.contains_key(r)) {
        let event = tokio::time::timeout(Duration::from_secs(60), events.recv()).await.expect("runs end").unwrap();
        if let Event::Run { run_id, status, .. } = event
            && status.is_terminal()
        {
            seen.insert(run_id, status);
        }
    }
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_run_once_garbage_goes_to_the_dlq_and_cancellations_apply() {
    let db = TestDb::postgres().await.migrated().await;
    let mut config = test_config();
    config.kafka.group_id = format!("test-{}", uuid::Uuid::new_v4());
    let broker = Broker::start(&config.kafka).unwrap();
    broker.ensure_topics(&config.kafka).await.unwrap();
    let producer: FutureProducer = runvisor::kafka::producer::producer(&broker, &config.kafka).unwrap();
    let topic = config.kafka.requests_topic.clone();
    let pipeline = plan(
        "a",
        json!({"a": {"agent_name": "echo", "input_mapping": {"t": "${workflow.input.topic}"}, "next_step": "b"},
               "b": {"agent_name": "echo", "input_mapping": {"from_a": "${a.output.t}"}}}),
    );
    let slow = plan("a", json!({"a": {"agent_name": "sleep", "input_mapping": {"ms": 60000}}}));

    // Published before any executor runs: they wait in Kafka.
    publish(&producer, &topic, "good-1", &request("good-1", pipeline.clone())).await;
    for _ in 0..3 {
        publish(&producer, &topic, "dup-1", &request("dup-1", pipeline.clone())).await;
    }
    publish(&producer, &topic, "junk", b"\xff not json").await;
    publish(&producer, &topic, "noid", br#"{"workflow_plan": {}}"#).await;
    publish(
        &producer,
        &topic,
        "bad-plan",
        &request("bad-plan", json!({"name": "x", "start_step": "nope", "steps": {}})),
    )
    .await;
    publish(&producer, &topic, "slow-1", &request("slow-1", slow)).await;
    publish(&producer, &topic, "good-2", &request("good-2", pipeline.clone())).await;

    // No executor has read anything: every request published is lag, as the dashboard reads it
    // from the broker without joining the group.
    let lags = runvisor::kafka::lag::group_lag(
        &broker.client_config(&config.kafka),
        &config.kafka.group_id,
        &topic,
        Duration::from_secs(5),
    )
    .expect("the lag is read");
    assert_eq!(lags.len() as i32, config.kafka.topic_partitions);
    assert_eq!(lags.iter().map(|p| p.lag).sum::<i64>(), 9, "{lags:?}");
    assert!(lags.iter().all(|p| p.committed.is_none()), "{lags:?}");

    let (tx, mut events) = mpsc::unbounded_channel();
    let monitoring = MonitoringSink::new(producer.clone(), config.kafka.monitoring_topic.clone());
    let sinks: Vec<Arc<dyn EventSink>> = vec![Arc::new(ChannelSink(tx)), Arc::new(monitoring)];
    let options = ExecutorOptions { events: Some(Arc::new(Fanout(sinks))), tap: None, sweep: false };
    let executor = Arc::new(Executor::start(&config, db.db.clone(), options).await.unwrap());
    let member = GroupMember::start(&broker, &config, Arc::clone(&executor)).await.unwrap();

    let expected: HashSet<String> = ["good-1", "good-2", "dup-1", "bad-plan"].iter().map(|s| s.to_string()).collect();
    let ended = terminal_runs(&mut events, &expected).await;
    assert_eq!(ended["good-1"], RunStatus::Completed);
    assert_eq!(ended["dup-1"], RunStatus::Completed);
    assert_eq!(ended["bad-plan"], RunStatus::Failed);

    // The slow run is in flight; cancel it through the cancellation topic.
    let cancel = json!({"run_id": "slow-1", "cancelled_by": "ops", "reason": "too slow"});
    publish(&producer, &config.kafka.cancellations_topic, "slow-1", cancel.to_string().as_bytes()).await;
    let ended = terminal_runs(&mut events, &HashSet::from(["slow-1".to_string()])).await;
    assert_eq!(ended["slow-1"], RunStatus::Cancelled);

    // A cancellation that arrives before its request: recorded first, the request then does nothing.
    // (The two topics are consumed independently, so the test waits for the first to be recorded.)
    let cancel_first =
        json!({"run_id": "cancelled-early", "message_type": "cancellation_request", "reason": "changed my mind"});
    publish(&producer, &config.kafka.cancellations_topic, "cancelled-early", cancel_first.to_string().as_bytes()).await;
    let ended = terminal_runs(&mut events, &HashSet::from(["cancelled-early".to_string()])).await;
    assert_eq!(ended["cancelled-early"], RunStatus::Cancelled);
    publish(&producer, &topic, "cancelled-early", &request("cancelled-early", pipeline.clone())).await;
    publish(&producer, &topic, "cancelled-early", &request("good-3", pipeline.clone())).await;
    terminal_runs(&mut events, &HashSet::from(["good-3".to_string()])).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while member.runs_in_flight().await > 0 {
        assert!(tokio::time::Instant::now() < deadline, "the duplicate request was never settled");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    let persistence = executor.persistence().clone();
    let (dup, steps) = persistence.load_run("dup-1").await.unwrap().unwrap();
    assert_eq!(dup.status, RunStatus::Completed);
    assert_eq!(steps.len(), 2, "three requests, one execution");
    let (bad, _) = persistence.load_run("bad-plan").await.unwrap().unwrap();
    let error = bad.error_message.unwrap();
    assert!(
        error.starts_with("Invalid workflow plan: ") && error.contains("start_step: references unknown step 'nope'"),
        "{error}"
    );
    let (early, steps) = persistence.load_run("cancelled-early").await.unwrap().unwrap();
    assert_eq!(early.status, RunStatus::Cancelled);
    assert_eq!(early.error_message.as_deref(), Some("Cancelled: changed my mind"));
    assert!(steps.is_empty(), "a run cancelled before its request never runs");
    let (slow, steps) = persistence.load_run("slow-1").await.unwrap().unwrap();
    assert_eq!(
        (slow.cancelled_by.as_deref(), slow.error_message.as_deref()),
        (Some("ops"), Some("Cancelled: too slow"))
    );
    assert!(slow.cancelled_at.is_some() && slow.completed_at.is_some());
    assert_eq!(steps[0].status, entity::StepStatus::Cancelled);

    // Both undecodable messages are on the dead-letter topic with their reasons.
    let dlq: StreamConsumer = broker
        .client_config(&config.kafka)
        .set("group.id", format!("dlq-reader-{}", uuid::Uuid::new_v4()))
        .set("auto.offset.reset", "earliest")
        .create()
        .unwrap();
    dlq.subscribe(&[&config.kafka.dlq_topic]).unwrap();
    let mut reasons = HashMap::new();
    while reasons.len() < 2 {
        let message = tokio::time::timeout(Duration::from_secs(30), dlq.recv()).await.expect("dead letters").unwrap();
        let key = String::from_utf8_lossy(message.key().unwrap()).to_string();
        let headers = message.headers().expect("the reason is a header");
        let error = headers
            .iter()
            .find(|h| h.key == "error")
            .and_then(|h| h.value)
            .map(|v| String::from_utf8_lossy(v).to_string());
        reasons.insert(key, error.unwrap());
    }
    assert!(reasons["junk"].starts_with("message is not valid UTF-8 JSON"), "{reasons:?}");
    assert_eq!(reasons["noid"], "message has no run_id");

    // Monitoring updates (CONTRACT.md §6) for every attempt and run transition, keyed by run_id.
    let monitor: StreamConsumer = broker
        .client_config(&config.kafka)
        .set("group.id", format!("monitor-{}", uuid::Uuid::new_v4()))
        .set("auto.offset.reset", "earliest")
        .create()
        .unwrap();
    monitor.subscribe(&[&config.kafka.monitoring_topic]).unwrap();
    let mut updates: Vec<Value> = Vec::new();
    let wanted = |updates: &[Value]| updates.iter().filter(|u| u["run_id"] == "good-1").count() >= 6;
    while !wanted(&updates) {
        let message =
            tokio::time::timeout(Duration::from_secs(30), monitor.recv()).await.expect("monitoring updates").unwrap();
        assert_eq!(
            message.key(),
            serde_json::from_slice::<Value>(message.payload().unwrap()).unwrap()["run_id"].as_str().map(str::as_bytes)
        );
        updates.push(serde_json::from_slice(message.payload().unwrap()).unwrap());
    }
    let good: Vec<&Value> = updates.iter().filter(|u| u["run_id"] == "good-1").collect();
    let seen: Vec<(&str, &str)> =
        good.iter().map(|u| (u["step_id"].as_str().unwrap(), u["status"].as_str().unwrap())).collect();
    assert_eq!(
        seen,
        [
            ("workflow", "RUNNING"),
            ("a", "RUNNING"),
            ("a", "COMPLETED"),
            ("b", "RUNNING"),
            ("b", "COMPLETED"),
            ("workflow", "COMPLETED")
        ]
    );
    assert_eq!(good[0]["step_name"], "test-plan");
    assert_eq!(good[1]["step_name"], "echo");
    assert_eq!(good[1]["metadata"]["attempt"], 1);
    assert_eq!(good[1]["metadata"]["step_execution_id"], good[2]["metadata"]["step_execution_id"]);
    assert!(good.iter().all(|u| u["timestamp"].as_str().is_some_and(|t| t.len() == 26)), "{good:?}");

    assert_eq!(member.runs_in_flight().await, 0);
    drop(executor);
    member.stop(Duration::from_secs(5)).await;
}
