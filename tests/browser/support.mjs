// What the browser tests share: the real `tessera-server` binary on a free port, Debian's
// Chromium driven by playwright-core, one browser context per person with its own virtual
// hardware key (the DevTools WebAuthn domain), and a network namespace of the test's own for
// the tests that open WebRTC links.

import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import fs from 'node:fs/promises';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { test } from 'node:test';
import { chromium } from 'playwright-core';

const HERE = path.dirname(fileURLToPath(import.meta.url));
export const REPO = path.resolve(HERE, '../..');
export const SCREENSHOTS = path.join(HERE, 'screenshots');
const CHROMIUM = process.env.CHROMIUM ?? '/usr/bin/chromium';
export const WAIT = 20_000; // every single wait is bounded
export const LINK_WAIT = 30_000; // joining and linking take a few engine rounds
export const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/;
const TOKEN_IN_LINK = /\/join\/([A-Za-z0-9_-]{43})(?![A-Za-z0-9_-])/;
const TARGET = process.env.CARGO_TARGET_DIR ?? path.join(os.homedir(), '.cache/tessera/target');

// The namespace's own address: Chromium gathers ICE candidates only on an interface with a route.
export const NAMESPACE_ADDRESS = '10.203.0.1';
const INSIDE = 'TESSERA_NETNS';

