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
const MAX_TOKENS = 12;

let oracle;
let reference;

test.beforeAll(async () => {
  oracle = await startScoutOracle([
    // SwiftShader drafts a token in seconds; the oracle waits for it.
    '--draft-deadline-ms', '30000',
    // Golden tickets judge honesty with the draft's own quality; a 2-block
    // draft is honest but weak, and these tests are not about tickets.
    '--golden-interval-s', '86400',
  ]);
  reference = generateAlone(PROMPT, MAX_TOKENS);
});

test.afterAll(async () => {
  await oracle?.stop();
});

async function status() {
  const response = await fetch(`${oracle.origin}/api/status`);
  return response.json();
}

async function complete() {
  const response = await fetch(`${oracle.origin}/v1/completions`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ prompt: PROMPT, max_tokens: MAX_TOKENS, temperature: 0 }),
  });
  expect(response.status).toBe(200);
  return (await response.json()).choices[0].text;
}

// The tab dials WebRTC-direct first; WebSocket is the fallback.
const WEBSOCKET = (a) => a.includes('/ws/');
const WEBRTC = (a) => a.includes('/webrtc-direct/');

/** Runs one scout on `backend` until it has drafted for a completion; checks the answer. */
async function scoutDrafts(page, backend, expectedBackend, pick = WEBRTC, { oracleUsesDrafts = true } = {}) {
  test.setTimeout(600_000);
  const errors = watchConsole(page);
  const started = Date.now();
  await startScout(page, oracle.origin, { backend, pick });
  await expect
    .poll(async () => (await scoutState(page)).phase, { timeout: 300_000, intervals: [500] })
    .toBe('ready');
  await expect.poll(async () => (await status()).scouts_connected).toBe(1);
  // Work is announced once, on gossipsub, when a request starts: give the
  // new peer's subscription a few heartbeats to reach the oracle's mesh.
  await new Promise((resolve) => setTimeout(resolve, 3000));
  const ready = await scoutState(page);
  expect(ready.model.backend).toBe(expectedBackend);
  expect(ready.model.received).toBe(ready.model.total);
  expect(ready.transport).toBe(pick === WEBRTC ? 'webrtc' : 'websocket');
  const before = await status();
  const text = await complete();
  expect(text).toBe(reference.text);
  const after = await status();
  const state = await scoutState(page);
  const proposed = after.draft_tokens_proposed - before.draft_tokens_proposed;
  const accepted = after.draft_tokens_accepted - before.draft_tokens_accepted;
  const passes = after.target_forward_passes - before.target_forward_passes;
  console.log(
    `${backend}: adapter ${ready.model.adapter ?? '-'} (${ready.model.fallback_reason ?? 'no fallback'}); ` +
      `model loaded in ${ready.model.load_ms.toFixed(0)} ms; page load → first draft ` +
      `${state.first_draft_at_ms ? state.first_draft_at_ms - started : '-'} ms; ` +
      `scout drafted ${state.stats.drafted} in ${state.stats.rounds} rounds; oracle: ${proposed} proposed, ` +
      `${accepted} accepted, ${passes} forward passes for ${reference.stats.generated_tokens} tokens`,
  );
  expect(state.stats.drafted).toBeGreaterThan(0);
  if (oracleUsesDrafts) expect(proposed).toBeGreaterThan(0);
  // The next test counts one scout. A stopped tab closes its WebRTC
  // connection, but libp2p-webrtc on the oracle only notices when its next
  // write fails (the ping, ~11 s later), not at the browser's SCTP abort.
  await page.evaluate(() => window.node.stop());
  await expect.poll(async () => (await status()).scouts_connected, { timeout: 40_000 }).toBe(0);
  expect(errors).toEqual([]);
}

test('a scout tab drafts on WebGPU over WebRTC and the answer equals the target alone', async ({ page }) => {
  // On SwiftShader a round takes seconds and its first one compiles new
  // shaders, so the answer is usually done before a draft arrives: the test
  // checks that the tab drafts on WebGPU, not that the oracle used it.
  await scoutDrafts(page, 'auto', 'webgpu', WEBRTC, { oracleUsesDrafts: false });
});

test('a scout tab drafts on the CPU over WebRTC and the oracle uses its drafts', async ({ page }) => {
  await scoutDrafts(page, 'cpu', 'cpu', WEBRTC);
});

// The oracle holds its streams on a browser's WebRTC connection until the tab
// opens one (oracle/src/p2p/webrtc.rs); without that the tab handshook but
// never heard gossip. The WebSocket fallback drafts as well.
test('a scout tab drafts over the WebSocket fallback', async ({ page }) => {
  await scoutDrafts(page, 'cpu', 'cpu', WEBSOCKET);
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
  await expect.poll(async () => (await status()).scouts_connected).toBe(1);
  await new Promise((resolve) => setTimeout(resolve, 3000));
  const answer = fetch(`${oracle.origin}/v1/completions`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ prompt: PROMPT, max_tokens: maxTokens, temperature: 0 }),
  });
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
