// The page's driver of the engine: the browser as a member device. It moves bytes and does the IO
// the engine (Rust, compiled to WebAssembly) asks for: the signalling WebSocket, the circle
// directory and ICE server fetches, WebRTC data channels and time. Each of the engine's turns is
// written to IndexedDB before its outputs are acted on, so that nothing acknowledged is lost. It
// holds no device policy (what to retry and when, what to keep, why to stop): that is the engine's.

const API = '/api/v1';
const LABEL = 'tessera'; // the data channel's label, as the native client names it
const CHANNEL_BUFFER_HIGH = 1024 * 1024; // past this what goes on a channel waits in its queue
const CHANNEL_BUFFER_LOW = 256 * 1024; // the queue is written again when the channel is below this
const CHANNEL_QUEUE_LIMIT = 8 * 1024 * 1024; // past this a packet is dropped: the outbox resends it
const FILE_SLICE = 1024 * 1024; // a file the member shares is stored and hashed this much at a time
const BACKOFF_FIRST_MS = 500;
const BACKOFF_MAX_MS = 30_000;
const BACKOFF_RESET_MS = 60_000; // a connection up this long starts the backoff afresh

// ---------------------------------------------------------------- IndexedDB

function request(req) {
  return new Promise((resolve, reject) => {
    req.onsuccess = () => resolve(req.result);
    req.onerror = () => reject(req.error);
  });
}

function finished(tx) {
  return new Promise((resolve, reject) => {
    tx.oncomplete = () => resolve();
    tx.onerror = () => reject(tx.error);
    tx.onabort = () => reject(tx.error ?? new Error('the local store refused the write'));
  });
}

const databaseName = (member) => `tessera-device-${member}`;

// One database per member on this browser: the engine's state, MLS's key-value pairs, the outbox
// (one record per message and peer), the history and the messages kept for other devices.
export class DeviceStore {
  static async open(member) {
    const req = indexedDB.open(databaseName(member), 5);
    req.onupgradeneeded = ({ oldVersion }) => {
      const db = req.result;
      if (oldVersion < 1) {
        db.createObjectStore('engine');
        db.createObjectStore('mls', { keyPath: 'key' });
        db.createObjectStore('outbox', { keyPath: ['peer', 'seq'] });
      }
      // Version 2: history keyed by [device, id], since a message id is its sender's to choose
      // (version 1 keyed it by id alone: another member could shadow a message by reusing its id).
      const create = () => {
        const history = db.createObjectStore('history', { keyPath: ['device', 'id'] });
        history.createIndex('sent_at', 'sent_at');
        return history;
      };
      // Version 3: the circle's messages this device keeps for other devices, by [stream, seq].
      if (oldVersion < 3) db.createObjectStore('carried', { keyPath: ['stream', 'seq'] });
      // Version 4: the files this device sends, holds or receives, one record per file (the
      // engine's row); their content lives apart.
      if (oldVersion < 4) db.createObjectStore('files', { keyPath: 'id' });
      // Version 5: changes to messages (reactions, edits, deletions), by [device, id], kept apart
      // from the messages they point at (carrying may bring one first), found by their target.
      if (oldVersion < 5) {
        db.createObjectStore('changes', { keyPath: ['device', 'id'] })
          .createIndex('target', ['target.device', 'target.id']);
      }
      if (oldVersion === 1) {
        const old = req.transaction.objectStore('history').getAll();
        old.onsuccess = () => {
          db.deleteObjectStore('history');
          const history = create();
          for (const entry of old.result) history.put(entry);
        };
      } else if (oldVersion < 1) {
        create();
      }
    };
    return new DeviceStore(await request(req));
  }

  constructor(db) {
    this.db = db;
  }

  // Every record the engine needs to come back as it was; null for a browser with no device yet.
  async load() {
    const tx = this.db.transaction(['engine', 'mls', 'outbox', 'carried', 'files'], 'readonly');
    const [state, mls, outbox, carried, files] = await Promise.all([
      request(tx.objectStore('engine').get('state')),
      request(tx.objectStore('mls').getAll()),
      request(tx.objectStore('outbox').getAll()),
      request(tx.objectStore('carried').getAll()),
      request(tx.objectStore('files').getAll()),
    ]);
    return state ? { state, mls, outbox, carried, files } : null;
  }

