//! Logs and panics to the browser console.
//!
//! cubecl reports a WGSL shader that fails validation only through `log::error!`
//! (and the kernel then returns stale data), so a tab must route `log` to the
//! console or such failures vanish; the browser tests fail on console errors.
//! libp2p logs through `tracing`, whose events become `log` records in a tab.
//!
//! The level is `info` unless the page's `localStorage["shard.log"]` names
//! another (`error`, `warn`, `info`, `debug`, `trace`): set it in the devtools
//! and reload to see libp2p's connection and gossip details.

use wasm_bindgen::JsValue;

struct ConsoleLogger;

impl log::Log for ConsoleLogger {
    fn enabled(&self, metadata: &log::Metadata<'_>) -> bool {
        // `tracing`'s span enter/exit lines would drown everything at debug.
        metadata.level() <= log::max_level() && !metadata.target().starts_with("tracing::span")
    }

    fn log(&self, record: &log::Record<'_>) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let line = JsValue::from_str(&format!("[{}] {}", record.target(), record.args()));
        match record.level() {
            log::Level::Error => web_sys::console::error_1(&line),
            log::Level::Warn => web_sys::console::warn_1(&line),
            _ => web_sys::console::log_1(&line),
        }
    }

    fn flush(&self) {}
}

static LOGGER: ConsoleLogger = ConsoleLogger;

/// The `localStorage` key that sets the page's log level.
pub const LOG_LEVEL_KEY: &str = "shard.log";

/// Routes panics and `log` records to the console. Call once, first thing.
pub fn init() {
    console_error_panic_hook::set_once();
    if log::set_logger(&LOGGER).is_ok() {
        log::set_max_level(configured_level().unwrap_or(log::LevelFilter::Info));
    }
}

/// The level named in the page's `localStorage`, if any (workers have none).
fn configured_level() -> Option<log::LevelFilter> {
    let storage = web_sys::window()?.local_storage().ok()??;
    let name = storage.get_item(LOG_LEVEL_KEY).ok()??;
    match name.parse() {
        Ok(level) => Some(level),
        Err(_) => {
            web_sys::console::warn_1(&JsValue::from_str(&format!(
                "{LOG_LEVEL_KEY}: unknown log level {name:?} (error, warn, info, debug, trace); using info"
            )));
            None
        }
    }
}
