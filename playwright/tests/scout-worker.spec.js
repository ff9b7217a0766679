// The scout's model worker (scout_worker.wasm, built by trunk) in headless
// Chromium: it downloads the draft model from a real `oracle serve`, runs it on
// WebGPU (SwiftShader here) and on the CPU fallback, and its logits match the
// native CPU's. cubecl only logs a shader that fails validation (its kernel
// then returns stale data), so any console error fails the test.
const { test, expect } = require('@playwright/test');
const { startOracle, nativeLogits, watchConsole } = require('../support/oracle');

const LAYERS = 2;
// "The capital of France is" in the default model's vocabulary (`oracle tokenize`).
const TOKENS = [504, 3575, 282, 4649, 314];
const VALUES = 16;
// f32 on different hardware and reduction orders: absolute slack on logits of
// magnitude ~10–40.
const TOLERANCE = 2e-3;

let oracle;

test.beforeAll(async () => {
  oracle = await startOracle(['--scout-layers', String(LAYERS), '--p2p-listen', '/ip4/127.0.0.1/tcp/0']);
});

test.afterAll(async () => {
  await oracle?.stop();
});

/** Starts the worker in `page`, posts a probe, and returns its messages. */
async function probe(page, backend) {
  const status = await (await page.request.get(`${oracle.origin}/api/status`)).json();
  const model = status.scout_model;
  return page.evaluate(
    async ({ url, layers, tokens, values, backend }) => {
      const worker = new Worker('/scout_worker_loader.js');
      const messages = [];
      return new Promise((resolve) => {
        worker.onerror = (e) => resolve({ messages, error: `worker error: ${e.message}` });
        worker.onmessage = (event) => {
          const message = JSON.parse(event.data);
          messages.push(message);
          if (message.op === 'ready') {
            worker.postMessage(JSON.stringify({
              op: 'probe', model_url: url, layers, tokens, values, backend, draft_tokens: 8,
            }));
          }
          if (message.op === 'probe' || message.op === 'error') {
            worker.terminate();
            resolve({ messages });
          }
        };
      });
    },
    { url: model.url, layers: model.layers, tokens: TOKENS, values: VALUES, backend },
  );
}

for (const [name, backend, expected] of [
  ['WebGPU', 'webgpu', 'webgpu'],
  ['the CPU fallback', 'cpu', 'cpu'],
]) {
  test(`the draft model runs on ${name} in a worker and matches the native CPU`, async ({ page }) => {
    test.setTimeout(300_000);
    const errors = watchConsole(page);
    await page.goto(oracle.origin);
    const { messages, error } = await probe(page, backend);
    expect(error).toBeUndefined();
    const failure = messages.find((m) => m.op === 'error');
    expect(failure, JSON.stringify(failure)).toBeUndefined();
    const backendMessage = messages.find((m) => m.op === 'backend');
    expect(backendMessage.kind).toBe(expected);
    const result = messages.find((m) => m.op === 'probe');
    console.log(
      `${name}: adapter ${backendMessage.adapter ?? '-'}, fetch ${result.fetch_ms.toFixed(0)} ms, ` +
        `load ${result.load_ms.toFixed(0)} ms, first pass ${result.first_forward_ms.toFixed(0)} ms, ` +
        `draft ${result.draft_tokens_per_s.toFixed(2)} tokens/s`,
    );
    const reference = nativeLogits({ layers: LAYERS, tokens: TOKENS, values: VALUES });
    expect(result.argmax).toEqual(reference.argmax);
    expect(result.rows.length).toBe(TOKENS.length);
    let worst = 0;
    result.rows.forEach((row, i) =>
      row.forEach((v, j) => {
        worst = Math.max(worst, Math.abs(v - reference.rows[i][j]));
      }),
    );
    console.log(`${name}: largest logit difference from the native CPU ${worst.toExponential(2)}`);
    expect(worst).toBeLessThan(TOLERANCE);
    expect(result.drafted.length).toBe(8);
    expect(errors).toEqual([]);
  });
}
