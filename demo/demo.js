// The demo page: keeps a model of one room from its event stream and renders
// it. All DOM text is set with textContent, never as HTML.

import { followRoom } from './metacast-client.js';

const TOKEN_KEY = 'metacast.demo.token';
const ROOM_KEY = 'metacast.demo.room';
const LOG_LIMIT = 50;

const $ = (id) => document.getElementById(id);
const json = (value) => JSON.stringify(value, null, 2);

let stream = null;
let connects = 0;   // streams opened, shown as data-connects on #status (for tests)
let token = '';
let room = '';
/** What the page knows about the room, kept current by the events. */
let state = emptyState();
/** The version the editor's text was loaded from: the save's If-Match. */
let editorVersion = null;
let editorDirty = false;

function emptyState() {
  return { metadata: null, version: null, session: null, occupants: new Map() };
}

// ---- events -> state ------------------------------------------------------

const handlers = {
  sync(d) {
    state.metadata = d.metadata;
    state.version = d.version;
    state.session = d.session && { ...d.session };
    state.occupants = new Map(d.occupants.map((o) => [o.id, o]));
  },
  'room.metadata.updated'(d) { state.metadata = d.metadata; state.version = d.version; },
  'room.metadata.deleted'(d) { state.metadata = {}; state.version = d.version; },
  'session.started'(d) {
    state.session = { id: d.session_id, started_at: d.at, occupancy: d.occupancy, metadata: {}, version: 0 };
  },
  'session.ended'() { state.session = null; },
  'session.metadata.updated'(d) {
    if (state.session && state.session.id === d.session_id) {
      state.session.metadata = d.metadata;
      state.session.version = d.version;
    }
  },
  'presence.joined'(d) {
    state.occupants.set(d.connection_id, { id: d.connection_id, owner: d.owner, metadata: d.metadata, joined_at: d.at });
    if (state.session) state.session.occupancy = d.occupancy;
  },
  'presence.left'(d) {
    state.occupants.delete(d.connection_id);
    if (state.session) state.session.occupancy = d.occupancy;
  },
  'connection.metadata.updated'(d) {
    const occupant = state.occupants.get(d.connection_id);
    if (occupant) occupant.metadata = d.metadata;
  },
  'room.cleared'() { state.session = null; state.occupants.clear(); },
  'room.deleted'() {
    state.metadata = {};
    state.session = null;
    state.occupants.clear();
    showNotice('The room was deleted; its stream has ended.');
  },
};

function onEvent(type, data, id) {
  handlers[type]?.(data);
  logEvent(type, data, id);
  render(type);
}

// ---- rendering --------------------------------------------------------------

function render(type) {
  const known = state.version !== null;
  $('room-name').textContent = room || '—';
  $('room-version').textContent = known ? String(state.version) : '—';
  $('room-metadata').textContent = known ? json(state.metadata) : '—';
  if (type === 'sync' || type?.startsWith('room.')) flash('room-metadata');

  // The editor follows the document until the user starts typing.
  if (known && !editorDirty) loadEditor();
  const stale = editorDirty && editorVersion !== state.version;
  if (stale) showNotice('The metadata changed to version ' + state.version +
    ' while you were editing. Saving now will be refused; "Load current" discards your edit.');
  else if (type !== 'room.deleted') hideNotice();
  $('metadata-editor').disabled = !known;
  $('save').disabled = !known;
  $('load-current').disabled = !known;

  const s = state.session;
  $('no-session').hidden = !!s;
  $('session').hidden = !s;
  $('session-metadata').hidden = !s;
  $('session-version').textContent = s ? String(s.version) : '—';
  if (s) {
    $('session-id').textContent = s.id;
    $('session-started').textContent = s.started_at ? new Date(s.started_at).toLocaleString() : '';
    $('session-occupancy').textContent = String(s.occupancy);
    $('session-metadata').textContent = json(s.metadata);
  }
  if (type?.startsWith('session.')) flash('session-metadata');

  const rows = [...state.occupants.values()].map((o) => {
    const tr = document.createElement('tr');
    tr.dataset.connectionId = o.id;
    for (const [text, cls] of [[o.id, 'mono'], [o.owner, ''], [JSON.stringify(o.metadata), 'mono']]) {
      const td = document.createElement('td');
      td.textContent = text;
      if (cls) td.className = cls;
      tr.append(td);
    }
    return tr;
  });
  $('occupant-rows').replaceChildren(...rows);
  $('occupant-count').textContent = String(state.occupants.size);
  $('occupants').hidden = rows.length === 0;
  $('no-occupants').hidden = rows.length > 0;
}

function flash(id) {
  const el = $(id);
  el.classList.remove('flash');
  void el.offsetWidth; // restart the animation
  el.classList.add('flash');
}

function loadEditor() {
  $('metadata-editor').value = json(state.metadata ?? {});
  editorVersion = state.version;
  editorDirty = false;
  $('editor-version').textContent = String(editorVersion);
}

function showNotice(text) { $('room-notice').textContent = text; $('room-notice').hidden = false; }
function hideNotice() { $('room-notice').hidden = true; }

function showResult(kind, text) {
  const el = $('save-result');
  el.className = 'message ' + kind;
  el.textContent = text;
  el.hidden = false;
}

