// MathJax settings for pymdownx.arithmatex (generic mode). MathJax itself is served from the
// site (assets/vendor/mathjax/tex-svg.js, added by resdeg/report/mkdocs_hooks.py): no CDN.
window.MathJax = {
  tex: { inlineMath: [["\\(", "\\)"]], displayMath: [["\\[", "\\]"]], processEscapes: true, processEnvironments: true },
  options: { ignoreHtmlClass: ".*|", processHtmlClass: "arithmatex", enableMenu: false },
  svg: { fontCache: "global" },
};