  // One write of the engine, in one transaction: its state, MLS's pairs, the outbox, the
  // history rows and the messages kept for others, applied as they come.
  async save(write) {
    // Only the stores the write touches: a transaction waits for every other one on a store it
    // names (at login the circle view's history read took 43 ms, and the engine's turns waited).
    const scope = ['engine'];
    if (write.mls_put.length || write.mls_delete.length) scope.push('mls');
    if (write.outbox_put.length || write.outbox_delete.length) scope.push('outbox');
    if (write.carried_put.length || write.carried_delete.length) scope.push('carried');
    if (write.files_put.length || write.files_delete.length) scope.push('files');
    if (write.history.length) scope.push('history');
    if (write.history.some((row) => row.kind === 'change')) scope.push('changes');
    // Strict: the write is on disk when it completes, before anything it led to is acted on.
    const tx = this.db.transaction(scope, 'readwrite', { durability: 'strict' });
    const done = finished(tx);
    tx.objectStore('engine').put(write.state, 'state');
    const store = (name) => (scope.includes(name) ? tx.objectStore(name) : null);
    const mls = store('mls');
    for (const record of write.mls_put) mls.put(record);
    for (const key of write.mls_delete) mls.delete(key);
    const outbox = store('outbox');
    for (const record of write.outbox_put) outbox.put(record);
    for (const { peer, seq } of write.outbox_delete) outbox.delete([peer, seq]);
    const carried = store('carried');
    for (const record of write.carried_put) carried.put(record);
    for (const { stream, seq } of write.carried_delete) carried.delete([stream, seq]);
    const files = store('files');
    for (const record of write.files_put) files.put(record);
    for (const id of write.files_delete) files.delete(id);
    const history = store('history');
    for (const row of write.history) {
      if (row.kind === 'add') {
        history.add({
          id: row.id, member: row.member, device: row.device, text: row.text,
          sent_at: row.sent_at, outgoing: row.outgoing, file: row.file, reply_to: row.reply_to,
          delivered: [],
        }).onerror = (e) => { e.preventDefault(); e.stopPropagation(); }; // a duplicate: kept once
      } else if (row.kind === 'delivered') {
        const get = history.get([row.device, row.id]);
        get.onsuccess = () => {
          const entry = get.result;
          if (entry && !entry.delivered.includes(row.peer)) {
            entry.delivered.push(row.peer);
            history.put(entry);
          }
        };
      } else if (row.kind === 'change') {
        const changes = tx.objectStore('changes');
        const { kind: _, ...change } = row;
        changes.add(change).onerror = (e) => { e.preventDefault(); e.stopPropagation(); };
        // A deletion by the message's author forgets its text, file and their edits here.
        if (change.change.kind === 'delete' && change.member === change.target.member) {
          const key = [change.target.device, change.target.id];
          const get = history.get(key);
          get.onsuccess = () => {
            const entry = get.result;
            if (entry && entry.member === change.member) {
              history.put({ ...entry, text: '', file: null, reply_to: null });
            }
          };
          const edits = changes.index('target').openCursor(IDBKeyRange.only(key));
          edits.onsuccess = () => {
            const at = edits.result;
            if (!at) return;
            if (at.value.change.kind === 'edit' && at.value.member === change.member) at.delete();
            at.continue();
          };
        }
      }
    }
    await done;
  }

  // The changes kept for `rows` (history rows), read in the transaction `tx`.
  static async changesTo(tx, rows) {
    const index = tx.objectStore('changes').index('target');
    const found = await Promise.all(rows.map((row) => request(index.getAll([row.device, row.id]))));
    return found.flat();
  }

  // What the circle view shows of this browser's device key: its public half and the fingerprint of
  // the hardware key that certified it.
  async saveIdentity(identity) {
    const tx = this.db.transaction('engine', 'readwrite');
    const done = finished(tx);
    tx.objectStore('engine').put(identity, 'identity');
    await done;
  }

  async identity() {
    const tx = this.db.transaction('engine', 'readonly');
    return (await request(tx.objectStore('engine').get('identity'))) ?? null;
  }

  // The members' names as this browser's device last showed them ({member: label}, the engine's
  // labels), kept for the pages that do not run the device (the admin panel).
  async saveNames(names) {
    const tx = this.db.transaction('engine', 'readwrite');
    const done = finished(tx);
    tx.objectStore('engine').put(names, 'names');
    await done;
  }

  // The names `saveNames` kept for `member`'s device on this browser; {} when this browser is no
  // device of theirs (no database is made for asking).
  static async names(member) {
    const databases = await indexedDB.databases?.() ?? [];
    if (!databases.some((d) => d.name === databaseName(member))) return {};
    const store = await DeviceStore.open(member);
    try {
      const tx = store.db.transaction('engine', 'readonly');
      return (await request(tx.objectStore('engine').get('names'))) ?? {};
    } finally {
      store.close();
    }
  }

