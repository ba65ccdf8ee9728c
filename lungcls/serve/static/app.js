// lungcls page: upload X-rays to /api/predict, show each model's probabilities, prediction, flags
// and Grad-CAM overlay; download the results (CSV) and the overlays (ZIP). No external resources.
"use strict";

const state = { models: [], limits: {}, results: [], margin: null };
const $ = (sel) => document.querySelector(sel);

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") node.className = v;
    else if (k === "text") node.textContent = v;
    else node.setAttribute(k, v);
  }
  for (const c of children) node.append(c);
  return node;
}

const fmt = (p) => (100 * p).toFixed(1) + "%";

async function loadModels() {
  const res = await fetch("/api/models");
  const body = await res.json();
  state.models = body.models;
  state.limits = body.limits || {};
  const box = $("#models");
  box.replaceChildren();
  for (const m of state.models) {
    const button = el("button", { type: "button", class: "card-button", text: "model card" });
    button.addEventListener("click", () => showCard(m.name));
    box.append(el("span", { class: "model-chip", "data-model": m.name }, m.name, button));
  }
  const l = state.limits;
  if (l.max_upload_mb) $("#limits").textContent = `Up to ${l.max_upload_mb} MB and ${l.max_files} files per upload.`;
}

function row(table, key, value) {
  table.append(el("tr", {}, el("th", { text: key }), el("td", { text: value })));
}

function showCard(name) {
  const m = state.models.find((x) => x.name === name);
  if (!m) return;
  $("#card-title").textContent = m.name;
  const t = el("table");
  row(t, "backbone", m.backbone);
  row(t, "fine-tune", Object.entries(m.finetune).map(([k, v]) => `${k}=${v}`).join(", "));
  row(t, "parameters", `${m.trainable_params.toLocaleString()} trainable of ${m.total_params.toLocaleString()}`);
  row(t, "checkpoint", m.checkpoint);
  row(t, "input", `${m.image_size} px, normalisation mean ${m.normalization.mean.map((v) => v.toFixed(3)).join("/")}`);
  row(t, "classes", m.classes.join(", ") + (m.normal_class ? ` (normal: ${m.normal_class})` : ""));
  const d = m.training_data;
  const counts = d.train_images_per_class ? Object.entries(d.train_images_per_class).map(([c, n]) => `${c} ${n}`).join(", ") : "not recorded";
  row(t, "training data", `${d.dataset || "?"} (${d.folder || "?"}); train images: ${counts}`);
  const tm = m.test_metrics;
  if (tm) {
    row(t, "test split", `${tm.images} images: accuracy ${fmt(tm.accuracy)}, macro F1 ${tm.macro_f1 == null ? "n/a" : tm.macro_f1.toFixed(3)}`);
    row(t, "test recall", Object.entries(tm.recall).map(([c, v]) => `${c} ${v == null ? "n/a" : fmt(v)}`).join(", "));
    if (tm.predicted_normal) row(t, "test images predicted normal", Object.entries(tm.predicted_normal).map(([c, v]) => `${c} ${v}`).join(", "));
  } else {
    row(t, "test metrics", "none found in the run folder");
  }
  row(t, "possible missed disease", m.normal_class ? `${m.normal_class} wins by less than ${m.normal_margin}` : "off");
  const s = m.screening;
  row(t, "screening", s ? `${s.positive_class} >= ${s.threshold.toFixed(4)} (chosen on val for sensitivity ${s.target_sensitivity})` : "no threshold given");
  const cap = m.miss_cap;
  if (cap) row(t, "miss-rate cap", `${cap.normal_class} only above ${cap.threshold.toFixed(4)}: missed disease <= ${cap.alpha} (${cap.guarantee}), calibrated on ${cap.calibration}`);
  $("#card-body").replaceChildren(t);
  $("#card").showModal();
}

function bars(probabilities, prediction) {
  const box = el("div", { class: "bars", role: "list" });
  for (const [c, p] of Object.entries(probabilities)) {
    const bar = el("div", { class: "bar" + (c === prediction ? " win" : "") });
    bar.style.width = (100 * p).toFixed(2) + "%";
    box.append(el("span", { class: "bar-label", text: c }), el("div", { class: "bar-track", role: "listitem", "aria-label": `${c} ${fmt(p)}` }, bar),
      el("span", { class: "bar-value", text: fmt(p) }));
  }
  return box;
}

