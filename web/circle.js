// The circle view: this browser as one of the member's devices. It makes the device once (one
// tap on the hardware key), then shows what the device does: members with their names, keys and
// presence, and the chat with each message's delivery state. The device itself is web/device.js.

import {
  api, askKey, busy, explain, forgetPendingName, keepRoot, pendingName, rootOf, say, short,
} from '/static/app.js';
import { Device, DeviceStore, loadEngine, shownRows } from '/static/device.js';

const $ = (id) => document.getElementById(id);

// Milliseconds from the start of the page's navigation to a moment of its start, kept on
// <body data-*-ms> for the benchmarks of the browser tests.
function mark(name) {
  document.body.dataset[`${name}Ms`] = String(Math.round(performance.now()));
}

function hex(bytes) {
  return Array.from(bytes, (b) => b.toString(16).padStart(2, '0')).join('');
}

function grouped(text) {
  return text.match(/.{1,4}/g).join(' ');
}

// A size for people: "3.1 MB".
function human(bytes) {
  const units = ['B', 'kB', 'MB', 'GB', 'TB'];
  let value = bytes;
  let unit = 0;
  while (value >= 1000 && unit < units.length - 1) {
    value /= 1000;
    unit += 1;
  }
  return unit === 0 ? `${bytes} B` : `${value.toFixed(1)} ${units[unit]}`;
}

// The reactions offered at a tap; any other emoji comes from the CLI or another client.
const REACTIONS = ['👍', '❤️', '😂', '😮', '😢', '🙏'];

// The day a message was written, as a separator says it ("Monday, 7 December 2026"); null for a
// time the page cannot show.
function dayOf(ms) {
  const at = new Date(ms);
  if (Number.isNaN(at.getTime())) return null;
  return at.toLocaleDateString(undefined, { weekday: 'long', year: 'numeric', month: 'long', day: 'numeric' });
}

// A message's text as nodes: text, with web addresses (http and https only) as links that open
// apart from this page and tell the site nothing of it.
function linked(text) {
  const nodes = [];
  let last = 0;
  for (const found of text.matchAll(/\bhttps?:\/\/[^\s<>"]+[^\s<>".,;:!?)\]'"]/g)) {
    let url;
    try {
      url = new URL(found[0]);
    } catch {
      continue;
    }
    if (url.protocol !== 'http:' && url.protocol !== 'https:') continue;
    nodes.push(text.slice(last, found.index));
    const link = document.createElement('a');
    link.href = url.href;
    link.textContent = found[0];
    link.target = '_blank';
    link.rel = 'noopener noreferrer nofollow';
    nodes.push(link);
    last = found.index + found[0].length;
  }
  nodes.push(text.slice(last));
  return nodes;
}

// Pictures up to this size get a thumbnail, made on this device.
const THUMBNAIL_MAX_BYTES = 64 * 1024 * 1024;
const THUMBNAIL_WIDTH = 240;

// The member's browser becomes a device: a fresh MLS device key, certified by their hardware key
// (the engine makes the WebAuthn request and checks the answer as every peer will).
async function makeDevice(engine, me, store) {
  const key = engine.WebDeviceKey.generate();
  const device = crypto.randomUUID();
  const options = JSON.parse(key.certificateRequest(window.location.hostname, me.member, device));
  const request = PublicKeyCredential.parseRequestOptionsFromJSON(options);
  const credential = await askKey((signal) => navigator.credentials.get({ publicKey: request, signal }));
  const certificate = key.certify(me.member, device, JSON.stringify(credential.toJSON()));
  const directory = await api('GET', '/members');
  const fingerprint = engine.verifyCertificate(
    certificate, JSON.stringify(directory), window.location.origin, window.location.hostname);
  const publicKey = key.publicKey();
  // The root pinned when this browser joined; a browser that only logged in finds it from the key
  // that certified it, at the first directory.
  const created = engine.WebDevice.create(window.location.origin, window.location.hostname, key,
    certificate, me.circle, rootOf(me.member));
  await store.saveIdentity({ publicKey, fingerprint });
  return created;
}

class CircleView {
  constructor(engine, me, store, device) {
    this.engine = engine;
    this.me = me;
    this.store = store;
    this.device = device;
    this.keys = new Map(); // member -> { role, keys }
    this.names = new Map(); // member -> display name, as of the last view
    this.others = 0; // the group's devices besides this one, as of the last view
    this.drawPending = false;
    this.transfers = new Map(); // file id -> { started, from }: what the rate is counted from
    this.items = new Map(); // `${device}/${id}` -> the message's item in the list
    this.lastDay = null; // the day of the last separator in the list
    this.composing = null; // { target, editing }: what the message box answers or edits
  }