  // The last `limit` messages, oldest first, with the changes kept for them (to show with the
  // engine's `showMessages`).
  async history(limit = 200) {
    const tx = this.db.transaction(['history', 'changes'], 'readonly');
    const entries = [];
    await new Promise((resolve, reject) => {
      const cursor = tx.objectStore('history').index('sent_at').openCursor(null, 'prev');
      cursor.onerror = () => reject(cursor.error);
      cursor.onsuccess = () => {
        const at = cursor.result;
        if (!at || entries.length >= limit) return resolve();
        entries.push(at.value);
        at.continue();
      };
    });
    entries.reverse();
    return { rows: entries, changes: await DeviceStore.changesTo(tx, entries) };
  }

  // One stored message by its sending device and id, with the changes kept for it; null when
  // this browser does not hold it.
  async message(device, id) {
    const tx = this.db.transaction(['history', 'changes'], 'readonly');
    const row = await request(tx.objectStore('history').get([device, id]));
    if (!row) return null;
    return { rows: [row], changes: await DeviceStore.changesTo(tx, [row]) };
  }

  // A page of the history for another device of this member: up to `limit` rows strictly older
  // than `before` ({sent_at, device, id}; from the newest when null) in that order, newest first
  // (the sent_at index lists ties by [device, id]), and how many rows are older than `before`.
  async historyPage(before, limit) {
    const tx = this.db.transaction(['history', 'changes'], 'readonly');
    const index = tx.objectStore('history').index('sent_at');
    const older = (row) => !before || row.sent_at < before.sent_at
      || (row.sent_at === before.sent_at
        && (row.device < before.device || (row.device === before.device && row.id < before.id)));
    const walk = (range, visit) => new Promise((resolve, reject) => {
      const cursor = index.openCursor(range, 'prev');
      cursor.onerror = () => reject(cursor.error);
      cursor.onsuccess = () => {
        const at = cursor.result;
        if (!at || visit(at.value) === false) return resolve();
        at.continue();
      };
    });
    const rows = [];
    await walk(before ? IDBKeyRange.upperBound(before.sent_at) : null, (row) => {
      if (older(row)) rows.push(row);
      return rows.length < limit;
    });
    let count;
    if (before) {
      count = await request(index.count(IDBKeyRange.upperBound(before.sent_at, true)));
      await walk(IDBKeyRange.only(before.sent_at), (row) => {
        if (older(row)) count += 1;
      });
    } else {
      count = await request(index.count());
    }
    return { rows, changes: await DeviceStore.changesTo(tx, rows), older: count };
  }

  close() {
    this.db.close();
  }

  // Deletes the member's device from this browser: state, keys, outbox and history.
  static async destroy(member) {
    await request(indexedDB.deleteDatabase(databaseName(member)));
  }
}

// Stored history rows as their changes leave them (the engine's `showMessages`: text, edited,
// deleted, reactions), each keeping the row's own fields (outgoing, delivered).
export function shownRows(engine, { rows, changes }) {
  return engine.showMessages(rows, changes).map((message, i) => ({ ...rows[i], ...message }));
}

// ---------------------------------------------------------------- peer links

// One RTCPeerConnection with one data channel per peer device. Negotiation steps go to the engine
// (which sends them MLS-protected); the peer's steps come from it. Each peer's steps are applied in
// order, one after the other.
class Links {
  constructor(device) {
    this.device = device;
    this.peers = new Map(); // device id -> { pc, channel, chain, up }
    this.iceServers = [];
  }

