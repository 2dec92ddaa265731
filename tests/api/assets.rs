//! The pages' static files: the engine the browser loads is the one `web/build` made, sent
//! compressed (brotli or gzip) to browsers that accept it, and revalidated by ETag instead of sent
//! again.

use std::io::Read as _;

use reqwest::StatusCode;
use reqwest::header::{
    ACCEPT_ENCODING, CACHE_CONTROL, CONTENT_ENCODING, CONTENT_TYPE, ETAG, IF_NONE_MATCH, VARY,
};
use tessera_tests::TestApp;

const WASM: &[u8] = include_bytes!("../../web/pkg/tessera_web_bg.wasm");

fn decode(coding: &str, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    match coding {
        "br" => brotli::Decompressor::new(body, 4096)
            .read_to_end(&mut out)
            .expect("brotli"),
        _ => flate2::read::GzDecoder::new(body)
            .read_to_end(&mut out)
            .expect("gzip"),
    };
    out
}

#[tokio::test]
async fn the_engine_is_served_compressed_and_revalidated() {
    let app = TestApp::spawn().await;
    let client = reqwest::Client::new();
    let url = format!("{}static/engine/tessera_web_bg.wasm", app.origin);

    // Without Accept-Encoding: the bytes as built.
    let plain = client.get(&url).send().await.expect("wasm");
    assert_eq!(plain.status(), StatusCode::OK);
    assert_eq!(plain.headers()[CONTENT_TYPE], "application/wasm");
    assert_eq!(plain.headers()[CACHE_CONTROL], "no-cache");
    assert!(plain.headers().get(CONTENT_ENCODING).is_none());
    let tag = plain.headers()[ETAG].clone();
    assert!(tag.to_str().is_ok_and(|t| t.starts_with("W/\"")), "{tag:?}");
    assert_eq!(plain.bytes().await.expect("body").as_ref(), WASM);

    // A browser that takes brotli or gzip gets far fewer bytes, which decode to the same file;
    // brotli when it takes both, gzip when it refuses brotli (q=0).
    for (accept, coding) in [
        ("gzip, deflate, br", "br"),
        ("br", "br"),
        ("gzip", "gzip"),
        ("br;q=0, gzip", "gzip"),
    ] {
        let packed = client
            .get(&url)
            .header(ACCEPT_ENCODING, accept)
            .send()
            .await
            .expect("wasm");
        assert_eq!(packed.status(), StatusCode::OK);
        assert_eq!(packed.headers()[CONTENT_ENCODING], coding, "{accept}");
        assert_eq!(packed.headers()[VARY], "accept-encoding");
        assert_eq!(packed.headers()[ETAG], tag, "one tag for every coding");
        let body = packed.bytes().await.expect("body");
        assert!(
            body.len() < WASM.len() / 2,
            "{coding}: {} bytes",
            body.len()
        );
        assert_eq!(decode(coding, &body), WASM, "{coding} decodes to the file");
    }
    let refused = client
        .get(&url)
        .header(ACCEPT_ENCODING, "br;q=0, gzip;q=0")
        .send()
        .await
        .expect("wasm");
    assert!(refused.headers().get(CONTENT_ENCODING).is_none());
    assert_eq!(refused.bytes().await.expect("body").as_ref(), WASM);

    // Its tag answers 304 with nothing to download; another tag, or none, the file.
    let again = client
        .get(&url)
        .header(IF_NONE_MATCH, tag.clone())
        .send()
        .await
        .expect("wasm");
    assert_eq!(again.status(), StatusCode::NOT_MODIFIED);
    assert!(again.bytes().await.expect("body").is_empty());
    let strong = tag
        .to_str()
        .expect("text")
        .trim_start_matches("W/")
        .to_owned();
    let again = client
        .get(&url)
        .header(IF_NONE_MATCH, format!("\"other\", {strong}"))
        .send()
        .await
        .expect("wasm");
    assert_eq!(
        again.status(),
        StatusCode::NOT_MODIFIED,
        "a list holding the tag"
    );
    let stale = client
        .get(&url)
        .header(IF_NONE_MATCH, "W/\"0123\"")
        .send()
        .await
        .expect("wasm");
    assert_eq!(stale.status(), StatusCode::OK);
    assert_eq!(stale.bytes().await.expect("body").as_ref(), WASM);

    // Every script of the pages is served, each with its own tag.
    let mut tags = Vec::new();
    for path in [
        "app.js",
        "circle.js",
        "device.js",
        "engine/tessera_web.js",
        "style.css",
    ] {
        let response = client
            .get(format!("{}static/{path}", app.origin))
            .send()
            .await
            .expect("asset");
        assert_eq!(response.status(), StatusCode::OK, "{path}");
        tags.push(response.headers()[ETAG].clone());
    }
    tags.dedup();
    assert_eq!(tags.len(), 5, "distinct tags: {tags:?}");
}
