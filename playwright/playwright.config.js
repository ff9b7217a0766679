// Playwright drives Debian's Chromium (installed by scripts/setup.sh); it never
// downloads a browser. The flags give headless Chromium a WebGPU adapter on its
// bundled SwiftShader and keep it off the network (see DESIGN.md).
const { defineConfig } = require('@playwright/test');

const CHROMIUM = process.env.SHARD_CHROMIUM || '/usr/bin/chromium';

module.exports = defineConfig({
  testDir: './tests',
  timeout: 60_000,
  retries: 0,
  workers: 1,
  reporter: [['list']],
  use: {
    browserName: 'chromium',
    headless: true,
    launchOptions: {
      executablePath: CHROMIUM,
      args: [
        '--enable-unsafe-webgpu',
        '--use-webgpu-adapter=swiftshader',
        '--use-angle=swiftshader',
        '--no-sandbox',
        '--disable-gpu-sandbox',
        '--disable-background-networking',
        '--disable-component-update',
        '--disable-sync',
        '--no-first-run',
        '--disable-quic',
      ],
    },
  },
});
