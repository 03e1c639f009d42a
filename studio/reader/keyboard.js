// Reader keyboard shortcuts, injected with `head=` (Gradio has no native shortcuts).
// Digits pick the n-th option of the visible answer scale (1-6 turing, 1-5 Likert);
// Enter presses the first visible action button (submit, continue, start).
// Pair (2AFC) reads: ← / → move the answer one step along the 6-point scale towards that
// side (1-3 "left is synthetic", 4-6 "right"): with nothing chosen the first press picks
// "possibly <side>", the next "probably", then "definitely"; the other arrow steps back
// (across to the other side after "possibly"). The choice is on screen before Enter.
// B presses the visible Back button (going back to the previous case), if there is one.
// Keys are ignored while the reader is typing in a text field, and modified keys
// (Ctrl/Alt/Meta) are left to the browser.
(function () {
  if (window.__medisynKeys) return;
  window.__medisynKeys = true;
  const ACTIONS = ["submit", "continue", "start", "retry"];
  function visible(el) {
    return !!el && el.offsetParent !== null && !el.closest("[hidden]");
  }
  function typing(el) {
    if (!el) return false;
    if (el.isContentEditable) return true;
    const tag = el.tagName;
    if (tag === "TEXTAREA" || tag === "SELECT") return true;
    if (tag === "INPUT") return !["radio", "checkbox", "button", "submit"].includes(el.type);
    return false;
  }
  window.__medisynTyping = typing;  // shared with viewer.js (injected after this file)
  function button(id) {
    const el = document.getElementById(id);
    if (!el) return null;
    return el.tagName === "BUTTON" ? el : el.querySelector("button");
  }
  // Time on case, browser side: window.__medisynShownAt is the moment the current question
  // appeared, or its image finished loading if that came later. The submit event sends
  // performance.now() minus it; the server keeps it only if shorter than its own clock.
  function mark() { window.__medisynShownAt = performance.now(); }
  document.addEventListener("load", function (e) {
    const t = e.target;
    if (t && t.tagName === "IMG" && t.closest("#stimulus")) mark();
  }, true);  // load does not bubble: listen in the capture phase
  // An image that fails to arrive (file gone since the page checked it, network cut) says
  // so in words instead of a broken-image icon; the server has logged the fault.
  document.addEventListener("error", function (e) {
    const t = e.target;
    if (!t || t.tagName !== "IMG" || !t.closest("#stimulus")) return;
    const box = document.createElement("div");
    box.className = "stimulus-fault";
    box.textContent = "This image is unavailable; the study team has been notified. " +
      "Reload the page in a few minutes to continue.";
    t.replaceWith(box);
  }, true);
  window.addEventListener("keydown", function (e) {
    if (e.key !== "ArrowLeft" && e.key !== "ArrowRight") return;
    if (e.ctrlKey || e.metaKey || e.altKey || e.repeat || typing(e.target)) return;
    const scale = document.getElementById("answer");
    if (!visible(scale) || !document.querySelector("#stimulus .pair-view")) return;
    const options = scale.querySelectorAll("input[type=radio]");
    if (options.length !== 6) return;
    const left = e.key === "ArrowLeft";
    let i = Array.prototype.findIndex.call(options, function (o) { return o.checked; });
    i = i < 0 ? (left ? 2 : 3) : Math.min(5, Math.max(0, i + (left ? -1 : 1)));
    options[i].click();
    options[i].blur();
    // Capture phase + preventDefault: a focused radio must not also move by itself.
    e.preventDefault();
    e.stopPropagation();
  }, true);
  let lastKey = null;
  new MutationObserver(function () {
    // Only the case label and the question's heading: Gradio's status tracker also writes
    // text inside these blocks while an event runs, which must not restart the clock.
    const p = document.querySelector("#progress .label"), q = document.querySelector("#question h3");
    if (!p || !q || !visible(q)) return;
    const key = p.textContent + "|" + q.textContent;
    if (key !== lastKey) { lastKey = key; mark(); }
  }).observe(document.documentElement, {childList: true, subtree: true, characterData: true});
  document.addEventListener("keydown", function (e) {
    if (e.ctrlKey || e.metaKey || e.altKey || e.repeat) return;
    if (typing(e.target)) return;
    if (/^[1-9]$/.test(e.key)) {
      const scale = document.getElementById("answer");
      if (!visible(scale)) return;
      const options = scale.querySelectorAll("input[type=radio]");
      const i = parseInt(e.key, 10) - 1;
      if (i < options.length) {
        options[i].click();
        options[i].blur();  // no lingering focus ring that looks like a pre-selected answer
        e.preventDefault();
      }
    } else if (e.key === "b" || e.key === "B") {
      if (pressFirst(["back", "back-finished", "back-waiting"])) e.preventDefault();
    } else if (e.key === "Enter") {
      // A focused button already handles Enter natively; don't press it twice.
      if (e.target && e.target.tagName === "BUTTON" && !e.target.closest("#stimulus")) return;
      if (pressFirst(ACTIONS)) e.preventDefault();
    }
  });
  // Click the first visible, enabled button of `ids`; false when there is none.
  function pressFirst(ids) {
    for (const id of ids) {
      const b = button(id);
      if (visible(b) && !b.disabled) { b.click(); return true; }
    }
    return false;
  }
  // Enter on the "non-diagnostic" checkbox submits, as from an answer option: Gradio's
  // checkbox toggles itself on Enter, which silently undid the reader's tick.
  window.addEventListener("keydown", function (e) {
    const t = e.target;
    if (e.key !== "Enter" || e.repeat || !t || t.type !== "checkbox" || !t.closest("#remarks")) return;
    e.stopPropagation();
    e.preventDefault();
    pressFirst(ACTIONS);
  }, true);
})();
