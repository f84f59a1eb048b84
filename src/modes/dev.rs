//! `runvisor dev`: everything in one process on the embedded defaults — schema, executor,
//! in-process broker, API — for trying runvisor and for developing against it.

use std::io::Write;
use std::net::SocketAddr;

use entity::workflow_definition;
use sea_orm::{ColumnTrait, DatabaseConnection, EntityTrait, QueryFilter};
use serde_json::Value;

use crate::config::Config;
use crate::kafka::Broker;
use crate::service::workflows::{self, WorkflowCreate};

use super::{ApiServer, ExecutorNode, connect_and_migrate};

/// The definition `dev` makes when it is missing, so the printed curl runs something at once.
const EXAMPLE_NAME: &str = "runvisor-dev-example";
const EXAMPLE_PLAN: &str = include_str!("../../examples/pipeline.json");

/// Runs until `shutdown` resolves, then stops the API, then the executor (gracefully).
pub async fn dev(config: &Config, shutdown: impl std::future::Future<Output = ()>) -> anyhow::Result<()> {
    let broker = Broker::start(&config.kafka)?;
    let db = connect_and_migrate(config).await?;
    let node = ExecutorNode::start(config, &broker, db.clone()).await?;
    let api = ApiServer::start(config, db.clone(), &broker).await?;
    let example = example_definition(&db, config).await?;
    // A closed stdout (`runvisor dev | head`) must not stop the service.
    let _ = writeln!(std::io::stdout(), "{}", banner(config, &broker, api.addr(), &example));
    shutdown.await;
    tracing::info!("stopping: API first, then the executor");
    api.stop().await;
    node.stop(config).await;
    Ok(())
}

/// The example definition's id, made from `examples/pipeline.json` if no version of it exists.
async fn example_definition(db: &DatabaseConnection, config: &Config) -> anyhow::Result<uuid::Uuid> {
    let existing = workflow_definition::Entity::find()
        .filter(workflow_definition::Column::Name.eq(EXAMPLE_NAME))
        .filter(workflow_definition::Column::Status.eq("active"))
        .one(db)
        .await?;
    if let Some(row) = existing {
        return Ok(row.id);
    }
    let plan: Value = serde_json::from_str(EXAMPLE_PLAN)?;
    let request = WorkflowCreate {
        name: EXAMPLE_NAME.into(),
        description: Some("Made by `runvisor dev`: three built-in agents in a row".into()),
        start_step: plan["start_step"].as_str().unwrap_or_default().into(),
        steps: plan["steps"].as_object().cloned().unwrap_or_default(),
    };
    Ok(workflows::create(db, config, request).await?.id)
}

fn banner(config: &Config, broker: &Broker, addr: SocketAddr, example: &uuid::Uuid) -> String {
    let base = format!("http://{addr}");
    let prefix = &config.api.prefix;
    let broker =
        if broker.is_embedded() { "embedded (in this process)".to_string() } else { broker.bootstrap().to_string() };
    format!(
        "runvisor dev: executor, broker and API in one process (Ctrl-C stops it)\n\
         \n  dashboard {base}/ui\n  API       {base}{prefix}\n  docs      {base}/docs\n  metrics   {base}/metrics\n\
         \n  database  {}\n  broker    {broker}\n\
         \nRun the example workflow, then look at the run it started:\n\
         \n  curl -s -X POST {base}{prefix}/workflows/{example}/execute -H 'Content-Type: application/json' -d '{{\"input_data\": {{\"topic\": \"rust\"}}}}'\n\
         \n  curl -s {base}{prefix}/runs/<run_id>\n",
        crate::db::redact(&config.database.url)
    )
}
