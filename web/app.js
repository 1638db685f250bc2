// The dashboard: one MQTT-over-WebSocket connection to the broker that served this page.
import { CONNACK_REASONS, MQTTClient, State, defaultBrokerURL, formatPayload, topicMatches } from "./mqtt.js";
import { RateChart } from "./chart.js";
import { SYS_FILTER, SysStats, formatBytes, formatCount, formatDuration, formatRate } from "./sys.js";

const MAX_MESSAGES = 200; // rows kept in the topic watcher
const $ = (id) => document.getElementById(id);

const url = defaultBrokerURL();
const client = new MQTTClient(url, { clientId: `dashboard-${Math.random().toString(16).slice(2, 10)}` });
const sys = new SysStats({ historyLength: 60 });
const CHART_WAITING = "waiting for $SYS/broker/… figures";
const chart = new RateChart($("rate-chart"), [
  { key: "inRate", label: "in", colorVar: "--in" },
  { key: "outRate", label: "out", colorVar: "--out" },
], { length: 60, emptyText: CHART_WAITING });

$("broker-url").textContent = url;

// -- connection state ------------------------------------------------------------------------

function showState(state, detail = {}) {
  const status = $("status");
  status.dataset.state = state;
  let text;
  switch (state) {
    case State.CONNECTED:
      text = "connected";
      break;
    case State.CONNECTING:
      text = "connecting…";
      break;
    case State.RECONNECTING:
      text = detail.retryIn != null ? `reconnecting in ${(detail.retryIn / 1000).toFixed(1)} s…` : "reconnecting…";
      break;
    case State.REFUSED:
      text = `refused: ${client.lastRefusal?.reason ?? "not authorized"}`;
      break;
    default:
      text = state;
  }
  $("status-text").textContent = text;
  $("publish-button").disabled = state !== State.CONNECTED;
}

client.addEventListener("state", (event) => showState(event.detail.state, event.detail));

client.addEventListener("refused", (event) => {
  const { returnCode } = event.detail;
  if (returnCode !== 4 && returnCode !== 5) return;
  const login = $("login");
  const reason = $("login-reason");
  if (client.options.username == null) {
    reason.textContent = "The broker refused an anonymous connection: sign in to continue.";
    reason.classList.remove("error");
  } else {
    reason.textContent = `The broker refused ${client.options.username}: ${CONNACK_REASONS[returnCode]}.`;
    reason.classList.add("error");
  }
  login.hidden = false;
  $("login-username").focus();
});

$("login-form").addEventListener("submit", (event) => {
  event.preventDefault();
  const username = $("login-username").value;
  const password = $("login-password").value;
  client.connect({ username, password: password === "" ? null : password });
});

client.addEventListener("connect", () => {
  $("login").hidden = true;
  $("login-password").value = "";
});

// -- $SYS figures ---------------------------------------------------------------------------

let sampleTimer = null;

function renderSys() {
  const v = sys.values;
  if (v.version) $("version").textContent = v.version.replace(/^mqtt-twisted version\s*/i, "");
  $("clients-connected").textContent = formatCount(v.clientsConnected);
  $("clients-total").textContent = formatCount(v.clientsTotal);
  $("clients-maximum").textContent = formatCount(v.clientsMaximum);
  $("rate-in").textContent = formatRate(sys.rates.inRate);
  $("rate-out").textContent = formatRate(sys.rates.outRate);
  $("messages-received").textContent = formatCount(v.publishReceived ?? v.messagesReceived);
  $("messages-sent").textContent = formatCount(v.publishSent ?? v.messagesSent);
  $("messages-dropped").textContent = formatCount(v.publishDropped);
  $("bytes-received").textContent = formatBytes(v.bytesReceived);
  $("bytes-sent").textContent = formatBytes(v.bytesSent);
  $("retained").textContent = formatCount(v.retained);
  $("subscriptions").textContent = formatCount(v.subscriptions);
  renderUptime();
  const load = (a, b, c) => [a, b, c].map((x) => (x == null ? "–" : formatRate(x))).join(" / ");
  $("load").textContent = `load (per min, 1/5/15): in ${load(v.loadReceived1, v.loadReceived5, v.loadReceived15)}`
    + ` · out ${load(v.loadSent1, v.loadSent5, v.loadSent15)}`;
}

function renderUptime() {
  $("uptime").textContent = formatDuration(sys.uptime());
}

function onSys(topic, payload) {
  const text = new TextDecoder().decode(payload);
  if (sys.update(topic, text) === null) return;
  renderSys();
  // The broker publishes the whole set at once: close the batch when it has gone quiet.
  clearTimeout(sampleTimer);
  sampleTimer = setTimeout(() => {
    if (sys.sample()) {
      renderSys();
      chart.setPoints(sys.history);
    }
  }, 150);
}

/** Whether the broker lets this client read $SYS (the ACL may deny it): say so if not. */
function showSysAccess(allowed) {
  const info = $("sys-info");
  if (allowed) {
    info.hidden = true;
    info.textContent = "";
    chart.emptyText = CHART_WAITING;
  } else {
    const who = client.options.username == null ? "anonymous clients" : client.options.username;
    info.textContent = `The broker does not let ${who} read ${SYS_FILTER}: no broker figures to show.`;
    info.hidden = false;
    chart.emptyText = `no access to ${SYS_FILTER}`;
  }
  chart.draw();
}

