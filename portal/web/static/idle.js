// Vigil portal: warns before the session's idle timeout signs the viewer off (automatic
// logoff). The server ends a session not used for the idle timeout (data-idle-seconds on
// <body>); background requests (live tile refreshes, chart updates, marked with the header
// X-Vigil-Background: 1) need not count as use. Two minutes before the end (half-way through
// a shorter timeout) an alert dialog says when the session ends and offers "Stay signed in",
// which makes one ordinary request (GET /api/v1/auth/me) and so restarts the server's timer.
// At the end the page goes to the sign-in page. No inline script (CSP).
(function () {
  "use strict";
  function idleSeconds() { return parseInt(document.body.getAttribute("data-idle-seconds") || "0", 10); }
  var secs = idleSeconds();
  if (!secs || secs <= 0) { return; }
  var warnBefore = 0;
  var deadline = 0, warnTimer = 0, endTimer = 0, tick = 0;
  var box = document.createElement("div");
  box.id = "idle-warning";
  box.className = "idle-warning";
  box.setAttribute("role", "alertdialog");
  box.setAttribute("aria-labelledby", "idle-warning-text");
  box.hidden = true;
  var text = document.createElement("p");
  text.id = "idle-warning-text";
  var stay = document.createElement("button");
  stay.type = "button";
  stay.id = "idle-stay";
  stay.className = "primary";
  stay.textContent = "Stay signed in";
  box.appendChild(text);
  box.appendChild(stay);
  document.body.appendChild(box);

  function left() { return Math.max(0, Math.round((deadline - Date.now()) / 1000)); }
  function show() {
    box.hidden = false;
    var update = function () {
      var s = left();
      text.textContent = "You will be signed out in " + s + " s because of inactivity.";
      box.setAttribute("data-seconds-left", String(s));
    };
    update();
    clearInterval(tick);
    tick = setInterval(update, 1000);
    stay.focus();
  }
  function arm() {
    secs = idleSeconds() || secs;
    warnBefore = Math.min(120, Math.floor(secs / 2));
    clearTimeout(warnTimer); clearTimeout(endTimer); clearInterval(tick);
    box.hidden = true;
    deadline = Date.now() + secs * 1000;
    warnTimer = setTimeout(show, Math.max(0, (secs - warnBefore) * 1000));
    endTimer = setTimeout(function () { window.location.assign("/signin?idle=1"); }, secs * 1000);
  }
  stay.addEventListener("click", function () {
    fetch("/api/v1/auth/me", { credentials: "same-origin", headers: { "Accept": "application/json" } })
      .then(function (r) { if (r.ok) { arm(); } else { window.location.assign("/signin?idle=1"); } })
      .catch(function () { text.textContent = "Could not reach the server; try again."; });
  });
  // A foreground htmx request (a form or a click, not a background refresh) is use too.
  document.body.addEventListener("htmx:afterRequest", function (ev) {
    var cfg = ev.detail && ev.detail.requestConfig;
    var h = cfg && cfg.headers ? cfg.headers["X-Vigil-Background"] : "";
    if (h !== "1") { arm(); }
  });
  arm();
}());
