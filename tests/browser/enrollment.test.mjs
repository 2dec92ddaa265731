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
import { spawn, spawnSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import fs from 'node:fs/promises';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';

const HERE = path.dirname(fileURLToPath(import.meta.url));
const REPO = path.resolve(HERE, '../..');
const SCREENSHOTS = path.join(HERE, 'screenshots');
const CHROMIUM = process.env.CHROMIUM ?? '/usr/bin/chromium';
const WAIT = 20_000; // every single wait is bounded
const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/;
const TOKEN_IN_LINK = /\/join\/([A-Za-z0-9_-]{43})(?![A-Za-z0-9_-])/;

// State shared by the sequential steps below.
const run = {
  server: null, // the spawned ChildProcess
  stdout: '',
  stderr: '',
  port: 0,
  base: '', // http://localhost:PORT
  dataDir: '',
  browser: null,
  bootstrapLink: '',
  tokens: [], // every invitation token seen in clear
  labels: [], // every label typed
  admin: null, // { context, page, cdp, authenticatorId, member }
  member: null,
  invitationLink: '',
};

function label(who) {
  const value = `${who}-label-${randomBytes(6).toString('hex')}`;
  run.labels.push(value);
  return value;
}

function tokenOf(link) {
  const match = TOKEN_IN_LINK.exec(link);
  assert.ok(match, `not an invitation link: ${link}`);
  run.tokens.push(match[1]);
  return match[1];
}

function serverBinary() {
  if (process.env.TESSERA_SERVER_BIN) return process.env.TESSERA_SERVER_BIN;
  const target = process.env.CARGO_TARGET_DIR ?? path.join(os.homedir(), '.cache/tessera/target');
  const built = spawnSync('cargo', ['build', '--bin', 'tessera-server'], {
    cwd: REPO,
    env: { ...process.env, CARGO_TARGET_DIR: target },
    stdio: ['ignore', 'inherit', 'inherit'],
  });
  assert.equal(built.status, 0, 'cargo build --bin tessera-server failed');
  return path.join(target, 'debug', 'tessera-server');
}

async function freePort() {
  const probe = net.createServer();
  await new Promise((resolve, reject) => {
    probe.once('error', reject);
    probe.listen(0, '127.0.0.1', resolve);
  });
  const { port } = probe.address();
  await new Promise((resolve) => probe.close(resolve));
  return port;
}

// Starts the server and resolves with the bootstrap link it prints on stdout.
function startServer(binary) {
  const server = spawn(
    binary,
    [
      '--listen', `127.0.0.1:${run.port}`,
      '--origin', run.base,
      '--data-dir', run.dataDir,
      '--ceremony-ttl-secs', '60',
    ],
    { cwd: run.dataDir, stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, NO_COLOR: '1' } },
  );
  run.server = server;
  server.stdout.setEncoding('utf8');
  server.stderr.setEncoding('utf8');
  server.stderr.on('data', (chunk) => { run.stderr += chunk; });
  return new Promise((resolve, reject) => {
    const timer = setTimeout(
      () => reject(new Error(`no /join/ link within ${WAIT} ms\nstdout:\n${run.stdout}\nstderr:\n${run.stderr}`)),
      WAIT,
    );
    server.stdout.on('data', (chunk) => {
      run.stdout += chunk;
      const line = run.stdout.split('\n').find((l) => l.includes('/join/'));
      if (line) {
        clearTimeout(timer);
        resolve(line.trim());
      }
    });
    server.once('error', (error) => { clearTimeout(timer); reject(error); });
    server.once('exit', (code, signal) => {
      clearTimeout(timer);
      reject(new Error(`server exited (${code ?? signal})\nstdout:\n${run.stdout}\nstderr:\n${run.stderr}`));
    });
  });
}

// A browser context with its own page and its own virtual hardware key (CTAP2, USB, resident keys,
// user verification), added before any ceremony.
async function person(name) {
  const context = await run.browser.newContext({ baseURL: run.base });
  context.setDefaultTimeout(WAIT);
  context.setDefaultNavigationTimeout(WAIT);
  const page = await context.newPage();
  page.on('dialog', (dialog) => dialog.accept());
  page.on('pageerror', (error) => console.error(`[${name}] page error: ${error.message}`));
  const cdp = await context.newCDPSession(page);
  await cdp.send('WebAuthn.enable', { enableUI: false });
  const authenticatorId = await addAuthenticator(cdp);
  return { name, context, page, cdp, authenticatorId, member: null };
}

