// Plays a title on the edge's web page in headless Chromium, first with
// hls.js, then with dash.js, and fails unless each plays 3 s of media with
// no player error. Prints the protocols the media came over. It signs up
// through the page first (a new random account) and picks the first profile.
//
//   node web/tests/play.mjs http://127.0.0.1:8080 ASSET_ID [screenshot.png]
//
// Over HTTP/3: QUIC_ORIGIN=127.0.0.1:8443 SPKI=<base64 SHA-256 of the
// certificate's public key> node web/tests/play.mjs https://127.0.0.1:8443 ASSET_ID
// (Chromium is told to use QUIC for that origin from the first request and
// to accept that key.)
import { launch, pickProfile, signUp } from './page.mjs';

const [base, asset, screenshot] = process.argv.slice(2);
if (!base || !asset) {
  console.error('usage: play.mjs EDGE_URL ASSET_ID [SCREENSHOT]');
  process.exit(2);
}

const quic = process.env.QUIC_ORIGIN;
const transport = quic
  ? [`--origin-to-force-quic-on=${quic}`, `--ignore-certificate-errors-spki-list=${process.env.SPKI || ''}`]
  : ['--disable-quic'];
const browser = await launch(transport);
let failed = false;
try {
  const page = await browser.newPage();
  const pageErrors = [];
  page.on('pageerror', e => pageErrors.push(String(e)));
  await page.goto(base + '/', { waitUntil: 'load' });
  await page.evaluate(() => performance.setResourceTimingBufferSize(100000));
  const item = `li.title[data-id="${asset}"][data-status="ready"]`;
  await signUp(page, 'Play');
  await pickProfile(page, item);
  await page.waitForSelector(item, { timeout: 30000 });
  for (const proto of ['hls', 'dash']) {
    await page.check(`input[name=proto][value=${proto}]`);
    await page.click(item);
    // The second play resumes where the first stopped: count the 3 s from
    // where this one started (state.resumed_from, null until the API answers).
    await page.waitForFunction(
      p => window.cascade.state.proto === p &&
        (window.cascade.video.currentTime >= (window.cascade.state.resumed_from || 0) + 3 ||
          window.cascade.state.error),
      proto, { timeout: 45000, polling: 100 });
    const r = await page.evaluate(() => ({
      t: window.cascade.video.currentTime,
      from: window.cascade.state.resumed_from || 0,
      err: window.cascade.state.error,
    }));
    const played = r.t - r.from;
    if (r.err || played < 3) {
      console.error(`${proto}: failed at ${r.t} s (started at ${r.from} s): ${r.err}`);
      failed = true;
    } else {
      console.log(`${proto}: played ${played.toFixed(2)} s of media with no error`);
    }
  }
  // Which protocols the media came over, from the browser's own timing.
  const protocols = await page.evaluate(() => {
    const n = {};
    for (const e of performance.getEntriesByType('resource')) {
      if (!e.name.includes('/vod/')) continue;
      const p = e.nextHopProtocol || 'unknown';
      n[p] = (n[p] || 0) + 1;
    }
    return n;
  });
  console.log('protocols: ' + JSON.stringify(protocols));
  if (screenshot) await page.screenshot({ path: screenshot });
  if (pageErrors.length) {
    console.error('page errors: ' + pageErrors.join('; '));
    failed = true;
  }
} catch (e) {
  console.error(String(e));
  failed = true;
} finally {
  await browser.close();
}
process.exit(failed ? 1 : 0);
