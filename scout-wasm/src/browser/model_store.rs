//! Where a tab gets its draft model: the browser's Cache Storage first, the
//! oracle over HTTP otherwise.
//!
//! [`obtain`] is the one door: the weights issue replaces the HTTP half with
//! verified pieces from many peers without touching its callers. Whatever the
//! source, the bytes are checked against the announced size and SHA-256 before
//! anyone sees them: a cached copy that fails is deleted and fetched again, a
//! download that fails is refused and never cached. Entries are keyed by the
//! SHA-256, so a new model never meets an old file; storing one removes the
//! others. A cache that cannot store (quota, no Cache Storage outside a secure
//! context) is reported, and the model is used anyway.

use js_sys::{Array, Reflect, Uint8Array};
use sha2::Digest as _;
use wasm_bindgen::prelude::*;
use wasm_bindgen_futures::JsFuture;
use web_sys::{Cache, DedicatedWorkerGlobalScope, Request, Response};

use crate::bridge::{FromWorker, ModelOffer, ModelSource};

/// The Cache Storage cache the models live in.
const CACHE_NAME: &str = "shard-models";

/// A checked model and where it came from.
pub(super) struct Obtained {
    /// The model file; its size and SHA-256 match the offer.
    pub bytes: Vec<u8>,
    /// Cache or network.
    pub source: ModelSource,
    /// Why the model could not be read from or kept in the cache, if so.
    pub cache_error: Option<String>,
}

/// The checked model `offer` names; `progress(received)` follows a download.
pub(super) async fn obtain(
    offer: &ModelOffer,
    mut progress: impl FnMut(u64),
) -> Result<Obtained, FromWorker> {
    let key = cache_key(offer);
    let cache = match open_cache().await {
        Ok(cache) => cache,
        Err(why) => {
            log::warn!("model cache: {why}");
            let bytes = download_checked(offer, &mut progress).await?;
            return Ok(Obtained {
                bytes,
                source: ModelSource::Network,
                cache_error: Some(why),
            });
        }
    };
    let cached = read_cached(&cache, &key).await;
    match cached {
        Ok(Some(bytes)) if check(offer, &bytes).await.is_ok() => {
            progress(bytes.len() as u64);
            return Ok(Obtained {
                bytes,
                source: ModelSource::Cache,
                cache_error: None,
            });
        }
        Ok(Some(_)) => {
            log::warn!("model cache: the cached copy fails its check; fetching it again");
            let _ = JsFuture::from(cache.delete_with_str(&key)).await;
        }
        Ok(None) => {}
        Err(why) => log::warn!("model cache: reading failed ({why}); fetching the model"),
    }
    let mut bytes = download_checked(offer, &mut progress).await?;
    let cache_error = store(&cache, &key, &mut bytes).await.err();
    if let Some(why) = &cache_error {
        log::warn!("model cache: {why}");
    }
    Ok(Obtained {
        bytes,
        source: ModelSource::Network,
        cache_error,
    })
}

/// The cache entry's URL: content-addressed by the file's SHA-256.
fn cache_key(offer: &ModelOffer) -> String {
    format!(
        "/shard-model-cache/{}",
        offer.sha256.trim().to_ascii_lowercase()
    )
}

fn scope() -> DedicatedWorkerGlobalScope {
    js_sys::global().unchecked_into()
}

fn describe(e: &JsValue) -> String {
    let name = Reflect::get(e, &"name".into())
        .ok()
        .and_then(|v| v.as_string());
    let message = Reflect::get(e, &"message".into())
        .ok()
        .and_then(|v| v.as_string());
    match (name, message) {
        (Some(name), Some(message)) => format!("{name}: {message}"),
        _ => format!("{e:?}"),
    }
}

async fn open_cache() -> Result<Cache, String> {
    let storage = scope().caches().map_err(|e| {
        format!(
            "this page cannot use Cache Storage ({}; it needs https or localhost), so the model is downloaded on every visit",
            describe(&e)
        )
    })?;
    let cache = JsFuture::from(storage.open(CACHE_NAME))
        .await
        .map_err(|e| format!("opening the model cache failed: {}", describe(&e)))?;
    Ok(cache.unchecked_into())
}

async fn read_cached(cache: &Cache, key: &str) -> Result<Option<Vec<u8>>, String> {
    let found = JsFuture::from(cache.match_with_str(key))
        .await
        .map_err(|e| describe(&e))?;
    if found.is_undefined() {
        return Ok(None);
    }
    let response: Response = found.unchecked_into();
    let body = response.array_buffer().map_err(|e| describe(&e))?;
    let buffer = JsFuture::from(body).await.map_err(|e| describe(&e))?;
    Ok(Some(Uint8Array::new(&buffer).to_vec()))
}

