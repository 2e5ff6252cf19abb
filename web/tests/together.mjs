// Watching together in headless Chromium: plays a live channel on the
// edge's web page, then checks the real-time panel: a news flash shows as a
// banner and inside the stream (hls.js sees its EXT-X-DATERANGE, dash.js
// raises its MPD event), a comment posted on the page shows, reactions come
// back as a swarm, and a dropped connection comes back with what it missed.
// The flashes are published through the origin's admin API.
//
//   ADMIN_TOKEN=… ORIGIN=http://origin node web/tests/together.mjs EDGE_URL CHANNEL
import { launch, pickProfile, signUp } from './page.mjs';

const [base, channel] = process.argv.slice(2);
const origin = process.env.ORIGIN;
const admin = process.env.ADMIN_TOKEN;
if (!base || !channel || !origin || !admin) {
  console.error('usage: ADMIN_TOKEN=… ORIGIN=… together.mjs EDGE_URL CHANNEL');
  process.exit(2);
}

async function flash(text) {
  const r = await fetch(origin + '/api/v1/admin/flashes', {
    method: 'POST',
    headers: { 'content-type': 'application/json', authorization: 'Bearer ' + admin },
    body: JSON.stringify({ text, priority: 'high', channel, expires_in_secs: 300 }),
  });
  if (r.status !== 201) throw new Error(`flash not published: ${r.status} ${await r.text()}`);
  return r.json();
}

const browser = await launch();
let failed = false;
const fail = msg => { console.error(msg); failed = true; };
const until = (page, fn, arg, timeout = 30000) =>
  page.waitForFunction(fn, arg, { timeout, polling: 100 }).then(() => true, () => false);
try {
  const page = await browser.newPage();
  const pageErrors = [];
  page.on('pageerror', e => pageErrors.push(String(e)));
  await page.goto(base + '/', { waitUntil: 'load' });
  const card = `li.title.live[data-live="${channel}"][data-status="live"]`;
  await signUp(page, 'Together');
  await pickProfile(page, card);
  await page.waitForSelector(card, { timeout: 30000 });
  await page.check('input[name=proto][value=hls]');
  await page.click(card);
  if (!await until(page, () => window.cascade.video.currentTime > 0 && window.cascade.state.rt.connected || window.cascade.state.error, null, 45000)) {
    throw new Error('not playing with a real-time connection: ' + JSON.stringify(await page.evaluate(() => window.cascade.state)));
  }
  const err = await page.evaluate(() => window.cascade.state.error);
  if (err) throw new Error('playback failed: ' + err);

  // A flash: the banner, and the date range hls.js reads in the playlist.
  const f1 = await flash('Rain stops play at the stadium');
  if (await until(page, t => !document.querySelector('#flash').hidden && document.querySelector('#flash-text').textContent === t, f1.text)) {
    console.log('flash banner: shown');
  } else fail('the flash banner did not show');
  if (await until(page, id => window.cascade.state.rt.hls_flashes.includes('flash-' + id), f1.id)) {
    console.log('flash in HLS: EXT-X-DATERANGE read by hls.js');
  } else fail('hls.js saw no flash date range: ' + JSON.stringify(await page.evaluate(() => window.cascade.state.rt)));

  // A comment through the page's form.
  await page.fill('#comment-text', 'What a catch!');
  await page.click('#comment-form button[type=submit]');
  if (await until(page, () => [...document.querySelectorAll('#comment-list li')].some(li => li.textContent.includes('What a catch!')))) {
    console.log('comment: shown');
  } else fail('the comment did not show');

  // Reactions: clicks go up in batches, the swarm comes back aggregated.
  for (let i = 0; i < 5; i++) await page.click('#reactions button[data-react=clap]');
  if (await until(page, () => window.cascade.state.rt.swarm_total >= 5)) {
    const s = await page.evaluate(() => window.cascade.state.rt);
    console.log(`reactions: swarm of ${s.swarm_total} in ${s.swarms} message(s)`);
  } else fail('no swarm came back: ' + JSON.stringify(await page.evaluate(() => window.cascade.state.rt)));

  // The connection drops; a comment is posted meanwhile (not through this
  // page); it comes back with it, once.
  const token = await page.evaluate(() => JSON.parse(localStorage.getItem('cascade.session')).access_token);
  await page.evaluate(() => window.cascade.dropRealtime());
  const r = await fetch(`${origin}/api/v1/live/${channel}/comments`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', authorization: 'Bearer ' + token },
    body: JSON.stringify({ text: 'Posted while you were away' }),
  });
  if (r.status !== 201) throw new Error('comment not posted: ' + r.status);
  if (await until(page, () => window.cascade.state.rt.reconnects > 0 && window.cascade.state.rt.connected
      && [...document.querySelectorAll('#comment-list li')].filter(li => li.textContent.includes('while you were away')).length === 1)) {
    await new Promise(res => setTimeout(res, 1000));
    const n = await page.evaluate(() => [...document.querySelectorAll('#comment-list li')].filter(li => li.textContent.includes('while you were away')).length);
    if (n === 1) console.log('reconnect: resumed, the missed comment shown once');
    else fail(`the missed comment shows ${n} times`);
  } else fail('no resume after the drop: ' + JSON.stringify(await page.evaluate(() => window.cascade.state.rt)));

  // DASH: the flash arrives as an MPD event dash.js raises.
  let mpds = 0;
  page.on('request', q => { if (q.url().includes('manifest.mpd')) mpds++; });
  await page.check('input[name=proto][value=dash]');
  await page.click(card);
  if (!await until(page, () => window.cascade.state.proto === 'dash' && window.cascade.video.currentTime > 0 || window.cascade.state.error, null, 45000)) {
    throw new Error('DASH did not play');
  }
  const from = await page.evaluate(() => window.cascade.video.currentTime);
  if (!await until(page, f => window.cascade.video.currentTime >= f + 3 || window.cascade.state.error, from, 45000)) {
    throw new Error('DASH stalled: ' + JSON.stringify(await page.evaluate(() => ({ t: window.cascade.video.currentTime, s: window.cascade.state, rs: window.cascade.video.readyState }))));
  }
  const f2 = await flash('Second innings under way');
  if (await until(page, id => window.cascade.state.rt.dash_flashes.includes(id), f2.id)) {
    console.log('flash in DASH: event raised by dash.js');
  } else fail(`dash.js raised no flash event (${mpds} MPD requests): ` + JSON.stringify(await page.evaluate(() => ({ rt: window.cascade.state.rt, t: window.cascade.video.currentTime, paused: window.cascade.video.paused, rs: window.cascade.video.readyState, lat: window.cascade.state.latency }))));
  if (pageErrors.length) fail('page errors: ' + pageErrors.join('; '));
} catch (e) {
  fail(String(e && e.stack || e));
} finally {
  await browser.close();
}
process.exit(failed ? 1 : 0);
