// A browser without WebGPU: the same Chromium without the flags that give it a
// WebGPU adapter. The scout's worker falls back to the CPU and still drafts.
const { test, expect } = require('@playwright/test');
const { startOracle, startScout, scoutState, generateAlone, screenshot, watchConsole } = require('../support/oracle');

test.use({
  launchOptions: {
    executablePath: process.env.SHARD_CHROMIUM || '/usr/bin/chromium',
    args: [
      '--no-sandbox',
      '--disable-gpu',
      '--disable-background-networking',
      '--disable-component-update',
      '--disable-sync',
      '--no-first-run',
      '--disable-quic',
    ],
  },
});

const PROMPT = 'The capital of France is';
const MAX_TOKENS = 12;

test('a scout tab without WebGPU falls back to the CPU and still drafts', async ({ page }) => {
  test.setTimeout(300_000);
  const oracle = await startOracle(
    ['--p2p-listen', '/ip4/127.0.0.1/tcp/0/ws', '--scout-layers', '2', '--golden-interval-s', '86400'],
  );
  try {
    const errors = watchConsole(page);
    await startScout(page, oracle.origin, { backend: 'auto' });
    await expect.poll(async () => (await scoutState(page)).phase, { timeout: 120_000 }).toBe('ready');
    const state = await scoutState(page);
    expect(state.model.backend).toBe('cpu');
    console.log(`fallback reason: ${state.model.fallback_reason}`);
    expect(state.model.fallback_reason).toMatch(/WebGPU|adapter/);
    const status = async () => (await fetch(`${oracle.origin}/api/status`)).json();
    await expect.poll(async () => (await status()).scouts_connected).toBe(1);
    await new Promise((resolve) => setTimeout(resolve, 3000));
    const response = await fetch(`${oracle.origin}/v1/completions`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ prompt: PROMPT, max_tokens: MAX_TOKENS, temperature: 0 }),
    });
    expect((await response.json()).choices[0].text).toBe(generateAlone(PROMPT, MAX_TOKENS).text);
    expect((await scoutState(page)).stats.drafted).toBeGreaterThan(0);
    expect((await status()).draft_tokens_proposed).toBeGreaterThan(0);
    // The same as a person sees it: Contribute says why the tab uses the CPU.
    await page.evaluate(() => window.node.stop());
    await page.goto(oracle.origin);
    await page.getByTestId('contribute').click();
    await expect(page.getByTestId('state')).toHaveText(/Ready|Drafting/, { timeout: 120_000 });
    await expect(page.getByTestId('backend')).toContainText(state.model.fallback_reason);
    await screenshot(page, 'contribute-no-webgpu');
    expect(errors).toEqual([]);
  } finally {
    await oracle.stop();
  }
});
