// Vigil portal: the enrollment link carries its token in the URL fragment (#token=vge_…),
// which browsers never send to a server. This moves it into the enrollment form, removes it
// from the address bar (and so from the history), and submits the form.
(function () {
  "use strict";
  function start() {
    const m = /(?:^|[#&])token=(vge_[A-Za-z0-9_-]+)/.exec(location.hash);
    if (!m) return;
    history.replaceState(null, "", location.pathname);
    const input = document.getElementById("e-token");
    const form = document.getElementById("enroll-start");
    if (!input || !form || input.value !== "") return;
    input.value = m[1];
    form.submit();
  }
  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start);
  else start();
})();
