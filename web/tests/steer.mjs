// Content steering in headless Chromium: hls.js and dash.js play one title
// side by side from edge A (small buffers, so they keep fetching). The
// script prints READY once both play from A, waits for a line on stdin
// (the test drains A meanwhile), then waits until both fetch their
// segments from edge B, keeps playing a few seconds, and prints one JSON
// line: segments per host before and after, player errors, and play times.
//
//   node web/tests/steer.mjs http://127.0.0.1:PORT_A http://127.0.0.1:PORT_B ASSET \
//     '__token__=…id=steer-hls…' '__token__=…id=steer-dash…'
//
// Each player has a token of its own session (`steer-hls`, `steer-dash`),
// which its child URLs carry: segments are counted per player and host.
import { createInterface } from 'node:readline';
import { launch } from './page.mjs';

const [edgeA, edgeB, asset, queryHls, queryDash] = process.argv.slice(2);
if (!edgeA || !edgeB || !asset || !queryHls || !queryDash) {
  console.error('usage: steer.mjs EDGE_A EDGE_B ASSET_ID HLS_TOKEN_QUERY DASH_TOKEN_QUERY');
  process.exit(2);
}
const hostA = new URL(edgeA).host;
const hostB = new URL(edgeB).host;
const stdin = createInterface({ input: process.stdin });
const nextLine = () => new Promise(r => stdin.once('line', r));

