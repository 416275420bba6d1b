// teachcam web console. Plain script, no build step. Every change goes through the JSON API,
// which sends the same actions as the buttons. Data is only ever put into the page as text.
"use strict";
const $ = (id) => document.getElementById(id);
const el = (tag, text) => { const e = document.createElement(tag); if (text !== undefined) e.textContent = text; return e; };
let status = null, samplesKey = "", list = { classes: [], samples: [] };
const FEW = 5; // fewer samples than this in a class: show a hint

async function api(path, body) {
  const opts = body === undefined ? {} : { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) };
  const r = await fetch(path, opts);
  let j = {};
  try { j = await r.json(); } catch (e) { /* not JSON */ }
  if (r.status === 401) { $("conn").textContent = "logged out: open the login URL again"; }
  if (!r.ok) throw new Error(j.error || r.statusText);
  return j;
}
function say(text, bad) { const m = $("msg"); m.textContent = text; m.style.color = bad ? "#c22" : "#272"; }

// Live picture: polled JPEG snapshots (default) or the MJPEG stream (#mjpeg).
function startView() {
  const img = $("frame");
  if (location.hash === "#mjpeg") { img.src = "/stream.mjpg"; return; }
  let n = 0;
  const next = () => setTimeout(() => { img.src = "/api/snapshot.jpg?n=" + (n++); }, 150);
  img.onload = () => { img.dataset.frames = String(n); next(); };
  img.onerror = () => setTimeout(next, 1000);
  next();
}

// Heat map: while ticked, the loop maps each frame's answer over the positions of the last
// feature map; it is drawn over the square of the picture the model sees.
let heatOn = false, heatGen = 0;
async function heatTick(gen) {
  if (gen !== heatGen) return; // a newer toggle runs its own loop
  if (!heatOn) { const cv = $("heatcanvas"); cv.getContext("2d").clearRect(0, 0, cv.width, cv.height); return; }
  try {
    const r = await fetch("/api/heatmap");
    if (r.status === 200) drawHeat(await r.json());
    else if (r.status !== 202) { let j = {}; try { j = await r.json(); } catch (e) { /* not JSON */ } $("heatinfo").textContent = j.error || r.statusText; }
  } catch (e) { /* try again */ }
  setTimeout(() => heatTick(gen), 400);
}
function drawHeat(m) {
  const img = $("frame"), cv = $("heatcanvas");
  const bw = img.clientWidth, bh = img.clientHeight, nw = img.naturalWidth, nh = img.naturalHeight;
  cv.width = bw; cv.height = bh;
  const ctx = cv.getContext("2d");
  if (!nw || !nh || !heatOn) return;
  const sc = Math.min(bw / nw, bh / nh), ox = (bw - nw * sc) / 2, oy = (bh - nh * sc) / 2;
  const top = Math.max(1e-9, ...m.values);
  const small = document.createElement("canvas");
  small.width = m.w; small.height = m.h;
  const sctx = small.getContext("2d"), px = sctx.createImageData(m.w, m.h);
  m.values.forEach((v, i) => { const t = Math.max(v, 0) / top; px.data.set([255, Math.round(210 * (1 - t)), 0, Math.round(180 * t)], 4 * i); });
  sctx.putImageData(px, 0, 0);
  ctx.imageSmoothingEnabled = true;
  const [cx, cy, side] = m.crop;
  ctx.drawImage(small, ox + cx * sc, oy + cy * sc, side * sc, side * sc);
  cv.dataset.frame = String(m.frame);
  cv.dataset.cls = m.class;
  $("heatinfo").textContent = "red: where " + m.class + "'s score comes from";
}

