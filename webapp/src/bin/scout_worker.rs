//! The scout's model worker (a dedicated Web Worker): the draft model on
//! WebGPU or the CPU. See `scout_wasm::browser::worker`.

fn main() {
    #[cfg(target_arch = "wasm32")]
    scout_wasm::browser::worker::start();
}
