// xsearch web page: plain JS against /api/search, no build step.
"use strict";

// What the server embeds from a file; /api/status says (server.upload_modalities), this is the fallback.
let UPLOAD_MODALITIES = ["text", "image", "audio", "video", "depth", "thermal", "imu"];
// Same extension table as xsearch/indexer/detect.py; depth and thermal frames look like images,
// so the chip's select lets the user say what a PNG really is.
const EXTENSIONS = {
  text: ["txt", "md", "markdown", "text"],
  image: ["jpg", "jpeg", "png", "gif", "bmp", "webp", "tif", "tiff", "jfif"],
  audio: ["wav", "flac", "mp3", "ogg", "oga", "opus", "m4a", "aac", "aif", "aiff"],
  video: ["mp4", "mov", "mkv", "webm", "avi", "m4v", "mpg", "mpeg"],
  depth: ["npy", "npz"],
  imu: ["csv"],
};
const K = 24;

const $ = (sel) => document.querySelector(sel);
const state = { files: [], like: null, target: "all", searches: 0, counts: null };
let inFlight = null; // the AbortController of the search on screen-to-be: a newer search cancels it

// A token given as /?token=... is kept for API calls (the server also set a cookie), then hidden from the address bar.
const params = new URLSearchParams(location.search);
if (params.get("token")) {
  sessionStorage.setItem("xsearch_token", params.get("token"));
  params.delete("token");
  history.replaceState(null, "", location.pathname + (params.toString() ? "?" + params : "") + location.hash);
}
const token = sessionStorage.getItem("xsearch_token");

function api(path, options = {}) {
  const headers = new Headers(options.headers || {});
  if (token) headers.set("Authorization", "Bearer " + token);
  return fetch(path, { ...options, headers });
}

function detectModality(file) {
  const ext = (file.name.split(".").pop() || "").toLowerCase();
  for (const [modality, exts] of Object.entries(EXTENSIONS)) if (exts.includes(ext)) return modality;
  const major = (file.type || "").split("/")[0];
  if (file.type === "text/csv") return "imu";
  if (["image", "audio", "video", "text"].includes(major)) return major;
  return "image";
}

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") node.className = v;
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else if (v !== null && v !== undefined) node.setAttribute(k, v);
  }
  for (const c of children) if (c !== null && c !== undefined) node.append(c);
  return node;
}

// ---------------------------------------------------------------- inputs (chips)

function addFiles(list) {
  for (const file of list) state.files.push({ file, modality: detectModality(file), weight: "1" });
  renderChips();
  if (list.length) search();
}

function renderChips() {
  const box = $("#inputs");
  box.replaceChildren();
  state.files.forEach((entry, i) => {
    const select = el("select", { "aria-label": "modality of " + entry.file.name, class: "modality",
      onchange: (e) => { entry.modality = e.target.value; } });
    for (const m of UPLOAD_MODALITIES) select.append(el("option", { value: m }, m));
    select.value = entry.modality;
    const weight = el("input", { type: "number", step: "0.1", value: entry.weight, title: "weight (negative subtracts)",
      "aria-label": "weight of " + entry.file.name, class: "weight",
      oninput: (e) => { entry.weight = e.target.value; e.target.removeAttribute("aria-invalid"); } });
    entry.weightInput = weight; // read again at search time: typing "-" changes no value and fires no event
    box.append(el("span", { class: "chip file-chip" }, el("span", { class: "name", title: entry.file.name }, entry.file.name),
      select, weight, el("button", { type: "button", title: "remove", onclick: () => { state.files.splice(i, 1); renderChips(); } }, "×")));
  });
  if (state.like) {
    box.append(el("span", { class: "chip like-chip" }, el("span", { class: "name" }, "more like: " + state.like.name),
      el("button", { type: "button", title: "remove", onclick: () => { state.like = null; renderChips(); } }, "×")));
  }
}

// ---------------------------------------------------------------- searching

function hasQuery() {
  return $("#q").value.trim() !== "" || state.files.length > 0 || state.like !== null;
}

// The first file whose weight is not a finite number, if any: sent as 1 it would be a silent wrong search.
// A number input holding "-" or "1e" reports the value "" and says badInput.
function badWeight() {
  return state.files.find((f) => {
    const input = f.weightInput;
    return input.validity.badInput || input.value.trim() === "" || !Number.isFinite(Number(input.value));
  });
}

function buildRequest() {
  const text = $("#q").value.trim();
  if (state.files.length) {
    const form = new FormData();
    if (text) form.append("text", text);
    form.append("target", state.target);
    form.append("k", String(K));
    if (state.like) form.append("like", String(state.like.id));
    for (const t of state.tags || []) form.append("tags", t);
    if ($("#moments").checked) form.append("moments", "1");
    for (const m of UPLOAD_MODALITIES) {
      const entries = state.files.filter((f) => f.modality === m);
      for (const f of entries) {
        form.append(m, f.file, f.file.name);
        form.append(m + "_weight", f.weightInput.value);
      }
    }
    return { method: "POST", body: form };
  }
  const body = { target: state.target, k: K };
  if (text) body.text = text;
  if (state.like) body.like = state.like.id;
  if (state.tags && state.tags.length) body.filters = { tags: state.tags };
  if ($("#moments").checked) body.moments = true;
  return { method: "POST", body: JSON.stringify(body), headers: { "Content-Type": "application/json" } };
}

