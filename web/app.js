// Tessera pages: WebAuthn through the browser's JSON helpers, and the account and admin views.
// Their state lives on the server behind /api/v1; this script only draws and asks. The circle
// view (circle.js) runs this browser as a member device.

const API = '/api/v1';
const statusLine = () => document.getElementById('status');

export function say(text, kind = 'info') {
  const line = statusLine();
  line.textContent = text;
  line.className = kind;
}

class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

export async function api(method, path, body) {
  const init = { method, credentials: 'same-origin', headers: {} };
  if (body !== undefined) {
    init.headers['Content-Type'] = 'application/json';
    init.body = JSON.stringify(body);
  }
  const response = await fetch(API + path, init);
  if (response.status === 204) return null;
  const data = await response.json().catch(() => null);
  if (!response.ok) {
    throw new ApiError(response.status, data?.error ?? 'http_' + response.status,
      data?.message ?? `The server answered ${response.status}.`);
  }
  return data;
}

// Explains a failed ceremony in words a member can act on. The engine refuses with a sentence.
export function explain(error) {
  if (error instanceof ApiError) return error.message;
  if (typeof error === 'string') return error.charAt(0).toUpperCase() + error.slice(1) + '.';
  switch (error?.name) {
    case 'NotAllowedError':
      // The browser says no more, on purpose: a key with no passkey here fails the same way.
      return 'No key answered for this circle: the request was cancelled or timed out, or the key used holds no passkey for this site (is it the key you enrolled here?). Insert your key, try again and touch it when it blinks.';
    case 'AbortError':
      return 'Cancelled: your key was not used.';
    case 'InvalidStateError':
      return 'This key is already enrolled here.';
    case 'SecurityError':
      return 'This page is not served from the address the server expects.';
    case 'Error':
      return error.message;
    case 'TypeError':
      return 'The server cannot be reached. Check your network and try again.';
    default:
      return `Something went wrong: ${error?.message ?? error}`;
  }
}

// Asks the member's key (`ask(signal)` makes the WebAuthn request with `signal`) with a way out:
// while the browser waits for the key, the status line says so, with a Cancel button that ends
// the wait at once instead of after the ceremony's minutes.
export async function askKey(ask) {
  const controller = new AbortController();
  const line = statusLine();
  const cancel = document.createElement('button');
  cancel.type = 'button';
  cancel.id = 'key-cancel';
  cancel.className = 'link';
  cancel.textContent = 'Cancel';
  cancel.addEventListener('click', () => controller.abort());
  line.className = 'info';
  line.replaceChildren('Waiting for your key: insert it, and touch it when it blinks. ', cancel);
  try {
    return await ask(controller.signal);
  } finally {
    if (line.contains(cancel)) say('');
  }
}

// The engine's module, for the pages that sign (web/device.js loads it once).
async function engine() {
  const { loadEngine } = await import('/static/device.js');
  return loadEngine();
}

const nowSecs = () => Math.floor(Date.now() / 1000);

