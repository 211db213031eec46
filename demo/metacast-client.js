// metacast-client.js — follow one metacast room's events from a browser.
//
// Copy this file into your app; it has no dependencies. The browser's
// EventSource cannot send an Authorization header, so every stream is opened
// with a single-use ticket from POST /v1/stream-tickets. EventSource's own
// reconnect would reuse the spent ticket, so on any error this client closes
// the stream and opens a new one itself: a fresh ticket plus the id of the
// last event it saw, so the server replays what was missed (or sends a
// `sync` snapshot when its history no longer covers the gap).
//
//   import { followRoom } from './metacast-client.js';
//   const stream = followRoom({
//     token, room: 'lobby',
//     onEvent(type, data, id) { ... },   // 'sync', 'room.metadata.updated', …
//     onStatus(status, detail) { ... },  // 'connecting' | 'live' | 'reconnecting' | 'closed' | 'failed'
//   });
//   stream.close();

/** Every event type a room stream sends (SPEC §5). */
export const EVENT_TYPES = [
  'sync',
  'room.metadata.updated', 'room.metadata.deleted', 'room.cleared', 'room.deleted',
  'session.started', 'session.ended', 'session.metadata.updated',
  'presence.joined', 'presence.left', 'connection.metadata.updated',
];

/**
 * Opens a room's event stream and keeps it open until `close()`, the room is
 * deleted, or the token is refused (expired, or not allowed to read).
 *
 * @param {object} options
 * @param {string} options.token   a metacast JWT (sent only in a header, never in a URL)
 * @param {string} options.room    the room id
 * @param {string} [options.base]  the server's origin, e.g. 'https://metacast.example' ('' = this page's)
 * @param {(type: string, data: any, id: string) => void} options.onEvent
 * @param {(status: string, detail?: string) => void} [options.onStatus]
 * @param {number} [options.minDelay]  first reconnect delay in ms (doubles per failure)
 * @param {number} [options.maxDelay]  longest reconnect delay in ms
 */
export function followRoom({ token, room, base = '', onEvent, onStatus = () => {},
                             minDelay = 500, maxDelay = 15000 }) {
  let source = null;   // the open EventSource, if any
  let lastId = '';     // id of the last event received: where to resume
  let failures = 0;    // consecutive failures, for the backoff
  let timer = null;
  let closed = false;

  async function ticket() {
    const response = await fetch(base + '/v1/stream-tickets', {
      method: 'POST', headers: { Authorization: 'Bearer ' + token },
    });
    if (!response.ok) {
      const problem = await response.json().catch(() => ({}));
      throw Object.assign(new Error(problem.detail || 'HTTP ' + response.status),
                          { status: response.status });
    }
    return (await response.json()).ticket;
  }

  async function open() {
    timer = null;
    onStatus(failures ? 'reconnecting' : 'connecting');
    let t;
    try {
      t = await ticket();
    } catch (err) {
      // A refused token will not get better by retrying.
      if (err.status === 401 || err.status === 403) return stop('failed', err.message);
      return retry();
    }
    if (closed) return;
    const es = new EventSource(base + '/v1/rooms/' + encodeURIComponent(room) + '/events?ticket=' +
      encodeURIComponent(t) + (lastId ? '&last_event_id=' + encodeURIComponent(lastId) : ''));
    source = es;
    es.addEventListener('open', () => { failures = 0; onStatus('live'); });
    for (const type of EVENT_TYPES) {
      es.addEventListener(type, (event) => {
        if (event.lastEventId) lastId = event.lastEventId;
        onEvent(type, JSON.parse(event.data), event.lastEventId);
        // The server ends a deleted room's stream; there is nothing to resume.
        if (type === 'room.deleted') stop('closed', 'the room was deleted');
      });
    }
    // A dropped stream, or one the server refused: never let EventSource
    // retry with the spent ticket; open a new stream after a backoff.
    es.addEventListener('error', () => {
      if (source !== es) return;
      es.close();
      source = null;
      retry();
    });
  }

  function retry() {
    if (closed) return;
    const delay = Math.min(maxDelay, minDelay * 2 ** failures) * (0.75 + Math.random() / 4);
    failures += 1;
    onStatus('reconnecting', 'retrying in ' + (delay / 1000).toFixed(1) + ' s');
    timer = setTimeout(open, delay);
  }

  function stop(status, detail) {
    closed = true;
    clearTimeout(timer);
    if (source) source.close();
    source = null;
    onStatus(status, detail);
  }

  open();
  return {
    /** Closes the stream for good. */
    close: () => stop('closed'),
    /** The id the next stream resumes after. */
    get lastEventId() { return lastId; },
    /** The current EventSource (null between streams). */
    get source() { return source; },
  };
}
