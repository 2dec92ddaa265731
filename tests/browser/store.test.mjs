// The page's local store applies the engine's history rows as the native store does: the rows of
// tests/fixtures/history_writes.json, written through web/device.js's DeviceStore into IndexedDB in
// real Chromium, leave the history the fixture says, the same the native SQLite store holds for
// them (client/tests/store.rs). Both stores apply rows and decide nothing; this keeps them equal.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs/promises';
import path from 'node:path';
import { Harness, REPO } from './support.mjs';

const run = new Harness();

before(() => run.start());
after(() => run.stop());

test('the engine\'s history rows leave the same history in IndexedDB as in the native store', async () => {
  const fixture = JSON.parse(await fs.readFile(path.join(REPO, 'tests/fixtures/history_writes.json'), 'utf8'));
  const visitor = await run.person('store');
  await visitor.page.goto('/');
  const held = await visitor.page.evaluate(async (writes) => {
    const { DeviceStore } = await import('/static/device.js');
    const member = crypto.randomUUID();
    const store = await DeviceStore.open(member);
    try {
      for (const history of writes) {
        // The engine's state and other rows are the engine's business: one byte stands for them.
        await store.save({
          state: new Uint8Array([1]), mls_put: [], mls_delete: [], outbox_put: [], outbox_delete: [], carried_put: [], carried_delete: [], files_put: [], files_delete: [], history,
        });
      }
      const { loadEngine, shownRows } = await import('/static/device.js');
      const engine = await loadEngine();
      const page = await store.historyPage(null, 100);
      return { shown: shownRows(engine, await store.history()), stored: page.rows };
    } finally {
      store.close();
      await DeviceStore.destroy(member);
    }
  }, fixture.writes);
  const rows = held.shown.map(({
    id, member, device, text, sent_at, outgoing, delivered, file, reply_to, edited, deleted, reactions,
  }) => ({
    id, member, device, text, sent_at, outgoing, delivered: delivered.length, file: file ?? null,
    reply_to: reply_to ?? null, edited, deleted, reactions,
  }));
  assert.deepEqual(rows, fixture.history);
  // The deleted message's text is gone from the store itself, not only from what is shown.
  assert.equal(held.stored.find((row) => row.sent_at === 3000).text, '');
  await visitor.context.close();
});
