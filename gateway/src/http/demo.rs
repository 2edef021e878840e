//! The demo page at `/`: pick a user, open a socket with the browser client of `clients/js`,
//! watch notifications arrive as toasts, publish typed events from a form.
//!
//! Served only when `demo.enabled` says so ([`crate::config::Settings::demo_enabled`]: by
//! default in single-node mode only). It never weakens auth: the page opens its socket like
//! any client (with `auth.mode = "jwt"` it asks for a token), and its form's
//! `POST /demo/publish` answers loopback clients only and only while `publish.api_keys` is
//! empty, exactly where `POST /api/publish` would accept the same request without a key.

use actix_web::http::header;
use actix_web::{web, HttpRequest, HttpResponse};

use super::{publish, ApiError, AppState};

/// The browser client, the same file the npm package ships.
pub const CLIENT_JS: &str = include_str!("../../../clients/js/src/index.js");
const PAGE: &str = include_str!("demo.html");

/// The page with what it needs to know about this gateway filled in, built once at start-up.
#[derive(Clone)]
pub struct DemoPage {
    html: std::sync::Arc<str>,
    publish_open: bool,
}

impl DemoPage {
    pub fn new(settings: &crate::config::Settings) -> Self {
        let auth = settings.auth.mode == crate::config::AuthMode::Jwt;
        let publish_open = settings.publish.api_keys.is_empty();
        let html = PAGE.replace(
            "/*SETTINGS*/{}",
            &format!(r#"{{"auth":{auth},"publish":{publish_open}}}"#),
        );
        DemoPage {
            html: html.into(),
            publish_open,
        }
    }
}

/// Adds the demo routes; call only when the demo is enabled.
pub fn routes(cfg: &mut web::ServiceConfig, page: DemoPage) {
    cfg.app_data(web::Data::new(page))
        .route("/", web::get().to(index))
        .route("/demo/client.js", web::get().to(client))
        .route("/demo/publish", web::post().to(demo_publish));
}

async fn index(page: web::Data<DemoPage>) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/html; charset=utf-8")
        .insert_header((header::CACHE_CONTROL, "no-cache"))
        // The page loads its script from here and talks only to this gateway.
        .insert_header((
            header::CONTENT_SECURITY_POLICY,
            "default-src 'self'; script-src 'self' 'unsafe-inline'; style-src 'unsafe-inline'; \
             connect-src 'self' ws: wss:; img-src 'self' data:",
        ))
        .body(page.html.to_string())
}

async fn client() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/javascript; charset=utf-8")
        .insert_header((header::CACHE_CONTROL, "no-cache"))
        .body(CLIENT_JS)
}

/// The form's publish: the body of `POST /api/publish`, from loopback only, and only while
/// no publish API key is configured.
async fn demo_publish(
    req: HttpRequest,
    body: web::Bytes,
    state: web::Data<AppState>,
    page: web::Data<DemoPage>,
) -> Result<HttpResponse, ApiError> {
    if !page.publish_open {
        return Err(ApiError::Unauthorized(
            "publish API keys are configured: the demo form is off, publish with a key \
             through POST /api/publish",
        ));
    }
    if !state.gate.is_local(&req) {
        return Err(ApiError::Unauthorized(
            "the demo form publishes for loopback clients only",
        ));
    }
    publish::deliver(&body, &state).await
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The typed events the page's form offers, with their example data.
    fn form_examples() -> Vec<serde_json::Value> {
        let start = PAGE
            .find(r#"<script type="application/json" id="events">"#)
            .unwrap();
        let json = &PAGE[start..];
        let json = &json[json.find('>').unwrap() + 1..json.find("</script>").unwrap()];
        serde_json::from_str::<Vec<serde_json::Value>>(json).unwrap()
    }

    #[test]
    fn every_event_the_form_offers_is_a_valid_publish_body() {
        let examples = form_examples();
        assert_eq!(
            examples.len(),
            10,
            "the ten typed events of docs/PROTOCOL.md"
        );
        for example in examples {
            let mut body = example.clone();
            body["user"] = 42.into();
            if let Err(e) = publish::PublishRequest::parse(body.to_string().as_bytes()) {
                panic!("{example}: {e}");
            }
        }
    }

    #[test]
    fn the_page_is_told_whether_auth_and_the_form_are_on() {
        let mut settings = crate::config::Settings::defaults();
        let page = DemoPage::new(&settings);
        assert!(page.html.contains(r#"{"auth":false,"publish":true}"#));
        assert!(page.publish_open);
        settings.publish.api_keys = vec!["k".repeat(32)];
        let page = DemoPage::new(&settings);
        assert!(page.html.contains(r#"{"auth":false,"publish":false}"#));
        assert!(!page.publish_open);
    }
}
