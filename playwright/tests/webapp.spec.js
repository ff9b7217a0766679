// The web app as a person uses it: open the page, press "Contribute", and the
// tab becomes a scout; chat in the console and watch verified tokens stream in;
// see who is there on the network page. Every page and state is saved as a
// screenshot at desktop and phone width.
const { test, expect } = require('@playwright/test');
const {
  startOracle,
  startScoutOracle,
  generateAlone,
  screenshot,
  watchConsole,
} = require('../support/oracle');

let oracle;

test.beforeAll(async () => {
  oracle = await startScoutOracle([
    // One session at a time and one waiting, so the queue can be filled.
    '--max-sessions', '1',
    '--max-queue', '1',
    '--golden-interval-s', '86400',
  ]);
});

test.afterAll(async () => {
  await oracle?.stop();
});

test('pressing Contribute (keyboard only) turns the tab into a scout', async ({ page }) => {
  test.setTimeout(120_000);
  const errors = watchConsole(page);
  await page.goto(oracle.origin);
  const button = page.getByTestId('contribute');
  await expect(button).toHaveText('Contribute');
  await screenshot(page, 'contribute-idle');

  // The CPU is quick on this machine; WebGPU on SwiftShader is tested elsewhere.
  await page.getByTestId('backend-choice').selectOption('cpu');
  await button.focus();
  await page.keyboard.press('Enter');
  await expect(page.getByTestId('state')).toHaveText(/Ready|Drafting/, { timeout: 60_000 });
  await expect(button).toHaveText('Stop');
  await expect(page.getByTestId('backend')).toContainText('CPU (WebAssembly)');
  await expect(page.getByTestId('download')).toContainText('checked (SHA-256)');
  await expect(page.getByTestId('transport')).toContainText('webrtc');
  const peers = await (await fetch(`${oracle.origin}/api/peers`)).json();
  const peerId = await page.getByTestId('peer-id').textContent();
  expect(peers.peers.map((p) => p.peer_id)).toContain(peerId);
  await screenshot(page, 'contribute-ready');
  await page.setViewportSize({ width: 390, height: 844 });
  await screenshot(page, 'contribute-ready');

  await button.click();
  await expect(page.getByTestId('state')).toHaveText('Stopped.');
  await expect(button).toHaveText('Contribute');
  expect(errors).toEqual([]);
});

test('an oracle that is gone is a clear error, not a hang', async ({ page }) => {
  const errors = [];
  page.on('console', (m) => m.type() === 'error' && errors.push(m.text()));
  await page.goto(oracle.origin);
  // The page loaded; now the oracle's API disappears under it.
  await page.route('**/api/status', (route) => route.abort('connectionrefused'));
  await page.getByTestId('contribute').click();
  await expect(page.getByTestId('error')).toContainText('unreachable');
  await expect(page.getByTestId('contribute')).toHaveText('Contribute');
  await screenshot(page, 'contribute-oracle-unreachable');
});

/** Opens the app in `page` and makes it a CPU scout from the Contribute page. */
async function contribute(page) {
  await page.goto(oracle.origin);
  await page.getByTestId('backend-choice').selectOption('cpu');
  await page.getByTestId('contribute').click();
  await expect(page.getByTestId('state')).toHaveText(/Ready|Drafting/, { timeout: 60_000 });
  return (await page.getByTestId('peer-id').textContent()).trim();
}

/** Types `prompt` into the console and waits for the answer to end. */
async function ask(page, prompt, { mode = 'chat', maxTokens = 24 } = {}) {
  await page.getByTestId('console-mode').selectOption(mode);
  await page.getByTestId('console-max-tokens').fill(String(maxTokens));
  await page.getByTestId('console-temperature').fill('0');
  await page.getByTestId('console-input').fill(prompt);
  await page.getByTestId('console-input').press('Enter');
  await expect(page.getByTestId('turn-note').last()).toHaveText(/^(Finished|Reached max tokens)/, {
    timeout: 90_000,
  });
  return page.getByTestId('turn-answer').last().textContent();
}

test('the console streams a completion equal to oracle generate while a scout tab contributes', async ({ browser }) => {
  test.setTimeout(240_000);
  const scoutPage = await browser.newPage();
  const consolePage = await browser.newPage();
  const errors = watchConsole(consolePage);
  try {
    await contribute(scoutPage);
    const prompt = 'The capital of France is';
    const expected = generateAlone(prompt, 24).text;
    await consolePage.goto(`${oracle.origin}/#/console`);
    await expect(consolePage.getByRole('heading', { name: 'Console' })).toBeVisible();
    const answer = await ask(consolePage, prompt, { mode: 'complete' });
    expect(answer).toBe(expected);
    // The note counts the drafted pieces the page marks.
    const note = await consolePage.getByTestId('turn-note').last().textContent();
    const marked = await consolePage.locator('.turn.assistant').last().locator('.drafted').count();
    expect(note).toContain(`${marked} drafted by scouts`);
    await screenshot(consolePage, 'console-answer');
    await consolePage.setViewportSize({ width: 390, height: 844 });
    await screenshot(consolePage, 'console-answer');
  } finally {
    await scoutPage.close();
    await consolePage.close();
  }
  expect(errors).toEqual([]);
});