// Dreams: one at a time on the device; poll until the PNG is ready. A dream is kept for the
// head it was made with: when a press or a fine-tune swaps the head while it runs, the device
// answers 404 and the page asks again for the new head (a few times at most).
async function dreamPoll(cls, again = 3) {
  const r = await fetch("/api/dream?class=" + encodeURIComponent(cls));
  if (r.status === 200) {
    $("dreamimg").src = URL.createObjectURL(await r.blob());
    $("dreamimg").alt = "what the head thinks " + cls + " looks like";
    $("dreamimg").dataset.cls = cls;
    $("dreammsg").textContent = cls + ": p = " + r.headers.get("X-Dream-Prob") + ", " + r.headers.get("X-Dream-Seconds") + " s";
    return;
  }
  let j = {}; try { j = await r.json(); } catch (e) { /* not JSON */ }
  if (r.status === 202) { $("dreammsg").textContent = "dreaming " + cls + "… " + Math.round(j.seconds) + " s"; setTimeout(() => dreamPoll(cls, again), 1000); return; }
  if (r.status === 404 && again > 0) {
    $("dreammsg").textContent = "the head changed while dreaming " + cls + "; dreaming again";
    api("/api/dream", { class: cls }).then(() => dreamPoll(cls, again - 1), (e) => { $("dreammsg").textContent = e.message; });
    return;
  }
  $("dreammsg").textContent = j.error || r.statusText;
}

// A click is a press (a short burst, as a button press); `count` asks for that many frames.
function capture(index, name, count) {
  const body = count === undefined ? { class: name } : { class: name, count };
  return api("/api/capture", body).then(
    (r) => say(r.saved ? "saved #" + r.saved.id + " as " + r.saved.label : "capturing " + name),
    (e) => say("capture refused: " + e.message, true));
}

function teachButtons() {
  const box = $("teach");
  const names = status.classes;
  if (box.dataset.key === names.join("\n")) return;
  box.dataset.key = names.join("\n");
  box.replaceChildren();
  names.forEach((name, i) => {
    const b = el("button", name);
    b.type = "button";
    b.dataset.class = name;
    let timer = null, held = false;
    const stop = () => { clearInterval(timer); timer = null; b.classList.remove("busy"); };
    b.addEventListener("pointerdown", (ev) => {
      ev.preventDefault();
      held = false;
      b.classList.add("busy");
      // Held for 500 ms: one frame every 250 ms until released.
      timer = setTimeout(() => { held = true; capture(i, name, 1); timer = setInterval(() => capture(i, name, 1), 250); }, 500);
    });
    b.addEventListener("pointerup", () => { const wasHeld = held; stop(); if (!wasHeld) capture(i, name); });
    b.addEventListener("pointerleave", stop);
    b.addEventListener("contextmenu", (ev) => ev.preventDefault());
    box.append(b);
  });
}

function classTable() {
  const tb = $("classtable").tBodies[0];
  tb.replaceChildren();
  const few = [];
  for (const name of status.classes) {
    const n = status.samples_per_class[name] || 0;
    if (n < FEW) few.push(name + " (" + n + ")");
    const tr = el("tr");
    tr.append(el("td", name), el("td", String(n)));
    const td = el("td");
    const ren = el("button", "rename"); ren.type = "button";
    ren.onclick = () => { const to = prompt("New name for " + name, name); if (to && to !== name) api("/api/classes/rename", { from: name, to }).then(() => say("renamed"), (e) => say(e.message, true)); };
    const rem = el("button", "remove"); rem.type = "button";
    rem.onclick = () => { if (confirm("Remove " + name + " and its " + n + " samples?")) api("/api/classes/remove", { name }).then(() => say("removed " + name), (e) => say(e.message, true)); };
    td.append(ren, " ", rem);
    tr.append(td);
    tb.append(tr);
  }
  $("hint").textContent = few.length ? "Too few samples to learn well (aim for " + FEW + "+ each, in different positions): " + few.join(", ") : "";
}

function learning() {
  const box = $("learn");
  box.replaceChildren();
  const h = status.head;
  const dl = el("dl");
  const add = (k, v) => dl.append(el("dt", k), el("dd", v));
  add("samples", String(status.samples));
  add("head", h ? "version " + status.head_version + " (" + h.kind + ")" : "none yet: teach at least one class");
  if (h) add("held-out accuracy", h.holdout_accuracy == null ? "not enough samples to hold some out" : (100 * h.holdout_accuracy).toFixed(1) + " %");
  const ft = status.last_fine_tune;
  add("last fine-tune", ft ? ft.result + " " + Math.round((status.uptime_s * 1000 - ft.at_ms) / 1000) + " s ago" : "none yet");
  box.append(dl);
  const t = $("confusion");
  t.replaceChildren();
  if (h && h.confusion) {
    t.append(el("caption", "held-out confusion (rows: true class, columns: predicted)"));
    const hr = el("tr"); hr.append(el("th", ""));
    h.classes.forEach((c) => hr.append(el("th", c)));
    t.append(hr);
    h.confusion.forEach((row, i) => {
      const tr = el("tr"); tr.append(el("th", h.classes[i]));
      row.forEach((n, j) => { const td = el("td", String(n)); if (n && i !== j) td.style.color = "#c22"; tr.append(td); });
      t.append(tr);
    });
  }
}

