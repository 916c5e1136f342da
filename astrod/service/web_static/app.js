// astrod dashboard: polls /api/status, keeps one card per open session, draws the per-frame plots as SVG.
// No framework, no build step. Everything from the server is put into the page as text, never as HTML.
"use strict";

(() => {
  const POLL_MS = 2500;
  const THEME_KEY = "astrod-theme";
  const TOKEN_KEY = "astrod-token";
  const SVG_NS = "http://www.w3.org/2000/svg";
  const PLOTS = [
    { key: "fwhm", label: "FWHM (px)", digits: 2 },
    { key: "stars", label: "stars", digits: 0 },
    { key: "background", label: "background", digits: 0 },
  ];
  const cards = new Map();
  const $ = (id) => document.getElementById(id);

  // ------------------------------------------------------------------ helpers
  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === null || v === undefined) continue;
      if (k === "class") node.className = v;
      else if (k === "text") node.textContent = v;
      else node.setAttribute(k, v);
    }
    for (const child of children) if (child) node.append(child);
    return node;
  }

  function svg(tag, attrs) {
    const node = document.createElementNS(SVG_NS, tag);
    for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, String(v));
    return node;
  }

  const isNum = (v) => typeof v === "number" && Number.isFinite(v);

  function fmt(v, digits) {
    if (!isNum(v)) return "–";
    return v.toLocaleString(undefined, { minimumFractionDigits: digits, maximumFractionDigits: digits });
  }

  function fmtExposure(seconds) {
    if (!isNum(seconds) || seconds <= 0) return "0 s";
    const s = Math.round(seconds);
    const h = Math.floor(s / 3600), m = Math.floor((s % 3600) / 60), r = s % 60;
    if (h) return `${h} h ${String(m).padStart(2, "0")} m`;
    if (m) return `${m} m ${String(r).padStart(2, "0")} s`;
    return `${r} s`;
  }

  function fmtTime(iso, seconds = false) {
    if (!iso) return "";
    const d = new Date(iso);
    if (Number.isNaN(d.getTime())) return String(iso);
    const opts = seconds ? { hour: "2-digit", minute: "2-digit", second: "2-digit" } : { hour: "2-digit", minute: "2-digit" };
    return d.toLocaleTimeString([], opts);
  }

  function fmtDateTime(iso) {
    if (!iso) return "–";
    const d = new Date(iso);
    if (Number.isNaN(d.getTime())) return String(iso);
    return d.toLocaleString([], { month: "short", day: "numeric", hour: "2-digit", minute: "2-digit" });
  }

  const baseName = (p) => (p ? String(p).split(/[\\/]/).pop() : "–");

  async function getJSON(url) {
    const response = await fetch(url, { cache: "no-store" });
    if (!response.ok) throw new Error(`${url}: HTTP ${response.status}`);
    return response.json();
  }

  function fileLink(files, name, label) {
    const f = files && files[name];
    return f ? el("a", { href: f.url, text: label || name }) : null;
  }

  // ------------------------------------------------------------------ theme
  function applyTheme(red) {
    document.documentElement.classList.toggle("red", red);
    $("red-toggle").setAttribute("aria-pressed", String(red));
  }

  function setupTheme() {
    let red = false;
    try { red = localStorage.getItem(THEME_KEY) === "red"; } catch (e) { /* storage disabled */ }
    applyTheme(red);
    $("red-toggle").addEventListener("click", () => {
      const now = !document.documentElement.classList.contains("red");
      applyTheme(now);
      try { localStorage.setItem(THEME_KEY, now ? "red" : "dark"); } catch (e) { /* storage disabled */ }
    });
  }

  // ------------------------------------------------------------------ plots
  function drawPlot(box, rows, spec) {
    const W = 300, H = 130, L = 38, R = 8, T = 10, B = 20;
    const plot = svg("svg", { viewBox: `0 0 ${W} ${H}`, class: `plot plot-${spec.key}`, role: "img",
      "aria-label": `${spec.label} per frame` });
    const done = rows.filter((r) => r.status === "stacked" || r.status === "rejected");
    const values = done.map((r) => r[spec.key]).filter(isNum);
    const n = done.length;
    let lo = values.length ? Math.min(...values) : 0;
    let hi = values.length ? Math.max(...values) : 1;
    if (hi - lo < 1e-9) { const pad = Math.abs(hi) * 0.1 || 1; lo -= pad; hi += pad; }
    const span = hi - lo; lo -= span * 0.08; hi += span * 0.08;
    const x = (i) => (n <= 1 ? L + (W - L - R) / 2 : L + (i * (W - L - R)) / (n - 1));
    const y = (v) => T + (H - T - B) * (1 - (v - lo) / (hi - lo));
    plot.append(svg("line", { class: "axis", x1: L, y1: T, x2: L, y2: H - B }));
    plot.append(svg("line", { class: "axis", x1: L, y1: H - B, x2: W - R, y2: H - B }));
    const label = (text, attrs) => { const t = svg("text", attrs); t.textContent = text; plot.append(t); };
    if (values.length) {
      label(fmt(hi, spec.digits), { x: L - 4, y: T + 9, "text-anchor": "end" });
      label(fmt(lo, spec.digits), { x: L - 4, y: H - B, "text-anchor": "end" });
    }
    if (n) {
      const short = n > 1 && Math.abs(new Date(done[n - 1].time) - new Date(done[0].time)) < 600e3;
      label(fmtTime(done[0].time, short), { x: L, y: H - 4, "text-anchor": "start" });
      if (n > 1) label(fmtTime(done[n - 1].time, short), { x: W - R, y: H - 4, "text-anchor": "end" });
    }
    done.forEach((r, i) => {
      if (r.status === "rejected") {
        plot.append(svg("line", { class: "rej-mark", x1: x(i), y1: T, x2: x(i), y2: H - B }));
      }
    });
    const trace = done.map((r, i) => [r, i]).filter(([r]) => r.status === "stacked" && isNum(r[spec.key]));
    if (trace.length > 1) {
      plot.append(svg("polyline", { class: "trace",
        points: trace.map(([r, i]) => `${x(i).toFixed(1)},${y(r[spec.key]).toFixed(1)}`).join(" ") }));
    }
    done.forEach((r, i) => {
      const v = r[spec.key];
      if (!isNum(v)) return;
      const c = svg("circle", { cx: x(i).toFixed(1), cy: y(v).toFixed(1), r: n > 150 ? 1.5 : 2.6,
        class: r.status === "rejected" ? "rej" : "ok" });
      const tip = svg("title", {});
      tip.textContent = `${r.name}: ${spec.label} ${fmt(v, spec.digits)}${r.reason ? " — " + r.reason : ""}`;
      c.append(tip);
      plot.append(c);
    });
    plot.dataset.points = String(values.length);
    const last = values.length ? fmt(values[values.length - 1], spec.digits) : "–";
    box.replaceChildren(el("div", { class: "plot-title" }, el("span", { text: spec.label }),
      el("span", { text: last })), plot);
  }

  async function refreshFrames(card, id) {
    try {
      const data = await getJSON(`/api/sessions/${encodeURIComponent(id)}/frames`);
      PLOTS.forEach((spec, k) => drawPlot(card.plotBoxes[k], data.frames, spec));
    } catch (e) {
      card.frameCount = -1; // try again at the next poll
    }
  }

  // ------------------------------------------------------------------ session cards
  function makeCard(s) {
    const card = { frameCount: -1, previewVersion: null, curveVersions: {} };
    card.title = el("h3");
    card.badge = el("span", { class: "badge" });
    card.img = el("img", { alt: "live stack preview" });
    card.noPreview = el("div", { class: "none muted", text: "no preview yet" });
    card.previewLink = el("a", { class: "preview", target: "_blank", rel: "noopener" }, card.noPreview);
    card.caption = el("div", { class: "caption muted small" });
    card.stats = el("div", { class: "stats" });
    card.last = el("div", { class: "last" });
    card.chips = el("div", { class: "chips" });
    card.links = el("div", { class: "links" });
    card.curves = el("div", { class: "curves" });
    card.plotBoxes = PLOTS.map(() => el("div", { class: "plot-box" }));
    card.closeBtn = el("button", { type: "button", class: "close-btn", text: "close…",
      title: "close this session now (needs the web token)" });
    card.closeBtn.addEventListener("click", () => closeSession(s.id));
    card.root = el("article", { class: "card", "data-session": s.id },
      el("div", { class: "card-head" }, card.title, el("span", {}, card.badge, " ", card.closeBtn)),
      el("div", { class: "card-body" }, el("div", {}, card.previewLink, card.caption),
        el("div", {}, card.stats, card.last, card.chips)),
      el("div", { class: "plots" }, ...card.plotBoxes),
      card.curves,
      card.links);
    return card;
  }

  // The light curves the session writes (lightcurve_<target>.png beside its .csv), each reloaded when its
  // file changes.
  function updateCurves(card, files) {
    const names = Object.keys(files).filter((n) => /^lightcurve_.+\.png$/.test(n)).sort();
    if (names.join("/") !== Object.keys(card.curveVersions).sort().join("/")) {
      card.curveVersions = {};
      card.curves.replaceChildren(...names.map((name) => {
        const target = name.slice("lightcurve_".length, -".png".length);
        const img = el("img", { alt: `light curve of ${target}`, class: "curve", "data-target": target });
        const csv = files[`lightcurve_${target}.csv`];
        return el("figure", { class: "curve-box" }, el("a", { href: files[name].url, target: "_blank", rel: "noopener" }, img),
          el("figcaption", { class: "muted small" }, `light curve of ${target} `,
            csv ? el("a", { href: csv.url, text: "(CSV)" }) : ""));
      }));
      for (const name of names) card.curveVersions[name] = null;
    }
    for (const name of names) {
      const version = String(files[name].mtime_ns);
      if (version === card.curveVersions[name]) continue;
      card.curveVersions[name] = version;
      const target = name.slice("lightcurve_".length, -".png".length);
      const img = card.curves.querySelector(`img[data-target="${CSS.escape(target)}"]`);
      if (img) img.src = `${files[name].url}?v=${encodeURIComponent(version)}`;
    }
  }

  function stat(box, label, value, cls) {
    box.append(el("div", { class: "stat" }, el("span", { class: "label", text: label }),
      el("span", { class: `value ${cls || ""}`, text: value })));
  }

  function updateCard(card, s) {
    card.title.textContent = s.label || s.id;
    card.badge.textContent = s.closing ? "closing" : (s.night ? `night ${s.night}` : "open");
    card.badge.className = s.closing ? "badge closing" : "badge";
    card.closeBtn.hidden = Boolean(s.closing);

    const files = s.files || {};
    const preview = files["preview.jpg"];
    if (preview) {
      const version = String(preview.mtime_ns);
      if (version !== card.previewVersion) {
        card.previewVersion = version;
        card.img.src = `${preview.url}?v=${encodeURIComponent(version)}`;
        card.previewLink.href = preview.url;
        card.previewLink.replaceChildren(card.img);
        const when = new Date(Number(BigInt(preview.mtime_ns) / 1000000n));
        card.caption.textContent = `preview of ${s.stacked ?? 0} frames, ${when.toLocaleTimeString()}`;
      }
    }

    card.stats.replaceChildren();
    stat(card.stats, "stacked", String(s.stacked ?? 0), "ok");
    stat(card.stats, "rejected", String(s.rejected ?? 0), s.rejected ? "bad" : "");
    stat(card.stats, "total exposure", fmtExposure(s.total_exposure_s));
    stat(card.stats, "waiting", String(s.queue ?? 0));

    const m = s.last_frame || {};
    card.last.replaceChildren();
    if (m.path) {
      card.last.append(el("div", {}, el("span", { class: "muted", text: "last frame " }),
        el("span", { text: baseName(m.path) }), " ",
        el("span", { class: m.status === "stacked" ? "" : "reason", text: `(${m.status || "?"})` })));
      const grid = el("div", { class: "metrics" });
      for (const [label, value] of [["FWHM", `${fmt(m.fwhm, 2)} px`], ["stars", fmt(m.stars, 0)],
        ["background", fmt(m.background, 0)], ["eccentricity", fmt(m.eccentricity, 2)],
        ["weight", fmt(m.weight, 2)], ["took", !isNum(m.ms_total) ? "–" : m.ms_total < 1000 ? `${fmt(m.ms_total, 0)} ms` : `${fmt(m.ms_total / 1000, 1)} s`]]) {
        grid.append(el("div", { class: "figure" }, el("span", { class: "muted", text: label }),
          el("span", { text: value })));
      }
      card.last.append(grid);
      if (m.reason) card.last.append(el("div", { class: "reason", text: m.reason }));
    } else {
      card.last.append(el("span", { class: "muted", text: "no frame processed yet" }));
    }

    card.chips.replaceChildren(...Object.entries(s.rejections || {}).map(([why, count]) =>
      el("span", { class: "chip bad", title: `rejected: ${why}`, text: `${why.includes("/") ? baseName(why) : why}: ${count}` })));

    card.links.replaceChildren(...["preview.jpg", "preview.fits"].map((n) => fileLink(files, n)).filter(Boolean));
    updateCurves(card, files);

    const count = (s.stacked || 0) + (s.rejected || 0);
    if (count !== card.frameCount) {
      card.frameCount = count;
      refreshFrames(card, s.id);
    }
  }

  function renderSessions(sessions) {
    const box = $("sessions");
    const seen = new Set();
    for (const s of sessions) {
      seen.add(s.id);
      let card = cards.get(s.id);
      if (!card) {
        card = makeCard(s);
        cards.set(s.id, card);
        box.append(card.root);
      }
      updateCard(card, s);
    }
    for (const [id, card] of cards) {
      if (!seen.has(id)) { card.root.remove(); cards.delete(id); }
    }
    $("no-sessions").hidden = sessions.length > 0;
    $("open-count").textContent = sessions.length ? `(${sessions.length})` : "";
  }

  // ------------------------------------------------------------------ other panels
  function renderClosed(closed) {
    const body = $("closed").querySelector("tbody");
    const rows = closed.slice().reverse().map((c) => {
      const files = c.files || {};
      const products = el("td", { class: "products" });
      const named = [["report.html", "report"], ["final.jpg", "picture"], ["final.fits", "final"],
        ["stack.fits", "stack"], ["frames.csv", "frames"], ["session.json", "summary"], ["preview.jpg", "preview"]];
      for (const [name, label] of named) {
        const a = fileLink(files, name, label);
        if (a) products.append(a);
      }
      for (const name of Object.keys(files)) {
        if (!named.some(([n]) => n === name) && name !== "preview.fits") products.append(fileLink(files, name));
      }
      if (!products.childNodes.length) products.append(el("span", { class: "muted", text: "none" }));
      return el("tr", {},
        el("td", { text: c.label || c.id, title: c.id }),
        el("td", { text: fmtDateTime(c.closed_at) }),
        el("td", { class: "num", text: String(c.stacked ?? "–") }),
        el("td", { class: "num", text: String(c.rejected ?? "–") }),
        el("td", { class: "num", text: fmtExposure(c.exposure ?? c.total_exposure_s) }),
        products);
    });
    body.replaceChildren(...rows);
    $("no-closed").hidden = rows.length > 0;
    $("closed").hidden = rows.length === 0;
  }

  function renderLibrary(lib) {
    const box = $("library");
    const masters = (lib && lib.masters) || {};
    const kinds = Object.entries(masters);
    const chips = el("div", { class: "chips" }, ...kinds.map(([kind, n]) => el("span", { class: "chip",
      text: `${kind}: ${n}` })));
    box.replaceChildren(
      kinds.length ? chips : el("div", { class: "muted", text: "no masters yet" }),
      el("div", { class: "muted small", text: lib && lib.path ? lib.path : "" }));
  }

  function renderFiles(files) {
    const box = $("files");
    const entries = Object.entries(files || {});
    if (!entries.length) { box.replaceChildren(el("span", { class: "muted", text: "none seen yet" })); return; }
    box.replaceChildren(el("div", { class: "chips" }, ...entries.map(([status, n]) =>
      el("span", { class: status === "rejected" ? "chip bad" : "chip", text: `${status}: ${n}` }))));
  }

  function renderProgress(p) {
    const section = $("progress");
    if (!p || !isNum(p.total) || p.total <= 0) { section.hidden = true; return; }
    section.hidden = false;
    const done = isNum(p.done) ? Math.min(p.done, p.total) : 0;
    $("progress-what").textContent = (p.what || "working") + (p.item ? ` · ${baseName(p.item)}` : "");
    $("progress-count").textContent = `${done} / ${p.total}`;
    $("progress-fill").style.width = `${(100 * done) / p.total}%`;
  }

  function renderErrors(errors) {
    const recent = (errors || []).slice(-5).reverse();
    $("errors").hidden = recent.length === 0;
    $("error-list").replaceChildren(...recent.map((e) =>
      el("li", { text: `${fmtTime(e.at)} ${e.where}: ${e.error}` })));
  }

  // what fails now (retried by the daemon until it works again), as opposed to the history of errors
  function renderProblems(problems) {
    const now = problems || [];
    $("problems").hidden = now.length === 0;
    $("problem-list").replaceChildren(...now.map((p) =>
      el("li", { text: `since ${fmtTime(p.since)} ${p.problem}` })));
  }

  function render(status) {
    $("state-dot").className = status.running ? "dot up" : "dot down";
    $("status-line").textContent = status.running ? (status.status_line || "") : "astrod is not running";
    $("updated").textContent = `updated ${new Date().toLocaleTimeString()}`;
    renderProgress(status.progress);
    renderProblems(status.problems);
    renderErrors(status.errors);
    renderSessions(status.sessions || []);
    renderLibrary(status.library);
    renderFiles(status.files);
    renderClosed(status.closed_sessions || []);
    $("footer").textContent = `astrod ${status.version || ""} · pid ${status.pid ?? "–"} · started ` +
      fmtDateTime(status.started_at);
    document.body.dataset.loaded = "1";
  }

  // ------------------------------------------------------------------ actions
  async function closeSession(id) {
    let token = null;
    try { token = sessionStorage.getItem(TOKEN_KEY); } catch (e) { /* storage disabled */ }
    if (!token) token = window.prompt(`Web token to close ${id}:`);
    if (!token) return;
    const response = await fetch(`/api/sessions/${encodeURIComponent(id)}/close`, {
      method: "POST", headers: { Authorization: `Bearer ${token}` } });
    if (response.status === 403) {
      try { sessionStorage.removeItem(TOKEN_KEY); } catch (e) { /* storage disabled */ }
      window.alert("Refused: wrong token, or no token configured (read-only).");
      return;
    }
    try { sessionStorage.setItem(TOKEN_KEY, token); } catch (e) { /* storage disabled */ }
    if (!response.ok) window.alert(`Could not close: HTTP ${response.status}`);
    poll(false);
  }

  // ------------------------------------------------------------------ polling
  let timer = null;
  async function poll(again = true) {
    try {
      render(await getJSON("/api/status"));
    } catch (e) {
      $("state-dot").className = "dot down";
      $("status-line").textContent = "no answer from astrod";
    }
    if (again) {
      clearTimeout(timer);
      timer = setTimeout(poll, document.hidden ? POLL_MS * 4 : POLL_MS);
    }
  }

  setupTheme();
  poll();
})();
