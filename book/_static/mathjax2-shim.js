// The ipywidgets embed manager typesets widget labels with MathJax 2's API
// (MathJax.Hub.Queue). The site runs MathJax 3, which has no Hub: without this shim every
// page with a widget throws "Cannot read properties of undefined (reading 'Queue')".
// We give whatever object is window.MathJax (the config first, then MathJax 3 itself once it
// replaces it) a hidden Hub whose Queue forwards to MathJax 3's typesetPromise.
(function () {
  function addHub(mj) {
    if (mj && typeof mj === "object" && !Object.prototype.hasOwnProperty.call(mj, "Hub")) {
      Object.defineProperty(mj, "Hub", {
        enumerable: false, // MathJax 3 merges its config by walking keys: stay out of it
        configurable: true,
        value: {
          Queue: function (command) {
            var element = Array.isArray(command) ? command[2] : undefined;
            if (typeof current.typesetPromise === "function") {
              current.typesetPromise(element ? [element] : undefined).catch(function () {});
            } // before MathJax 3 has started it typesets the whole page anyway
          },
        },
      });
    }
    return mj;
  }
  var current = addHub(window.MathJax);
  Object.defineProperty(window, "MathJax", {
    configurable: true,
    get: function () { return current; },
    set: function (value) { current = addHub(value); },
  });
})();
