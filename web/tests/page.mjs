// What the browser tests share: signing up through the page and picking a
// profile.
import { randomBytes } from 'node:crypto';

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
