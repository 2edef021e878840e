// One page in Debian's chromium holding a plain `EventSource`, for tests/tests/e2e/sse.rs.
//
//   node tests/sse-browser/eventsource.mjs <origin> <path>
//   node tests/sse-browser/eventsource.mjs <origin> --script <file>
//
// Serves an empty page at <origin>/sse-test.html (through playwright's router, so the page has
// the gateway's origin and the stream is same-origin), opens `new EventSource(<path>)` in it,
// and prints one JSON line per callback: {"open":true}, {"message":{"lastEventId","data"}},
// {"close":<data of a gateway.close event>}, {"error":<readyState>}. The browser reconnects by
// itself; nothing here helps it. With --script, the file runs in the page instead (as a
// classic script, with `report(line)` to print a line). Stops when stdin closes.
import { chromium } from 'playwright-core';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

const [origin, path, scriptFile] = process.argv.slice(2);
if (!origin || !path || (path === '--script' && !scriptFile)) {
  console.error('usage: node eventsource.mjs <origin> <path> | <origin> --script <file>');
  process.exit(2);
}
const emit = (line) => process.stdout.write(JSON.stringify(line) + '\n');

const profile = mkdtempSync(join(tmpdir(), 'sse-chromium-'));
const context = await chromium.launchPersistentContext(profile, {
  executablePath: '/usr/bin/chromium',
  headless: true,
  args: [
    '--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
    '--disable-background-networking', '--disable-component-update', '--disable-sync',
  ],
});
try {
  const page = context.pages()[0] ?? (await context.newPage());
  await page.exposeFunction('report', emit);
  await page.route(`${origin}/sse-test.html`, (route) =>
    route.fulfill({ contentType: 'text/html', body: '<!doctype html><title>EventSource</title>' }),
  );
  await page.goto(`${origin}/sse-test.html`);
  if (path === '--script') {
    await page.addScriptTag({ content: readFileSync(scriptFile, 'utf8') });
  } else {
    await page.evaluate((path) => {
      const source = new EventSource(path);
      source.onopen = () => report({ open: true });
      source.onmessage = (e) => report({ message: { lastEventId: e.lastEventId, data: e.data } });
      source.addEventListener('gateway.close', (e) => report({ close: JSON.parse(e.data) }));
      source.onerror = () => report({ error: source.readyState });
    }, path);
  }
  process.stdin.resume();
  await new Promise((resolve) => {
    process.stdin.on('end', resolve);
    process.stdin.on('close', resolve);
  });
} finally {
  await context.close();
  rmSync(profile, { recursive: true, force: true });
}