  async start() {
    const { device } = this;
    device.addEventListener('event', ({ detail }) => this.#take(detail));
    device.addEventListener('status', ({ detail }) => this.#status(detail));
    device.addEventListener('view', () => this.#redraw());
    device.addEventListener('stopped', ({ detail }) => this.#stopped(detail));
    $('setup').hidden = true;
    $('chat').hidden = false;
    $('people').hidden = false;
    this.#view();
    this.#wireSend();
    this.#wireFiles();
    this.#wireName();
    this.#wireNotifications();
    this.#wireSearch();
    await this.#showHistory();
    // The roles and key fingerprints (the restored device's first "members changed" came before
    // this view listened).
    await this.#refreshKeys();
    this.#redraw();
  }

  #wireSend() {
    const form = $('send');
    const input = $('message');
    input.addEventListener('keydown', (event) => {
      if (event.key === 'Enter' && !event.shiftKey && !event.isComposing) {
        event.preventDefault();
        form.requestSubmit();
      }
    });
    form.addEventListener('submit', (event) => {
      event.preventDefault();
      const text = input.value.trim();
      if (!text || this.device.stopped) return;
      try {
        if (this.composing?.editing) {
          this.device.changeMessage(this.composing.target, { kind: 'edit', text });
        } else {
          this.device.sendText(text, this.composing?.target ?? null);
        }
        input.value = '';
        this.#compose(null);
        input.focus();
      } catch (error) {
        say(`Not sent: ${error?.message ?? error}`, 'error');
      }
    });
    $('compose-cancel').addEventListener('click', () => {
      if (this.composing?.editing) input.value = '';
      this.#compose(null);
      input.focus();
    });
    input.addEventListener('keydown', (event) => {
      if (event.key === 'Escape' && this.composing) {
        if (this.composing.editing) input.value = '';
        this.#compose(null);
      }
    });
  }

  // What the message box does next: answer a message, edit one of this member's, or (null) send
  // a message of its own. Said above the box, with a way to cancel.
  #compose(composing) {
    this.composing = composing;
    const bar = $('composing');
    bar.hidden = !composing;
    $('send-button').textContent = composing?.editing ? 'Save' : 'Send';
    if (!composing) return;
    const item = this.#item(composing.target);
    const excerpt = item?.querySelector('.text')?.textContent ?? '';
    $('composing-text').textContent = composing.editing
      ? 'Editing your message'
      : `Replying to ${this.#sender(composing.target.member, true)}: ${excerpt.slice(0, 80)}`;
    if (composing.editing) $('message').value = excerpt;
    $('message').focus();
  }

  // Files are shared from the attach button, by dropping them on the chat, or by pasting a
  // picture into the message box.
  #wireFiles() {
    const input = $('attach');
    $('attach-button').addEventListener('click', () => input.click());
    input.addEventListener('change', () => {
      for (const file of input.files) this.#share(file);
      input.value = '';
    });
    const chat = $('chat');
    chat.addEventListener('dragover', (event) => {
      if (![...event.dataTransfer.types].includes('Files')) return;
      event.preventDefault();
      chat.classList.add('dropping');
    });
    chat.addEventListener('dragleave', () => chat.classList.remove('dropping'));
    chat.addEventListener('drop', (event) => {
      chat.classList.remove('dropping');
      if (!event.dataTransfer.files.length) return;
      event.preventDefault();
      for (const file of event.dataTransfer.files) this.#share(file);
    });
    $('message').addEventListener('paste', (event) => {
      const files = [...(event.clipboardData?.files ?? [])];
      if (!files.length) return;
      event.preventDefault();
      for (const file of files) this.#share(file);
    });
  }

  async #share(file) {
    if (this.device.stopped) return;
    const line = $('share-progress') ?? (() => {
      const p = document.createElement('p');
      p.id = 'share-progress';
      p.className = 'hint';
      p.setAttribute('role', 'status');
      $('send').append(p);
      return p;
    })();
    const started = performance.now();
    const show = (bytes) => {
      line.textContent = `Encrypting and storing ${file.name}: ${this.#progressText(bytes, file.size, started)}`;
    };
    show(0);
    try {
      await this.device.sendFile(file, show);
      line.textContent = '';
    } catch (error) {
      line.textContent = '';
      say(`${file.name} not shared: ${error?.message ?? error}`, 'error');
    }
  }

