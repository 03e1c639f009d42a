document.addEventListener("click", (e) => {
  if (!e.target.closest || !e.target.closest("#logout")) return;
  e.preventDefault();
  fetch("logout", {method: "POST", credentials: "same-origin", redirect: "manual"})
    .finally(() => window.location.assign("./"));
});
