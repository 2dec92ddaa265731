// Browser benchmark (not a test: tests/run leaves it out; figures are printed, never asserted).
// Two members' browsers as devices in two Chromium contexts, inside a network namespace of its
// own, against the release server: the time from Enter in one page to the message shown in the
// other (page clocks), login tap to the first peer-to-peer message at another browser, and bulk
// (16 KiB messages) between the two pages next to a raw Chromium data channel between the same
// two pages, measured in the same run; then a file shared from one page to the other (stored and
// hashed, then fetched chunk by chunk into the other page's private file system).
//
// Run: `cd tests/browser && npm ci && node --test bench.mjs` (root, for the namespace; it builds
// the release server unless TESSERA_SERVER_BIN names one). Environment: MESSAGES (latency
// samples, 30), LOGINS (3), BULK (16 KiB messages, 200), RAW_MB (the raw channel's megabytes, 32),
// FILE_MB (the file's megabytes, 64).

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import {
  Harness, LINK_WAIT, REPO, becomeDevice, deviceId, insideNamespace, joined, linkedTo, watch,
} from './support.mjs';

const FILE = fileURLToPath(import.meta.url);
const count = (name, fallback) => Number(process.env[name] ?? fallback);
const MESSAGES = count('MESSAGES', 30);
const LOGINS = count('LOGINS', 3);
const BULK = count('BULK', 200);
const RAW_MB = count('RAW_MB', 32);
const FILE_MB = count('FILE_MB', 64);
const KIB16 = 16 * 1024;

if (!process.env.TESSERA_SERVER_BIN) {
  const target = process.env.CARGO_TARGET_DIR ?? path.join(os.homedir(), '.cache/tessera/target');
  const built = spawnSync('cargo', ['build', '--release', '--bin', 'tessera-server'], {
    cwd: REPO,
    env: { ...process.env, CARGO_TARGET_DIR: target },
    stdio: ['ignore', 'inherit', 'inherit'],
  });
  assert.equal(built.status, 0, 'cargo build --release --bin tessera-server failed');
  process.env.TESSERA_SERVER_BIN = path.join(target, 'release', 'tessera-server');
}

const run = new Harness();
let admin;
let bob;

const median = (values) => {
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.floor(sorted.length / 2)];
};
const ms = (value) => `${value.toFixed(1)} ms`;

// Notes, by this page's clock (ms since the epoch, sub-millisecond), when a message whose text
// holds `tag-<n>` is shown as received, and counts those shown.
async function watchArrivals(page, tag) {
  await page.evaluate((tag) => {
    const seen = new Map();
    window.arrivals = { seen, count: 0 };
    const pattern = new RegExp(`${tag}-(\\d+)`);
    new MutationObserver((records) => {
      const at = performance.timeOrigin + performance.now();
      for (const record of records) {
        for (const node of record.addedNodes) {
          if (!(node instanceof Element) || !node.matches('li.incoming')) continue;
          const found = pattern.exec(node.textContent);
          if (found && !seen.has(found[1])) {
            seen.set(found[1], at);
            window.arrivals.count += 1;
          }
        }
      }
    }).observe(document.getElementById('messages'), { childList: true, subtree: true });
  }, tag);
}

async function arrivals(page) {
  return page.evaluate(() => Object.fromEntries(window.arrivals.seen));
}

// Sends `texts` through the page's own form, one after another, as fast as the page takes them;
// the page's clock when the first went.
async function submitAll(page, texts) {
  return page.evaluate((texts) => {
    const input = document.getElementById('message');
    const form = document.getElementById('send');
    const started = performance.timeOrigin + performance.now();
    for (const text of texts) {
      input.value = text;
      form.requestSubmit();
    }
    return started;
  }, texts);
}

