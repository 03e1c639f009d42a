(st, ans, ms, note, nd) => {
  if (window.__medisynSaving) window.__medisynSaving.start();
  return [st, ans, (typeof window.__medisynShownAt === 'number')
    ? Math.round(performance.now() - window.__medisynShownAt) : null, note, nd]; }