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
// Connection: a failed event post (server down, network cut) shows a plain "not saved"
// banner (`#connection-lost`) and probes the server every 2 s; once it answers, the banner
// says so and offers Reload, which resumes at the first unanswered case from the database.
(function () {
  if (window.__medisynViewer) return;
  window.__medisynViewer = true;
  const MIN_ZOOM = 0.05, MAX_ZOOM = 16, STEP = 1.25;
  // Generic presets (the page is not told the modality): [name, brightness, contrast].
  const PRESETS = [["Normal", 1, 1], ["High contrast", 1, 1.8], ["Bright", 1.5, 1.2],
                   ["Dark", 0.7, 1.4]];
  const HELP = [["+  /  −", "zoom in / out (wheel, pinch)"], ["drag", "pan"],
                ["N", "native pixels (1:1)"], ["F", "full screen"],
                ["right-drag", "brightness (up/down) and contrast (left/right)"],
                ["C", "contrast presets: " + PRESETS.map(function (p) { return p[0]; }).join(", ")],
                ["I", "invert"], ["0  or  R", "reset view (double-click / double-tap)"],
                ["1–9", "choose an answer"], ["Enter", "submit"],
                ["B", "back to the previous case (when the study allows it)"], ["?", "this help"]];
  const coarse = window.matchMedia && window.matchMedia("(pointer: coarse)").matches;

  const v = {img: null, src: null, zoom: 1, tx: 0, ty: 0, bright: 1, contrast: 1, invert: false, preset: 0};
  window.__medisynView = v;  // read by the browser tests
  function reset() {
    v.zoom = 1; v.tx = 0; v.ty = 0; v.bright = 1; v.contrast = 1; v.invert = false; v.preset = 0;
    apply();
  }
  function clamp(x, lo, hi) { return Math.min(hi, Math.max(lo, x)); }
  function apply() {
    const img = v.img;
    if (!img) return;
    img.style.transform = (v.zoom === 1 && !v.tx && !v.ty) ? ""
      : "translate(" + v.tx.toFixed(1) + "px," + v.ty.toFixed(1) + "px) scale(" + v.zoom.toFixed(4) + ")";
    const f = [];
    if (v.bright !== 1) f.push("brightness(" + v.bright.toFixed(3) + ")");
    if (v.contrast !== 1) f.push("contrast(" + v.contrast.toFixed(3) + ")");
    if (v.invert) f.push("invert(1)");
    img.style.filter = f.join(" ");
    // Past native size the browser's smoothing would blur the pixels the reader zoomed for.
    img.style.imageRendering = v.zoom > 1 && v.zoom * fitScale() > 1.5 ? "pixelated" : "";
    const box = stimulusBox();
    if (box) box.classList.toggle("zoomed", v.zoom !== 1);
  }
  function stimulusBox() { return document.getElementById("stimulus"); }
  // Scale at which object-fit: contain shows the image (displayed px per image px).
  function fitScale() {
    const img = v.img;
    if (!img || !img.naturalWidth) return 1;
    return Math.min(img.clientWidth / img.naturalWidth, img.clientHeight / img.naturalHeight);
  }
  // Zoom to z keeping the point (sx, sy) (relative to the image box centre) in place.
  function zoomTo(z, sx, sy) {
    z = clamp(z, MIN_ZOOM, MAX_ZOOM);
    sx = sx || 0; sy = sy || 0;
    const px = (sx - v.tx) / v.zoom, py = (sy - v.ty) / v.zoom;
    v.tx = sx - z * px; v.ty = sy - z * py; v.zoom = z;
    apply();
  }
  function native() {
    const s = fitScale() * (window.devicePixelRatio || 1);
    if (s > 0) { v.tx = 0; v.ty = 0; zoomTo(1 / s); }
  }
  function preset() {
    v.preset = (v.preset + 1) % PRESETS.length;
    v.bright = PRESETS[v.preset][1]; v.contrast = PRESETS[v.preset][2];
    apply();
    toast(PRESETS[v.preset][0]);
  }
  function invert() { v.invert = !v.invert; apply(); }
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
      const list = document.createElement("dl");
      const rows = coarse ? [["pinch", "zoom"], ["drag", "pan when zoomed"],
                             ["double-tap", "reset view"],
                             ["toolbar", "zoom, 1:1, contrast, invert, full screen, reset"]]
        : HELP;
      rows.forEach(function (r) {
        const dt = document.createElement("dt"), dd = document.createElement("dd");
        dt.textContent = r[0]; dd.textContent = r[1];
        list.appendChild(dt); list.appendChild(dd);
      });
      card.appendChild(list);
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
  }
  const TOOLS = [["−", "Zoom out", function () { zoomTo(v.zoom / STEP); }],
                 ["+", "Zoom in", function () { zoomTo(v.zoom * STEP); }],
                 ["1:1", "Native pixels", native], ["◐", "Contrast presets", preset],
                 ["Inv", "Invert", invert], ["Full", "Full screen", fullscreen],
                 ["↺", "Reset view", reset], ["?", "Help", function () { help(); }]];
  function ensureToolbar(box) {
    if (box.querySelector(".viewer-tools")) return;
    const bar = document.createElement("div");
    bar.className = "viewer-tools";
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
    // Gradio may patch the same <img> in place (new src, style attribute dropped).
    const img = box.querySelector("img");
    if (img && (img !== v.img || img.getAttribute("src") !== v.src)) {
      v.img = img; v.src = img.getAttribute("src"); reset();
    }
  }).observe(document.documentElement, {childList: true, subtree: true, attributes: true,
                                         attributeFilter: ["src"]});

  function inImage(e) { const box = stimulusBox(); return !!box && box.contains(e.target)
                          && !e.target.closest(".viewer-tools"); }
  function centreOffset(e) {
    const r = stimulusBox().getBoundingClientRect();
    return [e.clientX - (r.left + r.width / 2), e.clientY - (r.top + r.height / 2)];
  }
  document.addEventListener("wheel", function (e) {
    if (!inImage(e) || !v.img) return;
    e.preventDefault();
    const c = centreOffset(e);
    zoomTo(v.zoom * Math.pow(STEP, -Math.sign(e.deltaY)), c[0], c[1]);
  }, {passive: false});
  document.addEventListener("contextmenu", function (e) { if (inImage(e)) e.preventDefault(); });
  document.addEventListener("dblclick", function (e) { if (inImage(e)) reset(); });

  // Pointer gestures: one pointer pans (left) or windows (right button); two pinch-zoom.
  const pointers = new Map();
  let drag = null, pinch = null, lastTap = 0;
  document.addEventListener("pointerdown", function (e) {
    if (!inImage(e) || !v.img) return;
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
        if (now - lastTap < 300) reset();
        lastTap = now;
      }
    }
    e.preventDefault();
  });
  document.addEventListener("pointermove", function (e) {
    if (!pointers.has(e.pointerId)) return;
    pointers.set(e.pointerId, [e.clientX, e.clientY]);
    if (pinch && pointers.size === 2) {
      const p = Array.from(pointers.values());
      const d = Math.hypot(p[0][0] - p[1][0], p[0][1] - p[1][1]);
      if (pinch.d > 0) zoomTo(pinch.zoom * d / pinch.d);
    } else if (drag) {
      const dx = e.clientX - drag.x, dy = e.clientY - drag.y;
      if (drag.wl) {  // window/level: right = more contrast, up = brighter
        v.contrast = clamp(drag.contrast * Math.exp(dx / 200), 0.1, 10);
        v.bright = clamp(drag.bright * Math.exp(-dy / 200), 0.1, 10);
      } else {
        v.tx = drag.tx + dx; v.ty = drag.ty + dy;
      }
      apply();
    }
  });
  function up(e) {
    pointers.delete(e.pointerId);
    if (pointers.size < 2) pinch = null;
    if (pointers.size === 0) drag = null;
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
    if (!v.img || !box || box.offsetParent === null) return;
    const k = e.key.length === 1 ? e.key.toLowerCase() : e.key;
    const act = {"+": function () { zoomTo(v.zoom * STEP); }, "=": function () { zoomTo(v.zoom * STEP); },
                 "-": function () { zoomTo(v.zoom / STEP); }, "0": reset, "r": reset,
                 "n": native, "f": fullscreen, "i": invert, "c": preset}[k];
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
