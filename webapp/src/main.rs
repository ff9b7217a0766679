//! The Shard web app (the page's bundle): a leptos app, client-side rendered,
//! built by trunk (`trunk.toml` at the repository root) and served by the
//! oracle at `/`.
//!
//! Three pages: *Contribute* turns the tab into a scout (`scout_wasm::browser::node`; the
//! draft model runs in the `scout_worker` bundle). The page also exports the
//! scout's node to JavaScript (`window.wasmBindings.ScoutNode`), which the
//! browser tests drive directly.

// leptos's `#[component]` re-emits each component with `pub` visibility,
// whatever the function says; a binary exports nothing, so the lint only
// repeats that for every page.
#![cfg_attr(target_arch = "wasm32", allow(unreachable_pub))]

#[cfg(target_arch = "wasm32")]
mod api;
#[cfg(target_arch = "wasm32")]
mod app;
#[cfg(target_arch = "wasm32")]
mod chart;
#[cfg(target_arch = "wasm32")]
mod console;
#[cfg(target_arch = "wasm32")]
mod contribute;
#[cfg(target_arch = "wasm32")]
mod network;

fn main() {
    #[cfg(target_arch = "wasm32")]
    {
        scout_wasm::browser::console::init();
        leptos::mount::mount_to_body(app::App);
    }
}

// Keeps the node's JavaScript bindings in this bundle.
#[cfg(target_arch = "wasm32")]
pub use scout_wasm::browser::node::ScoutNode;
