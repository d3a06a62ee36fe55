// Agent Fleet Manager console: live updates without inline script (the CSP allows only this file).
// An element with data-fragment is refreshed every 5 s from that URL (plus this page's query string):
// the server renders the HTML, escaped; a lost session sends the browser back to the sign-in page.
(function () {
  "use strict";
  var PERIOD_MS = 5000;

  function refresh(target) {
    var url = target.getAttribute("data-fragment") + window.location.search;
    fetch(url, { credentials: "same-origin", headers: { Accept: "text/html" } })
      .then(function (response) {
        if (response.redirected || response.status === 401) {
          window.location.assign("/sign-in");
          return null;
        }
        return response.ok ? response.text() : null;
      })
      .then(function (html) {
        if (html !== null) {
          target.innerHTML = html;
        }
      })
      .catch(function () {
        /* offline for a moment: the next tick tries again */
      });
  }

  function start() {
    var targets = document.querySelectorAll("[data-fragment]");
    targets.forEach(function (target) {
      window.setInterval(function () {
        if (!document.hidden) {
          refresh(target);
        }
      }, PERIOD_MS);
    });
  }

  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", start);
  } else {
    start();
  }
})();
