// A small MQTT 3.1.1 client over WebSocket for the mqtt-twisted dashboard.
//
// No dependencies, no build step: an ES module the browser loads as is.
// - CONNECT (optional username / password), SUBSCRIBE, UNSUBSCRIBE, PUBLISH in and out at
//   QoS 0 and 1 (PUBACK both ways; an incoming QoS 2 message gets PUBREC / PUBCOMP),
//   PINGREQ keep alive, DISCONNECT.
// - Subprotocol "mqtt", binary frames; packets may be split across or coalesced in WebSocket
//   messages (MQTT 3.1.1 section 6), so the parser is incremental.
// - Reconnects with exponential back-off, re-subscribes, and resends unacknowledged QoS 1
//   messages with DUP set. A CONNACK refusal stops reconnecting (except 3, server unavailable).

export const PacketType = Object.freeze({
  CONNECT: 1, CONNACK: 2, PUBLISH: 3, PUBACK: 4, PUBREC: 5, PUBREL: 6, PUBCOMP: 7,
  SUBSCRIBE: 8, SUBACK: 9, UNSUBSCRIBE: 10, UNSUBACK: 11, PINGREQ: 12, PINGRESP: 13,
  DISCONNECT: 14,
});

export const CONNACK_REASONS = Object.freeze({
  0: "accepted",
  1: "unacceptable protocol version",
  2: "identifier rejected",
  3: "server unavailable",
  4: "bad user name or password",
  5: "not authorized",
});

const encoder = new TextEncoder();
const MAX_REMAINING_LENGTH = 268435455;

// ---------------------------------------------------------------------------------------------
// Encoding

function utf8(text) {
  return encoder.encode(text);
}

function toBytes(payload) {
  if (payload == null) return new Uint8Array(0);
  if (typeof payload === "string") return utf8(payload);
  if (payload instanceof Uint8Array) return payload;
  if (payload instanceof ArrayBuffer) return new Uint8Array(payload);
  if (ArrayBuffer.isView(payload)) {
    return new Uint8Array(payload.buffer, payload.byteOffset, payload.byteLength);
  }
  throw new TypeError("payload must be a string, Uint8Array or ArrayBuffer");
}

function concat(chunks) {
  let length = 0;
  for (const chunk of chunks) length += chunk.length;
  const out = new Uint8Array(length);
  let offset = 0;
  for (const chunk of chunks) {
    out.set(chunk, offset);
    offset += chunk.length;
  }
  return out;
}

function uint16(value) {
  return Uint8Array.of((value >> 8) & 0xff, value & 0xff);
}

function mqttString(value) {
  const bytes = typeof value === "string" ? utf8(value) : toBytes(value);
  if (bytes.length > 0xffff) throw new RangeError("string longer than 65535 bytes");
  return concat([uint16(bytes.length), bytes]);
}

export function encodeRemainingLength(length) {
  if (length < 0 || length > MAX_REMAINING_LENGTH) throw new RangeError("packet too large");
  const out = [];
  do {
    let digit = length % 128;
    length = Math.floor(length / 128);
    if (length > 0) digit |= 0x80;
    out.push(digit);
  } while (length > 0);
  return Uint8Array.from(out);
}

function frame(firstByte, parts) {
  const body = concat(parts);
  return concat([Uint8Array.of(firstByte), encodeRemainingLength(body.length), body]);
}