  #current(id, peer) {
    return this.peers.get(id) === peer;
  }

  #make(id) {
    this.close(id);
    const pc = new RTCPeerConnection({ iceServers: this.iceServers });
    const peer = { pc, channel: null, chain: Promise.resolve(), up: false };
    this.peers.set(id, peer);
    pc.onicecandidate = ({ candidate }) => {
      if (!candidate?.candidate || !this.#current(id, peer)) return;
      this.device.input((engine) => engine.sendRtc(id, {
        type: 'candidate', candidate: candidate.candidate, sdpMid: candidate.sdpMid ?? null,
      }));
    };
    pc.onconnectionstatechange = () => {
      if (['failed', 'closed'].includes(pc.connectionState)) this.#down(id, peer);
    };
    pc.ondatachannel = ({ channel }) => this.#wire(id, peer, channel);
    return peer;
  }

  #wire(id, peer, channel) {
    peer.channel = channel;
    peer.queue = [];
    peer.queued = 0;
    channel.binaryType = 'arraybuffer';
    channel.bufferedAmountLowThreshold = CHANNEL_BUFFER_LOW;
    channel.onbufferedamountlow = () => this.#drain(peer);
    channel.onopen = () => {
      if (!this.#current(id, peer)) return;
      peer.up = true;
      this.device.input((engine) => engine.handleLinkUp(id));
    };
    channel.onclose = () => this.#down(id, peer);
    channel.onmessage = ({ data }) => {
      if (!this.#current(id, peer) || !(data instanceof ArrayBuffer)) return;
      this.device.input((engine) => engine.handleLinkData(id, new Uint8Array(data)));
    };
  }

  #down(id, peer) {
    if (!this.#current(id, peer)) return;
    this.peers.delete(id);
    peer.pc.close();
    this.device.input((engine) => engine.handleLinkDown(id));
  }

  // Runs `step` after the peer's earlier steps; a failed step takes the link down.
  #then(id, peer, step) {
    peer.chain = peer.chain.then(step).catch((error) => {
      console.warn(`link to ${id}: ${error?.message ?? error}`);
      this.#down(id, peer);
    });
  }

  open(id) {
    const peer = this.#make(id);
    this.#wire(id, peer, peer.pc.createDataChannel(LABEL, { ordered: true }));
    this.#then(id, peer, async () => {
      await peer.pc.setLocalDescription(await peer.pc.createOffer());
      const { sdp } = peer.pc.localDescription;
      this.device.input((engine) => engine.sendRtc(id, { type: 'offer', sdp }));
    });
  }

  apply(id, signal) {
    if (signal.type === 'offer') {
      const peer = this.#make(id);
      this.#then(id, peer, async () => {
        await peer.pc.setRemoteDescription({ type: 'offer', sdp: signal.sdp });
        await peer.pc.setLocalDescription(await peer.pc.createAnswer());
        const { sdp } = peer.pc.localDescription;
        this.device.input((engine) => engine.sendRtc(id, { type: 'answer', sdp }));
      });
      return;
    }
    const peer = this.peers.get(id);
    if (!peer) return; // an answer or candidate for a link this page no longer has
    if (signal.type === 'answer') {
      this.#then(id, peer, () => peer.pc.setRemoteDescription({ type: 'answer', sdp: signal.sdp }));
    } else if (signal.type === 'candidate') {
      this.#then(id, peer, () => peer.pc.addIceCandidate({
        candidate: signal.candidate,
        ...(signal.sdpMid == null ? { sdpMLineIndex: 0 } : { sdpMid: signal.sdpMid }),
      }));
    }
  }

  // Puts a packet on the channel, or in its queue while the channel holds more than it should
  // (written as the channel's buffer runs low: a file's chunks never pile up in the browser);
  // one the queue cannot take is dropped, and the outbox (or the file's receiver) asks again.
  send(id, bytes) {
    const peer = this.peers.get(id);
    const channel = peer?.channel;
    if (channel?.readyState !== 'open') return;
    if (peer.queue.length === 0 && channel.bufferedAmount < CHANNEL_BUFFER_HIGH) {
      channel.send(bytes);
    } else if (peer.queued + bytes.length <= CHANNEL_QUEUE_LIMIT) {
      peer.queue.push(bytes);
      peer.queued += bytes.length;
    }
  }

  #drain(peer) {
    const { channel } = peer;
    while (peer.queue.length > 0 && channel.readyState === 'open' && channel.bufferedAmount < CHANNEL_BUFFER_HIGH) {
      const bytes = peer.queue.shift();
      peer.queued -= bytes.length;
      channel.send(bytes);
    }
  }

  close(id) {
    const peer = this.peers.get(id);
    if (!peer) return;
    this.peers.delete(id);
    peer.pc.close();
  }

  closeAll() {
    for (const id of [...this.peers.keys()]) this.close(id);
  }
}

// ---------------------------------------------------------------- files

// The device's files: their content in the origin's private file system, through a worker
// (web/files-worker.js) that does the engine's file commands in order and answers with inputs;
// chunks sealed and opened here with WebCrypto (the hardware's AES), as the engine's
// construction says (`chunkNonce`, `chunkAad`).
class Files {
  constructor(device) {
    this.device = device;
    this.tickets = new Map(); // ticket -> { resolve, reject }
    this.nextTicket = 0;
    this.keys = new Map(); // file id -> Promise<CryptoKey>
    this.started = null; // the worker, once a file needed it
    this.ready = null; // its start, done
  }

