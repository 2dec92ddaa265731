// Browsers as member devices, peer to peer, in Debian's Chromium inside a network namespace the
// test makes: an admin and a member in two browser contexts and a native `tessera` CLI device
// join the circle's MLS group and exchange messages over WebRTC data channels in every direction;
// a reload keeps the device and its history; a message sent while a browser was closed arrives
// when it reopens; a revoked member's page says so and receives nothing sent afterwards; a device
// enrolled with an invitation the operator wrote into the database is refused, with a warning on
// the page; and the server's files and logs hold no name, message, token or address.
//
// Run with `node --test tests/browser/` (or `tests/run`). Environment: TESSERA_SERVER_BIN and
// TESSERA_CLI_BIN name the binaries (else they are built), CHROMIUM the browser.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import { createHash, randomBytes, randomUUID } from 'node:crypto';
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import readline from 'node:readline';
import { fileURLToPath } from 'node:url';
import {
  Harness, LINK_WAIT, NAMESPACE_ADDRESS, becomeDevice, binary, deviceId, insideNamespace, joined, linkedTo, openAdmin, shot,
  status, watch,
} from './support.mjs';

const FILE = fileURLToPath(import.meta.url);

// The native device: `tessera chat --json` in a directory of its own, a software key.
class NativeDevice {
  constructor(root, name = 'native') {
    this.dir = path.join(root, name);
    this.key = path.join(root, `${name}.key`);
    this.bin = binary('tessera', 'TESSERA_CLI_BIN');
    this.lines = [];
    this.waiters = [];
    this.child = null;
    this.stderr = '';
  }

  #args(args) {
    return ['--data-dir', this.dir, '--key-file', this.key, '--bind', NAMESPACE_ADDRESS, ...args];
  }

  ok(args) {
    const done = spawnSync(this.bin, this.#args(args), { encoding: 'utf8', timeout: LINK_WAIT, env: { PATH: process.env.PATH, HOME: this.dir } });
    assert.equal(done.status, 0, `tessera ${args.join(' ')}: ${done.stdout}\n${done.stderr}`);
    return done.stdout;
  }

  chat() {
    this.child = spawn(this.bin, this.#args(['chat', '--json']), {
      stdio: ['pipe', 'pipe', 'pipe'],
      env: { PATH: process.env.PATH, HOME: this.dir },
    });
    this.child.stderr.setEncoding('utf8');
    this.child.stderr.on('data', (chunk) => { this.stderr += chunk; });
    readline.createInterface({ input: this.child.stdout }).on('line', (line) => {
      let event;
      try {
        event = JSON.parse(line);
      } catch {
        return;
      }
      this.lines.push(event);
      this.waiters = this.waiters.filter((w) => !(w.match(event) && (w.resolve(event), true)));
    });
  }

  // The first line (seen or to come) that matches; bounded.
  waitFor(what, match, timeout = LINK_WAIT) {
    const seen = this.lines.find(match);
    if (seen) return Promise.resolve(seen);
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`the native device saw no ${what} within ${timeout} ms\n${this.stderr}`)), timeout);
      this.waiters.push({ match, resolve: (event) => { clearTimeout(timer); resolve(event); } });
    });
  }

  say(text) {
    this.child.stdin.write(`${text}\n`);
  }

  async stop() {
    if (!this.child || this.child.exitCode !== null) return;
    const exited = new Promise((resolve) => this.child.once('exit', resolve));
    this.child.stdin.end();
    const timer = setTimeout(() => this.child.kill('SIGKILL'), 5_000);
    await exited;
    clearTimeout(timer);
  }
}

const run = new Harness();
const secrets = []; // names and messages that must not reach the server's files or logs
const deleted = []; // texts of messages deleted for everyone: no device shows them
let root = '';
let admin; // { context, page, cdp, member, adminPage }
let bob;
let native;

function secret(prefix) {
  const value = `${prefix}-${randomBytes(4).toString('hex')}`;
  secrets.push(value);
  return value;
}


async function setName(who, name) {
  await who.page.locator('#display-name').fill(name);
  await who.page.locator('#name-button').click();
}

async function send(who, text) {
  await who.page.locator('#message').fill(text);
  await who.page.locator('#message').press('Enter');
  await who.page.locator(`#messages li.outgoing:has-text("${text}")`).waitFor();
}

// Waits until `who`'s page shows an incoming message with `text`.
async function received(who, text, timeout = LINK_WAIT) {
  await who.page.locator(`#messages li.incoming:has-text("${text}")`).waitFor({ timeout });
}