function fillSelect(sel, names) {
  const keep = sel.value;
  sel.replaceChildren(...names.map((n) => { const o = el("option", n); o.value = n; return o; }));
  if (names.includes(keep)) sel.value = keep;
}

async function refreshSamples() {
  list = await api("/api/samples");
  fillSelect($("galclass"), list.classes);
  fillSelect($("relabelto"), list.classes);
  fillSelect($("dreamclass"), list.classes);
  gallery();
}

function gallery() {
  const box = $("thumbs");
  const cls = $("galclass").value;
  box.replaceChildren();
  for (const s of list.samples.filter((s) => s.label === cls).reverse()) {
    const l = el("label");
    const cb = el("input"); cb.type = "checkbox"; cb.value = String(s.id);
    const img = el("img"); img.loading = "lazy"; img.src = "/api/samples/" + s.id + "/thumb"; img.alt = "sample " + s.id; img.dataset.id = String(s.id);
    l.append(cb, img);
    box.append(l);
  }
}
const selected = () => [...$("thumbs").querySelectorAll("input:checked")].map((c) => Number(c.value));

// The inbox: unsure frames, each labelled with one click (it becomes a sample) or dismissed.
let inboxKey = "";
async function refreshInbox() {
  const r = await api("/api/inbox");
  const box = $("inboxitems");
  $("inboxcount").textContent = r.capacity ? "(" + r.items.length + " of at most " + r.capacity + ")" : "(off)";
  box.replaceChildren();
  for (const it of r.items.slice().reverse()) {
    const card = el("div"); card.className = "inboxitem"; card.dataset.id = String(it.id);
    const img = el("img"); img.loading = "lazy"; img.src = "/api/inbox/" + it.id + "/thumb"; img.alt = "unsure frame " + it.id;
    const why = el("div", it.reason + (it.guess ? " · " + it.guess + " " + Math.round(100 * it.confidence) + " %" : ""));
    why.className = "small";
    const row = el("div"); row.className = "row";
    const sel = el("select"); fillSelect(sel, status ? status.classes : []);
    if (it.guess && status && status.classes.includes(it.guess)) sel.value = it.guess;
    const add = el("button", "Add"); add.type = "button"; add.className = "label";
    add.onclick = () => api("/api/inbox/label", { id: it.id, class: sel.value }).then(
      (j) => { $("inboxmsg").textContent = "frame " + it.id + " is now sample #" + j.saved.id + " of " + j.saved.label; inboxKey = ""; samplesKey = ""; },
      (e) => { $("inboxmsg").textContent = e.message; });
    const dis = el("button", "Dismiss"); dis.type = "button"; dis.className = "dismiss";
    dis.onclick = () => api("/api/inbox/dismiss", { ids: [it.id] }).then(() => { card.remove(); inboxKey = ""; }, (e) => { $("inboxmsg").textContent = e.message; });
    row.append(sel, add, dis);
    card.append(img, why, row);
    box.append(card);
  }
}

async function health() {
  const h = await api("/api/health");
  const dl = $("healthlist");
  dl.replaceChildren();
  const add = (k, v) => dl.append(el("dt", k), el("dd", v == null ? "–" : String(v)));
  add("camera", (h.camera || "?") + " · " + h.camera_source);
  add("model", h.model);
  add("uptime", h.uptime_s + " s");
  add("memory (RSS)", h.rss_bytes == null ? null : (h.rss_bytes / 1048576).toFixed(1) + " MiB");
  add("disk free", h.disk_free_bytes == null ? null : (h.disk_free_bytes / 1073741824).toFixed(2) + " GiB");
  add("errors", Object.entries(h.errors || {}).filter(([, n]) => n).map(([k, n]) => k + " " + n).join(", ") || "none");
  add("last error", h.last_error);
  add("version", h.version);
}