  // The worker, started at the first file operation: most page loads have none, and a worker's
  // start would take its share of the login's time.
  #worker() {
    if (!this.started) {
      this.started = new Worker('/static/files-worker.js');
      this.started.onmessage = ({ data }) => this.#reply(data);
      this.ready = this.#ask({ op: 'start', member: this.device.member });
    }
    return this.started;
  }

  // A request of the page's own, answered once the worker did it.
  #ask(message) {
    const ticket = this.nextTicket;
    this.nextTicket += 1;
    return new Promise((resolve, reject) => {
      this.tickets.set(ticket, { resolve, reject });
      this.#worker().postMessage({ ...message, ticket });
    });
  }

  // What chunk `index` of the file `seal` names is sealed with: the file's key (imported once)
  // and AES-GCM's parameters.
  async #cipher(seal, index) {
    let key = this.keys.get(seal.file);
    if (!key) {
      key = crypto.subtle.importKey('raw', seal.key, 'AES-GCM', false, ['encrypt', 'decrypt']);
      this.keys.set(seal.file, key);
    }
    const engine = await loadEngine();
    const params = {
      name: 'AES-GCM',
      iv: engine.chunkNonce(index),
      additionalData: engine.chunkAad(seal.file, index, seal.count),
    };
    return [params, await key];
  }

  // Chunks read for a peer, sealed (when the engine asked for it).
  async #sealed({ seal, pieces }) {
    if (!seal) return pieces;
    return Promise.all(pieces.map(async ({ index, bytes }) => {
      const [params, key] = await this.#cipher(seal, index);
      return { index, bytes: new Uint8Array(await crypto.subtle.encrypt(params, key, bytes)) };
    }));
  }

  // Opens a chunk received and hands the engine its content (or that it did not open).
  async #open({ peer, index, seal, sealed }) {
    let plain;
    try {
      const [params, key] = await this.#cipher(seal, index);
      plain = new Uint8Array(await crypto.subtle.decrypt(params, key, sealed));
    } catch {
      plain = undefined; // forged, or of another chunk or file: the engine refuses it
    }
    this.device.input((engine) => engine.handleFileOpened(peer, seal.file, index, plain));
  }

  #reply(data) {
    switch (data.op) {
      case 'done': {
        const waiting = this.tickets.get(data.ticket);
        this.tickets.delete(data.ticket);
        if (data.error) waiting?.reject(new Error(data.error));
        else waiting?.resolve();
        break;
      }
      case 'read':
        this.#sealed(data).then(
          (pieces) => this.device.input((engine) => {
            for (const { index, bytes } of pieces) engine.handleFileRead(data.peer, data.file, index, bytes);
          }),
          (error) => this.device.input((engine) => engine.handleFileFailed(data.file, `sealing failed: ${error?.message ?? error}`)),
        );
        break;
      case 'synced':
        this.device.input((engine) => engine.handleFileSynced(data.file, data.chunks));
        break;
      case 'failed':
        this.device.input((engine) => engine.handleFileFailed(data.file, data.reason));
        break;
      default:
    }
  }

  // One of the engine's file commands: `open_chunk` here, `read`, `write`, `sync` or `discard`
  // in the worker.
  command({ kind, ...command }) {
    if (kind === 'open_chunk') {
      this.#open(command);
      return;
    }
    if (kind === 'discard') this.keys.delete(command.file);
    this.#worker().postMessage({ op: kind, ...command });
  }

  // Stores a file the member picked under `id`, slice by slice (never whole in memory), feeding
  // each slice to `hasher`; `progress(bytes)` after each.
  async store(id, file, hasher, progress) {
    this.#worker();
    await this.ready;
    for (let offset = 0; offset < file.size; offset += FILE_SLICE) {
      const bytes = new Uint8Array(await file.slice(offset, offset + FILE_SLICE).arrayBuffer());
      hasher.update(bytes);
      await this.#ask({ op: 'write', file: id, offset, bytes });
      progress?.(Math.min(offset + FILE_SLICE, file.size));
    }
    await this.#ask({ op: 'sync', file: id, size: file.size });
  }

  discard(id) {
    this.#worker().postMessage({ op: 'discard', file: id });
  }

  // The file's content as a File the page can hand out (a download, a thumbnail): the worker
  // lets go of it first.
  async file(id) {
    this.#worker();
    await this.ready;
    await this.#ask({ op: 'release', file: id });
    const folder = await (await navigator.storage.getDirectory())
      .getDirectoryHandle(`tessera-files-${this.device.member}`);
    return (await folder.getFileHandle(id)).getFile();
  }

  stop() {
    this.started?.terminate();
  }
}

// ---------------------------------------------------------------- sessions

// Where this browser remembers which member's device it runs (to renew that member's session when
// a page opens with an ended one), and that the member logged out (then nothing renews it).
const DEVICE_MEMBER = 'tessera-device-member';
const SIGNED_OUT = 'tessera-signed-out';

// The member logged out on purpose: their device does not renew the session.
export function signedOut(out) {
  if (out) localStorage.setItem(SIGNED_OUT, '1');
  else localStorage.removeItem(SIGNED_OUT);
}

