// Publish a camera or screen from the browser over WHIP (RFC 9725): no build step, no library.
//
//   const publisher = new WhipPublisher({ url, token, codec: 'h264', onState, onStats });
//   await publisher.start(mediaStream);   // sendonly video + audio
//   await publisher.stop();               // DELETE the resource, close the peer
//
// States, in order: 'idle' → 'connecting' → 'live'; on failure 'reconnecting' (with backoff,
// the same stream republished) and back to 'live'; 'stopped' at the end; 'failed' when the
// server refuses the offer for good (a 4xx other than 429); 'taken_over' when another
// broadcaster connection replaced this one (a reconnect names the connection it replaces, and
// the server refuses it then: two devices do not take the session from each other for ever;
// start() again takes it back). onStats gets
// {bitrateBps, fps, rttMs, packetsSent, width, height} every statsIntervalMs.

const GATHER_TIMEOUT_MS = 3000;
const BACKOFF_MS = [1000, 2000, 4000, 8000, 15000];

/** A WHIP request that failed: status 0 when the server could not be reached. */
export class WhipError extends Error {
  constructor(status, detail, code = null) {
    super(detail || 'WHIP request failed (' + status + ')');
    this.status = status;
    this.detail = detail;
    this.code = code;
  }

  /** Whether trying again may help (network trouble, overload, server errors). */
  get retryable() {
    return this.status === 0 || this.status === 429 || this.status >= 500;
  }
}

/** Put the preferred video codec first (e.g. 'h264' or 'vp8'), keeping the others as fallbacks. */
export function preferCodec(transceiver, codec) {
  if (!transceiver.setCodecPreferences || !window.RTCRtpSender?.getCapabilities) return false;
  const capabilities = RTCRtpSender.getCapabilities('video');
  if (!capabilities) return false;
  const wanted = 'video/' + codec.toLowerCase();
  const mime = (c) => c.mimeType.toLowerCase();
  let preferred = capabilities.codecs.filter((c) => mime(c) === wanted);
  if (preferred.length === 0) return false;
  if (wanted === 'video/h264') {
    // Constrained baseline with packetization-mode=1 first: what every decoder takes.
    const score = (c) =>
      (/packetization-mode=1/.test(c.sdpFmtpLine || '') ? 2 : 0) +
      (/profile-level-id=42e0/.test(c.sdpFmtpLine || '') ? 1 : 0);
    preferred = [...preferred].sort((a, b) => score(b) - score(a));
  }
  const rest = capabilities.codecs.filter((c) => mime(c) !== wanted && !/video\/(h264|vp8|vp9|av1|h265)/.test(mime(c)));
  transceiver.setCodecPreferences([...preferred, ...rest]);
  return true;
}

export class WhipPublisher {
  constructor({ url, token, codec = 'h264', onState = () => {}, onStats = () => {},
                statsIntervalMs = 2000, iceServers = [] }) {
    this.url = url;
    this.token = token;
    this.codec = codec;
    this.onState = onState;
    this.onStats = onStats;
    this.statsIntervalMs = statsIntervalMs;
    this.iceServers = iceServers;
    this.state = 'idle';
    this.states = ['idle'];
    this.pc = null;
    this.resource = null;
    this.stream = null;
    this.attempt = 0;
    this.lastError = null;
    this._retryTimer = null;
    this._statsTimer = null;
    this._lastSample = null;
    this._stopped = false;
  }

  _setState(state, error = null) {
    if (error) this.lastError = error;
    if (state === this.state) return;
    this.state = state;
    this.states.push(state);
    this.onState(state, error);
  }

  /** Publish the stream's tracks; resolves once the server has answered the offer. */
  async start(stream) {
    this.stream = stream;
    this._stopped = false;
    this.resource = null; // a new start takes the session, even from another broadcaster
    this._setState('connecting');
    try {
      await this._connect();
    } catch (error) {
      this._failed(error);
      if (!(error instanceof WhipError && error.retryable)) throw error;
    }
  }

  async _connect() {
    this._closePeer();
    const pc = new RTCPeerConnection({ iceServers: this.iceServers });
    this.pc = pc;
    const video = this.stream.getVideoTracks()[0];
    const audio = this.stream.getAudioTracks()[0];
    if (video) {
      const t = pc.addTransceiver(video, { direction: 'sendonly', streams: [this.stream] });
      preferCodec(t, this.codec);
    }
    if (audio) pc.addTransceiver(audio, { direction: 'sendonly', streams: [this.stream] });
    pc.addEventListener('connectionstatechange', () => {
      if (pc !== this.pc || this._stopped) return;
      if (pc.connectionState === 'connected') {
        this.attempt = 0;
        this._setState('live');
      } else if (pc.connectionState === 'failed') {
        this._failed(new WhipError(0, 'the connection to the server failed'));
      }
    });
    await pc.setLocalDescription(await pc.createOffer());
    await waitForGathering(pc);
    let url = this.url;
    if (this.resource) {
      // A reconnect: name the connection it replaces (refused if another one took it over).
      const previous = new URL(this.resource).pathname.split('/').pop();
      const u = new URL(this.url, window.location.href);
      u.searchParams.set('reconnect', previous);
      url = u.href;
    }
    let response;
    try {
      response = await fetch(url, {
        method: 'POST',
        headers: { 'Content-Type': 'application/sdp', Authorization: 'Bearer ' + this.token },
        body: pc.localDescription.sdp,
        cache: 'no-store',
      });
    } catch {
      throw new WhipError(0, 'the server cannot be reached');
    }
    if (response.status !== 201) {
      const { detail, code } = await errorBody(response);
      throw new WhipError(response.status, detail, code);
    }
    const location = response.headers.get('Location');
    this.resource = location ? new URL(location, url).href : null;
    const answer = await response.text();
    if (pc !== this.pc) return; // stopped or replaced meanwhile
    await pc.setRemoteDescription({ type: 'answer', sdp: answer });
    this._startStats();
  }

