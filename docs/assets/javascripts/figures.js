/* The report's interactive figures (hand-written; resdeg/report/interactive.py describes each one).

   A page with such a figure holds, before the figure's PNG, a hidden
   <div class="resdeg-plot" data-plot="{description}"><a href="../downloads/<study>/<csv>.js"></a></div>
   (a link, so that MkDocs checks it and makes it relative to the built page). This script
   loads plotly.js from the site itself (assets/vendor/plotly/, put there by the site's hook from
   the `plotly` Python package) and the figure's CSV from downloads/ (as <csv>.js, a script: a page
   opened from disk may run scripts but not read files), then draws the chart from the CSV's rows
   into the figure, above its caption: hover shows a point's exact value with its run, legend
   entries hide series, dragging zooms (double-click resets). The PNG is hidden on screen only once
   the chart is drawn, so print and a browser without JavaScript keep it. Every URL is relative to
   this script or the page: the site works from file:// and under any sub-path. */
(function () {
  "use strict";
  var here = document.currentScript && document.currentScript.src;
  var loading = {};  // src -> Promise: each script once per page

  function load(src) {
    if (!loading[src]) {
      loading[src] = new Promise(function (resolve, reject) {
        var s = document.createElement("script");
        s.src = src;
        s.onload = resolve;
        s.onerror = function () { reject(new Error("resdeg: cannot load " + src)); };
        document.head.appendChild(s);
      });
    }
    return loading[src];
  }

  /* RFC 4180 CSV (Python's csv module): quoted fields may hold commas, quotes and newlines. */
  function parseCsv(text) {
    var rows = [], row = [], field = "", quoted = false, i, c;
    for (i = 0; i < text.length; i++) {
      c = text[i];
      if (quoted) {
        if (c === '"' && text[i + 1] === '"') { field += '"'; i++; }
        else if (c === '"') { quoted = false; }
        else { field += c; }
      } else if (c === '"') { quoted = true; }
      else if (c === ",") { row.push(field); field = ""; }
      else if (c === "\n" || c === "\r") {
        if (c === "\r" && text[i + 1] === "\n") { i++; }
        row.push(field); rows.push(row); row = []; field = "";
      } else { field += c; }
    }
    if (field !== "" || row.length) { row.push(field); rows.push(row); }
    var header = rows.shift() || [];
    return rows.map(function (r) {
      var o = {};
      header.forEach(function (h, j) { o[h] = r[j] === undefined ? "" : r[j]; });
      return o;
    });
  }

  function matches(row, where) {
    return Object.keys(where || {}).every(function (k) {
      var want = where[k];
      return Array.isArray(want) ? want.map(String).indexOf(row[k]) >= 0 : row[k] === String(want);
    });
  }

  function number(v) {  // a plotted value as people read it: up to 6 significant digits
    return String(Number(v.toPrecision(6)));
  }

  function key(row, columns) {
    return columns.map(function (c) { return row[c]; }).join("|");
  }

  function fill(template, row) {
    return template.replace(/\{(\w+)\}/g, function (_, c) { return row[c] === undefined ? "" : row[c]; });
  }

  /* The hover text of one point: its run (and epoch, stage, ...), x, and y exactly as the CSV holds it. */
  function hoverText(spec, panel, row, y) {
    var names = spec.columns, lines = spec.hover.map(function (c) { return (names[c] || c) + ": " + row[c]; });
    if (spec.hover.indexOf(panel.x) < 0) { lines.push((panel.xlabel || names[panel.x] || panel.x) + ": " + row[panel.x]); }
    var label = panel.ylabel || names[panel.y] || panel.y;
    var exact = panel.scale === 1 && panel.offset === 0;  // else the plotted value, then the CSV's
    lines.push("<b>" + label + "</b>: " + (exact ? row[panel.y] : number(y) + " (" + panel.y + " = " + row[panel.y] + ")"));
    return lines.join("<br>");
  }

  function axisNames(i) {
    var n = i === 0 ? "" : String(i + 1);
    return {x: "x" + n, y: "y" + n, xaxis: "xaxis" + n, yaxis: "yaxis" + n};
  }

  function traces(spec, rows) {
    var out = [], shown = {};
    spec.panels.forEach(function (panel, i) {
      var ax = axisNames(i), series = {}, order = [], xs = [];
      rows.filter(function (r) { return matches(r, panel.where); }).forEach(function (row) {
        var k = key(row, spec.series);
        if (!series[k]) { series[k] = []; order.push(k); }
        series[k].push(row);
      });
      order.forEach(function (k) {
        var first = series[k][0], style = spec.styles[key(first, spec.style_by)] || {};
        var t = {type: "scatter", mode: spec.mode, x: [], y: [], customdata: [], name: fill(spec.name, first),
                 legendgroup: k, showlegend: !shown[k], xaxis: ax.x, yaxis: ax.y,
                 hovertemplate: "%{customdata}<extra></extra>",
                 line: {color: style.color, dash: style.dash || "solid", width: 1.6},
                 marker: {color: style.color, symbol: style.symbol || "circle", size: 6}};
        shown[k] = true;
        series[k].forEach(function (row) {
          var raw = row[panel.y];
          var x = panel.category ? row[panel.x] : Object.prototype.hasOwnProperty.call(spec.xmap, row[panel.x])
            ? spec.xmap[row[panel.x]] : Number(row[panel.x]);  // xmap: e.g. a model's depth
          var y = raw === "" ? null : panel.offset + panel.scale * Number(raw);
          t.x.push(x);
          t.y.push(y);
          t.customdata.push(y === null ? "" : hoverText(spec, panel, row, y));
          xs.push(x);
        });
        out.push(t);
      });
      spec.hlines.forEach(function (line, j) {  // chance, thresholds: across the panel's x range
        var ends = panel.category ? [xs[0], xs[xs.length - 1]]
          : [Math.min.apply(null, xs), Math.max.apply(null, xs)];
        out.push({type: "scatter", mode: "lines", x: ends, y: [line.y, line.y], name: line.label, legendgroup: "line" + j,
                  showlegend: !shown["line" + j], xaxis: ax.x, yaxis: ax.y, hovertemplate: line.label + "<extra></extra>",
                  line: {color: "#555555", dash: "dot", width: 1}});
        shown["line" + j] = true;
      });
    });
    return out;
  }

  /* A long title on several lines (at spaces; Chinese titles are short enough). */
  function wrap(text, width) {
    var lines = [""];
    text.split(" ").forEach(function (word) {
      var last = lines.length - 1;
      if (lines[last] && (lines[last] + " " + word).length > width) { lines.push(word); }
      else { lines[last] = lines[last] ? lines[last] + " " + word : word; }
    });
    return lines.join("<br>");
  }

  function niceStep(v) {  // 1, 2, 5, 10, 20, 50, ... at least v
    var p = Math.pow(10, Math.floor(Math.log10(v))), m = v / p;
    return (m <= 1 ? 1 : m <= 2 ? 2 : m <= 5 ? 5 : 10) * p;
  }

  function layout(spec, rows) {
    // panels of ROW px, GAP px apart (room for the x axis of one row and the title of the next)
    var ROW = 260, GAP = 130, n = spec.panels.length, cols = Math.min(spec.cols, n), nrows = Math.ceil(n / cols);
    var plotHeight = ROW * nrows + GAP * (nrows - 1), gapX = 0.1, w = (1 - gapX * (cols - 1)) / cols;
    var h = ROW / plotHeight, gapY = GAP / plotHeight;
    var out = {height: plotHeight + 60 + 130, margin: {t: 60, r: 10, b: 130, l: 60}, hovermode: "closest",
               font: {family: getComputedStyle(document.body).fontFamily, size: 12},
               paper_bgcolor: "rgba(0,0,0,0)", plot_bgcolor: "rgba(0,0,0,0)", annotations: [],
               legend: {orientation: "h", x: 0, xanchor: "left", y: -80 / plotHeight, yanchor: "top",
                        font: {size: 11}}};
    spec.panels.forEach(function (panel, i) {
      var ax = axisNames(i), col = i % cols, row = Math.floor(i / cols);
      var x0 = col * (w + gapX), y1 = 1 - row * (h + gapY);
      var xaxis = {domain: [x0, x0 + w], anchor: ax.y, title: {text: panel.xlabel}, automargin: true,
                   type: panel.category ? "category" : "linear", gridcolor: "#e5e5e5", zeroline: false};
      if (Object.keys(spec.xmap).length) {  // e.g. a model's depth: ticks at the depths
        xaxis.tickvals = Object.keys(spec.xmap).map(function (m) { return spec.xmap[m]; });
      } else if (panel.integer) {  // epochs: ticks at whole numbers, about six of them
        var last = Math.max.apply(null, rows.map(function (r) { return Number(r[panel.x]) || 0; }));
        xaxis.dtick = niceStep(Math.max(1, last / 6));
        xaxis.tick0 = 0;
      }
      out[ax.xaxis] = xaxis;
      out[ax.yaxis] = {domain: [y1 - h, y1], anchor: ax.x, title: {text: panel.ylabel}, automargin: true,
                       type: panel.log ? "log" : "linear", exponentformat: "e", gridcolor: "#e5e5e5", zeroline: false};
      out.annotations.push({text: wrap(panel.title, Math.round(90 / cols)), x: x0 + w / 2, y: y1, xref: "paper", yref: "paper", xanchor: "center",
                            yanchor: "bottom", showarrow: false, font: {size: 12}});
    });
    return out;
  }

  function staticLink(figure) {  // the PNG, one click away
    var img = figure.querySelector("img"), caption = figure.querySelector("figcaption");
    if (!img || !caption) { return; }
    var a = document.createElement("a");
    a.href = img.currentSrc || img.src;
    a.className = "resdeg-static-link";
    var zh = /^zh/.test(document.documentElement.lang);
    a.textContent = zh ? "静态图（PNG）" : "static image (PNG)";
    caption.appendChild(document.createTextNode(zh ? " 交互图逐次训练画出 CSV 中的每一行；上面的说明针对" : " The interactive chart draws every run, row by row "
                                                + "from the CSV; the text above describes the "));
    caption.appendChild(a);
    caption.appendChild(document.createTextNode(zh ? "。" : "."));
  }

  function draw(el) {
    var spec = JSON.parse(el.getAttribute("data-plot"));
    return load(el.querySelector("a").href).then(function () {
      var rows = parseCsv(window.resdegData[spec.data]).filter(function (r) { return matches(r, spec.where); });
      var figure = el.nextElementSibling && el.nextElementSibling.tagName === "FIGURE" ? el.nextElementSibling : el;
      var area = document.createElement("div");
      area.className = "resdeg-plot-area";
      figure.insertBefore(area, figure.firstChild);
      return window.Plotly.newPlot(area, traces(spec, rows), layout(spec, rows),
                                   {responsive: true, displaylogo: false}).then(function () {
        figure.classList.add("resdeg-interactive");
        staticLink(figure);
        el.setAttribute("data-state", "drawn");
      });
    });
  }

  function start() {
    var plots = Array.prototype.slice.call(document.querySelectorAll(".resdeg-plot[data-plot]"));
    if (!plots.length || !here) { return; }
    load(new URL("../vendor/plotly/plotly.min.js", here).href).then(function () {
      return Promise.all(plots.map(function (el) {
        return draw(el).catch(function (e) { el.setAttribute("data-state", "failed"); console.warn(e); });
      }));
    }, function (e) { console.warn(e); });  // no plotly.js: the PNGs stay
  }

  if (document.readyState === "loading") { document.addEventListener("DOMContentLoaded", start); } else { start(); }
})();