function checkTopic(topic, isFilter) {
  if (typeof topic !== "string" || topic.length === 0) throw new TypeError("empty topic");
  if (topic.includes("\u0000")) throw new TypeError("topic contains U+0000");
  if (!isFilter && /[+#]/.test(topic)) throw new TypeError("wildcards are not allowed in a topic name");
}

/** CONNECT for MQTT 3.1.1 (protocol level 4). */
export function encodeConnect({
  clientId = "", keepalive = 60, clean = true, username = null, password = null, will = null,
} = {}) {
  let flags = clean ? 0x02 : 0;
  const payload = [mqttString(clientId)];
  if (will) {
    flags |= 0x04 | ((will.qos || 0) << 3) | (will.retain ? 0x20 : 0);
    payload.push(mqttString(will.topic), mqttString(toBytes(will.payload)));
  }
  if (username != null) {
    flags |= 0x80;
    payload.push(mqttString(username));
  }
  if (password != null) {
    if (username == null) throw new TypeError("a password needs a username in MQTT 3.1.1");
    flags |= 0x40;
    payload.push(mqttString(toBytes(password)));
  }
  const header = concat([mqttString("MQTT"), Uint8Array.of(4, flags), uint16(keepalive)]);
  return frame(PacketType.CONNECT << 4, [header, ...payload]);
}

export function encodePublish({ topic, payload, qos = 0, retain = false, dup = false, packetId = 0 }) {
  checkTopic(topic, false);
  if (![0, 1, 2].includes(qos)) throw new RangeError("QoS must be 0, 1 or 2");
  const first = (PacketType.PUBLISH << 4) | (dup ? 0x08 : 0) | (qos << 1) | (retain ? 1 : 0);
  const parts = [mqttString(topic)];
  if (qos > 0) parts.push(uint16(packetId));
  parts.push(toBytes(payload));
  return frame(first, parts);
}

export function encodeSubscribe(packetId, filters) {
  const parts = [uint16(packetId)];
  for (const [filter, qos] of filters) {
    checkTopic(filter, true);
    parts.push(mqttString(filter), Uint8Array.of(qos));
  }
  return frame((PacketType.SUBSCRIBE << 4) | 0x02, parts);
}

export function encodeUnsubscribe(packetId, filters) {
  const parts = [uint16(packetId)];
  for (const filter of filters) {
    checkTopic(filter, true);
    parts.push(mqttString(filter));
  }
  return frame((PacketType.UNSUBSCRIBE << 4) | 0x02, parts);
}

/** PUBACK, PUBREC, PUBREL, PUBCOMP. */
export function encodeAck(type, packetId) {
  const flags = type === PacketType.PUBREL ? 0x02 : 0;
  return frame((type << 4) | flags, [uint16(packetId)]);
}

export function encodePingreq() {
  return Uint8Array.of(PacketType.PINGREQ << 4, 0);
}

export function encodeDisconnect() {
  return Uint8Array.of(PacketType.DISCONNECT << 4, 0);
}

// ---------------------------------------------------------------------------------------------
// Decoding

export class ProtocolError extends Error {}

const textDecoder = new TextDecoder("utf-8", { fatal: true });

function readString(bytes, offset, end) {
  if (offset + 2 > end) throw new ProtocolError("truncated string");
  const length = (bytes[offset] << 8) | bytes[offset + 1];
  if (offset + 2 + length > end) throw new ProtocolError("truncated string");
  const text = textDecoder.decode(bytes.subarray(offset + 2, offset + 2 + length));
  return [text, offset + 2 + length];
}

function decodePacket(first, body) {
  const type = first >> 4;
  const flags = first & 0x0f;
  const id = () => {
    if (body.length < 2) throw new ProtocolError("missing packet identifier");
    return (body[0] << 8) | body[1];
  };
  switch (type) {
    case PacketType.CONNACK:
      if (body.length !== 2) throw new ProtocolError("bad CONNACK length");
      return { type, sessionPresent: (body[0] & 1) === 1, returnCode: body[1] };
    case PacketType.PUBLISH: {
      const qos = (flags >> 1) & 3;
      if (qos === 3) throw new ProtocolError("PUBLISH with QoS 3");
      let [topic, offset] = readString(body, 0, body.length);
      let packetId = 0;
      if (qos > 0) {
        if (offset + 2 > body.length) throw new ProtocolError("missing packet identifier");
        packetId = (body[offset] << 8) | body[offset + 1];
        offset += 2;
      }
      return {
        type, topic, qos, packetId,
        dup: (flags & 0x08) !== 0,
        retain: (flags & 0x01) !== 0,
        payload: body.slice(offset),
      };
    }
    case PacketType.PUBACK:
    case PacketType.PUBREC:
    case PacketType.PUBREL:
    case PacketType.PUBCOMP:
    case PacketType.UNSUBACK:
      return { type, packetId: id() };
    case PacketType.SUBACK:
      return { type, packetId: id(), granted: Array.from(body.subarray(2)) };
    case PacketType.PINGRESP:
      return { type };
    // Packets a server receives: decoded so the parser can be tested against our own encoder.
    case PacketType.PINGREQ:
    case PacketType.DISCONNECT:
      return { type };
    case PacketType.SUBSCRIBE: {
      const filters = [];
      let offset = 2;
      while (offset < body.length) {
        const [filter, next] = readString(body, offset, body.length);
        filters.push([filter, body[next]]);
        offset = next + 1;
      }
      return { type, packetId: id(), filters };
    }
    case PacketType.UNSUBSCRIBE: {
      const filters = [];
      let offset = 2;
      while (offset < body.length) {
        const [filter, next] = readString(body, offset, body.length);
        filters.push(filter);
        offset = next;
      }
      return { type, packetId: id(), filters };
    }
    case PacketType.CONNECT: {
      const [protocol, offset] = readString(body, 0, body.length);
      const connectFlags = body[offset + 1];
      const keepalive = (body[offset + 2] << 8) | body[offset + 3];
      let [clientId, next] = readString(body, offset + 4, body.length);
      const packet = { type, protocol, level: body[offset], keepalive, clientId, clean: (connectFlags & 2) !== 0 };
      if (connectFlags & 0x04) {
        [packet.willTopic, next] = readString(body, next, body.length);
        const length = (body[next] << 8) | body[next + 1];
        packet.willPayload = body.slice(next + 2, next + 2 + length);
        next += 2 + length;
      }
      if (connectFlags & 0x80) [packet.username, next] = readString(body, next, body.length);
      if (connectFlags & 0x40) {
        const length = (body[next] << 8) | body[next + 1];
        packet.password = body.slice(next + 2, next + 2 + length);
      }
      return packet;
    }
    default:
      throw new ProtocolError(`unexpected packet type ${type}`);
  }
}

/**
 * Incremental MQTT parser: push() any chunk of bytes, get back the complete packets it ends.
 * A packet may be split over any number of chunks, and one chunk may hold several packets.
 */
export class PacketParser {
  constructor({ maxPacketSize = MAX_REMAINING_LENGTH + 5 } = {}) {
    this.buffer = new Uint8Array(0);
    this.maxPacketSize = maxPacketSize;
  }

  push(chunk) {
    const data = toBytes(chunk);
    this.buffer = this.buffer.length ? concat([this.buffer, data]) : data;
    const packets = [];
    let offset = 0;
    for (;;) {
      const available = this.buffer.length - offset;
      if (available < 2) break;
      let multiplier = 1;
      let length = 0;
      let index = 1;
      let complete = false;
      while (index <= 4 && index < available) {
        const digit = this.buffer[offset + index];
        length += (digit & 0x7f) * multiplier;
        multiplier *= 128;
        index += 1;
        if ((digit & 0x80) === 0) {
          complete = true;
          break;
        }
      }
      if (!complete) {
        if (index > 4) throw new ProtocolError("malformed remaining length");
        break; // the length itself is still incomplete
      }
      if (index + length > this.maxPacketSize) throw new ProtocolError("packet too large");
      if (available < index + length) break;
      const first = this.buffer[offset];
      const body = this.buffer.subarray(offset + index, offset + index + length);
      packets.push(decodePacket(first, body));
      offset += index + length;
    }
    this.buffer = offset === 0 ? this.buffer : this.buffer.slice(offset);
    return packets;
  }
}

// ---------------------------------------------------------------------------------------------
// The client

export const State = Object.freeze({
  IDLE: "idle",
  CONNECTING: "connecting",
  CONNECTED: "connected",
  RECONNECTING: "reconnecting",
  REFUSED: "refused",
  CLOSED: "closed",
});

function randomClientId(prefix) {
  const bytes = new Uint8Array(6);
  crypto.getRandomValues(bytes);
  return prefix + Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

/** The ws: or wss: URL of /mqtt on the host that served the page. */
export function defaultBrokerURL(location = globalThis.location) {
  const scheme = location.protocol === "https:" ? "wss:" : "ws:";
  return `${scheme}//${location.host}/mqtt`;
}

/**
 * An MQTT 3.1.1 client over WebSocket.
 *
 * Events (it is an EventTarget; `event.detail` carries the data):
 *   "state"   {state, previous, retryIn?}  every state change
 *   "connect" {sessionPresent}             after CONNACK 0
 *   "refused" {returnCode, reason}         CONNACK != 0
 *   "subscribed" {filters: [{filter, qos, granted}]}  SUBACK for the subscriptions restored
 *                                          after CONNACK (granted 0x80: refused)
 *   "message" {topic, payload (Uint8Array), qos, retain, dup}
 *   "close"   {code, reason, wasClean}     the WebSocket closed
 *   "error"   {error}                      protocol errors and the like
 */
export class MQTTClient extends EventTarget {
  constructor(url = defaultBrokerURL(), options = {}) {
    super();
    this.url = url;
    this.options = {
      clientId: randomClientId("mqtt-twisted-"),
      keepalive: 30,
      username: null,
      password: null,
      will: null,
      reconnect: true,
      minReconnectDelay: 500,
      maxReconnectDelay: 30000,
      pingTimeout: null, // ms to wait for PINGRESP; default: the keep alive
      connectTimeout: 10000,
      ...options,
    };
    this.state = State.IDLE;
    this.subscriptions = new Map(); // filter -> requested QoS, restored after a reconnect
    this.stats = { connects: 0, pingsSent: 0, pingResponses: 0, packetsIn: 0, packetsOut: 0, bytesIn: 0, bytesOut: 0 };
    this.lastRefusal = null;
    this._socket = null;
    this._parser = null;
    this._nextId = 1;
    this._pending = new Map(); // packet id -> {resolve, reject, kind, packet?}
    this._incomingQos2 = new Set();
    this._attempt = 0;
    this._timers = { reconnect: null, ping: null, pingTimeout: null, connect: null };
    this._pingOutstanding = false;
  }

  get connected() {
    return this.state === State.CONNECTED;
  }

  /** Start connecting (and keep reconnecting until end()). */
  connect(credentials = undefined) {
    if (credentials !== undefined) {
      this.options.username = credentials?.username ?? null;
      this.options.password = credentials?.password ?? null;
    }
    this._clearTimer("reconnect");
    this._stopped = false;
    if (this._socket) this._dropSocket();
    this._open();
    return this;
  }

  /** Send DISCONNECT, close, and stop reconnecting. */
  end() {
    this._stopped = true;
    this._clearAllTimers();
    const socket = this._socket;
    if (socket && socket.readyState === WebSocket.OPEN && this.state === State.CONNECTED) {
      this._write(encodeDisconnect());
    }
    this._dropSocket();
    this._failPending(new Error("client ended"));
    this._setState(State.CLOSED);
  }

  /** Subscribe; resolves with the granted QoS (0x80 = refused). Remembered for reconnects. */
  subscribe(filter, qos = 0) {
    checkTopic(filter, true);
    this.subscriptions.set(filter, qos);
    if (!this.connected) return Promise.resolve(null); // sent on (re)connect
    return this._request("subscribe", (id) => encodeSubscribe(id, [[filter, qos]])).then((packet) => {
      const granted = packet.granted[0];
      if (granted === 0x80) this.subscriptions.delete(filter);
      return granted;
    });
  }

  unsubscribe(filter) {
    checkTopic(filter, true);
    this.subscriptions.delete(filter);
    if (!this.connected) return Promise.resolve();
    return this._request("unsubscribe", (id) => encodeUnsubscribe(id, [filter])).then(() => undefined);
  }

  /**
   * Publish. QoS 0 resolves once written; QoS 1 resolves on PUBACK (and is resent with DUP
   * after a reconnect until then). Rejects when not connected (QoS 0) or on end().
   */
  publish(topic, payload = "", { qos = 0, retain = false } = {}) {
    checkTopic(topic, false);
    if (qos !== 0 && qos !== 1) return Promise.reject(new RangeError("this client publishes at QoS 0 or 1"));
    const bytes = toBytes(payload);
    if (qos === 0) {
      if (!this.connected) return Promise.reject(new Error("not connected"));
      this._write(encodePublish({ topic, payload: bytes, qos: 0, retain }));
      return Promise.resolve();
    }
    return new Promise((resolve, reject) => {
      const id = this._allocateId();
      const entry = { kind: "publish", resolve, reject, message: { topic, payload: bytes, qos, retain, packetId: id } };
      this._pending.set(id, entry);
      if (this.connected) entry.sent = this._write(encodePublish(entry.message));
    });
  }

  // -- internals ------------------------------------------------------------------------------

  _open() {
    this._setState(this._attempt > 0 ? State.RECONNECTING : State.CONNECTING);
    let socket;
    try {
      socket = new WebSocket(this.url, ["mqtt"]);
    } catch (error) {
      this._emit("error", { error });
      this._scheduleReconnect();
      return;
    }
    socket.binaryType = "arraybuffer";
    this._socket = socket;
    this._parser = new PacketParser();
    this._pingOutstanding = false;
    socket.onopen = () => {
      if (socket !== this._socket) return;
      const { clientId, keepalive, username, password, will } = this.options;
      this._write(encodeConnect({ clientId, keepalive, clean: true, username, password, will }));
    };
    socket.onmessage = (event) => {
      if (socket !== this._socket) return;
      if (typeof event.data === "string") {
        this._protocolError(new ProtocolError("text frame received"));
        return;
      }
      const bytes = new Uint8Array(event.data);
      this.stats.bytesIn += bytes.length;
      let packets;
      try {
        packets = this._parser.push(bytes);
      } catch (error) {
        this._protocolError(error);
        return;
      }
      for (const packet of packets) {
        if (socket !== this._socket) return; // a handler closed or replaced the socket
        this.stats.packetsIn += 1;
        this._handle(packet);
      }
    };
    socket.onclose = (event) => {
      if (socket !== this._socket) return;
      this._socket = null;
      this._closed({ code: event.code, reason: event.reason, wasClean: event.wasClean });
    };
    socket.onerror = () => {
      // onclose follows and does the work; nothing to add here.
    };
    this._clearTimer("connect");
    this._timers.connect = setTimeout(() => {
      if (socket === this._socket && this.state !== State.CONNECTED) {
        this._emit("error", { error: new Error("connect timed out") });
        this._dropSocket();
        this._closed({ code: 0, reason: "connect timeout", wasClean: false });
      }
    }, this.options.connectTimeout);
  }

  _closed(detail) {
    this._clearAllTimers();
    this._emit("close", detail);
    if (this._stopped || this.state === State.REFUSED) {
      if (this.state !== State.REFUSED) this._setState(State.CLOSED);
      return;
    }
    if (this.options.reconnect) this._scheduleReconnect();
    else this._setState(State.CLOSED);
  }

  _scheduleReconnect() {
    const { minReconnectDelay, maxReconnectDelay } = this.options;
    const delay = Math.min(maxReconnectDelay, minReconnectDelay * 2 ** this._attempt);
    this._attempt += 1;
    this.reconnectDelay = delay;
    this._setState(State.RECONNECTING, { retryIn: delay });
    this._clearTimer("reconnect");
    this._timers.reconnect = setTimeout(() => {
      this._timers.reconnect = null;
      if (!this._stopped) this._open();
    }, delay);
  }

  _handle(packet) {
    switch (packet.type) {
      case PacketType.CONNACK:
        this._clearTimer("connect");
        if (packet.returnCode !== 0) {
          const reason = CONNACK_REASONS[packet.returnCode] || `return code ${packet.returnCode}`;
          this.lastRefusal = { returnCode: packet.returnCode, reason };
          const retry = packet.returnCode === 3 && this.options.reconnect;
          if (!retry) this._setState(State.REFUSED, this.lastRefusal);
          this._emit("refused", this.lastRefusal);
          this._dropSocket();
          this._closed({ code: 1000, reason: `CONNACK ${packet.returnCode}`, wasClean: true });
          return;
        }
        this._attempt = 0;
        this.lastRefusal = null;
        this._incomingQos2.clear(); // clean session: the server forgot them too
        this.stats.connects += 1;
        this._setState(State.CONNECTED);
        this._schedulePing();
        this._restore();
        this._emit("connect", { sessionPresent: packet.sessionPresent });
        return;
      case PacketType.PUBLISH:
        if (packet.qos === 1) this._write(encodeAck(PacketType.PUBACK, packet.packetId));
        if (packet.qos === 2) {
          this._write(encodeAck(PacketType.PUBREC, packet.packetId));
          if (this._incomingQos2.has(packet.packetId)) return; // a resent copy: deliver once
          this._incomingQos2.add(packet.packetId);
        }
        this._emit("message", {
          topic: packet.topic, payload: packet.payload, qos: packet.qos, retain: packet.retain, dup: packet.dup,
        });
        return;
      case PacketType.PUBREL:
        this._incomingQos2.delete(packet.packetId);
        this._write(encodeAck(PacketType.PUBCOMP, packet.packetId));
        return;
      case PacketType.PUBACK:
      case PacketType.SUBACK:
      case PacketType.UNSUBACK: {
        const entry = this._pending.get(packet.packetId);
        if (entry) {
          this._pending.delete(packet.packetId);
          entry.resolve(packet);
        }
        return;
      }
      case PacketType.PINGRESP:
        this.stats.pingResponses += 1;
        this._pingOutstanding = false;
        this._clearTimer("pingTimeout");
        return;
      default:
        this._protocolError(new ProtocolError(`unexpected packet type ${packet.type} from the server`));
    }
  }

  /** After CONNACK: subscribe again to everything, resend unacknowledged QoS 1 messages. */
  _restore() {
    // Requests that were waiting for an answer on the old connection are void now.
    for (const [id, entry] of this._pending) {
      if (entry.kind !== "publish") {
        this._pending.delete(id);
        entry.reject(new Error("connection lost"));
      }
    }
    if (this.subscriptions.size) {
      const filters = [...this.subscriptions];
      this._request("subscribe", (id) => encodeSubscribe(id, filters)).then((packet) => {
        // Refused filters (0x80) stay remembered: the broker may allow them on a later connect.
        this._emit("subscribed", {
          filters: filters.map(([filter, qos], i) => ({ filter, qos, granted: packet.granted[i] })),
        });
      }).catch(() => {});
    }
    for (const entry of this._pending.values()) {
      if (entry.kind === "publish") {
        const dup = entry.sent === true;
        entry.sent = true;
        this._write(encodePublish({ ...entry.message, dup }));
      }
    }
  }

  _request(kind, encode) {
    return new Promise((resolve, reject) => {
      const id = this._allocateId();
      this._pending.set(id, { kind, resolve, reject });
      this._write(encode(id));
    });
  }

  _allocateId() {
    for (let i = 0; i < 0xffff; i += 1) {
      const id = this._nextId;
      this._nextId = id === 0xffff ? 1 : id + 1;
      if (!this._pending.has(id)) return id;
    }
    throw new Error("no free packet identifier");
  }

  _write(bytes) {
    const socket = this._socket;
    if (!socket || socket.readyState !== WebSocket.OPEN) return false;
    socket.send(bytes);
    this.stats.packetsOut += 1;
    this.stats.bytesOut += bytes.length;
    this._schedulePing();
    return true;
  }

  _schedulePing() {
    const keepalive = this.options.keepalive;
    if (!keepalive || this.state !== State.CONNECTED) return;
    this._clearTimer("ping");
    this._timers.ping = setTimeout(() => this._ping(), keepalive * 1000);
  }

  _ping() {
    this._timers.ping = null;
    if (!this.connected) return;
    if (this._pingOutstanding) return;
    this._pingOutstanding = true;
    this.stats.pingsSent += 1;
    this._write(encodePingreq());
    const wait = this.options.pingTimeout ?? this.options.keepalive * 1000;
    this._clearTimer("pingTimeout");
    this._timers.pingTimeout = setTimeout(() => {
      if (this._pingOutstanding && this.connected) {
        this._emit("error", { error: new Error("no PINGRESP: connection presumed dead") });
        this._dropSocket();
        this._closed({ code: 0, reason: "keep alive timeout", wasClean: false });
      }
    }, wait);
  }

  _protocolError(error) {
    this._emit("error", { error });
    this._dropSocket();
    this._closed({ code: 1002, reason: String(error.message || error), wasClean: false });
  }

  _dropSocket() {
    const socket = this._socket;
    this._socket = null;
    if (socket) {
      socket.onopen = socket.onmessage = socket.onclose = socket.onerror = null;
      try {
        socket.close();
      } catch (_) {
        // already closing
      }
    }
  }

  _failPending(error) {
    for (const entry of this._pending.values()) entry.reject(error);
    this._pending.clear();
  }

  _clearTimer(name) {
    if (this._timers[name] != null) {
      clearTimeout(this._timers[name]);
      this._timers[name] = null;
    }
  }

  _clearAllTimers() {
    for (const name of Object.keys(this._timers)) this._clearTimer(name);
  }

  _setState(state, extra = {}) {
    const previous = this.state;
    this.state = state;
    if (previous !== state || extra.retryIn !== undefined) {
      this._emit("state", { state, previous, ...extra });
    }
  }

  _emit(type, detail) {
    this.dispatchEvent(new CustomEvent(type, { detail }));
  }
}

/** A payload as text when it is printable UTF-8, else as hex; returns {text, kind}. */
export function formatPayload(payload, maxBytes = 4096) {
  const bytes = toBytes(payload);
  const shown = bytes.subarray(0, maxBytes);
  const more = bytes.length > maxBytes ? ` … (${bytes.length} bytes)` : "";
  try {
    const text = textDecoder.decode(shown);
    // eslint-disable-next-line no-control-regex
    if (!/[\u0000-\u0008\u000e-\u001f\u007f]/.test(text)) return { text: text + more, kind: "text" };
  } catch (_) {
    // not UTF-8 (or cut in the middle of a character): hex below
  }
  const hex = Array.from(shown, (b) => b.toString(16).padStart(2, "0")).join(" ");
  return { text: hex + more, kind: "hex" };
}

/** Does the topic filter (with + and #) match the topic name? ($-topics: MQTT-4.7.2-1) */
export function topicMatches(filter, topic) {
  if (topic.startsWith("$") && (filter.startsWith("+") || filter.startsWith("#"))) return false;
  const f = filter.split("/");
  const t = topic.split("/");
  for (let i = 0; i < f.length; i += 1) {
    if (f[i] === "#") return true;
    if (i >= t.length) return false;
    if (f[i] !== "+" && f[i] !== t[i]) return false;
  }
  return f.length === t.length;
}
