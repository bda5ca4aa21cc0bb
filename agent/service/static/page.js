// The technician's page: the agent's own JSON API (/api/...), drawn once a second. No library,
// no build step: every text is set as text (never as HTML), so a device's name or a frame can
// never run as code.
"use strict";

const EVERY_MS = 1000; // how often what is shown is asked for again
const HISTORY_EVERY_MS = 10000; // the plots' resolution: one value per 10 s is kept
const LOG_LINES_ON_OVERVIEW = 12;

let timer = null;
let shown = null; // the route being drawn; a reply for an older one is dropped
let history = { name: null, at: 0, points: {} };

// --- small helpers

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (key === "class") node.className = value;
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value === true ? "" : String(value));
  }
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function svg(tag, attrs) {
  const node = document.createElementNS("http://www.w3.org/2000/svg", tag);
  for (const [key, value] of Object.entries(attrs)) node.setAttribute(key, String(value));
  return node;
}

function count(n, noun) {
  return `${(n || 0).toLocaleString()} ${noun}${n === 1 ? "" : "s"}`;
}

function duration(seconds) {
  const s = Math.max(0, Math.floor(seconds));
  if (s < 60) return `${s} s`;
  if (s < 3600) return `${Math.floor(s / 60)} min`;
  if (s < 86400) return `${Math.floor(s / 3600)} h ${Math.floor((s % 3600) / 60)} min`;
  return `${Math.floor(s / 86400)} d ${Math.floor((s % 86400) / 3600)} h`;
}

function age(ms, now) {
  if (typeof ms !== "number") return "never";
  const ago = now - ms;
  if (ago < -1000) return "in the future (the clock was set back)";
  return ago < 1000 ? "just now" : `${duration(ago / 1000)} ago`;
}

function clock(ms) {
  return new Date(ms).toLocaleTimeString([], { hourCycle: "h23" });
}

function size(bytes) {
  if (bytes < 1000) return `${bytes} B`;
  const units = ["kB", "MB", "GB", "TB"];
  let value = bytes;
  let unit = "B";
  for (const next of units) {
    if (value < 1000) break;
    value /= 1000;
    unit = next;
  }
  return `${value < 100 ? value.toFixed(1) : Math.round(value)} ${unit}`;
}

function reading(value) {
  if (value === null || value === undefined) return "—";
  if (typeof value === "number") {
    return Number.isInteger(value) ? String(value) : String(Number(value.toPrecision(6)));
  }
  return String(value);
}

function stateBadge(state) {
  const name = state || "ok";
  return el("span", { class: `state state-${name}`, "data-state": name }, name.toUpperCase());
}

async function getJSON(url) {
  const response = await fetch(url, { cache: "no-store", credentials: "same-origin" });
  let body = null;
  try {
    body = await response.json();
  } catch (_) {
    body = {};
  }
  if (!response.ok) throw new Error(body.error || `${url}: HTTP ${response.status}`);
  return body;
}

