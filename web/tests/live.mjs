// Plays a live channel on the edge's web page in headless Chromium: with
// hls.js in low-latency mode, with dash.js in low-latency mode, and with
// Shaka Player (loaded into the page from web/node_modules) on both the
// HLS and DASH URLs the playback API gave. Fails unless each plays 3 s of
// live media with no player error. Prints one line per player with the
// latency the page measured (wall clock minus the program date-time of
// the frame on screen), then the "Go live" check.
//
//   node web/tests/live.mjs http://127.0.0.1:8080 CHANNEL
import { createRequire } from 'node:module';
import { launch, pickProfile, signUp } from './page.mjs';

const [base, channel] = process.argv.slice(2);
if (!base || !channel) {
  console.error('usage: live.mjs EDGE_URL CHANNEL');
  process.exit(2);
}
const require = createRequire(import.meta.url);
const shakaPath = require.resolve('shaka-player/dist/shaka-player.compiled.js');

const browser = await launch();
let failed = false;
const fail = msg => { console.error(msg); failed = true; };
try {
  const page = await browser.newPage();
  const pageErrors = [];
  page.on('pageerror', e => pageErrors.push(String(e) + ' at ' + String(e.stack || '').split('\n').slice(1, 3).join(' | ')));
  await page.goto(base + '/', { waitUntil: 'load' });
  const card = `li.title.live[data-live="${channel}"][data-status="live"]`;
  await signUp(page, 'Live');
  await pickProfile(page, card);
  await page.waitForSelector(card, { timeout: 30000 });

  for (const proto of ['hls', 'dash']) {
    await page.check(`input[name=proto][value=${proto}]`);
    await page.click(card);
    await page.waitForFunction(p => window.cascade.state.proto === p && window.cascade.state.live &&
      (window.cascade.video.currentTime > 0 || window.cascade.state.error), proto,
      { timeout: 45000, polling: 100 });
    const from = await page.evaluate(() => window.cascade.video.currentTime);
    await page.waitForFunction(f => window.cascade.video.currentTime >= f + 3 || window.cascade.state.error,
      from, { timeout: 45000, polling: 100 });
    // The page's latency reading, once it has one.
    await page.waitForFunction(() => window.cascade.state.latency != null || window.cascade.state.error,
      null, { timeout: 15000, polling: 100 }).catch(() => {});
    const r = await page.evaluate(() => ({
      t: window.cascade.video.currentTime, err: window.cascade.state.error,
      latency: window.cascade.state.latency, shown: document.querySelector('#latency').textContent,
    }));
    if (r.err) fail(`${proto}: ${r.err}`);
    else if (r.latency == null || !(r.latency > 0) || !r.shown) fail(`${proto}: no latency shown (${JSON.stringify(r)})`);
    else console.log(`${proto}: played 3 s live, latency ${r.latency.toFixed(2)} s (shown: ${r.shown})`);
  }

  // Seek back, then "Go live" brings the viewer back to the edge (hls.js).
  await page.check('input[name=proto][value=hls]');
  await page.click(card);
  await page.waitForFunction(() => window.cascade.state.proto === 'hls' && window.cascade.video.currentTime > 4,
    null, { timeout: 45000, polling: 100 });
  await page.evaluate(() => { const v = window.cascade.video; v.currentTime = Math.max(v.seekable.start(0), v.currentTime - 8); });
  await page.waitForSelector('#go-live:visible', { timeout: 15000 }).catch(() => {});
  if (!(await page.isVisible('#go-live'))) fail('no "Go live" button after seeking back');
  else {
    await page.click('#go-live');
    await page.waitForFunction(() => window.cascade.state.latency != null && window.cascade.state.latency < 8,
      null, { timeout: 15000, polling: 100 }).catch(() => {});
    const l = await page.evaluate(() => window.cascade.state.latency);
    if (!(l < 8)) fail(`"Go live" left the viewer ${l} s behind`);
    else console.log(`go live: back to ${l.toFixed(2)} s behind`);
  }

  // Shaka Player on the same signed URLs, in a page of the same origin
  // (the page's Content-Security-Policy rightly refuses a script it does
  // not serve, so this context bypasses it to load Shaka).
  const urls = await page.evaluate(() => window.cascade.state.urls);
  // The stream stays (stopping it would end its token at the edges).
  await page.evaluate(() => window.cascade.video.pause());
  const context = await browser.newContext({ bypassCSP: true });
  const shakaPage = await context.newPage();
  shakaPage.on('pageerror', e => pageErrors.push('(Shaka page) ' + String(e)));
  await shakaPage.goto(base + '/', { waitUntil: 'load' });
  await shakaPage.addScriptTag({ path: shakaPath });
  for (const kind of ['hls', 'dash']) {
    const r = await shakaPage.evaluate(async url => {
      const v = document.createElement('video');
      v.muted = true;
      document.body.append(v);
      shaka.polyfill.installAll();
      const p = new shaka.Player();
      await p.attach(v);
      let err = null;
      p.addEventListener('error', e => { err = e.detail && (e.detail.code + ' ' + e.detail.message); });
      p.configure({ streaming: { lowLatencyMode: true } });
      try { await p.load(new URL(url, location.href).toString()); } catch (e) { return { err: String(e.code || e) }; }
      await v.play().catch(() => {});
      const start = v.currentTime;
      const deadline = Date.now() + 30000;
      while (Date.now() < deadline && !err && v.currentTime < start + 3) await new Promise(r => setTimeout(r, 100));
      const out = { played: v.currentTime - start, err, live: p.isLive() };
      await p.destroy();
      v.remove();
      return out;
    }, urls[kind]);
    if (r.err || !(r.played >= 3) || !r.live) fail(`shaka ${kind}: ${JSON.stringify(r)}`);
    else console.log(`shaka ${kind}: played ${r.played.toFixed(2)} s live`);
  }
  if (pageErrors.length) fail('page errors: ' + pageErrors.join('; '));
} finally {
  await browser.close();
}
process.exit(failed ? 1 : 0);
