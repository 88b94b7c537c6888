// Render the LaTeX that pymdownx.arithmatex leaves in the page (\( \) inline, \[ \] displayed)
// with the KaTeX shipped in assets/katex; again after every instant navigation.
document$.subscribe(function () {
  document.querySelectorAll(".arithmatex").forEach(function (element) {
    renderMathInElement(element, {
      delimiters: [
        { left: "\\[", right: "\\]", display: true },
        { left: "\\(", right: "\\)", display: false },
      ],
      throwOnError: false,
    });
  });
});
