// A WHEP player: plays a session into a <video> element and keeps playing.
//
//   const player = new WhepPlayer(video, { url: '/whep/7', token, onState });
//   player.start();           // connects, and reconnects by itself after any failure
//   player.stop();            // hangs up (DELETE of the WHEP resource)
//
// States passed to onState(state, detail): connecting, waiting (connected, no picture yet),
// playing, retrying (detail.in_ms, detail.reason), ended (409 session_ended: for good),
// unauthorized (401/403: for good), stopped. Sound: autoplay with sound is tried first, then
// muted; player.muted tells the page to offer a click-to-unmute button that calls unmute().
//
// Failover: with { urls: [edge, origin] } the player plays from urls[0] and moves on to the next
// node as soon as the one it plays from is gone: when no frame has arrived for deadAfterMs while
// media is expected, or the connection drops, it asks the node's /healthz (probeTimeoutMs); a node
// that does not answer is left at once, without a backoff. On a fallback, the first node is asked
// every primaryProbeMs and played from again when it answers. Every detail carries node (the
// index into urls) and nodeBase (that node's base URL).

const BACKOFF_START_MS = 1000;
const BACKOFF_CAP_MS = 30000;
const DISCONNECTED_GRACE_MS = 5000;
const ICE_GATHER_TIMEOUT_MS = 3000;
const STALL_CHECK_MS = 250;
const DEAD_AFTER_MS = 1500;
const PROBE_TIMEOUT_MS = 1000;
const PRIMARY_PROBE_MS = 15000;
// While no frame arrives, a node that answered a probe is not asked again before this.
const ALIVE_QUIET_MS = 5000;

/** The delay before retry number attempt (0, 1, ...): doubling from 1 s to 30 s, with jitter. */
export function backoffDelay(attempt, startMs = BACKOFF_START_MS, capMs = BACKOFF_CAP_MS) {
  const ceiling = Math.min(capMs, startMs * 2 ** Math.min(attempt, 16));
  return Math.round(ceiling * (0.5 + Math.random() * 0.5));
}

/** The base URL of the node a WHEP endpoint URL belongs to (it without '/whep/ID'). */
export function nodeBase(url) {
  const absolute = new URL(url, document.baseURI);
  return (absolute.origin + absolute.pathname.replace(/\/whep\/[^/]*$/, '')).replace(/\/$/, '');
}

/** Whether the node behind a WHEP URL answers its health check within timeoutMs. */
export async function probeNode(url, timeoutMs = PROBE_TIMEOUT_MS) {
  const controller = new AbortController();
  const timer = setTimeout(() => controller.abort(), timeoutMs);
  try {
    const response = await fetch(nodeBase(url) + '/healthz', {
      cache: 'no-store',
      signal: controller.signal,
    });
    return response.ok;
  } catch {
    return false;
  } finally {
    clearTimeout(timer);
  }
}

export class WhepPlayer {
  constructor(
    video,
    {
      url,
      urls,
      token,
      onState = () => {},
      stallTimeoutMs = 12000,
      deadAfterMs = DEAD_AFTER_MS,
      probeTimeoutMs = PROBE_TIMEOUT_MS,
      primaryProbeMs = PRIMARY_PROBE_MS,
    } = {},
  ) {
    this.video = video;
    this.urls = (urls && urls.length ? urls : [url]).filter(Boolean);
    this.node = 0; // index into urls: the node played from
    this.token = token;
    this.deadAfterMs = deadAfterMs;
    this.probeTimeoutMs = probeTimeoutMs;
    this.primaryProbeMs = primaryProbeMs;
    this.onState = onState;
    this.stallTimeoutMs = stallTimeoutMs;
    this.state = 'stopped';
    this.muted = true;
    this.expectMedia = false; // set by the page while the broadcast is live
    this._pc = null;
    this._location = null;
    this._attempt = 0;
    this._retryTimer = null;
    this._disconnectTimer = null;
    this._stallTimer = null;
    this._running = false;
    this._generation = 0;
    this._lastProgress = { time: -1, frames: -1, at: 0 };
    this._frameAt = 0; // when the last new frame (or, without frame counts, time) was seen
    this._hops = 0; // nodes left in a row without playing
    this._nodeCheck = null; // the probe in flight: Promise<boolean> (whether it switched)
    this._aliveAt = -Infinity; // when the current node last answered a probe
    this._primaryTimer = null;
  }

  /** The WHEP URL of the node played from. */
  get url() {
    return this.urls[this.node];
  }

  set url(value) {
    this.urls[this.node] = value;
  }

  /** Start playing (again); a no-op while already running. */
  start() {
    if (this._running) return;
    this._running = true;
    this._attempt = 0;
    this._hops = 0;
    this._connect();
    this._stallTimer = setInterval(() => this._checkProgress(), STALL_CHECK_MS);
    if (this.urls.length > 1) {
      this._primaryTimer = setInterval(() => this._checkPrimary(), this.primaryProbeMs);
    }
  }

