// The broker's $SYS figures (Mosquitto's topic names): latest values and message rates.

export const SYS_FILTER = "$SYS/broker/#";
const PREFIX = "$SYS/broker/";

/** Topic (after "$SYS/broker/") -> the key the page uses. */
export const SYS_TOPICS = Object.freeze({
  "version": "version",
  "uptime": "uptime",
  "clients/connected": "clientsConnected",
  "clients/total": "clientsTotal",
  "clients/maximum": "clientsMaximum",
  "messages/received": "messagesReceived",
  "messages/sent": "messagesSent",
  "publish/messages/received": "publishReceived",
  "publish/messages/sent": "publishSent",
  "publish/messages/dropped": "publishDropped",
  "bytes/received": "bytesReceived",
  "bytes/sent": "bytesSent",
  "subscriptions/count": "subscriptions",
  "retained messages/count": "retained",
  "load/messages/received/1min": "loadReceived1",
  "load/messages/received/5min": "loadReceived5",
  "load/messages/received/15min": "loadReceived15",
  "load/messages/sent/1min": "loadSent1",
  "load/messages/sent/5min": "loadSent5",
  "load/messages/sent/15min": "loadSent15",
});

/** "123 seconds" or "123" -> 123; anything else -> null. */
export function parseNumber(text) {
  const match = /^\s*(-?\d+(?:\.\d+)?)/.exec(text);
  return match ? Number(match[1]) : null;
}

/**
 * Latest $SYS values plus a rolling history of message rates, computed from the deltas of the
 * message counters between two $SYS batches (PUBLISH counters when the broker has them).
 */
export class SysStats {
  constructor({ historyLength = 60 } = {}) {
    this.values = {};
    this.receivedAt = {};
    this.history = []; // [{t, inRate, outRate}]
    this.historyLength = historyLength;
    this.rates = { inRate: null, outRate: null };
    this._previous = null; // {t, received, sent}
  }

  /** Record one $SYS message; returns its key, or null if the topic is not one we show. */
  update(topic, text, now = Date.now()) {
    if (!topic.startsWith(PREFIX)) return null;
    const key = SYS_TOPICS[topic.slice(PREFIX.length)];
    if (!key) return null;
    this.values[key] = key === "version" ? text.trim() : parseNumber(text);
    this.receivedAt[key] = now;
    return key;
  }

  _counters() {
    const v = this.values;
    if (v.publishReceived != null && v.publishSent != null) {
      return { received: v.publishReceived, sent: v.publishSent };
    }
    if (v.messagesReceived != null && v.messagesSent != null) {
      return { received: v.messagesReceived, sent: v.messagesSent };
    }
    return null;
  }

  /** Close a batch of updates: add a point to the rate history. Returns the point or null. */
  sample(now = Date.now()) {
    const counters = this._counters();
    if (!counters) return null;
    const previous = this._previous;
    this._previous = { t: now, ...counters };
    if (!previous) return null;
    const seconds = (now - previous.t) / 1000;
    if (seconds <= 0.05) return null;
    // A counter that went down means the broker restarted: start from zero again.
    const delta = (a, b) => (a >= b ? a - b : a);
    const point = {
      t: now,
      inRate: delta(counters.received, previous.received) / seconds,
      outRate: delta(counters.sent, previous.sent) / seconds,
    };
    this.rates = { inRate: point.inRate, outRate: point.outRate };
    this.history.push(point);
    if (this.history.length > this.historyLength) this.history.splice(0, this.history.length - this.historyLength);
    return point;
  }

  /** Uptime in seconds now, advancing the last published value by the time since. */
  uptime(now = Date.now()) {
    const base = this.values.uptime;
    if (base == null) return null;
    return base + Math.max(0, (now - this.receivedAt.uptime) / 1000);
  }
}

// -- formatting -------------------------------------------------------------------------------

export function formatCount(value) {
  return value == null ? "–" : Math.round(value).toLocaleString("en-US");
}

export function formatRate(value) {
  if (value == null) return "–";
  if (value >= 100) return Math.round(value).toLocaleString("en-US");
  return value.toFixed(1);
}

export function formatBytes(value) {
  if (value == null) return "–";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let n = value;
  let unit = 0;
  while (n >= 1024 && unit < units.length - 1) {
    n /= 1024;
    unit += 1;
  }
  return unit === 0 ? `${n} B` : `${n.toFixed(n >= 100 ? 0 : 1)} ${units[unit]}`;
}

export function formatDuration(seconds) {
  if (seconds == null) return "–";
  let s = Math.floor(seconds);
  const d = Math.floor(s / 86400);
  s -= d * 86400;
  const h = Math.floor(s / 3600);
  s -= h * 3600;
  const m = Math.floor(s / 60);
  s -= m * 60;
  if (d) return `${d}d ${h}h ${m}m`;
  if (h) return `${h}h ${m}m ${s}s`;
  if (m) return `${m}m ${s}s`;
  return `${s}s`;
}
