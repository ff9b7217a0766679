//! Where a tab gets its draft model: the browser's Cache Storage first, the
//! oracle over HTTP otherwise — as content-addressed pieces when the oracle
//! offers a manifest (it does), the whole file otherwise.
//!
//! [`obtain`] is the one door. Whatever the source, the bytes are checked
//! before anyone sees them:
//!
//! - the manifest must hash to the model's content id (the handshake names
//!   it), and agree with the announced size and SHA-256;
//! - each piece must match its SHA-256 in the manifest before it is kept; a
//!   piece that does not is refused and fetched again (a few times, then the
//!   download fails);
//! - the assembled file must match its SHA-256 once more.
//!
//! Pieces go into Cache Storage as they arrive, so a tab reloaded halfway
//! through resumes: pieces found there are checked again and only the missing
//! ones are fetched. A finished model is kept whole under its SHA-256 and the
//! pieces are dropped (a new model never meets an old file; storing one
//! removes the others). A cache that cannot store (quota, no Cache Storage
//! outside a secure context) is reported, and the model is used anyway.

use js_sys::{Array, Reflect, Uint8Array};
use sha2::Digest as _;
use wasm_bindgen::prelude::*;
use wasm_bindgen_futures::JsFuture;
use web_sys::{Cache, DedicatedWorkerGlobalScope, Request, Response};

use futures::StreamExt as _;
use shared_proto::ContentId;
use shared_weights::Manifest;

use crate::bridge::{FromWorker, ModelOffer, ModelSource};

/// The Cache Storage cache the models live in.
const CACHE_NAME: &str = "shard-models";
/// Piece requests in flight at once.
const PIECES_IN_FLIGHT: usize = 4;
/// Bad copies of a piece refused before the download fails.
const PIECE_TRIES: u32 = 3;
/// Failed requests for one piece (busy oracle, network error, no answer)
/// before the download fails; the waits between them double from
/// [`RETRY_MIN`].
const FETCH_TRIES: u32 = 6;
const RETRY_MIN: std::time::Duration = std::time::Duration::from_millis(500);
/// A request without its whole answer after this is given up (and retried).
const REQUEST_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

/// How far a download is, for progress events.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Fetched {
    /// Bytes verified (cached ones included).
    pub received: u64,
    /// Pieces verified.
    pub pieces: u32,
    /// Pieces in all (0 for a whole-file download).
    pub pieces_total: u32,
    /// Pieces found in the cache.
    pub pieces_cached: u32,
    /// Pieces refused for a bad hash.
    pub pieces_refused: u32,
}

/// A checked model and where it came from.
pub(super) struct Obtained {
    /// The model file; its size and SHA-256 match the offer.
    pub bytes: Vec<u8>,
    /// Cache or network.
    pub source: ModelSource,
    /// Why the model could not be read from or kept in the cache, if so.
    pub cache_error: Option<String>,
}