  // "12.0 MB of 100.0 MB (12%), 8.1 MB/s, 11 s left".
  #progressText(done, total, started) {
    const share = total ? Math.floor((done * 100) / total) : 100;
    const seconds = Math.max(0.001, (performance.now() - started) / 1000);
    const rate = done / seconds;
    const left = rate > 0 && done < total ? `, ${Math.ceil((total - done) / rate)} s left` : '';
    return `${human(done)} of ${human(total)} (${share}%), ${human(Math.round(rate))}/s${left}`;
  }

  // The card of a file message: its name, size and type, then where it stands here.
  #fileCard(entry) {
    const card = document.createElement('div');
    card.className = 'file-card';
    card.dataset.file = entry.id;
    const name = document.createElement('p');
    name.className = 'file-name';
    name.textContent = entry.file.name;
    const meta = document.createElement('p');
    meta.className = 'file-meta';
    meta.textContent = [human(entry.file.size), entry.file.mime].filter(Boolean).join(' · ');
    const bar = document.createElement('progress');
    bar.max = Math.max(1, entry.file.size);
    bar.value = 0;
    const status = document.createElement('p');
    status.className = 'file-status';
    status.setAttribute('role', 'status');
    const download = document.createElement('button');
    download.type = 'button';
    download.className = 'download';
    download.textContent = `Download ${entry.file.name}`;
    download.hidden = true;
    download.addEventListener('click', () => this.#download(entry.id, entry.file.name));
    const remove = document.createElement('button');
    remove.type = 'button';
    remove.className = 'delete';
    remove.textContent = 'Delete from this browser';
    remove.hidden = true;
    remove.addEventListener('click', () => {
      // eslint-disable-next-line no-alert
      if (!window.confirm(`Delete ${entry.file.name} from this browser? The message stays; the circle's other devices keep their copies.`)) return;
      try {
        this.device.deleteFile(entry.id);
        this.#fileState(entry.id, { state: 'deleted' });
      } catch (error) {
        say(`${entry.file.name} not deleted: ${error?.message ?? error}`, 'error');
      }
    });
    card.append(name, meta, bar, status, download, remove);
    return card;
  }

  #card(id) {
    return document.querySelector(`.file-card[data-file="${CSS.escape(id)}"]`);
  }

  // Shows where a file stands here: `here` (a download, a thumbnail for a picture),
  // `receiving` (how far), `failed` (why).
  #fileState(id, { state, received = 0, reason = null }) {
    const card = this.#card(id);
    if (!card) return;
    const size = Number(card.querySelector('progress').max);
    card.dataset.state = state;
    const bar = card.querySelector('progress');
    const status = card.querySelector('.file-status');
    if (state === 'here') {
      bar.hidden = true;
      status.textContent = '';
      const download = card.querySelector('.download');
      if (download.hidden) {
        download.hidden = false;
        card.querySelector('.delete').hidden = false;
        this.#thumbnail(card, id);
      }
    } else if (state === 'deleted') {
      bar.hidden = true;
      for (const hide of card.querySelectorAll('.download, .delete, img.thumbnail')) hide.hidden = true;
      status.textContent = 'Not on this browser.';
    } else if (state === 'failed') {
      bar.hidden = true;
      status.textContent = `Not received: ${reason}`;
    } else {
      bar.value = received;
      const transfer = this.transfers.get(id);
      status.textContent = transfer
        ? `Receiving: ${this.#progressText(received - transfer.from, size - transfer.from, transfer.started)}`
        : `Waiting for a device that holds it (${human(received)} of ${human(size)} here)`;
    }
  }

  async #thumbnail(card, id) {
    const meta = card.querySelector('.file-meta').textContent;
    const size = Number(card.querySelector('progress').max);
    if (!/ · image\//.test(meta) || size > THUMBNAIL_MAX_BYTES) return;
    try {
      const file = await this.device.fileContent(id);
      const bitmap = await createImageBitmap(file, { resizeWidth: THUMBNAIL_WIDTH, resizeQuality: 'medium' });
      const canvas = document.createElement('canvas');
      canvas.width = bitmap.width;
      canvas.height = bitmap.height;
      canvas.getContext('2d').drawImage(bitmap, 0, 0);
      bitmap.close();
      const blob = await new Promise((resolve) => canvas.toBlob(resolve, 'image/png'));
      const img = document.createElement('img');
      img.className = 'thumbnail';
      img.alt = `Picture: ${card.querySelector('.file-name').textContent}`;
      img.src = URL.createObjectURL(blob);
      card.prepend(img);
    } catch (error) {
      console.warn(`no thumbnail: ${error?.message ?? error}`);
    }
  }

  async #download(id, name) {
    try {
      const file = await this.device.fileContent(id);
      const url = URL.createObjectURL(file);
      const link = document.createElement('a');
      link.href = url;
      link.download = name;
      document.body.append(link);
      link.click();
      link.remove();
      setTimeout(() => URL.revokeObjectURL(url), 60_000);
    } catch (error) {
      say(`${name} cannot be opened: ${error?.message ?? error}`, 'error');
    }
  }

  #fileProgress({ id, received, size }) {
    if (!this.transfers.has(id)) this.transfers.set(id, { started: performance.now(), from: received });
    // Whole only once received, checked and synced (`file_received`).
    this.#fileState(id, { state: 'receiving', received: Math.min(received, size) });
  }

  // This device sending a file: how far to each device, and who holds it whole.
  #fileSent({ id, device, sent, size, done }) {
    const card = this.#card(id);
    if (!card) return;
    const sending = JSON.parse(card.dataset.sending ?? '{}');
    sending[device] = done ? size : sent;
    card.dataset.sending = JSON.stringify(sending);
    const holders = Object.values(sending).filter((n) => n >= size).length;
    if (done) card.dataset.holders = String(holders);
    const status = card.querySelector('.file-status');
    const total = Object.keys(sending).length;
    status.textContent = holders === total
      ? `Sent: ${holders} ${holders === 1 ? 'device holds' : 'devices hold'} it`
      : `Sending to ${total - holders} ${total - holders === 1 ? 'device' : 'devices'}: ${human(Object.values(sending).reduce((a, b) => a + b, 0))} sent`;
  }

  #wireName() {
    const own = this.device.view().display_name;
    if (own) $('display-name').value = own;
    $('name-form').addEventListener('submit', (event) => {
      event.preventDefault();
      const name = $('display-name').value.trim();
      if (!name) return;
      try {
        this.device.setDisplayName(name);
        say('Name saved; the circle\'s devices learn it end-to-end encrypted.');
      } catch (error) {
        say(`Name not saved: ${error?.message ?? error}`, 'error');
      }
    });
  }

  #take(event) {
    switch (event.event) {
      case 'message':
        this.#message({ ...event, delivered: [] });
        if (!event.outgoing) this.#unseen(event);
        break;
      case 'delivered':
        this.#delivered(event.id, event.device, event.carried);
        break;
      case 'message_changed':
        this.#changed(event);
        break;
      case 'renamed':
        this.#notice(`${event.from} is now known as ${event.to}.`, event.member);
        break;
      case 'group_created':
        say('You started the circle\'s encrypted group.');
        break;
      case 'joined':
        say('This browser joined the circle\'s encrypted group.');
        break;
      case 'members_changed':
        this.#refreshKeys();
        break;
      case 'refused':
        console.warn(`refused a ${event.what}: ${event.reason}`);
        break;
      case 'distrusted':
        this.#distrusted(event);
        break;
      case 'keys_changed':
        this.#keysChanged(event);
        break;
      case 'history_progress':
        this.#historyProgress(event);
        break;
      case 'file_progress':
        this.#fileProgress(event);
        break;
      case 'file_received':
        this.transfers.delete(event.id);
        this.#fileState(event.id, { state: 'here' });
        break;
      case 'file_failed':
        this.#fileState(event.id, { state: 'failed', reason: event.reason });
        break;
      case 'file_sent':
        this.#fileSent(event);
        break;
      case 'session_renewed':
        // Nothing to say: the member stays logged in. Counted for the tests.
        document.body.dataset.sessionRenewals = String(Number(document.body.dataset.sessionRenewals ?? 0) + 1);
        break;
      default:
    }
  }

  // The device's view (converted from the engine once per redraw), and what the rows read of it.
  #view() {
    const view = this.device.view();
    this.names = new Map(Object.entries(view.names));
    this.others = view.devices.filter((d) => !d.own).length;
    return view;
  }

  #name(member) {
    return this.names.get(member) ?? `Member ${short(member)}`;
  }

  // A page of this member's history came from another of their devices: said, and the messages
  // shown again from the store in their order.
  async #historyProgress({ device, received, total, done }) {
    const line = $('history-progress');
    line.hidden = false;
    line.dataset.done = String(done);
    line.textContent = done
      ? `Your history from your device ${short(device)}: ${received} messages, all here.`
      : `Receiving your history from your device ${short(device)}: ${received} of ${total} messages…`;
    await this.#showHistory({ replace: true });
  }

  // The stored messages, as their changes (reactions, edits, deletions) leave them; with
  // `replace`, instead of those shown (swapped at once, so the list is never seen empty).
  async #showHistory({ replace = false } = {}) {
    const history = await this.store.history();
    if (replace) {
      $('messages').replaceChildren();
      this.items.clear();
      this.lastDay = null;
    }
    for (const entry of shownRows(this.engine, history)) {
      try {
        this.#message(entry);
      } catch (error) {
        console.warn(`a stored message could not be shown: ${error?.message ?? error}`);
      }
    }
  }

  // Who sent a message this browser did not send: the member's name, or their own other device
  // (`you`: simply "you", as in "Replying to you").
  #sender(member, you = false) {
    if (member === this.me.member) return you ? 'you' : 'You (another device)';
    return this.#name(member);
  }

  // The message's item in the list, by the history's key.
  #item({ device, id }) {
    return this.items.get(`${device}/${id}`) ?? null;
  }

  // Search over this browser's own history (all of it, as its changes leave it), by the engine's
  // rule: every word, any case and order. A result shows the message where it is in the list.
  #wireSearch() {
    $('search').addEventListener('submit', async (event) => {
      event.preventDefault();
      const words = $('search-words').value.trim();
      const list = $('search-results');
      list.replaceChildren();
      if (!words) {
        $('search-count').textContent = '';
        return;
      }
      const { rows, changes } = await this.store.history(Number.MAX_SAFE_INTEGER);
      const found = this.engine.searchMessages(words, rows, changes);
      $('search-count').textContent = found.length === 1 ? '1 message found.' : `${found.length} messages found.`;
      for (const message of found) {
        const item = document.createElement('li');
        const show = document.createElement('button');
        show.type = 'button';
        show.className = 'link';
        const at = new Date(message.sent_at);
        const when = Number.isNaN(at.getTime()) ? '' : `${at.toLocaleString()} · `;
        const from = message.member === this.me.member ? 'You' : this.#name(message.member);
        show.textContent = `${when}${from}: ${message.file ? message.file.name : message.text.slice(0, 120)}`;
        show.addEventListener('click', () => {
          const shown = this.#item(message);
          if (!shown) {
            say('That message is older than what this page shows.');
            return;
          }
          shown.scrollIntoView({ block: 'center' });
          shown.classList.add('found');
          setTimeout(() => shown.classList.remove('found'), 2_000);
        });
        item.append(show);
        list.append(item);
      }
    });
  }

  // New messages while the tab is in the background: counted in the tab's title, and told as a
  // notification when the member allowed them. Back in front, the count goes.
  #wireNotifications() {
    this.title = document.title;
    this.unread = 0;
    document.addEventListener('visibilitychange', () => {
      if (document.visibilityState === 'visible') {
        this.unread = 0;
        document.title = this.title;
      }
    });
    const button = $('notify');
    const state = $('notify-state');
    const show = () => {
      const permission = window.Notification?.permission ?? 'unsupported';
      button.hidden = permission !== 'default';
      state.textContent = {
        granted: 'New messages are told while this tab is in the background.',
        denied: 'Notifications are blocked for this site: the tab\'s title still counts new messages. Allow them in the browser\'s site settings to be told.',
        unsupported: 'This browser shows no notifications: the tab\'s title counts new messages.',
      }[permission] ?? '';
    };
    // Asked for only when the member presses the button, never on arrival.
    button.addEventListener('click', async () => {
      await window.Notification?.requestPermission();
      show();
    });
    show();
  }

  #unseen(event) {
    if (document.visibilityState === 'visible') return;
    this.unread += 1;
    document.title = `(${this.unread}) ${this.title}`;
    if (window.Notification?.permission !== 'granted') return;
    const from = this.#sender(event.member);
    const body = event.file ? `Shared ${event.file.name}` : event.text.slice(0, 140);
    const note = new Notification(from, { body, tag: 'tessera-messages' });
    note.addEventListener('click', () => {
      window.focus();
      note.close();
    });
  }

  // Something about the circle said in the chat's flow, such as a member's new name.
  #notice(text, member) {
    const item = document.createElement('li');
    item.className = 'notice';
    item.dataset.member = member;
    item.textContent = text;
    $('messages').append(item);
    item.scrollIntoView?.({ block: 'nearest' });
  }

  // A message was reacted to, edited or deleted: shown again as the store now holds it.
  async #changed(change) {
    const { target } = change;
    if (!this.#item(target)) return;
    const stored = await this.store.message(target.device, target.id);
    if (!stored) return;
    const [entry] = shownRows(this.engine, stored);
    const item = this.#item(target);
    if (item) this.#fill(item, entry);
    if (entry.deleted && this.composing?.target.id === target.id
      && this.composing.target.device === target.device) this.#compose(null);
  }

  // A message is known by its sending device and its id (the id alone is the sender's to choose).
  #message(entry) {
    const key = `${entry.device}/${entry.id}`;
    const list = $('messages');
    if (this.items.has(key)) return;
    $('no-messages').hidden = true;
    const day = dayOf(entry.sent_at);
    if (day && day !== this.lastDay) {
      this.lastDay = day;
      const separator = document.createElement('li');
      separator.className = 'day';
      separator.textContent = day;
      list.append(separator);
    }
    const item = document.createElement('li');
    this.items.set(key, item);
    item.dataset.key = key;
    item.dataset.id = entry.id;
    item.dataset.member = entry.member;
    item.dataset.delivered = JSON.stringify(entry.delivered ?? []);
    item.className = entry.outgoing ? 'outgoing' : 'incoming';
    this.#fill(item, entry);
    list.append(item);
    this.#deliveryState(item);
    if (entry.file && !entry.deleted) {
      const known = this.device.fileList().find((f) => f.id === entry.id);
      this.#fileState(entry.id, known ?? { state: 'deleted' });
    }
    item.scrollIntoView?.({ block: 'nearest' });
  }

  // A message's contents, as its changes leave it (`edited`, `deleted`, `reactions` from the
  // engine's `showMessages`; a new message has none).
  #fill(item, entry) {
    const target = { member: entry.member, device: entry.device, id: entry.id };
    const who = document.createElement('span');
    who.className = 'who';
    who.textContent = entry.outgoing ? 'You' : this.#sender(entry.member);
    const at = document.createElement('time');
    const written = new Date(entry.sent_at);
    if (!Number.isNaN(written.getTime())) {
      at.dateTime = written.toISOString();
      at.textContent = written.toLocaleTimeString();
    }
    const parts = [who, ' ', at];
    if (entry.reply_to && !entry.deleted) parts.push(this.#quote(entry.reply_to));
    item.dataset.deleted = String(Boolean(entry.deleted));
    if (entry.deleted) {
      item.classList.remove('file');
      const text = document.createElement('p');
      text.className = 'text deleted';
      text.textContent = 'This message was deleted.';
      parts.push(text);
    } else if (entry.file) {
      item.classList.add('file');
      parts.push(this.#card(entry.id) ?? this.#fileCard(entry));
    } else {
      const text = document.createElement('p');
      text.className = 'text';
      text.append(...linked(entry.text));
      parts.push(text);
      if (entry.edited) {
        const edited = document.createElement('span');
        edited.className = 'edited';
        edited.textContent = '(edited)';
        parts.push(edited);
      }
    }
    if (entry.reactions?.length) parts.push(this.#reactions(target, entry.reactions));
    if (!entry.deleted) parts.push(this.#actions(target, entry));
    const state = item.querySelector('.delivery') ?? (entry.outgoing ? document.createElement('span') : null);
    if (state) {
      state.className = 'delivery';
      parts.push(state);
    }
    item.replaceChildren(...parts);
  }

  // The message a reply answers, quoted from this browser's list (or said to be elsewhere).
  #quote(to) {
    const quote = document.createElement('blockquote');
    quote.className = 'quote';
    const quoted = this.#item(to);
    const excerpt = quoted?.querySelector('.text')?.textContent;
    quote.textContent = excerpt === undefined
      ? `↪ ${this.#sender(to.member, true)}: a message not on this browser`
      : `↪ ${this.#sender(to.member, true)}: ${excerpt.slice(0, 120)}`;
    return quote;
  }

  // The reactions on a message: one button each, pressed when this member is among them (a
  // press takes it back), naming who reacted.
  #reactions(target, reactions) {
    const row = document.createElement('div');
    row.className = 'reactions';
    for (const { emoji, members } of reactions) {
      const mine = members.includes(this.me.member);
      const button = document.createElement('button');
      button.type = 'button';
      button.className = 'reaction';
      button.setAttribute('aria-pressed', String(mine));
      button.dataset.emoji = emoji;
      button.textContent = `${emoji} ${members.length}`;
      button.title = members.map((m) => (m === this.me.member ? 'You' : this.#name(m))).join(', ');
      button.addEventListener('click', () => this.#change(target, { kind: mine ? 'unreact' : 'react', emoji }));
      row.append(button);
    }
    return row;
  }

  // What can be done to a message: answer it, react to it, and for this member's own messages
  // edit (not a file) or delete it.
  #actions(target, entry) {
    const bar = document.createElement('div');
    bar.className = 'actions';
    const action = (name, label, run) => {
      const button = document.createElement('button');
      button.type = 'button';
      button.className = `action ${name}`;
      button.textContent = label;
      button.addEventListener('click', run);
      bar.append(button);
      return button;
    };
    action('reply', 'Reply', () => this.#compose({ target }));
    const picker = document.createElement('span');
    picker.className = 'picker';
    picker.hidden = true;
    const react = action('react', 'React', () => {
      picker.hidden = !picker.hidden;
      react.setAttribute('aria-expanded', String(!picker.hidden));
    });
    react.setAttribute('aria-expanded', 'false');
    for (const emoji of REACTIONS) {
      const button = document.createElement('button');
      button.type = 'button';
      button.className = 'pick';
      button.textContent = emoji;
      button.setAttribute('aria-label', `React with ${emoji}`);
      button.addEventListener('click', () => {
        picker.hidden = true;
        this.#change(target, { kind: 'react', emoji });
      });
      picker.append(button);
    }
    bar.append(picker);
    if (entry.member === this.me.member) {
      if (!entry.file) action('edit', 'Edit', () => this.#compose({ target, editing: true }));
      action('delete', 'Delete', () => {
        // Said plainly: the devices forget it, people may have read or copied it.
        if (window.confirm('Delete this message for everyone? The circle\'s devices forget its text; anyone who already read it may remember or have copied it.')) {
          this.#change(target, { kind: 'delete' });
        }
      });
    }
    return bar;
  }

  #change(target, change) {
    try {
      this.device.changeMessage(target, change);
    } catch (error) {
      say(`Not changed: ${error?.message ?? error}`, 'error');
    }
  }

  #delivered(id, device, carried) {
    const item = this.#item({ device: this.device.id, id });
    if (!item) return;
    const delivered = JSON.parse(item.dataset.delivered);
    if (!delivered.includes(device)) delivered.push(device);
    item.dataset.delivered = JSON.stringify(delivered);
    if (carried) item.dataset.carried = 'true';
    this.#deliveryState(item);
  }

  // Queued until a peer device holds it; delivered once every other device of the group does.
  #deliveryState(item) {
    const state = item.querySelector('.delivery');
    if (!state) return;
    const delivered = JSON.parse(item.dataset.delivered).length;
    const { others } = this;
    if (delivered === 0) {
      item.dataset.state = 'queued';
      state.textContent = 'Queued: waiting for the circle\'s devices';
    } else if (delivered >= others) {
      item.dataset.state = 'delivered';
      state.textContent = 'Delivered';
    } else {
      item.dataset.state = 'partly';
      state.textContent = `Delivered to ${delivered} of ${others} devices`;
    }
    // Another device carried it to some of them while this one was away.
    if (delivered > 0 && item.dataset.carried === 'true') state.textContent += ' (carried by another device)';
  }

  #status({ connected, retryInMs }) {
    if (connected) {
      say('');
    } else {
      say(`The server cannot be reached; retrying in ${Math.max(1, Math.round(retryInMs / 1000))} s. Links to other devices keep working.`, 'error');
    }
    this.#redraw();
  }

  #stopped(stopped) {
    // Said once, in the status line; the device line offers the way back when there is one.
    say(stopped.message, 'error');
    document.body.dataset.device = 'stopped';
    document.body.dataset.stopped = stopped.reason;
    const state = $('device-state');
    state.textContent = 'This browser stopped. ';
    if (stopped.reason === 'session_ended') {
      const login = document.createElement('a');
      login.id = 'log-in-again';
      login.href = '/';
      login.textContent = 'Log in again';
      state.append(login);
    }
    $('send-button').disabled = true;
    $('attach-button').disabled = true;
    $('message').disabled = true;
    $('name-button').disabled = true;
  }

  // What the server lists that nothing signed admits: said once, loudest for one's own account.
  #distrusted(event) {
    const list = $('warnings');
    const key = `${event.member}/${event.key ?? ''}/${event.reason}`;
    if ([...list.children].some((li) => li.dataset.key === key)) return;
    const item = document.createElement('li');
    item.dataset.key = key;
    item.dataset.member = event.member;
    item.className = event.own ? 'own' : '';
    if (event.own && event.key) {
      item.textContent = `A key was added to your account that you never endorsed (${short(event.key)}…): ${event.reason}. Your devices ignore it; if you did not add it, tell an admin.`;
    } else {
      const what = event.key ? `a key of ${this.#name(event.member)}` : this.#name(event.member);
      item.textContent = `The server lists ${what}, but ${event.reason}: ignored.`;
    }
    list.append(item);
    $('warnings-section').hidden = false;
  }

  // A member's keys changed since this device pinned them: loudest for one's own account.
  #keysChanged(event) {
    const changes = [...event.added.map((k) => `added ${short(k)}…`), ...event.removed.map((k) => `removed ${short(k)}…`)].join(', ');
    const item = document.createElement('li');
    item.dataset.member = event.member;
    item.className = event.own ? 'own' : '';
    item.textContent = event.own
      ? `The keys of your account changed (${changes}). If it was not you, one of your keys is in someone else's hands: tell an admin.`
      : `The keys of ${this.#name(event.member)} changed (${changes}): compare the safety number with them.`;
    $('warnings').append(item);
    $('warnings-section').hidden = false;
  }

  async #refreshKeys() {
    try {
      const root = this.device.root();
      if (root && root !== rootOf(this.me.member)) keepRoot(this.me.member, root);
      const { members, safety } = JSON.parse(this.engine.circleMembers(JSON.stringify(await api('GET', '/members')),
        this.me.circle, root, window.location.origin, window.location.hostname));
      this.keys = new Map(members.map((m) => [m.member, m]));
      if (root) $('root').textContent = `Circle root: ${grouped(root)}`;
      if (safety && safety !== $('safety-words').textContent) {
        $('safety-words').textContent = safety;
        $('safety-qr').src = 'data:image/svg+xml;charset=utf-8,' + encodeURIComponent(this.engine.qrSvg(safety));
        $('safety').hidden = false;
      }
      this.#redraw();
    } catch {
      // Shown again at the next change.
    }
  }

  #redraw() {
    if (this.drawPending) return;
    this.drawPending = true;
    requestAnimationFrame(() => {
      this.drawPending = false;
      this.#draw();
    });
  }

  #draw() {
    const { device } = this;
    const view = this.#view();
    // For the admin panel, which names members from what this device knows.
    const names = JSON.stringify(view.names);
    if (names !== this.savedNames) {
      this.savedNames = names;
      this.store.saveNames(view.names).catch((error) => console.warn(`names not kept: ${error?.message ?? error}`));
    }
    document.body.dataset.inGroup = String(view.in_group);
    if (!device.stopped) {
      document.body.dataset.device = view.in_group ? 'joined' : 'waiting';
      const online = device.connected ? 'online' : 'offline';
      $('epoch').textContent = view.in_group ? `The group's MLS epoch: ${view.epoch}.` : '';
      $('device-state').textContent = view.in_group
        ? `In the circle's encrypted group, ${online}.`
        : `Waiting for one of the circle's online devices to add this browser to the group (${online})…`;
      // What the devices linked now hold that has not reached this browser: on its way, or waiting
      // for a device that can carry it.
      const missing = $('missing');
      missing.hidden = !view.missing;
      missing.textContent = view.missing === 1
        ? '1 message that another device holds has not reached this browser yet.'
        : `${view.missing} messages that other devices hold have not reached this browser yet.`;
      const dropped = $('dropped');
      dropped.hidden = !view.dropped;
      dropped.textContent = `This browser dropped ${view.dropped} of the circle's messages it kept for others (its limit) before every device was known to have them: a device away that long may miss them.`;
      $('send-button').disabled = !view.in_group;
      $('attach-button').disabled = !view.in_group;
    }
    const members = new Map();
    for (const d of view.devices) {
      if (!members.has(d.member)) members.set(d.member, []);
      members.get(d.member).push(d);
    }
    const list = $('members');
    list.replaceChildren();
    for (const [member, devices] of members) {
      const item = document.createElement('li');
      item.dataset.member = member;
      item.dataset.online = String(devices.some((d) => d.online || d.linked));
      const name = document.createElement('strong');
      name.textContent = member === this.me.member ? `${this.#name(member)} (you)` : this.#name(member);
      item.append(name);
      const info = this.keys.get(member);
      if (info) {
        item.append(` · ${info.role}`);
        const by = document.createElement('span');
        by.className = 'invited-by';
        by.textContent = info.invited_by ? ` · invited by ${this.#name(info.invited_by)}` : ' · founded the circle';
        item.append(by);
      }
      for (const key of info?.keys ?? []) {
        const fp = document.createElement('code');
        fp.className = 'fingerprint';
        fp.title = 'Fingerprint of a hardware key of this member';
        fp.textContent = key;
        item.append(document.createElement('br'), 'Key ', fp);
      }
      const states = document.createElement('ul');
      for (const d of devices) {
        const row = document.createElement('li');
        row.dataset.device = d.device;
        row.dataset.linked = String(d.linked);
        const where = d.own ? 'this browser' : `device ${short(d.device)}`;
        // Presence comes from the server: unknown while it cannot be reached; links are known.
        let presence;
        if (d.own) presence = device.connected ? 'online' : 'offline (server unreachable)';
        else if (d.linked) presence = 'online, linked peer to peer';
        else if (!device.connected) presence = 'unknown while the server is unreachable';
        else presence = d.online ? 'online' : 'offline';
        row.textContent = `${where}: ${presence}${d.waiting ? `, ${d.waiting} waiting for it` : ''}`;
        states.append(row);
      }
      item.append(states);
      list.append(item);
    }
    for (const item of $('messages').querySelectorAll('li.outgoing')) this.#deliveryState(item);
    for (const item of $('messages').querySelectorAll('li.incoming .who')) {
      item.textContent = this.#sender(item.closest('li').dataset.member);
    }
  }
}

