// What the browser tests share: launching Debian's Chromium, signing up
// through the page (and the link the origin mails to its outbox, the
// directory CASCADE_MAIL_OUTBOX) and picking a profile.
import { randomBytes } from 'node:crypto';
import { readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
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

// Signs up through the page's form with a new random account, then opens
// the page at the link mailed for it, as its owner would.
export async function signUp(page, name) {
  const email = `${name.toLowerCase()}-${randomBytes(6).toString('hex')}@example.test`;
  await page.fill('#signup-email', email, { timeout: 30000 });
  await page.fill('#signup-password', 'correct horse 42');
  await page.fill('#signup-name', name);
  await page.click('#signup button[type=submit]');
  await page.waitForFunction(() => /check your email/i.test(document.querySelector('#status').textContent)
    || document.querySelector('#status.error'), null, { timeout: 30000, polling: 100 });
  if (await page.isVisible('#status.error')) {
    throw new Error(`sign-up as ${email} failed: ${await page.textContent('#status')}`);
  }
  const url = new URL(page.url());
  url.hash = 'verify=' + signupCode(email);
  await page.goto(url.toString());
  await page.waitForSelector('#logout:visible, #status.error:visible', { timeout: 30000 });
  if (!(await page.isVisible('#logout'))) {
    throw new Error(`the sign-up link for ${email} failed: ${await page.textContent('#status')}`);
  }
  if (new URL(page.url()).hash) throw new Error(`the page kept the code in its address: ${page.url()}`);
}

// The code of the newest sign-up link mailed to `email` in the outbox.
export function signupCode(email) {
  const dir = process.env.CASCADE_MAIL_OUTBOX;
  if (!dir) throw new Error('CASCADE_MAIL_OUTBOX (the origin\'s mail outbox) is not set');
  // Names start with the time they were written: newest first.
  const files = readdirSync(dir).filter(f => f.endsWith('.eml')).sort().reverse();
  for (const f of files) {
    const mail = readFileSync(join(dir, f), 'utf8');
    const split = mail.indexOf('\r\n\r\n');
    const head = '\r\n' + mail.slice(0, split) + '\r\n';
    if (split < 0 || !head.includes(`\r\nTo: ${email}\r\n`)) continue;
    const m = /#verify=([A-Za-z0-9_-]+)/.exec(mail.slice(split));
    if (m) return m[1];
  }
  throw new Error(`no sign-up link to ${email} in ${dir}`);
}

// Picks the first profile if the page asks who is watching.
export async function pickProfile(page, item) {
  await page.waitForSelector(`button.profile:visible, ${item}:visible`, { timeout: 30000 });
  if (await page.isVisible('button.profile')) await page.click('button.profile');
}
