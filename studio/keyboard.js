// Reader keyboard shortcuts, injected with `head=` (Gradio has no native shortcuts).
// Digits pick the n-th option of the visible answer scale (1-6 turing, 1-5 Likert);
// Enter presses the first visible action button (submit, continue, start).
// Keys are ignored while the reader is typing in a text field, and modified keys
// (Ctrl/Alt/Meta) are left to the browser.
(function () {
  if (window.__medisynKeys) return;
  window.__medisynKeys = true;
  const ACTIONS = ["submit", "continue", "start"];
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
  function button(id) {
    const el = document.getElementById(id);
    if (!el) return null;
    return el.tagName === "BUTTON" ? el : el.querySelector("button");
  }
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
    } else if (e.key === "Enter") {
      // A focused button already handles Enter natively; don't press it twice.
      if (e.target && e.target.tagName === "BUTTON" && !e.target.closest("#stimulus")) return;
      for (const id of ACTIONS) {
        const b = button(id);
        if (visible(b) && !b.disabled) {
          b.click();
          e.preventDefault();
          return;
        }
      }
    }
  });
})();