/// Keeps `bytes` under `key` and drops every other model.
async fn store(cache: &Cache, key: &str, bytes: &mut [u8]) -> Result<(), String> {
    let response = Response::new_with_opt_u8_array(Some(bytes))
        .map_err(|e| format!("keeping the model failed: {}", describe(&e)))?;
    JsFuture::from(cache.put_with_str(key, &response))
        .await
        .map_err(|e| {
            format!(
                "the browser would not keep the model ({}); it is used now but downloaded again next visit",
                describe(&e)
            )
        })?;
    let keys: Array = JsFuture::from(cache.keys())
        .await
        .map_err(|e| describe(&e))?
        .unchecked_into();
    for request in keys.iter() {
        let request: Request = request.unchecked_into();
        if !request.url().ends_with(key) {
            let _ = JsFuture::from(cache.delete_with_request(&request)).await;
        }
    }
    Ok(())
}

/// Whether `bytes` is the file `offer` announces.
async fn check(offer: &ModelOffer, bytes: &[u8]) -> Result<(), FromWorker> {
    if bytes.len() as u64 != offer.size {
        return Err(FromWorker::error(
            "checksum",
            format!(
                "the model has {} bytes, the oracle announced {}",
                bytes.len(),
                offer.size
            ),
        ));
    }
    let got = sha256_hex(bytes).await;
    if !got.eq_ignore_ascii_case(offer.sha256.trim()) {
        return Err(FromWorker::error(
            "checksum",
            format!(
                "the model download is corrupt: SHA-256 {got}, expected {}",
                offer.sha256
            ),
        ));
    }
    Ok(())
}

/// SHA-256 of `bytes`, hex: WebCrypto where the page may use it (secure
/// contexts), our own hashing elsewhere. For the 98 MB default model WebCrypto
/// takes 0.2 s, sha2 compiled to wasm 4.8 s (headless Chromium, this machine).
async fn sha256_hex(bytes: &[u8]) -> String {
    match subtle_sha256(bytes).await {
        Ok(digest) => hex::encode(digest),
        Err(why) => {
            log::debug!("WebCrypto unavailable ({why}); hashing in wasm");
            hex::encode(sha2::Sha256::digest(bytes))
        }
    }
}

async fn subtle_sha256(bytes: &[u8]) -> Result<Vec<u8>, String> {
    let crypto = Reflect::get(&js_sys::global(), &"crypto".into()).map_err(|e| describe(&e))?;
    let subtle = Reflect::get(&crypto, &"subtle".into()).map_err(|e| describe(&e))?;
    if subtle.is_undefined() {
        return Err("crypto.subtle is missing (not a secure context)".to_owned());
    }
    let digest: js_sys::Function = Reflect::get(&subtle, &"digest".into())
        .map_err(|e| describe(&e))?
        .dyn_into()
        .map_err(|_| "crypto.subtle.digest is not a function".to_owned())?;
    // A copy into JS memory (tens of ms for a 100 MB model); a view of wasm
    // memory would need `unsafe`.
    let view = Uint8Array::from(bytes);
    let promise: js_sys::Promise = digest
        .call2(&subtle, &"SHA-256".into(), &view)
        .map_err(|e| describe(&e))?
        .dyn_into()
        .map_err(|_| "crypto.subtle.digest returned no promise".to_owned())?;
    let buffer = JsFuture::from(promise).await.map_err(|e| describe(&e))?;
    Ok(Uint8Array::new(&buffer).to_vec())
}

/// Downloads the model with progress and checks it; a file that does not
/// match is never used.
async fn download_checked(
    offer: &ModelOffer,
    progress: &mut impl FnMut(u64),
) -> Result<Vec<u8>, FromWorker> {
    let mut bytes = Vec::with_capacity(usize::try_from(offer.size).unwrap_or(0));
    let mut last_report = 0u64;
    fetch_streaming(&offer.url, |chunk| {
        bytes.extend_from_slice(chunk);
        let received = bytes.len() as u64;
        if received - last_report >= 1 << 20 || received == offer.size {
            last_report = received;
            progress(received);
        }
    })
    .await?;
    check(offer, &bytes).await?;
    Ok(bytes)
}

/// GETs `url`, handing each chunk of the body to `on_chunk` as it arrives.
pub(super) async fn fetch_streaming(
    url: &str,
    mut on_chunk: impl FnMut(&[u8]),
) -> Result<(), FromWorker> {
    let fetch_error = |e: JsValue| FromWorker::error("fetch", format!("{url}: {}", describe(&e)));
    let response: Response = JsFuture::from(scope().fetch_with_str(url))
        .await
        .map_err(fetch_error)?
        .unchecked_into();
    if !response.ok() {
        return Err(FromWorker::error(
            "fetch",
            format!("{url}: HTTP {}", response.status()),
        ));
    }
    let body = response
        .body()
        .ok_or_else(|| FromWorker::error("fetch", format!("{url}: no body")))?;
    let reader: web_sys::ReadableStreamDefaultReader = body.get_reader().unchecked_into();
    loop {
        let step = JsFuture::from(reader.read()).await.map_err(fetch_error)?;
        let done = Reflect::get(&step, &"done".into())
            .map(|v| v.is_truthy())
            .unwrap_or(true);
        if done {
            return Ok(());
        }
        let value = Reflect::get(&step, &"value".into()).map_err(fetch_error)?;
        let chunk: Uint8Array = value.unchecked_into();
        on_chunk(&chunk.to_vec());
    }
}