// What a refused renewal means, as the engine reads the server's answer: 'revoked',
// 'unavailable' (asked again) or 'refused'.
async function refusal(response) {
  const body = await response.json().catch(() => null);
  return (await loadEngine()).renewalOutcome(response.status, body?.error ?? null);
}

function post(path, body) {
  return fetch(`${API}${path}`, {
    method: 'POST',
    credentials: 'same-origin',
    headers: { 'Content-Type': 'application/json' },
    body,
  });
}

// Renews the member's session with the device key `engine` holds (no touch): the server sets the
// new cookie. Returns the outcome as the engine takes it: 'renewed', 'refused' (also when the member
// logged out), 'revoked' or 'unavailable'.
async function renewSession(engine) {
  if (localStorage.getItem(SIGNED_OUT)) return 'refused';
  try {
    const start = await post('/session/renew/start', '{}');
    if (!start.ok) return refusal(start);
    const { ceremony } = await start.json();
    const renewed = await post('/session/renew', engine.sessionRenewal(ceremony));
    return renewed.ok ? 'renewed' : refusal(renewed);
  } catch {
    return 'unavailable';
  }
}

// A page opened with an ended session: renews it with the device this browser keeps for the
// member it last ran, if any. True when the session was renewed.
export async function renewWithKeptDevice() {
  const member = localStorage.getItem(DEVICE_MEMBER);
  if (!member || localStorage.getItem(SIGNED_OUT)) return false;
  const engine = await loadEngine();
  const store = await DeviceStore.open(member);
  try {
    const stored = await store.load();
    if (!stored) return false;
    const device = engine.WebDevice.restore(window.location.origin, window.location.hostname, stored);
    return (await renewSession(device)) === 'renewed';
  } catch (error) {
    console.warn(`the kept device did not renew the session: ${error?.message ?? error}`);
    return false;
  } finally {
    store.close();
  }
}

// ---------------------------------------------------------------- the device

// What the page says when the engine stops the device, by its reason.
const STOPPED = {
  revoked: 'Your membership of this circle was revoked. This browser receives nothing more.',
  removed: "This browser was removed from the circle's group. It receives nothing more.",
  replaced: 'This device is open in another tab or window. Close this one, or reload it to use it here.',
  session_ended: "Your session ended and this browser's key could not renew it (you logged out, or the hardware key that certified this browser was removed from your account). Log in again with your key.",
};

// The engine's module (`/static/engine/tessera_web.js`), loaded once.
let enginePromise = null;
export function loadEngine() {
  enginePromise ??= import('/static/engine/tessera_web.js').then(async (engine) => {
    await engine.default();
    return engine;
  });
  return enginePromise;
}

// Why the device stopped: the engine's reason ('revoked', 'session_ended', 'removed', 'replaced'),
// or 'store' when this browser could not save.
export class DeviceStopped extends Error {
  constructor(reason, message) {
    super(message);
    this.reason = reason;
  }
}

// This browser as a member device. Dispatches `event` (an engine event: detail is the event),
// `status` (detail: {connected, retryInMs?}), `view` (something in the circle view changed) and
// `stopped` (detail: DeviceStopped).
export class Device extends EventTarget {
  static async start(store, engine) {
    const device = new Device(store, engine);
    localStorage.setItem(DEVICE_MEMBER, device.member);
    // Closing the links as the page goes lets peers see them end at once, not after ICE gives up.
    window.addEventListener('pagehide', () => {
      device.links.closeAll();
      device.socket?.close();
    });
    // Logging out in another tab ends this tab's session too, whichever session its socket
    // holds (tabs that renewed may hold different ones): the engine asks to renew, and a
    // signed-out browser refuses.
    window.addEventListener('storage', ({ key, newValue }) => {
      if (key === SIGNED_OUT && newValue) device.input((engine) => engine.handleSessionEnded());
    });
    await device.#fetchIceServers();
    device.#connect();
    await device.#settle();
    return device;
  }

  constructor(store, engine) {
    super();
    this.store = store;
    this.engine = engine;
    this.links = new Links(this);
    this.files = new Files(this);
    this.socket = null;
    this.connected = false;
    this.stopped = null;
    this.timer = null;
    this.reconnectTimer = null;
    this.failures = 0;
    this.directory = null; // the last circle directory, as text
    this.settling = false;
    this.again = false;
  }

  get id() {
    return this.engine.device();
  }

  get member() {
    return this.engine.member();
  }

  view() {
    return this.engine.view();
  }

  // The circle's root the engine pinned (base64url), once it has.
  root() {
    return this.engine.root() ?? null;
  }

  // Feeds the engine one input, then acts on what it wants.
  input(feed) {
    if (this.stopped) return;
    try {
      feed(this.engine);
    } catch (error) {
      console.warn(`engine input refused: ${error?.message ?? error}`);
    }
    this.#settle();
  }

