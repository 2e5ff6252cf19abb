// Plays a protected title in headless Chromium through EME ClearKey
// (org.w3.clearkey), its licenses from the edge's license URL, six ways:
// hls.js on the cbcs fMP4 variants (SAMPLE-AES) and on the AES-128 TS
// variants, dash.js on the cbcs and the cenc MPDs, Shaka on both MPDs.
// Each must play past `secs` with no player error; the EME runs must have
// media keys on the video element (the samples really were decrypted by
// the browser's CDM).
//
//   node web/tests/protected.mjs EDGE_URL ASSET_ID '__token__=…' SECS
//
// PROTECTED_LIVE=1: ASSET_ID is a protected live channel; hls.js plays
// its LL-HLS (cbcs, keys rotating) for SECS seconds, which should span a
// key rotation. (Shaka's HLS parser takes FairPlay, Widevine, PlayReady
// and WisePlay key formats only, not org.w3.clearkey; protected channels
// have no DASH yet.)
import { createRequire } from 'node:module';
import { launch } from './page.mjs';

const require = createRequire(import.meta.url);
const shakaPath = require.resolve('shaka-player/dist/shaka-player.compiled.js');

const [base, asset, query, secsArg] = process.argv.slice(2);
if (!base || !asset || !query) {
  console.error('usage: protected.mjs EDGE_URL ASSET_ID TOKEN_QUERY [SECS]');
  process.exit(2);
}
const secs = Number(secsArg || 3);
const live = !!process.env.PROTECTED_LIVE;
const url = p => `${base}/${live ? 'live' : 'vod'}/${asset}/${p}${p.includes('?') ? '&' : '?'}${query}`;
const license = url('license/clearkey');

const browser = await launch(['--disable-quic', '--autoplay-policy=no-user-gesture-required']);
let failed = false;
try {
  // The edge's page does not serve Shaka: this context bypasses its CSP
  // to load Shaka from web/node_modules.
  const context = await browser.newContext({ bypassCSP: true });
  const page = await context.newPage();
  // PROTECTED_DEBUG=1 prints the page's console (players at debug level).
  const debug = !!process.env.PROTECTED_DEBUG;
  if (debug) page.on('console', m => console.log('  [page]', m.text().slice(0, 400)));
  await page.goto(base + '/', { waitUntil: 'load' });
  await page.addScriptTag({ path: shakaPath });
  const runs = live ? [
    ['hls.js live cbcs', 'hls', url('master.m3u8'), true],
  ] : [
    ['hls.js cbcs', 'hls', url('master.m3u8'), true],
    ['hls.js AES-128 TS', 'hls', url('master.m3u8?format=ts'), false],
    ['dash.js cbcs', 'dash', url('manifest.mpd'), true],
    ['dash.js cenc', 'dash', url('cenc/manifest.mpd'), true],
    ['Shaka cbcs', 'shaka', url('manifest.mpd'), true],
    ['Shaka cenc', 'shaka', url('cenc/manifest.mpd'), true],
  ];
  // PROTECTED_ONLY=dash.js,Shaka runs those players alone (hls.js asks
  // ClearKey for one key only: it cannot tell an audio key from a video
  // key, so titles with a key per group of rungs play with the others).
  const only = (process.env.PROTECTED_ONLY || '').split(',').filter(Boolean);
  for (const [name, kind, src, eme] of runs.filter(r => !only.length || only.some(o => r[0].startsWith(o)))) {
    const r = await page.evaluate(async ([kind, src, license, secs, debug]) => {
      const sleep = ms => new Promise(r => setTimeout(r, ms));
      const v = document.createElement('video');
      v.muted = true;
      document.body.appendChild(v);
      let err = null;
      let player;
      const until = async (what, cond, ms) => {
        const t0 = performance.now();
        while (!cond()) {
          if (err) throw new Error(`${what}: ${err}`);
          if (performance.now() - t0 > ms) throw new Error(`${what}: timed out at ${v.currentTime.toFixed(2)} s`);
          await sleep(100);
        }
      };
      v.addEventListener('error', () => { err = `media error ${v.error && v.error.code}: ${v.error && v.error.message}`; });
      try {
        if (kind === 'hls') {
          player = new Hls({
            enableWorker: true,
            emeEnabled: true,
            drmSystems: { 'org.w3.clearkey': { licenseUrl: license } },
            debug,
          });
          player.on(Hls.Events.ERROR, (_, d) => { if (d.fatal) err = `${d.type}/${d.details}`; });
          player.loadSource(src);
          player.attachMedia(v);
          v.play().catch(() => {});
        } else if (kind === 'dash') {
          player = dashjs.MediaPlayer().create();
          if (debug) player.updateSettings({ debug: { logLevel: dashjs.Debug.LOG_LEVEL_DEBUG } });
          player.on(dashjs.MediaPlayer.events.ERROR, e => { err = JSON.stringify(e.error || e).slice(0, 300); });
          player.setProtectionData({ 'org.w3.clearkey': { serverURL: license } });
          player.initialize(v, src, true);
        } else {
          shaka.polyfill.installAll();
          player = new shaka.Player();
          await player.attach(v);
          player.configure({ drm: { servers: { 'org.w3.clearkey': license } } });
          player.addEventListener('error', e => { err = `shaka ${e.detail && e.detail.code}`; });
          await player.load(src);
          v.play().catch(() => {});
        }
        // Live starts wherever the edge is: played `secs` from the first frame.
        await until('start', () => v.currentTime > 0, 45000);
        const t0 = v.currentTime;
        await until('play', () => v.currentTime - t0 >= secs, 45000 + secs * 2000);
        return { ok: true, t: v.currentTime, keys: !!v.mediaKeys };
      } catch (e) {
        return { ok: false, err: String(e.message || e), t: v.currentTime, keys: !!v.mediaKeys };
      } finally {
        try {
          if (kind === 'hls') player && player.destroy();
          else if (kind === 'dash') player && player.reset();
          else player && await player.destroy();
        } catch (_) { /* the next run needs only a clean page */ }
        v.remove();
      }
    }, [kind, src, license, secs, debug]);
    if (r.ok && r.keys === eme) {
      console.log(`${name}: played to ${r.t.toFixed(2)} s${eme ? ' through EME ClearKey' : ''}`);
    } else if (r.ok) {
      console.error(`${name}: played, but media keys ${r.keys ? 'were' : 'were not'} set`);
      failed = true;
    } else {
      console.error(`${name}: failed at ${r.t.toFixed(2)} s: ${r.err}`);
      failed = true;
    }
  }
} catch (e) {
  console.error(String(e));
  failed = true;
} finally {
  await browser.close();
}
process.exit(failed ? 1 : 0);
