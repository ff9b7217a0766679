//! `GET /models/{name}`: the draft model scouts must hold, for browsers.
//!
//! Weights are public, so this sits outside the API key. Downloads resume:
//! `Range` (one range, 206/416) comes from `tower_http`'s `ServeFile`; this
//! adds what it lacks — a strong `ETag` (the file's SHA-256, which the
//! browser checks the bytes against anyway) with `If-None-Match` (304) and
//! `If-Range` (a range only while the file is the same one).

use std::path::PathBuf;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use tower::ServiceExt as _;
use tower_http::services::ServeFile;

use super::{AppState, error::ApiError};

/// A model file this oracle hands out.
#[derive(Debug, Clone, Serialize)]
pub struct ServedModel {
    /// The file name, which is its URL's last segment.
    pub name: String,
    /// Where it is fetched from (`/models/{name}`).
    pub url: String,
    /// Bytes.
    pub size: u64,
    /// SHA-256 of the whole file, lowercase hex.
    pub sha256: String,
    /// Its content id on the network (the scout handshake names it).
    pub cid: String,
    /// Blocks a browser scout should load (all when absent): a cut model
    /// drafts worse but fits slow devices.
    pub layers: Option<usize>,
    /// The file on disk (not sent).
    #[serde(skip)]
    pub path: PathBuf,
}

impl ServedModel {
    /// Describes `path`, whose SHA-256 content id is `cid` (multihash bytes).
    pub fn new(path: PathBuf, cid: &[u8], layers: Option<usize>) -> std::io::Result<Self> {
        let size = std::fs::metadata(&path)?.len();
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        // A SHA-256 multihash: 0x12, 32, then the digest.
        let sha256 = hex::encode(cid.get(2..).unwrap_or_default());
        Ok(ServedModel {
            url: format!("/models/{}", percent_encode(&name)),
            name,
            size,
            sha256,
            cid: hex::encode(cid),
            layers,
            path,
        })
    }

    fn etag(&self) -> String {
        format!("\"{}\"", self.sha256)
    }
}

/// URL path segment encoding for a file name (keeps unreserved characters).
fn percent_encode(name: &str) -> String {
    name.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                char::from(b).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Whether an `If-None-Match`/`If-Range` value names `etag` (`*` names any).
fn names_etag(value: Option<&HeaderValue>, etag: &str) -> Option<bool> {
    let value = value?.to_str().ok()?;
    Some(
        value
            .split(',')
            .map(str::trim)
            .any(|tag| tag == "*" || tag == etag),
    )
}

pub(super) async fn model_file(
    State(state): State<Arc<AppState>>,
    Path(name): Path<String>,
    mut request: Request,
) -> Response {
    let Some(model) = state.scout_model.get().filter(|m| m.name == name) else {
        return ApiError {
            status: StatusCode::NOT_FOUND,
            code: Some("model_not_found"),
            ..ApiError::invalid(format!("this oracle serves no model named {name:?}"), None)
        }
        .into_response();
    };
    let etag = model.etag();
    let headers = request.headers_mut();
    if names_etag(headers.get(header::IF_NONE_MATCH), &etag) == Some(true) {
        return (StatusCode::NOT_MODIFIED, [(header::ETAG, etag)]).into_response();
    }
    // If-Range holds an ETag here (ours are strong); a date is not ours to check.
    if let Some(false) = names_etag(headers.get(header::IF_RANGE), &etag) {
        headers.remove(header::RANGE);
    }
    headers.remove(header::IF_RANGE);
    let response = match ServeFile::new(&model.path).oneshot(request).await {
        Ok(r) => r,
        Err(e) => {
            return ApiError::internal(format!("reading the model failed: {e}")).into_response();
        }
    };
    let (mut parts, body) = response.into_parts();
    let sent = parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if let (true, Some(len)) = (parts.status.is_success(), sent) {
        state.metrics.model_bytes_served.inc_by(len);
    }
    if let Ok(value) = HeaderValue::from_str(&etag) {
        parts.headers.insert(header::ETAG, value);
    }
    // Revalidate each time (cheap: 304), so a changed file is never used stale.
    parts
        .headers
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    parts.headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    Response::from_parts(parts, Body::new(body))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn etags_match_by_list_and_wildcard() {
        let etag = "\"ab\"";
        let v = |s: &'static str| HeaderValue::from_static(s);
        assert_eq!(names_etag(Some(&v("\"ab\"")), etag), Some(true));
        assert_eq!(names_etag(Some(&v("\"x\", \"ab\"")), etag), Some(true));
        assert_eq!(names_etag(Some(&v("*")), etag), Some(true));
        assert_eq!(names_etag(Some(&v("\"abc\"")), etag), Some(false));
        assert_eq!(names_etag(None, etag), None);
    }

    #[test]
    fn names_are_encoded_for_urls() {
        assert_eq!(percent_encode("a b/c.gguf"), "a%20b%2Fc.gguf");
        assert_eq!(
            percent_encode("SmolLM2-135M.Q4_1.gguf"),
            "SmolLM2-135M.Q4_1.gguf"
        );
    }
}
