// Player-side live latency in Chromium: hls.js plays Cascade's LL-HLS
// (through edge and shield) and, side by side in the same page, nginx's
// RTMP module's HLS output of the same encoder. Every second after a
// warm-up it reads each player's latency: the wall clock minus the time the
// frame on screen reached ingest, from Cascade's EXT-X-PROGRAM-DATE-TIME,
// and from nginx's fragment names (`hls_fragment_naming system`: the
// wall-clock millisecond each fragment began) plus the position in it.
// Prints the medians and p90s.
//
//   node benches/live-latency.mjs EDGE_PAGE CASCADE_URL NGINX_URL SECONDS
import { createRequire } from 'node:module';

// The browser driver and hls.js are the web page's (web/node_modules).
const require = createRequire(new URL('../web/package.json', import.meta.url));
const { chromium } = require('playwright-core');

const [page0, cascadeUrl, nginxUrl, secsArg] = process.argv.slice(2);
const secs = Number(secsArg || 60);
const hlsPath = require.resolve('hls.js/dist/hls.min.js');

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  args: ['--no-sandbox', '--disable-gpu', '--disable-background-networking', '--disable-quic',
    '--autoplay-policy=no-user-gesture-required'],
});
try {
  const context = await browser.newContext({ bypassCSP: true });
  const page = await context.newPage();
  page.on('pageerror', e => console.error('page error:', String(e)));
  await page.goto(page0, { waitUntil: 'load' });
  await page.addScriptTag({ path: hlsPath });
  const result = await page.evaluate(async ({ cascadeUrl, nginxUrl, secs }) => {
    const make = (url, config) => {
      const v = document.createElement('video');
      v.muted = true;
      document.body.append(v);
      const h = new Hls(config);
      const p = { v, h, frag: null, errors: [] };
      h.on(Hls.Events.FRAG_CHANGED, (_, d) => { p.frag = d.frag; });
      h.on(Hls.Events.ERROR, (_, d) => { if (d.fatal) p.errors.push(d.details); });
      h.loadSource(url);
      h.attachMedia(v);
      v.play().catch(() => {});
      return p;
    };
    const cascade = make(cascadeUrl, { lowLatencyMode: true });
    const nginx = make(nginxUrl, {});
    const latency = {
      cascade: () => cascade.h.playingDate ? (Date.now() - cascade.h.playingDate.getTime()) / 1000 : null,
      nginx: () => {
        const f = nginx.frag;
        if (!f) return null;
        // `{stream}-{ms}.ts`: the wall clock the fragment began at.
        const m = /(\d{10,})\.ts/.exec(f.relurl || f.url || '');
        const name = m ? Number(m[1]) : NaN;
        if (!Number.isFinite(name)) return null;
        return (Date.now() - (name + (nginx.v.currentTime - f.start) * 1000)) / 1000;
      },
    };
    const samples = { cascade: [], nginx: [] };
    const warmup = 10;
    for (let i = 0; i < secs + warmup; i++) {
      await new Promise(r => setTimeout(r, 1000));
      if (i < warmup) continue;
      for (const k of ['cascade', 'nginx']) {
        const l = latency[k]();
        if (l != null && Number.isFinite(l)) samples[k].push(l);
      }
    }
    const stat = a => {
      const s = [...a].sort((x, y) => x - y);
      return { n: s.length, median: s[Math.floor(s.length / 2)], p90: s[Math.floor(s.length * 0.9)] };
    };
    return {
      cascade: { ...stat(samples.cascade), errors: cascade.errors, stalls: cascade.v.webkitDecodedFrameCount },
      nginx: { ...stat(samples.nginx), errors: nginx.errors },
    };
  }, { cascadeUrl, nginxUrl, secs });
  for (const k of ['cascade', 'nginx']) {
    const r = result[k];
    console.log(`${k.padEnd(8)} median ${r.median?.toFixed(2)} s, p90 ${r.p90?.toFixed(2)} s over ${r.n} samples${r.errors.length ? ', fatal errors: ' + r.errors.join(',') : ''}`);
  }
  if (result.cascade.median && result.nginx.median) {
    console.log(`ratio    nginx / cascade = ${(result.nginx.median / result.cascade.median).toFixed(2)}x`);
  }
} finally {
  await browser.close();
}
