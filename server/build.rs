//! Rebuilds the server when the web files it embeds change: they live outside this package, and
//! cargo would otherwise track them by absolute path only (another checkout sharing the build
//! cache would then go unnoticed).

fn main() {
    for path in [
        "../web/pkg/tessera_web.js",
        "../web/pkg/tessera_web_bg.wasm",
        "../web/app.js",
        "../web/circle.js",
        "../web/device.js",
        "../web/files-worker.js",
        "../web/style.css",
        "../web/templates",
    ] {
        println!("cargo:rerun-if-changed={path}");
    }
}
