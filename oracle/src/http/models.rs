//! The model files this oracle hands out, for browsers (weights are public, so
//! none of this needs the API key):
//!
//! - `GET /models/{name}`: the draft model scouts must hold, whole. Downloads
//!   resume: `Range` (one range, 206/416) comes from `tower_http`'s
//!   `ServeFile`; this adds what it lacks — a strong `ETag` (the file's
//!   SHA-256, which the browser checks the bytes against anyway) with
//!   `If-None-Match` (304) and `If-Range` (a range only while the file is the
//!   same one).
//! - `GET /models/{cid}/manifest` and `GET /models/{cid}/pieces/{index}`: the
//!   same model as content-addressed pieces (`shared-weights`): the manifest's
//!   bytes hash to `cid`, each piece to its digest in the manifest, so both are
//!   immutable and cached for a year.

use std::path::PathBuf;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use shared_weights::Manifest;
use tower::ServiceExt as _;
use tower_http::services::ServeFile;

use super::{AppState, error::ApiError};

/// A model file this oracle hands out.
#[derive(Debug, Clone, Serialize)]
pub struct ServedModel {
    /// The file name, which is its URL's last segment.
    pub name: String,
    /// Where it is fetched from whole (`/models/{name}`).
    pub url: String,
    /// Bytes.
    pub size: u64,
    /// SHA-256 of the whole file, lowercase hex.
    pub sha256: String,
    /// Its content id on the network: its manifest's (the scout handshake
    /// names it), hex.
    pub cid: String,
    /// Where its manifest is (`/models/{cid}/manifest`); its pieces are at
    /// `/models/{cid}/pieces/{index}`.
    pub manifest_url: String,
    /// Bytes per piece (the last may be shorter).
    pub piece_size: u32,
    /// Number of pieces.
    pub pieces: u32,
    /// Blocks a browser scout should load (all when absent): a cut model
    /// drafts worse but fits slow devices.
    pub layers: Option<usize>,
    /// The file on disk (not sent).
    #[serde(skip)]
    pub path: PathBuf,
    /// Its manifest (not sent: it is at `manifest_url`); shared with the
    /// piece reads.
    #[serde(skip)]
    pub manifest: Arc<Manifest>,
}

impl ServedModel {
    /// Describes the model file at `path`, whose manifest is `manifest`.
    pub fn new(path: PathBuf, manifest: Manifest, layers: Option<usize>) -> Self {
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let cid = manifest.cid().to_string();
        ServedModel {
            url: format!("/models/{}", percent_encode(&name)),
            name,
            size: manifest.file_size(),
            sha256: hex::encode(&manifest.proto().file_sha256),
            manifest_url: format!("/models/{cid}/manifest"),
            cid,
            piece_size: manifest.piece_size(),
            pieces: manifest.piece_count(),
            layers,
            path,
            manifest: Arc::new(manifest),
        }
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

/// The served model whose content id is `cid`.
fn by_cid<'a>(state: &'a AppState, cid: &str) -> Option<&'a ServedModel> {
    state
        .scout_model
        .get()
        .filter(|m| m.cid.eq_ignore_ascii_case(cid))
}

fn no_such_model(cid: &str) -> Response {
    ApiError {
        status: StatusCode::NOT_FOUND,
        code: Some("model_not_found"),
        ..ApiError::invalid(format!("this oracle serves no model {cid:?}"), None)
    }
    .into_response()
}

/// Headers of something that never changes under its name.
fn immutable(etag: &str, content_type: &'static str) -> HeaderMap {
    let mut headers = HeaderMap::new();
    if let Ok(value) = HeaderValue::from_str(etag) {
        headers.insert(header::ETAG, value);
    }
    headers.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("public, max-age=31536000, immutable"),
    );
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers
}

pub(super) async fn manifest(
    State(state): State<Arc<AppState>>,
    Path(cid): Path<String>,
    headers: HeaderMap,
) -> Response {
    let Some(model) = by_cid(&state, &cid) else {
        return no_such_model(&cid);
    };
    let etag = format!("\"{}\"", model.cid);
    let headers_out = immutable(&etag, "application/x-protobuf");
    if names_etag(headers.get(header::IF_NONE_MATCH), &etag) == Some(true) {
        return (StatusCode::NOT_MODIFIED, headers_out).into_response();
    }
    (headers_out, model.manifest.bytes().to_vec()).into_response()
}

pub(super) async fn piece(
    State(state): State<Arc<AppState>>,
    Path((cid, index)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    let Some(model) = by_cid(&state, &cid) else {
        return no_such_model(&cid);
    };
    let Ok(index) = index.parse::<u32>() else {
        return ApiError::invalid_code(
            format!("{index:?} is not a piece index"),
            "index",
            "invalid_piece",
        )
        .into_response();
    };
    if let Err(e) = model.manifest.piece_range(index) {
        return ApiError {
            status: StatusCode::NOT_FOUND,
            code: Some("piece_not_found"),
            ..ApiError::invalid(e.to_string(), Some("index"))
        }
        .into_response();
    }
    let digest = &model.manifest.proto().piece_sha256[index as usize];
    let etag = format!("\"{}\"", hex::encode(digest));
    let headers_out = immutable(&etag, "application/octet-stream");
    if names_etag(headers.get(header::IF_NONE_MATCH), &etag) == Some(true) {
        return (StatusCode::NOT_MODIFIED, headers_out).into_response();
    }
    // Each read holds a piece (up to 16 MiB) in memory: a few at a time.
    let Ok(_permit) = PIECE_READS.try_acquire() else {
        return ApiError {
            status: StatusCode::SERVICE_UNAVAILABLE,
            code: Some("busy"),
            retry_after: Some(1),
            ..ApiError::invalid("this oracle is sending many pieces; try again", None)
        }
        .into_response();
    };
    let (path, manifest) = (model.path.clone(), model.manifest.clone());
    let read = tokio::task::spawn_blocking(move || {
        crate::weights::read_checked_piece(&path, &manifest, index)
    })
    .await;
    match read {
        Ok(Ok(data)) => {
            state.metrics.model_bytes_served.inc_by(data.len() as u64);
            (headers_out, data).into_response()
        }
        Ok(Err(e)) => {
            tracing::error!(error = %format!("{e:#}"), "cannot serve a piece");
            ApiError::internal(format!("{e:#}")).into_response()
        }
        Err(e) => ApiError::internal(format!("reading the model failed: {e}")).into_response(),
    }
}

/// Piece reads in flight at once on this route, all models together: each
/// holds a piece (up to 16 MiB) in memory. (Peers on p2p have a bound of
/// their own, so neither side starves the other.)
static PIECE_READS: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(8);

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
