// The tab keeps its draft model in the browser's Cache Storage: a second
// visit downloads nothing. A download with one flipped byte is refused with
// an error the page can show, and never cached.
const http = require('node:http');
const { test, expect } = require('@playwright/test');
const { startOracle, startScout, scoutState, screenshot, watchConsole } = require('../support/oracle');

let oracle;

test.beforeAll(async () => {
  oracle = await startOracle(['--p2p-listen', '/ip4/127.0.0.1/tcp/0/ws', '--scout-layers', '2']);
});

test.afterAll(async () => {
  await oracle?.stop();
});

/** Model bytes the oracle has served so far (its Prometheus counter). */
async function modelBytesServed() {
  const text = await (await fetch(`${oracle.origin}/metrics`)).text();
  const line = text.split('\n').find((l) => l.startsWith('shard_model_bytes_served_total'));
  return Number(line.split(' ').pop());
}

async function cachedModels(page) {
  return page.evaluate(async () => (await (await caches.open('shard-models')).keys()).length);
}

test('the second visit loads the model from the browser cache and downloads nothing; a spoiled copy is fetched again', async ({ page }) => {
  test.setTimeout(120_000);
  const errors = watchConsole(page);
  const before = await modelBytesServed();
  await startScout(page, oracle.origin, { backend: 'cpu' });
  await expect.poll(async () => (await scoutState(page)).phase, { timeout: 60_000 }).toBe('ready');
  const first = await scoutState(page);
  expect(first.model.source).toBe('network');
  expect(first.model.cache_error).toBeNull();
  const size = first.model.total;
  expect(await modelBytesServed()).toBe(before + size);
  expect(await cachedModels(page)).toBe(1);
  await page.evaluate(() => window.node.stop());

  await page.reload();
  await startScout(page, oracle.origin, { backend: 'cpu' });
  await expect.poll(async () => (await scoutState(page)).phase, { timeout: 60_000 }).toBe('ready');
  const second = await scoutState(page);
  expect(second.model.source).toBe('cache');
  expect(second.model.received).toBe(size);
  expect(await modelBytesServed()).toBe(before + size);
  console.log(`first visit: model ready in ${first.model.load_ms.toFixed(0)} ms; second (cached): ${second.model.load_ms.toFixed(0)} ms`);
  await page.evaluate(() => window.node.stop());

  // A cached copy that no longer matches its SHA-256 is dropped and fetched again.
  await page.evaluate(async (size) => {
    const cache = await caches.open('shard-models');
    const [key] = await cache.keys();
    await cache.put(key, new Response(new Uint8Array(size)));
  }, size);
  await page.reload();
  await startScout(page, oracle.origin, { backend: 'cpu' });
  await expect.poll(async () => (await scoutState(page)).phase, { timeout: 60_000 }).toBe('ready');
  expect((await scoutState(page)).model.source).toBe('network');
  expect(await modelBytesServed()).toBe(before + 2 * size);
  expect(await cachedModels(page)).toBe(1);
  expect(errors).toEqual([]);
});

/** An HTTP proxy to the oracle that flips one byte in every model download. */
function corruptingProxy() {
  const target = new URL(oracle.origin);
  const server = http.createServer((req, res) => {
    const upstream = http.request(
      { host: target.hostname, port: target.port, path: req.url, method: req.method, headers: req.headers },
      (up) => {
        res.writeHead(up.statusCode, up.headers);
        let flipped = !req.url.startsWith('/models/');
        up.on('data', (chunk) => {
          if (!flipped && chunk.length > 0) {
            chunk[chunk.length >> 1] ^= 0x01;
            flipped = true;
          }
          res.write(chunk);
        });
        up.on('end', () => res.end());
      },
    );
    req.pipe(upstream);
  });
  return new Promise((resolve) => {
    server.listen(0, '127.0.0.1', () => resolve({ server, origin: `http://127.0.0.1:${server.address().port}` }));
  });
}

test('a corrupted download is refused with a visible error and never cached', async ({ page }) => {
  test.setTimeout(120_000);
  const proxy = await corruptingProxy();
  try {
    await page.goto(proxy.origin);
    await page.getByTestId('backend-choice').selectOption('cpu');
    await page.getByTestId('contribute').click();
    const state = page.getByTestId('state');
    await expect(state).toContainText('This tab cannot contribute', { timeout: 60_000 });
    await expect(state).toContainText('corrupt');
    await expect(page.getByTestId('transport')).toHaveText('not connected');
    await expect(page.getByTestId('contribute')).toHaveText('Contribute');
    expect(await cachedModels(page)).toBe(0);
    await screenshot(page, 'contribute-download-corrupt');
  } finally {
    proxy.server.close();
  }
});