function base64url(buffer) {
  let text = '';
  for (const byte of new Uint8Array(buffer)) text += String.fromCharCode(byte);
  return btoa(text).replace(/\+/g, '-').replace(/\//g, '_').replace(/=+$/, '');
}

// The circle's root this browser pinned for `member` (base64url), from the invitation link it
// joined with, the founder's own key, or what its device found.
export const rootOf = (member) => localStorage.getItem(`tessera.root.${member}`);
export const keepRoot = (member, root) => localStorage.setItem(`tessera.root.${member}`, root);

// What the member typed when a key was enrolled on this browser, which the server never keeps:
// the key's label (shown beside the key on the account page) and the name they chose for the
// circle (given to the group once this browser becomes a device).
export const keepLabel = (credential, label) => label && localStorage.setItem(`tessera.label.${credential}`, label);
export const labelOf = (credential) => localStorage.getItem(`tessera.label.${credential}`);
export const keepPendingName = (member, name) => name && localStorage.setItem(`tessera.name.${member}`, name);
export const pendingName = (member) => localStorage.getItem(`tessera.name.${member}`);
export const forgetPendingName = (member) => localStorage.removeItem(`tessera.name.${member}`);

// Registers a new key: `check(start)` may refuse the server's options before the key is made;
// `proofOf(start, passkey)` makes what admits the key (the admission or the endorsement, opaque to
// the server) between its creation and the finish.
async function registerKey(startPath, startBody, finishPath, { check = () => {}, proofOf }) {
  const start = await api('POST', startPath, startBody);
  check(start);
  const publicKey = PublicKeyCredential.parseCreationOptionsFromJSON(start.publicKey);
  const credential = await askKey((signal) => navigator.credentials.create({ publicKey, signal }));
  const json = credential.toJSON();
  const passkey = (await engine()).passkeyOf(json.rawId,
    base64url(credential.response.getPublicKey()), credential.response.getPublicKeyAlgorithm());
  const proof = await proofOf(start, passkey);
  const finished = await api('POST', finishPath, { ceremony: start.ceremony, credential: json, proof });
  return { finished, passkey, credential: json.rawId };
}

// Has one of the member's keys sign `request` (the JSON of `publicKey`) and returns the answer.
async function signWithKey(request) {
  const publicKey = PublicKeyCredential.parseRequestOptionsFromJSON(JSON.parse(request));
  const credential = await askKey((signal) => navigator.credentials.get({ publicKey, signal }));
  return JSON.stringify(credential.toJSON());
}

// Issues an invitation signed with the admin's key: for a newcomer with `role`, or (`recovers`) a
// member's new key. Returns the server's record and the whole link, which only this page sees.
async function issueInvitation(me, { role, ttlSecs, recovers }) {
  const root = rootOf(me.member);
  if (!root) {
    throw new Error('This browser does not know your circle\'s root yet: open the Circle page once, then issue the invitation.');
  }
  const wasm = await engine();
  const invitation = new wasm.WebInvitation(me.circle, me.member, role, ttlSecs, recovers ?? null, nowSecs());
  say('Touch your key to sign the invitation…');
  const statement = invitation.sign(await signWithKey(invitation.request(window.location.hostname)));
  const created = recovers
    ? await api('POST', `/members/${recovers}/recovery`, { ttl_secs: ttlSecs, statement })
    : await api('POST', '/invitations', { role, ttl_secs: ttlSecs, statement });
  const link = invitation.link(created.url, root);
  return { created, link, qr: wasm.qrSvg(link) };
}

// Carries out the admin's `decision` ('revoke' or 'promote') about `member` with a statement the
// admin's key signs: devices remove the member's devices, or take them as an admin, on that
// signature alone, never on the server's word.
async function decide(me, decision, member) {
  const wasm = await engine();
  // A revocation keeps what the member signed so far (their invitations, say): it needs the
  // directory.
  const directory = decision === 'revoke' ? JSON.stringify(await api('GET', '/members')) : null;
  const statement = new wasm.WebDecision(decision, me.circle, me.member, member, directory, nowSecs());
  say(`Touch your key to sign the ${decision === 'revoke' ? 'revocation' : 'promotion'}…`);
  const signed = statement.sign(await signWithKey(statement.request(window.location.hostname)));
  if (decision === 'revoke') {
    await api('DELETE', `/members/${member}`, { statement: signed });
  } else {
    await api('POST', `/members/${member}/promotion`, { statement: signed });
  }
}

async function logIn() {
  const start = await api('POST', '/login/start', {});
  const publicKey = PublicKeyCredential.parseRequestOptionsFromJSON(start.publicKey);
  const credential = await askKey((signal) => navigator.credentials.get({ publicKey, signal }));
  return api('POST', '/login/finish', { ceremony: start.ceremony, credential: credential.toJSON() });
}

export function busy(button, running) {
  button.disabled = running;
  button.setAttribute('aria-busy', String(running));
}

const when = (seconds) => (seconds ? new Date(seconds * 1000).toLocaleString() : 'never');
export const short = (id) => id.slice(0, 8);

function cell(row, text) {
  const td = document.createElement('td');
  td.textContent = text;
  row.append(td);
  return td;
}

function actionCell(row, label, action) {
  const td = document.createElement('td');
  const button = document.createElement('button');
  button.type = 'button';
  button.textContent = label;
  button.addEventListener('click', async () => {
    busy(button, true);
    try {
      await action();
    } catch (error) {
      say(explain(error), 'error');
    } finally {
      busy(button, false);
    }
  });
  td.append(button);
  row.append(td);
}

// Loads the caller. A session that ended is renewed by the device this browser keeps (no touch);
// without one, the caller goes to the login page.
async function whoAmI(renewed = false) {
  try {
    const me = await api('GET', '/me');
    document.getElementById('nav').hidden = false;
    document.getElementById('admin-link').hidden = me.role !== 'admin';
    return me;
  } catch (error) {
    if (error instanceof ApiError && error.status === 401) {
      const { renewWithKeptDevice } = await import('/static/device.js');
      if (!renewed && (await renewWithKeptDevice())) return whoAmI(true);
      window.location.assign('/');
      return null;
    }
    throw error;
  }
}

// Logging in or enrolling with a key lets the device renew the session again.
async function signedIn() {
  const { signedOut } = await import('/static/device.js');
  signedOut(false);
}

const pages = {
  login() {
    const button = document.getElementById('login');
    button.addEventListener('click', async () => {
      busy(button, true);
      say('Touch your key…');
      try {
        await logIn();
        await signedIn();
        window.location.assign('/circle');
      } catch (error) {
        say(explain(error), 'error');
      } finally {
        busy(button, false);
      }
    });
  },

  join() {
    const form = document.getElementById('enroll');
    if (!form) return;
    const token = decodeURIComponent(window.location.pathname.split('/')[2] ?? '');
    // The invitation's secret and the circle's root: never sent to the server.
    const fragment = window.location.hash.slice(1);
    form.addEventListener('submit', async (event) => {
      event.preventDefault();
      const button = document.getElementById('enroll-button');
      busy(button, true);
      try {
        const wasm = await engine();
        const plan = fragment ? JSON.parse(wasm.joinPlan(fragment)) : null;
        const label = document.getElementById('label').value;
        const { finished: granted, passkey, credential } = await registerKey(
          '/enroll/start', { token, label, member: plan?.member ?? null }, '/enroll/finish', {
            check(start) {
              say('Touch your key and enter its PIN…');
              if (!start.statement && !plan) return; // the operator's first link: the founder
              if (!plan) wasm.joinPlan(fragment); // throws: a signed invitation's link lost its fragment
              if (!start.statement) throw new Error('The server holds no signed invitation for this link: ask the admin for a new one.');
              wasm.checkStatement(fragment, start.statement, start.publicKey.user.id);
            },
            async proofOf(start, key) {
              if (!plan) return null;
              return JSON.parse(wasm.admission(fragment, start.statement, start.publicKey.user.id, key, nowSecs())).proof;
            },
          });
        const root = plan ? plan.root : wasm.rootOfKey(granted.member, passkey);
        keepRoot(granted.member, root);
        // The link's root must admit this newcomer: else the link was altered, or the server lies.
        const { members } = JSON.parse(wasm.circleMembers(JSON.stringify(await api('GET', '/members')),
          granted.circle, root, window.location.origin, window.location.hostname));
        if (!members.some((m) => m.member === granted.member)) {
          throw new Error('Your key is enrolled, but the circle named in this link does not admit you: the link was altered on its way, or the server is not honest. Ask the admin for a new link and tell them.');
        }
        keepLabel(credential, label);
        keepPendingName(granted.member, document.getElementById('display-name').value.trim());
        await signedIn();
        // The invitation is used up: keep the link out of the history.
        window.history.replaceState(null, '', '/account');
        window.location.assign('/account');
      } catch (error) {
        say(explain(error), 'error');
      } finally {
        busy(button, false);
      }
    });
  },

  async circle() {
    // The page's module and the engine load while the server says who this is (the engine's
    // failure, if any, is met in show()).
    const page = import('/static/circle.js');
    page.catch(() => {});
    engine().catch(() => {});
    const me = await whoAmI();
    if (!me) return;
    try {
      const circle = await page;
      await circle.show(me);
    } catch (error) {
      document.getElementById('device-state').textContent = 'The engine did not load in this browser.';
      throw error;
    }
  },

  async account() {
    const me = await whoAmI();
    if (!me) return;
    document.getElementById('member-id').textContent = me.member;
    document.getElementById('member-role').textContent = me.role;
    const body = document.querySelector('#keys tbody');
    const draw = async () => {
      const keys = await api('GET', '/me/passkeys');
      body.replaceChildren();
      for (const key of keys) {
        const row = document.createElement('tr');
        row.dataset.key = key.id;
        const label = labelOf(key.id);
        cell(row, `${label ? `${label} · ` : ''}${short(key.id)}… (${key.public_key.alg})`);
        cell(row, when(key.created_at));
        cell(row, when(key.last_used_at));
        actionCell(row, 'Revoke', async () => {
          // One of the member's keys signs the revocation: the devices the revoked key certified
          // leave the group on that signature, never on the server's word.
          const wasm = await engine();
          const directory = JSON.stringify(await api('GET', '/members'));
          const statement = wasm.WebDecision.revokeKey(me.circle, me.member, directory, key.id, nowSecs());
          say('Touch one of your keys to sign the revocation…');
          const signed = statement.sign(await signWithKey(statement.request(window.location.hostname)));
          await api('DELETE', `/me/passkeys/${encodeURIComponent(key.id)}`, { statement: signed });
          try {
            await draw();
          } catch (error) {
            // The sessions a revoked key opened end: this browser's, if it logged in with it.
            if (error instanceof ApiError && error.status === 401) {
              body.replaceChildren();
              say('Key revoked. This browser had logged in with it: log in again with another of your keys.');
              return;
            }
            throw error;
          }
          say('Key revoked: your devices remove the devices it certified from the circle.');
        });
        body.append(row);
      }
    };
    await draw();
    document.getElementById('add-key').addEventListener('submit', async (event) => {
      event.preventDefault();
      const button = document.getElementById('add-key-button');
      busy(button, true);
      say('Touch the new key and enter its PIN…');
      try {
        const label = document.getElementById('key-label').value;
        const existing = (await api('GET', '/me/passkeys')).map((k) => k.id);
        const { credential } = await registerKey('/me/passkeys/start', { label }, '/me/passkeys/finish', {
          async proofOf(_, passkey) {
            // One of the keys the member has already signs for the new one: the member swaps keys
            // (a USB port is often single), then says when the old key is in.
            const wasm = await engine();
            const request = wasm.endorsementRequest(window.location.hostname, me.member, passkey, existing);
            const step = document.getElementById('endorse');
            step.hidden = false;
            say('The new key is made. Insert one of your existing keys, then press Endorse.');
            await new Promise((resolve) => {
              document.getElementById('endorse-button').addEventListener('click', resolve, { once: true });
            });
            step.hidden = true;
            say('Touch your existing key to endorse the new one…');
            return wasm.endorsement(me.member, passkey, await signWithKey(request));
          },
        });
        keepLabel(credential, label);
        document.getElementById('key-label').value = '';
        await draw();
        say('Key added.');
      } catch (error) {
        say(explain(error), 'error');
      } finally {
        busy(button, false);
      }
    });
  },

  async admin() {
    const me = await whoAmI();
    if (!me) return;
    if (me.role !== 'admin') {
      say('Only admins of the circle can see this page.', 'error');
      return;
    }
    for (const section of document.querySelectorAll('.admin-only')) section.hidden = false;
    // Names live inside the group, never on the server: this browser's device knows them.
    const { DeviceStore } = await import('/static/device.js');
    const names = await DeviceStore.names(me.member).catch(() => ({}));
    const known = Object.keys(names).length > 0;
    document.getElementById('names-hint').hidden = known;
    const named = (id) => (names[id] ? `${names[id]} (${short(id)})` : `member ${short(id)}`);
    const pending = document.querySelector('#pending tbody');
    const members = document.querySelector('#members tbody');
    const showInvitation = ({ link, qr }) => {
      document.getElementById('new-invitation').hidden = false;
      document.getElementById('invitation-url').value = link;
      document.getElementById('invitation-qr').src =
        'data:image/svg+xml;charset=utf-8,' + encodeURIComponent(qr);
    };
    const draw = async () => {
      const [invitations, directory] = await Promise.all([
        api('GET', '/invitations'),
        api('GET', '/members'),
      ]);
      pending.replaceChildren();
      for (const invitation of invitations) {
        const row = document.createElement('tr');
        row.dataset.invitation = invitation.id;
        cell(row, invitation.kind === 'recovery' ? `recovery for ${named(invitation.member)}` : 'newcomer');
        cell(row, invitation.role);
        cell(row, when(invitation.expires_at));
        actionCell(row, 'Revoke', async () => {
          await api('DELETE', `/invitations/${invitation.id}`);
          await draw();
          say('Invitation revoked.');
        });
        pending.append(row);
      }
      members.replaceChildren();
      // Revoked members stay in the directory, keyless, with what revoked them: not listed here.
      for (const member of directory.filter((m) => !m.revocation)) {
        const row = document.createElement('tr');
        row.dataset.member = member.id;
        cell(row, member.id === me.member ? `${named(member.id)} (you)` : named(member.id));
        cell(row, member.role);
        cell(row, String(member.passkeys.length));
        if (member.id === me.member) {
          cell(row, '');
        } else {
          actionCell(row, 'Revoke', async () => {
            if (!window.confirm(`Revoke ${named(member.id)}? Their sessions end at once, and your key signs their removal from the group.`)) return;
            await decide(me, 'revoke', member.id);
            await draw();
            say(`${named(member.id)} is revoked.`);
          });
          if (member.role !== 'admin') {
            actionCell(row, 'Make admin', async () => {
              if (!window.confirm(`Make ${named(member.id)} an admin? They will invite, revoke and promote as you do.`)) return;
              await decide(me, 'promote', member.id);
              await draw();
              say(`${named(member.id)} is now an admin.`);
            });
          }
          actionCell(row, 'Recovery link', async () => {
            showInvitation(await issueInvitation(me, { role: 'member', ttlSecs: 86400, recovers: member.id }));
            await draw();
            say(`Recovery invitation for ${named(member.id)} issued.`);
          });
        }
        members.append(row);
      }
    };
    await draw();
    document.getElementById('invite').addEventListener('submit', async (event) => {
      event.preventDefault();
      const button = document.getElementById('invite-button');
      busy(button, true);
      try {
        const role = document.getElementById('invite-role').value;
        const ttl_secs = Number(document.getElementById('invite-ttl').value);
        showInvitation(await issueInvitation(me, { role, ttlSecs: ttl_secs }));
        await draw();
        say('Invitation issued.');
      } catch (error) {
        say(explain(error), 'error');
      } finally {
        busy(button, false);
      }
    });
  },
};

async function main() {
  document.getElementById('logout')?.addEventListener('click', async () => {
    try {
      // Said first: a device in another tab must not renew the session this ends.
      const { signedOut } = await import('/static/device.js');
      signedOut(true);
      await api('POST', '/logout');
    } finally {
      window.location.assign('/');
    }
  });
  if (!window.PublicKeyCredential?.parseCreationOptionsFromJSON) {
    say('This browser cannot use hardware keys with Tessera. Use a current Chrome, Edge, Firefox or Safari.', 'error');
  }
  const page = pages[document.body.dataset.page];
  try {
    await page?.();
  } catch (error) {
    say(explain(error), 'error');
  }
}

main();
