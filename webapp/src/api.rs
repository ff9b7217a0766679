//! The oracle's HTTP API, as the page uses it (same origin).

use scout_wasm::bridge::ModelOffer;
use serde::Deserialize;
use serde::de::DeserializeOwned;
use wasm_bindgen::{JsCast as _, JsValue};
use wasm_bindgen_futures::JsFuture;

/// What the page needs of `/api/status`.
#[derive(Debug, Clone, Deserialize)]
pub(crate) struct Status {
    /// The oracle's p2p node; absent when it runs without one.
    pub(crate) p2p: Option<P2p>,
    /// The draft model browser scouts load; absent without a p2p node.
    pub(crate) scout_model: Option<ModelOffer>,
}

/// The oracle's p2p node.
#[derive(Debug, Clone, Deserialize)]
pub(crate) struct P2p {
    /// Where peers reach it.
    pub(crate) listen_addrs: Vec<String>,
}

/// GETs `path` and decodes its JSON; errors are sentences for the page.
pub(crate) async fn get_json<T: DeserializeOwned>(path: &str) -> Result<T, String> {
    let window = web_sys::window().ok_or("this page has no window")?;
    let response: web_sys::Response = JsFuture::from(window.fetch_with_str(path))
        .await
        .map_err(|e| format!("the oracle is unreachable ({})", describe(&e)))?
        .unchecked_into();
    if !response.ok() {
        return Err(format!(
            "the oracle answered {path} with HTTP {}",
            response.status()
        ));
    }
    let text = response.text().map_err(|e| describe(&e))?;
    let text = JsFuture::from(text)
        .await
        .map_err(|e| format!("reading {path} failed ({})", describe(&e)))?
        .as_string()
        .unwrap_or_default();
    serde_json::from_str(&text).map_err(|e| format!("the oracle's {path} does not parse: {e}"))
}

/// A JavaScript error as one line.
pub(crate) fn describe(e: &JsValue) -> String {
    e.dyn_ref::<js_sys::Error>()
        .map(|e| String::from(e.message()))
        .or_else(|| e.as_string())
        .unwrap_or_else(|| format!("{e:?}"))
}