function missedText(model, r) {
  const normal = model.normal_class;
  const others = Object.entries(r.probabilities).filter(([c]) => c !== normal).sort((a, b) => b[1] - a[1]);
  const [rival, p] = others[0];
  return `Possible missed disease: ${normal} leads ${rival} by only ${fmt(r.probabilities[normal] - p)} (margin ${fmt(model.normal_margin)}). Look again.`;
}

function overlayName(file, model) {
  const safe = (s) => s.replace(/[^A-Za-z0-9._-]+/g, "_");
  return `${safe(file.replace(/\.[^.]*$/, ""))}__${safe(model)}.png`;
}

function modelResult(file, name, r) {
  const model = state.models.find((m) => m.name === name) || { normal_class: null, normal_margin: 0 };
  const text = el("div", { class: "text" }, el("div", { class: "model-name", text: name }),
    el("div", { class: "prediction" }, "Prediction: ", el("strong", { text: r.prediction }), ` (${fmt(r.probability)})`));
  if (r.possible_missed_disease) text.append(el("div", { class: "flag", role: "alert", text: missedText(model, r) }));
  if (r.screening) {
    const s = r.screening;
    text.append(el("div", { class: "screen" + (s.flagged ? " positive" : ""),
      text: `${s.positive_class} screening: ${s.flagged ? "POSITIVE" : "negative"} at threshold ${s.threshold.toFixed(4)}` }));
  }
  if (r.miss_cap) {
    const c = r.miss_cap;
    text.append(el("div", { class: "screen miss-cap" + (c.decision === "refer" ? " positive" : ""),
      text: c.decision === "refer" ? `Refer (${c.called}) under the miss-rate cap ${c.alpha} (Normal only above ${c.threshold.toFixed(4)})`
        : `Normal under the miss-rate cap ${c.alpha} (above ${c.threshold.toFixed(4)})` }));
  }
  text.append(bars(r.probabilities, r.prediction));
  const box = el("div", { class: "model-result", "data-model": name }, text);
  if (r.overlay_png_base64) {
    const src = "data:image/png;base64," + r.overlay_png_base64;
    const link = el("a", { href: src, download: overlayName(file, name), text: "download overlay" });
    box.append(el("figure", {}, el("img", { class: "overlay", src, alt: `Grad-CAM of ${r.prediction} by ${name}` }),
      el("figcaption", {}, `Grad-CAM (${r.prediction}) · `, link)));
  }
  return box;
}

function renderImage(card, result) {
  const list = el("div", { class: "model-results" });
  for (const [name, r] of Object.entries(result.models)) list.append(modelResult(result.file, name, r));
  card.querySelector(".pending")?.remove();
  card.append(el("div", { class: "size", text: `${result.width} x ${result.height} px` }), list);
}

async function upload(file, card) {
  const form = new FormData();
  form.append("file", file, file.name);
  let res;
  try {
    res = await fetch("/api/predict", { method: "POST", body: form });
  } catch (e) {
    return fail(card, `network error: ${e}`);
  }
  const body = await res.json().catch(() => ({ error: `HTTP ${res.status}` }));
  if (!res.ok) return fail(card, body.error || `HTTP ${res.status}`);
  for (const result of body.results) {
    state.results.push(result);
    renderImage(card, result);
  }
  card.classList.add("done");
}

function fail(card, message) {
  card.querySelector(".pending")?.remove();
  card.classList.add("failed");
  card.append(el("p", { class: "error", role: "alert", text: message }));
}

async function handleFiles(files) {
  if (!files.length) return;
  $("#toolbar").hidden = false;
  const queue = Array.from(files).map((f) => {
    const card = el("article", { class: "image-card" }, el("h2", { text: f.name }), el("p", { class: "pending", text: "scoring…" }));
    $("#results").prepend(card);
    return [f, card];
  });
  let done = 0;
  const total = queue.length;
  const status = () => { $("#status").textContent = `${done} of ${total} scored`; };
  status();
  const workers = Array.from({ length: Math.min(4, queue.length) }, async () => {
    while (queue.length) {
      const [f, card] = queue.shift();
      await upload(f, card);
      done++;
      status();
    }
  });
  await Promise.all(workers);
}

function download(name, blob) {
  const a = el("a", { href: URL.createObjectURL(blob), download: name });
  document.body.append(a);
  a.click();
  setTimeout(() => { URL.revokeObjectURL(a.href); a.remove(); }, 1000);
}