// A binary of the workspace (built by `cargo build` when the environment names none).
export function binary(name, variable) {
  if (process.env[variable]) return process.env[variable];
  const built = spawnSync('cargo', ['build', '--bin', name], {
    cwd: REPO,
    env: { ...process.env, CARGO_TARGET_DIR: TARGET },
    stdio: ['ignore', 'inherit', 'inherit'],
  });
  assert.equal(built.status, 0, `cargo build --bin ${name} failed`);
  return path.join(TARGET, 'debug', name);
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

function ip(args) {
  const done = spawnSync('ip', args, { stdio: ['ignore', 'ignore', 'pipe'], encoding: 'utf8' });
  assert.equal(done.status, 0, `ip ${args.join(' ')} failed (network namespaces need root and iproute2): ${done.stderr}`);
}

// Runs this test file again inside a fresh network namespace (`lo` and a veth pair with the
// default route, nothing beyond), deleted afterwards; true when this process is the one inside.
export function insideNamespace(file) {
  if (process.env[INSIDE]) return true;
  test(`${path.basename(file)} runs inside a network namespace of its own`, { timeout: 15 * 60_000 }, async () => {
    const name = `tessera-web-${process.pid}-${randomBytes(3).toString('hex')}`;
    ip(['netns', 'add', name]);
    try {
      ip(['-n', name, 'link', 'set', 'lo', 'up']);
      ip(['-n', name, 'link', 'add', 'v0', 'type', 'veth', 'peer', 'name', 'v1']);
      ip(['-n', name, 'addr', 'add', `${NAMESPACE_ADDRESS}/24`, 'dev', 'v0']);
      ip(['-n', name, 'link', 'set', 'v0', 'up']);
      ip(['-n', name, 'link', 'set', 'v1', 'up']);
      ip(['-n', name, 'route', 'add', 'default', 'dev', 'v0']);
      // A test runner of its own (node:test skips files run from within a test otherwise).
      const env = { ...process.env, [INSIDE]: name };
      delete env.NODE_TEST_CONTEXT;
      const child = spawn('ip', ['netns', 'exec', name, process.execPath, '--test', '--test-reporter=spec', file], {
        env,
        stdio: ['ignore', 'inherit', 'inherit'],
      });
      const code = await new Promise((resolve) => child.once('exit', (c, signal) => resolve(c ?? signal)));
      assert.equal(code, 0, 'the tests inside the namespace failed (their report is above)');
    } finally {
      ip(['netns', 'del', name]);
    }
  });
  return false;
}

// One run: the server, the browser, and what the privacy checks look for afterwards.
export class Harness {
  constructor() {
    this.server = null; // the spawned ChildProcess
    this.stdout = '';
    this.stderr = '';
    this.port = 0;
    this.base = ''; // http://localhost:PORT
    this.dataDir = '';
    this.browser = null;
    this.profile = '';
    this.bootstrapLink = '';
    this.tokens = []; // every invitation token seen in clear
    this.linkSecrets = []; // every invitation secret seen in a link's fragment
    this.labels = []; // every label typed
  }

  // Starts the server and Chromium. `webrtc`: Chromium offers its real host addresses (no mDNS
  // names), which needs Playwright's default arguments replaced.
  async start({ webrtc = false } = {}) {
    const serverBinary = binary('tessera-server', 'TESSERA_SERVER_BIN');
    this.port = await freePort();
    this.base = `http://localhost:${this.port}`;
    this.dataDir = await fs.mkdtemp(path.join(os.tmpdir(), 'tessera-browser-data-'));
    await fs.mkdir(SCREENSHOTS, { recursive: true });
    const line = await this.#startServer(serverBinary);
    this.bootstrapLink = line.slice(line.indexOf('http'));
    assert.ok(this.bootstrapLink.startsWith(`${this.base}/join/`), `bootstrap link on ${this.base}: ${line}`);
    this.tokenOf(this.bootstrapLink);
    const args = [
      '--headless',
      '--no-sandbox',
      '--disable-gpu',
      '--disable-quic',
      '--no-first-run',
      '--disable-background-networking',
      '--disable-component-update',
      '--disable-sync',
    ];
    if (webrtc) {
      // launch() gives the browser a fresh temporary profile unless its defaults are ignored;
      // then the test makes its own (and deletes it at the end).
      this.profile = await fs.mkdtemp(path.join(os.tmpdir(), 'tessera-chromium-'));
      args.push(
        '--remote-debugging-pipe',
        `--user-data-dir=${this.profile}`,
        '--no-startup-window',
        '--disable-features=WebRtcHideLocalIpsWithMdns',
      );
    }
    this.browser = await chromium.launch({
      executablePath: CHROMIUM,
      headless: true,
      timeout: WAIT,
      args,
      ignoreDefaultArgs: webrtc,
    });
  }

  async stop() {
    await this.browser?.close().catch(() => {});
    await this.stopServer();
    if (this.dataDir) await fs.rm(this.dataDir, { recursive: true, force: true });
    if (this.profile) await fs.rm(this.profile, { recursive: true, force: true });
  }

  // Starts the server and resolves with the first line of its standard output that `ready`
  // matches (the bootstrap link on a first start).
  #startServer(serverBinary, ready = /\/join\//) {
    this.serverBinary = serverBinary;
    const server = spawn(
      serverBinary,
      [
        '--listen', `127.0.0.1:${this.port}`,
        '--origin', this.base,
        '--data-dir', this.dataDir,
        '--ceremony-ttl-secs', '60',
      ],
      // Sessions that end are noticed on open sockets within 2 s, not 30.
      {
        cwd: this.dataDir,
        stdio: ['ignore', 'pipe', 'pipe'],
        env: { ...process.env, NO_COLOR: '1', TESSERA_WS_SESSION_RECHECK_SECS: '2' },
      },
    );
    this.server = server;
    let output = '';
    server.stdout.setEncoding('utf8');
    server.stderr.setEncoding('utf8');
    server.stderr.on('data', (chunk) => { this.stderr += chunk; });
    return new Promise((resolve, reject) => {
      const timer = setTimeout(
        () => reject(new Error(`the server printed no ${ready} within ${WAIT} ms\nstdout:\n${output}\nstderr:\n${this.stderr}`)),
        WAIT,
      );
      server.stdout.on('data', (chunk) => {
        output += chunk;
        this.stdout += chunk;
        const line = output.split('\n').find((l) => ready.test(l));
        if (line) {
          clearTimeout(timer);
          resolve(line.trim());
        }
      });
      server.once('error', (error) => { clearTimeout(timer); reject(error); });
      server.once('exit', (code, signal) => {
        clearTimeout(timer);
        reject(new Error(`server exited (${code ?? signal})\nstdout:\n${output}\nstderr:\n${this.stderr}`));
      });
    });
  }

  // Stops the server (SIGTERM, then SIGKILL after 5 s); the browsers and their data stay.
  async stopServer() {
    const server = this.server;
    if (!server || server.exitCode !== null || server.signalCode !== null) return;
    const exited = new Promise((resolve) => server.once('exit', resolve));
    process.kill(server.pid, 'SIGTERM');
    const timer = setTimeout(() => {
      if (server.exitCode === null && server.signalCode === null) process.kill(server.pid, 'SIGKILL');
    }, 5_000);
    await exited;
    clearTimeout(timer);
  }

  // Starts the server again on the same port and data.
  async restartServer() {
    await this.#startServer(this.serverBinary, /Tessera is serving/);
  }

  label(who) {
    const value = `${who}-label-${randomBytes(6).toString('hex')}`;
    this.labels.push(value);
    return value;
  }

  tokenOf(link) {
    const match = TOKEN_IN_LINK.exec(link);
    assert.ok(match, `not an invitation link: ${link}`);
    this.tokens.push(match[1]);
    const fragment = link.split('#')[1];
    if (fragment) this.linkSecrets.push(fragment.split('.')[0]);
    return match[1];
  }

  // A browser context with its own page and its own virtual hardware key (CTAP2, USB, resident
  // keys, user verification), added before any ceremony.
  async person(name) {
    const context = await this.browser.newContext({ baseURL: this.base });
    context.setDefaultTimeout(WAIT);
    context.setDefaultNavigationTimeout(WAIT);
    const page = await context.newPage();
    const who = { name, context, page, cdp: null, authenticatorId: null, member: null };
    await this.plugKey(who, []);
    return who;
  }

  // Gives `who.page` a virtual hardware key (they are per page) holding `credentials`.
  async plugKey(who, credentials) {
    watch(who.page, who.name);
    who.cdp = await who.context.newCDPSession(who.page);
    await who.cdp.send('WebAuthn.enable', { enableUI: false });
    who.authenticatorId = await addAuthenticator(who.cdp);
    for (const credential of credentials) {
      await who.cdp.send('WebAuthn.addCredential', { authenticatorId: who.authenticatorId, credential });
    }
  }

  // A copy of `who`'s virtual hardware key in another of their pages (keys are per page): the
  // admin panel signs invitations with it.
  async copyKeyTo(who, page) {
    const credentials = await this.unplugKey(who);
    const cdp = await who.context.newCDPSession(page);
    await cdp.send('WebAuthn.enable', { enableUI: false });
    const authenticatorId = await addAuthenticator(cdp);
    for (const credential of credentials) {
      await cdp.send('WebAuthn.addCredential', { authenticatorId, credential });
    }
  }

  // The credentials on `who`'s virtual hardware key, to plug it into another page.
  async unplugKey(who) {
    const { credentials } = await who.cdp.send('WebAuthn.getCredentials', { authenticatorId: who.authenticatorId });
    return credentials;
  }

  // Waits for the account page to show its member and keys.
  async accountShown(page) {
    await page.waitForURL(`${this.base}/account`);
    await page.locator('#member-id').filter({ hasText: UUID }).waitFor();
    await page.locator('#keys tbody tr').first().waitFor();
    return {
      member: (await page.locator('#member-id').textContent()).trim(),
      role: (await page.locator('#member-role').textContent()).trim(),
      keys: await page.locator('#keys tbody tr').count(),
    };
  }

  // Waits for the circle page a login lands on; the member the session is for.
  async circleShown(page) {
    await page.waitForURL(`${this.base}/circle`);
    await page.locator('body[data-device]').waitFor();
    // Asked by the page itself (Node's own requests to "localhost" stall inside a namespace).
    const me = await page.evaluate(async () => {
      const response = await fetch('/api/v1/me');
      return { status: response.status, body: await response.json() };
    });
    assert.equal(me.status, 200, 'logged in');
    return me.body.member;
  }

  // Enrolls `who`'s key with the invitation `link`, typing `typed` as the key's label and, when
  // given, `name` as their name in the circle (kept by the browser until it becomes a device).
  async enroll(who, link, typed, name = '') {
    const response = await who.page.goto(link);
    assert.equal(response.status(), 200, 'an unused invitation link answers 200');
    await who.page.locator('#label').fill(typed);
    if (name) await who.page.locator('#display-name').fill(name);
    await shot(who.page, `join-${who.name}`);
    await who.page.locator('#enroll-button').click();
    try {
      return await this.accountShown(who.page);
    } catch (error) {
      throw new Error(`${who.name} did not reach /account (status line: "${await status(who.page)}")`, { cause: error });
    }
  }

  // A new invitation made in the admin panel `adminPage`; its link.
  async issueInvitation(adminPage) {
    await openAdmin(adminPage);
    await adminPage.locator('#invite-button').click();
    await adminPage.locator('#new-invitation').waitFor();
    const link = await adminPage.locator('#invitation-url').inputValue();
    this.tokenOf(link);
    return link;
  }

  // Every file the server wrote, to be searched for what must not be there.
  async dataFiles() {
    const files = [];
    const walk = async (dir) => {
      for (const entry of await fs.readdir(dir, { withFileTypes: true })) {
        const full = path.join(dir, entry.name);
        if (entry.isDirectory()) await walk(full);
        else files.push(full);
      }
    };
    await walk(this.dataDir);
    return files;
  }

  // Asserts that no file of the server's and none of its log holds any of `secrets`.
  async assertNowhere(secrets) {
    const files = await this.dataFiles();
    assert.ok(files.some((f) => f.endsWith('.db')), `a database file in ${files}`);
    for (const file of files) {
      const bytes = await fs.readFile(file);
      for (const secret of secrets) {
        assert.equal(bytes.includes(Buffer.from(secret, 'utf8')), false, `${path.basename(file)} contains "${secret}"`);
      }
    }
    assert.ok(this.stderr.length > 0, 'the server logged something');
    for (const secret of secrets) {
      assert.equal(this.stderr.includes(secret), false, `the server log contains "${secret}"`);
    }
  }
}

