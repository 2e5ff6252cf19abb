// What the browser tests share: launching Debian's Chromium, signing up
// through the page and picking a profile.
import { randomBytes } from 'node:crypto';
import { chromium } from 'playwright-core';

// Headless Chromium with autoplay; `extra` picks the transport (QUIC flags,
// or --disable-quic by default).
export function launch(extra = ['--disable-quic']) {
  return chromium.launch({
    executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
    args: [
      '--no-sandbox', '--disable-gpu', '--disable-background-networking', ...extra,
      '--no-first-run', '--disable-component-update', '--disable-sync',
      '--autoplay-policy=no-user-gesture-required',
    ],
  });
}

// Signs up through the page's form with a new random account.
export async function signUp(page, name) {
  const email = `${name.toLowerCase()}-${randomBytes(6).toString('hex')}@example.test`;
  await page.fill('#signup-email', email, { timeout: 30000 });
  await page.fill('#signup-password', 'correct horse 42');
  await page.fill('#signup-name', name);
  await page.click('#signup button[type=submit]');
  await page.waitForSelector('#logout:visible, #status.error:visible', { timeout: 30000 });
  if (!(await page.isVisible('#logout'))) {
    throw new Error(`sign-up as ${email} failed: ${await page.textContent('#status')}`);
  }
}

// Picks the first profile if the page asks who is watching.
export async function pickProfile(page, item) {
  await page.waitForSelector(`button.profile:visible, ${item}:visible`, { timeout: 30000 });
  if (await page.isVisible('button.profile')) await page.click('button.profile');
}
