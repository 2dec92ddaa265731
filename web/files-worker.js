// The page's file IO, in a dedicated worker: each file of the circle is one file of the origin's
// private file system (OPFS), under a folder per member, named by its id, read and written at
// offsets through a synchronous access handle (which only a worker may open) and flushed when the
// engine asks for a sync. The engine's file commands come in order as messages; what they give
// goes back as messages: {op:'read', peer, file, seal, pieces: [{index, bytes}]} (the page seals
// the pieces with `seal`), {op:'synced', file, chunks},
// {op:'failed', file, reason}, and {op:'done', ticket} for the page's own requests.

const MAX_OPEN = 16;

let folder = null; // the member's folder
const open = new Map(); // file id -> FileSystemSyncAccessHandle, oldest first
let queue = Promise.resolve();

async function handle(file) {
  let access = open.get(file);
  if (access) {
    open.delete(file);
    open.set(file, access);
    return access;
  }
  if (open.size >= MAX_OPEN) release(open.keys().next().value);
  const entry = await folder.getFileHandle(file, { create: true });
  access = await entry.createSyncAccessHandle();
  open.set(file, access);
  return access;
}

function release(file) {
  const access = open.get(file);
  if (access) {
    access.close();
    open.delete(file);
  }
}

async function run(message) {
  switch (message.op) {
    case 'start':
      folder = await (await navigator.storage.getDirectory())
        .getDirectoryHandle(`tessera-files-${message.member}`, { create: true });
      return { op: 'done', ticket: message.ticket };
    case 'write': {
      const access = await handle(message.file);
      const written = access.write(message.bytes, { at: message.offset });
      if (written !== message.bytes.byteLength) throw new Error('the disk took only part of a write');
      return message.ticket === undefined ? null : { op: 'done', ticket: message.ticket };
    }
    case 'sync': {
      const access = await handle(message.file);
      if (message.size != null) access.truncate(message.size);
      access.flush();
      if (message.ticket !== undefined) return { op: 'done', ticket: message.ticket };
      return { op: 'synced', file: message.file, chunks: message.chunks };
    }
    case 'read': {
      const access = await handle(message.file);
      // Every chunk asked for in one reply: the page feeds them to its engine in one input.
      const pieces = [];
      for (let i = 0; i < message.count; i += 1) {
        const index = message.index + i;
        const offset = index * message.chunk;
        const length = Math.min(message.chunk, message.size - offset);
        const bytes = new Uint8Array(Math.max(0, length));
        const read = access.read(bytes, { at: offset });
        if (read !== bytes.length) throw new Error(`the stored file is shorter than ${message.size} bytes`);
        pieces.push({ index, bytes });
      }
      return { op: 'read', peer: message.peer, file: message.file, seal: message.seal, pieces };
    }
    case 'discard':
      release(message.file);
      await folder.removeEntry(message.file).catch(() => {});
      return null;
    case 'release':
      // The page reads the file itself (a download): the worker lets go of it.
      release(message.file);
      return { op: 'done', ticket: message.ticket };
    default:
      throw new Error(`unknown file operation ${message.op}`);
  }
}

self.onmessage = ({ data }) => {
  // One operation at a time, in the order they came: a sync covers every write before it.
  queue = queue.then(async () => {
    try {
      const replies = await run(data);
      for (const reply of [replies].flat()) {
        if (reply) self.postMessage(reply, (reply.pieces ?? []).map((piece) => piece.bytes.buffer));
      }
    } catch (error) {
      const reason = error?.message ?? String(error);
      if (data.ticket !== undefined) self.postMessage({ op: 'done', ticket: data.ticket, error: reason });
      else self.postMessage({ op: 'failed', file: data.file, reason });
    }
  });
};
