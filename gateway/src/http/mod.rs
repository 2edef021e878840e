//! HTTP surface: the routes and their handlers. Shared state is in [`crate::state`], the
//! error answer in [`crate::error`].

pub mod demo;
mod history;
pub mod limits;
pub mod probe_cors;
mod publish;

use actix_web::{web, HttpResponse};
use serde_json::json;

pub use crate::error::ApiError;
pub use crate::state::AppState;
use crate::ws;

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/ws/notifications/{user_id}", web::get().to(ws::upgrade))
        .route("/ws/notifications/{user_id}/", web::get().to(ws::upgrade))
        .route("/healthz", web::get().to(healthz))
        .route("/readyz", web::get().to(readyz))
        .route("/metrics", web::get().to(metrics))
        .route("/api/publish", web::post().to(publish::publish))
        .route(
            "/api/notifications/{user_id}",
            web::get().to(history::notifications),
        );
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
