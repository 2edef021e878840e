//! HTTP surface: the routes of the public and the internal listener, and their handlers. Shared state is in [`crate::state`], the
//! error answer in [`crate::error`].

mod cors;
pub mod demo;
mod history;
pub mod limits;
mod publish;
mod schedule;

use actix_web::http::Method;
use actix_web::{middleware, web, HttpResponse};
use serde_json::json;

pub use crate::error::ApiError;
pub use crate::state::AppState;
use crate::{sse, ws};

/// The public listener (`server.bind`): what browsers reach through the reverse proxy.
pub fn public_routes(cfg: &mut web::ServiceConfig) {
    // The socket path answers CORS like the inbox: a page of an allowed origin can read why
    // its upgrade would be refused (the browser client's probe, docs/PROTOCOL.md).
    cfg.service(
        web::resource([
            "/ws/notifications/{user_id}",
            "/ws/notifications/{user_id}/",
        ])
        .wrap(middleware::from_fn(cors::inbox_headers))
        .route(web::get().to(ws::upgrade))
        .route(web::method(Method::OPTIONS).to(cors::preflight)),
    )
    .route("/sse/notifications/{user_id}", web::get().to(sse::stream))
    .route("/sse/notifications/{user_id}/", web::get().to(sse::stream))
    .route(
        "/sse/notifications/{user_id}",
        web::method(Method::OPTIONS).to(sse::preflight),
    )
    .route(
        "/sse/notifications/{user_id}/",
        web::method(Method::OPTIONS).to(sse::preflight),
    )
    .service(
        web::resource("/api/notifications/{user_id}")
            .wrap(middleware::from_fn(cors::inbox_headers))
            .route(web::get().to(history::notifications))
            .route(web::method(Method::OPTIONS).to(cors::preflight)),
    );
}

/// The internal listener (`server.internal_bind`): the server-to-server API, metrics and
/// probes, for backends, Prometheus and the orchestrator only.
pub fn internal_routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/healthz", web::get().to(healthz))
        .route("/readyz", web::get().to(readyz))
        .route("/metrics", web::get().to(metrics))
        .route("/api/publish", web::post().to(publish::publish))
        .route("/api/schedule", web::post().to(schedule::schedule))
        .route("/api/schedule/{key}", web::delete().to(schedule::cancel))
        .route("/api/presence", web::post().to(schedule::presence));
}

/// The process is alive and serving HTTP.
async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(json!({ "status": "ok" }))
}

/// The node should receive traffic: its bus delivers and it is not draining.
async fn readyz(state: web::Data<AppState>) -> HttpResponse {
    let draining = *state.shutdown.borrow();
    let bus_ready = state.bus.is_ready();
    let body = json!({
        "ready": bus_ready && !draining,
        "bus": state.bus.kind(),
        "bus_connected": bus_ready,
        "draining": draining,
    });
    if bus_ready && !draining {
        HttpResponse::Ok().json(body)
    } else {
        HttpResponse::ServiceUnavailable().json(body)
    }
}

async fn metrics(state: web::Data<AppState>) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4")
        .body(state.metrics.render())
}
