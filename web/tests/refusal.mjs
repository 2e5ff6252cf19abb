// The page says why a sign-up link or a title does not work: opens a bad
// link and checks the message, then signs up, clicks the title, and
// prints the status line the page shows for the playback API's refusal.
//
//   node web/tests/refusal.mjs http://127.0.0.1:8080 ASSET_ID
//
// Prints `refused: <the status text>`; exits 1 if the title played instead
// or the page showed no error.
import { launch, pickProfile, signUp } from './page.mjs';

const [base, asset] = process.argv.slice(2);
if (!base || !asset) {
  console.error('usage: refusal.mjs EDGE_URL ASSET_ID');
  process.exit(2);
}
const browser = await launch();
let failed = false;
try {
  const page = await browser.newPage();
  await page.goto(base + '/#verify=not-a-code', { waitUntil: 'load' });
  await page.waitForSelector('#status.error:visible', { timeout: 30000 });
  const bad = await page.textContent('#status');
  if (!/invalid or has expired/.test(bad) || (await page.isVisible('#logout'))) {
    throw new Error(`a bad sign-up link showed: ${bad}`);
  }
  const item = `li.title[data-id="${asset}"][data-status="ready"]`;
  await signUp(page, 'Refused');
  await pickProfile(page, item);
  await page.waitForSelector(item, { timeout: 30000 });
  await page.click(item);
  await page.waitForFunction(() => window.cascade.state.error, null, { timeout: 30000, polling: 100 });
  const shown = await page.textContent('#status');
  const isError = await page.isVisible('#status.error');
  console.log('refused: ' + JSON.stringify({ code: await page.evaluate(() => window.cascade.state.error), shown }));
  if (!isError) {
    console.error('the status line is not marked as an error');
    failed = true;
  }
} catch (e) {
  console.error(String(e));
  failed = true;
} finally {
  await browser.close();
}
process.exit(failed ? 1 : 0);