  /** Hang up for good (until start() again). */
  stop() {
    this._running = false;
    this._stopTimers();
    this._teardown();
    this._setState('stopped');
  }

  _stopTimers() {
    clearInterval(this._stallTimer);
    clearInterval(this._primaryTimer);
    this._stallTimer = null;
    this._primaryTimer = null;
  }

  /** Hang up and connect again now (say, the page knows the broadcast came back). */
  restart() {
    if (!this._running) return;
    this._teardown();
    this._attempt = 0;
    this._connect();
  }

  /** Whether the page thinks media should flow; a stall then triggers a reconnect. */
  setExpectMedia(expect) {
    if (expect && !this.expectMedia) {
      this._lastProgress.at = performance.now();
      this._frameAt = performance.now();
    }
    this.expectMedia = expect;
  }

  /** Turn the sound on (call from a click: browsers allow sound after a user gesture). */
  async unmute() {
    this.video.muted = false;
    try {
      await this.video.play();
      this.muted = false;
    } catch {
      this.video.muted = true;
      this.muted = true;
    }
    this._setState(this.state);
  }

  _setState(state, detail = {}) {
    this.state = state;
    try {
      this.onState(state, {
        ...detail,
        muted: this.muted,
        node: this.node,
        nodeBase: nodeBase(this.url),
      });
    } catch (error) {
      console.warn('WhepPlayer onState failed', error);
    }
  }

  _teardown() {
    this._generation += 1;
    clearTimeout(this._retryTimer);
    clearTimeout(this._disconnectTimer);
    this._retryTimer = null;
    this._disconnectTimer = null;
    const pc = this._pc;
    const location = this._location;
    this._pc = null;
    this._location = null;
    if (pc) pc.close();
    if (location) {
      fetch(location, {
        method: 'DELETE',
        headers: { Authorization: 'Bearer ' + this.token },
        keepalive: true,
      }).catch(() => {});
    }
  }

  _retry(reason, retryAfterS = null) {
    if (!this._running) return;
    this._teardown();
    let delay = backoffDelay(this._attempt);
    if (retryAfterS !== null && Number.isFinite(retryAfterS)) {
      delay = Math.max(delay, Math.min(retryAfterS * 1000, 5 * BACKOFF_CAP_MS));
    }
    this._attempt += 1;
    this._setState('retrying', { reason, in_ms: delay, attempt: this._attempt });
    this._retryTimer = setTimeout(() => this._connect(), delay);
  }

  _giveUp(state, detail = {}) {
    this._running = false;
    this._stopTimers();
    this._teardown();
    this._setState(state, detail);
  }

  /** Leave the node played from for the next one: at once, unless every node failed in a
   *  row, then after the backoff. */
  _failover(reason) {
    if (!this._running) return;
    this.node = (this.node + 1) % this.urls.length;
    this._aliveAt = -Infinity;
    this._hops += 1;
    if (this._hops < this.urls.length) {
      this._teardown();
      this._connect();
    } else {
      this._hops = 0;
      this._retry(reason);
    }
  }

  /** Ask the node played from whether it is there; one that is not is left. Resolves to
   *  whether the player moved on. */
  _checkNode(reason) {
    if (this.urls.length < 2) return Promise.resolve(false);
    if (!this._nodeCheck) {
      const index = this.node;
      this._nodeCheck = probeNode(this.urls[index], this.probeTimeoutMs).then((alive) => {
        this._nodeCheck = null;
        if (alive) this._aliveAt = performance.now();
        if (alive || !this._running || this.node !== index) return false;
        this._failover(reason);
        return true;
      });
    }
    return this._nodeCheck;
  }

  /** On a fallback: play from the first node again once it answers. */
  async _checkPrimary() {
    if (!this._running || this.node === 0 || this._nodeCheck) return;
    const from = this.node;
    if (!(await probeNode(this.urls[0], this.probeTimeoutMs))) return;
    if (!this._running || this.node !== from) return;
    this._teardown();
    this.node = 0;
    this._hops = 0;
    this._aliveAt = -Infinity;
    this._connect();
  }