async function search() {
  if (!hasQuery()) {
    showMessage("Type a description, drop a file, or click a result.");
    return;
  }
  const bad = badWeight();
  if (bad) {
    bad.weightInput.setAttribute("aria-invalid", "true");
    bad.weightInput.focus();
    showMessage(`The weight of ${bad.file.name} is not a number: type one such as 1, 0.5 or -1.`, true);
    return;
  }
  // Only the newest search may touch the page: an older one still running (a slow upload) is cancelled,
  // and whatever it would have answered is dropped.
  if (inFlight) inFlight.abort();
  const mine = (inFlight = new AbortController());
  const grid = $("#results");
  grid.dataset.state = "loading";
  showMessage("searching…");
  const started = performance.now();
  try {
    const res = await api("/api/search", { ...buildRequest(), signal: mine.signal });
    const data = await res.json().catch(() => ({ detail: `the server answered ${res.status} ${res.statusText}` }));
    if (mine !== inFlight) return;
    if (!res.ok) throw new Error(typeof data.detail === "string" ? data.detail : JSON.stringify(data.detail));
    renderResults(data.results);
    const secs = ((performance.now() - started) / 1000).toFixed(2);
    const n = data.results.length;
    showMessage(n ? `${n} result${n === 1 ? "" : "s"} in ${secs} s` : noResultsHint());
    grid.dataset.state = "done";
  } catch (err) {
    if (mine !== inFlight) return; // superseded (aborted): the newer search speaks for itself
    // fetch() itself failing is a TypeError ("Failed to fetch"): no answer came at all.
    const why = err instanceof TypeError
      ? "Cannot reach the xsearch server: it may have stopped, or the network is down."
      : "The search failed: " + err.message;
    const old = grid.children.length ? " The results below are from the previous search." : "";
    showMessage(why + old, true);
    grid.dataset.state = "error";
  } finally {
    if (mine === inFlight) inFlight = null;
    state.searches += 1;
    document.body.dataset.searches = String(state.searches);
  }
}

// Why a search found nothing, in the store's own terms.
function noResultsHint() {
  const counts = state.counts || {};
  const total = Object.values(counts).reduce((a, b) => a + b, 0);
  if (state.counts && total === 0) return "No results: the store is empty. Index some files with xsearch index.";
  if (state.target !== "all" && state.counts && !counts[state.target]) {
    return `No results: this store has no ${state.target} items. Pick another tab, or index some ${state.target} files.`;
  }
  if (state.like) return "No results: nothing else to compare with here (the item itself is left out). Try another tab.";
  return "No results. Try another tab, or fewer or other inputs.";
}

function showMessage(text, isError = false) {
  const m = $("#message");
  m.textContent = text;
  m.classList.toggle("error", isError);
}

// ---------------------------------------------------------------- results

// A moment's span: "00:41:10.0-00:41:14.0"; as a media fragment, players start (and stop) there.
function clock(t) {
  const tenths = Math.round(t * 10), s = Math.floor(tenths / 10);
  const pad = (n) => String(n).padStart(2, "0");
  return `${pad(Math.floor(s / 3600))}:${pad(Math.floor(s / 60) % 60)}:${pad(s % 60)}.${tenths % 10}`;
}
function spanOf(r) { return r.start == null ? "" : `${clock(r.start)}-${clock(r.end)}`; }
function mediaSrc(r) { return r.start == null ? r.media_url : `${r.media_url}#t=${r.start},${r.end}`; }

function mediaFor(r) {
  if (!r.media_url) return el("div", { class: "media missing" }, "file not available");
  switch (r.modality) {
    case "image":
      return el("div", { class: "media image" }, el("img", { src: r.media_url, alt: r.name, loading: "lazy" }));
    case "audio":
      return el("div", { class: "media audio" }, el("span", { class: "wave", "aria-hidden": "true" }, "∿∿∿∿"),
        el("audio", { controls: "", preload: "metadata", src: mediaSrc(r), "aria-label": "play " + r.name }));
    case "video":
      // The poster is a server-rendered frame: it shows even when the browser cannot decode the codec.
      return el("div", { class: "media video" }, el("video", { controls: "", preload: "metadata", muted: "",
        src: mediaSrc(r), poster: r.preview_url, "aria-label": "play " + r.name }));
    case "text":
      return el("div", { class: "media text" }, el("p", { class: "snippet" }, (r.facts && r.facts.snippet) || r.name));
    case "imu": // the plot's colours, as drawn by xsearch/serve/preview.py (CHANNEL_COLOURS)
      return el("div", { class: "media preview imu" },
        el("img", { src: r.preview_url, alt: "IMU plot of " + r.name, loading: "lazy" }),
        el("span", { class: "legend", title: "axis colours" },
          ...["x", "y", "z"].map((axis) => el("span", { class: "axis " + axis }, axis))));
    default: // depth, thermal: rendered by the server
      return el("div", { class: "media preview " + r.modality },
        el("img", { src: r.preview_url, alt: r.modality + " preview of " + r.name, loading: "lazy" }));
  }
}

