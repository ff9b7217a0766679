//! The Shard web app (the page's bundle).
//!
//! It will be a leptos (CSR) app, built by trunk (`trunk.toml` at the repository
//! root) and served by the oracle: a "contribute" button that turns the tab into a
//! scout, a leech console, and a view of the network. Today the page exports the
//! browser scout's network node to JavaScript (`window.wasmBindings.ScoutNode`,
//! see `scout_wasm::browser::node`); the model runs in the `scout_worker` bundle.

fn main() {
    #[cfg(target_arch = "wasm32")]
    scout_wasm::browser::console::init();
}

// Keeps the node's JavaScript bindings in this bundle.
#[cfg(target_arch = "wasm32")]
pub use scout_wasm::browser::node::ScoutNode;
