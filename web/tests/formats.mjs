// Plays one title in headless Chromium three ways: hls.js on the MPEG-TS
// variant, hls.js on the fMP4 variant, dash.js on the MPD. In each it
// switches the audio language to Hindi and turns English subtitles on, and
// fails unless the media keeps playing with no player error and subtitle
// cues arrive. The players run in the edge's own page (same origin), on
// their own <video> element.
//
//   node web/tests/formats.mjs http://127.0.0.1:8080 ASSET_ID '__token__=…'
import { launch } from './page.mjs';

const [base, asset, query] = process.argv.slice(2);
if (!base || !asset || !query) {
  console.error('usage: formats.mjs EDGE_URL ASSET_ID TOKEN_QUERY');
  process.exit(2);
}
const url = p => `${base}/vod/${asset}/${p}${p.includes('?') ? '&' : '?'}${query}`;

const browser = await launch(['--disable-quic', '--autoplay-policy=no-user-gesture-required']);
let failed = false;
try {
  const page = await browser.newPage();
  await page.goto(base + '/', { waitUntil: 'load' });
  const runs = [
    ['hls.js TS', 'hls', url('master.m3u8?format=ts')],
    ['hls.js fMP4', 'hls', url('master.m3u8')],
    ['dash.js', 'dash', url('manifest.mpd')],
  ];
  for (const [name, kind, src] of runs) {
    const r = await page.evaluate(async ([kind, src]) => {
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
      const cues = () => [...v.textTracks]
        .filter(t => t.mode === 'showing')
        .reduce((n, t) => n + (t.cues ? t.cues.length : 0), 0);
      try {
        if (kind === 'hls') {
          player = new Hls({ enableWorker: true });
          player.on(Hls.Events.ERROR, (_, d) => { if (d.fatal) err = `${d.type}/${d.details}`; });
          player.loadSource(src);
          player.attachMedia(v);
        } else {
          player = dashjs.MediaPlayer().create();
          player.on(dashjs.MediaPlayer.events.ERROR, e => { err = JSON.stringify(e.error || e).slice(0, 200); });
          player.initialize(v, src, true);
        }
        v.play().catch(() => {});
        await until('start', () => v.currentTime >= 1.5, 30000);
        let langs;
        if (kind === 'hls') {
          langs = player.audioTracks.map(t => t.lang);
          const hi = player.audioTracks.findIndex(t => t.lang === 'hi');
          if (hi < 0) throw new Error(`no Hindi audio in ${langs}`);
          const switched = new Promise(r => player.once(Hls.Events.AUDIO_TRACK_SWITCHED, r));
          player.audioTrack = hi;
          await Promise.race([switched, sleep(15000)]);
          if (player.audioTrack !== hi) throw new Error('the audio track did not switch');
          const en = player.subtitleTracks.findIndex(t => t.lang === 'en');
          if (en < 0) throw new Error('no English subtitles');
          player.subtitleDisplay = true;
          player.subtitleTrack = en;
        } else {
          const audio = player.getTracksFor('audio');
          langs = audio.map(t => t.lang);
          const hi = audio.find(t => t.lang === 'hi');
          if (!hi) throw new Error(`no Hindi audio in ${langs}`);
          player.setCurrentTrack(hi);
          await until('audio switch', () => (player.getCurrentTrackFor('audio') || {}).lang === 'hi', 15000);
          const text = player.getTracksFor('text');
          const en = text.findIndex(t => t.lang === 'en');
          if (en < 0) throw new Error('no English subtitles');
          player.enableText(true);
          player.setTextTrack(en);
        }
        const t1 = v.currentTime;
        await until('play after the switch', () => v.currentTime >= t1 + 1.5, 30000);
        await until('subtitle cues', () => cues() > 0, 20000);
        return { ok: true, t: v.currentTime, langs, cues: cues() };
      } catch (e) {
        return { ok: false, err: String(e.message || e), t: v.currentTime };
      } finally {
        if (kind === 'hls') player && player.destroy(); else player && player.reset();
        v.remove();
      }
    }, [kind, src]);
    if (r.ok) {
      console.log(`${name}: played to ${r.t.toFixed(2)} s, audio ${r.langs.join('/')}, switched to hi, ${r.cues} subtitle cues showing`);
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