// Runs the circle page for the logged-in member `me`.
export async function show(me) {
  const engine = await loadEngine();
  mark('engineReady');
  const info = JSON.parse(engine.engineInfo());
  $('engine-state').textContent = `Engine ${info.version} ready (${info.ciphersuite}).`;
  // One tab at a time runs this member's device in this browser.
  if (navigator.locks) {
    await navigator.locks.request(`tessera-device-${me.member}`, { ifAvailable: true }, async (lock) => {
      if (!lock) {
        $('device-state').textContent = 'This browser already runs your device in another tab or window. Use that one.';
        document.body.dataset.device = 'elsewhere';
        return;
      }
      mark('locked');
      await run(engine, me);
      await new Promise(() => {}); // held for as long as the page lives
    });
  } else {
    await run(engine, me);
  }
}

// The saved device cannot be read: says why, and offers to delete it and start again.
async function offerStartOver(me, store, error) {
  document.body.dataset.device = 'broken';
  $('device-state').textContent = 'This browser\'s device cannot be read.';
  $('broken-reason').textContent = String(error?.message ?? error);
  $('broken').hidden = false;
  const button = $('start-over');
  button.focus();
  await new Promise((resolve) => {
    button.addEventListener('click', async () => {
      busy(button, true);
      try {
        store.close();
        await DeviceStore.destroy(me.member);
        resolve();
      } catch (failure) {
        say(`This browser did not delete the device: ${failure?.message ?? failure}`, 'error');
        busy(button, false);
      }
    });
  });
  window.location.reload();
}