function searchLike(r) {
  // More like this moment (its span of the file), or this file.
  state.like = r.start == null ? { id: r.id, name: r.name }
    : { id: `${r.path}#t=${r.start},${r.end}`, name: `${r.name} ${spanOf(r)}` };
  state.files = [];
  $("#q").value = "";
  renderChips();
  window.scrollTo({ top: 0, behavior: "smooth" });
  search();
}

function renderResults(results) {
  const grid = $("#results");
  grid.replaceChildren();
  for (const r of results) {
    const pct = Math.max(0, Math.min(100, ((r.score + 1) / 2) * 100));
    const card = el("article", { class: "result", "data-id": r.id, "data-modality": r.modality, title: r.path },
      mediaFor(r),
      el("div", { class: "caption" },
        el("span", { class: "name" }, r.name, ...(r.start == null ? [] : [el("span", { class: "span" }, " " + spanOf(r))])),
        el("span", { class: "score" }, r.score.toFixed(3)),
        el("span", { class: "badge " + r.modality }, r.modality),
        // The keyboard's (and screen reader's) way to what a click on the card does.
        el("button", { type: "button", class: "more", "aria-label": "more like " + r.name, onclick: () => searchLike(r) },
          "more like this"),
        el("span", { class: "bar-score" }, el("i", { style: `width:${pct.toFixed(1)}%` }))),
      typeof tagChips === "function" ? tagChips(r) : null);
    card.addEventListener("click", (e) => {
      if (e.target.closest("audio, video, a, button")) return; // let the players (and the button) work
      searchLike(r);
    });
    grid.append(card);
  }
}

// ---------------------------------------------------------------- wiring

async function loadStatus() {
  try {
    const res = await api("/api/status");
    const st = await res.json();
    if (!res.ok) throw new Error(st.detail || res.statusText);
    state.counts = st.counts || {};
    if (st.server && Array.isArray(st.server.upload_modalities)) UPLOAD_MODALITIES = st.server.upload_modalities;
    const counts = Object.entries(st.counts || {}).map(([m, n]) => `${n} ${m}`).join(" · ");
    $("#status").textContent = counts ? `${counts}  —  ${st.model}` : "the store is empty: run xsearch index";
  } catch (err) {
    $("#status").textContent = "status unavailable: " + err.message;
  }
}

$("#search-form").addEventListener("submit", (e) => { e.preventDefault(); search(); });
$("#pick").addEventListener("click", () => $("#file").click());
$("#file").addEventListener("change", (e) => { addFiles([...e.target.files]); e.target.value = ""; });

// Tabs as the ARIA tab pattern: one tab in the Tab order, arrow keys move between them and select.
const tabs = [...document.querySelectorAll("#tabs [role=tab]")];
function selectTab(tab) {
  for (const t of tabs) {
    const on = t === tab;
    t.classList.toggle("active", on);
    t.setAttribute("aria-selected", String(on));
    t.tabIndex = on ? 0 : -1;
  }
  state.target = tab.dataset.target;
  if (hasQuery()) search();
}
for (const tab of tabs) {
  tab.addEventListener("click", () => selectTab(tab));
  tab.addEventListener("keydown", (e) => {
    const step = { ArrowRight: 1, ArrowLeft: -1 }[e.key];
    const to = step ? tabs[(tabs.indexOf(tab) + step + tabs.length) % tabs.length]
      : e.key === "Home" ? tabs[0] : e.key === "End" ? tabs[tabs.length - 1] : null;
    if (!to) return;
    e.preventDefault();
    to.focus();
    selectTab(to);
  });
}

// Drag-and-drop anywhere on the page.
let dragDepth = 0;
const overlay = $("#drop");
window.addEventListener("dragenter", (e) => { if (e.dataTransfer.types.includes("Files")) { dragDepth++; overlay.hidden = false; } });
window.addEventListener("dragleave", () => { if (--dragDepth <= 0) { dragDepth = 0; overlay.hidden = true; } });
window.addEventListener("dragover", (e) => e.preventDefault());
window.addEventListener("drop", (e) => {
  e.preventDefault();
  dragDepth = 0;
  overlay.hidden = true;
  if (e.dataTransfer.files.length) addFiles([...e.dataTransfer.files]);
});

loadStatus();
