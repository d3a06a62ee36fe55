// Agent Fleet Manager console: live updates without inline script (the CSP allows only this file).
// An element with data-fragment is refreshed from that URL (plus this page's query string) 5 s after the
// previous refresh finished, never two at once, and not while the tab is hidden (each refresh costs
// Firestore reads: see docs/console.md). The server renders the HTML, escaped; a lost session sends the
// browser back to the sign-in page. The element's data-refreshed attribute counts the refreshes done.
(function () {
  "use strict";
  var PERIOD_MS = 5000;
  var TIMEOUT_MS = 10000;

  function refresh(target) {
    var url = target.getAttribute("data-fragment") + window.location.search;
    var controller = new AbortController();
    var timer = window.setTimeout(function () {
      controller.abort();
    }, TIMEOUT_MS);
    return fetch(url, { credentials: "same-origin", headers: { Accept: "text/html" }, signal: controller.signal })
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
          var done = parseInt(target.getAttribute("data-refreshed") || "0", 10) + 1;
          target.setAttribute("data-refreshed", String(done));
        }
      })
      .catch(function () {
        /* offline or too slow for a moment: the next round tries again */
      })
      .finally(function () {
        window.clearTimeout(timer);
      });
  }

  function loop(target) {
    window.setTimeout(function () {
      if (document.hidden) {
        loop(target);
        return;
      }
      refresh(target).then(function () {
        loop(target);
      });
    }, PERIOD_MS);
  }

  function start() {
    document.querySelectorAll("[data-fragment]").forEach(loop);
  }

  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", start);
  } else {
    start();
  }
})();
