//! The pages' static files (scripts, style, the engine compiled to WebAssembly), embedded in the
//! binary: compressed when the browser accepts it, and revalidated by ETag rather than downloaded
//! again on every visit.

use axum::Router;
use axum::http::header::{CACHE_CONTROL, CONTENT_TYPE, ETAG, IF_NONE_MATCH};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use sha2::{Digest, Sha256};
use tower_http::compression::{CompressionLayer, CompressionLevel};

use crate::state::AppState;

/// One embedded file.
struct Asset {
    path: &'static str,
    content_type: &'static str,
    bytes: &'static [u8],
}

const JAVASCRIPT: &str = "text/javascript; charset=utf-8";

/// An embedded file of `web/`.
macro_rules! asset {
    ($path:literal, $content_type:expr, $file:literal) => {
        Asset {
            path: $path,
            content_type: $content_type,
            bytes: include_bytes!(concat!("../../../web/", $file)),
        }
    };
}

const ASSETS: &[Asset] = &[
    asset!("/static/app.js", JAVASCRIPT, "app.js"),
    asset!("/static/circle.js", JAVASCRIPT, "circle.js"),
    asset!("/static/device.js", JAVASCRIPT, "device.js"),
    asset!("/static/style.css", "text/css; charset=utf-8", "style.css"),
    // The engine: wasm-bindgen's glue and the module, built by `web/build` into `web/pkg`.
    asset!(
        "/static/engine/tessera_web.js",
        JAVASCRIPT,
        "pkg/tessera_web.js"
    ),
    asset!(
        "/static/engine/tessera_web_bg.wasm",
        "application/wasm",
        "pkg/tessera_web_bg.wasm"
    ),
];

/// Browsers may keep a copy but ask again each time (a new server version may change the files).
const REVALIDATE: HeaderValue = HeaderValue::from_static("no-cache");

pub(super) fn router() -> Router<AppState> {
    let mut router = Router::new();
    for asset in ASSETS {
        // Weak: the same tag names every content coding of the file.
        let digest = Sha256::digest(asset.bytes);
        let hex: String = digest[..12].iter().map(|b| format!("{b:02x}")).collect();
        let tag = format!("W/\"{hex}\"");
        let tag = HeaderValue::from_str(&tag).unwrap_or(HeaderValue::from_static("W/\"0\""));
        router = router.route(
            asset.path,
            get(move |headers: HeaderMap| async move { serve(asset, &tag, &headers) }),
        );
    }
    // Level 5 of gzip or brotli: most of the gain for little CPU per request.
    router.layer(CompressionLayer::new().quality(CompressionLevel::Precise(5)))
}

fn serve(asset: &Asset, tag: &HeaderValue, headers: &HeaderMap) -> Response {
    let unchanged = headers
        .get_all(IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| {
            let t = t.trim();
            t == "*" || t.trim_start_matches("W/") == tag_value(tag)
        });
    if unchanged {
        return (
            StatusCode::NOT_MODIFIED,
            [(ETAG, tag.clone()), (CACHE_CONTROL, REVALIDATE)],
        )
            .into_response();
    }
    (
        [
            (CONTENT_TYPE, HeaderValue::from_static(asset.content_type)),
            (ETAG, tag.clone()),
            (CACHE_CONTROL, REVALIDATE),
        ],
        asset.bytes,
    )
        .into_response()
}

/// The quoted part of a weak tag (`"…"`), as an If-None-Match may repeat it with or without `W/`.
fn tag_value(tag: &HeaderValue) -> &str {
    tag.to_str().unwrap_or_default().trim_start_matches("W/")
}
