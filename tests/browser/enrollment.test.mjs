// The whole enrollment story in real Chromium, each browser context holding its own virtual
// hardware key (the DevTools WebAuthn domain), against the real `tessera-server` binary:
// bootstrap admin enrolls, issues an invitation, a newcomer enrolls with it, both log in with one
// button, the circle page runs the engine compiled to WebAssembly, the used link is refused, the
// admin revokes the member, the admin adds a spare key, and finally no label, token or IP address
// is left in the database files or the logs.
//
// Run with `node --test tests/browser/` (or `tests/run`). Environment:
//   TESSERA_SERVER_BIN  the server binary to test (else `cargo build --bin tessera-server` is run)
//   CHROMIUM            the browser (default /usr/bin/chromium, Debian's package)

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs/promises';
import path from 'node:path';
import { Harness, REPO, WAIT, UUID, addAuthenticator, openAdmin, shot, status } from './support.mjs';

// The run's server, browser and secrets, and the people of the story (set by the steps below).
const run = new Harness();
run.admin = null; // { context, page, cdp, authenticatorId, member }
run.member = null;
run.invitationLink = '';

// CDP gives credential ids in standard base64; the server's ids are base64url without padding.
function base64url(standard) {
  return standard.replace(/\+/g, '-').replace(/\//g, '_').replace(/=+$/, '');
}

before(() => run.start());
after(() => run.stop());

test('the login page renders', async () => {
  const visitor = await run.person('visitor');
  const response = await visitor.page.goto('/');
  assert.equal(response.status(), 200);
  await visitor.page.locator('#login').waitFor();
  await shot(visitor.page, 'login');
  assert.equal(await visitor.page.locator('#logout').isVisible(), false, 'a logged-out visitor sees no "Log out" button');
  await visitor.context.close();
});

test('a key with no passkey here is told so, and a wait for a key that never comes can be cancelled', async () => {
  const stranger = await run.person('stranger');
  await stranger.page.goto('/');
  await stranger.page.locator('#login').click();
  await stranger.page.locator('#status.error', { hasText: 'holds no passkey for this site' }).waitFor();
  // No key at all: the page waits for one, says so, and Cancel ends the wait at once.
  await stranger.cdp.send('WebAuthn.removeVirtualAuthenticator', { authenticatorId: stranger.authenticatorId });
  await stranger.page.locator('#login').click();
  await stranger.page.locator('#status', { hasText: 'Waiting for your key' }).waitFor();
  await stranger.page.locator('#key-cancel').click();
  await stranger.page.locator('#status.error', { hasText: 'Cancelled: your key was not used.' }).waitFor({ timeout: 5_000 });
  await stranger.context.close();
});

test('a. the first admin enrolls with the bootstrap link', async () => {
  run.admin = await run.person('admin');
  const keyLabel = run.label('Ada-Lovelace'); // the first label: the key shows it (below)
  run.admin.name = run.label('Ada');
  const shown = await run.enroll(run.admin, run.bootstrapLink, keyLabel, run.admin.name);
  assert.match(shown.member, UUID);
  assert.equal(shown.role, 'admin');
  assert.equal(shown.keys, 1);
  run.admin.member = shown.member;
  assert.ok(await run.admin.page.locator('#admin-link').isVisible(), 'an admin sees the Admin link');
  // The key's label, which the server never keeps, is shown beside the key by the browser that
  // enrolled it.
  assert.match(await run.admin.page.locator('#keys tbody tr').first().textContent(), new RegExp(`^${run.labels[0]} · `));
  await shot(run.admin.page, 'account-admin');
  const { credentials } = await run.admin.cdp.send('WebAuthn.getCredentials', { authenticatorId: run.admin.authenticatorId });
  assert.equal(credentials.length, 1);
  assert.equal(credentials[0].isResidentCredential, true, 'the key holds a discoverable credential');
  assert.equal(credentials[0].userName, run.labels[0], 'the key shows the label typed');
  assert.equal(Buffer.from(credentials[0].userHandle, 'base64').toString('hex'), shown.member.replaceAll('-', ''),
    'the user handle is the member id');
});

test('b. the admin issues a member invitation on the admin page', async () => {
  const { page } = run.admin;
  await page.locator('#admin-link').click();
  await page.waitForURL(`${run.base}/admin`);
  await page.locator('#members tbody tr').first().waitFor();
  assert.equal(await page.locator('#pending tbody tr').count(), 0, 'the bootstrap invitation is used up');
  await page.locator('#invite-role').selectOption('member');
  await page.locator('#invite-button').click();
  await page.locator('#new-invitation').waitFor({ state: 'visible' });
  run.invitationLink = await page.locator('#invitation-url').inputValue();
  assert.ok(run.invitationLink.startsWith(`${run.base}/join/`), run.invitationLink);
  assert.match(run.invitationLink, /#[A-Za-z0-9_-]{43}\.[A-Za-z0-9_-]{43}$/, 'the link carries its secret and root after #');
  run.tokenOf(run.invitationLink);
  const qr = await page.locator('#invitation-qr').getAttribute('src');
  assert.ok(qr?.startsWith('data:image/svg+xml'), `QR code source: ${qr?.slice(0, 40)}`);
  assert.ok(await page.locator('#invitation-qr').evaluate((img) => img.complete && img.naturalWidth > 0), 'the QR code image loads');
  await page.locator('#pending tbody tr').first().waitFor();
  assert.equal(await page.locator('#pending tbody tr').count(), 1);
  const pendingText = await page.locator('#pending').textContent();
  assert.ok(!pendingText.includes(run.tokens.at(-1)), 'the pending list never shows the token');
  await shot(page, 'admin-invitation');
});

test('b2. a link without its fragment, or with an altered one, is refused before the key is made', async () => {
  const careless = await run.person('careless');
  const [whole, fragment] = run.invitationLink.split('#');
  const altered = `${whole}#${fragment.startsWith('A') ? 'B' : 'A'}${fragment.slice(1)}`;
  for (const [link, said] of [
    [whole, 'This link is incomplete: ask the admin for the whole link.'],
    [altered, 'The server\'s invitation is not the link\'s: ask the admin for a new link.'],
  ]) {
    await careless.page.goto('about:blank'); // a link that differs in its fragment only loads anew
    await careless.page.goto(link);
    await careless.page.locator('#label').fill('careless');
    await careless.page.locator('#enroll-button').click();
    await careless.page.locator('#status.error').waitFor();
    assert.equal(await status(careless.page), said);
    const { credentials } = await careless.cdp.send('WebAuthn.getCredentials', { authenticatorId: careless.authenticatorId });
    assert.equal(credentials.length, 0, 'the key made no credential');
  }
  await careless.context.close();
  // The invitation is still pending for the whole link.
  const { page } = run.admin;
  await page.reload();
  await page.locator('#pending tbody tr').first().waitFor();
  assert.equal(await page.locator('#pending tbody tr').count(), 1);
});

test('c. a newcomer enrolls with the invitation in another context', async () => {
  run.member = await run.person('member');
  const shown = await run.enroll(run.member, run.invitationLink, run.label('Grace-Hopper'));
  assert.match(shown.member, UUID);
  assert.notEqual(shown.member, run.admin.member);
  assert.equal(shown.role, 'member');
  assert.equal(shown.keys, 1);
  run.member.member = shown.member;
  assert.equal(await run.member.page.locator('#admin-link').isVisible(), false, 'a member sees no Admin link');
  await shot(run.member.page, 'account-member');
  // A member who opens the admin page anyway is told it is for admins, and shown no admin form.
  await run.member.page.goto('/admin');
  await run.member.page.locator('#status', { hasText: 'Only admins of the circle can see this page.' }).waitFor();
  assert.equal(await run.member.page.locator('#invite, #pending, #members').filter({ visible: true }).count(), 0,
    'no admin form or list for a member');
  await run.member.page.goto('/account');

  const { page } = run.admin;
  await page.reload();
  await page.locator('#members tbody tr').nth(1).waitFor();
  assert.equal(await page.locator('#pending tbody tr').count(), 0, 'the used invitation is no longer pending');
  assert.equal(await page.locator('#members tbody tr').count(), 2);
  assert.equal(await page.locator(`#members tbody tr[data-member="${run.member.member}"]`).count(), 1);
});

test('d. both log in again with one button, no name typed', async () => {
  for (const who of [run.admin, run.member]) {
    await who.context.clearCookies();
    const me = await who.context.request.get('/api/v1/me');
    assert.equal(me.status(), 401, `${who.name} is logged out once the cookie is gone`);
    await who.page.goto('/');
    await who.page.locator('#login').click();
    let member;
    try {
      member = await run.circleShown(who.page);
    } catch (error) {
      throw new Error(`${who.name} did not log in (status line: "${await status(who.page)}")`, { cause: error });
    }
    assert.equal(member, who.member, `${who.name} logs in as the same member, on the circle page`);
  }
});

test('d2. the circle page runs the engine (WebAssembly) in the page', async (t) => {
  const { page } = run.admin;
  const wasm = await page.request.get('/static/engine/tessera_web_bg.wasm');
  assert.equal(wasm.status(), 200);
  assert.equal(wasm.headers()['content-type'], 'application/wasm');
  const served = await wasm.body();
  const built = await fs.readFile(path.join(REPO, 'web/pkg/tessera_web_bg.wasm'));
  assert.ok(served.equals(built), 'the server serves the engine web/build made');
  await page.goto('/circle');
  // The protocol's details sit under "Security details", closed until asked for.
  assert.equal(await page.locator('#engine-state').isVisible(), false);
  await page.locator('#security summary').click();
  await page.locator('#engine-state').filter({ hasText: /ready/ }).waitFor({ timeout: WAIT });
  assert.match(await page.locator('#engine-state').textContent(), /Engine \d+\.\d+\.\d+ ready/);
  const readyMs = Number(await page.locator('body').getAttribute('data-engine-ready-ms'));
  assert.ok(readyMs > 0);
  t.diagnostic(`engine ready ${readyMs} ms after navigation; wasm ${served.length} bytes`);
  // A browser that is not a device yet offers to become one.
  await page.locator('body[data-device="new"]').waitFor();
  assert.ok(await page.locator('#certify').isEnabled());
  // The hardware key (the context's virtual one) certifies a fresh device key made in the page,
  // the engine verifies the certificate against the circle directory as every peer will, and
  // the circle's first device creates the circle's group.
  await page.locator('#certify').click();
  await page.locator('body[data-device="joined"]').waitFor({ timeout: WAIT });
  assert.match(
    await page.locator('#certified').textContent(),
    /certified by your hardware key [0-9a-f]{4}( [0-9a-f]{4}){7}\./,
    `status line: "${await status(page)}"`,
  );
  // The name typed at enrollment went to the circle with the new device.
  assert.equal(await page.locator('#display-name').inputValue(), run.admin.name);
  await page.locator('#members li > strong', { hasText: `${run.admin.name} (you)` }).waitFor();
  const key = (await page.locator('#device-key').textContent()).trim();
  assert.match(key, /^[0-9a-f]{4}( [0-9a-f]{4}){15}$/, 'the 32-byte device key made in the page');
  assert.match(await page.locator('#device-state').textContent(), /In the circle's encrypted group, (online|offline)\./);
  assert.match(await page.locator('#epoch').textContent(), /The group's MLS epoch: \d+\./);
  assert.equal(await page.locator(`#members li[data-member="${run.admin.member}"]`).count(), 1, 'the admin is listed');
  await shot(page, 'circle-engine');

  // A saved device that cannot be read is not used: the page says why and offers to start over,
  // which deletes it and makes this browser a new device. First a damaged state, then one in the
  // format an earlier version saved (CBOR, which the browser's engine no longer reads).
  const overwriteState = (bytes) => page.evaluate(async ({ member, bytes }) => {
    const db = await new Promise((resolve, reject) => {
      const open = indexedDB.open(`tessera-device-${member}`);
      open.onsuccess = () => resolve(open.result);
      open.onerror = () => reject(open.error);
    });
    await new Promise((resolve, reject) => {
      const tx = db.transaction('engine', 'readwrite');
      tx.objectStore('engine').put(new Uint8Array(bytes), 'state');
      tx.oncomplete = resolve;
      tx.onerror = () => reject(tx.error);
    });
    db.close();
  }, { member: run.admin.member, bytes });
  await overwriteState([0, 1, 2, 3]);
  await page.reload();
  await page.locator('body[data-device="broken"]').waitFor();
  assert.match(await page.locator('#broken-reason').textContent(), /saved state cannot be read: saved state is unreadable/);
  assert.ok(await page.locator('#chat').isHidden(), 'no chat on a device that cannot be read');
  await overwriteState([0xa1, 0x61, 0x61, 0x01]);
  await page.reload();
  await page.locator('body[data-device="broken"]').waitFor();
  assert.match(await page.locator('#broken-reason').textContent(), /saved by an earlier version of Tessera/);
  await shot(page, 'circle-broken');
  await page.locator('#start-over').click();
  await page.locator('body[data-device="new"]').waitFor();
});

test('e. a used invitation link is refused in a third context', async () => {
  const stranger = await run.person('stranger');
  const response = await stranger.page.goto(run.invitationLink);
  assert.equal(response.status(), 410);
  assert.match(await stranger.page.locator('main').textContent(), /already used/);
  assert.equal(await stranger.page.locator('#enroll').count(), 0, 'no enrollment form');
  assert.equal(await stranger.page.locator('#nav').isVisible(), false, 'a stranger sees no account navigation');
  await shot(stranger.page, 'join-used');
  const bootstrap = await stranger.page.goto(run.bootstrapLink);
  assert.equal(bootstrap.status(), 410, 'the bootstrap link is used up too');
  await stranger.context.close();
});

test('e2. the admin makes the member an admin, with a promotion the admin\'s key signs', async () => {
  const { page } = run.admin;
  await openAdmin(page);
  const row = page.locator(`#members tbody tr[data-member="${run.member.member}"]`);
  await row.getByRole('button', { name: 'Make admin' }).click();
  await page.locator('#status', { hasText: `member ${run.member.member.slice(0, 8)} is now an admin.` }).waitFor();
  await page.locator(`#members tbody tr[data-member="${run.member.member}"] td:nth-child(2)`, { hasText: 'admin' }).waitFor();
  assert.equal(await page.locator(`#members tbody tr[data-member="${run.member.member}"]`).getByRole('button', { name: 'Make admin' }).count(), 0,
    'an admin is not offered a promotion');
  // The directory carries the promotion the page signed among the member's proofs.
  const directory = await page.evaluate(async () => (await fetch('/api/v1/members')).json());
  const promoted = directory.find((m) => m.id === run.member.member);
  assert.equal(promoted.role, 'admin');
  const statements = promoted.proofs.map((p) => JSON.parse(Buffer.from(p, 'base64url').toString()));
  const promotion = statements.find((p) => p.statement?.decision === 'promote');
  assert.equal(promotion?.statement.issuer, run.admin.member);
});

test('f. the admin revokes the member, whose next request fails', async () => {
  const { page } = run.admin;
  await openAdmin(page);
  const row = page.locator(`#members tbody tr[data-member="${run.member.member}"]`);
  await row.getByRole('button', { name: 'Revoke' }).click();
  await page.locator('#members tbody tr').nth(1).waitFor({ state: 'detached' });
  assert.equal(await page.locator('#members tbody tr').count(), 1, 'only the admin remains');
  // This browser is no device of the admin's yet: members are named by their ids, with a hint why.
  assert.equal(await status(page), `member ${run.member.member.slice(0, 8)} is revoked.`);
  assert.ok(await page.locator('#names-hint').isVisible(), 'the page says where names come from');
  // The directory keeps the member, with their key, and the revocation the admin's key signed
  // (which the page made; the devices remove the member on it, and take what the member's key
  // signed before only where the revocation keeps it). The admin page does not list them.
  const directory = await page.evaluate(async () => (await fetch('/api/v1/members')).json());
  const revoked = directory.find((m) => m.id === run.member.member);
  assert.ok(revoked?.revocation, 'the revoked member carries the signed revocation');
  assert.equal(revoked.passkeys.length, 1);
  const signed = JSON.parse(Buffer.from(revoked.revocation, 'base64url').toString());
  assert.equal(signed.statement.member, run.member.member);
  assert.equal(signed.statement.issuer, run.admin.member);
  assert.equal(typeof signed.statement.keeps, 'string', 'the revocation says what it keeps');

  await run.member.page.reload();
  await run.member.page.waitForURL(`${run.base}/`);
  const me = await run.member.context.request.get('/api/v1/me');
  assert.equal(me.status(), 401);

  // Their key no longer logs them in either.
  await run.member.page.locator('#login').click();
  await run.member.page.locator('#status.error').waitFor();
  assert.match(await status(run.member.page), /revoked/);
  assert.equal(run.member.page.url(), `${run.base}/`);
});

// The admin logs in again on `page` with the key plugged in, and opens the account page.
async function logInAgainOnAccount(page) {
  await run.admin.context.clearCookies();
  await page.goto('/');
  await page.locator('#login').click();
  assert.equal(await run.circleShown(page), run.admin.member);
  await page.goto('/account');
  await run.accountShown(page);
}

test('g. the admin adds a spare key, then revokes it', async () => {
  const { page, cdp } = run.admin;
  await page.goto('/account');
  await run.accountShown(page);
  // The first virtual key already holds this member's credential, which the server excludes, so the
  // new credential goes to a second virtual key: unplug the first (remembering its credential),
  // plug in the spare, enroll it, then plug the first back in.
  const first = run.admin.authenticatorId;
  const { credentials } = await cdp.send('WebAuthn.getCredentials', { authenticatorId: first });
  await cdp.send('WebAuthn.removeVirtualAuthenticator', { authenticatorId: first });
  const spare = await addAuthenticator(cdp);
  await page.locator('#key-label').fill(run.label('Ada-spare'));
  await page.locator('#add-key-button').click();
  // The new key made, the page asks for one of the member's keys to endorse it: swap the first
  // key back in, then press Endorse.
  await page.locator('#endorse-button').waitFor();
  const onSpare = await cdp.send('WebAuthn.getCredentials', { authenticatorId: spare });
  assert.equal(onSpare.credentials.length, 1);
  assert.equal(onSpare.credentials[0].userName, run.labels.at(-1), 'the spare key shows its own label');
  await cdp.send('WebAuthn.removeVirtualAuthenticator', { authenticatorId: spare });
  run.admin.authenticatorId = await addAuthenticator(cdp);
  for (const credential of credentials) {
    await cdp.send('WebAuthn.addCredential', { authenticatorId: run.admin.authenticatorId, credential });
  }
  await page.locator('#endorse-button').click();
  await page.locator('#status', { hasText: 'Key added.' }).waitFor();
  assert.equal(await page.locator('#endorse').isVisible(), false, 'the endorse step is gone once done');
  assert.equal(await page.locator('#keys tbody tr').count(), 2);
  assert.equal(await page.locator('#key-label').inputValue(), '', 'the label does not linger in the form');
  await shot(page, 'account-two-keys');
  // The directory carries the endorsement, signed by the first key, next to the spare key.
  const directory = await page.evaluate(async () => (await fetch('/api/v1/members')).json());
  const mine = directory.find((m) => m.id === run.admin.member);
  assert.equal(mine.passkeys.length, 2);
  assert.equal(mine.proofs.length, 1, 'the founder\'s first key needs no proof; the spare has its endorsement');

  // The spare key logs in on its own.
  await cdp.send('WebAuthn.removeVirtualAuthenticator', { authenticatorId: run.admin.authenticatorId });
  const spareAgain = await addAuthenticator(cdp);
  await cdp.send('WebAuthn.addCredential', { authenticatorId: spareAgain, credential: onSpare.credentials[0] });
  await logInAgainOnAccount(page);

  // Plug the first key back in, unplug the spare, and revoke the spare on the page.
  await cdp.send('WebAuthn.removeVirtualAuthenticator', { authenticatorId: spareAgain });
  run.admin.authenticatorId = await addAuthenticator(cdp);
  for (const credential of credentials) {
    await cdp.send('WebAuthn.addCredential', { authenticatorId: run.admin.authenticatorId, credential });
  }
  const spareId = base64url(onSpare.credentials[0].credentialId);
  const listed = await page.locator('#keys tbody tr').evaluateAll((trs) => trs.map((tr) => tr.dataset.key));
  assert.ok(listed.includes(spareId), `the spare key ${spareId} is listed among ${listed}`);
  await page.locator(`#keys tbody tr[data-key="${spareId}"]`).getByRole('button', { name: 'Revoke' }).click();
  await page.locator('#status', { hasText: 'Key revoked' }).waitFor();
  // This browser had logged in with the spare: revoking it ended that session. The first key
  // logs in again.
  assert.match(await status(page), /log in again with another of your keys/);
  assert.equal((await page.evaluate(async () => (await fetch('/api/v1/me')).status)), 401);
  await logInAgainOnAccount(page);
  assert.equal(await page.locator('#keys tbody tr').count(), 1);
  // The directory carries the revocation the first key signed, next to the endorsement: devices
  // remove the spare's devices on that signature.
  const after = (await page.evaluate(async () => (await fetch('/api/v1/members')).json()))
    .find((m) => m.id === run.admin.member);
  assert.equal(after.passkeys.length, 1);
  assert.equal(after.proofs.length, 2, 'the endorsement and the revocation');
  const revocation = JSON.parse(Buffer.from(after.proofs[1], 'base64url').toString());
  assert.equal(revocation.statement.decision, 'revoke_key');
  assert.equal(revocation.statement.key.credential_id, spareId);
  assert.equal(revocation.signature.credential_id, base64url(credentials[0].credentialId));

  // The last key cannot be revoked.
  await page.locator('#keys tbody tr').getByRole('button', { name: 'Revoke' }).click();
  await page.locator('#status.error').waitFor();
  assert.match(await status(page), /last key/);
  assert.equal(await page.locator('#keys tbody tr').count(), 1);

  // And the first key still logs in.
  await run.admin.context.clearCookies();
  await page.goto('/');
  await page.locator('#login').click();
  assert.equal(await run.circleShown(page), run.admin.member);
});


test('h. no label, name, token or IP address in the database files or the logs', async () => {
  // The files are read as they are, while the server runs (database, WAL and shared memory).
  assert.equal(run.labels.length, 4, 'three key labels and the admin\'s name in the circle');
  assert.equal(run.tokens.length, 2);
  assert.equal(run.linkSecrets.length, 1, 'the bootstrap link has no fragment');
  await run.assertNowhere([...run.labels, ...run.tokens, ...run.linkSecrets, '127.0.0.1']);
});
