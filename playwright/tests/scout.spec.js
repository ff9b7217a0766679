// A browser scout drafting for a real `oracle serve`: the tab downloads the
// draft model, checks its SHA-256, loads it on WebGPU (SwiftShader here) or
// the CPU, connects over WebRTC-direct and drafts rounds the oracle verifies.
// Whatever the scout does, the answer equals the target's alone.
const { test, expect } = require('@playwright/test');
const {
  startScoutOracle,
  startScout,
  scoutState,
  generateAlone,
  watchConsole,
} = require('../support/oracle');

const PROMPT = 'The capital of France is';
const MAX_TOKENS = 32;
// Both oracles give a scout this long for a round: SwiftShader drafts a token
// in seconds and its first round compiles kernels for new shapes. Golden
// tickets judge honesty by the draft's own quality, and these tests are not
// about tickets, so they are off.
const ORACLE_FLAGS = ['--draft-deadline-ms', '30000', '--golden-interval-s', '86400'];

// The CPU tabs draft with the whole model, which is what `oracle serve` offers
// scouts unless told otherwise: a draft equal to the target is right nearly
// always, so the oracle's acceptance counter must move. SwiftShader runs the
// whole model far too slowly for a round to beat any deadline, so the WebGPU
// tab gets its own oracle whose target is a 2-block cut (`--layers 2`) and
// offers scouts the same cut: again a draft equal to the target.
let oracle;
let reference;

test.beforeAll(async () => {
  oracle = await startScoutOracle(ORACLE_FLAGS, { scoutLayers: null });
  reference = generateAlone(PROMPT, MAX_TOKENS);
});

test.afterAll(async () => {
  await oracle?.stop();
});

async function status(origin) {
  const response = await fetch(`${origin}/api/status`);
  return response.json();
}

function complete(origin, maxTokens = MAX_TOKENS) {
  return fetch(`${origin}/v1/completions`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ prompt: PROMPT, max_tokens: maxTokens, temperature: 0 }),
  });
}

// The tab dials WebRTC-direct first; WebSocket is the fallback.
const WEBSOCKET = (a) => a.includes('/ws/');
const WEBRTC = (a) => a.includes('/webrtc-direct/');

/**
 * Runs one scout on `backend` against `target` while it answers PROMPT, until
 * the oracle's acceptance counter has moved (`stopEarly`: then stops the tab);
 * checks the answer equals the target's alone (`expected`: text and generated
 * tokens). Returns the timings.
 */
async function scoutDrafts(
  page,
  target,
  { backend, expectedBackend, pick = WEBRTC, stopEarly = false, expected = reference },
) {
  const errors = watchConsole(page);
  const started = Date.now();
  await startScout(page, target.origin, { backend, pick });
  await expect
    .poll(async () => (await scoutState(page)).phase, { timeout: 300_000, intervals: [500] })
    .toBe('ready');
  await expect.poll(async () => (await status(target.origin)).scouts_connected).toBe(1);
  // Work is announced once, on gossipsub, when a request starts: give the
  // new peer's subscription a few heartbeats to reach the oracle's mesh.
  await new Promise((resolve) => setTimeout(resolve, 3000));
  const ready = await scoutState(page);
  expect(ready.model.backend).toBe(expectedBackend);
  expect(ready.model.received).toBe(ready.model.total);
  expect(ready.transport).toBe(pick === WEBRTC ? 'webrtc' : 'websocket');
  const before = await status(target.origin);
  const answer = complete(target.origin);
  await expect
    .poll(async () => (await status(target.origin)).draft_tokens_accepted - before.draft_tokens_accepted, {
      timeout: 120_000,
      intervals: [250],
    })
    .toBeGreaterThan(0);
  const counted = await status(target.origin);
  // A slow tab (SwiftShader) would hold the rest of the answer up round by
  // round: it stops here and the oracle finishes alone. A fast one drafts the
  // whole answer, so the passes it saved can be counted.
  const stop = async () => {
    const last = await scoutState(page);
    await page.evaluate(() => window.node.stop());
    return last;
  };
  let state = stopEarly ? await stop() : null;
  const response = await answer;
  state ??= await stop();
  expect(response.status).toBe(200);
  expect((await response.json()).choices[0].text).toBe(expected.text);
  const after = await status(target.origin);
  const firstDraftMs = state.first_draft_at_ms ? state.first_draft_at_ms - started : null;
  console.log(
    `${backend}: adapter ${ready.model.adapter ?? '-'} (${ready.model.fallback_reason ?? 'no fallback'}); ` +
      `model (${ready.model.source}) ready in ${ready.model.load_ms.toFixed(0)} ms; page load → first draft ` +
      `${firstDraftMs ?? '-'} ms; ` +
      `oracle until then: ${counted.draft_tokens_proposed - before.draft_tokens_proposed} proposed, ` +
      `${counted.draft_tokens_accepted - before.draft_tokens_accepted} accepted, ` +
      `${counted.target_forward_passes - before.target_forward_passes} forward passes for ` +
      `${counted.tokens_generated - before.tokens_generated} tokens; whole answer${stopEarly ? ' (tab stopped early)' : ''}: ` +
      `${after.target_forward_passes - before.target_forward_passes} passes for ` +
      `${expected.stats.generated_tokens} tokens, scout drafted ${state.stats.drafted} in ${state.stats.rounds} rounds, ` +
      `${after.draft_tokens_accepted - before.draft_tokens_accepted} accepted`,
  );
  expect(state.stats.drafted).toBeGreaterThan(0);
  // The next test counts one scout. A stopped tab closes its WebRTC
  // connection, but libp2p-webrtc on the oracle only notices when its next
  // write fails (the ping, ~11 s later), not at the browser's SCTP abort.
  await expect.poll(async () => (await status(target.origin)).scouts_connected, { timeout: 40_000 }).toBe(0);
  expect(errors).toEqual([]);
  return { ready, firstDraftMs };
}