async function run(engine, me) {
  const store = await DeviceStore.open(me.member);
  const stored = await store.load();
  let webDevice;
  if (stored) {
    try {
      webDevice = engine.WebDevice.restore(window.location.origin, window.location.hostname, stored);
    } catch (error) {
      await offerStartOver(me, store, error);
      return;
    }
  } else {
    webDevice = await new Promise((resolve) => {
      $('device-state').textContent = 'This browser is not one of your devices yet.';
      document.body.dataset.device = 'new';
      $('setup').hidden = false;
      const button = $('certify');
      button.disabled = false;
      // The name typed at enrollment, if this browser enrolled the key; the member may change it.
      $('setup-name').value = pendingName(me.member) ?? '';
      button.focus();
      button.addEventListener('click', async () => {
        busy(button, true);
        say('Touch your key…');
        try {
          resolve(await makeDevice(engine, me, store));
          say('This browser is now one of your devices.');
          return; // the button stays disabled: this browser is a device now
        } catch (error) {
          say(explain(error), 'error');
        }
        busy(button, false);
      });
    });
  }
  mark('deviceReady');
  const identity = await store.identity();
  if (identity) {
    $('device-key').textContent = grouped(hex(identity.publicKey));
    $('certified').textContent = `This browser's key is certified by your hardware key ${identity.fingerprint}.`;
  }
  const device = await Device.start(store, webDevice);
  mark('deviceStarted');
  // The name chosen while this browser was no device goes to the group once it is one.
  const chosen = $('setup-name').value.trim();
  if (!stored && chosen) {
    try {
      device.setDisplayName(chosen);
      forgetPendingName(me.member);
    } catch (error) {
      say(`Your name was not saved: ${error?.message ?? error}. Set it under Members.`, 'error');
    }
  }
  document.body.dataset.deviceId = device.id;
  const view = new CircleView(engine, me, store, device);
  await view.start();
}