/// The checked model `offer` names; `progress` follows a download.
pub(super) async fn obtain(
    offer: &ModelOffer,
    mut progress: impl FnMut(Fetched),
) -> Result<Obtained, FromWorker> {
    let key = cache_key(offer);
    let cache = match open_cache().await {
        Ok(cache) => cache,
        Err(why) => {
            log::warn!("model cache: {why}");
            let (bytes, source) = download(offer, None, &mut progress).await?;
            return Ok(Obtained {
                bytes,
                source,
                cache_error: Some(why),
            });
        }
    };
    let cached = read_cached(&cache, &key).await;
    match cached {
        Ok(Some(bytes)) if check(offer, &bytes).await.is_ok() => {
            progress(Fetched {
                received: bytes.len() as u64,
                ..Default::default()
            });
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
    let (mut bytes, source) = download(offer, Some(&cache), &mut progress).await?;
    let cache_error = store(&cache, &key, &mut bytes).await.err();
    if let Some(why) = &cache_error {
        log::warn!("model cache: {why}");
    }
    Ok(Obtained {
        bytes,
        source,
        cache_error,
    })
}

/// The model from the oracle: in pieces when it offers a manifest, whole
/// otherwise; checked either way.
async fn download(
    offer: &ModelOffer,
    cache: Option<&Cache>,
    progress: &mut impl FnMut(Fetched),
) -> Result<(Vec<u8>, ModelSource), FromWorker> {
    match &offer.manifest_url {
        Some(url) => download_pieces(offer, url, cache, progress).await,
        None => Ok((
            download_checked(offer, progress).await?,
            ModelSource::Network,
        )),
    }
}

/// Cache keys of a model's manifest and pieces, under its content id.
fn piece_key(cid: &ContentId, piece: Option<u32>) -> String {
    match piece {
        Some(i) => format!("/shard-model-cache/{cid}/pieces/{i}"),
        None => format!("/shard-model-cache/{cid}/manifest"),
    }
}

/// The manifest, from the cache or the oracle, checked against the content
/// id and the offer.
async fn manifest_of(
    offer: &ModelOffer,
    cid: &ContentId,
    url: &str,
    cache: Option<&Cache>,
) -> Result<Manifest, FromWorker> {
    let key = piece_key(cid, None);
    if let Some(cache) = cache
        && let Ok(Some(bytes)) = read_cached(cache, &key).await
    {
        match Manifest::from_bytes(cid, bytes) {
            Ok(m) => return Ok(m),
            Err(e) => {
                log::warn!("model cache: the cached manifest is bad ({e}); fetching it again");
                let _ = JsFuture::from(cache.delete_with_str(&key)).await;
            }
        }
    }
    let bytes = fetch_bytes(url).await?;
    let manifest = Manifest::from_bytes(cid, bytes.clone()).map_err(|e| {
        FromWorker::error(
            "checksum",
            format!("the model's manifest is corrupt (it is not model {cid}): {e}"),
        )
    })?;
    if manifest.file_size() != offer.size
        || !hex::encode(&manifest.proto().file_sha256).eq_ignore_ascii_case(offer.sha256.trim())
    {
        return Err(FromWorker::error(
            "checksum",
            "the model's manifest describes another file than the oracle announced",
        ));
    }
    if let Some(cache) = cache {
        let _ = put(cache, &key, &bytes).await;
    }
    Ok(manifest)
}

/// Whether `data` is piece `index`: WebCrypto's SHA-256 where there is one.
async fn piece_ok(manifest: &Manifest, index: u32, data: &[u8]) -> bool {
    if manifest.check_piece_size(index, data.len()).is_err() {
        return false;
    }
    match subtle_sha256(data).await {
        Ok(digest) => manifest.check_piece_digest(index, &digest).is_ok(),
        Err(_) => manifest.check_piece(index, data).is_ok(),
    }
}

/// Piece `index` from `url`, verified. A bad copy is refused and asked for
/// again, up to [`PIECE_TRIES`] times; a failed request (the oracle busy, a
/// network error, no answer in time) is retried after a wait, up to
/// [`FETCH_TRIES`] times. Returns the piece and the copies refused.
async fn fetch_piece(
    manifest: &Manifest,
    index: u32,
    url: &str,
) -> Result<(u32, Vec<u8>, u32), FromWorker> {
    let (mut refused, mut failed) = (0, 0);
    loop {
        match fetch_bytes(url).await {
            Ok(data) if piece_ok(manifest, index, &data).await => {
                return Ok((index, data, refused));
            }
            Ok(_) => {
                refused += 1;
                log::warn!("piece {index} of the model is corrupt (SHA-256 mismatch): refused");
                if refused >= PIECE_TRIES {
                    return Err(FromWorker::error(
                        "checksum",
                        format!(
                            "piece {index} of the model came corrupt {refused} times (SHA-256 mismatch)"
                        ),
                    ));
                }
            }
            Err(e) => {
                failed += 1;
                if failed >= FETCH_TRIES {
                    return Err(e);
                }
                let wait = RETRY_MIN * 2u32.pow(failed - 1);
                log::info!("piece {index}: request failed, retrying in {wait:?}");
                futures_timer::Delay::new(wait).await;
            }
        }
    }
}

/// The model as pieces: those kept in the cache by an earlier visit (checked
/// again), the rest from the oracle, each kept as it arrives.
async fn download_pieces(
    offer: &ModelOffer,
    manifest_url: &str,
    cache: Option<&Cache>,
    progress: &mut impl FnMut(Fetched),
) -> Result<(Vec<u8>, ModelSource), FromWorker> {
    let cid: ContentId = offer
        .cid
        .parse()
        .map_err(|e| FromWorker::error("message", format!("model cid: {e}")))?;
    let manifest = manifest_of(offer, &cid, manifest_url, cache).await?;
    let pieces_url = manifest_url
        .strip_suffix("/manifest")
        .ok_or_else(|| FromWorker::error("message", "a manifest URL ends in /manifest"))?;
    let size = usize::try_from(manifest.file_size())
        .map_err(|_| FromWorker::error("model", "the model is too large for this tab"))?;
    let mut file = vec![0u8; size];
    let mut done = Fetched {
        pieces_total: manifest.piece_count(),
        ..Default::default()
    };
    let mut missing = Vec::new();
    for index in 0..manifest.piece_count() {
        let cached = match cache {
            Some(cache) => read_cached(cache, &piece_key(&cid, Some(index)))
                .await
                .ok()
                .flatten(),
            None => None,
        };
        match cached {
            Some(data) if piece_ok(&manifest, index, &data).await => {
                place(&manifest, &mut file, index, &data);
                done.received += data.len() as u64;
                done.pieces += 1;
                done.pieces_cached += 1;
            }
            Some(_) => {
                log::warn!("model cache: cached piece {index} is corrupt; fetching it again");
                missing.push(index);
            }
            None => missing.push(index),
        }
    }
    if done.pieces_cached > 0 {
        log::info!(
            "model download resumes: {} of {} pieces kept from an earlier visit",
            done.pieces_cached,
            done.pieces_total
        );
    }
    progress(done);
    let manifest_ref = &manifest;
    let mut arriving = futures::stream::iter(missing)
        .map(|index| async move {
            fetch_piece(manifest_ref, index, &format!("{pieces_url}/pieces/{index}")).await
        })
        .buffer_unordered(PIECES_IN_FLIGHT);
    let mut cache_failed = false;
    while let Some(arrived) = arriving.next().await {
        let (index, data, refused) = arrived?;
        if let Some(cache) = cache.filter(|_| !cache_failed)
            && let Err(why) = put(cache, &piece_key(&cid, Some(index)), &data).await
        {
            // Quota: the download goes on, it just cannot resume.
            log::warn!("model cache: cannot keep pieces ({why})");
            cache_failed = true;
        }
        place(&manifest, &mut file, index, &data);
        done.received += data.len() as u64;
        done.pieces += 1;
        done.pieces_refused += refused;
        progress(done);
    }
    drop(arriving);
    check(offer, &file).await?;
    let source = if done.pieces_cached > 0 {
        ModelSource::Resumed
    } else {
        ModelSource::Network
    };
    Ok((file, source))
}

/// Copies verified piece `index` into the file.
fn place(manifest: &Manifest, file: &mut [u8], index: u32, data: &[u8]) {
    if let Ok(range) = manifest.piece_range(index) {
        let (start, end) = (range.start as usize, range.end as usize);
        if let Some(slot) = file.get_mut(start..end) {
            slot.copy_from_slice(data);
        }
    }
}

/// Keeps `bytes` under `key`.
async fn put(cache: &Cache, key: &str, bytes: &[u8]) -> Result<(), String> {
    let mut copy = bytes.to_vec();
    let response = Response::new_with_opt_u8_array(Some(&mut copy)).map_err(|e| describe(&e))?;
    JsFuture::from(cache.put_with_str(key, &response))
        .await
        .map(|_| ())
        .map_err(|e| describe(&e))
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
    progress: &mut impl FnMut(Fetched),
) -> Result<Vec<u8>, FromWorker> {
    let mut bytes = Vec::with_capacity(usize::try_from(offer.size).unwrap_or(0));
    let mut last_report = 0u64;
    fetch_streaming(&offer.url, |chunk| {
        bytes.extend_from_slice(chunk);
        let received = bytes.len() as u64;
        if received - last_report >= 1 << 20 || received == offer.size {
            last_report = received;
            progress(Fetched {
                received,
                ..Default::default()
            });
        }
    })
    .await?;
    check(offer, &bytes).await?;
    Ok(bytes)
}

/// GETs `url` whole, past the HTTP cache (a bad copy there would come back
/// each time; verified pieces are kept in Cache Storage instead), giving up
/// after [`REQUEST_TIMEOUT`].
async fn fetch_bytes(url: &str) -> Result<Vec<u8>, FromWorker> {
    let fetch_error = |e: JsValue| FromWorker::error("fetch", format!("{url}: {}", describe(&e)));
    let controller = web_sys::AbortController::new().ok();
    let init = web_sys::RequestInit::new();
    init.set_cache(web_sys::RequestCache::NoStore);
    if let Some(c) = &controller {
        init.set_signal(Some(&c.signal()));
    }
    let work = async {
        let response = get(url, &init).await?;
        let body = JsFuture::from(response.array_buffer().map_err(fetch_error)?)
            .await
            .map_err(fetch_error)?;
        Ok(Uint8Array::new(&body).to_vec())
    };
    let work = std::pin::pin!(work);
    match futures::future::select(work, futures_timer::Delay::new(REQUEST_TIMEOUT)).await {
        futures::future::Either::Left((result, _)) => result,
        futures::future::Either::Right(_) => {
            if let Some(c) = controller {
                c.abort();
            }
            Err(FromWorker::error(
                "fetch",
                format!("{url}: no answer in {} s", REQUEST_TIMEOUT.as_secs()),
            ))
        }
    }
}

/// GETs `url` with `init`: the response, when its status says success.
async fn get(url: &str, init: &web_sys::RequestInit) -> Result<Response, FromWorker> {
    let response: Response = JsFuture::from(scope().fetch_with_str_and_init(url, init))
        .await
        .map_err(|e| FromWorker::error("fetch", format!("{url}: {}", describe(&e))))?
        .unchecked_into();
    if !response.ok() {
        return Err(FromWorker::error(
            "fetch",
            format!("{url}: HTTP {}", response.status()),
        ));
    }
    Ok(response)
}

/// GETs `url`, handing each chunk of the body to `on_chunk` as it arrives.
pub(super) async fn fetch_streaming(
    url: &str,
    mut on_chunk: impl FnMut(&[u8]),
) -> Result<(), FromWorker> {
    let fetch_error = |e: JsValue| FromWorker::error("fetch", format!("{url}: {}", describe(&e)));
    let response = get(url, &web_sys::RequestInit::new()).await?;
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