test('a scout tab drafts on WebGPU over WebRTC, the oracle accepts its drafts, and the answer equals the target alone', async ({ page }) => {
  test.setTimeout(600_000);
  const cut = await startScoutOracle([...ORACLE_FLAGS, '--layers', '2'], { scoutLayers: 2 });
  try {
    expect((await status(cut.origin)).model.layers).toBe(2);
    // What the cut answers with no scout connected: the target alone.
    const alone = await (await complete(cut.origin)).json();
    const expected = { text: alone.choices[0].text, stats: { generated_tokens: alone.usage.completion_tokens } };
    await scoutDrafts(page, cut, { backend: 'auto', expectedBackend: 'webgpu', stopEarly: true, expected });
  } finally {
    await cut.stop();
  }
});

test('a scout tab drafts on the CPU over WebRTC, the oracle accepts its drafts; a second visit drafts from the cached model', async ({ page }) => {
  test.setTimeout(300_000);
  const cpu = { backend: 'cpu', expectedBackend: 'cpu' };
  const cold = await scoutDrafts(page, oracle, cpu);
  expect(cold.ready.model.source).toBe('network');
  const warm = await scoutDrafts(page, oracle, cpu);
  expect(warm.ready.model.source).toBe('cache');
  console.log(`page load → first draft: cold cache ${cold.firstDraftMs} ms, warm cache ${warm.firstDraftMs} ms`);
});

// The oracle holds its streams on a browser's WebRTC connection until the tab
// opens one (oracle/src/p2p/webrtc.rs); without that the tab handshook but
// never heard gossip. The WebSocket fallback drafts as well.
test('a scout tab drafts over the WebSocket fallback', async ({ page }) => {
  test.setTimeout(300_000);
  await scoutDrafts(page, oracle, {
    backend: 'cpu',
    expectedBackend: 'cpu',
    pick: WEBSOCKET,
  });
});

test('closing the scout tab mid-answer does not break the answer', async ({ browser }) => {
  test.setTimeout(300_000);
  const maxTokens = 40;
  const expected = generateAlone(PROMPT, maxTokens);
  const page = await browser.newPage();
  await startScout(page, oracle.origin, { backend: 'cpu', pick: WEBRTC });
  await expect
    .poll(async () => (await scoutState(page)).phase, { timeout: 60_000, intervals: [500] })
    .toBe('ready');
  await expect.poll(async () => (await status(oracle.origin)).scouts_connected).toBe(1);
  await new Promise((resolve) => setTimeout(resolve, 3000));
  const answer = complete(oracle.origin, maxTokens);
  // Close the tab once it is drafting for this answer.
  await expect
    .poll(async () => (await scoutState(page)).stats.rounds, { timeout: 60_000, intervals: [100] })
    .toBeGreaterThan(0);
  await page.close();
  const response = await answer;
  expect(response.status).toBe(200);
  const body = await response.json();
  expect(body.choices[0].text).toBe(expected.text);
  expect(body.usage.completion_tokens).toBe(expected.stats.generated_tokens);
});
