/* Lookalike storefront refinements: the photo's attributes as chips to require or exclude, colour swatches for a
 * target colour, facets beside the results, and "why" on every result card.
 *
 * app.js calls two hooks: LookalikeRefine.addFields(form, params) while building a search request, and
 * LookalikeRefine.render(body, append, rerun) after rendering its results; rerun() searches again from the top.
 * The request fields are POST /v1/search's `edit` (JSON) and `facets` (see /docs). */
(() => {
  "use strict";

  const FACETS_N = 500; // facets count over this many best listings (the API allows up to 1000)
  // The taxonomy colours with a swatch (shared/colours.py SWATCHES): key -> sRGB.
  const SWATCHES = {
    black: "#151515", white: "#f4f4f2", off_white: "#ece6d6", grey: "#8a8a8a", blue: "#2f6fd0", navy: "#1f2a52",
    red: "#c8102e", maroon: "#6b1e2c", pink: "#f09cbc", purple: "#6a3d9a", green: "#2e8b57", olive: "#6f7b36",
    yellow: "#f2d024", orange: "#f28c28", brown: "#7b4b2a", beige: "#d9c4a0", gold: "#c9a227", silver: "#bfc1c2",
  };
  const MODES = ["", "require", "exclude"]; // a chip cycles through these
  const MODE_TEXT = { "": "", require: "must have", exclude: "must not have" };

  const state = { file: null, require: new Set(), exclude: new Set(), colour: "", names: {}, rerun: null };
  let ui = null;

  function h(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (k === "dataset") Object.assign(node.dataset, v);
      else if (k === "text") node.textContent = v;
      else node.setAttribute(k, v);
    }
    node.append(...children);
    return node;
  }

  function build() {
    if (ui) return ui;
    const panel = h("section", { class: "refine", "data-testid": "refine", "aria-labelledby": "refine-heading" });
    panel.hidden = true;
    panel.append(
      h("h3", { id: "refine-heading", text: "Refine" }),
      h("p", { class: "muted small", text: "Click an attribute once to require it, twice to exclude it." }),
      h("ul", { class: "refine-chips", "data-testid": "refine-chips", "aria-label": "Attributes of your photo" }),
      h("p", { class: "small refine-colour-label", text: "Colour" }),
      h("div", { class: "swatches", "data-testid": "swatches", role: "group", "aria-label": "Target colour" }),
      h("p", { class: "small muted refine-matched", "data-testid": "refine-matched", "aria-live": "polite" }),
      h("button", { type: "button", class: "button secondary refine-clear", "data-testid": "refine-clear",
                    text: "Clear refinements" }),
    );
    const analysis = document.getElementById("analysis");
    analysis.after(panel);
    // Facets sit in this panel, beside the results: above them they would push the results (and "Load more") down.
    const facets = h("aside", { class: "facets", "data-testid": "facets", "aria-label": "Facets" });
    facets.hidden = true;
    panel.append(facets);
    const swatches = panel.querySelector(".swatches");
    for (const [key, hex] of Object.entries(SWATCHES)) {
      const b = h("button", { type: "button", class: "swatch", "data-testid": "swatch", title: key.replace(/_/g, " "),
                              "aria-pressed": "false", "aria-label": `colour ${key.replace(/_/g, " ")}` });
      b.dataset.key = key;
      b.style.background = hex;
      b.addEventListener("click", () => {
        state.colour = state.colour === key ? "" : key;
        refresh();
        rerun();
      });
      swatches.append(b);
    }
    panel.querySelector(".refine-clear").addEventListener("click", () => {
      reset();
      refresh();
      rerun();
    });
    ui = { panel, facets, chips: panel.querySelector(".refine-chips"), swatches,
           matched: panel.querySelector(".refine-matched"), clear: panel.querySelector(".refine-clear") };
    return ui;
  }

  function reset() {
    state.require.clear();
    state.exclude.clear();
    state.colour = "";
  }

  function rerun() {
    if (state.rerun) state.rerun();
  }

  function modeOf(key) {
    return state.require.has(key) ? "require" : state.exclude.has(key) ? "exclude" : "";
  }

  function cycle(key) {
    const next = MODES[(MODES.indexOf(modeOf(key)) + 1) % MODES.length];
    state.require.delete(key);
    state.exclude.delete(key);
    if (next === "require") state.require.add(key);
    if (next === "exclude") state.exclude.add(key);
    refresh();
    rerun();
  }

  function chip(key, label, count) {
    const b = h("button", { type: "button", class: "refine-chip", "data-testid": "refine-chip", title: key });
    b.dataset.key = key;
    b.append(h("span", { class: "refine-chip-name", text: label }));
    if (count != null) b.append(h("span", { class: "refine-chip-count", text: ` (${count})` }));
    b.addEventListener("click", () => cycle(key));
    return b;
  }

  function refresh() {
    if (!ui) return;
    for (const b of ui.panel.querySelectorAll(".refine-chip, .facet-attr")) {
      const mode = modeOf(b.dataset.key);
      b.dataset.mode = mode;
      b.setAttribute("aria-pressed", String(mode !== ""));
      b.setAttribute("aria-label", `${b.title}${mode ? `: ${MODE_TEXT[mode]}` : ""}`);
    }
    for (const b of ui.facets.querySelectorAll(".facet-attr")) b.dataset.mode = modeOf(b.dataset.key);
    for (const s of ui.swatches.children) s.setAttribute("aria-pressed", String(s.dataset.key === state.colour));
    ui.clear.hidden = !(state.require.size || state.exclude.size || state.colour);
  }

  function renderChips(body) {
    const attrs = (body.query && body.query.attributes) || [];
    for (const a of attrs) state.names[a.key] = a.name;
    ui.chips.replaceChildren();
    const keys = attrs.map((a) => a.key);
    // Keep the chips of attributes the shopper set even if the photo does not have them (facets, swatches).
    for (const key of [...state.require, ...state.exclude]) if (!keys.includes(key)) keys.push(key);
    for (const key of keys) {
      if (key.startsWith("colour.") && state.colour && key === `colour.${state.colour}`) continue;
      ui.chips.append(h("li", {}, chip(key, state.names[key] || key.replace(/^[^.]*\./, "").replace(/_/g, " "))));
    }
  }

  function renderMatched(body) {
    const r = body.refine;
    if (!r) {
      ui.matched.textContent = "";
      return;
    }
    const parts = [];
    if (r.require.length) parts.push(`with ${r.require.join(", ")}`);
    if (r.exclude.length) parts.push(`without ${r.exclude.join(", ")}`);
    ui.matched.textContent = `${r.matched} listing${r.matched === 1 ? "" : "s"} ${parts.join(" and ") || "in this category"}`;
    ui.matched.dataset.matched = String(r.matched);
  }

  function renderFacets(body) {
    const f = body.facets;
    ui.facets.replaceChildren();
    if (!f) {
      ui.facets.hidden = true;
      return;
    }
    ui.facets.append(h("h3", { class: "facets-title", text: `Among the ${f.n} most similar` }));
    const groups = [["Colours", f.colours], ["Attributes", f.attributes]];
    if ((f.categories || []).length > 1) groups.unshift(["Categories", f.categories]);
    for (const [title, rows] of groups) {
      if (!rows || !rows.length) continue;
      const list = h("ul", { class: "facet-list", "aria-label": title });
      for (const row of rows.slice(0, 16)) {
        const li = h("li", {});
        if (title === "Categories") {
          li.append(h("span", { text: `${row.name} (${row.count})` }));
        } else {
          state.names[row.key] = row.name;
          const b = h("button", { type: "button", class: "facet-attr", "data-testid": "facet", title: row.key });
          b.dataset.key = row.key;
          b.dataset.count = String(row.count);
          b.dataset.mode = modeOf(row.key);
          b.textContent = `${row.name} (${row.count})`;
          b.addEventListener("click", () => cycle(row.key));
          li.append(b);
        }
        list.append(li);
      }
      ui.facets.append(h("h4", { text: title }), list);
    }
    ui.facets.hidden = false;
  }

  function num(x) {
    return typeof x === "number" && Number.isFinite(x) ? x.toFixed(4) : "n/a";
  }

  function renderWhy(body) {
    const byId = new Map((body.results || []).map((r) => [String(r.listing_id), r]));
    for (const card of document.querySelectorAll("#results [data-testid='result-card']")) {
      const r = byId.get(card.dataset.listingId);
      if (!r || !r.why || card.querySelector(".why")) continue;
      const w = r.why;
      const box = h("details", { class: "why", "data-testid": "why" });
      box.append(h("summary", { text: "Why this result?" }));
      const dl = h("dl", { class: "why-terms" });
      if (w.appearance) {
        dl.append(h("dt", { text: "Appearance" }),
                  h("dd", { text: `${num(w.appearance.weight)} × ${num(w.appearance.distance)} = ${num(w.appearance.term)}` }),
                  h("dt", { text: "Colour" }),
                  h("dd", { text: `${num(w.colour.weight)} × ${num(w.colour.distance)} = ${num(w.colour.term)}` }));
      }
      dl.append(h("dt", { text: "Score" }), h("dd", { text: `${num(w.score)} (lower is closer)` }));
      box.append(dl);
      card.dataset.appearanceTerm = w.appearance ? String(w.appearance.term) : "";
      card.dataset.colourTerm = w.colour ? String(w.colour.term) : "";
      if (w.shares.length) box.append(h("p", { class: "small", text: `Shares: ${w.shares.map(label).join(", ")}` }));
      if (w.lacks.length) box.append(h("p", { class: "small muted", text: `Lacks: ${w.lacks.map(label).join(", ")}` }));
      card.querySelector(".card-body").append(box);
    }
  }

  function label(key) {
    return state.names[key] || key.replace(/^[^.]*\./, "").replace(/_/g, " ");
  }

  window.LookalikeRefine = {
    /** Add the shopper's refinements to a search request (a new photo starts without any). */
    addFields(form, params) {
      if (params && params.file !== state.file) {
        if (state.file) reset();
        state.file = params.file;
      }
      const edit = { require: [...state.require], exclude: [...state.exclude] };
      if (state.colour) edit.colour = state.colour;
      if (edit.require.length || edit.exclude.length || edit.colour) form.append("edit", JSON.stringify(edit));
      form.append("facets", String(FACETS_N));
    },
    /** Show chips, swatches, facets and "why" for a rendered search response. */
    render(body, append, rerunFn) {
      build();
      state.rerun = rerunFn;
      if (!append) {
        renderChips(body);
        renderMatched(body);
        renderFacets(body);
        ui.panel.hidden = false;
        refresh();
      }
      renderWhy(body);
    },
  };
})();
