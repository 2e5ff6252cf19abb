// Plays one free viewer's live session in headless Chromium with hls.js,
// on the LL-HLS (fMP4, low-latency mode) and the MPEG-TS variants at once,
// for SECS seconds once both play, through an ad break the test calls
// when this prints `started`. Each
// must play on with no fatal error and no stall longer than a second, and
// load the break's ad segments (`/ad/` in their URLs) and then the
// channel's again. Prints one line per player: how far it played, its
// longest stall, the ad and content segments it loaded after the break.
//
//   node web/tests/live_ads.mjs http://127.0.0.1:8080 CHANNEL '__token__=…' SECS
import { launch } from './page.mjs';

const [base, channel, query, secsArg] = process.argv.slice(2);
const secs = Number(secsArg || 40);
if (!base || !channel || !query || !(secs > 0)) {
  console.error('usage: live_ads.mjs EDGE_URL CHANNEL TOKEN_QUERY SECS');
  process.exit(2);
}
const url = p => `${base}/live/${channel}/${p}${p.includes('?') ? '&' : '?'}${query}`;

const browser = await launch(['--disable-quic', '--autoplay-policy=no-user-gesture-required']);
let failed = false;
try {
  const context = await browser.newContext({ bypassCSP: true });
  const page = await context.newPage();
  await page.goto(base + '/', { waitUntil: 'load' });
  const runs = [
    ['hls.js LL-HLS', url('master.m3u8'), true],
    ['hls.js TS', url('master.m3u8?format=ts'), false],
  ];
  // "started" once every player plays: the test then calls the break.
  await page.exposeFunction('announce', msg => console.log(msg));
  const results = await page.evaluate(async ([runs, secs]) => {
    const sleep = ms => new Promise(r => setTimeout(r, ms));
    let started = 0;
    const one = async ([name, src, lowLatency]) => {
      const v = document.createElement('video');
      v.muted = true;
      document.body.appendChild(v);
      let err = null;
      const player = new Hls({ enableWorker: true, lowLatencyMode: lowLatency });
      // Segments loaded in order: 'ad' or 'content'.
      const loaded = [];
      player.on(Hls.Events.ERROR, (_, d) => { if (d.fatal) err = `${d.type}/${d.details}`; });
      player.on(Hls.Events.FRAG_LOADED, (_, d) => {
        if (d.frag.type === 'main') loaded.push(d.frag.url.includes('/ad/') ? 'ad' : 'content');
      });
      try {
        player.loadSource(src);
        player.attachMedia(v);
        v.play().catch(() => {});
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
        }
        const firstAd = loaded.indexOf('ad');
        const ads = loaded.filter(k => k === 'ad').length;
        const back = firstAd < 0 ? 0 : loaded.slice(loaded.lastIndexOf('ad')).filter(k => k === 'content').length;
        return { name, ok: true, played: v.currentTime, stall: longest, ads, back };
      } catch (e) {
        return { name, ok: false, err: String(e.message || e), played: v.currentTime };
      } finally {
        player.destroy();
        v.remove();
      }
    };
    return Promise.all(runs.map(one));
  }, [runs, secs]);
  for (const r of results) {
    if (r.ok && r.stall <= 1000 && r.ads > 0 && r.back > 0) {
      console.log(`${r.name}: played ${r.played.toFixed(2)} s, longest stall ${Math.round(r.stall)} ms, ${r.ads} ad segments then ${r.back} of the channel`);
    } else if (r.ok) {
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