test('a chat answer in the console equals the API answer, and Stop ends a long one', async ({ page }) => {
  test.setTimeout(180_000);
  const errors = watchConsole(page);
  await page.goto(`${oracle.origin}/#/console`);
  const answer = await ask(page, 'Say hello.', { maxTokens: 12 });
  const response = await fetch(`${oracle.origin}/v1/chat/completions`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({
      messages: [{ role: 'user', content: 'Say hello.' }], max_tokens: 12, temperature: 0,
    }),
  });
  expect(answer).toBe((await response.json()).choices[0].message.content);

  // Bad settings are caught before anything is sent.
  await page.getByTestId('console-temperature').fill('7');
  await expect(page.getByTestId('console-settings-error')).toContainText('Temperature');
  await expect(page.getByTestId('console-send')).toBeDisabled();
  await page.getByTestId('console-temperature').fill('0');

  await page.getByTestId('console-max-tokens').fill('400');
  await page.getByTestId('console-input').fill('Tell me a long story about a dragon.');
  await page.getByTestId('console-send').click();
  await expect(page.getByTestId('turn-answer').last()).not.toBeEmpty({ timeout: 60_000 });
  await page.getByTestId('console-stop').click();
  await expect(page.getByTestId('turn-note').last()).toHaveText(/^Stopped/);
  await expect(page.getByTestId('console-send')).toBeVisible();
  // The oracle freed the session: the next request is answered.
  await expect(async () => {
    const status = await (await fetch(`${oracle.origin}/api/status`)).json();
    expect(status.sessions.active).toBe(0);
  }).toPass({ timeout: 30_000 });
  expect(errors).toEqual([]);
});

test('a full queue is a clear message in the console', async ({ page }) => {
  test.setTimeout(120_000);
  // One long request runs and one waits: the oracle's only slot and queue place.
  const controller = new AbortController();
  const long = () => fetch(`${oracle.origin}/v1/completions`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ prompt: 'Once upon a time', max_tokens: 1000, temperature: 0, stream: true }),
    signal: controller.signal,
  }).catch(() => {});
  try {
    long();
    await expect(async () => {
      const status = await (await fetch(`${oracle.origin}/api/status`)).json();
      expect(status.sessions.active).toBe(1);
    }).toPass({ timeout: 30_000 });
    long();
    await expect(async () => {
      const status = await (await fetch(`${oracle.origin}/api/status`)).json();
      expect(status.sessions.queued).toBe(1);
    }).toPass({ timeout: 30_000 });
    await page.goto(`${oracle.origin}/#/console`);
    await page.getByTestId('console-input').fill('Hello?');
    await page.getByTestId('console-input').press('Enter');
    await expect(page.getByTestId('console-error')).toContainText('queue is full');
    await expect(page.getByTestId('turn-answer')).toHaveCount(0);
    await screenshot(page, 'console-queue-full');
  } finally {
    controller.abort();
  }
});

test('the network page shows the oracle, its scouts, other oracles, and charts of its counters', async ({ browser }) => {
  test.setTimeout(180_000);
  const scoutPage = await browser.newPage();
  const page = await browser.newPage();
  const errors = watchConsole(page);
  let second;
  try {
    const scoutId = await contribute(scoutPage);
    await page.goto(oracle.origin);
    await page.getByTestId('nav-network').click();
    await expect(page).toHaveURL(/#\/network$/);
    await expect(page.getByTestId('oracle-facts')).toBeVisible();
    const status = await (await fetch(`${oracle.origin}/api/status`)).json();
    await expect(page.getByTestId('oracle-peer-id')).toHaveText(status.p2p.peer_id);
    const row = page.locator('[data-testid=peers] tr[data-role=scout]', { hasText: scoutId });
    await expect(row).toHaveCount(1, { timeout: 30_000 });
    await expect(page.getByTestId('peer-counts')).toContainText(/[1-9]\d* scouts?/);
    await expect(page.getByTestId('network-empty')).toBeVisible();
    // A second oracle joins through this one; what it reports on shard-topology
    // (itself) shows under "Elsewhere in the network".
    const ws = status.p2p.listen_addrs.find((a) => a.includes('/ws/'));
    second = await startOracle(['--p2p-listen', '/ip4/127.0.0.1/tcp/0', '--bootstrap', ws]);
    const secondId = (await (await fetch(`${second.origin}/api/status`)).json()).p2p.peer_id;
    const reported = page.locator('[data-testid=topology] tr[data-role=oracle]', { hasText: secondId });
    await expect(reported).toHaveCount(1, { timeout: 30_000 });
    // Work shows up in the charts: tokens per second rise above zero.
    await fetch(`${oracle.origin}/v1/completions`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ prompt: 'Once upon a time', max_tokens: 32, temperature: 0 }),
    });
    await expect(page.getByTestId('chart-tokens').locator('polyline')).toHaveCount(1);
    await expect(page.getByTestId('oracle-tokens')).not.toHaveText('0', { timeout: 10_000 });
    await expect(page.getByTestId('chart-tokens').locator('polyline')).toHaveAttribute('points', /,/, {
      timeout: 10_000,
    });
    await screenshot(page, 'network');
    await page.setViewportSize({ width: 390, height: 844 });
    await screenshot(page, 'network');
    // The scout tab's own page shows its chart and what the oracle holds about it.
    await scoutPage.bringToFront();
    await expect(scoutPage.getByTestId('chart-scout')).toBeVisible({ timeout: 10_000 });
    await expect(scoutPage.getByTestId('reputation')).toContainText('of 1', { timeout: 10_000 });
    await expect(scoutPage.getByTestId('scout-badge')).toBeVisible();
    await screenshot(scoutPage, 'contribute-drafting');
  } finally {
    await second?.stop();
    await scoutPage.close();
    await page.close();
  }
  expect(errors).toEqual([]);
});
