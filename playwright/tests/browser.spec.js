// The browser the scout tests depend on: headless Chromium must give a page on
// localhost a WebGPU adapter and a device that runs a compute shader, because
// that is what a scout tab drafts with.
const { test, expect } = require('@playwright/test');
const http = require('node:http');

let server;
let origin;

test.beforeAll(async () => {
  server = http.createServer((_req, res) => {
    res.writeHead(200, { 'content-type': 'text/html' });
    res.end('<!doctype html><title>shard webgpu check</title>');
  });
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
  origin = `http://127.0.0.1:${server.address().port}`;
});

test.afterAll(async () => {
  await new Promise((resolve) => server.close(resolve));
});

test('WebGPU runs a compute shader in headless Chromium', async ({ page }) => {
  await page.goto(origin);
  const result = await page.evaluate(async () => {
    if (!navigator.gpu) return { error: 'navigator.gpu is missing' };
    const adapter = await navigator.gpu.requestAdapter();
    if (!adapter) return { error: 'no WebGPU adapter' };
    const features = [...adapter.features].sort();
    const device = await adapter.requestDevice();
    // Doubles four numbers on the GPU and reads them back.
    const module = device.createShaderModule({
      code: `@group(0) @binding(0) var<storage, read_write> data: array<f32>;
             @compute @workgroup_size(4) fn main(@builtin(global_invocation_id) id: vec3<u32>) {
               data[id.x] = data[id.x] * 2.0;
             }`,
    });
    const pipeline = device.createComputePipeline({
      layout: 'auto',
      compute: { module, entryPoint: 'main' },
    });
    const input = new Float32Array([1, 2, 3, 4.5]);
    const storage = device.createBuffer({
      size: input.byteLength,
      usage: GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_SRC | GPUBufferUsage.COPY_DST,
    });
    device.queue.writeBuffer(storage, 0, input);
    const readback = device.createBuffer({
      size: input.byteLength,
      usage: GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST,
    });
    const bindGroup = device.createBindGroup({
      layout: pipeline.getBindGroupLayout(0),
      entries: [{ binding: 0, resource: { buffer: storage } }],
    });
    const encoder = device.createCommandEncoder();
    const pass = encoder.beginComputePass();
    pass.setPipeline(pipeline);
    pass.setBindGroup(0, bindGroup);
    pass.dispatchWorkgroups(1);
    pass.end();
    encoder.copyBufferToBuffer(storage, 0, readback, 0, input.byteLength);
    device.queue.submit([encoder.finish()]);
    await readback.mapAsync(GPUMapMode.READ);
    return {
      output: Array.from(new Float32Array(readback.getMappedRange())),
      features,
      maxStorageBufferBindingSize: adapter.limits.maxStorageBufferBindingSize,
    };
  });
  expect(result.error).toBeUndefined();
  expect(result.output).toEqual([2, 4, 6, 9]);
  console.log(`WebGPU adapter features: ${result.features.join(', ')}`);
  // burn's WebGPU runtime (cubecl-wgpu 0.10) panics on wasm without
  // timestamp queries; the draft model's largest tensor (the 49,152 × 576
  // embedding, f32) needs a storage binding over 100 MiB.
  expect(result.features).toContain('timestamp-query');
  expect(result.maxStorageBufferBindingSize).toBeGreaterThanOrEqual(49152 * 576 * 4);
});