// Page errors and console warnings go to the test's output, named.
export function watch(page, name) {
  page.on('dialog', (dialog) => dialog.accept());
  page.on('pageerror', (error) => console.error(`[${name}] page error: ${error.message}`));
  page.on('console', (message) => {
    // Refused requests are the tests' own doing; the page says what it makes of them.
    if (message.text().startsWith('Failed to load resource')) return;
    if (['error', 'warning'].includes(message.type())) console.error(`[${name}] ${message.type()}: ${message.text()}`);
  });
}

export async function addAuthenticator(cdp) {
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

export async function shot(page, name) {
  await page.screenshot({ path: path.join(SCREENSHOTS, `${name}.png`), fullPage: true });
}

export async function status(page) {
  return (await page.locator('#status').textContent())?.trim() ?? '';
}

// Opens /admin and waits until both tables are drawn (the member table is never empty for an admin).
export async function openAdmin(page) {
  await page.goto('/admin');
  await page.locator('#members tbody tr').first().waitFor();
}

// Makes `who`'s browser a device of theirs (the circle page, one tap of their key).
export async function becomeDevice(who) {
  await who.page.goto('/circle');
  await who.page.locator('body[data-device="new"]').waitFor();
  await who.page.locator('#certify').click();
  await who.page.locator('body[data-device="waiting"], body[data-device="joined"]').waitFor();
}

// Waits until this browser's device is in the group.
export async function joined(who) {
  await who.page.locator('body[data-device="joined"]').waitFor({ timeout: LINK_WAIT });
}

// Waits until `who`'s page shows its link to `device` up.
export async function linkedTo(who, device) {
  await who.page.locator(`#members li[data-device="${device}"][data-linked="true"]`).waitFor({ timeout: LINK_WAIT });
}

// The id of the device this page runs.
export async function deviceId(who) {
  return who.page.locator('body').getAttribute('data-device-id');
}
