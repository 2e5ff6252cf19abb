// Plays one viewer's stitched session (ads in pre-, mid- and post-roll
// breaks) to its end in headless Chromium with five players: hls.js on the
// fMP4 and the MPEG-TS variants, dash.js, and Shaka Player (loaded into
// the page from web/node_modules) on HLS and on DASH. Each must reach the
// end with no fatal error and no stall longer than a second. Prints one
// line per player: how far it played, its longest stall, and how many
// ad breaks it saw (hls.js: date ranges; dash.js: periods it switched
// to; Shaka: timeline regions, from SCTE-35 events and date ranges).
//
//   node web/tests/ads.mjs http://127.0.0.1:8080 ASSET_ID '__token__=…'
import { createRequire } from 'node:module';
import { launch } from './page.mjs';

const [base, asset, query] = process.argv.slice(2);
if (!base || !asset || !query) {
  console.error('usage: ads.mjs EDGE_URL ASSET_ID TOKEN_QUERY');
  process.exit(2);
}
const require = createRequire(import.meta.url);
const shakaPath = require.resolve('shaka-player/dist/shaka-player.compiled.js');
const url = p => `${base}/vod/${asset}/${p}${p.includes('?') ? '&' : '?'}${query}`;

const browser = await launch(['--disable-quic', '--autoplay-policy=no-user-gesture-required']);
let failed = false;
try {
  const context = await browser.newContext({ bypassCSP: true });
  const page = await context.newPage();
  await page.goto(base + '/', { waitUntil: 'load' });
  await page.addScriptTag({ path: shakaPath });
  const runs = [
    ['hls.js fMP4', 'hls', url('master.m3u8')],
    ['hls.js TS', 'hls', url('master.m3u8?format=ts')],
    ['dash.js', 'dash', url('manifest.mpd')],
    ['Shaka HLS', 'shaka', url('master.m3u8')],
    ['Shaka DASH', 'shaka', url('manifest.mpd')],
  ];
  for (const [name, kind, src] of runs) {
    const r = await page.evaluate(async ([kind, src]) => {
      const sleep = ms => new Promise(r => setTimeout(r, ms));
      const v = document.createElement('video');
      v.muted = true;
      document.body.appendChild(v);
      let err = null;
      let player;
      let breaks = 0;
      try {
        if (kind === 'hls') {
          player = new Hls({ enableWorker: true });
          player.on(Hls.Events.ERROR, (_, d) => { if (d.fatal) err = `${d.type}/${d.details}`; });
          player.loadSource(src);
          player.attachMedia(v);
        } else if (kind === 'dash') {
          player = dashjs.MediaPlayer().create();
          player.on(dashjs.MediaPlayer.events.ERROR, e => { err = JSON.stringify(e.error || e).slice(0, 200); });
          player.on(dashjs.MediaPlayer.events.PERIOD_SWITCH_COMPLETED, () => { breaks += 1; });
          player.initialize(v, src, true);
        } else {
          shaka.polyfill.installAll();
          player = new shaka.Player();
          await player.attach(v);
          player.addEventListener('error', e => { err = e.detail && `${e.detail.code} ${e.detail.message || ''}`; });
          // SCTE-35 events of DASH and date ranges of HLS.
          player.addEventListener('timelineregionadded', () => { breaks += 1; });
          await player.load(src);
        }
        v.play().catch(() => {});
        // Started, then at twice the speed to the end, watching for stalls.
        const t0 = performance.now();
        while (v.currentTime < 0.5) {
          if (err) throw new Error(`start: ${err}`);
          if (performance.now() - t0 > 30000) throw new Error('did not start');
          await sleep(50);
        }
        v.playbackRate = 2;
        let last = v.currentTime;
        let lastMoved = performance.now();
        let longest = 0;
        const deadline = performance.now() + 90000;
        while (!v.ended) {
          if (err) throw new Error(`at ${v.currentTime.toFixed(2)} s: ${err}`);
          if (performance.now() > deadline) throw new Error(`did not end; at ${v.currentTime.toFixed(2)} s of ${v.duration}`);
          await sleep(50);
          const now = performance.now();
          if (v.currentTime > last) {
            last = v.currentTime;
            lastMoved = now;
          } else if (!v.paused) {
            longest = Math.max(longest, now - lastMoved);
          }
          if (v.paused && !v.ended) v.play().catch(() => {});
        }
        if (kind === 'hls') {
          const level = player.levels[Math.max(0, player.currentLevel)];
          breaks = Object.keys((level && level.details && level.details.dateRanges) || {}).length;
        }
        return { ok: true, t: v.currentTime, duration: v.duration, stall: longest, breaks };
      } catch (e) {
        return { ok: false, err: String(e.message || e), t: v.currentTime };
      } finally {
        if (kind === 'hls') player && player.destroy();
        else if (kind === 'dash') player && player.reset();
        else player && await player.destroy();
        v.remove();
      }
    }, [kind, src]);
    if (r.ok && r.stall <= 1000) {
      console.log(`${name}: played to the end at ${r.t.toFixed(2)} s of ${r.duration.toFixed(2)}, longest stall ${Math.round(r.stall)} ms, ${r.breaks} breaks/periods seen`);
    } else if (r.ok) {
      console.error(`${name}: stalled for ${Math.round(r.stall)} ms`);
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