function routeNow() {
  let hash = location.hash.replace(/^#/, "");
  try {
    hash = decodeURIComponent(hash);
  } catch (_) {
    // typed by hand ("#/device/100%"): taken as it is, not an error that stops the page
  }
  if (hash.startsWith("/device/")) return { page: "device", name: hash.slice("/device/".length) };
  if (hash === "/log") return { page: "log" };
  return { page: "overview" };
}

function deviceLink(name) {
  return el("a", { href: `#/device/${encodeURIComponent(name)}` }, name);
}

// Each part of a page is redrawn in its own place; a node shown already (the write form) is
// left where it is, so that it keeps its focus and what is typed in it.
function show(...nodes) {
  const view = document.getElementById("view");
  const parts = nodes.filter(Boolean);
  const same = view.children.length === parts.length;
  if (!same) view.replaceChildren(...parts);
  else parts.forEach((node, i) => { if (view.children[i] !== node) view.children[i].replaceWith(node); });
}

function fresh(status) {
  const line = document.getElementById("freshness");
  line.className = "";
  line.textContent = `live · ${clock(Date.now())}`;
  if (status && status.agent) document.getElementById("agent-id").textContent = status.agent.id;
}

function stale(error) {
  const line = document.getElementById("freshness");
  line.className = "stale";
  line.textContent = `the agent does not answer (${error.message}): what is shown is old`;
}

// --- the overview

function card(title, ...lines) {
  return el("section", { class: "card" }, el("h3", {}, title), lines.map((l) => el("p", {}, l)));
}

function agentCard(agent, now) {
  const up = typeof agent.started === "number" ? `up ${duration((now - agent.started) / 1000)}` : "";
  return card("Agent", agent.id || "?", `edge-agent ${agent.version || "?"}, pid ${agent.pid}`, up);
}

function linkCard(link) {
  const connected = link.state === "connected";
  const state = el("span", { class: connected ? "" : "bad", "data-link": link.state },
    connected ? "connected" : "DISCONNECTED");
  const lines = [
    el("span", {}, state, ` ${connected ? "to" : "from"} ${link.broker || "?"}`),
    `MQTT ${link.protocol || "?"}; ${count(link.sent, "reading")} sent, ${count(link.reconnects, "reconnect")}`,
  ];
  if (link.refused) lines.push(el("span", { class: "bad" }, `${count(link.refused, "message")} refused by the broker`));
  if (link.last_error) lines.push(`last error: ${link.last_error}`);
  return card("Link", ...lines);
}

function bufferCard(buffer, now) {
  const depth = buffer.depth || 0;
  const waiting = depth ? `${count(depth, "sample")} waiting, oldest ${age(buffer.oldest, now)}` : "empty";
  const lines = [waiting, `${size(buffer.bytes || 0)} on disk`];
  lines.push(el("span", { class: buffer.dropped ? "bad" : "" }, `${(buffer.dropped || 0).toLocaleString()} dropped`));
  if (buffer.lost) lines.push(el("span", { class: "bad" }, `${buffer.lost.toLocaleString()} lost to damage`));
  return card("Buffer", ...lines);
}

function gatewayCard(gateway) {
  const lines = [];
  if ("load" in gateway) lines.push(`load ${gateway.load.toFixed(2)}`);
  if ("mem_available" in gateway) lines.push(`${size(gateway.mem_available)} memory available`);
  if ("disk_free" in gateway) lines.push(`${size(gateway.disk_free)} disk free`);
  if ("temperature" in gateway) lines.push(`SoC ${gateway.temperature.toFixed(1)} °C`);
  return card("Gateway", ...lines);
}

function busesCard(buses) {
  const names = Object.keys(buses);
  if (!names.length) return card("Buses", "none");
  return card("Buses", ...names.map((name) => {
    const bus = buses[name];
    const text = bus.connected ? "connected" : "DISCONNECTED";
    const overruns = bus.overruns ? `, ${count(bus.overruns, "overrun")}` : "";
    return el("span", { "data-bus": name }, `${name} `, el("span", { class: bus.connected ? "" : "bad" }, text), overruns);
  }));
}

function deviceRows(name, device, now) {
  const errors = device.faults && Object.keys(device.faults).length
    ? `${count(device.errors, "error")} (${Object.entries(device.faults).map(([k, n]) => `${k} ${n}`).join(", ")})`
    : count(device.errors, "error");
  const notes = [device.last_error || "", device.missing ? `lacks ${device.missing.join(", ")}` : ""]
    .filter(Boolean).join("; ");
  const rows = [el("tr", { "data-device": name, "data-state": device.state },
    el("td", {}, deviceLink(name)),
    el("td", {}, stateBadge(device.state)),
    el("td", {}, age(device.last_good, now)),
    el("td", { class: "num" }, (device.ok || 0).toLocaleString()),
    el("td", { class: "num" }, errors),
    el("td", {}, notes))];
  if (device.state === "failing" && device.frames && device.frames.length) {
    rows.push(el("tr", { class: "frames", "data-frames": name },
      el("td", { colspan: 6 }, el("strong", {}, "last frames"), el("pre", {}, device.frames.join("\n")))));
  }
  return rows;
}

function devicesTable(devices, now) {
  const names = Object.keys(devices);
  if (!names.length) return el("p", {}, "No devices are configured.");
  const head = el("tr", {}, ["Device", "State", "Last good", "OK", "Errors", "Last error"]
    .map((h, i) => el("th", { class: i === 3 || i === 4 ? "num" : "" }, h)));
  return el("div", { class: "scroll" }, el("table", { id: "devices" },
    el("thead", {}, head), el("tbody", {}, names.map((n) => deviceRows(n, devices[n], now)))));
}

function logList(lines) {
  if (!lines.length) return el("p", { class: "muted" }, "Nothing logged yet.");
  return el("pre", { id: "log" }, lines.map((line) => el("span", { class: `log-${line.level}` },
    `${clock(line.ts)} ${line.level.toUpperCase()} ${line.text}\n`)));
}

async function overview(key) {
  const [status, log] = await Promise.all([getJSON("/api/status"), getJSON("/api/log")]);
  if (shown !== key) return null; // the technician went elsewhere meanwhile
  const now = status.now;
  const devices = status.devices || {};
  const states = Object.values(devices).map((d) => d.state);
  const failing = states.filter((s) => s === "failing").length;
  const degraded = states.filter((s) => s === "degraded").length;
  show(
    el("h1", {}, `${states.length} devices: ${states.length - failing - degraded} ok, ${degraded} degraded, ${failing} failing`),
    el("div", { class: "cards" },
      agentCard(status.agent || {}, now), linkCard(status.link || {}), bufferCard(status.buffer || {}, now),
      gatewayCard(status.gateway || {}), busesCard(status.buses || {})),
    el("h2", {}, "Devices"),
    devicesTable(devices, now),
    el("h2", {}, "Recent log ", el("a", { href: "#/log" }, "(all)")),
    logList(log.lines.slice(-LOG_LINES_ON_OVERVIEW)),
  );
  return status;
}

async function logPage(key) {
  const log = await getJSON("/api/log");
  if (shown !== key) return null;
  show(el("h1", {}, "Recent log"), el("p", { class: "muted" }, "Newest last; the agent keeps the last lines in memory only."),
    logList(log.lines));
  return null;
}

// --- one device

function plot(name, unit, pairs, now, windowMs) {
  const figure = el("figure", { "data-plot": name });
  const numbers = pairs.map((p) => p[1]);
  const last = numbers.length ? numbers[numbers.length - 1] : null;
  figure.append(el("figcaption", {}, `${name}: ${reading(last)} ${unit || ""}`));
  if (numbers.length < 2) {
    figure.append(el("p", { class: "muted" }, "Not enough readings yet for a plot."));
    return figure;
  }
  let low = Math.min(...numbers);
  let high = Math.max(...numbers);
  if (low === high) { low -= 1; high += 1; }
  const width = 600;
  const height = 140;
  // The last hour, or less while there is less: what there is fills the plot (a minute at least).
  const span = Math.min(windowMs, Math.max(60000, now - pairs[0][0]));
  const start = now - span;
  const x = (ts) => ((ts - start) / span) * width;
  const y = (v) => height - 4 - ((v - low) / (high - low)) * (height - 8);
  const chart = svg("svg", { class: "plot", viewBox: `0 0 ${width} ${height}`, preserveAspectRatio: "none", role: "img" });
  chart.append(svg("line", { x1: 0, y1: height - 1, x2: width, y2: height - 1 }));
  // A gap of more than three slots (the device did not answer) breaks the line.
  let run = [];
  const runs = [run];
  pairs.forEach(([ts, v], i) => {
    if (i && ts - pairs[i - 1][0] > 3 * HISTORY_EVERY_MS) { run = []; runs.push(run); }
    run.push(`${x(ts).toFixed(1)},${y(v).toFixed(1)}`);
  });
  for (const points of runs) chart.append(svg("polyline", { points: points.join(" ") }));
  figure.append(chart, el("div", { class: "axis" },
    el("span", {}, `−${Math.round(span / 60000)} min`),
    el("span", {}, `${reading(low)} – ${reading(high)} ${unit || ""}`),
    el("span", {}, "now")));
  return figure;
}

function pointsTable(device, writes) {
  const head = el("tr", {}, el("th", {}, "Point"), el("th", { class: "num" }, "Value"), el("th", {}, "Unit"),
    el("th", {}, "Limits"));
  const rows = device.points.map((p) => el("tr", { "data-point-row": p.name },
    el("td", {}, p.name),
    el("td", { class: "value num", "data-point": p.name }, reading(p.value)),
    el("td", {}, p.unit || ""),
    el("td", { class: "muted" }, limits(p, writes))));
  return el("div", { class: "scroll" }, el("table", { id: "points" }, el("thead", {}, head), el("tbody", {}, rows)));
}

function limits(point, writes) {
  if (!point.writable) return "read only";
  const range = [point.min !== null ? `min ${point.min}` : "", point.max !== null ? `max ${point.max}` : ""]
    .filter(Boolean).join(", ");
  return `writable${range ? ` (${range})` : ""}${writes ? "" : "; writes are off here"}`;
}

// The write form lives outside what is redrawn each second, so that typing is never lost.
let writeForm = null;

function writePanel(device) {
  const writable = device.points.filter((p) => p.writable);
  if (!device.writes || !writable.length) return null;
  if (writeForm && writeForm.dataset.device === device.name) return writeForm;
  const select = el("select", { id: "write-point", name: "point" },
    writable.map((p) => el("option", { value: p.name }, p.name)));
  const input = el("input", { id: "write-value", name: "value", inputmode: "decimal", autocomplete: "off", required: true });
  const result = el("p", { id: "write-result", role: "status" });
  const ask = el("button", { type: "submit", id: "write-ask" }, "Write…");
  const confirm = el("button", { type: "button", id: "write-confirm", class: "confirm", hidden: true }, "");
  const cancel = el("button", { type: "button", id: "write-cancel", hidden: true }, "Cancel");
  const form = el("form", { class: "write", id: "write", "data-device": device.name },
    el("label", { for: "write-point" }, "Set"), select,
    el("label", { for: "write-value" }, "to"), input, ask, confirm, cancel, result);
  const asking = (on) => { ask.hidden = on; confirm.hidden = !on; cancel.hidden = !on; select.disabled = on; input.disabled = on; };
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    confirm.textContent = `Yes: write ${input.value} to ${device.name}.${select.value}`;
    result.textContent = "This changes the device. Confirm or cancel.";
    asking(true);
  });
  cancel.addEventListener("click", () => { asking(false); result.textContent = "Not written."; });
  confirm.addEventListener("click", async () => {
    asking(false);
    result.textContent = "Writing…";
    const point = writable.find((p) => p.name === select.value);
    result.textContent = await write(device.name, select.value, input.value, point && point.type);
  });
  writeForm = form;
  return form;
}

