// The draft model comes as content-addressed pieces, each checked against
// the model's manifest and kept in Cache Storage as it arrives: a tab
// reloaded halfway through its download resumes and fetches none of the
// pieces it kept again; a piece served corrupted is refused and fetched again.
const http = require('node:http');
const { test, expect } = require('@playwright/test');
const { startOracle, startScout, scoutState, watchConsole } = require('../support/oracle');

let oracle;

test.beforeAll(async () => {
  oracle = await startOracle(['--p2p-listen', '/ip4/127.0.0.1/tcp/0/ws', '--scout-layers', '2']);
});

test.afterAll(async () => {
  await oracle?.stop();
});

/**
 * An HTTP proxy to the oracle that counts the model pieces it delivers,
 * corrupts the first copy of piece `corrupt`, and, once `holdAfter` pieces
 * are delivered, holds every further piece request unanswered (a download
 * frozen halfway, to reload the tab in) until `released` is set.
 */
function pieceProxy({ corrupt, holdAfter }) {
  const target = new URL(oracle.origin);
  const proxy = { delivered: new Map(), holding: false, released: false, corrupted: 0 };
  const total = () => [...proxy.delivered.values()].reduce((a, b) => a + b, 0);
  const server = http.createServer((req, res) => {
    const piece = req.url.match(/^\/models\/[0-9a-f]+\/pieces\/(\d+)$/);
    if (piece && proxy.holding) return; // never answered: the reload drops it
    const upstream = http.request(
      { host: target.hostname, port: target.port, path: req.url, method: req.method, headers: req.headers },
      (up) => {
        const chunks = [];
        up.on('data', (chunk) => chunks.push(chunk));
        up.on('end', () => {
          const body = Buffer.concat(chunks);
          const index = piece && Number(piece[1]);
          if (piece && index === corrupt && !proxy.delivered.has(index)) {
            body[body.length >> 1] ^= 0x01;
            proxy.corrupted += 1;
          }
          res.writeHead(up.statusCode, up.headers);
          res.end(body);
          if (piece && up.statusCode === 200) {
            res.on('finish', () => {
              proxy.delivered.set(index, (proxy.delivered.get(index) || 0) + 1);
              if (!proxy.released && total() >= holdAfter) proxy.holding = true;
            });
          }
        });
      },
    );
    req.pipe(upstream);
  });
  return new Promise((resolve) => {
    server.listen(0, '127.0.0.1', () => {
      proxy.server = server;
      proxy.origin = `http://127.0.0.1:${server.address().port}`;
      resolve(proxy);
    });
  });
}

/** Pieces of the model this page's browser keeps in Cache Storage. */
async function cachedPieces(page) {
  return page.evaluate(async () => {
    const keys = await (await caches.open('shard-models')).keys();
    return keys.filter((r) => r.url.includes('/pieces/')).length;
  });
}

test('a tab reloaded halfway through its model download resumes without fetching a kept piece again; a corrupted piece is refused and fetched again', async ({ page }) => {
  test.setTimeout(180_000);
  const errors = watchConsole(page);
  const status = await (await fetch(`${oracle.origin}/api/status`)).json();
  const pieces = status.scout_model.pieces;
  expect(pieces).toBeGreaterThan(100);
  const half = Math.floor(pieces / 2);
  const corrupt = 5;
  const proxy = await pieceProxy({ corrupt, holdAfter: half });
  try {
    await startScout(page, proxy.origin, { backend: 'cpu' });
    // Frozen halfway: every delivered piece but the corrupted copy is kept.
    await expect.poll(() => proxy.holding, { timeout: 60_000 }).toBe(true);
    // Requests forwarded just before the hold finish now (loopback: ms).
    await new Promise((resolve) => setTimeout(resolve, 1500));
    const delivered = [...proxy.delivered.values()].reduce((a, b) => a + b, 0);
    await expect.poll(() => cachedPieces(page), { timeout: 20_000 }).toBe(delivered - proxy.corrupted);
    const frozen = await scoutState(page);
    expect(frozen.phase).toBe('loading');
    expect(frozen.model.pieces_refused).toBe(1);
    expect(frozen.model.pieces).toBe(delivered - 1);
    const kept = await cachedPieces(page);
    console.log(`reloading with ${kept} of ${pieces} pieces kept (${proxy.corrupted} corrupted copy refused)`);

    await page.reload();
    proxy.released = true;
    proxy.holding = false;
    await startScout(page, proxy.origin, { backend: 'cpu' });
    await expect.poll(async () => (await scoutState(page)).phase, { timeout: 90_000 }).toBe('ready');
    const state = await scoutState(page);
    expect(state.model.source).toBe('resumed');
    expect(state.model.pieces_cached).toBe(kept);
    expect(state.model.pieces).toBe(pieces);

    // Every piece was delivered once, the corrupted one twice (its bad copy
    // refused); none that the tab kept was fetched again after the reload.
    expect(proxy.delivered.size).toBe(pieces);
    for (const [index, times] of proxy.delivered) {
      expect(times, `piece ${index}`).toBe(index === corrupt ? 2 : 1);
    }
    // Finished: kept whole, the pieces dropped.
    const entries = await page.evaluate(async () => (await (await caches.open('shard-models')).keys()).length);
    expect(entries).toBe(1);
    expect(errors).toEqual([]);
  } finally {
    proxy.server.close();
  }
});
