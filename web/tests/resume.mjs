// Resume across a reload, in headless Chromium: signs up through the page,
// plays a title past 6 s, pauses (the page sends a heartbeat), reloads the
// page (the session must survive through the stored refresh token, and the
// chosen profile be remembered), then plays the title again from the
// "continue watching" rail and checks that it starts where it was paused.
//
//   node web/tests/resume.mjs http://127.0.0.1:8080 ASSET_ID
//
// Prints `resume: {"before": P, "resumed_from": R, "at": T}`; exits 1 unless
// R is within 3 s of P and T >= P - 3, or on any page error.
import { launch, pickProfile, signUp } from './page.mjs';

const [base, asset] = process.argv.slice(2);
if (!base || !asset) {
  console.error('usage: resume.mjs EDGE_URL ASSET_ID');
  process.exit(2);
}

const browser = await launch();
let failed = false;
const pageErrors = [];
try {
  const page = await browser.newPage();
  page.on('pageerror', e => pageErrors.push(String(e)));
  await page.goto(base + '/', { waitUntil: 'load' });
  const item = `li.title[data-id="${asset}"][data-status="ready"]`;
  await signUp(page, 'Resume');
  await pickProfile(page, item);
  await page.waitForSelector(item, { timeout: 30000 });

  // Play past 6 s.
  await page.check('input[name=proto][value=hls]');
  await page.click(item);
  await page.waitForFunction(
    a => (window.cascade.state.playing === a && window.cascade.video.currentTime >= 6) ||
      window.cascade.state.error,
    asset, { timeout: 45000, polling: 100 });
  const err = await page.evaluate(() => window.cascade.state.error);
  if (err) throw new Error(`first playback failed: ${err}`);

  // Pause: the page reports the position at once.
  const reported = page.waitForResponse(
    r => r.request().method() === 'POST' && r.status() === 204 &&
      /\/api\/v1\/streams\/[^/]+\/(heartbeat|stop)$/.test(new URL(r.url()).pathname),
    { timeout: 15000 });
  await page.evaluate(() => window.cascade.video.pause());
  await reported;
  const before = await page.evaluate(() => window.cascade.video.currentTime);

  // Reload: no log-in, no profile picker, and a continue-watching entry.
  await page.reload({ waitUntil: 'load' });
  await page.waitForSelector(`${item}:visible, #login:visible, button.profile:visible`, { timeout: 30000 })
    .catch(async e => {
      throw new Error(`${e.message}\nafter the reload the page says: ${await page.textContent('#status')}`);
    });
  if (await page.isVisible('#login')) {
    throw new Error(`the session did not survive the reload: ${await page.textContent('#status')}`);
  }
  if (await page.isVisible('button.profile')) throw new Error('the chosen profile was forgotten on reload');
  const cont = `[data-rail="continue"] li.title[data-id="${asset}"]`;
  // The page looks at the catalog again every 10 s, should the position
  // reach it a little after the reload.
  await page.waitForSelector(cont, { timeout: 30000 });
  await page.check('input[name=proto][value=hls]');
  await page.click(cont);
  await page.waitForFunction(
    a => (window.cascade.state.playing === a && window.cascade.video.currentTime > 0) ||
      window.cascade.state.error,
    asset, { timeout: 45000, polling: 50 });
  const r = await page.evaluate(() => ({
    resumed_from: window.cascade.state.resumed_from,
    at: window.cascade.video.currentTime,
    err: window.cascade.state.error,
  }));
  if (r.err) throw new Error(`playback after the reload failed: ${r.err}`);
  console.log('resume: ' + JSON.stringify({ before, resumed_from: r.resumed_from, at: r.at }));
  if (typeof r.resumed_from !== 'number' || Math.abs(r.resumed_from - before) > 3) {
    console.error(`the API resumed from ${r.resumed_from} s, but playback was paused at ${before} s`);
    failed = true;
  }
  if (!(r.at >= before - 3)) {
    console.error(`playback started at ${r.at} s, but was paused at ${before} s`);
    failed = true;
  }
} catch (e) {
  console.error(String(e));
  failed = true;
} finally {
  await browser.close();
}
if (pageErrors.length) {
  console.error('page errors: ' + pageErrors.join('; '));
  failed = true;
}
process.exit(failed ? 1 : 0);
