// Vigil portal: live alarm inbox. Listens to the notification stream (SSE) for alarm
// transitions of the viewer's patients and re-reads the inbox (GET /alarms with the page's
// filters, as a background request: X-Vigil-Background: 1) to replace the list, unless the
// viewer is typing in one of its forms (then the list is refreshed once the form loses
// focus). A lost stream is shown ("live updates paused — reconnecting") and the list is
// re-read when it is back. No inline script (CSP).
(function () {
  "use strict";
  var inbox = document.getElementById("inbox");
  var status = document.getElementById("live-status");
  if (!inbox || !status || !window.EventSource || !window.fetch) { return; }
  var ids = (inbox.getAttribute("data-patients") || "").split(" ").filter(Boolean);
  function setStatus(state, text) {
    if (status.getAttribute("data-state") === state) { return; }
    status.setAttribute("data-state", state);
    status.textContent = text;
  }
  if (ids.length === 0) { setStatus("idle", "No patients to follow."); return; }
  var stale = false, timer = 0;
  function busy() {
    var a = document.activeElement;
    return !!(a && inbox.contains(a) && (a.tagName === "INPUT" || a.tagName === "SELECT" || a.tagName === "TEXTAREA"));
  }
  function reload() {
    if (busy()) { stale = true; return; }
    stale = false;
    // GET /alarms with the page's filters, also after a refused form (whose URL is the POST's).
    fetch("/alarms" + window.location.search, { credentials: "same-origin", headers: { "X-Vigil-Background": "1" } })
      .then(function (r) { return r.ok ? r.text() : Promise.reject(r.status); })
      .then(function (html) {
        var doc = new DOMParser().parseFromString(html, "text/html");
        var fresh = doc.getElementById("inbox");
        if (fresh && !busy()) { inbox.innerHTML = fresh.innerHTML; inbox.setAttribute("data-refreshed", String(Date.now())); }
        else if (fresh) { stale = true; }
      })
      .catch(function () { stale = true; });
  }
  function schedule() { clearTimeout(timer); timer = setTimeout(reload, 150); }
  inbox.addEventListener("focusout", function () { if (stale) { setTimeout(function () { if (!busy()) { reload(); } }, 50); } });
  var kinds = ["opened", "retriggered", "severity_escalated", "severity_deescalated", "acknowledged", "silenced", "silence_expired", "escalated", "reminder", "resolved", "worsened"];
  var types = kinds.map(function (k) { return "alarm." + k; });
  var url = inbox.getAttribute("data-stream") + "?" + ids.map(function (id) { return "patient_id=" + encodeURIComponent(id); })
    .concat(types.map(function (t) { return "type=" + encodeURIComponent(t); })).join("&");
  var wasLost = false;
  var es = new EventSource(url);
  es.onopen = function () { setStatus("live", "Live updates on."); if (wasLost) { wasLost = false; schedule(); } };
  es.onerror = function () { wasLost = true; setStatus("paused", "Live updates paused — reconnecting…"); };
  es.onmessage = schedule;
  types.forEach(function (t) { es.addEventListener(t, schedule); });
  es.addEventListener("reset", schedule);
}());