setInterval(() => {
  if (client.connected) renderUptime();
}, 1000);
chart.draw();

// -- topic watcher ---------------------------------------------------------------------------

let watchFilter = null;
let messageCount = 0;

function setWatching(filter, subscribed = false) {
  watchFilter = filter;
  $("watch-stop").disabled = filter === null;
  const info = $("watch-info");
  info.dataset.subscribed = String(subscribed);
  if (filter === null) info.textContent = "Not watching. Type a filter (+ and # work) and press Watch.";
  else if (!subscribed) info.textContent = `Subscribing to ${filter}…`;
  else info.textContent = `Watching ${filter} (newest first, last ${MAX_MESSAGES} kept).`;
}

async function watch(filter) {
  const previous = watchFilter;
  if (previous !== null && previous !== filter && previous !== SYS_FILTER) {
    client.unsubscribe(previous).catch(() => {});
  }
  setWatching(filter);
  try {
    const granted = await client.subscribe(filter, 2);
    if (watchFilter !== filter) return; // another filter was chosen meanwhile
    if (granted === 0x80) {
      setWatching(null);
      $("watch-info").textContent = `The broker refused the subscription to ${filter}.`;
    } else {
      setWatching(filter, true); // null: not connected yet, subscribed on connect
    }
  } catch (error) {
    if (watchFilter === filter) setWatching(null);
    $("watch-info").textContent = `Could not watch ${filter}: ${error.message}`;
  }
}

$("watch-form").addEventListener("submit", (event) => {
  event.preventDefault();
  const filter = $("watch-filter").value.trim();
  if (filter) watch(filter);
});

$("watch-stop").addEventListener("click", () => {
  if (watchFilter !== null && watchFilter !== SYS_FILTER) client.unsubscribe(watchFilter).catch(() => {});
  setWatching(null);
});

$("watch-clear").addEventListener("click", () => {
  $("messages").replaceChildren();
});

function pad(n, width = 2) {
  return String(n).padStart(width, "0");
}

function showMessage({ topic, payload, qos, retain }) {
  const now = new Date();
  const item = document.createElement("li");
  const cell = (className, text, title) => {
    const span = document.createElement("span");
    span.className = className;
    span.textContent = text;
    if (title) span.title = title;
    item.append(span);
    return span;
  };
  cell("time", `${pad(now.getHours())}:${pad(now.getMinutes())}:${pad(now.getSeconds())}.${pad(now.getMilliseconds(), 3)}`,
    now.toISOString());
  const topicCell = cell("topic", "");
  topic.split("/").forEach((level, i) => { // let long topics wrap after a slash
    if (i > 0) topicCell.append("/", document.createElement("wbr"));
    topicCell.append(level);
  });
  cell("qos", `QoS ${qos}`);
  cell("retain", retain ? "retained" : "");
  const shown = formatPayload(payload);
  cell(`payload ${shown.kind}`, shown.text, `${payload.length} bytes${shown.kind === "hex" ? " (hex)" : ""}`);
  item.dataset.topic = topic;
  messageCount += 1;
  const list = $("messages");
  list.prepend(item);
  while (list.childElementCount > MAX_MESSAGES) list.lastElementChild.remove();
}

// The SUBACK for the subscriptions (re)made on connect: $SYS and the watched filter.
client.addEventListener("subscribed", (event) => {
  for (const { filter, granted } of event.detail.filters) {
    if (filter === SYS_FILTER) {
      showSysAccess(granted !== 0x80);
    } else if (filter === watchFilter && granted === 0x80) {
      client.unsubscribe(filter).catch(() => {});
      setWatching(null);
      $("watch-info").textContent = `The broker refused the subscription to ${filter}.`;
    }
  }
});

client.addEventListener("message", (event) => {
  const message = event.detail;
  if (topicMatches(SYS_FILTER, message.topic)) onSys(message.topic, message.payload);
  if (watchFilter !== null && topicMatches(watchFilter, message.topic)) showMessage(message);
});

// -- publish --------------------------------------------------------------------------------

$("publish-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const result = $("publish-result");
  const topic = $("publish-topic").value;
  const payload = $("publish-payload").value;
  const qos = Number($("publish-qos").value);
  const retain = $("publish-retain").checked;
  try {
    result.textContent = "publishing…";
    await client.publish(topic, payload, { qos, retain });
    const time = new Date().toLocaleTimeString();
    result.textContent = qos === 1
      ? `${time}: acknowledged by the broker (PUBACK).`
      : `${time}: sent (QoS 0, no acknowledgement).`;
  } catch (error) {
    result.textContent = `Not published: ${error.message}`;
  }
});

// -- start ----------------------------------------------------------------------------------

// Subscriptions made before connecting are sent with every (re)connect.
client.subscribe(SYS_FILTER, 0);
setWatching(null);
showState(client.state);
client.connect();

// For the browser tests and for poking around in the developer console.
window.dashboard = { client, sys, chart, get messageCount() { return messageCount; } };