// What `teachcam doctor` says, checked on the device (the model check loads it again: seconds).
async function doctor() {
  const ul = $("doctorlist");
  ul.replaceChildren(el("li", "checking…"));
  try {
    const r = await api("/api/doctor");
    ul.replaceChildren(...r.checks.map((c) => {
      const li = el("li", (c.status === "ok" ? "ok" : c.status === "fail" ? "FAIL" : "note") + " · " + c.area + ": " + c.message);
      li.className = c.status;
      return li;
    }));
  } catch (e) { ul.replaceChildren(el("li", e.message)); }
}

// Import: the file goes up as it is; the device verifies it whole before adding anything.
async function importFile(ev) {
  ev.preventDefault();
  const f = $("importfile").files[0];
  if (!f) return;
  const m = $("importmsg");
  m.textContent = "uploading and checking " + f.name + "…";
  try {
    const r = await fetch("/api/import", { method: "POST", headers: { "Content-Type": "application/x-tar" }, body: f });
    let j = {}; try { j = await r.json(); } catch (e) { /* not JSON */ }
    if (!r.ok) throw new Error(j.error || r.statusText);
    m.textContent = "imported " + j.imported + ", already here " + j.skipped + (j.classes_added && j.classes_added.length ? ", new classes: " + j.classes_added.join(", ") : "");
    m.dataset.imported = String(j.imported);
    samplesKey = "";
  } catch (e) { m.textContent = "import refused: " + e.message; m.dataset.imported = "error"; }
}

async function tick() {
  try {
    status = await api("/api/status");
    $("conn").textContent = "";
    const a = $("answer");
    a.textContent = status.class;
    a.classList.toggle("unknown", status.class === "unknown");
    $("conf").textContent = (100 * status.confidence).toFixed(0) + " %";
    $("meta").textContent = status.fps.toFixed(1) + " fps · head v" + status.head_version + " · camera " + status.camera;
    teachButtons();
    classTable();
    learning();
    const key = status.samples + "|" + status.classes.join(",") + "|" + status.head_version;
    if (key !== samplesKey) { samplesKey = key; await refreshSamples(); }
    const ikey = status.inbox + "|" + status.classes.join(",");
    if (ikey !== inboxKey) { inboxKey = ikey; await refreshInbox(); }
  } catch (e) {
    $("conn").textContent = "no answer: " + e.message;
  }
}

$("undo").onclick = () => api("/api/undo", {}).then((r) => say("removed the press of #" + r.undone.id + " (" + r.samples.length + " samples)"), (e) => say(e.message, true));
$("inboxclear").onclick = () => api("/api/inbox/dismiss", { all: true }).then((r) => { $("inboxmsg").textContent = "dismissed " + r.dismissed; inboxKey = ""; }, (e) => { $("inboxmsg").textContent = e.message; });
$("addform").onsubmit = (ev) => { ev.preventDefault(); const name = $("newclass").value.trim(); api("/api/classes/add", { name }).then(() => { say("added " + name); $("newclass").value = ""; }, (e) => say(e.message, true)); };
$("galclass").onchange = gallery;
$("delsel").onclick = () => { const ids = selected(); if (ids.length) api("/api/samples/delete", { ids }).then((r) => { say("deleted " + r.deleted.length); samplesKey = ""; }, (e) => say(e.message, true)); };
$("relabel").onclick = () => { const ids = selected(); if (ids.length) api("/api/samples/relabel", { ids, to: $("relabelto").value }).then(() => { say("relabelled"); samplesKey = ""; }, (e) => say(e.message, true)); };
$("heat").onchange = (ev) => { heatOn = ev.target.checked; $("heatinfo").textContent = ""; heatTick(++heatGen); };
$("dream").onclick = () => {
  const cls = $("dreamclass").value;
  if (!cls) return;
  api("/api/dream", { class: cls }).then(() => dreamPoll(cls), (e) => { $("dreammsg").textContent = e.message; });
};
$("importform").onsubmit = importFile;
$("doctorbtn").onclick = doctor;
startView();
tick();
setInterval(tick, 1000);
health();
setInterval(health, 5000);
