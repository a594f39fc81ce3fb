// The connmix-py console: plain JS, no framework, no build step.
// Everything shown comes from the engine and from clients, so it is put on
// the page as text (textContent), never as HTML.
"use strict";

const POLL_MS = 2000;
const $ = (id) => document.getElementById(id);

function show(element, text, kind) {
  element.textContent = text;
  element.className = kind || "";
}

// GET or POST a JSON API; resolves to {status, body}; a refusal (401/403)
// carries {"error": ...}, an API error {"E": {"c", "m"}}.
async function api(path, payload) {
  const init = payload === undefined ? {} : {
    method: "POST", headers: {"Content-Type": "application/json"}, body: JSON.stringify(payload)};
  const response = await fetch(path, init);
  let body;
  try { body = await response.json(); } catch (_) { body = null; }
  return {status: response.status, body};
}

function problem(result) {
  if (result.status !== 200) {
    const why = result.body && result.body.error ? result.body.error : "request failed";
    return `${result.status} ${why}`;
  }
  if (result.body && result.body.E) return `error ${result.body.E.c}: ${result.body.E.m}`;
  return null;
}

// -- live figures ------------------------------------------------------------

let previous = null;  // the last summary and when it came, for the rates

function rate(now, before, key, seconds) {
  if (!before || seconds <= 0) return "–";
  return ((now[key] - before.figures[key]) / seconds).toFixed(1);
}

function renderServers(servers) {
  const body = $("servers").tBodies[0];
  body.replaceChildren(...servers.map((server) => {
    const row = document.createElement("tr");
    for (const cell of [server.protocol, server.port, server.path || "", server.connections]) {
      const td = document.createElement("td");
      td.textContent = String(cell);
      row.appendChild(td);
    }
    return row;
  }));
}

function suggestClientUrl(servers) {
  const field = $("ws-url");
  const ws = servers.find((server) => server.protocol === "websocket");
  if (field.value || !ws) return;
  field.value = `ws://${location.hostname}:${ws.port}${ws.path}`;
}

async function refresh() {
  let result;
  try { result = await api("/v1/console/summary"); } catch (error) {
    show($("status"), `engine unreachable (${error.message})`, "error");
    return;
  }
  const why = problem(result);
  if (why) { show($("status"), why, "error"); return; }
  const figures = result.body.r;
  const at = performance.now();
  const seconds = previous ? (at - previous.at) / 1000 : 0;
  $("fig-node").textContent = figures.node;
  $("fig-connections").textContent = figures.connections;
  $("fig-channels").textContent = figures.channels;
  $("fig-subscriptions").textContent = figures.subscriptions;
  $("fig-in-rate").textContent = rate(figures, previous, "messages_in", seconds);
  $("fig-out-rate").textContent = rate(figures, previous, "messages_out", seconds);
  $("fig-lua-errors").textContent = figures.lua_errors;
  renderServers(figures.servers);
  suggestClientUrl(figures.servers);
  previous = {figures, at};
  show($("status"), `updated ${new Date().toLocaleTimeString()}`, "muted");
}

// -- channel inspector -------------------------------------------------------------

function table(headers, rows) {
  const element = document.createElement("table");
  const head = element.createTHead().insertRow();
  for (const name of headers) {
    const th = document.createElement("th");
    th.textContent = name;
    head.appendChild(th);
  }
  const body = element.createTBody();
  for (const cells of rows) {
    const row = body.insertRow();
    for (const cell of cells) {
      const td = row.insertCell();
      if (cell instanceof Node) td.appendChild(cell); else td.textContent = String(cell);
    }
  }
  return element;
}

function inspectorMessage(text, kind) {
  const p = document.createElement("p");
  show(p, text, kind);
  $("inspect-result").replaceChildren(p);
}

async function inspect(channel) {
  const result = await api(`/v1/console/channel?c=${encodeURIComponent(channel)}`);
  const why = problem(result);
  if (why) { inspectorMessage(why, "error"); return; }
  const found = result.body.r.subscribers;
  if (found.length === 0) { inspectorMessage(`nobody is subscribed to ${channel} on this node`, "muted"); return; }
  $("inspect-result").replaceChildren(table(["Client id", "Remote", "Port", "Context", "Channels"],
    found.map((conn) => {
      const context = document.createElement("pre");
      context.textContent = JSON.stringify(conn.context, null, 1);
      return [conn.client_id, conn.remote, conn.port, context, conn.channels.join(" ")];
    })));
}

