// Reader image viewer, injected with `head=` next to keyboard.js.
// Zoom, pan, 1:1 pixels, brightness/contrast (window/level), invert and full screen act on
// the served stimulus only, through CSS transforms and CSS filters on its <img>: no pixels
// are fetched, decoded or re-encoded by this script and it makes no request of its own
// (except the reconnect probe below, to the page's own URL), so blinding is the stimulus
// route's (docs/blinding.md). Every new image (next case, next read) starts from the reset
// view.
//
// Keys (digits and Enter stay with keyboard.js): + / = zoom in, - zoom out, 0 or R reset,
// N native pixels (1 image pixel = 1 screen pixel), F full screen, I invert, C cycles the
// contrast presets, ? help. Mouse: wheel zooms at the pointer, drag pans, right-drag is
// window/level (horizontal: contrast, vertical: brightness), double-click resets.
// Touch: pinch zooms, one-finger drag pans when zoomed, double-tap resets; the toolbar on
// the image has the same actions as buttons.
//
// Pair (2AFC) reads show two panes (`.viewer-pane`) in the one #stimulus box, each with its
// own view: the mouse and touch act on the image under the pointer; keys and the toolbar
// act on both at once (same zoom, contrast and invert on both, for a fair comparison).
// The arrow keys belong to the answer (keyboard.js), not to the viewer.
//
// Connection: a failed event post (server down, network cut) shows a plain "not saved"
// banner (`#connection-lost`) and probes the server every 2 s; once it answers, the banner
// says so and offers Reload, which resumes at the first unanswered case from the database.
(function () {
  if (window.__medisynViewer) return;
  window.__medisynViewer = true;
  const MIN_ZOOM = 0.05, MAX_ZOOM = 16, STEP = 1.25;
  // Contrast presets per modality family, [name, brightness, contrast, saturation]. The
  // image's data-presets names the family (studio.reader.handlers.preset_family; the
  // session gives it only when real and synthetic images share the modality). The stimulus
  // is an 8-bit image already windowed at import, so these are display adjustments, not HU
  // windows.
  const PRESET_SETS = {
    "": [["Normal", 1, 1], ["High contrast", 1, 1.8], ["Bright", 1.5, 1.2], ["Dark", 0.7, 1.4]],
    xray: [["Normal", 1, 1], ["High contrast (bone, lines)", 1, 1.9],
           ["Bright (dense areas)", 1.45, 1.15], ["Dark (lung periphery)", 0.7, 1.35]],
    ct: [["Normal", 1, 1], ["Narrow (soft tissue)", 1.05, 1.7], ["Wide (flatter)", 1.1, 0.7],
         ["Dark (bright structures)", 0.75, 1.5]],
    mri: [["Normal", 1, 1], ["High contrast", 1, 1.6], ["Bright (dark regions)", 1.5, 1.05],
          ["Dark", 0.75, 1.25]],
    colour: [["Normal", 1, 1, 1], ["Grey (colour off)", 1, 1.2, 0], ["Bright", 1.35, 1.05, 1],
             ["High contrast", 1, 1.5, 1.15]],
    ultrasound: [["Normal", 1, 1], ["Bright", 1.5, 1.1], ["High contrast", 1, 1.7],
                 ["Dark", 0.75, 1.3]],
  };
  function presets() {  // the set of the image on screen (a pair shares one modality)
    const img = document.querySelector("#stimulus img[data-presets]");
    return PRESET_SETS[img ? img.dataset.presets : ""] || PRESET_SETS[""];
  }
  function presetNames() { return presets().map(function (p) { return p[0]; }).join(", "); }
  const HELP = [["+  /  −", "zoom in / out (wheel, pinch)"], ["drag", "pan"],
                ["N", "native pixels (1:1)"], ["F", "full screen"],
                ["right-drag", "brightness (up/down) and contrast (left/right)"],
                ["C", "contrast presets: "],  // + the names of this image's (help())
                ["I", "invert"], ["0  or  R", "reset view (double-click / double-tap)"],
                ["1–9", "choose an answer"], ["Enter", "submit"],
                ["B", "back to the previous question or case (when the study allows it)"], ["?", "this help"]];
  const PAIR_HELP = [["←  /  →", "which image is synthetic: the first press picks " +
                      "\u201cpossibly\u201d that side, press again for \u201cprobably\u201d, " +
                      "again for \u201cdefinitely\u201d; the other arrow steps back"],
                     ["mouse", "acts on the image under it; keys and the toolbar on both"]];
  const PAIR_TOUCH = [["tap", "an answer (left or right, and how sure), then Submit"],
                      ["pinch, drag", "act on the image under your fingers; the toolbar on both"]];
  const coarse = window.matchMedia && window.matchMedia("(pointer: coarse)").matches;

  // One view per pane (a single image: one; a pair: left, right), kept across cases.
  const views = [];
  let nPanes = 0;
  function viewAt(i) {
    while (views.length <= i) {
      views.push({pane: null, img: null, src: null, zoom: 1, tx: 0, ty: 0, bright: 1,
                  contrast: 1, saturate: 1, invert: false, preset: 0});
    }
    return views[i];
  }
  window.__medisynView = viewAt(0);  // read by the browser tests (the single or left image)
  window.__medisynViews = views;
  function active() { return views.slice(0, nPanes).filter(function (v) { return v.img; }); }
  function all(fn) { return function () { active().forEach(fn); }; }
  function reset(v) {
    v.zoom = 1; v.tx = 0; v.ty = 0; v.bright = 1; v.contrast = 1; v.saturate = 1;
    v.invert = false; v.preset = 0;
    apply(v);
  }
  function clamp(x, lo, hi) { return Math.min(hi, Math.max(lo, x)); }
  function apply(v) {
    const img = v.img;
    if (!img) return;
    img.style.transform = (v.zoom === 1 && !v.tx && !v.ty) ? ""
      : "translate(" + v.tx.toFixed(1) + "px," + v.ty.toFixed(1) + "px) scale(" + v.zoom.toFixed(4) + ")";
    const f = [];
    if (v.bright !== 1) f.push("brightness(" + v.bright.toFixed(3) + ")");
    if (v.contrast !== 1) f.push("contrast(" + v.contrast.toFixed(3) + ")");
    if (v.saturate !== 1) f.push("saturate(" + v.saturate.toFixed(3) + ")");
    if (v.invert) f.push("invert(1)");
    img.style.filter = f.join(" ");
    // Past native size the browser's smoothing would blur the pixels the reader zoomed for.
    img.style.imageRendering = v.zoom > 1 && v.zoom * fitScale(v) > 1.5 ? "pixelated" : "";
    if (v.pane) v.pane.classList.toggle("zoomed", v.zoom !== 1);
  }
  function stimulusBox() { return document.getElementById("stimulus"); }
  // Scale at which object-fit: contain shows the image (displayed px per image px).
  function fitScale(v) {
    const img = v.img;
    if (!img || !img.naturalWidth) return 1;
    return Math.min(img.clientWidth / img.naturalWidth, img.clientHeight / img.naturalHeight);
  }
  // Zoom to z keeping the point (sx, sy) (relative to the image box centre) in place.
  function zoomTo(v, z, sx, sy) {
    z = clamp(z, MIN_ZOOM, MAX_ZOOM);
    sx = sx || 0; sy = sy || 0;
    const px = (sx - v.tx) / v.zoom, py = (sy - v.ty) / v.zoom;
    v.tx = sx - z * px; v.ty = sy - z * py; v.zoom = z;
    apply(v);
  }
  function native(v) {
    const s = fitScale(v) * (window.devicePixelRatio || 1);
    if (s > 0) { v.tx = 0; v.ty = 0; zoomTo(v, 1 / s); }
  }
  function preset() {  // keys and toolbar: the same preset on every image shown
    const vs = active();
    if (!vs.length) return;
    const set = presets();
    const next = (vs[0].preset + 1) % set.length;
    vs.forEach(function (v) {
      v.preset = next; v.bright = set[next][1]; v.contrast = set[next][2];
      v.saturate = set[next].length > 3 ? set[next][3] : 1;
      apply(v);
    });
    toast(set[next][0]);
  }
  function invert() {
    const vs = active();
    const on = vs.length ? !vs[0].invert : false;
    vs.forEach(function (v) { v.invert = on; apply(v); });
  }
  const zoomIn = all(function (v) { zoomTo(v, v.zoom * STEP); });
  const zoomOut = all(function (v) { zoomTo(v, v.zoom / STEP); });
  const resetAll = all(reset), nativeAll = all(native);
  function fullscreen() {
    const box = stimulusBox();
    if (!box) return;
    if (document.fullscreenElement) document.exitFullscreen();
    else if (box.requestFullscreen) box.requestFullscreen().catch(function () {});
  }
  function toast(text) {
    const box = stimulusBox();
    if (!box) return;
    let t = box.querySelector(".viewer-toast");
    if (!t) { t = document.createElement("div"); t.className = "viewer-toast"; box.appendChild(t); }
    t.textContent = text;
    clearTimeout(toast.timer);
    toast.timer = setTimeout(function () { t.textContent = ""; }, 1200);
  }
  function help(show) {
    let h = document.getElementById("viewer-help");
    if (!h) {
      h = document.createElement("div");
      h.id = "viewer-help";
      h.setAttribute("role", "dialog");
      h.setAttribute("aria-label", "Viewer keys");
      const card = document.createElement("div");
      card.className = "card";
      const title = document.createElement("h3");
      title.textContent = coarse ? "Image viewer" : "Keyboard and mouse";
      card.appendChild(title);
      card.appendChild(document.createElement("dl"));
      const close = document.createElement("button");
      close.type = "button"; close.textContent = "Close";
      close.addEventListener("click", function () { help(false); });
      card.appendChild(close);
      h.appendChild(card);
      h.addEventListener("click", function (e) { if (e.target === h) help(false); });
      h.hidden = true;
      document.body.appendChild(h);
    }
    h.hidden = show === undefined ? !h.hidden : !show;
    if (!h.hidden) {  // the rows of what is on screen (a pair adds its arrow keys)
      const pair = !!document.querySelector("#stimulus .pair-view");
      const rows = (coarse ? [["pinch", "zoom"], ["drag", "pan when zoomed"],
                              ["double-tap", "reset view"],
                              ["toolbar", "zoom, 1:1, contrast, invert, full screen, reset"]]
                    : HELP.map(function (r) { return r[0] === "C" ? [r[0], r[1] + presetNames()] : r; })
                   ).concat(pair ? (coarse ? PAIR_TOUCH : PAIR_HELP) : []);
      const list = h.querySelector("dl");
      list.textContent = "";
      rows.forEach(function (r) {
        const dt = document.createElement("dt"), dd = document.createElement("dd");
        dt.textContent = r[0]; dd.textContent = r[1];
        list.appendChild(dt); list.appendChild(dd);
      });
    }
  }
  const TOOLS = [["−", "Zoom out", zoomOut], ["+", "Zoom in", zoomIn],
                 ["1:1", "Native pixels", nativeAll], ["◐", "Contrast presets", preset],
                 ["Inv", "Invert", invert], ["Full", "Full screen", fullscreen],
                 ["↺", "Reset view", resetAll], ["?", "Help", function () { help(); }]];
  function ensureToolbar(box) {
    if (box.querySelector(".viewer-tools")) return;
    const bar = document.createElement("div");
    bar.className = "viewer-tools";
    // On small screens CSS shows only this toggle until it is tapped (the tools fold away).
    const toggle = document.createElement("button");
    toggle.type = "button"; toggle.textContent = "⋯"; toggle.className = "tools-toggle";
    toggle.title = "Image tools"; toggle.setAttribute("aria-label", "Image tools");
    toggle.setAttribute("aria-expanded", "false"); toggle.tabIndex = -1;
    toggle.addEventListener("click", function (e) {
      e.stopPropagation();
      const open = bar.classList.toggle("open");
      toggle.setAttribute("aria-expanded", open ? "true" : "false");
      toggle.blur();
    });
    bar.appendChild(toggle);
    TOOLS.forEach(function (t) {
      const b = document.createElement("button");
      b.type = "button"; b.textContent = t[0]; b.title = t[1];
      b.setAttribute("aria-label", t[1]);
      b.tabIndex = -1;  // Enter keeps submitting the answer, never re-presses a tool
      b.addEventListener("click", function (e) { e.stopPropagation(); t[2](); b.blur(); });
      bar.appendChild(b);
    });
    box.appendChild(bar);
  }
  // A new <img> (next case or read) starts from the reset view.
  new MutationObserver(function () {
    const box = stimulusBox();
    if (!box) return;
    ensureToolbar(box);
    const panes = box.querySelectorAll(".viewer-pane");
    const list = panes.length ? Array.from(panes) : [box];
    nPanes = list.length;
    list.forEach(function (pane, i) {
      const v = viewAt(i);
      v.pane = pane;
      // Gradio may patch the same <img> in place (new src, style attribute dropped).
      const img = pane.querySelector("img");
      if (img && (img !== v.img || img.getAttribute("src") !== v.src)) {
        v.img = img; v.src = img.getAttribute("src"); reset(v);
      } else if (!img && v.img && !v.img.isConnected) {
        v.img = null; v.src = null;  // gone (finish screen, or a load error's message)
      }
    });
  }).observe(document.documentElement, {childList: true, subtree: true, attributes: true,
                                         attributeFilter: ["src"]});

  // The view of the image under an event (null outside the images and on the toolbar).
  function viewOf(e) {
    const box = stimulusBox();
    if (!box || !box.contains(e.target) || e.target.closest(".viewer-tools")) return null;
    for (let i = 0; i < nPanes; i++) {
      const v = views[i];
      if (v.img && v.pane && v.pane.contains(e.target)) return v;
    }
    return null;
  }
  function centreOffset(v, e) {
    const r = v.pane.getBoundingClientRect();
    return [e.clientX - (r.left + r.width / 2), e.clientY - (r.top + r.height / 2)];
  }
  document.addEventListener("wheel", function (e) {
    const v = viewOf(e);
    if (!v) return;
    e.preventDefault();
    const c = centreOffset(v, e);
    zoomTo(v, v.zoom * Math.pow(STEP, -Math.sign(e.deltaY)), c[0], c[1]);
  }, {passive: false});
  document.addEventListener("contextmenu", function (e) {
    const box = stimulusBox();
    if (box && box.contains(e.target) && !e.target.closest(".viewer-tools")) e.preventDefault();
  });
  document.addEventListener("dblclick", function (e) { const v = viewOf(e); if (v) reset(v); });

  // Pointer gestures on the image under the first pointer: one pointer pans (left) or
  // windows (right button); two pinch-zoom.
  const pointers = new Map();
  let drag = null, pinch = null, lastTap = 0, gv = null;
  document.addEventListener("pointerdown", function (e) {
    const hit = viewOf(e);
    if (!hit) return;
    if (!pointers.size) gv = hit;  // a second finger joins the first one's image
    const v = gv;
    pointers.set(e.pointerId, [e.clientX, e.clientY]);
    if (pointers.size === 2) {
      const p = Array.from(pointers.values());
      pinch = {d: Math.hypot(p[0][0] - p[1][0], p[0][1] - p[1][1]), zoom: v.zoom};
      drag = null;
    } else {
      drag = {x: e.clientX, y: e.clientY, tx: v.tx, ty: v.ty, bright: v.bright,
              contrast: v.contrast, wl: e.button === 2};
      if (e.pointerType === "touch") {
        const now = Date.now();
        if (now - lastTap < 300) reset(v);
        lastTap = now;
      }
    }
    e.preventDefault();
  });
  document.addEventListener("pointermove", function (e) {
    if (!pointers.has(e.pointerId) || !gv) return;
    const v = gv;
    pointers.set(e.pointerId, [e.clientX, e.clientY]);
    if (pinch && pointers.size === 2) {
      const p = Array.from(pointers.values());
      const d = Math.hypot(p[0][0] - p[1][0], p[0][1] - p[1][1]);
      if (pinch.d > 0) zoomTo(v, pinch.zoom * d / pinch.d);
    } else if (drag) {
      const dx = e.clientX - drag.x, dy = e.clientY - drag.y;
      if (drag.wl) {  // window/level: right = more contrast, up = brighter
        v.contrast = clamp(drag.contrast * Math.exp(dx / 200), 0.1, 10);
        v.bright = clamp(drag.bright * Math.exp(-dy / 200), 0.1, 10);
      } else {
        v.tx = drag.tx + dx; v.ty = drag.ty + dy;
      }
      apply(v);
    }
  });
  function up(e) {
    pointers.delete(e.pointerId);
    if (pointers.size < 2) pinch = null;
    if (pointers.size === 0) { drag = null; gv = null; }
  }
  document.addEventListener("pointerup", up);
  document.addEventListener("pointercancel", up);

  const typing = (el) => window.__medisynTyping(el);  // keyboard.js: keys ignored while typing
  // Capture phase: a focused Gradio control (the radio just clicked) must not swallow them.
  window.addEventListener("keydown", function (e) {
    if (e.ctrlKey || e.metaKey || e.altKey || typing(e.target)) return;
    const h = document.getElementById("viewer-help");
    if (e.key === "Escape" && h && !h.hidden) { help(false); e.preventDefault(); return; }
    if (e.key === "?") { help(); e.preventDefault(); return; }
    const box = stimulusBox();
    if (!active().length || !box || box.offsetParent === null) return;
    const k = e.key.length === 1 ? e.key.toLowerCase() : e.key;
    const act = {"+": zoomIn, "=": zoomIn, "-": zoomOut, "0": resetAll, "r": resetAll,
                 "n": nativeAll, "f": fullscreen, "i": invert, "c": preset}[k];
    if (act && !(e.repeat && (k === "f" || k === "i" || k === "c"))) { act(); e.preventDefault(); }
  }, true);

  // --- connection loss: say plainly that the answer was not saved --------------------
  // Gradio 6 itself shows "Connection Lost", polls the server every 2 s and reloads the
  // page once it answers; the reload resumes at the first unanswered case (database), so
  // the notice is kept in sessionStorage and shown again after that reload.
  const NOT_SAVED = "medisyn-not-saved";
  let probing = null;
  function banner(text, button) {
    let b = document.getElementById("connection-lost");
    if (!b) {
      b = document.createElement("div");
      b.id = "connection-lost";
      b.setAttribute("role", "alert");
      document.body.appendChild(b);
    }
    b.hidden = false;
    b.textContent = text + " ";
    if (button) {
      const r = document.createElement("button");
      r.type = "button"; r.textContent = button[0];
      r.addEventListener("click", button[1]);
      b.appendChild(r);
    }
  }
  function clearBanner() {
    const b = document.getElementById("connection-lost");
    if (b) b.hidden = true;
    try { sessionStorage.removeItem(NOT_SAVED); } catch (e) {}
  }
  function lost() {
    try { sessionStorage.setItem(NOT_SAVED, "1"); } catch (e) {}
    banner("Not saved: the connection to the study server was lost, so your last answer " +
           "was NOT recorded. Your earlier answers are safe. Keep this tab open; this " +
           "message changes when the server is back.", null);
    if (probing) return;
    probing = setInterval(function () {
      origFetch(window.location.pathname + window.location.search, {cache: "no-store"})
        .then(function (r) {
          if (!r.ok) return;
          clearInterval(probing); probing = null;
          banner("The connection is back, but your last answer was NOT saved. Press Reload " +
                 "and answer the case again (the study continues where you stopped).",
                 ["Reload", function () { window.location.reload(); }]);
        }).catch(function () {});
    }, 2000);
  }
  function notSavedEarlier() {
    let flag = null;
    try { flag = sessionStorage.getItem(NOT_SAVED); } catch (e) {}
    if (!flag) return;
    banner("Your last answer was NOT saved: the connection to the study server was lost " +
           "when you sent it. Please answer this case again.", ["OK", clearBanner]);
  }
  // The notice ends when the reader has moved on to another case (that answer was saved).
  let noticeCase = null;
  new MutationObserver(function () {
    const b = document.getElementById("connection-lost");
    const label = document.querySelector("#progress .label");
    if (!b || b.hidden || !label || !label.textContent || probing) return;
    if (noticeCase === null) noticeCase = label.textContent;
    else if (label.textContent !== noticeCase) { noticeCase = null; clearBanner(); }
  }).observe(document.documentElement, {childList: true, subtree: true, characterData: true});
  if (document.body) notSavedEarlier();
  else document.addEventListener("DOMContentLoaded", notSavedEarlier);
  const origFetch = window.fetch.bind(window);
  window.fetch = function (input, init) {
    const url = (input && input.url) || String(input);
    const p = origFetch(input, init);
    if (url.indexOf("/queue/join") >= 0) {
      p.then(function (r) { if (r.status >= 500) lost(); }, function () { lost(); });
    } else if (url.indexOf("/queue/data") >= 0) {
      p.then(function (r) { if (r.status >= 500) lost(); }, function () { lost(); });
    }
    return p;
  };
})();
