// A tab that cheats is caught and banned, and the person sees it: golden
// tickets (answers the oracle has already served, slipped to scouts as
// ordinary work) find a tab whose drafts are garbage, the oracle bans its
// peer id, and the Contribute page says so — also when the tab comes back,
// until the ban ends. `?misbehave=garbage` is how a person (or this test) asks
// a tab to cheat, like `oracle scout --misbehave garbage`; such a tab uses a
// key of its own, never the browser's scout key.
const { test, expect } = require('@playwright/test');
const { startScoutOracle, screenshot, watchConsole } = require('../support/oracle');

let oracle;

test.beforeAll(async () => {
  // A ticket every half second, so the ban comes within seconds.
  oracle = await startScoutOracle(['--golden-interval-s', '0.5']);
  // Golden tickets are made of finished greedy answers: serve two first.
  for (const prompt of ['The capital of France is', 'Water boils at']) {
    const response = await fetch(`${oracle.origin}/v1/completions`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ prompt, max_tokens: 16, temperature: 0 }),
    });
    expect(response.status).toBe(200);
  }
});

test.afterAll(async () => {
  await oracle?.stop();
});

test('a tab that drafts garbage is banned by golden tickets, and the page says so', async ({ page, context }) => {
  test.setTimeout(180_000);
  const errors = watchConsole(page);
  await page.goto(`${oracle.origin}/?misbehave=garbage#/contribute`);
  await expect(page.getByTestId('misbehave')).toContainText('misbehaves on purpose');
  await page.getByTestId('backend-choice').selectOption('cpu');
  await page.getByTestId('contribute').click();
  // Banned after three failed tickets; the tab notices when the oracle stops
  // answering its pings, dials again and is refused with the ban's end.
  const state = page.getByTestId('state');
  await expect(state).toHaveText(/banned this scout/, { timeout: 120_000 });
  await expect(state).toContainText('It tries again by itself when the ban ends');
  await expect(page.getByTestId('scout-badge')).toHaveText('Banned');
  await expect(page.getByTestId('transport')).toHaveText('not connected');
  const peerId = (await page.getByTestId('peer-id').textContent()).trim();

  // The oracle's ledger agrees, and the page shows its record.
  const record = await (await fetch(`${oracle.origin}/api/scouts/${peerId}`)).json();
  expect(record.banned).toBe(true);
  expect(record.record.golden_failed).toBeGreaterThanOrEqual(3);
  expect(record.record.golden_passed).toBe(0);
  await expect(page.getByTestId('reputation')).toContainText('banned', { timeout: 10_000 });
  await screenshot(page, 'contribute-banned');
  await page.setViewportSize({ width: 390, height: 844 });
  await screenshot(page, 'contribute-banned');
  // The oracle let go of the banned tab.
  const status = await (await fetch(`${oracle.origin}/api/status`)).json();
  expect(status.scouts_connected).toBe(0);

  // The person's own key was never used: without the parameter this browser
  // contributes under another peer id, and is not banned.
  const honest = await context.newPage();
  await honest.goto(`${oracle.origin}/#/contribute`);
  await expect(honest.getByTestId('misbehave')).toHaveCount(0);
  await honest.getByTestId('backend-choice').selectOption('cpu');
  await honest.getByTestId('contribute').click();
  await expect(honest.getByTestId('state')).toHaveText(/Ready|Drafting/, { timeout: 60_000 });
  expect((await honest.getByTestId('peer-id').textContent()).trim()).not.toBe(peerId);
  await honest.getByTestId('contribute').click();
  await expect(honest.getByTestId('state')).toHaveText('Stopped.');

  // The misbehaving key comes back: the ban holds, at its first handshake.
  const again = await context.newPage();
  await again.goto(`${oracle.origin}/?misbehave=garbage#/contribute`);
  await again.getByTestId('backend-choice').selectOption('cpu');
  await again.getByTestId('contribute').click();
  await expect(again.getByTestId('state')).toHaveText(/banned this scout/, { timeout: 60_000 });
  expect((await again.getByTestId('peer-id').textContent()).trim()).toBe(peerId);
  expect(errors).toEqual([]);
});

test('an unknown misbehaviour in the address is refused before anything starts', async ({ page }) => {
  await page.goto(`${oracle.origin}/?misbehave=lies#/contribute`);
  await expect(page.getByTestId('misbehave')).toContainText('garbage, wrong-key, replay');
  await page.getByTestId('contribute').click();
  await expect(page.getByTestId('error')).toContainText('?misbehave=lies');
  await expect(page.getByTestId('contribute')).toHaveText('Contribute');
});
