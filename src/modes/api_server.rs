//! The API side of a process: the HTTP server, its outbox relay and the dashboard's change feed,
//! on a listener it binds.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use sea_orm::DatabaseConnection;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::api::{ApiState, serve};
use crate::config::Config;
use crate::dashboard::live::LiveFeed;
use crate::kafka::Broker;
use crate::kafka::producer::Publisher;
use crate::service::outbox::Relay;

/// A running API server, its outbox relay and its change feed.
#[derive(Debug)]
pub struct ApiServer {
    addr: SocketAddr,
    stop: watch::Sender<bool>,
    server: JoinHandle<std::io::Result<()>>,
    relay: JoinHandle<()>,
    feed: JoinHandle<()>,
}

impl ApiServer {
    /// Binds `api.listen` and starts serving.
    pub async fn start(config: &Config, db: DatabaseConnection, broker: &Broker) -> anyhow::Result<ApiServer> {
        let listener = tokio::net::TcpListener::bind(&config.api.listen)
            .await
            .with_context(|| format!("cannot listen on api.listen = {}", config.api.listen))?;
        let addr = listener.local_addr()?;
        let publisher = publisher(config, broker)?;
        let metrics = crate::observability::metrics::install();
        let stop = watch::Sender::new(false);
        let live = Arc::new(LiveFeed::default());
        let kafka = broker.client_config(&config.kafka);
        let state = ApiState::new(
            db.clone(),
            config.clone(),
            publisher.clone(),
            metrics,
            live.clone(),
            stop.subscribe(),
            kafka,
        );
        let mut stopped = stop.subscribe();
        let server = tokio::spawn(serve(listener, state, async move {
            let _ = stopped.wait_for(|stop| *stop).await;
        }));
        let poll = Duration::from_millis(config.api.live_poll_ms.max(1));
        let feed = tokio::spawn(live.run(db.clone(), poll, stop.subscribe()));
        let relay = tokio::spawn(Relay { db, publisher, config: config.outbox.clone() }.run(stop.subscribe()));
        tracing::info!(%addr, "API listening");
        Ok(ApiServer { addr, stop, server, relay, feed })
    }

    /// Where it listens (the port is the OS's choice when `api.listen` says `:0`).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops taking connections and finishes the requests in flight.
    pub async fn stop(self) {
        self.stop.send_replace(true);
        match self.server.await {
            Ok(Err(error)) => tracing::warn!(%error, "the API server stopped with an error"),
            Err(error) => tracing::warn!(%error, "the API server task failed"),
            Ok(Ok(())) => {}
        }
        let _ = self.relay.await;
        let _ = self.feed.await;
    }
}

/// The producer of execution and cancellation requests.
pub fn publisher(config: &Config, broker: &Broker) -> anyhow::Result<Publisher> {
    Ok(Publisher::new(broker, &config.kafka, Duration::from_millis(config.outbox.publish_timeout_ms))?)
}