  _failed(error) {
    if (this._stopped) return;
    this._stopStats();
    if (error instanceof WhipError && !error.retryable) {
      this._closePeer();
      // Taken over, our resource no longer names the session's connection: nothing to DELETE.
      if (error.code === 'taken_over') this.resource = null;
      this._setState(error.code === 'taken_over' ? 'taken_over' : 'failed', error);
      return;
    }
    this._setState('reconnecting', error);
    const delay = BACKOFF_MS[Math.min(this.attempt, BACKOFF_MS.length - 1)];
    this.attempt += 1;
    clearTimeout(this._retryTimer);
    this._retryTimer = setTimeout(async () => {
      if (this._stopped) return;
      try {
        await this._connect();
      } catch (err) {
        this._failed(err);
      }
    }, delay);
  }

  /** Hang up: DELETE the WHIP resource (so the server ends the broadcast now) and close. */
  async stop() {
    this._stopped = true;
    clearTimeout(this._retryTimer);
    this._stopStats();
    const resource = this.resource;
    this.resource = null;
    this._closePeer();
    if (resource) {
      try {
        await fetch(resource, { method: 'DELETE', headers: { Authorization: 'Bearer ' + this.token } });
      } catch {
        // the server is gone: the broadcast is over either way
      }
    }
    this._setState('stopped');
  }

  _closePeer() {
    if (this.pc) {
      const pc = this.pc;
      this.pc = null;
      pc.close();
    }
  }

  _startStats() {
    this._stopStats();
    this._lastSample = null;
    this._statsTimer = setInterval(() => this.stats().then(this.onStats, () => {}), this.statsIntervalMs);
  }

  _stopStats() {
    clearInterval(this._statsTimer);
    this._statsTimer = null;
  }

  /** Outgoing video bitrate and frame rate (since the last call) and the round-trip time. */
  async stats() {
    if (!this.pc) return null;
    const report = await this.pc.getStats();
    let bytes = 0;
    let frames = 0;
    let packets = 0;
    let width = null;
    let height = null;
    let fps = null;
    let rttMs = null;
    report.forEach((s) => {
      if (s.type === 'outbound-rtp' && !s.isRemote) {
        bytes += s.bytesSent || 0;
        packets += s.packetsSent || 0;
        if (s.kind === 'video') {
          frames = s.framesEncoded || s.framesSent || 0;
          width = s.frameWidth ?? width;
          height = s.frameHeight ?? height;
          if (s.framesPerSecond !== undefined) fps = s.framesPerSecond;
        }
      } else if (s.type === 'candidate-pair' && s.nominated && s.currentRoundTripTime !== undefined) {
        rttMs = Math.round(s.currentRoundTripTime * 1000);
      } else if (s.type === 'remote-inbound-rtp' && rttMs === null && s.roundTripTime !== undefined) {
        rttMs = Math.round(s.roundTripTime * 1000);
      }
    });
    const now = performance.now();
    let bitrateBps = null;
    const last = this._lastSample;
    if (last && now > last.at) {
      bitrateBps = Math.round(((bytes - last.bytes) * 8 * 1000) / (now - last.at));
      if (fps === null) fps = Math.round(((frames - last.frames) * 1000) / (now - last.at));
    }
    this._lastSample = { at: now, bytes, frames };
    return { bitrateBps, fps, rttMs, packetsSent: packets, width, height };
  }
}

function waitForGathering(pc) {
  if (pc.iceGatheringState === 'complete') return Promise.resolve();
  return new Promise((done) => {
    const timer = setTimeout(done, GATHER_TIMEOUT_MS);
    pc.addEventListener('icegatheringstatechange', () => {
      if (pc.iceGatheringState === 'complete') {
        clearTimeout(timer);
        done();
      }
    });
  });
}

async function errorBody(response) {
  const text = await response.text().catch(() => '');
  try {
    const body = JSON.parse(text);
    return { detail: body.detail || body.error || text, code: body.error || null };
  } catch {
    return { detail: text || response.statusText, code: null };
  }
}