const browser = await launch(['--disable-quic', '--autoplay-policy=no-user-gesture-required']);
let failed = false;
try {
  const page = await browser.newPage();
  page.on('pageerror', e => console.error('page error: ' + e));
  page.on('requestfailed', r => { if (r.url().includes('/steer/')) console.error(`steering request failed: ${r.url()} ${r.failure() && r.failure().errorText}`); });
  // STEER_DEBUG=1: dash.js's steering log lines and every steering answer.
  if (process.env.STEER_DEBUG) {
    page.on('console', m => { const t = m.text(); if (/ContentSteering/i.test(t)) console.error('console: ' + t.slice(0, 300)); });
    page.on('response', r => { if (r.url().includes('/steer/')) console.error(`steering: ${r.status()} ${r.url().slice(0, 160)}`); });
    await page.addInitScript(() => { window.STEER_DEBUG = true; });
  }
  await page.goto(edgeA + '/', { waitUntil: 'load' });
  await page.evaluate(([asset, queryHls, queryDash]) => {
    performance.setResourceTimingBufferSize(100000);
    window.steer = { errors: [], videos: {}, steering: [] };
    const src = (p, q) => `/vod/${asset}/${p}?${q}`;
    const video = name => {
      const v = document.createElement('video');
      v.muted = true;
      document.body.appendChild(v);
      window.steer.videos[name] = v;
      return v;
    };
    const hls = new Hls({ maxBufferLength: 4, maxMaxBufferLength: 6, backBufferLength: 2 });
    hls.on(Hls.Events.ERROR, (_, d) => { if (d.fatal) window.steer.errors.push(`hls.js ${d.type}/${d.details}`); });
    hls.loadSource(src('master.m3u8', queryHls));
    hls.attachMedia(video('hls'));
    hls.on(Hls.Events.STEERING_MANIFEST_LOADED, (_, d) => window.steer.steering.push('hls ' + JSON.stringify(d.steeringManifest['PATHWAY-PRIORITY'])));
    window.steer.hls = hls;
    const dash = dashjs.MediaPlayer().create();
    if (window.STEER_DEBUG) dash.updateSettings({ debug: { logLevel: dashjs.Debug.LOG_LEVEL_DEBUG } });
    dash.updateSettings({ streaming: { buffer: { bufferTimeAtTopQuality: 4, bufferTimeAtTopQualityLongForm: 4, stableBufferTime: 4 } } });
    dash.on(dashjs.MediaPlayer.events.ERROR, e => window.steer.errors.push('dash.js ' + JSON.stringify(e.error || e).slice(0, 200)));
    dash.initialize(video('dash'), new URL(src('manifest.mpd', queryDash), location.href).href, true);
    dash.on(dashjs.MediaPlayer.events.CONTENT_STEERING_REQUEST_COMPLETED, e => window.steer.steering.push('dash ' + JSON.stringify(e.currentSteeringResponseData && e.currentSteeringResponseData.pathwayPriority)));
    window.steer.dash = dash;
    for (const v of Object.values(window.steer.videos)) v.play().catch(() => {});
  }, [asset, queryHls, queryDash]);

  // Segments fetched per player and host (`hls@host`, `dash@host`), from
  // the browser's own timing.
  const segments = () => page.evaluate(() => {
    const n = {};
    for (const e of performance.getEntriesByType('resource')) {
      if (!/\/vod\/.*\.m4s/.test(e.name)) continue;
      const who = e.name.includes('steer-hls') ? 'hls' : e.name.includes('steer-dash') ? 'dash' : 'other';
      const k = `${who}@${new URL(e.name).host}`;
      n[k] = (n[k] || 0) + 1;
    }
    return n;
  });
  const state = () => page.evaluate(() => ({
    errors: window.steer.errors,
    steering: window.steer.steering.slice(-6),
    hls_time: window.steer.videos.hls.currentTime,
    dash_time: window.steer.videos.dash.currentTime,
    hls_pathway: window.steer.hls.pathwayPriority ? window.steer.hls.pathwayPriority[0] : null,
    hls_levels: window.steer.hls.levels.length,
    hls_url: window.steer.hls.levels[window.steer.hls.currentLevel >= 0 ? window.steer.hls.currentLevel : 0]?.url?.[0] || '',
  }));
  const until = async (what, cond, ms) => {
    const t0 = Date.now();
    for (;;) {
      const s = await state();
      if (s.errors.length) throw new Error(`${what}: ${s.errors.join('; ')}`);
      if (await cond(s)) return s;
      if (Date.now() - t0 > ms) throw new Error(`${what}: timed out: ${JSON.stringify(s)} ${JSON.stringify(await segments())}`);
      await new Promise(r => setTimeout(r, 200));
    }
  };
  await until('both play from A', s => s.hls_time >= 2 && s.dash_time >= 2, 60000);
  const before = await segments();
  const at = (n, who, host) => n[`${who}@${host}`] || 0;
  for (const who of ['hls', 'dash']) {
    if (!at(before, who, hostA) || at(before, who, hostB)) throw new Error(`${who} not playing from A: ${JSON.stringify(before)}`);
  }
  console.log('READY ' + JSON.stringify(before));
  await nextLine();
  const drainedAt = await state();
  // Both move: new segments come from B, and play goes on.
  await until('both move to B', async s => {
    const n = await segments();
    return at(n, 'hls', hostB) >= 2 && at(n, 'dash', hostB) >= 2 && s.hls_url.includes(hostB) &&
      s.hls_time > drainedAt.hls_time + 2 && s.dash_time > drainedAt.dash_time + 2;
  }, 60000);
  const moved = await segments();
  console.log('MOVED ' + JSON.stringify(moved));
  await nextLine();
  // A few more seconds: nothing more from A.
  const t = await state();
  await until('play on at B', s => s.hls_time > t.hls_time + 3 && s.dash_time > t.dash_time + 3, 30000);
  const after = await segments();
  const end = await state();
  console.log('DONE ' + JSON.stringify({
    before, moved, after,
    from_a_after_moving: {
      hls: at(after, 'hls', hostA) - at(moved, 'hls', hostA),
      dash: at(after, 'dash', hostA) - at(moved, 'dash', hostA),
    },
    from_b_after_moving: {
      hls: at(after, 'hls', hostB) - at(moved, 'hls', hostB),
      dash: at(after, 'dash', hostB) - at(moved, 'dash', hostB),
    },
    hls_time: end.hls_time, dash_time: end.dash_time, errors: end.errors,
  }));
} catch (e) {
  console.error(String(e.stack || e));
  failed = true;
} finally {
  await browser.close();
  stdin.close();
}
process.exit(failed ? 1 : 0);