  // Sends `text`, answering `replyTo` ({member, device, id}) when given; its id.
  sendText(text, replyTo = null) {
    const id = this.engine.sendText(text, replyTo ? JSON.stringify(replyTo) : undefined);
    this.#settle();
    return id;
  }

  // Reacts to, edits or deletes the message `target` ({member, device, id}): `change` is
  // {kind: 'react' | 'unreact', emoji}, {kind: 'edit', text} or {kind: 'delete'}. Its id.
  changeMessage(target, change) {
    const id = this.engine.changeMessage(JSON.stringify(target), JSON.stringify(change));
    this.#settle();
    return id;
  }

  setDisplayName(name) {
    this.engine.setDisplayName(name);
    this.#settle();
  }

  // Shares a file the member picked (a File): stored in this browser and hashed first
  // (`progress(bytes)` meanwhile), then offered to the circle. Its id.
  async sendFile(file, progress) {
    const engine = await loadEngine();
    const id = crypto.randomUUID();
    const hasher = new engine.ContentHasher();
    try {
      await this.files.store(id, file, hasher, progress);
      const sent = this.engine.sendFile(id, file.name, file.type, file.size, hasher.finish());
      this.#settle();
      return sent;
    } catch (error) {
      this.files.discard(id);
      throw error;
    }
  }

  // Deletes a file from this browser (its message stays).
  deleteFile(id) {
    const deleted = this.engine.deleteFile(id);
    this.#settle();
    return deleted;
  }

  // The files this device knows of (`[{id, name, size, mime, state, received, reason, …}]`).
  fileList() {
    return this.engine.files();
  }

  // A file held whole, as a File (for a download or a thumbnail).
  fileContent(id) {
    return this.files.file(id);
  }

  stop(stopped) {
    if (this.stopped) return;
    this.stopped = stopped;
    clearTimeout(this.timer);
    clearTimeout(this.reconnectTimer);
    this.links.closeAll();
    this.files.stop();
    this.socket?.close();
    this.dispatchEvent(new CustomEvent('stopped', { detail: stopped }));
  }

