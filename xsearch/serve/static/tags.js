// Tags and near-duplicates on the web page: a tag filter, tag chips on results, a duplicates view.
// Loaded after app.js, whose globals (state, el, api, $, search, hasQuery, mediaFor, showMessage) it uses.
"use strict";

state.tags = [];

// Chips under a result: click one to keep only results carrying that tag.
function tagChips(r) {
  if (!r.tags || !r.tags.length) return null;
  return el("div", { class: "tags" }, ...r.tags.map((t) => el("button", {
    type: "button", class: "tag", "data-tag": t.label, title: `${t.set}: ${(t.prob * 100).toFixed(1)}%`,
    onclick: (e) => { e.stopPropagation(); addTagFilter(t.label); },
  }, t.label)));
}

function addTagFilter(label) {
  label = label.trim();
  if (!label || state.tags.includes(label)) return;
  state.tags.push(label);
  renderTagFilter();
  if (hasQuery()) search();
}

function renderTagFilter() {
  const box = $("#tag-filter");
  box.querySelectorAll(".tag-chip").forEach((c) => c.remove());
  const input = $("#tag-input");
  state.tags.forEach((label, i) => {
    box.insertBefore(el("span", { class: "chip tag-chip", "data-tag": label }, el("span", { class: "name" }, "tag: " + label),
      el("button", { type: "button", title: "remove", onclick: () => {
        state.tags.splice(i, 1); renderTagFilter(); if (hasQuery()) search();
      } }, "×")), input);
  });
}

function setupTagFilter() {
  const list = el("datalist", { id: "tag-labels" });
  const input = el("input", { id: "tag-input", type: "text", list: "tag-labels", placeholder: "filter by tag…",
    "aria-label": "filter by tag" });
  input.addEventListener("keydown", (e) => {
    if (e.key === "Enter") { e.preventDefault(); addTagFilter(input.value); input.value = ""; }
  });
  input.addEventListener("change", () => { if (input.value.trim()) { addTagFilter(input.value); input.value = ""; } });
  $("#inputs").after(el("div", { id: "tag-filter", class: "chips" }, input, list));
}

async function loadLabels() {
  try {
    const res = await api("/api/status");
    const st = await res.json();
    const labels = new Set();
    for (const set of st.label_sets || []) for (const [label, n] of Object.entries(set.counts)) if (n) labels.add(label);
    $("#tag-labels").replaceChildren(...[...labels].sort().map((l) => el("option", { value: l })));
  } catch (err) { /* the filter still takes typed labels */ }
}

// ---------------------------------------------------------------- duplicates view

async function showDuplicates() {
  const grid = $("#results");
  grid.dataset.state = "loading";
  showMessage("looking for near-duplicates…");
  try {
    const q = new URLSearchParams({ target: state.target, threshold: "0.95" });
    const res = await api("/api/duplicates?" + q);
    const data = await res.json().catch(() => ({ detail: res.statusText }));
    if (!res.ok) throw new Error(typeof data.detail === "string" ? data.detail : JSON.stringify(data.detail));
    renderDuplicates(data.groups);
    showMessage(`${data.groups.length} group${data.groups.length === 1 ? "" : "s"} of near-duplicates (cosine ≥ ${data.threshold}); nothing is deleted`);
    grid.dataset.state = "done";
  } catch (err) {
    showMessage(err.message, true);
    grid.dataset.state = "error";
  }
}

function renderDuplicates(groups) {
  const grid = $("#results");
  grid.replaceChildren();
  grid.classList.add("dups");
  for (const g of groups) {
    const row = el("section", { class: "dup-group", "data-kind": g.kind });
    for (const m of g.members) {
      row.append(el("article", { class: "result" + (m.keeper ? " keeper" : ""), "data-id": m.id, title: m.path },
        mediaFor(m),
        el("div", { class: "caption" },
          el("span", { class: "name" }, m.name),
          el("span", { class: "score" }, m.keeper ? "keep" : m.score.toFixed(4)),
          el("span", { class: "badge " + m.modality }, m.modality))));
    }
    grid.append(row);
  }
}

function setupDuplicatesTab() {
  // A view of its own, not a search target: a toggle button beside the ARIA tablist, not a tab in it.
  const btn = el("button", { type: "button", id: "dups-tab", class: "dups-toggle", "aria-pressed": "false",
    title: "groups of near-duplicate items" }, "duplicates");
  const leave = () => {
    $("#results").classList.remove("dups");
    btn.classList.remove("active");
    btn.setAttribute("aria-pressed", "false");
  };
  btn.addEventListener("click", () => {
    btn.classList.add("active");
    btn.setAttribute("aria-pressed", "true");
    showDuplicates();
  });
  // Any tab (or a search) leaves the duplicates view.
  document.querySelectorAll("#tabs button").forEach((b) => b.addEventListener("click", leave));
  $("#search-form").addEventListener("submit", leave);
  $("#tabs").after(btn);
}

setupTagFilter();
setupDuplicatesTab();
loadLabels();