async function addAuthenticator(cdp) {
  const { authenticatorId } = await cdp.send('WebAuthn.addVirtualAuthenticator', {
    options: {
      protocol: 'ctap2',
      transport: 'usb',
      hasResidentKey: true,
      hasUserVerification: true,
      isUserVerified: true,
      automaticPresenceSimulation: true,
    },
  });
  return authenticatorId;
}

async function shot(page, name) {
  await page.screenshot({ path: path.join(SCREENSHOTS, `${name}.png`), fullPage: true });
}

async function status(page) {
  return (await page.locator('#status').textContent())?.trim() ?? '';
}

// Waits for the account page to show its member and keys.
async function accountShown(page) {
  await page.waitForURL(`${run.base}/account`);
  await page.locator('#member-id').filter({ hasText: UUID }).waitFor();
  await page.locator('#keys tbody tr').first().waitFor();
  return {
    member: (await page.locator('#member-id').textContent()).trim(),
    role: (await page.locator('#member-role').textContent()).trim(),
    keys: await page.locator('#keys tbody tr').count(),
  };
}

async function enroll(who, link, typed) {
  const response = await who.page.goto(link);
  assert.equal(response.status(), 200, 'an unused invitation link answers 200');
  await who.page.locator('#label').fill(typed);
  await shot(who.page, `join-${who.name}`);
  await who.page.locator('#enroll-button').click();
  try {
    return await accountShown(who.page);
  } catch (error) {
    throw new Error(`${who.name} did not reach /account (status line: "${await status(who.page)}")`, { cause: error });
  }
}

// Opens /admin and waits until both tables are drawn (the member table is never empty for an admin).
async function openAdmin(page) {
  await page.goto('/admin');
  await page.locator('#members tbody tr').first().waitFor();
}

before(async () => {
  const binary = serverBinary();
  run.port = await freePort();
  run.base = `http://localhost:${run.port}`;
  run.dataDir = await fs.mkdtemp(path.join(os.tmpdir(), 'tessera-browser-data-'));
  await fs.mkdir(SCREENSHOTS, { recursive: true });
  const line = await startServer(binary);
  run.bootstrapLink = line.slice(line.indexOf('http'));
  assert.ok(run.bootstrapLink.startsWith(`${run.base}/join/`), `bootstrap link on ${run.base}: ${line}`);
  tokenOf(run.bootstrapLink);
  // launch() gives the browser a fresh temporary profile of its own (and deletes it on close):
  // Playwright refuses an explicit --user-data-dir here.
  run.browser = await chromium.launch({
    executablePath: CHROMIUM,
    headless: true,
    timeout: WAIT,
    args: [
      '--headless',
      '--no-sandbox',
      '--disable-gpu',
      '--disable-quic',
      '--no-first-run',
      '--disable-background-networking',
      '--disable-component-update',
      '--disable-sync',
    ],
  });
});

after(async () => {
  await run.browser?.close().catch(() => {});
  if (run.server && run.server.exitCode === null && run.server.signalCode === null) {
    const exited = new Promise((resolve) => run.server.once('exit', resolve));
    process.kill(run.server.pid, 'SIGTERM');
    const timer = setTimeout(() => {
      if (run.server.exitCode === null && run.server.signalCode === null) process.kill(run.server.pid, 'SIGKILL');
    }, 5_000);
    await exited;
    clearTimeout(timer);
  }
  if (run.dataDir) await fs.rm(run.dataDir, { recursive: true, force: true });
});

test('the login page renders', async () => {
  const visitor = await person('visitor');
  const response = await visitor.page.goto('/');
  assert.equal(response.status(), 200);
  await visitor.page.locator('#login').waitFor();
  await shot(visitor.page, 'login');
  assert.equal(await visitor.page.locator('#logout').isVisible(), false, 'a logged-out visitor sees no "Log out" button');
  await visitor.context.close();
});

