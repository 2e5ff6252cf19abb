// Plays one free viewer's live session in headless Chromium with hls.js
// on the LL-HLS (fMP4, low-latency mode) and the MPEG-TS variants, and
// with dash.js and Shaka Player on the MPD, all at once,
// for SECS seconds once both play, through an ad break the test calls
// when this prints `started`. Each
// must play on with no fatal error and no stall longer than a second, and
// load the break's ad segments (`/ad/` in their URLs) and then the
// channel's again. Prints one line per player: how far it played, its
// longest stall, the ad and content segments it loaded after the break.
//
//   node web/tests/live_ads.mjs http://127.0.0.1:8080 CHANNEL '__token__=…' SECS [hls,dash,shaka]
import { createRequire } from 'node:module';
import { launch } from './page.mjs';

const [base, channel, query, secsArg, playersArg] = process.argv.slice(2);
const secs = Number(secsArg || 40);
if (!base || !channel || !query || !(secs > 0)) {
  console.error('usage: live_ads.mjs EDGE_URL CHANNEL TOKEN_QUERY SECS [PLAYERS]');
  process.exit(2);
}
const require = createRequire(import.meta.url);
const shakaPath = require.resolve('shaka-player/dist/shaka-player.compiled.js');
const url = p => `${base}/live/${channel}/${p}${p.includes('?') ? '&' : '?'}${query}`;