// A raw data channel between two pages (no server, no engine): `megabytes` in 16 KiB messages,
// sent as fast as the channel's buffer allows; MB/s from the first send to the last byte received.
async function rawChannel(sender, receiver, megabytes) {
  const total = megabytes * 1024 * 1024;
  const setup = (role) => {
    const pc = new RTCPeerConnection({ iceServers: [] });
    window.raw = { pc, role };
    window.raw.gathered = new Promise((resolve) => {
      pc.addEventListener('icegatheringstatechange', () => {
        if (pc.iceGatheringState === 'complete') resolve();
      });
    });
  };
  await sender.evaluate(setup, 'sender');
  await receiver.evaluate(setup, 'receiver');
  await receiver.evaluate((total) => {
    window.raw.done = new Promise((resolve) => {
      window.raw.pc.addEventListener('datachannel', ({ channel }) => {
        let received = 0;
        channel.binaryType = 'arraybuffer';
        channel.addEventListener('message', ({ data }) => {
          received += data.byteLength;
          if (received >= total) resolve(performance.timeOrigin + performance.now());
        });
      });
    });
  }, total);
  const offer = await sender.evaluate(async () => {
    const { pc } = window.raw;
    window.raw.channel = pc.createDataChannel('raw', { ordered: true });
    window.raw.open = new Promise((resolve) => window.raw.channel.addEventListener('open', resolve));
    await pc.setLocalDescription(await pc.createOffer());
    await window.raw.gathered;
    return pc.localDescription.toJSON();
  });
  const answer = await receiver.evaluate(async (offer) => {
    const { pc } = window.raw;
    await pc.setRemoteDescription(offer);
    await pc.setLocalDescription(await pc.createAnswer());
    await window.raw.gathered;
    return pc.localDescription.toJSON();
  }, offer);
  const started = await sender.evaluate(async ({ answer, total, size }) => {
    const { pc } = window.raw;
    await pc.setRemoteDescription(answer);
    await window.raw.open;
    const { channel } = window.raw;
    channel.bufferedAmountLowThreshold = 1024 * 1024;
    const chunk = new Uint8Array(size).fill(7);
    const began = performance.timeOrigin + performance.now();
    for (let sent = 0; sent < total; sent += size) {
      if (channel.bufferedAmount > 4 * 1024 * 1024) {
        await new Promise((resolve) => channel.addEventListener('bufferedamountlow', resolve, { once: true }));
      }
      channel.send(chunk);
    }
    return began;
  }, { answer, total, size: KIB16 });
  const ended = await receiver.evaluate(() => Promise.race([
    window.raw.done,
    new Promise((_, reject) => setTimeout(() => reject(new Error('the raw channel did not finish in 60 s')), 60_000)),
  ]));
  await sender.evaluate(() => window.raw.pc.close());
  await receiver.evaluate(() => window.raw.pc.close());
  return total / 1e6 / ((ended - started) / 1000);
}

