// Vigil portal: the patient view's charts. Reads the charts' data (GET
// /patients/{id}/series?range=…, downsampled by the server) and draws one uPlot chart per
// vital and one for NEWS2. Listens to the notification stream (SSE) for the patient's new
// observations and alarm transitions and re-reads the data (a background request:
// X-Vigil-Background: 1), so the charts keep up without a reload. A lost stream is shown and
// the data re-read when it is back. No inline script (CSP).
(function () {
  "use strict";
  var root = document.getElementById("charts");
  var status = document.getElementById("live-status");
  if (!root || !status || !window.uPlot || !window.fetch) { return; }
  var patient = root.getAttribute("data-patient"), range = root.getAttribute("data-range");
  var plots = {};
  var span = { from: 0, to: 0 }; // the range's bounds (Unix seconds): the x axis, whatever the data
  var colours = ["#0b57d0", "#b3261e"];
  function setStatus(state, text) {
    if (status.getAttribute("data-state") === state) { return; }
    status.setAttribute("data-state", state);
    status.textContent = text;
  }
  function width(el) { return Math.max(280, Math.min(900, el.clientWidth || 600)); }
  function draw(c) {
    var fig = document.getElementById("chart-" + c.id);
    if (!fig) { return; }
    var box = fig.querySelector(".plot");
    var data = [c.t].concat(c.y);
    var points = 0;
    c.y.forEach(function (ys) { ys.forEach(function (v) { if (v !== null) { points++; } }); });
    fig.setAttribute("data-points", String(points));
    fig.setAttribute("data-last", points ? String(c.y[0][c.y[0].length - 1]) : "");
    var empty = fig.querySelector(".chart-empty");
    if (empty) { empty.hidden = points > 0; }
    if (plots[c.id]) { plots[c.id].setData(data); return; }
    var series = [{}].concat(c.names.map(function (n, i) {
      return { label: n + " (" + c.unit + ")", stroke: colours[i % colours.length], width: 2, spanGaps: false, points: { show: true, size: 4 } };
    }));
    plots[c.id] = new window.uPlot({ width: width(box), height: 180, series: series, scales: { x: { time: true, range: function () { return [span.from, span.to]; } } },
      axes: [{}, { label: c.unit }] }, data, box);
  }
  function load(background) {
    var h = background ? { "X-Vigil-Background": "1" } : {};
    return fetch("/patients/" + encodeURIComponent(patient) + "/series?range=" + encodeURIComponent(range),
      { credentials: "same-origin", headers: h })
      .then(function (r) { return r.ok ? r.json() : Promise.reject(r.status); })
      .then(function (s) {
        span.from = s.from; span.to = s.to;
        s.charts.forEach(draw);
        draw(s.news2);
        root.setAttribute("data-loaded", String(Date.now()));
      });
  }
  // A burst of events makes one re-read, and re-reads are at least 2 s apart (a monitor
  // uploading every second does not make a query and an audited read every second).
  var timer = 0, last = 0;
  function schedule() {
    if (timer) { return; }
    var wait = Math.max(300, last + 2000 - Date.now());
    timer = setTimeout(function () { timer = 0; last = Date.now(); load(true); }, wait);
  }
  load(false).catch(function () { root.setAttribute("data-error", "load"); });
  if (!window.EventSource) { return; }
  var types = ["observations", "alarm.opened", "alarm.resolved", "alarm.severity_escalated", "alarm.worsened"];
  var url = root.getAttribute("data-stream") + "?patient_id=" + encodeURIComponent(patient) +
    types.map(function (t) { return "&type=" + encodeURIComponent(t); }).join("");
  var wasLost = false;
  var es = new EventSource(url);
  es.onopen = function () { setStatus("live", "Live updates on."); if (wasLost) { wasLost = false; schedule(); } };
  es.onerror = function () { wasLost = true; setStatus("paused", "Live updates paused — reconnecting…"); };
  // NEWS2 is scored just after the observations are stored: read again a little later.
  function onEvent(ev) { schedule(); if (ev.type === "observations") { setTimeout(schedule, 1500); } }
  es.onmessage = onEvent;
  types.forEach(function (t) { es.addEventListener(t, onEvent); });
  es.addEventListener("reset", schedule);
}());
