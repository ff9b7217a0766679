// The browser scout's network node (the page bundle, built by trunk) against a
// real `oracle serve`: WebRTC-direct from headless Chromium, the WebSocket
// fallback, and the Shard handshake accepted in both.
const { test, expect } = require('@playwright/test');
const { startScoutOracle, startScout, scoutState, watchConsole } = require('../support/oracle');

let oracle;

test.beforeAll(async () => {
  oracle = await startScoutOracle();
});

test.afterAll(async () => {
  await oracle?.stop();
});

/** Starts a scout in `page` on the addresses `pick` keeps; resolves with its state once ready. */
async function connect(page, pick) {
  // The CPU backend loads the 2-block draft model in a second or two; the
  // node dials once it is loaded.
  await startScout(page, oracle.origin, { backend: 'cpu', pick });
  await expect.poll(async () => (await scoutState(page)).phase, { timeout: 60_000 }).toBe('ready');
  return scoutState(page);
}

test('a tab connects over WebRTC-direct and the oracle takes its handshake', async ({ page }) => {
  const errors = watchConsole(page);
  const state = await connect(page, (a) => a.includes('/webrtc-direct/'));
  console.log(`connected over ${state.transport} to ${state.address}`);
  expect(state.transport).toBe('webrtc');
  const peers = await (await page.request.get(`${oracle.origin}/api/peers`)).json();
  const us = peers.peers.find((p) => p.peer_id === state.peer_id);
  expect(us, JSON.stringify(peers)).toBeTruthy();
  await page.evaluate(() => window.node.stop());
  await expect.poll(async () => (await scoutState(page)).phase).toBe('stopped');
  expect(errors).toEqual([]);
});

test('a tab falls back to WebSocket', async ({ page }) => {
  const errors = watchConsole(page);
  const state = await connect(page, (a) => a.includes('/ws/'));
  expect(state.transport).toBe('websocket');
  expect(errors).toEqual([]);
});