async function listChannels() {
  const result = await api("/v1/console/channels");
  const why = problem(result);
  if (why) { inspectorMessage(why, "error"); return; }
  const {channels, total} = result.body.r;
  if (total === 0) { inspectorMessage("no channel has a subscriber on this node", "muted"); return; }
  const rows = channels.map((channel) => {
    const link = document.createElement("a");
    link.href = "#";
    link.textContent = channel.name;
    link.addEventListener("click", (event) => {
      event.preventDefault();
      $("inspect-channel").value = channel.name;
      inspect(channel.name);
    });
    return [link, channel.subscribers];
  });
  const shown = table(["Channel", "Subscribers"], rows);
  const parts = [shown];
  if (total > channels.length) {
    const more = document.createElement("p");
    show(more, `showing ${channels.length} of ${total} channels`, "muted");
    parts.push(more);
  }
  $("inspect-result").replaceChildren(...parts);
}

// -- publish and send --------------------------------------------------------------

async function push(event) {
  event.preventDefault();
  const kind = document.querySelector('input[name="kind"]:checked').value;
  const payload = {c: $("push-target").value, d: $("push-data").value,
                   t: $("push-binary").checked ? "binary" : "text"};
  let result;
  try { result = await api(`/v1/mesh/${kind}`, payload); } catch (error) {
    show($("push-result"), `request failed: ${error.message}`, "result error");
    return;
  }
  const why = problem(result);
  if (why) { show($("push-result"), why, "result error"); return; }
  const answer = result.body.r;
  const text = kind === "publish" ? `published: delivered to ${answer.s}, failed ${answer.f}` : "sent";
  show($("push-result"), text, "result ok");
  refresh();  // the figures show the push now, not at the next poll
}

// -- WebSocket test client ---------------------------------------------------------

let socket = null;

function logLine(kind, text) {
  const item = document.createElement("li");
  item.className = kind;
  item.textContent = text;
  $("ws-log").appendChild(item);
  item.scrollIntoView({block: "nearest"});
}

function hex(bytes) {
  return Array.from(bytes, (byte) => byte.toString(16).padStart(2, "0")).join(" ");
}

function parseHex(text) {
  const digits = text.replace(/[\s,]/g, "").replace(/^0x/i, "");
  if (digits.length % 2 !== 0 || /[^0-9a-f]/i.test(digits)) return null;
  const bytes = new Uint8Array(digits.length / 2);
  for (let i = 0; i < bytes.length; i++) bytes[i] = parseInt(digits.substr(i * 2, 2), 16);
  return bytes;
}

function setConnected(connected) {
  $("ws-connect").disabled = connected;
  $("ws-close").disabled = !connected;
  $("ws-send").disabled = !connected;
}

function connect(event) {
  event.preventDefault();
  const url = $("ws-url").value.trim();
  try { socket = new WebSocket(url); } catch (error) {
    logLine("event error", `cannot connect: ${error.message}`);
    return;
  }
  socket.binaryType = "arraybuffer";
  setConnected(true);
  logLine("event", `connecting to ${url}`);
  socket.onopen = () => { logLine("event", "open"); refresh(); };
  socket.onmessage = (message) => {
    if (typeof message.data === "string") logLine("in", `← ${message.data}`);
    else logLine("in", `← binary ${hex(new Uint8Array(message.data))}`);
  };
  // A failed connection has no detail in the browser: the close that follows says the code.
  socket.onerror = () => logLine("event error", "error");
  socket.onclose = (close) => {
    logLine("event", `closed: code ${close.code}${close.reason ? `, reason "${close.reason}"` : ""}`);
    socket = null;
    setConnected(false);
  };
}

function sendFrame(event) {
  event.preventDefault();
  if (!socket || socket.readyState !== WebSocket.OPEN) { logLine("event error", "not connected"); return; }
  const text = $("ws-message").value;
  if ($("ws-binary").checked) {
    const bytes = parseHex(text);
    if (bytes === null) { logLine("event error", "binary: give hex bytes, e.g. 01 ff 7e"); return; }
    socket.send(bytes);
    logLine("out", `→ binary ${hex(bytes)}`);
  } else {
    socket.send(text);
    logLine("out", `→ ${text}`);
  }
}

document.addEventListener("DOMContentLoaded", () => {
  $("inspect-form").addEventListener("submit", (event) => {
    event.preventDefault();
    inspect($("inspect-channel").value);
  });
  $("list-channels").addEventListener("click", listChannels);
  $("push-form").addEventListener("submit", push);
  $("ws-connect-form").addEventListener("submit", connect);
  $("ws-close").addEventListener("click", () => { if (socket) socket.close(1000); });
  $("ws-send-form").addEventListener("submit", sendFrame);
  refresh();
  setInterval(refresh, POLL_MS);
});
