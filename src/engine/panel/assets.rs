//! The panel's static files, embedded in the binary and served at content-hashed URLs
//! (`/assets/{hash}/{name}`) that never change meaning, hence cached as `immutable`.

use std::sync::OnceLock;

use axum::extract::Path;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

struct Asset {
    name: &'static str,
    mime: &'static str,
    bytes: &'static [u8],
}

const ASSETS: &[Asset] = &[
    Asset {
        name: "panel.css",
        mime: "text/css; charset=utf-8",
        bytes: include_bytes!("../../../assets/panel/panel.css"),
    },
    Asset {
        name: "panel.js",
        mime: "text/javascript; charset=utf-8",
        bytes: include_bytes!("../../../assets/panel/panel.js"),
    },
    Asset {
        name: "uplot.js",
        mime: "text/javascript; charset=utf-8",
        bytes: include_bytes!("../../../assets/panel/vendor/uplot/uPlot.iife.min.js"),
    },
    Asset {
        name: "uplot.css",
        mime: "text/css; charset=utf-8",
        bytes: include_bytes!("../../../assets/panel/vendor/uplot/uPlot.min.css"),
    },
];

/// Each asset's hash (the first 16 hex digits of its SHA-256), in the order of [`ASSETS`].
fn hashes() -> &'static [String] {
    static HASHES: OnceLock<Vec<String>> = OnceLock::new();
    HASHES.get_or_init(|| {
        ASSETS
            .iter()
            .map(|a| {
                let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, a.bytes);
                digest.as_ref()[..8]
                    .iter()
                    .map(|b| format!("{b:02x}"))
                    .collect()
            })
            .collect()
    })
}

/// The URL of asset `name` (one of the embedded files).
pub fn url(name: &str) -> String {
    let i = ASSETS
        .iter()
        .position(|a| a.name == name)
        .unwrap_or_else(|| panic!("no embedded asset {name}"));
    format!("/assets/{}/{name}", hashes()[i])
}

/// `GET /assets/{hash}/{name}`: the file if the hash is its current one, else 404.
pub async fn serve(Path((hash, name)): Path<(String, String)>) -> Response {
    let found = ASSETS
        .iter()
        .zip(hashes())
        .find(|(a, h)| a.name == name && **h == hash);
    let Some((asset, _)) = found else {
        return (StatusCode::NOT_FOUND, "no such asset").into_response();
    };
    (
        [
            (header::CONTENT_TYPE, HeaderValue::from_static(asset.mime)),
            (
                header::CACHE_CONTROL,
                HeaderValue::from_static("public, max-age=31536000, immutable"),
            ),
        ],
        asset.bytes,
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_carry_the_content_hash() {
        let css = url("panel.css");
        assert!(
            css.starts_with("/assets/") && css.ends_with("/panel.css"),
            "{css}"
        );
        assert_eq!(css.len(), "/assets//panel.css".len() + 16);
        assert_ne!(url("uplot.js"), url("panel.js"));
    }
}
