(() => {
  let timer = null;
  function show() {
    let el = document.getElementById('saving');
    if (!el) {
      el = document.createElement('div');
      el.id = 'saving'; el.setAttribute('role', 'status'); el.textContent = 'Saving…';
      document.body.appendChild(el);
    }
    el.hidden = false;
  }
  window.__medisynSaving = {
    start() { clearTimeout(timer); timer = setTimeout(show, 1000); },
    stop() {
      clearTimeout(timer); timer = null;
      const el = document.getElementById('saving');
      if (el) el.hidden = true;
    },
  };
})();