function logEvent(type, data, id) {
  const li = document.createElement('li');
  li.dataset.type = type;
  const time = document.createElement('time');
  time.textContent = new Date(data.at ?? Date.now()).toLocaleTimeString();
  const name = document.createElement('span');
  name.className = 'type';
  name.textContent = type;
  const summary = document.createElement('span');
  summary.className = 'summary';
  summary.textContent = describe(type, data);
  summary.title = 'id ' + id;
  li.append(time, name, summary);
  const log = $('event-log');
  log.prepend(li);
  while (log.children.length > LOG_LIMIT) log.lastElementChild.remove();
}

function describe(type, d) {
  const by = d.actor ? ' by ' + d.actor : '';
  switch (type) {
    case 'sync': return 'snapshot: version ' + d.version + ', ' + d.occupants.length + ' occupant(s)';
    case 'room.metadata.updated': return 'version ' + d.version + ' (' + d.strategy + ')' + by;
    case 'room.metadata.deleted': return 'reset to {} at version ' + d.version + by;
    case 'session.started': return 'session ' + d.session_id;
    case 'session.ended': return 'session ' + d.session_id + ', peak ' + d.peak_occupancy;
    case 'session.metadata.updated': return 'version ' + d.version + by;
    case 'presence.joined': return d.connection_id + ' (' + d.owner + '), occupancy ' + d.occupancy;
    case 'presence.left': return d.connection_id + ' (' + d.reason + '), occupancy ' + d.occupancy;
    case 'connection.metadata.updated': return d.connection_id + ' version ' + d.version;
    default: return by.trim();
  }
}

const STATUS_TEXT = {
  idle: 'not connected', connecting: 'connecting…', live: 'live',
  reconnecting: 'reconnecting…', closed: 'closed', failed: 'failed',
};

function onStatus(status, detail) {
  const el = $('status');
  el.dataset.state = status;
  el.textContent = STATUS_TEXT[status] + (detail ? ' — ' + detail : '');
  if (status === 'live') el.dataset.connects = String(++connects);
  if (status === 'failed') {
    $('connect-error').textContent = 'Cannot open the stream: ' + detail;
    $('connect-error').hidden = false;
  }
  if (status === 'closed' || status === 'failed') setConnected(false);
}

// ---- actions ----------------------------------------------------------------

function setConnected(on) {
  $('connect').disabled = on;
  $('disconnect').disabled = !on;
  $('token').disabled = on;
  $('room').disabled = on;
}

function connect(event) {
  event.preventDefault();
  token = $('token').value.trim();
  room = $('room').value.trim();
  $('connect-error').hidden = true;
  if (!token) {
    $('connect-error').textContent = 'Paste a token first (e.g. from `metacast token --sub you --admin`).';
    $('connect-error').hidden = false;
    return;
  }
  sessionStorage.setItem(TOKEN_KEY, token);
  sessionStorage.setItem(ROOM_KEY, room);
  stream?.close();
  state = emptyState();
  editorDirty = false;
  $('event-log').replaceChildren();
  $('save-result').hidden = true;
  hideNotice();
  render();
  setConnected(true);
  stream = followRoom({ token, room, onEvent, onStatus });
}

function disconnect() {
  stream?.close();
  stream = null;
}

async function save() {
  let document;
  try {
    document = JSON.parse($('metadata-editor').value);
  } catch (err) {
    return showResult('error', 'Not valid JSON: ' + err.message);
  }
  $('save').disabled = true;
  try {
    const response = await fetch('/v1/rooms/' + encodeURIComponent(room) + '/metadata', {
      method: 'PUT',
      headers: {
        Authorization: 'Bearer ' + token,
        'Content-Type': 'application/json',
        'If-Match': '"' + editorVersion + '"',
      },
      body: JSON.stringify(document),
    });
    if (response.ok) {
      const stored = await response.json();
      const version = Number((response.headers.get('ETag') ?? '').replaceAll('"', ''));
      // The stream delivers the same change, maybe before this answer did
      // (and flagged the editor as stale): until it does, show what was stored.
      if (state.version >= version) loadEditor();
      else loadEditorFrom(stored, version);
      hideNotice();
      showResult('ok', 'Saved as version ' + version + '.');
    } else {
      const problem = await response.json().catch(() => ({}));
      if (response.status === 412) {
        showResult('error', 'Conflict (412): the metadata is no longer version ' + editorVersion +
          ' — someone saved version ' + state.version + ' first. Your edit was NOT saved; ' +
          '"Load current" to start again from the latest document. (' + (problem.detail ?? '') + ')');
      } else {
        showResult('error', 'Save failed: ' + response.status + ' ' + (problem.code ?? '') +
          ' — ' + (problem.detail ?? response.statusText));
      }
    }
  } catch (err) {
    showResult('error', 'Save failed: ' + err.message);
  } finally {
    $('save').disabled = state.version === null;
  }
}

function loadEditorFrom(metadata, version) {
  $('metadata-editor').value = json(metadata);
  editorVersion = version;
  editorDirty = false;
  $('editor-version').textContent = String(version);
}

function init() {
  $('token').value = sessionStorage.getItem(TOKEN_KEY) ?? '';
  $('room').value = sessionStorage.getItem(ROOM_KEY) ?? $('room').value;
  $('connect-form').addEventListener('submit', connect);
  $('disconnect').addEventListener('click', disconnect);
  $('save').addEventListener('click', save);
  $('load-current').addEventListener('click', () => {
    loadEditor();
    hideNotice();
    $('save-result').hidden = true;
  });
  $('metadata-editor').addEventListener('input', () => { editorDirty = true; });
  render();
}

// A handle for tests and the curious: the live client and the page's model.
window.metacastDemo = {
  get stream() { return stream; },
  get state() { return state; },
};

init();
