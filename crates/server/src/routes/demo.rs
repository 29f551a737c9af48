//! The live demo page (`/`) and the browser client (`/client.js`, its types `/client.d.ts`),
//! compiled into the binary.

use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};

const INDEX: &str = include_str!("../../assets/index.html");
const CLIENT: &str = include_str!("../../assets/client.js");
const CLIENT_TYPES: &str = include_str!("../../assets/client.d.ts");

/// The demo page: a live feed, a publish form, view counts and the tier of each read.
#[utoipa::path(get, path = "/", tag = "demo", responses((status = 200, description = "HTML")))]
pub(crate) async fn index() -> Response {
    page(INDEX, "text/html; charset=utf-8")
}

/// The browser client, an ES module: `import { PostCache } from "/client.js"`.
#[utoipa::path(get, path = "/client.js", tag = "demo", responses((status = 200, description = "JavaScript module")))]
pub(crate) async fn client() -> Response {
    page(CLIENT, "text/javascript; charset=utf-8")
}

/// The client's TypeScript declarations.
#[utoipa::path(get, path = "/client.d.ts", tag = "demo", responses((status = 200, description = "TypeScript declarations")))]
pub(crate) async fn client_types() -> Response {
    page(CLIENT_TYPES, "application/typescript; charset=utf-8")
}

fn page(body: &'static str, content_type: &'static str) -> Response {
    let headers = [
        (header::CONTENT_TYPE, HeaderValue::from_static(content_type)),
        (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
        (
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        ),
    ];
    (headers, body).into_response()
}