// What is typed is a number or true/false, but for a text point (its type "string"), which
// takes it as typed: "0042" stays "0042".
async function write(device, point, text, type) {
  let value = text;
  if (type !== "string") {
    value = text.trim();
    if (/^(true|false)$/.test(value)) value = value === "true";
    else if (value !== "" && !Number.isNaN(Number(value))) value = Number(value);
  }
  const url = `/api/devices/${encodeURIComponent(device)}/points/${encodeURIComponent(point)}`;
  try {
    const response = await fetch(url, {
      method: "POST",
      credentials: "same-origin",
      headers: { "Content-Type": "application/json", "X-Edge-Agent": "write" },
      body: JSON.stringify({ value }),
    });
    const body = await response.json();
    if (response.ok && body.ok) return `Set: ${device}.${point} read back ${reading(body.value)}.`;
    return `Not set: ${body.error || `HTTP ${response.status}`}`;
  } catch (error) {
    return `Not set: ${error.message}`;
  }
}

async function devicePage(name, key) {
  const base = `/api/devices/${encodeURIComponent(name)}`;
  const device = await getJSON(base);
  const now = device.now;
  if (history.name !== name || now - history.at >= HISTORY_EVERY_MS) {
    const fetched = await getJSON(`${base}/history`);
    history = { name, at: now, points: fetched.points, window: fetched.window_ms };
  }
  if (shown !== key) return null; // drawn, it would replace the page now shown (its form too)
  const units = Object.fromEntries(device.points.map((p) => [p.name, p.unit]));
  const plots = Object.entries(history.points).map(([point, pairs]) => {
    const latest = device.points.find((p) => p.name === point);
    const extended = pairs.slice();
    if (latest && typeof latest.value === "number" && typeof device.last_good === "number"
        && (!pairs.length || device.last_good > pairs[pairs.length - 1][0])) {
      extended.push([device.last_good, latest.value]);
    }
    return plot(point, units[point], extended, now, history.window);
  });
  const facts = [
    el("p", {}, stateBadge(device.state), ` ${device.bus ? `on bus ${device.bus}` : "on no bus"}; last good ${age(device.last_good, now)}`),
    el("p", {}, `${(device.ok || 0).toLocaleString()} polls ok, ${count(device.errors, "error")}, ${count(device.overruns, "overrun")}`
      + (device.retry_every ? `; retried every ${device.retry_every} s` : "")),
  ];
  if (device.last_error) facts.push(el("p", { class: "bad", id: "last-error" }, `last error: ${device.last_error}`));
  if (device.missing) facts.push(el("p", {}, `lacks ${device.missing.join(", ")}`));
  const faults = Object.entries(device.faults || {});
  show(
    el("h1", { "data-device": name, "data-state": device.state }, name),
    el("div", { id: "facts" }, facts),
    el("h2", {}, "Points"),
    pointsTable(device, device.writes),
    writePanel(device) || el("div", {}),
    el("h2", {}, "Last hour"),
    plots.length ? el("div", { class: "plots" }, plots) : el("p", { class: "muted" }, "No numeric readings yet."),
    el("h2", {}, "Faults"),
    faults.length
      ? el("table", { id: "faults" }, el("tbody", {}, faults.map(([k, n]) => el("tr", {}, el("td", {}, k), el("td", { class: "num" }, n.toLocaleString())))))
      : el("p", {}, "None counted."),
    el("h2", {}, "Last raw frames"),
    device.frames && device.frames.length
      ? el("pre", { id: "frames" }, device.frames.join("\n"))
      : el("p", { class: "muted" }, "None kept (the driver keeps none, or nothing went wrong)."),
    el("h2", {}, "Request plan"),
    device.plan.length ? el("pre", { id: "plan" }, device.plan.join("\n")) : el("p", { class: "muted" }, "The driver says none."),
  );
  return device;
}

// --- the loop

async function tick() {
  clearTimeout(timer);
  const route = routeNow();
  const key = JSON.stringify(route);
  shown = key;
  try {
    let status = null;
    if (route.page === "device") status = await devicePage(route.name, key);
    else if (route.page === "log") status = await logPage(key);
    else status = await overview(key);
    if (shown === key) fresh(status);
  } catch (error) {
    if (shown === key) stale(error);
  } finally {
    if (shown === key) timer = setTimeout(tick, EVERY_MS);
  }
}

window.addEventListener("hashchange", () => { writeForm = null; tick(); });
tick();
