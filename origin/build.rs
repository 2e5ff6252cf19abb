//! Embeds the player libraries installed from the npm registry (`make web`)
//! so the origin serves them itself. Without them the page still loads and
//! says what is missing.

use std::path::Path;

fn main() {
    let out = std::env::var("OUT_DIR").expect("cargo sets OUT_DIR");
    let libs = [
        ("hls.min.js", "../web/node_modules/hls.js/dist/hls.min.js"),
        (
            "dash.all.min.js",
            "../web/node_modules/dashjs/dist/modern/umd/dash.all.min.js",
        ),
    ];
    for (name, src) in libs {
        println!("cargo:rerun-if-changed={src}");
        let dst = Path::new(&out).join(name);
        let body = std::fs::read(src).unwrap_or_else(|_| {
            format!("console.error('{name} is not built: run make web');").into_bytes()
        });
        std::fs::write(dst, body).expect("write OUT_DIR");
    }
    println!("cargo:rerun-if-changed=migrations");
}
