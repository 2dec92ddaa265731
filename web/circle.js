// The circle view: this browser as one of the member's devices. It makes the device once (one
// tap on the hardware key), then shows what the device does: members with their names, keys and
// presence, and the chat with each message's delivery state. The device itself is web/device.js.

import { api, busy, explain, keepRoot, rootOf, say, short } from '/static/app.js';
import { Device, DeviceStore, loadEngine } from '/static/device.js';

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

// The member's browser becomes a device: a fresh MLS device key, certified by their hardware key
// (the engine makes the WebAuthn request and checks the answer as every peer will).
async function makeDevice(engine, me, store) {
  const key = engine.WebDeviceKey.generate();
  const device = crypto.randomUUID();
  const options = JSON.parse(key.certificateRequest(window.location.hostname, me.member, device));
  const credential = await navigator.credentials.get({
    publicKey: PublicKeyCredential.parseRequestOptionsFromJSON(options),
  });
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
    this.#wireName();
    for (const entry of await this.store.history()) {
      try {
        this.#message(entry);
      } catch (error) {
        console.warn(`a stored message could not be shown: ${error?.message ?? error}`);
      }
    }
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
        this.device.sendText(text);
        input.value = '';
        input.focus();
      } catch (error) {
        say(`Not sent: ${error?.message ?? error}`, 'error');
      }
    });
  }

  #wireName() {
    const own = this.names.get(this.me.member);
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
        break;
      case 'delivered':
        this.#delivered(event.id, event.device, event.carried);
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
    const list = $('messages');
    const entries = await this.store.history();
    list.replaceChildren();
    for (const entry of entries) {
      try {
        this.#message(entry);
      } catch (error) {
        console.warn(`a stored message could not be shown: ${error?.message ?? error}`);
      }
    }
  }

  // Who sent a message this browser did not send: the member's name, or their own other device.
  #sender(member) {
    return member === this.me.member ? 'You (another device)' : this.#name(member);
  }

  // A message is known by its sending device and its id (the id alone is the sender's to choose).
  #message(entry) {
    const key = `${entry.device}/${entry.id}`;
    const list = $('messages');
    if ([...list.children].some((li) => li.dataset.key === key)) return;
    $('no-messages').hidden = true;
    const item = document.createElement('li');
    item.dataset.key = key;
    item.dataset.id = entry.id;
    item.dataset.member = entry.member;
    item.dataset.delivered = JSON.stringify(entry.delivered ?? []);
    item.className = entry.outgoing ? 'outgoing' : 'incoming';
    const who = document.createElement('span');
    who.className = 'who';
    who.textContent = entry.outgoing ? 'You' : this.#sender(entry.member);
    const at = document.createElement('time');
    const written = new Date(entry.sent_at);
    if (!Number.isNaN(written.getTime())) {
      at.dateTime = written.toISOString();
      at.textContent = written.toLocaleTimeString();
    }
    const text = document.createElement('p');
    text.className = 'text';
    text.textContent = entry.text;
    item.append(who, ' ', at, text);
    if (entry.outgoing) {
      const state = document.createElement('span');
      state.className = 'delivery';
      item.append(state);
    }
    list.append(item);
    this.#deliveryState(item);
    item.scrollIntoView?.({ block: 'nearest' });
  }

  #delivered(id, device, carried) {
    const key = `${this.device.id}/${id}`;
    const item = [...$('messages').children].find((li) => li.dataset.key === key);
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
    document.body.dataset.inGroup = String(view.in_group);
    if (!device.stopped) {
      document.body.dataset.device = view.in_group ? 'joined' : 'waiting';
      const online = device.connected ? 'online' : 'offline';
      $('device-state').textContent = view.in_group
        ? `In the circle's encrypted group (epoch ${view.epoch}), ${online}.`
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
  document.body.dataset.deviceId = device.id;
  const view = new CircleView(engine, me, store, device);
  await view.start();
}
