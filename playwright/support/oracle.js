// Starts a real `oracle serve` (the debug binary `cargo test` built) for the
// browser tests, serving the web app from webapp/dist, and stops it after.
const { spawn, execFileSync } = require('node:child_process');
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');
const readline = require('node:readline');

const ROOT = path.resolve(__dirname, '..', '..');
const TARGET = process.env.CARGO_TARGET_DIR || path.join(ROOT, 'target');
const ORACLE = path.join(TARGET, 'debug', 'oracle');
const MODEL = path.join(
  process.env.SHARD_MODELS_DIR || path.join(ROOT, 'models'),
  'SmolLM2-135M-Instruct.Q4_1.gguf',
);
const WEB_DIR = path.join(ROOT, 'webapp', 'dist');

function checkBuilt() {
  for (const [file, how] of [
    [ORACLE, 'cargo build -p oracle'],
    [path.join(WEB_DIR, 'scout_worker_bg.wasm'), 'TRUNK_OFFLINE=true trunk build --config trunk.toml'],
    [MODEL, 'scripts/setup.sh model'],
  ]) {
    if (!fs.existsSync(file)) throw new Error(`${file} is missing: run ${how}`);
  }
}

/** Runs `oracle serve` with `args` added; resolves once HTTP and p2p listen. */
async function startOracle(args = [], { p2pAddrs = 1 } = {}) {
  checkBuilt();
  const dataDir = fs.mkdtempSync(path.join(os.tmpdir(), 'shard-browser-'));
  const child = spawn(
    ORACLE,
    [
      'serve', '--model', MODEL, '--web-dir', WEB_DIR, '--data-dir', dataDir,
      '--http', '127.0.0.1:0', ...args,
    ],
    { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, RUST_LOG: process.env.RUST_LOG || 'info' } },
  );
  const log = [];
  readline.createInterface({ input: child.stderr }).on('line', (l) => log.push(l));
  const lines = readline.createInterface({ input: child.stdout });
  const ready = new Promise((resolve, reject) => {
    let origin = null;
    const p2p = [];
    const timer = setTimeout(() => reject(new Error(`oracle did not start:\n${log.join('\n')}`)), 120_000);
    child.on('exit', (code) => reject(new Error(`oracle exited (${code}):\n${log.join('\n')}`)));
    lines.on('line', (line) => {
      log.push(line);
      if (line.startsWith('listening on http://')) origin = line.replace('listening on ', '');
      if (line.startsWith('p2p listening on ')) p2p.push(line.replace('p2p listening on ', ''));
      if (origin && p2p.length >= p2pAddrs) {
        clearTimeout(timer);
        resolve({ origin, p2p });
      }
    });
  });
  const { origin, p2p } = await ready;
  return {
    origin,
    p2p,
    log,
    async stop() {
      if (child.exitCode === null) {
        child.kill('SIGTERM');
        await new Promise((resolve) => child.once('exit', resolve));
      }
      fs.rmSync(dataDir, { recursive: true, force: true });
    },
  };
}

/**
 * An oracle browser scouts can reach: WebRTC-direct on every interface (a
 * loopback-only address gathers no ICE candidates in Chromium), WebSocket on
 * loopback as the fallback, and by default a 2-block cut of the default model
 * as the scouts' draft (cheap enough for SwiftShader); `scoutLayers: null`
 * offers the whole model, as `oracle serve` does unless told otherwise.
 * `extra` adds flags.
 */
function startScoutOracle(extra = [], { scoutLayers = 2 } = {}) {
  return startOracle(
    [
      '--p2p-listen', '/ip4/0.0.0.0/udp/0/webrtc-direct',
      '--p2p-listen', '/ip4/127.0.0.1/tcp/0/ws',
      ...(scoutLayers === null ? [] : ['--scout-layers', String(scoutLayers)]),
      ...extra,
    ],
    { p2pAddrs: 2 },
  );
}

/** What `oracle generate` outputs for `prompt` alone (greedy): the reference. */
function generateAlone(prompt, maxTokens) {
  const out = execFileSync(ORACLE, [
    'generate', '--model', MODEL, '--prompt', prompt, '--max-tokens', String(maxTokens), '--json',
  ]);
  return JSON.parse(out.toString());
}

/** Opens the web app in `page` and starts a browser scout there (`window.node`). */
async function startScout(page, origin, { backend = 'auto', pick = () => true } = {}) {
  await page.goto(origin);
  await page.waitForFunction(() => window.wasmBindings && window.wasmBindings.ScoutNode);
  const status = await (await page.request.get(`${origin}/api/status`)).json();
  const addresses = status.p2p.listen_addrs.filter(pick);
  const options = JSON.stringify({ addresses, model: status.scout_model, backend });
  await page.evaluate((options) => {
    window.node = new window.wasmBindings.ScoutNode(options);
  }, options);
}

/** The scout's state in `page` (`ScoutNode.stateJson`). */
async function scoutState(page) {
  return JSON.parse(await page.evaluate(() => window.node.stateJson()));
}

/** The CPU reference logits `oracle logits` prints. */
// The native CPU's logits from its f32 tensor engine: the numerics the browser
// runs (the oracle's own CPU kernels use 8-bit activations).
function nativeLogits({ layers, tokens, values }) {
  const out = execFileSync(ORACLE, [
    'logits', '--model', MODEL, '--layers', String(layers),
    '--tokens', tokens.join(','), '--values', String(values),
  ]);
  return JSON.parse(out.toString());
}

// Harmless errors from upstream code, ignored by name: libp2p-webrtc-websys
// drops a data channel's Rust callbacks before the browser's last `close`
// event on it when a WebRTC connection closes (libp2p/rust-libp2p#5636).
const UPSTREAM_NOISE = ['closure invoked recursively or after being dropped'];

/** Collects console errors (page and its workers) and page crashes. */
function watchConsole(page) {
  const errors = [];
  const keep = (text) => !UPSTREAM_NOISE.some((noise) => text.includes(noise));
  page.on('console', (message) => {
    if (message.type() === 'error' && keep(message.text())) errors.push(message.text());
  });
  page.on('pageerror', (error) => {
    if (keep(String(error))) errors.push(String(error));
  });
  return errors;
}

const SCREENSHOTS = path.join(__dirname, '..', 'test-results', 'screenshots');

/** Saves `page` as test-results/screenshots/NAME-WIDTHpx.png (a CI artifact). */
async function screenshot(page, name) {
  fs.mkdirSync(SCREENSHOTS, { recursive: true });
  const { width } = page.viewportSize();
  const file = path.join(SCREENSHOTS, `${name}-${width}px.png`);
  await page.screenshot({ path: file, fullPage: true });
  return file;
}

module.exports = {
  startScoutOracle,
  screenshot,
  startOracle,
  startScout,
  scoutState,
  generateAlone,
  nativeLogits,
  watchConsole,
  ORACLE,
  MODEL,
  ROOT,
};
