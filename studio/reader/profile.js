(p, agreed) => { const v = {};
  document.querySelectorAll('#profile [data-field]').forEach(
      (el) => { v[el.dataset.field] = el.value; });
  return [JSON.stringify(v), agreed]; }