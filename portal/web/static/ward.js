// Vigil portal: live updates of the ward overview. Listens to the server's notification
// stream (Server-Sent Events) for the patients on the page and asks htmx to re-render a
// patient's tile (GET /ward/tiles/{id}) when an event names them. When the stream is lost
// the page says so ("live updates paused — reconnecting") and, once it is back, every tile
// is refreshed, so nothing that happened meanwhile is missed. No inline script: this file is
// served under a hashed URL with Subresource Integrity (docs/portal.md).
(function () {
  "use strict";
  var ward = document.getElementById("ward");
  var status = document.getElementById("live-status");
  if (!ward || !status || !window.EventSource || !window.htmx) { return; }
  var ids = (ward.getAttribute("data-patients") || "").split(" ").filter(Boolean);
  if (ids.length === 0) { setStatus("idle", "No patients to follow."); return; }

  function setStatus(state, text) {
    if (status.getAttribute("data-state") === state) { return; }
    status.setAttribute("data-state", state);
    status.textContent = text;
  }

  function refresh(id) {
    var el = document.getElementById("tile-" + id);
    if (el) { window.htmx.trigger(el, "vigil:refresh"); }
  }

  function refreshAll() { ids.forEach(refresh); }

  // Several events for one patient in a burst make one request.
  var pending = {};
  function schedule(id) {
    if (pending[id]) { return; }
    pending[id] = setTimeout(function () { delete pending[id]; refresh(id); }, 100);
  }

  // The event types a tile shows: new observations and every alarm transition.
  var types = ["observations"].concat(["opened", "retriggered", "severity_escalated", "severity_deescalated", "acknowledged", "silenced", "silence_expired", "escalated", "reminder", "resolved"].map(function (k) { return "alarm." + k; }));
  var url = ward.getAttribute("data-stream") + "?" + ids.map(function (id) {
    return "patient_id=" + encodeURIComponent(id);
  }).concat(types.map(function (t) { return "type=" + encodeURIComponent(t); })).join("&");
  var wasLost = false;
  var es = new EventSource(url);
  es.onopen = function () {
    setStatus("live", "Live updates on.");
    if (wasLost) { refreshAll(); wasLost = false; }
  };
  es.onerror = function () {
    wasLost = true;
    setStatus("paused", "Live updates paused — reconnecting…");
  };
  // NEWS2 is scored by the rules engine just after the observations are stored and has no
  // stream event of its own yet: a tile is refreshed again a little later to show it.
  function onEvent(ev) {
    var id = "";
    try { id = JSON.parse(ev.data).patient_id || ""; } catch (e) { id = ""; }
    if (!id) { refreshAll(); return; }
    schedule(id);
    if (ev.type === "observations") { setTimeout(function () { schedule(id); }, 1500); }
  }
  es.onmessage = onEvent;
  types.forEach(function (t) { es.addEventListener(t, onEvent); });
  es.addEventListener("reset", refreshAll);
}());
