// ipywidgets' HTML manager typesets widget labels through MathJax 2's API (MathJax.Hub.Queue), but
// the book loads MathJax 3: route those calls to MathJax 3's typesetPromise once it has started.
(function () {
  var mathjax = window.MathJax;
  if (!mathjax || mathjax.Hub) return;
  mathjax.Hub = {
    Queue: function (job) {
      var element = job && job[2];
      var started = (mathjax.startup && mathjax.startup.promise) || Promise.resolve();
      started.then(function () {
        return mathjax.typesetPromise ? mathjax.typesetPromise(element ? [element] : undefined) : null;
      }).catch(function (error) { console.warn("MathJax could not typeset a widget label", error); });
    }
  };
})();
