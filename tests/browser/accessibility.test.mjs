// Every page, checked for accessibility in real Chromium with axe-core (npm): the login page, an
// invitation's enrollment page, the account, the admin panel and the circle page with a message,
// each at a desktop's and a phone's width, in light and dark mode, holds no serious or critical
// violation of the WCAG 2.1 A and AA rules axe checks (contrast, names, labels, structure).
//
// Run with `node --test tests/browser/` (or `tests/run`).

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs/promises';
import { createRequire } from 'node:module';
import { Harness, becomeDevice, openAdmin } from './support.mjs';

// Put into each page through the DevTools protocol: the pages' CSP allows no inline script.
const AXE = await fs.readFile(createRequire(import.meta.url).resolve('axe-core/axe.min.js'), 'utf8');
const SIZES = [{ width: 1280, height: 800 }, { width: 360, height: 740 }];
const SCHEMES = ['light', 'dark'];

const run = new Harness();

before(() => run.start());
after(() => run.stop());

// The serious and critical violations on `page` in every size and colour scheme, one line each.
async function violations(page) {
  const found = [];
  for (const size of SIZES) {
    for (const colorScheme of SCHEMES) {
      await page.setViewportSize(size);
      await page.emulateMedia({ colorScheme });
      if (!(await page.evaluate(() => 'axe' in window))) await page.evaluate(AXE);
      const lines = await page.evaluate(async () => {
        const { violations: all } = await window.axe.run(document, {
          runOnly: { type: 'tag', values: ['wcag2a', 'wcag2aa', 'wcag21a', 'wcag21aa'] },
        });
        return all
          .filter((v) => v.impact === 'serious' || v.impact === 'critical')
          .map((v) => `${v.id} (${v.impact}): ${v.help}; ${v.nodes.slice(0, 4)
            .map((n) => `${n.target.join(' ')}${n.any[0]?.message ? ` [${n.any[0].message}]` : ''}`).join(' | ')}`);
      });
      for (const line of lines) found.push(`${size.width} px, ${colorScheme}: ${line}`);
    }
  }
  return found;
}

async function assertAccessible(page, what) {
  const found = await violations(page);
  assert.deepEqual(found, [], `${what}:\n${found.join('\n')}`);
}

test('every page holds no serious accessibility violation, at both widths, light and dark', { timeout: 180_000 }, async () => {
  const visitor = await run.person('visitor');
  await visitor.page.goto('/');
  await visitor.page.locator('#login').waitFor();
  await assertAccessible(visitor.page, 'the login page');

  const admin = await run.person('admin');
  await run.enroll(admin, run.bootstrapLink, run.label('admin'));
  await assertAccessible(admin.page, 'the account page');

  const link = await run.issueInvitation(admin.page);
  await assertAccessible(admin.page, 'the admin panel with an invitation');

  await visitor.page.goto(link);
  await visitor.page.locator('#label').waitFor();
  await assertAccessible(visitor.page, 'an invitation\'s enrollment page');

  await becomeDevice(admin);
  await admin.page.locator('body[data-device="joined"]').waitFor();
  await admin.page.locator('#message').fill('An accessible message with a link: https://example.org/agenda');
  await admin.page.locator('#message').press('Enter');
  await admin.page.locator('#messages li.outgoing').waitFor();
  await assertAccessible(admin.page, 'the circle page with a message');

  await openAdmin(admin.page);
  await assertAccessible(admin.page, 'the admin panel');
  await visitor.context.close();
  await admin.context.close();
});
