// Search when the site is opened from disk (file://). Material for MkDocs runs its search in a Web
// Worker, and browsers refuse to start a worker from a file:// page. Material's `offline` plugin
// would load a shim (iframe-worker) from a CDN; this is the site's own, loaded in <head> by
// resdeg/report/mkdocs_hooks.py, so the site needs no network. It runs the worker's script in a
// hidden iframe instead. Served over http(s) it does nothing.
//
// The contract with Material's search worker: `window.IFrameWorker` exists in the parent (the worker
// then finds its lunr files next to the first <script src> of its frame), the worker's
// `postMessage` reaches the page, and `importScripts` returns a promise that the worker awaits.
(function () {
  "use strict";
  if (location.protocol !== "file:") return;

  // Runs inside the frame, before the worker's script.
  function runtime() {
    self.postMessage = function (data) { parent.postMessage(data, "*"); };
    self.importScripts = function () {
      return Array.prototype.reduce.call(arguments, function (done, url) {
        return done.then(function () {
          return new Promise(function (resolve, reject) {
            var script = document.createElement("script");
            script.src = url;
            script.onload = function () { resolve(); };
            script.onerror = function () { reject(new Error("cannot load " + url)); };
            document.body.appendChild(script);
          });
        });
      }, Promise.resolve());
    };
  }

  class FileWorker extends EventTarget {
    constructor(url) {
      super();
      this.onmessage = null;
      this.onerror = null;
      var src = new URL(String(url), document.baseURI).href;
      var frame = document.createElement("iframe");
      frame.hidden = true;
      document.body.appendChild(frame);
      this.frame = frame;
      var win = frame.contentWindow;
      var worker = this;
      this.relay = function (event) {
        if (event.source !== win) return;
        var message = new MessageEvent("message", { data: event.data });
        worker.dispatchEvent(message);
        if (typeof worker.onmessage === "function") worker.onmessage(message);
      };
      window.addEventListener("message", this.relay);
      win.document.open();  // erases listeners on the frame's window: add them after
      win.document.write("<!doctype html><html><body><script>(" + runtime + ")()<\/script>" +
                         '<script src="' + src.replace(/"/g, "&quot;") + '"><\/script></body></html>');
      win.document.close();
      win.addEventListener("error", function (event) {
        var error = new ErrorEvent("error", { message: event.message, filename: src, error: event.error });
        worker.dispatchEvent(error);
        if (typeof worker.onerror === "function") worker.onerror(error);
      });
      // messages wait until the worker's script has run
      this.ready = new Promise(function (resolve) {
        if (win.document.readyState === "complete") resolve();
        else win.addEventListener("load", function () { resolve(); }, { once: true });
      });
    }

    postMessage(data) {
      var frame = this.frame;
      this.ready.then(function () {
        if (frame.contentWindow) frame.contentWindow.dispatchEvent(new MessageEvent("message", { data: data }));
      });
    }

    terminate() {
      window.removeEventListener("message", this.relay);
      this.frame.remove();
    }
  }

  window.IFrameWorker = FileWorker;
  window.Worker = FileWorker;
})();
