//! The pages' static files (scripts, style, the engine compiled to WebAssembly), embedded in the
//! binary: compressed once (brotli or gzip, whichever the browser takes) and kept, and revalidated
//! by ETag rather than downloaded again on every visit.

use std::io::Write as _;
use std::sync::OnceLock;

use axum::Router;
use axum::body::Bytes;
use axum::http::header::{
    ACCEPT_ENCODING, CACHE_CONTROL, CONTENT_ENCODING, CONTENT_TYPE, ETAG, IF_NONE_MATCH, VARY,
};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use sha2::{Digest, Sha256};

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
    asset!("/static/files-worker.js", JAVASCRIPT, "files-worker.js"),
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

/// A content coding the server sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Coding {
    Brotli,
    Gzip,
}

impl Coding {
    fn name(self) -> &'static str {
        match self {
            Coding::Brotli => "br",
            Coding::Gzip => "gzip",
        }
    }

    /// The bytes in this coding (brotli quality 9, gzip level 9: done once per file).
    fn encode(self, bytes: &[u8]) -> std::io::Result<Vec<u8>> {
        let mut out = Vec::with_capacity(bytes.len() / 3);
        match self {
            Coding::Brotli => {
                let params = brotli::enc::BrotliEncoderParams {
                    quality: 9,
                    lgwin: 22,
                    ..Default::default()
                };
                brotli::BrotliCompress(&mut &bytes[..], &mut out, &params)?;
            }
            Coding::Gzip => {
                let mut encoder = flate2::write::GzEncoder::new(out, flate2::Compression::best());
                encoder.write_all(bytes)?;
                out = encoder.finish()?;
            }
        }
        Ok(out)
    }
}

/// The coding to send for an `Accept-Encoding`: brotli, else gzip, else none (a coding listed
/// with `q=0` is refused).
fn chosen(headers: &HeaderMap) -> Option<Coding> {
    let accepted: Vec<&str> = headers
        .get_all(ACCEPT_ENCODING)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|item| {
            let mut parts = item.split(';').map(str::trim);
            let name = parts.next()?;
            let refused = parts.any(|p| {
                p.strip_prefix("q=")
                    .and_then(|q| q.parse::<f32>().ok())
                    .is_some_and(|q| q <= 0.0)
            });
            (!refused).then_some(name)
        })
        .collect();
    [Coding::Brotli, Coding::Gzip]
        .into_iter()
        .find(|c| accepted.iter().any(|a| a.eq_ignore_ascii_case(c.name())))
}

/// A file with its tag and its encoded copies, made on first demand and kept.
struct Served {
    asset: &'static Asset,
    tag: HeaderValue,
    brotli: OnceLock<Option<Bytes>>,
    gzip: OnceLock<Option<Bytes>>,
}

impl Served {
    fn new(asset: &'static Asset) -> Served {
        // Weak: the same tag names every content coding of the file.
        let digest = Sha256::digest(asset.bytes);
        let hex: String = digest[..12].iter().map(|b| format!("{b:02x}")).collect();
        let tag = HeaderValue::from_str(&format!("W/\"{hex}\""))
            .unwrap_or(HeaderValue::from_static("W/\"0\""));
        Served {
            asset,
            tag,
            brotli: OnceLock::new(),
            gzip: OnceLock::new(),
        }
    }

    /// The file in `coding`, encoding it the first time; `None` when that failed (then it is
    /// sent as it is).
    fn encoded(&self, coding: Coding) -> Option<Bytes> {
        let cell = match coding {
            Coding::Brotli => &self.brotli,
            Coding::Gzip => &self.gzip,
        };
        cell.get_or_init(|| match coding.encode(self.asset.bytes) {
            Ok(bytes) => Some(Bytes::from(bytes)),
            Err(error) => {
                tracing::error!(%error, coding = coding.name(), "a static file could not be compressed");
                None
            }
        })
        .clone()
    }

    fn unchanged(&self, headers: &HeaderMap) -> bool {
        let ours = self
            .tag
            .to_str()
            .unwrap_or_default()
            .trim_start_matches("W/");
        headers
            .get_all(IF_NONE_MATCH)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .any(|t| t == "*" || t.trim_start_matches("W/") == ours)
    }
}

/// Every file with its tag and codings, for the whole process (compressed at most once each).
fn served() -> &'static [Served] {
    static SERVED: OnceLock<Vec<Served>> = OnceLock::new();
    SERVED.get_or_init(|| ASSETS.iter().map(Served::new).collect())
}

/// Compresses every file in both codings, so that the first visitors do not wait for it. Blocking:
/// run it off the async workers.
pub fn warm_up() {
    for served in served() {
        for coding in [Coding::Brotli, Coding::Gzip] {
            let _ = served.encoded(coding);
        }
    }
}

pub(super) fn router() -> Router<AppState> {
    let mut router = Router::new();
    for served in served() {
        router = router.route(
            served.asset.path,
            get(move |headers: HeaderMap| serve(served, headers)),
        );
    }
    router
}

async fn serve(served: &'static Served, headers: HeaderMap) -> Response {
    let common = [
        (ETAG, served.tag.clone()),
        (CACHE_CONTROL, REVALIDATE),
        (VARY, HeaderValue::from_static("accept-encoding")),
    ];
    if served.unchanged(&headers) {
        return (StatusCode::NOT_MODIFIED, common).into_response();
    }
    let content_type = [(
        CONTENT_TYPE,
        HeaderValue::from_static(served.asset.content_type),
    )];
    if let Some(coding) = chosen(&headers) {
        // Compressing the engine takes a while the first time: off the async workers.
        let encoded = tokio::task::spawn_blocking(move || served.encoded(coding))
            .await
            .ok()
            .flatten();
        if let Some(body) = encoded {
            let coding = [(CONTENT_ENCODING, HeaderValue::from_static(coding.name()))];
            return (common, content_type, coding, body).into_response();
        }
    }
    (common, content_type, served.asset.bytes).into_response()
}