  // Takes the engine's turns until it has none: each turn's write is in IndexedDB before its
  // outputs are acted on (its asks go at once). One run at a time; input that arrives meanwhile
  // runs again.
  async #settle() {
    if (this.settling) {
      this.again = true;
      return;
    }
    this.settling = true;
    try {
      do {
        this.again = false;
        for (let turn = this.engine.nextTurn(); turn !== undefined && !this.stopped; turn = this.engine.nextTurn()) {
          // Asks (fetches, opening a link here) reveal nothing of the write: they go at once.
          for (const output of turn.asks) this.#act(output);
          if (turn.write) await this.store.save(turn.write);
          for (const output of turn.outputs) {
            if (this.stopped) break;
            this.#act(output);
          }
        }
      } while (this.again && !this.stopped);
    } catch (error) {
      // The store failed: stop rather than act on what could not be saved.
      this.stop(new DeviceStopped('store', `This browser could not save the circle's state: ${error?.message ?? error}`));
    } finally {
      this.settling = false;
    }
    this.#schedule();
    this.dispatchEvent(new Event('view'));
  }

  #schedule() {
    clearTimeout(this.timer);
    if (this.stopped) return;
    const wait = this.engine.pollTimeoutMs();
    if (wait === undefined) return;
    this.timer = setTimeout(() => this.input((engine) => engine.handleTimeout()), Math.max(0, wait));
  }

  #act(output) {
    switch (output.kind) {
      case 'send':
        // While the server is away the engine repeats what still matters.
        if (this.socket?.readyState === WebSocket.OPEN) this.socket.send(output.frame);
        break;
      case 'open':
        this.links.open(output.device);
        break;
      case 'rtc':
        this.links.apply(output.device, output.signal);
        break;
      case 'data':
        this.links.send(output.device, output.bytes);
        break;
      case 'close':
        this.links.close(output.device);
        break;
      case 'fetch_directory':
        this.#fetchDirectory();
        break;
      case 'fetch_ice_servers':
        this.#fetchIceServers();
        break;
      case 'renew_session':
        this.#renewSession();
        break;
      case 'read_history':
        this.#readHistory(output);
        break;
      case 'event':
        this.#take(output);
        break;
      case 'read':
      case 'open_chunk':
      case 'write':
      case 'sync':
      case 'discard':
        this.files.command(output);
        break;
      default:
        console.warn(`unknown engine output ${output.kind}`);
    }
  }

  #take(event) {
    this.dispatchEvent(new CustomEvent('event', { detail: event }));
    if (event.event === 'stopped') {
      this.stop(new DeviceStopped(event.reason, STOPPED[event.reason] ?? `This browser stopped (${event.reason}).`));
    }
  }

  // The engine asks for one fetch at a time, and again after a failure.
  async #fetchDirectory() {
    if (this.stopped) return;
    try {
      const response = await fetch(`${API}/members`, { credentials: 'same-origin' });
      if (response.status === 401) {
        this.input((engine) => engine.handleSessionEnded());
        return;
      }
      if (!response.ok) throw new Error(`the server answered ${response.status}`);
      const text = await response.text();
      this.directory = text;
      this.input((engine) => engine.handleDirectory(text));
    } catch (error) {
      const reason = error?.message ?? String(error);
      console.warn(`circle directory: ${reason}`);
      this.input((engine) => engine.handleDirectoryUnavailable(reason));
    }
  }

  // Short-lived TURN credentials when the server has a TURN server; none otherwise. Until they
  // come, links offer this browser's own addresses only. The engine says when to ask again.
  async #fetchIceServers() {
    if (this.stopped) return;
    let outcome = ['unavailable'];
    try {
      const response = await fetch(`${API}/turn`, { credentials: 'same-origin' });
      if (response.status === 404) {
        outcome = ['not_configured'];
      } else if (response.ok) {
        const { urls, username, credential, ttl_secs: ttl } = await response.json();
        this.links.iceServers = [{ urls, username, credential }];
        outcome = ['offered', ttl];
      }
    } catch {
      // No answer: asked again later.
    }
    this.input((engine) => engine.handleIceServers(...outcome));
  }

  #connect() {
    if (this.stopped) return;
    const url = new URL(`${API}/ws`, window.location.href);
    url.protocol = url.protocol === 'https:' ? 'wss:' : 'ws:';
    url.searchParams.set('device', this.id);
    const socket = new WebSocket(url);
    this.socket = socket;
    let opened = false;
    let openedAt = 0;
    socket.onopen = () => {
      opened = true;
      openedAt = Date.now();
      this.connected = true;
      this.dispatchEvent(new CustomEvent('status', { detail: { connected: true } }));
    };
    socket.onmessage = ({ data }) => {
      if (typeof data === 'string') this.input((engine) => engine.handleFrame(data));
    };
    socket.onclose = async () => {
      if (this.socket !== socket) return;
      this.socket = null;
      this.connected = false;
      this.input((engine) => engine.handleDisconnected());
      if (this.stopped) return;
      if (!opened && (await this.#sessionEnded())) return;
      // A server that accepts and then closes at once (refusing the device, or failing) must not
      // be asked again at once: the backoff starts afresh only after a long enough connection.
      if (opened && Date.now() - openedAt >= BACKOFF_RESET_MS) this.failures = 0;
      // Exponential backoff with full jitter.
      const ceiling = Math.min(BACKOFF_MAX_MS, BACKOFF_FIRST_MS * 2 ** this.failures);
      this.failures += 1;
      const retryInMs = Math.round(Math.random() * ceiling);
      this.dispatchEvent(new CustomEvent('status', { detail: { connected: false, retryInMs } }));
      this.reconnectTimer = setTimeout(() => this.#connect(), retryInMs);
    };
  }

  // Another device of this member asked for a page of the history this browser holds.
  async #readHistory({ peer, before, limit }) {
    try {
      const { rows, changes, older } = await this.store.historyPage(before, limit);
      this.input((engine) => engine.handleHistoryRead(peer, rows, changes, older));
    } catch (error) {
      // Not answered: the other device asks again when its link comes back.
      console.warn(`the history could not be read: ${error?.message ?? error}`);
    }
  }

  // The engine asks for a new session: renewed with the device key, then connected with it.
  async #renewSession() {
    if (this.stopped) return;
    const outcome = await renewSession(this.engine);
    this.input((engine) => engine.handleSessionRenewal(outcome));
    if (outcome !== 'renewed' || this.stopped) return;
    // Connect again at once with the new session; a socket still open holds the old one.
    clearTimeout(this.reconnectTimer);
    const old = this.socket;
    this.socket = null;
    if (old) {
      old.close();
      this.connected = false;
      this.input((engine) => engine.handleDisconnected());
    }
    this.failures = 0;
    this.#connect();
  }

  // A refused upgrade does not say why: asks the API whether the session is still good.
  async #sessionEnded() {
    try {
      const response = await fetch(`${API}/me`, { credentials: 'same-origin' });
      if (response.status === 401) {
        this.input((engine) => engine.handleSessionEnded());
        return true;
      }
    } catch {
      // The network is down: keep trying.
    }
    return false;
  }
}
