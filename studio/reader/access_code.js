(code) => {
  code = (code || '').trim();
  const m = code.match(/[?&]token=([^&#\s]+)/);
  const t = m ? decodeURIComponent(m[1]) : code;
  if (t) { window.location.search = '?token=' + encodeURIComponent(t); }
}