  async _connect() {
    if (!this._running) return;
    const generation = ++this._generation;
    const current = () => generation === this._generation && this._running;
    this._setState('connecting');
    this._frameAt = performance.now();
    const pc = new RTCPeerConnection();
    this._pc = pc;
    const stream = new MediaStream();
    pc.addTransceiver('video', { direction: 'recvonly' });
    pc.addTransceiver('audio', { direction: 'recvonly' });
    pc.ontrack = (event) => {
      if (!current()) return;
      stream.addTrack(event.track);
      if (this.video.srcObject !== stream) this.video.srcObject = stream;
      this._play();
    };
    pc.onconnectionstatechange = () => {
      if (!current()) return;
      const state = pc.connectionState;
      if (state === 'connected') {
        clearTimeout(this._disconnectTimer);
        this._disconnectTimer = null;
        if (this.state !== 'playing') this._setState('waiting');
      } else if (state === 'disconnected') {
        clearTimeout(this._disconnectTimer);
        this._disconnectTimer = setTimeout(() => {
          if (current() && pc.connectionState !== 'connected') this._retry('disconnected');
        }, DISCONNECTED_GRACE_MS);
        this._checkNode('disconnected'); // a node that is gone is left now, not after the grace
      } else if (state === 'failed' || state === 'closed') {
        this._checkNode(state).then((moved) => {
          if (!moved && current()) this._retry(state);
        });
      }
    };
    let response;
    try {
      await pc.setLocalDescription(await pc.createOffer());
      await gathered(pc);
      if (!current()) return;
      response = await fetch(this.url, {
        method: 'POST',
        headers: { 'Content-Type': 'application/sdp', Authorization: 'Bearer ' + this.token },
        body: pc.localDescription.sdp,
        cache: 'no-store',
      });
    } catch {
      if (!current()) return;
      if (this.urls.length > 1) this._failover('network');
      else this._retry('network');
      return;
    }
    if (!current()) return;
    if (response.status === 201) {
      const location = response.headers.get('Location');
      this._location = location ? new URL(location, new URL(this.url, document.baseURI)).href : null;
      try {
        await pc.setRemoteDescription({ type: 'answer', sdp: await response.text() });
      } catch {
        if (current()) this._retry('answer');
        return;
      }
      this._lastProgress = { time: -1, frames: -1, at: performance.now() };
      this._frameAt = performance.now();
      return;
    }
    const code = await errorCode(response);
    if (response.status === 409 && code === 'session_ended') {
      this._giveUp('ended');
    } else if (response.status === 401 || response.status === 403) {
      this._giveUp('unauthorized', { code });
    } else if ((response.status === 502 || response.status === 504) && this.urls.length > 1) {
      // The node (or the proxy before it) cannot reach its media: another node may.
      this._failover('http_' + response.status);
    } else {
      const retryAfter = Number.parseFloat(response.headers.get('Retry-After') || '');
      this._retry(response.status === 503 ? 'full' : 'http_' + response.status,
        Number.isFinite(retryAfter) ? retryAfter : null);
    }
  }

  async _play() {
    // Sound first; a browser that blocks autoplay with sound gets the muted picture instead.
    this.video.autoplay = true;
    this.video.playsInline = true;
    if (!this.muted) {
      try {
        await this.video.play();
        return;
      } catch {
        this.muted = true;
      }
    }
    this.video.muted = false;
    try {
      await this.video.play();
      this.muted = false;
    } catch {
      this.video.muted = true;
      this.muted = true;
      try {
        await this.video.play();
      } catch {
        // not even muted: the picture starts with the page's unmute button
      }
    }
    this._setState(this.state);
  }

  _checkProgress() {
    if (!this._pc) return;
    const quality = this.video.getVideoPlaybackQuality?.();
    const frames = quality ? quality.totalVideoFrames : 0;
    const time = this.video.currentTime;
    const now = performance.now();
    const last = this._lastProgress;
    if (last.frames >= 0 && (quality ? frames > last.frames : time > last.time)) {
      this._frameAt = now;
      this._aliveAt = -Infinity; // a later stall asks the node again at once
    }
    if (this.video.videoWidth > 0 && (frames > last.frames || time > last.time) && last.frames >= 0) {
      this._attempt = 0;
      this._hops = 0;
      last.at = now;
      if (this.state !== 'playing') this._setState('playing');
    } else if (this.state === 'playing' && now - last.at > 3000) {
      this._setState('waiting');
    }
    last.frames = frames;
    last.time = time;
    if (this.expectMedia && now - this._frameAt > this.deadAfterMs &&
        now - this._aliveAt > ALIVE_QUIET_MS) {
      // No picture while the broadcast is live: is the node still there?
      this._checkNode('no_media');
    }
    if (this.expectMedia && this._pc.connectionState === 'connected' &&
        now - last.at > this.stallTimeoutMs) {
      // Connected but nothing shown for long while the broadcast is live: start afresh.
      this._retry('stalled');
    }
  }
}

function gathered(pc) {
  if (pc.iceGatheringState === 'complete') return Promise.resolve();
  return new Promise((resolve) => {
    const done = () => {
      pc.removeEventListener('icegatheringstatechange', check);
      clearTimeout(timer);
      resolve();
    };
    const check = () => pc.iceGatheringState === 'complete' && done();
    const timer = setTimeout(done, ICE_GATHER_TIMEOUT_MS);
    pc.addEventListener('icegatheringstatechange', check);
  });
}

async function errorCode(response) {
  try {
    const body = await response.json();
    return body?.error || null;
  } catch {
    return null;
  }
}