if (insideNamespace(FILE)) {
  before(async () => {
    await run.start({ webrtc: true });
  });

  after(async () => {
    await run.stop();
  });

  test('two browsers, peer to peer: message latency, login to first message, bulk', { timeout: 10 * 60_000 }, async (t) => {
    // Setup: the admin's browser starts the group, a member's joins it.
    admin = await run.person('admin');
    await run.enroll(admin, run.bootstrapLink, run.label('admin'));
    await becomeDevice(admin);
    await joined(admin);
    admin.adminPage = await admin.context.newPage();
    watch(admin.adminPage, 'admin-panel');
    await run.copyKeyTo(admin, admin.adminPage);
    const link = await run.issueInvitation(admin.adminPage);
    bob = await run.person('bob');
    await run.enroll(bob, link, run.label('bob'));
    await becomeDevice(bob);
    await joined(bob);
    admin.device = await deviceId(admin);
    bob.device = await deviceId(bob);
    await linkedTo(admin, bob.device);
    await linkedTo(bob, admin.device);

    // 1. Enter in one page → shown in the other, one message at a time: first with the sending
    // page behind the admin panel's tab (Chromium runs a background tab's tasks later), then with
    // the sending page in front, as when someone types in it.
    await admin.page.evaluate(() => {
      window.typed = new Map();
      document.getElementById('message').addEventListener('keydown', (event) => {
        if (event.key === 'Enter') window.typed.set(event.target.value, performance.timeOrigin + performance.now());
      }, { capture: true });
    });
    const latency = async (what) => {
      const tag = `lat${randomBytes(3).toString('hex')}`;
      await watchArrivals(bob.page, tag);
      for (let i = 0; i < MESSAGES; i += 1) {
        await admin.page.locator('#message').fill(`${tag}-${i}`);
        await admin.page.locator('#message').press('Enter');
        await bob.page.waitForFunction((n) => window.arrivals.count >= n, i + 1, { timeout: LINK_WAIT });
        await new Promise((resolve) => setTimeout(resolve, 20));
      }
      const typed = Object.fromEntries(await admin.page.evaluate(() => [...window.typed]));
      const shown = await arrivals(bob.page);
      const latencies = Object.entries(shown).map(([n, at]) => at - typed[`${tag}-${n}`]);
      assert.equal(latencies.length, MESSAGES, 'every message arrived');
      const sorted = [...latencies].sort((a, b) => a - b);
      t.diagnostic(`Enter → shown at the other browser, ${MESSAGES} messages, ${what}: median ${ms(median(latencies))}, `
        + `fastest ${ms(sorted[0])}, 90th percentile ${ms(sorted[Math.floor(sorted.length * 0.9)])}`);
    };
    await latency('the sending page behind another tab');
    await admin.page.bringToFront();
    await latency('the sending page in front');

    // 2. Login tap → the first peer-to-peer message at the other browser.
    const logins = [];
    for (let round = 0; round < LOGINS; round += 1) {
      const firstTag = `login${round}${randomBytes(3).toString('hex')}`;
      await watchArrivals(admin.page, firstTag);
      await bob.context.clearCookies();
      await bob.page.goto('/');
      const tapped = Date.now();
      await bob.page.locator('#login').click();
      await bob.page.waitForURL(`${run.base}/circle`);
      await joined(bob);
      await bob.page.locator('#send-button:enabled').waitFor();
      const ready = Date.now() - tapped;
      await bob.page.locator('#message').fill(`${firstTag}-0`);
      await bob.page.locator('#message').press('Enter');
      await admin.page.waitForFunction(() => window.arrivals.count >= 1, null, { timeout: LINK_WAIT });
      const total = (await arrivals(admin.page))['0'] - tapped;
      logins.push(total);
      // The circle page's own marks, from its navigation's start (web/circle.js, mark()).
      const marks = await bob.page.evaluate(() => ({
        landed: performance.timeOrigin,
        ...Object.fromEntries(Object.entries(document.body.dataset).filter(([k]) => k.endsWith('Ms'))),
      }));
      t.diagnostic(`login ${round + 1}: ${ms(total)}; circle page started ${ms(marks.landed - tapped)} after the tap, `
        + `then engine ready ${marks.engineReadyMs} ms, device restored ${marks.deviceReadyMs} ms, `
        + `started ${marks.deviceStartedMs} ms; able to send ${ready} ms after the tap`);
    }
    t.diagnostic(`login tap → first peer-to-peer message at the other browser: ${logins.map(ms).join(', ')} `
      + `(median ${ms(median(logins))})`);
    await linkedTo(bob, admin.device);

    // 3. Bulk: 16 KiB messages through the page's form, against a raw data channel.
    const bulkTag = `bulk${randomBytes(3).toString('hex')}`;
    await watchArrivals(bob.page, bulkTag);
    const texts = Array.from({ length: BULK }, (_, i) => `${bulkTag}-${i} `.padEnd(KIB16, 'y'));
    const started = await submitAll(admin.page, texts);
    await bob.page.waitForFunction((n) => window.arrivals.count >= n, BULK, { timeout: 120_000, polling: 50 });
    const last = Math.max(...Object.values(await arrivals(bob.page)));
    const engineRate = (BULK * KIB16) / 1e6 / ((last - started) / 1000);
    const rawRate = await rawChannel(admin.page, bob.page, RAW_MB);
    t.diagnostic(`bulk, ${BULK} × 16 KiB messages browser → browser: ${engineRate.toFixed(2)} MB/s; `
      + `raw Chromium data channel between the same pages, ${RAW_MB} MB in 16 KiB messages: ${rawRate.toFixed(1)} MB/s `
      + `(${((100 * engineRate) / rawRate).toFixed(0)} %)`);

    // 4. A file: stored and hashed in the sending page, then fetched by the other page.
    const fileName = `bench-${randomBytes(3).toString('hex')}.bin`;
    const filePath = path.join(os.tmpdir(), fileName);
    await fs.writeFile(filePath, randomBytes(FILE_MB * 1024 * 1024));
    try {
      const card = bob.page.locator(`#messages li.file:has(.file-name:text-is("${fileName}"))`);
      const picked = Date.now();
      await admin.page.locator('#attach').setInputFiles(filePath);
      await card.waitFor({ timeout: 600_000 });
      const offered = Date.now();
      await card.locator('button.download').waitFor({ timeout: 600_000 });
      const here = Date.now();
      const fileRate = (FILE_MB * 1024 * 1024) / 1e6 / ((here - offered) / 1000);
      t.diagnostic(`a ${FILE_MB} MiB file browser → browser: stored and hashed in ${ms(offered - picked)} `
        + `(${((FILE_MB * 1024 * 1024) / 1e6 / ((offered - picked) / 1000)).toFixed(1)} MB/s), then fetched, checked and `
        + `written at ${fileRate.toFixed(2)} MB/s (${((100 * fileRate) / rawRate).toFixed(0)} % of the raw channel)`);
    } finally {
      await fs.rm(filePath, { force: true });
    }
  });
}
