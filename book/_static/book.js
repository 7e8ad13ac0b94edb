/* The book's own script, served by the site (no request to another host).
 *
 * 1. Navigation. sphinx-book-theme 1.3 shows its sidebar and contents toggles in the article
 *    header, but pydata-sphinx-theme 0.17 binds its click handlers to the first
 *    `.primary-toggle` / `.secondary-toggle` in the page: the buttons of the (hidden) top bar.
 *    A click on the visible buttons is handed on to those, so each theme does what it meant:
 *    on a wide screen the primary sidebar folds away and comes back; on a narrow one the
 *    sidebar (or the page's contents) opens as a dialog.
 *
 * 2. Precomputed views. On the website no Python runs behind a page, so an interactive view
 *    is built at build time as a set of views, one per combination of control values:
 *
 *      <div data-tb-interactive>
 *        <select data-tb-control="n"> ... </select>          (or <input type="range"
 *        <div data-tb-view="n=3"> ... </div>                    data-tb-values='[...]'>)
 *        <div data-tb-view="n=4" hidden> ... </div>
 *      </div>
 *
 *    Moving a control shows the view whose key is "name=value&name=value" (controls in page
 *    order). Any page can use it; the browser check moves every control it finds.
 */
(function () {
  "use strict";

  function ready(fn) {
    if (document.readyState !== "loading") fn();
    else document.addEventListener("DOMContentLoaded", fn);
  }

  // ---- 1. navigation -------------------------------------------------------------------
  function forwardToggle(kind) {
    var target = document.querySelector("#pst-header ." + kind);
    document.querySelectorAll(".bd-header-article ." + kind).forEach(function (button) {
      if (!target || button === target) return;
      button.addEventListener("click", function (event) {
        event.preventDefault();
        event.stopPropagation();
        target.click();
      });
    });
  }

  // ---- 2. precomputed views ------------------------------------------------------------
  function controlValue(control) {
    if (control.type === "range" && control.dataset.tbValues) {
      var values = JSON.parse(control.dataset.tbValues);
      return String(values[Number(control.value)]);
    }
    return control.value;
  }

  function update(box) {
    var controls = box.querySelectorAll("[data-tb-control]");
    var key = Array.prototype.map.call(controls, function (c) {
      return c.dataset.tbControl + "=" + controlValue(c);
    }).join("&");
    controls.forEach(function (c) {
      var shown = box.querySelector('[data-tb-readout="' + c.dataset.tbControl + '"]');
      if (shown) shown.textContent = controlValue(c);
    });
    var found = false;
    box.querySelectorAll("[data-tb-view]").forEach(function (view) {
      var match = view.dataset.tbView === key;
      view.hidden = !match;
      found = found || match;
    });
    var missing = box.querySelector("[data-tb-missing]");
    if (missing) missing.hidden = found;
  }

  function initViews() {
    document.querySelectorAll("[data-tb-interactive]").forEach(function (box) {
      box.querySelectorAll("[data-tb-control]").forEach(function (control) {
        control.addEventListener("input", function () { update(box); });
        control.addEventListener("change", function () { update(box); });
      });
      update(box);
    });
  }

  ready(function () {
    forwardToggle("primary-toggle");
    forwardToggle("secondary-toggle");
    initViews();
  });
})();
