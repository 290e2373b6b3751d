// movierec web page: plain JS over the JSON API (no build step).
"use strict";

const $ = (id) => document.getElementById(id);
const liked = new Map(); // item_id -> title

async function api(path, options) {
  const res = await fetch(path, options);
  const body = await res.json().catch(() => ({}));
  if (!res.ok) throw new Error(body.detail || `${res.status} ${res.statusText}`);
  $("error").hidden = true; // a good answer clears an old error
  return body;
}

function showError(err) {
  const box = $("error");
  box.textContent = err.message || String(err);
  box.hidden = false;
  clearTimeout(showError.timer);
  showError.timer = setTimeout(() => { box.hidden = true; }, 5000);
}

function el(tag, cls, text) {
  const node = document.createElement(tag);
  if (cls) node.className = cls;
  if (text !== undefined) node.textContent = text;
  return node;
}

function meta(item) {
  const parts = [];
  if (item.year) parts.push(item.year);
  if (item.genres && item.genres.length) parts.push(item.genres.join(", "));
  return parts.join(" · ");
}

// One result row: title (clickable -> similar), year and genres, optional reasons, score, + like.
function itemRow(item, { like = true } = {}) {
  const li = el("li");
  li.dataset.itemId = item.item_id;
  const main = el("div", "main");
  const title = el("span", "title link", item.title);
  title.title = "show similar movies";
  title.addEventListener("click", () => showSimilar(item.item_id, item.title));
  main.append(title, el("div", "meta", meta(item)));
  // explanations: the strongest reason in full, the other movies by title
  const because = item.because || [];
  if (because.length) {
    const others = because.slice(1).map((b) => b.title);
    main.append(el("div", "because", because[0].reason + (others.length ? ` · also ${others.join(", ")}` : "")));
  }
  li.append(main);
  if (typeof item.score === "number") li.append(el("span", "score", item.score.toFixed(3)));
  if (like) {
    const btn = el("button", "small secondary", liked.has(String(item.item_id)) ? "liked" : "+ like");
    btn.addEventListener("click", () => { addLiked(item); btn.textContent = "liked"; });
    li.append(btn);
  }
  return li;
}

function fill(list, items, emptyText, opts) {
  list.replaceChildren();
  if (!items.length) { list.append(el("li", "empty", emptyText)); return; }
  for (const item of items) list.append(itemRow(item, opts));
}

async function search(event) {
  event.preventDefault();
  const q = $("search-input").value.trim();
  if (!q) return;
  try {
    const data = await api(`/items?q=${encodeURIComponent(q)}&limit=10`);
    fill($("search-results"), data.items, `No title contains “${q}”.`);
  } catch (err) { showError(err); }
}

async function showSimilar(itemId, title) {
  if (itemId === undefined) return;
  showSimilar.current = { itemId, title };
  $("similar-title").textContent = `— like ${title}`;
  const by = $("similar-by").value;
  try {
    const data = await api(`/items/${encodeURIComponent(itemId)}/similar?k=10&by=${by}`);
    fill($("similar-results"), data.items, "Nothing similar found.");
  } catch (err) { showError(err); }
}

function renderLiked() {
  const list = $("liked-list");
  list.replaceChildren();
  if (!liked.size) list.append(el("li", "empty", "None yet."));
  for (const [id, title] of liked) {
    const chip = el("li", null, title);
    const remove = el("button", null, "×");
    remove.setAttribute("aria-label", `remove ${title}`);
    remove.addEventListener("click", () => { liked.delete(id); renderLiked(); });
    chip.append(remove);
    list.append(chip);
  }
  $("liked-go").disabled = liked.size === 0;
}

function addLiked(item) {
  liked.set(String(item.item_id), item.title);
  renderLiked();
}

async function recommendLiked() {
  // ids travel back as they came (numbers stay numbers)
  const ids = [...liked.keys()].map((id) => (/^-?\d+$/.test(id) ? Number(id) : id));
  const body = {
    liked_items: ids,
    k: Number($("liked-k").value) || 10,
    diversity: Number($("liked-diversity").value),
    explain: true,
  };
  try {
    const data = await api("/recommendations", {
      method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body),
    });
    fill($("liked-results"), data.items, "No recommendations.");
  } catch (err) { showError(err); }
}

async function recommendUser(event) {
  event.preventDefault();
  const user = $("user-input").value.trim();
  if (!user) return;
  const params = new URLSearchParams({ k: String(Number($("user-k").value) || 10), explain: String($("user-explain").checked) });
  const genres = $("user-genre").value.trim();
  if (genres) params.set("genres", genres);
  for (const [field, key] of [["user-year-min", "year_min"], ["user-year-max", "year_max"]]) {
    const value = $(field).value.trim();
    if (value) params.set(key, value);
  }
  params.set("diversity", $("user-diversity").value);
  try {
    const data = await api(`/users/${encodeURIComponent(user)}/recommendations?${params}`);
    fill($("user-results"), data.items, "No recommendations.");
  } catch (err) {
    $("user-results").replaceChildren();
    showError(err);
  }
}

async function init() {
  $("search-form").addEventListener("submit", search);
  $("user-form").addEventListener("submit", recommendUser);
  $("liked-go").addEventListener("click", recommendLiked);
  $("liked-clear").addEventListener("click", () => { liked.clear(); renderLiked(); $("liked-results").replaceChildren(); });
  $("similar-by").addEventListener("change", () => {
    const cur = showSimilar.current;
    if (cur) showSimilar(cur.itemId, cur.title);
  });
  fetch("/report", { method: "HEAD" }).then((res) => { $("report-link").hidden = !res.ok; }).catch(() => {});
  try {
    const ready = await api("/ready");
    $("model-version").textContent = ready.model_version;
  } catch (err) {
    $("model-version").textContent = "not loaded";
    showError(err);
  }
}

init();
