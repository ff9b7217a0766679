//! The Shard web app.
//!
//! It will be a leptos (CSR) app, built by trunk (`trunk.toml` at the repository
//! root) and served by the oracle: a "contribute" button that turns the tab into a
//! scout, a leech console, and a view of the network.

fn main() {
    // Until the app exists, the page is the static index.html. Linking
    // wasm-bindgen keeps the trunk → wasm-bindgen toolchain exercised in tests.
    #[cfg(target_arch = "wasm32")]
    let _ = wasm_bindgen::JsValue::NULL;
}