const browser = await launch(['--disable-quic', '--autoplay-policy=no-user-gesture-required']);
let failed = false;
try {
  const context = await browser.newContext({ bypassCSP: true });
  const page = await context.newPage();
  await page.goto(base + '/', { waitUntil: 'load' });
  await page.addScriptTag({ path: shakaPath });
  // LIVE_ADS_DEBUG=1 prints the page's console (players' warnings).
  if (process.env.LIVE_ADS_DEBUG) {
    page.on('console', m => console.error(`[page] ${m.text()}`));
    await page.evaluate(() => { window.LIVE_ADS_DEBUG = true; });
  }
  const only = playersArg || process.env.LIVE_ADS_PLAYERS;
  const runs = [
    ['hls.js LL-HLS', 'hls', url('master.m3u8'), true],
    ['hls.js TS', 'hls', url('master.m3u8?format=ts'), false],
    ['dash.js', 'dash', url('manifest.mpd'), true],
    ['Shaka DASH', 'shaka', url('manifest.mpd'), false],
  ].filter(r => !only || only.split(',').includes(r[1]));
  // "started" once every player plays: the test then calls the break.
  await page.exposeFunction('announce', msg => console.log(msg));
  const results = await page.evaluate(async ([runs, secs]) => {
    const sleep = ms => new Promise(r => setTimeout(r, ms));
    let started = 0;
    const one = async ([name, kind, src, lowLatency]) => {
      const v = document.createElement('video');
      v.muted = true;
      document.body.appendChild(v);
      let err = null;
      let player;
      // Media segments loaded in order: 'ad' or 'content'.
      const loaded = [];
      const saw = u => loaded.push(String(u).includes('/ad/') ? 'ad' : 'content');
      try {
        if (kind === 'hls') {
          player = new Hls({ enableWorker: true, lowLatencyMode: lowLatency });
          player.on(Hls.Events.ERROR, (_, d) => { if (d.fatal) err = `${d.type}/${d.details}`; });
          player.on(Hls.Events.FRAG_LOADED, (_, d) => { if (d.frag.type === 'main') saw(d.frag.url); });
          player.loadSource(src);
          player.attachMedia(v);
        } else if (kind === 'dash') {
          player = dashjs.MediaPlayer().create();
          player.updateSettings({ debug: { logLevel: window.LIVE_ADS_DEBUG ? 5 : 3 }, streaming: { delay: { liveDelay: 4 } } });
          player.on(dashjs.MediaPlayer.events.ERROR, e => { err = JSON.stringify(e.error || e).slice(0, 200); });
          player.on(dashjs.MediaPlayer.events.FRAGMENT_LOADING_COMPLETED, e => {
            if (e.request && e.request.mediaType === 'video' && e.request.type === 'MediaSegment') saw(e.request.url);
          });
          player.initialize(v, src, true);
        } else {
          shaka.polyfill.installAll();
          player = new shaka.Player();
          await player.attach(v);
          player.addEventListener('error', e => { err = e.detail && `${e.detail.code} ${e.detail.message || ''}`; });
          player.getNetworkingEngine().registerResponseFilter((type, r) => {
            if (type === shaka.net.NetworkingEngine.RequestType.SEGMENT && /\/v\d+\/\d+\.m4s/.test(r.uri)) saw(r.uri);
          });
          await player.load(src);
        }
        // dash.js starts itself (autoplay): a play() before it listens
        // would hide the start from it, and it would never refresh the MPD.
        if (kind !== 'dash') v.play().catch(() => {});
        const t0 = performance.now();
        while (v.currentTime < 0.2) {
          if (err) throw new Error(`start: ${err}`);
          if (performance.now() - t0 > 30000) throw new Error('did not start');
          await sleep(50);
        }
        started += 1;
        if (started === runs.length) window.announce('started');
        let last = v.currentTime;
        let lastMoved = performance.now();
        const diag = window.LIVE_ADS_DEBUG ? [] : null;
        let lastDiag = 0;
        let longest = 0;
        const until = performance.now() + secs * 1000;
        while (performance.now() < until) {
          if (err) throw new Error(`at ${v.currentTime.toFixed(2)} s: ${err}`);
          await sleep(50);
          const now = performance.now();
          if (v.currentTime > last) {
            last = v.currentTime;
            lastMoved = now;
          } else if (!v.paused) {
            longest = Math.max(longest, now - lastMoved);
          }
          if (v.paused) v.play().catch(() => {});
          if (diag && now - lastDiag > 2000) {
            lastDiag = now;
            const b = v.buffered.length ? `${v.buffered.start(0).toFixed(1)}-${v.buffered.end(v.buffered.length - 1).toFixed(1)}` : '-';
            let extra = '';
            if (kind === 'dash') { try { extra = ` period=${player.getActiveStream().getStreamInfo().id} live=${player.duration().toFixed(1)}`; } catch (e) { extra = String(e); } }
            diag.push(`t=${v.currentTime.toFixed(1)} buf=${b} rs=${v.readyState}${extra} n=${loaded.length}`);
          }
        }
        const firstAd = loaded.indexOf('ad');
        const ads = loaded.filter(k => k === 'ad').length;
        const back = firstAd < 0 ? 0 : loaded.slice(loaded.lastIndexOf('ad')).filter(k => k === 'content').length;
        return { name, ok: true, played: v.currentTime, stall: longest, ads, back, diag };
      } catch (e) {
        return { name, ok: false, err: String(e.message || e), played: v.currentTime };
      } finally {
        if (kind === 'hls') player && player.destroy();
        else if (kind === 'dash') player && player.reset();
        else player && await player.destroy();
        v.remove();
      }
    };
    return Promise.all(runs.map(one));
  }, [runs, secs]);
  for (const r of results) {
    if (r.ok && r.stall <= 1000 && r.ads > 0 && r.back > 0) {
      console.log(`${r.name}: played ${r.played.toFixed(2)} s, longest stall ${Math.round(r.stall)} ms, ${r.ads} ad segments then ${r.back} of the channel`);
    } else if (r.ok) {
      if (r.diag) console.error(r.diag.join('\n'));
      console.error(`${r.name}: stall ${Math.round(r.stall)} ms, ${r.ads} ad segments, ${r.back} of the channel after them`);
      failed = true;
    } else {
      console.error(`${r.name}: failed at ${r.played.toFixed(2)} s: ${r.err}`);
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