if (insideNamespace(FILE)) {
  before(async () => {
    root = await fs.mkdtemp(path.join(os.tmpdir(), 'tessera-circle-'));
    await run.start({ webrtc: true });
  });

  after(async () => {
    await native?.stop();
    await run.stop();
    if (root) await fs.rm(root, { recursive: true, force: true });
  });

  test('a. the admin enrolls, makes this browser a device and starts the group', async (t) => {
    admin = await run.person('admin');
    admin.member = (await run.enroll(admin, run.bootstrapLink, run.label('admin'))).member;
    await becomeDevice(admin);
    await joined(admin);
    const readyMs = Number(await admin.page.locator('body').getAttribute('data-engine-ready-ms'));
    t.diagnostic(`engine ready ${readyMs} ms after navigation`);
    admin.name = secret('Ada');
    await setName(admin, admin.name);
    // The admin panel in a second tab: the circle tab keeps running the device.
    admin.adminPage = await admin.context.newPage();
    watch(admin.adminPage, 'admin-panel');
    await run.copyKeyTo(admin, admin.adminPage);
  });

  test('b. a member enrolls with an invitation and an online device adds their browser', async () => {
    const link = await run.issueInvitation(admin.adminPage);
    bob = await run.person('bob');
    bob.member = (await run.enroll(bob, link, run.label('bob'))).member;
    await becomeDevice(bob);
    await joined(bob);
    bob.name = secret('Bob');
    await setName(bob, bob.name);
    bob.device = await deviceId(bob);
    admin.device = await deviceId(admin);
    await linkedTo(admin, bob.device);
    await linkedTo(bob, admin.device);
  });

  test('c. a native CLI device joins with a third invitation', async () => {
    const link = await run.issueInvitation(admin.adminPage);
    native = new NativeDevice(root);
    native.ok(['soft-key', 'new', '--file', native.key]);
    native.name = secret('Cleo');
    native.ok(['join', link, '--name', native.name]);
    native.chat();
    await native.waitFor('join', (e) => e.event === 'joined');
    native.say('/status');
    native.device = (await native.waitFor('its status', (e) => e.event === 'status')).device;
    await linkedTo(admin, native.device);
    await linkedTo(bob, native.device);
  });

  test('d. all three exchange messages peer to peer, in every direction', async (t) => {
    const fromAdmin = secret('from-admin');
    const started = Date.now();
    await send(admin, fromAdmin);
    await received(bob, fromAdmin);
    await native.waitFor('the admin\'s message', (e) => e.event === 'message' && e.text === fromAdmin);
    t.diagnostic(`browser → browser and native: ${Date.now() - started} ms`);
    await admin.page.locator(`#messages li.outgoing[data-state="delivered"]:has-text("${fromAdmin}")`).waitFor({ timeout: LINK_WAIT });

    const fromBob = secret('from-bob');
    await send(bob, fromBob);
    await received(admin, fromBob);
    await native.waitFor('bob\'s message', (e) => e.event === 'message' && e.text === fromBob);

    const fromNative = secret('from-native');
    native.say(fromNative);
    await received(admin, fromNative);
    await received(bob, fromNative);

    // Names come from the group, not from the server.
    const names = await admin.page.locator('#members').textContent();
    for (const name of secrets.filter((s) => /^(Bob|Cleo)-/.test(s))) {
      assert.ok(names.includes(name), `the admin's page names ${name}: ${names}`);
    }
    await shot(admin.page, 'circle-admin');
    await shot(bob.page, 'circle-member');
    // Readable on a phone-sized screen: nothing wider than the viewport.
    const viewport = bob.page.viewportSize();
    await bob.page.setViewportSize({ width: 360, height: 740 });
    const overflow = await bob.page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
    assert.ok(overflow <= 0, `the page is ${overflow} px wider than a phone's screen`);
    await shot(bob.page, 'circle-phone');
    await bob.page.setViewportSize(viewport);
  });

  test('d3. the three devices show the same safety number, in words and as a QR code', async () => {
    const wordsOf = async (member) => (await member.page.locator('#safety-words').textContent()).trim();
    const nativeWords = async () => {
      const earlier = new Set(native.lines.filter((e) => e.event === 'status'));
      native.say('/status');
      return (await native.waitFor('its status', (e) => e.event === 'status' && !earlier.has(e))).safety;
    };
    // Each device computes it from the directory it last fetched: wait until all three agree.
    const deadline = Date.now() + LINK_WAIT;
    let seen = [];
    while (Date.now() < deadline) {
      seen = [await wordsOf(admin), await wordsOf(bob), await nativeWords()];
      if (seen[0] && seen.every((w) => w === seen[0])) break;
      await new Promise((resolve) => setTimeout(resolve, 300));
    }
    assert.ok(seen[0] && seen.every((w) => w === seen[0]), `the devices agree: ${JSON.stringify(seen)}`);
    assert.equal(seen[0].split(' ').length, 12, seen[0]);
    assert.ok(await admin.page.locator('#safety-qr').evaluate((img) => img.complete && img.naturalWidth > 0),
      'the QR code image loads');
    assert.match(await admin.page.locator('#root').textContent(), /^Circle root: /);
  });

  test('d5. replies, reactions, edits and deletions go between the browsers and the CLI', async (t) => {
    const question = secret('question');
    await send(admin, question);
    await received(bob, question);
    const asked = await native.waitFor('the question', (e) => e.event === 'message' && e.text === question);
    const item = (who, text) => who.page.locator('#messages li', { has: who.page.locator('.text', { hasText: text }) });

    // Bob answers it: the answer quotes the question at the admin's page and names it at the CLI.
    const answer = secret('answer');
    await item(bob, question).locator('button.action.reply').click();
    assert.match(await bob.page.locator('#composing-text').textContent(), /^Replying to /);
    await send(bob, answer);
    const answered = item(admin, answer);
    await answered.waitFor({ timeout: LINK_WAIT });
    assert.match(await answered.locator('blockquote.quote').textContent(), new RegExp(`↪ you: ${question}`));
    const reply = await native.waitFor('the answer', (e) => e.event === 'message' && e.text === answer);
    assert.equal(reply.reply_to?.id, asked.id, 'the CLI is told which message it answers');

    // The CLI reacts, then Bob: both pages count two, and Bob's own is shown pressed.
    native.say(`/react ${asked.id.slice(0, 8)} 👍`);
    await item(admin, question).locator('button.reaction[data-emoji="👍"]', { hasText: '👍 1' }).waitFor({ timeout: LINK_WAIT });
    await item(bob, question).locator('button.action.react').click();
    await item(bob, question).locator('button.pick', { hasText: '👍' }).click();
    await item(admin, question).locator('button.reaction[data-emoji="👍"]', { hasText: '👍 2' }).waitFor({ timeout: LINK_WAIT });
    assert.equal(await item(bob, question).locator('button.reaction[data-emoji="👍"]').getAttribute('aria-pressed'), 'true');
    await shot(bob.page, 'circle-reactions');

    // Only the author is offered to edit or delete; the admin edits, and every device has the new text.
    assert.equal(await item(bob, question).locator('button.action.edit, button.action.delete').count(), 0,
      'Bob is not offered to change the admin\'s message');
    const edited = secret('question-edited');
    await item(admin, question).locator('button.action.edit').click();
    assert.equal(await admin.page.locator('#message').inputValue(), question);
    await admin.page.locator('#message').fill(edited);
    await admin.page.locator('#message').press('Enter');
    const bobsCopy = item(bob, edited);
    await bobsCopy.locator('.edited').waitFor({ timeout: LINK_WAIT });
    await native.waitFor('the edit', (e) => e.event === 'message_changed' && e.change.kind === 'edit' && e.change.text === edited);

    // The admin deletes it: both pages and the CLI's history say so, and no longer hold its text.
    // The page asks first (every page of these tests accepts its dialogs: support.mjs, watch()).
    const confirmation = admin.page.waitForEvent('dialog');
    await item(admin, edited).locator('button.action.delete').click();
    assert.match((await confirmation).message(), /Delete this message for everyone\?/);
    await bob.page.locator(`#messages li[data-key="${asked.device}/${asked.id}"][data-deleted="true"]`).waitFor({ timeout: LINK_WAIT });
    await native.waitFor('the deletion', (e) => e.event === 'message_changed' && e.change.kind === 'delete');
    for (const who of [admin, bob]) {
      const row = who.page.locator(`#messages li[data-key="${asked.device}/${asked.id}"]`);
      assert.equal(await row.locator('.text').textContent(), 'This message was deleted.');
      assert.equal(await row.locator('.reaction').count(), 0, 'its reactions go with it');
      const stored = await who.page.evaluate(async ([member, device, id]) => {
        const { DeviceStore } = await import('/static/device.js');
        const store = await DeviceStore.open(member);
        try {
          return (await store.message(device, id)).rows[0].text;
        } finally {
          store.close();
        }
      }, [who.member, asked.device, asked.id]);
      assert.equal(stored, '', 'the browser forgot the text');
    }
    const history = native.ok(['history']);
    assert.match(history, new RegExp(`\\[[^\\]]* ${asked.id.slice(0, 8)}\\] [^\\n]*: \\(deleted\\)`), history);
    assert.ok(!history.includes(question) && !history.includes(edited), history);
    deleted.push(question, edited);
    t.diagnostic('reply, two reactions, an edit and a deletion reached every device');

    // Search, on the page's own copy: the answer is found and shown; the deleted message is not.
    const search = async (words) => {
      await admin.page.locator('#search-words').fill(words);
      await admin.page.locator('#search-button').click();
      await admin.page.locator('#search-count', { hasText: 'found' }).waitFor();
      return admin.page.locator('#search-results li').allTextContents();
    };
    const found = await search(answer.toUpperCase());
    assert.equal(found.length, 1, found.join(' | '));
    assert.match(found[0], new RegExp(`${bob.name}: ${answer}$`));
    await admin.page.locator('#search-results button').first().click();
    await admin.page.locator('#messages li.found', { hasText: answer }).waitFor();
    assert.deepEqual(await search(edited), [], 'a deleted message is found nowhere');
    const cli = native.ok(['search', ...answer.split('-')]);
    assert.ok(cli.includes(answer), cli);
  });

  test('d6. a member who takes the admin\'s name is told apart on every device, and the rename is said', async () => {
    await setName(bob, admin.name);
    // Both are shown with two words drawn from their member ids, which no member chooses.
    const named = admin.page.locator('#members li > strong', { hasText: `${admin.name} (` });
    await named.nth(1).waitFor({ timeout: LINK_WAIT });
    const labels = await named.allTextContents();
    assert.equal(labels.length, 2, labels.join(' | '));
    assert.notEqual(labels[0].replace(' (you)', ''), labels[1].replace(' (you)', ''), 'told apart');
    const notice = admin.page.locator('#messages li.notice', { hasText: `${bob.name} is now known as ${admin.name} (` });
    await notice.waitFor({ timeout: LINK_WAIT });
    const renamed = await native.waitFor('the rename', (e) => e.event === 'renamed' && e.from === bob.name);
    assert.match(renamed.to, new RegExp(`^${admin.name} \\(\\w+ \\w+\\)$`));
    await admin.page.bringToFront();
    await shot(admin.page, 'circle-lookalike');
    // A name that is no name is refused on the page that types it.
    await setName(bob, 'Bob\u202Eevil');
    await bob.page.locator('#status', { hasText: 'invisible, control or direction-changing' }).waitFor();
    // Bob takes his own name back: said again, and the admin is shown plainly.
    await setName(bob, bob.name);
    await admin.page.locator('#messages li.notice', { hasText: `is now known as ${bob.name}` }).waitFor({ timeout: LINK_WAIT });
    await admin.page.locator('#members li > strong', { hasText: `${admin.name} (you)` }).waitFor({ timeout: LINK_WAIT });
    assert.equal(await admin.page.locator('#members li > strong', { hasText: `${admin.name} (` }).count(), 1);
  });

  test('d7. a message that arrives while the tab is behind another is counted in its title and told as a notification', async () => {
    await admin.context.grantPermissions(['notifications'], { origin: run.base });
    await admin.page.reload();
    await joined(admin);
    await admin.page.locator('#notify-state', { hasText: 'New messages are told while this tab is in the background.' }).waitFor();
    assert.equal(await admin.page.locator('#notify').isVisible(), false, 'nothing to ask once allowed');
    await admin.page.evaluate(() => {
      const Real = window.Notification;
      window.told = [];
      window.Notification = class extends Real {
        constructor(title, options) {
          super(title, options);
          window.told.push({ title, body: options?.body });
        }
      };
    });
    await linkedTo(admin, await deviceId(bob));
    const title = await admin.page.title();
    // Headless Chromium keeps every tab visible: the tab goes behind as the page sees it, through
    // the visibility state and its event.
    const behindOrFront = (hidden) => admin.page.evaluate((hidden) => {
      Object.defineProperty(document, 'visibilityState', { get: () => (hidden ? 'hidden' : 'visible'), configurable: true });
      document.dispatchEvent(new Event('visibilitychange'));
    }, hidden);
    await behindOrFront(true);
    const behind = secret('while-behind');
    await send(bob, behind);
    await admin.page.waitForFunction((t) => document.title === `(1) ${t}`, title, { timeout: LINK_WAIT });
    assert.deepEqual(await admin.page.evaluate(() => window.told), [{ title: bob.name, body: behind }]);
    await behindOrFront(false);
    await admin.page.waitForFunction((t) => document.title === t, title);
    // In front, a new message is shown and neither counted nor told.
    const inFront = secret('in-front');
    await send(bob, inFront);
    await received(admin, inFront);
    assert.equal(await admin.page.title(), title);
    assert.equal(await admin.page.evaluate(() => window.told.length), 1);

    // By now the chat is longer than the screen: scrolled back to its start, the list of messages
    // runs past the bottom of the screen and the message box is still in sight there.
    const { height } = admin.page.viewportSize();
    await admin.page.evaluate(() => document.getElementById('chat-heading').scrollIntoView({ block: 'start' }));
    const [list, box] = [await admin.page.locator('#messages').boundingBox(), await admin.page.locator('#message').boundingBox()];
    assert.ok(list.y + list.height > height, `the chat runs past the screen (it ends at ${list.y + list.height} px of ${height})`);
    assert.ok(box.y >= 0 && box.y + box.height <= height, `the message box is at ${JSON.stringify(box)} on a ${height} px screen`);
  });

  test('d4. files go browser to browser and to and from the CLI: a picture as a thumbnail, 50 MB downloaded whole, progress shown', async (t) => {
    const sha256 = (bytes) => createHash('sha256').update(bytes).digest('hex');
    const card = (who, name) => who.page.locator(`#messages li.file:has(.file-name:text-is("${name}"))`);
    // A picture the admin shares (made by the page's own canvas): a thumbnail at Bob's, the same
    // bytes at the CLI.
    const picture = Buffer.from(await admin.page.evaluate(async () => {
      const canvas = document.createElement('canvas');
      canvas.width = 640;
      canvas.height = 400;
      const g = canvas.getContext('2d');
      g.fillStyle = '#2d5fa8';
      g.fillRect(0, 0, 640, 400);
      g.fillStyle = '#f5c518';
      g.beginPath();
      g.arc(320, 200, 150, 0, Math.PI * 2);
      g.fill();
      const blob = await new Promise((resolve) => canvas.toBlob(resolve, 'image/png'));
      return [...new Uint8Array(await blob.arrayBuffer())];
    }));
    const pictureName = `${secret('harbour')}.png`;
    await admin.page.locator('#attach').setInputFiles({ name: pictureName, mimeType: 'image/png', buffer: picture });
    await card(admin, pictureName).waitFor({ timeout: LINK_WAIT });
    const thumbnail = card(bob, pictureName).locator('img.thumbnail');
    await thumbnail.waitFor({ timeout: LINK_WAIT });
    assert.ok(await thumbnail.evaluate((img) => img.complete && img.naturalWidth === 240), 'a 240-pixel thumbnail');
    await shot(bob.page, 'file-thumbnail');
    const atNative = await native.waitFor('the picture', (e) => e.event === 'file_received' && e.name === pictureName);
    const savedPicture = path.join(root, 'picture.png');
    native.say(`/get ${atNative.id} ${savedPicture}`);
    await native.waitFor('the picture saved', (e) => e.event === 'file_saved' && e.id === atNative.id);
    assert.equal(sha256(await fs.readFile(savedPicture)), sha256(picture), 'the CLI holds the same picture');
    // Bob deletes it from his browser (the harness accepts the confirmation): the message stays,
    // the file is gone from there.
    await card(bob, pictureName).locator('button.delete').click();
    await card(bob, pictureName).locator('.file-status:has-text("Not on this browser")').waitFor();
    assert.equal(await card(bob, pictureName).locator('button.download').isHidden(), true);

    // 50 MB from Bob to the admin: progress on the way, then a download with its name and hash.
    const bigName = `${secret('archive')}.bin`;
    const bigPath = path.join(root, bigName);
    const big = randomBytes(50 * 1024 * 1024);
    await fs.writeFile(bigPath, big);
    const started = Date.now();
    await bob.page.locator('#attach').setInputFiles(bigPath);
    const arriving = card(admin, bigName);
    await arriving.waitFor({ timeout: LINK_WAIT });
    await arriving.locator('.file-status:has-text("Receiving")').waitFor({ timeout: LINK_WAIT });
    t.diagnostic(`progress at the admin's: ${await arriving.locator('.file-status').textContent()}`);
    const download = arriving.locator('button.download');
    await download.waitFor({ timeout: 4 * LINK_WAIT });
    t.diagnostic(`50 MB browser → browser: ${Date.now() - started} ms (stored, sent, checked)`);
    const [saved] = await Promise.all([admin.page.waitForEvent('download'), download.click()]);
    assert.equal(saved.suggestedFilename(), bigName);
    assert.equal(sha256(await fs.readFile(await saved.path())), sha256(big), 'the download is the file Bob shared');
    await card(bob, bigName).locator('.file-status:has-text("Sent")').waitFor({ timeout: LINK_WAIT });

    // From the CLI to both browsers.
    const noteName = `${secret('minutes')}.txt`;
    const note = Buffer.from(`Minutes of the meeting ${randomUUID()}\n`.repeat(2000));
    const notePath = path.join(root, noteName);
    await fs.writeFile(notePath, note);
    native.say(`/file ${notePath}`);
    for (const who of [admin, bob]) {
      const button = card(who, noteName).locator('button.download');
      await button.waitFor({ timeout: LINK_WAIT });
      const [got] = await Promise.all([who.page.waitForEvent('download'), button.click()]);
      assert.equal(got.suggestedFilename(), noteName);
      assert.equal(sha256(await fs.readFile(await got.path())), sha256(note));
    }
  });

  test('d2. while the server is down, the pages say so and links keep carrying messages', async () => {
    await run.stopServer();
    for (const who of [admin, bob]) {
      await who.page.locator('#status.error', { hasText: 'cannot be reached' }).waitFor({ timeout: LINK_WAIT });
      await who.page.locator('#device-state', { hasText: 'offline' }).waitFor();
    }
    await shot(bob.page, 'circle-server-down');
    const during = secret('server-down');
    await send(admin, during);
    await received(bob, during);
    await native.waitFor('the message sent while the server was down', (e) => e.event === 'message' && e.text === during);
    await admin.page.locator(`#messages li.outgoing[data-state="delivered"]:has-text("${during}")`).waitFor({ timeout: LINK_WAIT });
    await run.restartServer();
    for (const who of [admin, bob]) {
      // Reconnected within the backoff (at most 30 s, far less after one failure).
      await who.page.locator('#device-state', { hasText: ', online' }).waitFor({ timeout: 2 * LINK_WAIT });
      assert.equal(await status(who.page), '', 'the warning is gone');
    }
  });

  test('e. a reload keeps the device, its group membership and its history', async () => {
    const before = await deviceId(bob);
    await bob.page.reload();
    await joined(bob);
    assert.equal(await deviceId(bob), before, 'the same device after the reload');
    assert.equal(await bob.page.locator('body[data-device="new"]').count(), 0, 'no new device made');
    for (const text of secrets.filter((s) => s.startsWith('from-'))) {
      // The history is read from IndexedDB beside the device's start: wait for it, then count.
      const shown = bob.page.locator(`#messages li:has-text("${text}")`);
      await shown.first().waitFor({ timeout: LINK_WAIT });
      assert.equal(await shown.count(), 1, `${text} in the history once`);
    }
    await linkedTo(bob, admin.device);
    const after = secret('after-reload');
    await send(admin, after);
    await received(bob, after);
  });

  test('f. a message sent while a browser is closed arrives when it reopens', async () => {
    const key = await run.unplugKey(bob);
    await bob.page.close();
    await admin.page.locator(`#members li[data-device="${bob.device}"][data-linked="false"]`).waitFor({ timeout: LINK_WAIT });
    const away = secret('while-away');
    await send(admin, away);
    await admin.page.locator(`#messages li.outgoing[data-state="partly"]:has-text("${away}")`).waitFor({ timeout: LINK_WAIT });
    bob.page = await bob.context.newPage();
    await run.plugKey(bob, key);
    await bob.page.goto('/circle');
    await joined(bob);
    await received(bob, away);
    await admin.page.locator(`#messages li.outgoing[data-state="delivered"]:has-text("${away}")`).waitFor({ timeout: LINK_WAIT });
  });

  test('f2. a message whose sender closed the tab before the recipient opened theirs arrives through a third device', async () => {
    const bobKey = await run.unplugKey(bob);
    await bob.page.close();
    await admin.page.locator(`#members li[data-device="${bob.device}"][data-linked="false"]`).waitFor({ timeout: LINK_WAIT });
    const carried = secret('carried');
    await send(admin, carried);
    await native.waitFor('the message to carry', (e) => e.event === 'message' && e.text === carried);
    // The sender's tab closes: only the native device has the message for Bob now.
    const adminKey = await run.unplugKey(admin);
    await admin.page.close();
    await native.waitFor('the sender gone', (e) => e.event === 'link_down' && e.device === admin.device);

    bob.page = await bob.context.newPage();
    await run.plugKey(bob, bobKey);
    await bob.page.goto('/circle');
    await joined(bob);
    await received(bob, carried);
    assert.equal(await bob.page.locator(`#messages li:has-text("${carried}")`).count(), 1, 'shown once');
    assert.equal(await bob.page.locator(`#members li[data-device="${admin.device}"][data-linked="true"]`).count(), 0,
      'the sender was not there to send it');
    await bob.page.locator('#missing').waitFor({ state: 'hidden' });

    // The sender, back while Bob is away, learns through the native device that Bob holds it.
    const bobKeyAgain = await run.unplugKey(bob);
    await bob.page.close();
    await native.waitFor('Bob gone', (e) => e.event === 'link_down' && e.device === bob.device
      && native.lines.indexOf(e) > native.lines.findIndex((m) => m.event === 'message' && m.text === carried));
    admin.page = await admin.context.newPage();
    await run.plugKey(admin, adminKey);
    await admin.page.goto('/circle');
    await joined(admin);
    await admin.page.locator(`#messages li.outgoing:has-text("${carried}")`, { hasText: 'carried by another device' })
      .waitFor({ timeout: LINK_WAIT });
    const direct = secrets.find((t) => t.startsWith('from-admin'));
    await admin.page.locator(`#messages li.outgoing[data-state="delivered"]:has-text("${direct}")`).waitFor();
    assert.equal(await admin.page.locator(`#messages li.outgoing:has-text("${direct}")`, { hasText: 'carried by another device' }).count(),
      0, 'a message every device acknowledged itself is not said to be carried');
    await shot(admin.page, 'circle-carried');
    bob.page = await bob.context.newPage();
    await run.plugKey(bob, bobKeyAgain);
    await bob.page.goto('/circle');
    await joined(bob);
  });

  test('g. login tap to the first peer-to-peer message', async (t) => {
    await bob.context.clearCookies();
    await bob.page.goto('/');
    const tapped = Date.now();
    const since = () => `${Date.now() - tapped} ms`;
    await bob.page.locator('#login').click();
    await bob.page.waitForURL(`${run.base}/circle`);
    const landed = since();
    await joined(bob);
    await bob.page.locator('#send-button:enabled').waitFor();
    const ready = since();
    const first = secret('first-after-login');
    await send(bob, first);
    await linkedTo(bob, admin.device);
    const linked = since();
    await received(admin, first);
    const marks = await bob.page.locator('body').evaluate((body) => ({ ...body.dataset }));
    t.diagnostic(`login tap → first peer-to-peer message at another browser: ${since()} (circle page loaded ${landed}, `
      + `then engine ${marks.engineReadyMs} ms, device restored ${marks.deviceReadyMs} ms, started ${marks.deviceStartedMs} ms; `
      + `joined and able to send ${ready}, link up ${linked})`);
    assert.equal(await run.circleShown(bob.page), bob.member);
  });

  test('h. the admin revokes the member: their page says so, and nothing sent afterwards reaches them', async () => {
    await openAdmin(admin.adminPage);
    // The panel names members from what the admin's device knows (names never reach the server),
    // and the confirmation says who.
    const row = admin.adminPage.locator(`#members tbody tr[data-member="${bob.member}"]`);
    const named = `${bob.name} (${bob.member.slice(0, 8)})`;
    assert.equal(await row.locator('td').first().textContent(), named);
    assert.equal(await admin.adminPage.locator('#names-hint').isVisible(), false);
    const confirmation = admin.adminPage.waitForEvent('dialog');
    await row.getByRole('button', { name: 'Revoke' }).click();
    assert.match((await confirmation).message(), new RegExp(`^Revoke ${named.replace(/[()]/g, '\\$&')}\\? `));
    await admin.adminPage.locator('#status', { hasText: `${named} is revoked.` }).waitFor();
    await bob.page.locator('body[data-device="stopped"]').waitFor({ timeout: LINK_WAIT });
    assert.match(await status(bob.page), /membership of this circle was revoked/);
    await shot(bob.page, 'circle-revoked');
    // The admin's device removes the revoked member's device from the group.
    await admin.page.locator(`#members li[data-member="${bob.member}"]`).waitFor({ state: 'detached', timeout: LINK_WAIT });
    const after = secret('after-revocation');
    await send(admin, after);
    await native.waitFor('the message after the revocation', (e) => e.event === 'message' && e.text === after);
    assert.equal(await bob.page.locator(`#messages li:has-text("${after}")`).count(), 0, 'the revoked member receives nothing');
    await shot(admin.adminPage, 'admin-after-revocation');
  });

  test('h2. an invitation the operator writes into the database admits a device the pages refuse and warn about', async () => {
    // The operator, with write access to the database and nothing else, inserts an invitation of
    // its own (a token it knows, no admin's signature) and enrolls a native device with it.
    const token = randomBytes(32).toString('base64url');
    const hash = createHash('sha256').update(token).digest('hex');
    const now = Math.floor(Date.now() / 1000);
    const insert = 'INSERT INTO invitations (id, token_hash, circle_id, role, created_by, created_at, expires_at) '
      + `SELECT '${randomUUID()}', X'${hash}', circle_id, 'admin', id, ${now}, ${now + 3600} FROM members WHERE id = '${admin.member}'`;
    const wrote = spawnSync('sqlite3', [path.join(run.dataDir, 'tessera.db'), insert], { encoding: 'utf8' });
    assert.equal(wrote.status, 0, wrote.stderr);
    const mallory = new NativeDevice(root, 'mallory');
    mallory.ok(['soft-key', 'new', '--file', mallory.key]);
    mallory.ok(['join', `${run.base}/join/${token}`, '--name', secret('Mallory')]);
    mallory.chat();
    try {
      mallory.say('/status');
      const { member } = await mallory.waitFor('its status', (e) => e.event === 'status');
      // The admin's page says the server lists her and nothing signed admits her.
      const warning = admin.page.locator(`#warnings li[data-member="${member}"]`).first();
      await warning.waitFor({ timeout: 2 * LINK_WAIT });
      assert.match(await warning.textContent(), /no signed invitation or endorsement admits/);
      await shot(admin.page, 'circle-forged-member');
      // She never joins the group and reads nothing sent afterwards.
      const after = secret('not-for-mallory');
      await send(admin, after);
      await native.waitFor('the message', (e) => e.event === 'message' && e.text === after);
      await new Promise((resolve) => setTimeout(resolve, 3_000));
      const earlier = new Set(mallory.lines);
      mallory.say('/status');
      const last = await mallory.waitFor('its status', (e) => e.event === 'status' && !earlier.has(e));
      assert.equal(last.epoch, null, 'the forged device joined the group');
      assert.ok(!mallory.lines.some((e) => e.event === 'message' && e.text === after), 'the forged device read the message');
      assert.equal(await admin.page.locator(`#members li[data-member="${member}"]`).count(), 0, 'listed among the group');
    } finally {
      await mallory.stop();
    }
  });

  test('h2b. the admin\'s new browser receives their history from their other browser, with progress', async () => {
    const laptop = await run.person('admin-laptop');
    // The admin's hardware key, in the new browser too (a virtual key is per page).
    for (const credential of await run.unplugKey(admin)) {
      await laptop.cdp.send('WebAuthn.addCredential', { authenticatorId: laptop.authenticatorId, credential });
    }
    try {
      await laptop.page.goto('/');
      await laptop.page.locator('#login').click();
      await laptop.page.waitForURL(`${run.base}/circle`);
      await laptop.page.locator('body[data-device="new"]').waitFor();
      await laptop.page.locator('#certify').click();
      await laptop.page.locator('body[data-device="joined"]').waitFor({ timeout: LINK_WAIT });
      await laptop.page.locator('#history-progress[data-done="true"]').waitFor({ timeout: LINK_WAIT });
      assert.match(await laptop.page.locator('#history-progress').textContent(), /all here/);
      const texts = (page) => page.locator('#messages li[data-deleted="false"] .text').allTextContents();
      const had = await texts(admin.page);
      const got = new Set(await texts(laptop.page));
      assert.ok(had.length >= 5, `the admin's browser shows ${had.length} messages`);
      for (const text of had) assert.ok(got.has(text), `"${text}" is missing in the new browser`);
      // A message deleted for everyone does not come back through the history.
      const everything = await laptop.page.locator('#messages').textContent();
      for (const text of deleted) assert.ok(!everything.includes(text), `"${text}" came back in the new browser`);
      // The admin's own earlier messages show as sent from another of their devices.
      const mine = secrets.find((t) => t.startsWith('from-admin'));
      const row = laptop.page.locator('#messages li.incoming', { hasText: mine });
      assert.equal(await row.locator('.who').textContent(), 'You (another device)');
      await shot(laptop.page, 'circle-history');
    } finally {
      await laptop.context.close();
    }
  });

  test('h3. a session that expires while the page is open is renewed by the device key, and a reload too', async () => {
    // Every session of this browser's member ends on the server, as one expires: the open page's
    // socket is closed within the recheck (2 s here), and the device renews it with its key.
    const sessions = (sql) => spawnSync('sqlite3', [path.join(run.dataDir, 'tessera.db'), sql], { encoding: 'utf8' });
    const expire = () => {
      const ended = sessions(`DELETE FROM sessions WHERE member_id = '${admin.member}'`);
      assert.equal(ended.status, 0, ended.stderr);
    };
    const renewals = () => admin.page.evaluate(() => Number(document.body.dataset.sessionRenewals ?? 0));
    assert.equal(await renewals(), 0);
    expire();
    await admin.page.locator('body[data-session-renewals]').waitFor({ timeout: LINK_WAIT });
    assert.equal(await admin.page.locator('body[data-device="stopped"]').count(), 0, 'the page stopped');
    assert.doesNotMatch(await status(admin.page), /revoked|session ended/);
    const left = sessions(`SELECT COUNT(*) FROM sessions WHERE member_id = '${admin.member}'`);
    assert.equal(left.stdout.trim(), '1', 'one renewed session');
    // Messages flow both ways after the renewal.
    const after = secret('after-renewal');
    await send(admin, after);
    await native.waitFor('the message sent after the renewal', (e) => e.event === 'message' && e.text === after);
    const back = secret('back-after-renewal');
    native.say(back);
    await received(admin, back);
    assert.equal(await renewals(), 1);
    // A page opened with an ended session renews it too, without a touch: no login page.
    expire();
    await admin.adminPage.reload();
    await admin.adminPage.locator('#nav:not([hidden])').waitFor({ timeout: LINK_WAIT });
    assert.ok(admin.adminPage.url().endsWith('/admin'), admin.adminPage.url());
  });

  test('h4. logging out ends the session for good: the device does not renew it, and says so, never "revoked"', async () => {
    await admin.adminPage.locator('#logout').click();
    await admin.adminPage.locator('#login').waitFor({ timeout: LINK_WAIT });
    await admin.page.locator('body[data-device="stopped"]').waitFor({ timeout: LINK_WAIT });
    const said = await status(admin.page);
    assert.match(said, /session ended/);
    assert.match(said, /logged out/);
    assert.doesNotMatch(said, /revoked/);
    assert.doesNotMatch(await admin.page.locator('#device-state').textContent(), /revoked|session ended/,
      'said once, not twice');
    // The way back: the login page.
    await admin.page.locator('#log-in-again').click();
    await admin.page.locator('#login').waitFor();
  });

  test('i. no name, message, token or address in the server\'s files or logs', async () => {
    assert.ok(secrets.length >= 8);
    await run.assertNowhere([...secrets, ...run.labels, ...run.tokens, ...run.linkSecrets, '127.0.0.1', NAMESPACE_ADDRESS]);
  });
}