function csvCell(v) {
  const s = v == null ? "" : String(v);
  return /[",\n]/.test(s) ? `"${s.replace(/"/g, '""')}"` : s;
}

function resultsCsv() {
  const classes = [...new Set(state.models.flatMap((m) => m.classes))];
  const lines = [["file", "model", "prediction", "probability", ...classes.map((c) => `prob_${c}`), "possible_missed_disease", "screening_class", "screening_flag", "miss_cap", "miss_cap_class"]];
  for (const r of state.results) {
    for (const [name, m] of Object.entries(r.models)) {
      lines.push([r.file, name, m.prediction, m.probability.toFixed(6), ...classes.map((c) => (c in m.probabilities ? m.probabilities[c].toFixed(6) : "")),
        m.possible_missed_disease ? 1 : 0, m.screening ? m.screening.positive_class : "", m.screening ? (m.screening.flagged ? 1 : 0) : "",
        m.miss_cap ? m.miss_cap.decision : "", m.miss_cap ? m.miss_cap.called : ""]);
    }
  }
  return lines.map((l) => l.map(csvCell).join(",")).join("\n") + "\n";
}

// A ZIP of stored (uncompressed) entries: PNGs are compressed already.
const CRC_TABLE = Array.from({ length: 256 }, (_, n) => {
  let c = n;
  for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
  return c >>> 0;
});
function crc32(bytes) {
  let c = 0xffffffff;
  for (const b of bytes) c = CRC_TABLE[(c ^ b) & 0xff] ^ (c >>> 8);
  return (c ^ 0xffffffff) >>> 0;
}
function zip(entries) {
  const enc = new TextEncoder();
  const parts = [], central = [];
  let offset = 0;
  for (const { name, data } of entries) {
    const n = enc.encode(name), crc = crc32(data);
    const local = new DataView(new ArrayBuffer(30));
    [[0, 0x04034b50, 4], [4, 20, 2], [8, 0, 2], [14, crc, 4], [18, data.length, 4], [22, data.length, 4], [26, n.length, 2]]
      .forEach(([at, v, size]) => (size === 4 ? local.setUint32(at, v, true) : local.setUint16(at, v, true)));
    const head = new DataView(new ArrayBuffer(46));
    [[0, 0x02014b50, 4], [4, 20, 2], [6, 20, 2], [16, crc, 4], [20, data.length, 4], [24, data.length, 4], [28, n.length, 2], [42, offset, 4]]
      .forEach(([at, v, size]) => (size === 4 ? head.setUint32(at, v, true) : head.setUint16(at, v, true)));
    parts.push(local, n, data);
    central.push(head, n);
    offset += 30 + n.length + data.length;
  }
  const size = central.reduce((s, p) => s + p.byteLength, 0);
  const end = new DataView(new ArrayBuffer(22));
  [[0, 0x06054b50, 4], [8, entries.length, 2], [10, entries.length, 2], [12, size, 4], [16, offset, 4]]
    .forEach(([at, v, s]) => (s === 4 ? end.setUint32(at, v, true) : end.setUint16(at, v, true)));
  return new Blob([...parts, ...central, end], { type: "application/zip" });
}

function overlaysZip() {
  const entries = [], seen = new Set();
  for (const r of state.results) {
    for (const [name, m] of Object.entries(r.models)) {
      if (!m.overlay_png_base64) continue;
      let file = overlayName(r.file, name);
      for (let k = 2; seen.has(file); k++) file = file.replace(/(_\d+)?\.png$/, `_${k}.png`);
      seen.add(file);
      entries.push({ name: file, data: Uint8Array.from(atob(m.overlay_png_base64), (ch) => ch.charCodeAt(0)) });
    }
  }
  return zip(entries);
}

function setup() {
  const drop = $("#drop");
  $("#files").addEventListener("change", (e) => { handleFiles(e.target.files); e.target.value = ""; });
  drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (e) => { e.preventDefault(); drop.classList.remove("over"); handleFiles(e.dataTransfer.files); });
  $("#csv").addEventListener("click", () => download("lungcls-results.csv", new Blob([resultsCsv()], { type: "text/csv" })));
  $("#zip").addEventListener("click", () => download("lungcls-overlays.zip", overlaysZip()));
  $("#clear").addEventListener("click", () => { state.results = []; $("#results").replaceChildren(); $("#toolbar").hidden = true; });
  loadModels().catch((e) => { $("#models").textContent = `cannot load the models: ${e}`; });
}

document.addEventListener("DOMContentLoaded", setup);
