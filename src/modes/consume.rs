//! `runvisor consume`: one executor, one member of the consumer group, until told to stop; with
//! an outbox relay (requests an API could not publish) and, if `metrics.listen` is set, a small
//! HTTP listener for `/metrics` and `/health`.

use axum::Router;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use tokio::sync::watch;

use crate::config::Config;
use crate::kafka::Broker;
use crate::service::outbox::Relay;

use super::{ExecutorNode, api_server::publisher, connect_and_migrate};

/// Runs an executor until `shutdown` resolves, then stops it gracefully.
pub async fn consume(config: &Config, shutdown: impl std::future::Future<Output = ()>) -> anyhow::Result<()> {
    let broker = Broker::start(&config.kafka)?;
    let db = connect_and_migrate(config).await?;
    let stop = watch::Sender::new(false);
    let metrics = match config.metrics.listen.as_str() {
        "" => None,
        listen => Some(tokio::spawn(serve_metrics(tokio::net::TcpListener::bind(listen).await?, stop.subscribe()))),
    };
    let node = ExecutorNode::start(config, &broker, db.clone()).await?;
    let relay = Relay { db, publisher: publisher(config, &broker)?, config: config.outbox.clone() };
    let relay = tokio::spawn(relay.run(stop.subscribe()));
    shutdown.await;
    node.stop(config).await;
    stop.send_replace(true);
    let _ = relay.await;
    if let Some(metrics) = metrics {
        let _ = metrics.await;
    }
    Ok(())
}

/// `/metrics` (Prometheus) and `/health` (the process answers) for a container's probes.
async fn serve_metrics(listener: tokio::net::TcpListener, mut stop: watch::Receiver<bool>) {
    let handle = crate::observability::metrics::install();
    let app = Router::new()
        .route(
            "/metrics",
            get(move || {
                let handle = handle.clone();
                async move { ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], handle.render()) }
            }),
        )
        .route("/health", get(|| async { axum::Json(serde_json::json!({"status": "healthy"})).into_response() }));
    tracing::info!(addr = ?listener.local_addr().ok(), "metrics listening");
    let stopped = async move {
        let _ = stop.wait_for(|stop| *stop).await;
    };
    if let Err(error) = axum::serve(listener, app).with_graceful_shutdown(stopped).await {
        tracing::warn!(%error, "the metrics listener stopped");
    }
}
