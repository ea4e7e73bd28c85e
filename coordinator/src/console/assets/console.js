// Consortia console: keeps the page live by fetching its main part again every
// data-refresh-ms milliseconds (same origin, read-only GET). Nothing else.
(function () {
  "use strict";
  var ms = parseInt(document.body.getAttribute("data-refresh-ms"), 10) || 2000;
  var main = document.getElementById("main");
  var offline = document.getElementById("offline");
  var busy = false;
  function refresh() {
    if (busy || document.hidden) { return; }
    busy = true;
    fetch(location.pathname + "?part=main", { cache: "no-store", credentials: "same-origin" })
      .then(function (r) {
        if (!r.ok) { throw new Error("HTTP " + r.status); }
        return r.text();
      })
      .then(function (html) {
        main.innerHTML = html;
        offline.hidden = true;
      })
      .catch(function () { offline.hidden = false; })
      .then(function () { busy = false; });
  }
  setInterval(refresh, ms);
})();
