//! Logs and panics to the browser console.
//!
//! cubecl reports a WGSL shader that fails validation only through `log::error!`
//! (and the kernel then returns stale data), so a tab must route `log` to the
//! console or such failures vanish; the browser tests fail on console errors.

use wasm_bindgen::JsValue;

struct ConsoleLogger;

impl log::Log for ConsoleLogger {
    fn enabled(&self, metadata: &log::Metadata<'_>) -> bool {
        metadata.level() <= log::Level::Info
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

/// Routes panics and `log` records to the console. Call once, first thing.
pub fn init() {
    console_error_panic_hook::set_once();
    if log::set_logger(&LOGGER).is_ok() {
        log::set_max_level(log::LevelFilter::Info);
    }
}