test('a. the first admin enrolls with the bootstrap link', async () => {
  run.admin = await person('admin');
  const shown = await enroll(run.admin, run.bootstrapLink, label('Ada-Lovelace'));
  assert.match(shown.member, UUID);
  assert.equal(shown.role, 'admin');
  assert.equal(shown.keys, 1);
  run.admin.member = shown.member;
  assert.ok(await run.admin.page.locator('#admin-link').isVisible(), 'an admin sees the Admin link');
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
  tokenOf(run.invitationLink);
  const qr = await page.locator('#invitation-qr').getAttribute('src');
  assert.ok(qr?.startsWith('data:image/svg+xml'), `QR code source: ${qr?.slice(0, 40)}`);
  assert.ok(await page.locator('#invitation-qr').evaluate((img) => img.complete && img.naturalWidth > 0), 'the QR code image loads');
  await page.locator('#pending tbody tr').first().waitFor();
  assert.equal(await page.locator('#pending tbody tr').count(), 1);
  const pendingText = await page.locator('#pending').textContent();
  assert.ok(!pendingText.includes(run.tokens.at(-1)), 'the pending list never shows the token');
  await shot(page, 'admin-invitation');
});

test('c. a newcomer enrolls with the invitation in another context', async () => {
  run.member = await person('member');
  const shown = await enroll(run.member, run.invitationLink, label('Grace-Hopper'));
  assert.match(shown.member, UUID);
  assert.notEqual(shown.member, run.admin.member);
  assert.equal(shown.role, 'member');
  assert.equal(shown.keys, 1);
  run.member.member = shown.member;
  assert.equal(await run.member.page.locator('#admin-link').isVisible(), false, 'a member sees no Admin link');
  await shot(run.member.page, 'account-member');

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
    let shown;
    try {
      shown = await accountShown(who.page);
    } catch (error) {
      throw new Error(`${who.name} did not log in (status line: "${await status(who.page)}")`, { cause: error });
    }
    assert.equal(shown.member, who.member, `${who.name} logs in as the same member`);
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
  await page.locator('#engine-state').filter({ hasText: /ready/ }).waitFor({ timeout: WAIT });
  assert.match(await page.locator('#engine-state').textContent(), /Engine \d+\.\d+\.\d+ ready/);
  const key = (await page.locator('#device-key').textContent()).trim();
  assert.match(key, /^[0-9a-f]{4}( [0-9a-f]{4}){7}$/, 'a device key made in the page');
  const readyMs = Number(await page.locator('body').getAttribute('data-engine-ready-ms'));
  assert.ok(readyMs > 0);
  t.diagnostic(`engine ready ${readyMs} ms after navigation; wasm ${served.length} bytes`);
  // The hardware key (the context's virtual one) certifies the page's device key, and the
  // engine verifies the certificate against the circle directory as every peer will.
  await page.locator('#certify').click();
  await page.locator('#certified').filter({ hasText: /certified/ }).waitFor({ timeout: WAIT });
  assert.match(
    await page.locator('#certified').textContent(),
    /certified by your hardware key [0-9a-f]{4}( [0-9a-f]{4}){7}\./,
    `status line: "${await status(page)}"`,
  );
  await shot(page, 'circle-engine');
});

