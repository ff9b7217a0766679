// The browser scout's network node (the page bundle, built by trunk) against a
// real `oracle serve`: WebRTC-direct from headless Chromium, the WebSocket
// fallback, and the Shard handshake accepted in both.
const { test, expect } = require('@playwright/test');
const { startOracle, watchConsole } = require('../support/oracle');

let oracle;

test.beforeAll(async () => {
  oracle = await startOracle(
    [
      '--p2p-listen', '/ip4/0.0.0.0/udp/0/webrtc-direct',
      '--p2p-listen', '/ip4/127.0.0.1/tcp/0/ws',
    ],
    { p2pAddrs: 2 },
  );
});

test.afterAll(async () => {
  await oracle?.stop();
});

/** Starts a ScoutNode in `page` with `addresses`; resolves with its state once ready (or failed). */
async function connect(page, pick) {
  await page.goto(oracle.origin);
  await page.waitForFunction(() => window.wasmBindings && window.wasmBindings.ScoutNode);
  const status = await (await page.request.get(`${oracle.origin}/api/status`)).json();
  const addresses = status.p2p.listen_addrs.filter(pick);
  expect(addresses.length).toBeGreaterThan(0);
  await page.evaluate(
    ({ addresses, cid }) => {
      window.node = new window.wasmBindings.ScoutNode(addresses, cid, '');
    },
    { addresses, cid: status.scout_model.cid },
  );
  await expect
    .poll(async () => JSON.parse(await page.evaluate(() => window.node.stateJson())).phase, {
      timeout: 60_000,
    })
    .toBe('ready');
  return JSON.parse(await page.evaluate(() => window.node.stateJson()));
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
  await expect
    .poll(async () => JSON.parse(await page.evaluate(() => window.node.stateJson())).phase)
    .toBe('stopped');
  expect(errors).toEqual([]);
});

test('a tab falls back to WebSocket', async ({ page }) => {
  const errors = watchConsole(page);
  const state = await connect(page, (a) => a.includes('/ws/'));
  expect(state.transport).toBe('websocket');
  expect(errors).toEqual([]);
});
