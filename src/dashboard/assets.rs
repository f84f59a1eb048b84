//! The dashboard's static files, embedded in the binary at build time (also in debug builds, so
//! tests serve exactly what a release serves). Each answer carries its SHA-256 as ETag; a browser
//! that already has the file gets 304.

use axum::extract::Path;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use rust_embed::Embed;

#[derive(Embed)]
#[folder = "src/dashboard/assets"]
struct Assets;

/// `GET /ui/assets/{file}`.
pub async fn serve(Path(file): Path<String>, headers: HeaderMap) -> Response {
    let Some(asset) = Assets::get(&file) else {
        return (StatusCode::NOT_FOUND, format!("no dashboard asset '{file}'")).into_response();
    };
    let etag = format!("\"{}\"", hex(&asset.metadata.sha256_hash()));
    let cached = headers.get(header::IF_NONE_MATCH).and_then(|v| v.to_str().ok()).is_some_and(|v| v == etag);
    let mut response =
        if cached { StatusCode::NOT_MODIFIED.into_response() } else { asset.data.into_owned().into_response() };
    let headers = response.headers_mut();
    if let Ok(mime) = HeaderValue::from_str(asset.metadata.mimetype()) {
        headers.insert(header::CONTENT_TYPE, mime);
    }
    if let Ok(etag) = HeaderValue::from_str(&etag) {
        headers.insert(header::ETAG, etag);
    }
    // Revalidated after an hour: the files change only with a new binary.
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("public, max-age=3600"));
    response
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The vendored files are the releases VERSIONS names, byte for byte.
    #[test]
    fn vendored_files_match_their_recorded_hashes() {
        let versions = include_str!("assets/vendor/VERSIONS");
        let mut checked = 0;
        for line in versions.lines().filter(|l| !l.starts_with('#') && !l.trim().is_empty()) {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let (file, sha256) = (fields[0], fields[4]);
            let asset = Assets::get(&format!("vendor/{file}")).unwrap_or_else(|| panic!("{file} is embedded"));
            assert_eq!(hex(&asset.metadata.sha256_hash()), sha256, "{file} differs from the release VERSIONS names");
            checked += 1;
        }
        assert_eq!(checked, 2, "htmx and its SSE extension");
    }
}