test('e. a used invitation link is refused in a third context', async () => {
  const stranger = await person('stranger');
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

test('f. the admin revokes the member, whose next request fails', async () => {
  const { page } = run.admin;
  await openAdmin(page);
  const row = page.locator(`#members tbody tr[data-member="${run.member.member}"]`);
  await row.getByRole('button', { name: 'Revoke' }).click();
  await page.locator('#members tbody tr').nth(1).waitFor({ state: 'detached' });
  assert.equal(await page.locator('#members tbody tr').count(), 1, 'only the admin remains');
  assert.equal(await status(page), 'Member revoked.');

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

test('g. the admin adds a spare key, then revokes it', async () => {
  const { page, cdp } = run.admin;
  await page.goto('/account');
  await accountShown(page);
  // The first virtual key already holds this member's credential, which the server excludes, so the
  // new credential goes to a second virtual key: unplug the first (remembering its credential),
  // plug in the spare, enroll it, then plug the first back in.
  const first = run.admin.authenticatorId;
  const { credentials } = await cdp.send('WebAuthn.getCredentials', { authenticatorId: first });
  await cdp.send('WebAuthn.removeVirtualAuthenticator', { authenticatorId: first });
  const spare = await addAuthenticator(cdp);
  await page.locator('#key-label').fill(label('Ada-spare'));
  await page.locator('#add-key-button').click();
  await page.locator('#status', { hasText: 'Key added.' }).waitFor();
  assert.equal(await page.locator('#keys tbody tr').count(), 2);
  assert.equal(await page.locator('#key-label').inputValue(), '', 'the label does not linger in the form');
  const onSpare = await cdp.send('WebAuthn.getCredentials', { authenticatorId: spare });
  assert.equal(onSpare.credentials.length, 1);
  assert.equal(onSpare.credentials[0].userName, run.labels.at(-1), 'the spare key shows its own label');
  await shot(page, 'account-two-keys');

  // The spare key logs in on its own.
  await run.admin.context.clearCookies();
  await page.goto('/');
  await page.locator('#login').click();
  assert.equal((await accountShown(page)).member, run.admin.member);

  // Plug the first key back in, unplug the spare, and revoke the spare on the page.
  await cdp.send('WebAuthn.removeVirtualAuthenticator', { authenticatorId: spare });
  run.admin.authenticatorId = await addAuthenticator(cdp);
  for (const credential of credentials) {
    await cdp.send('WebAuthn.addCredential', { authenticatorId: run.admin.authenticatorId, credential });
  }
  const spareId = base64url(onSpare.credentials[0].credentialId);
  const listed = await page.locator('#keys tbody tr').evaluateAll((trs) => trs.map((tr) => tr.dataset.key));
  assert.ok(listed.includes(spareId), `the spare key ${spareId} is listed among ${listed}`);
  await page.locator(`#keys tbody tr[data-key="${spareId}"]`).getByRole('button', { name: 'Revoke' }).click();
  await page.locator('#status', { hasText: 'Key revoked.' }).waitFor();
  assert.equal(await page.locator('#keys tbody tr').count(), 1);

  // The last key cannot be revoked.
  await page.locator('#keys tbody tr').getByRole('button', { name: 'Revoke' }).click();
  await page.locator('#status.error').waitFor();
  assert.match(await status(page), /last key/);
  assert.equal(await page.locator('#keys tbody tr').count(), 1);

  // And the first key still logs in.
  await run.admin.context.clearCookies();
  await page.goto('/');
  await page.locator('#login').click();
  assert.equal((await accountShown(page)).member, run.admin.member);
});

// CDP gives credential ids in standard base64; the server's ids are base64url without padding.
function base64url(standard) {
  return standard.replace(/\+/g, '-').replace(/\//g, '_').replace(/=+$/, '');
}

test('h. no label, token or IP address in the database files or the logs', async () => {
  // The files are read as they are, while the server runs (database, WAL and shared memory).
  const files = [];
  const walk = async (dir) => {
    for (const entry of await fs.readdir(dir, { withFileTypes: true })) {
      const full = path.join(dir, entry.name);
      if (entry.isDirectory()) await walk(full);
      else files.push(full);
    }
  };
  await walk(run.dataDir);
  assert.ok(files.some((f) => f.endsWith('.db')), `a database file in ${files}`);
  const secrets = [...run.labels, ...run.tokens, '127.0.0.1'];
  assert.equal(run.labels.length, 3);
  assert.equal(run.tokens.length, 2);
  for (const file of files) {
    const bytes = await fs.readFile(file);
    for (const secret of secrets) {
      assert.equal(bytes.includes(Buffer.from(secret, 'utf8')), false, `${path.basename(file)} contains "${secret}"`);
    }
  }
  assert.ok(run.stderr.length > 0, 'the server logged something');
  for (const secret of secrets) {
    assert.equal(run.stderr.includes(secret), false, `the server log contains "${secret}"`);
  }
});
