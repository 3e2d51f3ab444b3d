/* Lookalike storefront: a photo in (file, drop or paste), an optional category and rectangle, similar listings out.
 *
 * Plain browser JavaScript, no build step. Coordinates: the shopper's rectangle and the predicted ROI are kept in
 * pixels of the ORIGINAL photo (what POST /v1/search expects and returns); the screen only scales them. */
(() => {
  "use strict";

  // Results per page; `?k=N` in the page URL overrides it (handy for trying "Load more" on a small catalogue).
  const PAGE_SIZE = (() => {
    const k = Number.parseInt(new URLSearchParams(window.location.search).get("k"), 10);
    return k >= 1 && k <= 100 ? k : 24;
  })();
  const MIN_RECT_PX = 4; // the API refuses rectangles under 4x4 photo pixels
  const KEY_STEP = 0.02; // keyboard moves/resizes the rectangle by 2% of the photo per key press

  const FALLBACK_TEXT = {
    none: "Detected item",
    compatible_category: "Detected a related item (no box of that exact category)",
    whole_image: "Whole photo (no item detected)",
    shopper_rect: "Your rectangle",
  };
  const SOURCE_TEXT = { shopper: "chosen by you", image: "from the photo", text: "from the text", seller: "seller",
                        detector: "from the detected item", "detector+image": "from the detected item" };
  const OPTION_TEXT = { 1: "Automatic category", 2: "Your category", 3: "Your rectangle" };

  const $ = (id) => document.getElementById(id);
  const el = {
    app: $("app"),
    dropzone: $("dropzone"),
    stage: $("stage"),
    canvas: $("photo"),
    roiBox: $("roi-box"),
    roiLabel: $("roi-label"),
    itemsLayer: $("items-layer"),
    querySearched: $("query-searched"),
    shopperRect: $("shopper-rect"),
    noPreview: $("no-preview"),
    noPreviewName: $("no-preview-name"),
    dropPrompt: $("drop-prompt"),
    choosePhoto: $("choose-photo"),
    fileInput: $("file-input"),
    fileLabelText: $("file-label-text"),
    stageHint: $("stage-hint"),
    form: $("search-form"),
    category: $("category-select"),
    clearRect: $("clear-rect"),
    searchButton: $("search-button"),
    error: $("error"),
    analysis: $("analysis"),
    queryCategory: $("query-category"),
    queryCategorySource: $("query-category-source"),
    queryRoi: $("query-roi"),
    queryOption: $("query-option"),
    queryAttributes: $("query-attributes"),
    status: $("status"),
    emptyState: $("empty-state"),
    results: $("results"),
    loadMore: $("load-more"),
    cardTemplate: $("card-template"),
    dragVeil: $("drag-veil"),
  };

  const state = {
    file: null, // the Blob sent to the API, exactly as the shopper gave it
    fileName: "",
    image: null, // decoded HTMLImageElement, or null when the browser cannot preview the file
    objectUrl: null,
    width: 0, // natural size of the photo in pixels: what rect and ROI coordinates refer to
    height: 0,
    rect: null, // shopper rectangle [x0, y0, x1, y1] in photo pixels
    item: null, // index of the detected item to search (option 1), set by clicking its outline
    drag: null,
    query: null, // the parameters of the last search, reused by "Load more"
    nextOffset: 0,
    attributeNames: {},
    categoryNames: {}, // category key -> display name, from /v1/categories
    seq: 0, // only the newest request may update the page
    controller: null,
  };

  // ------------------------------------------------------------------------------------------------ categories

  async function loadCategories() {
    try {
      const res = await fetch("/v1/categories", { headers: { Accept: "application/json" } });
      const body = await readJson(res);
      if (!res.ok) throw new Error(body.message || `status ${res.status}`);
      const groups = new Map();
      for (const c of body.categories || []) {
        if (!groups.has(c.group)) groups.set(c.group, []);
        groups.get(c.group).push(c);
      }
      for (const [group, cats] of groups) {
        const og = document.createElement("optgroup");
        og.label = group ? group.charAt(0).toUpperCase() + group.slice(1) : "Other";
        for (const c of cats) {
          og.append(new Option(c.name, c.key));
          state.categoryNames[c.key] = c.name;
        }
        el.category.append(og);
      }
      el.category.dataset.loaded = "true";
    } catch (err) {
      showError(`Could not load the category list (${err.message}). Automatic search still works.`);
    }
  }

  // ------------------------------------------------------------------------------------------------ photo intake

  async function loadFile(file) {
    if (!file) return;
    cancelRequest();
    clearError();
    clearResults();
    clearAnalysis();
    state.file = file;
    state.fileName = file.name || "photo";
    state.rect = null;
    state.item = null;
    state.query = null;
    if (state.objectUrl) URL.revokeObjectURL(state.objectUrl);
    state.objectUrl = URL.createObjectURL(file);
    state.image = null;
    state.width = state.height = 0;

    const img = new Image();
    img.src = state.objectUrl;
    try {
      await img.decode();
      if (state.file !== file) return; // another photo arrived meanwhile
      state.image = img;
      state.width = img.naturalWidth;
      state.height = img.naturalHeight;
    } catch {
      if (state.file !== file) return;
      // The server decides what is wrong with the file; we only could not draw it.
    }
    el.dropPrompt.hidden = true;
    el.stage.hidden = !state.image;
    el.noPreview.hidden = !!state.image;
    el.noPreviewName.textContent = state.fileName;
    el.stageHint.hidden = !state.image;
    el.fileLabelText.textContent = "Change photo";
    el.app.dataset.photo = state.image ? "loaded" : "unpreviewable";
    el.app.classList.add("has-photo");
    el.app.dataset.state = "ready";
    el.searchButton.disabled = false;
    layoutStage();
    renderRect();
    setStatus(state.image ? `${state.width} × ${state.height} photo ready. Press Search.`
                          : "File ready. Press Search.");
  }

  function firstImageFile(list) {
    const files = Array.from(list || []);
    return files.find((f) => f.type.startsWith("image/")) || files[0] || null;
  }

  // ------------------------------------------------------------------------------------------------ drawing

  /** Size the canvas to fit the panel (and half the viewport height) and draw the photo at device resolution. */
  function layoutStage() {
    if (!state.image) return;
    const cs = getComputedStyle(el.dropzone);
    const maxW = el.dropzone.clientWidth - parseFloat(cs.paddingLeft) - parseFloat(cs.paddingRight);
    if (maxW <= 0) return; // not laid out yet (hidden); the ResizeObserver calls again
    const maxH = Math.max(220, Math.round(window.innerHeight * 0.5));
    const scale = Math.min(maxW / state.width, maxH / state.height, 1.5);
    const w = Math.max(1, Math.round(state.width * scale));
    const h = Math.max(1, Math.round(state.height * scale));
    const dpr = window.devicePixelRatio || 1;
    // The stage never grows past its panel (max-width: 100% in CSS); the canvas keeps the photo's aspect ratio.
    el.stage.style.width = `${w}px`;
    if (el.canvas.width !== Math.round(w * dpr) || el.canvas.height !== Math.round(h * dpr)) {
      el.canvas.width = Math.round(w * dpr);
      el.canvas.height = Math.round(h * dpr);
    }
    const ctx = el.canvas.getContext("2d");
    ctx.imageSmoothingQuality = "high";
    ctx.drawImage(state.image, 0, 0, el.canvas.width, el.canvas.height);
  }

  /** Place an overlay over the canvas; `box` is in photo pixels, the overlay in percent so it follows resizes. */
  function placeBox(node, box) {
    const [x0, y0, x1, y1] = box;
    node.style.left = `${(100 * x0) / state.width}%`;
    node.style.top = `${(100 * y0) / state.height}%`;
    node.style.width = `${(100 * (x1 - x0)) / state.width}%`;
    node.style.height = `${(100 * (y1 - y0)) / state.height}%`;
  }

  function renderRect() {
    const r = state.rect;
    el.shopperRect.hidden = !r;
    el.clearRect.disabled = !r;
    if (r) {
      placeBox(el.shopperRect, r);
      el.stage.dataset.rect = rectParam();
    } else {
      delete el.stage.dataset.rect;
    }
  }

  function renderRoi(roi) {
    if (!roi || !state.image) {
      el.roiBox.hidden = true;
      delete el.stage.dataset.roi;
      delete el.stage.dataset.roiFallback;
      return;
    }
    placeBox(el.roiBox, roi.box);
    el.roiLabel.textContent = roi.fallback === "shopper_rect"
      ? "Searched: your rectangle"
      : FALLBACK_TEXT[roi.fallback] || "Detected";
    el.roiBox.dataset.box = roi.box.join(",");
    el.roiBox.dataset.fallback = roi.fallback;
    el.roiBox.classList.toggle("whole", roi.fallback === "whole_image");
    el.stage.dataset.roi = roi.box.join(",");
    el.stage.dataset.roiFallback = roi.fallback;
    el.roiBox.hidden = false;
  }

  /** The pointer position in photo pixels, clamped to the photo. */
  function toPhoto(e) {
    const r = el.canvas.getBoundingClientRect();
    const x = ((e.clientX - r.left) / r.width) * state.width;
    const y = ((e.clientY - r.top) / r.height) * state.height;
    return [clamp(x, 0, state.width), clamp(y, 0, state.height)];
  }

  function ordered(a, b) {
    return [Math.min(a[0], b[0]), Math.min(a[1], b[1]), Math.max(a[0], b[0]), Math.max(a[1], b[1])];
  }

  function bigEnough(r) {
    return r && r[2] - r[0] >= MIN_RECT_PX && r[3] - r[1] >= MIN_RECT_PX;
  }

  /** "x0,y0,x1,y1" in whole photo pixels, rounded outwards but kept inside the photo. */
  function rectParam() {
    const [x0, y0, x1, y1] = state.rect;
    const p = [
      Math.max(0, Math.floor(x0)), Math.max(0, Math.floor(y0)),
      Math.min(state.width, Math.ceil(x1)), Math.min(state.height, Math.ceil(y1)),
    ];
    return p.join(",");
  }

  function onPointerDown(e) {
    if (!state.image || e.button !== 0) return;
    if (e.target.closest && e.target.closest(".item-tag")) return; // a click on an item, not a rectangle
    e.preventDefault();
    el.stage.setPointerCapture(e.pointerId);
    el.canvas.focus({ preventScroll: true });
    state.drag = { start: toPhoto(e), before: state.rect };
    el.stage.classList.add("drawing");
  }

  function onPointerMove(e) {
    if (!state.drag) return;
    state.rect = ordered(state.drag.start, toPhoto(e));
    renderRect();
  }

  function onPointerUp(e) {
    if (!state.drag) return;
    const { start, before } = state.drag;
    state.drag = null;
    el.stage.classList.remove("drawing");
    if (el.stage.hasPointerCapture(e.pointerId)) el.stage.releasePointerCapture(e.pointerId);
    const r = ordered(start, toPhoto(e));
    state.rect = bigEnough(r) ? r : before; // a click (or a tiny drag) keeps what was there
    renderRect();
    if (state.rect !== before) markStale("Rectangle set. Press Search to look inside it.");
  }

  function onCanvasKey(e) {
    if (!state.image) return;
    const W = state.width;
    const H = state.height;
    if ((e.key === "Enter" || e.key === " ") && !state.rect) {
      state.rect = [W * 0.25, H * 0.25, W * 0.75, H * 0.75];
    } else if (e.key === "Delete" || e.key === "Backspace" || e.key === "Escape") {
      if (!state.rect) return;
      state.rect = null;
    } else if (e.key.startsWith("Arrow") && state.rect) {
      const dx = (e.key === "ArrowRight" ? 1 : e.key === "ArrowLeft" ? -1 : 0) * W * KEY_STEP;
      const dy = (e.key === "ArrowDown" ? 1 : e.key === "ArrowUp" ? -1 : 0) * H * KEY_STEP;
      let [x0, y0, x1, y1] = state.rect;
      if (e.shiftKey) {
        x1 = clamp(x1 + dx, x0 + MIN_RECT_PX, W);
        y1 = clamp(y1 + dy, y0 + MIN_RECT_PX, H);
      } else {
        const mx = clamp(dx, -x0, W - x1);
        const my = clamp(dy, -y0, H - y1);
        x0 += mx; x1 += mx; y0 += my; y1 += my;
      }
      state.rect = [x0, y0, x1, y1];
    } else {
      return;
    }
    e.preventDefault();
    renderRect();
    setStatus(state.rect ? `Rectangle ${rectParam()} (photo pixels).` : "Rectangle removed.");
  }

  // ------------------------------------------------------------------------------------------------ search

  function cancelRequest() {
    state.seq += 1;
    if (state.controller) state.controller.abort();
    state.controller = null;
    setBusy(false);
  }

  async function search(append) {
    if (!state.file) return;
    if (append && !state.query) return;
    const params = append
      ? state.query
      : { file: state.file, fileName: state.fileName, category: el.category.value,
          rect: state.rect ? rectParam() : "", item: state.item };
    const offset = append ? state.nextOffset : 0;
    const form = new FormData();
    form.append("image", params.file, params.fileName);
    if (params.category) form.append("category", params.category);
    if (params.rect) form.append("rect", params.rect);
    if (params.item != null && !params.category && !params.rect) form.append("item", String(params.item));
    form.append("k", String(PAGE_SIZE));
    form.append("offset", String(offset));
    if (window.LookalikeRefine) window.LookalikeRefine.addFields(form, params); // edit + facets (refine.js)

    cancelRequest();
    const seq = state.seq;
    const controller = new AbortController();
    state.controller = controller;
    clearError();
    setBusy(true, append);
    const started = performance.now();
    try {
      let res;
      try {
        res = await fetch("/v1/search", { method: "POST", body: form, signal: controller.signal,
                                          headers: { Accept: "application/json" } });
      } catch (err) {
        if (err.name === "AbortError") throw err;
        throw new Error("Could not reach Lookalike. Check your connection and try again.");
      }
      const body = await readJson(res);
      if (seq !== state.seq) return;
      if (!res.ok) throw new Error(apiMessage(res, body));
      state.query = params;
      render(body, append, performance.now() - started);
    } catch (err) {
      if (err.name === "AbortError" || seq !== state.seq) return;
      if (!append) {
        clearResults();
        clearAnalysis();
      }
      showError(err.message);
      setStatus(append ? "Could not load more." : "Search failed.");
      el.app.dataset.state = "error";
    } finally {
      if (seq === state.seq) {
        state.controller = null;
        setBusy(false);
      }
    }
  }

  function apiMessage(res, body) {
    let msg = body && body.message ? body.message : `The server answered ${res.status} ${res.statusText}`.trim();
    if (res.status === 503 && !/try again/i.test(msg)) msg += " Please try again in a moment.";
    if (res.status === 413 && !(body && body.message)) msg = "The photo is too large.";
    return msg;
  }

  /** The response as an object; non-JSON answers (a proxy's HTML error page) become {message}. */
  async function readJson(res) {
    const text = await res.text();
    try {
      return JSON.parse(text);
    } catch {
      try {
        return JSON.parse(text.replace(/\bNaN\b/g, "null")); // Python's json writes NaN for unknown distances
      } catch {
        return { error: `http_${res.status}`, message: res.ok ? "The server sent an unreadable answer." : "" };
      }
    }
  }

  // ------------------------------------------------------------------------------------------------ rendering

  function render(body, append, elapsedMs) {
    const q = body.query || {};
    if (!append) {
      state.attributeNames = {};
      for (const a of q.attributes || []) state.attributeNames[a.key] = a.name;
      renderAnalysis(body);
      renderRoi(q.roi);
      renderItems(body.items || []);
      el.results.replaceChildren();
    }
    const frag = document.createDocumentFragment();
    (body.results || []).forEach((r, i) => frag.append(card(r, (body.offset || 0) + i + 1)));
    el.results.append(frag);
    state.nextOffset = body.next_offset;
    const shown = el.results.children.length;
    el.loadMore.hidden = (body.results || []).length < body.k;
    el.emptyState.hidden = shown > 0;
    if (!shown) el.emptyState.textContent = "No similar listings found.";
    el.app.dataset.state = "results";
    el.app.dataset.option = String(body.option);
    const total = body.timings_ms && body.timings_ms.total != null ? body.timings_ms.total : elapsedMs;
    setStatus(`${shown} lookalike${shown === 1 ? "" : "s"} · ${Math.round(total)} ms`);
    if (window.LookalikeRefine) window.LookalikeRefine.render(body, append, () => search(false));
  }

  function renderAnalysis(body) {
    const q = body.query || {};
    const cat = q.category || {};
    el.queryCategory.textContent = cat.name || cat.key || "unknown";
    el.queryCategory.dataset.key = cat.key || "";
    let source = SOURCE_TEXT[cat.source] || cat.source || "";
    if (cat.source === "image" && typeof cat.confidence === "number") source += ` · ${pct(cat.confidence)}`;
    el.queryCategorySource.textContent = source;
    el.queryCategorySource.dataset.source = cat.source || "";
    if (cat.source === "detector+image" && typeof cat.confidence === "number") source += ` · ${pct(cat.confidence)}`;
    const searched = (cat.searched || []).map((key) => state.categoryNames[key] || key);
    el.querySearched.textContent = searched.length > 1 ? `${searched.join(", ")} (category uncertain)` : searched.join("");
    el.querySearched.dataset.categories = (cat.searched || []).join(",");
    const roi = q.roi || {};
    el.queryRoi.textContent = FALLBACK_TEXT[roi.fallback] || roi.fallback || "";
    const chosen = (body.items || []).find((it) => it.chosen);
    if (chosen) el.queryRoi.textContent += ` · item ${chosen.index + 1} of ${body.items.length}`;
    el.queryRoi.dataset.fallback = roi.fallback || "";
    el.queryOption.textContent = `Option ${body.option}: ${OPTION_TEXT[body.option] || ""}`;
    el.queryOption.dataset.option = String(body.option);

    el.queryAttributes.replaceChildren();
    const attrs = (q.attributes || []).slice().sort((a, b) => b.probability - a.probability);
    for (const a of attrs) {
      const li = document.createElement("li");
      li.className = "attribute";
      li.dataset.key = a.key;
      const name = document.createElement("span");
      name.className = "attribute-name";
      name.textContent = a.name || a.key;
      name.title = a.key;
      const group = attributeGroup(a.key);
      if (group) {
        const tag = document.createElement("span");
        tag.className = "attribute-group";
        tag.textContent = group;
        name.append(tag);
      }
      const meter = document.createElement("span");
      meter.className = "meter";
      meter.setAttribute("role", "img");
      meter.setAttribute("aria-label", `probability ${pct(a.probability)}`);
      const fill = document.createElement("span");
      fill.className = "meter-fill";
      fill.style.width = pct(a.probability);
      meter.append(fill);
      const value = document.createElement("span");
      value.className = "attribute-value";
      value.textContent = pct(a.probability);
      li.append(name, meter, value);
      el.queryAttributes.append(li);
    }
    if (!attrs.length) {
      const li = document.createElement("li");
      li.className = "muted small";
      li.textContent = "No attribute was recognised with confidence.";
      el.queryAttributes.append(li);
    }
    el.analysis.hidden = false;
  }

  function card(r, rank) {
    const node = el.cardTemplate.content.firstElementChild.cloneNode(true);
    node.dataset.listingId = String(r.listing_id);
    node.dataset.score = String(r.score);
    node.dataset.rank = String(rank);
    const img = node.querySelector("img");
    img.src = r.image;
    img.alt = r.title || `Listing ${r.listing_id}`;
    img.addEventListener("error", () => node.classList.add("no-photo"), { once: true });
    node.querySelector(".card-title").textContent = r.title || `Listing ${r.listing_id}`;
    node.querySelector(".match").textContent = `${similarity(r.score)} match`;
    node.querySelector(".distance").textContent = `distance ${fmt(r.score)}`;
    setPart(node, "appearance", r.appearance_distance);
    setPart(node, "colour", r.colour_distance);
    const chips = node.querySelector(".chips");
    for (const key of r.matched_attributes || []) {
      const li = document.createElement("li");
      li.className = "chip";
      li.dataset.key = key;
      li.textContent = state.attributeNames[key] || key.replace(/_/g, " ");
      li.title = key;
      chips.append(li);
    }
    if (!chips.children.length) chips.remove();
    return node;
  }

  function setPart(node, name, distance) {
    const known = typeof distance === "number" && Number.isFinite(distance);
    const fill = node.querySelector(`.meter-fill.${name}`);
    const value = node.querySelector(`.${name}-value`);
    fill.style.width = known ? similarity(distance) : "0%";
    value.textContent = known ? similarity(distance) : "n/a";
    value.title = known ? `${name} distance ${fmt(distance)} (lower is closer)` : `no ${name} distance`;
  }

  // ------------------------------------------------------------------------------------------------ page state

  function setBusy(busy, append) {
    el.app.classList.toggle("busy", busy);
    el.results.setAttribute("aria-busy", String(busy));
    el.searchButton.disabled = busy || !state.file;
    el.searchButton.classList.toggle("loading", busy && !append);
    el.loadMore.disabled = busy;
    el.loadMore.classList.toggle("loading", busy && !!append);
    if (busy) {
      el.app.dataset.state = "loading";
      setStatus(append ? "Loading more…" : "Searching…");
    }
  }

  function markStale(text) {
    if (el.results.children.length) setStatus(text);
  }

  function clearResults() {
    el.results.replaceChildren();
    el.loadMore.hidden = true;
    el.emptyState.hidden = false;
    el.emptyState.innerHTML = "Upload a photo and press <strong>Search</strong> to see similar listings.";
    state.nextOffset = 0;
    delete el.app.dataset.option;
  }

  function clearAnalysis() {
    el.analysis.hidden = true;
    renderRoi(null);
    renderItems([]);
  }

  /** Every detected item as a labelled outline; its tag is a button that searches that item (option 1, `item`). */
  function renderItems(items) {
    el.itemsLayer.replaceChildren();
    if (!state.image) return;
    const anchors = []; // tag corners already used, in photo fractions: a tag never hides another one
    const near = (a) => anchors.some((b) => Math.abs(a[0] - b[0]) < 0.3 && Math.abs(a[1] - b[1]) < 0.07);
    for (const it of items) {
      const box = document.createElement("div");
      box.className = "overlay item-box";
      box.classList.toggle("chosen", !!it.chosen);
      box.style.zIndex = String(items.length - it.index); // the more likely item's tag lies on top
      const [x0, y0, x1, y1] = it.box;
      const corners = [["", [x0, y1]], ["tag-top", [x0, y0]], ["tag-right", [x1, y1]], ["tag-top tag-right", [x1, y0]]]
        .map(([cls, [x, y]]) => [cls, [x / state.width, y / state.height]]);
      const [cls, anchor] = corners.find(([, a]) => !near(a)) || corners[0];
      anchors.push(anchor);
      if (cls) box.classList.add(...cls.split(" "));
      box.dataset.testid = "item-box";
      box.dataset.index = String(it.index);
      box.dataset.category = it.category;
      box.dataset.box = it.box.join(",");
      placeBox(box, it.box);
      const tag = document.createElement("button");
      tag.type = "button";
      tag.className = "item-tag";
      tag.dataset.testid = "item-tag";
      tag.setAttribute("aria-pressed", String(!!it.chosen));
      tag.textContent = `${it.index + 1}. ${it.name} ${pct(it.probability)}`;
      tag.setAttribute("aria-label", `Search item ${it.index + 1}: ${it.name}, ${pct(it.probability)} likely the one you mean`);
      tag.addEventListener("click", () => {
        state.item = it.index;
        state.rect = null; // the item replaces a rectangle and a chosen category: it carries its own
        el.category.value = "";
        renderRect();
        search(false);
      });
      box.append(tag);
      el.itemsLayer.append(box);
    }
  }

  function showError(message) {
    // The API's messages start in lower case ("file is text, not an image; ..."): a sentence reads better.
    el.error.textContent = message.charAt(0).toUpperCase() + message.slice(1);
    el.error.hidden = false;
  }

  function clearError() {
    el.error.textContent = "";
    el.error.hidden = true;
  }

  function setStatus(text) {
    el.status.textContent = text;
  }

  // ------------------------------------------------------------------------------------------------ helpers

  function clamp(v, lo, hi) {
    return Math.min(Math.max(v, lo), hi);
  }

  /** "neckline.round" -> "neckline": the attribute's group, from the taxonomy key. */
  function attributeGroup(key) {
    const dot = key.indexOf(".");
    return dot > 0 ? key.slice(0, dot).replace(/_/g, " ") : "";
  }

  function pct(p) {
    return `${Math.round(100 * p)}%`;
  }

  function similarity(distance) {
    return pct(clamp(1 - distance, 0, 1));
  }

  function fmt(x) {
    return typeof x === "number" && Number.isFinite(x) ? x.toFixed(3) : "n/a";
  }

  // ------------------------------------------------------------------------------------------------ wiring

  function init() {
    el.choosePhoto.addEventListener("click", () => el.fileInput.click());
    el.fileInput.addEventListener("change", () => {
      const f = firstImageFile(el.fileInput.files);
      if (f) loadFile(f);
      el.fileInput.value = ""; // choosing the same file again must fire "change" again
    });

    el.form.addEventListener("submit", (e) => {
      e.preventDefault();
      search(false);
    });
    el.loadMore.addEventListener("click", () => search(true));
    el.clearRect.addEventListener("click", () => {
      state.rect = null;
      renderRect();
      markStale("Rectangle removed. Press Search to update.");
      el.canvas.focus({ preventScroll: true });
    });
    el.category.addEventListener("change", () => markStale("Category changed. Press Search to update."));

    el.stage.addEventListener("pointerdown", onPointerDown);
    el.stage.addEventListener("pointermove", onPointerMove);
    el.stage.addEventListener("pointerup", onPointerUp);
    el.stage.addEventListener("pointercancel", onPointerUp);
    el.canvas.addEventListener("keydown", onCanvasKey);

    // Drag and drop anywhere on the page; the veil says where the photo goes.
    let depth = 0;
    const hasFiles = (e) => e.dataTransfer && Array.from(e.dataTransfer.types || []).includes("Files");
    window.addEventListener("dragenter", (e) => {
      if (!hasFiles(e)) return;
      e.preventDefault();
      depth += 1;
      document.body.classList.add("dragging");
    });
    window.addEventListener("dragover", (e) => {
      if (!hasFiles(e)) return;
      e.preventDefault();
      e.dataTransfer.dropEffect = "copy";
    });
    window.addEventListener("dragleave", (e) => {
      if (!hasFiles(e)) return;
      depth = Math.max(0, depth - 1);
      if (!depth) document.body.classList.remove("dragging");
    });
    window.addEventListener("drop", (e) => {
      if (!hasFiles(e)) return;
      e.preventDefault();
      depth = 0;
      document.body.classList.remove("dragging");
      const f = firstImageFile(e.dataTransfer.files);
      if (f) loadFile(f);
    });

    document.addEventListener("paste", (e) => {
      const f = e.clipboardData && firstImageFile(e.clipboardData.files);
      if (!f) return;
      e.preventDefault();
      loadFile(f);
    });

    if ("ResizeObserver" in window) new ResizeObserver(() => layoutStage()).observe(el.dropzone);
    else window.addEventListener("resize", layoutStage);

    loadCategories();
  }

  init();
})();
