//! The OpenAPI document, generated from the handlers' annotations, and Swagger UI at `/docs`
//! from assets compiled into the binary (utoipa-swagger-ui's `vendored` feature): the docs work
//! without internet access.

use utoipa::OpenApi;

use super::{agents, runs, system, workflows};

#[derive(OpenApi)]
#[openapi(
    info(title = "runvisor: Workflow Management API", description = "The platform's REST API, served by runvisor (see ../shared/API.md)."),
    paths(
        system::root, system::health, system::ready, system::metrics,
        agents::list, agents::create, agents::get, agents::update, agents::delete, agents::health,
        workflows::list, workflows::create, workflows::get, workflows::update, workflows::delete,
        workflows::versions, workflows::execute,
        runs::list, runs::get, runs::steps, runs::retry, runs::cancel, runs::logs,
    ),
    tags(
        (name = "agents", description = "HTTP agents the plans call"),
        (name = "workflows", description = "Workflow definitions and their versions"),
        (name = "runs", description = "Runs and their agent call attempts"),
        (name = "system", description = "Health, readiness and metrics"),
    ),
    modifiers(&BearerAuth)
)]
#[derive(Debug)]
pub struct ApiDoc;

/// Declares the optional bearer token (`api.auth_token`).
struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

/// The document, with the routes under `prefix` when it is not the default `/api/v1`.
pub fn openapi(prefix: &str) -> utoipa::openapi::OpenApi {
    let mut document = ApiDoc::openapi();
    document.info.version = env!("CARGO_PKG_VERSION").into();
    if prefix != "/api/v1" {
        let paths = std::mem::take(&mut document.paths.paths);
        document.paths.paths = paths
            .into_iter()
            .map(|(path, item)| match path.strip_prefix("/api/v1") {
                Some(rest) => (format!("{prefix}{rest}"), item),
                None => (path, item),
            })
            .collect();
    }
    document
}
