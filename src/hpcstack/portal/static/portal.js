// The U2CB page's behaviour: live states, the definition checker, the build log and the
// terminal. Plain script, no framework; the page works from the keyboard alone.
"use strict";
(function () {
  const main = document.getElementById("main");
  const BASE = main.dataset.base;
  const $ = (id) => document.getElementById(id);

  async function call(path, options) {
    const resp = await fetch(BASE + path, options);
    let body = {};
    try { body = await resp.json(); } catch (e) { body = {detail: resp.status + " " + resp.statusText}; }
    return {ok: resp.ok, status: resp.status, body};
  }
  const postJSON = (path, data) => call(path, {method: "POST",
    headers: {"Content-Type": "application/json"}, body: JSON.stringify(data)});
  function wsURL(path) {
    return (location.protocol === "https:" ? "wss://" : "ws://") + location.host + BASE + path;
  }
  const STATES = {queued: "Queued: waiting for a free builder", running: "Running: building now",
    ready: "Ready", failed: "Failed", cancelled: "Cancelled", interrupted: "Interrupted"};
  function stateText(c) {
    let text = STATES[c.state] || c.state;
    if (c.reason && ["failed", "interrupted", "cancelled"].includes(c.state)) text += ": " + c.reason;
    return text;
  }
  function human(n) {
    if (n === null || n === undefined) return "-";
    const units = ["B", "KiB", "MiB", "GiB"];
    let i = 0;
    while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
    return i === 0 ? n + " B" : n.toFixed(1) + " " + units[i];
  }

  // --- the list: states update by themselves ------------------------------------------
  function listPage() {
    const table = $("containers");
    async function refresh() {
      const r = await call("/api/containers");
      if (!r.ok) return;
      const rows = table ? [...table.querySelectorAll("tbody tr")] : [];
      const names = rows.map((tr) => tr.dataset.name).sort().join("\n");
      if (r.body.containers.map((c) => c.name).sort().join("\n") !== names) {
        location.reload();
        return;
      }
      for (const c of r.body.containers) {
        const tr = rows.find((row) => row.dataset.name === c.name);
        const span = tr.querySelector(".state");
        if (span.dataset.state !== c.state || span.textContent !== stateText(c)) {
          span.dataset.state = c.state;
          span.className = "state state-" + c.state;
          span.textContent = stateText(c);
        }
        tr.querySelector(".size-cell").textContent = human(c.size);
      }
    }
    setInterval(refresh, 2000);
  }

  // --- a new build: compose, check as you type, build ---------------------------------
  function newPage() {
    const editor = $("definition"), listing = $("listing"), summary = $("check-summary");
    let filename = main.dataset.filename, timer = null, generation = 0;
    const maxUpload = Number(main.dataset.maxUpload || 0);

    function mode() { return document.querySelector("input[name=mode]:checked").value; }
    function showMode() {
      const m = mode();
      $("package-fields").hidden = m !== "compose";
      $("base-fields").hidden = m === "upload";
      $("upload-fields").hidden = m !== "upload";
      $("definition-section").hidden = m === "sandbox";
      if (m !== "upload") filename = main.dataset.filename;
    }
    document.querySelectorAll("input[name=mode]").forEach((r) => r.addEventListener("change", showMode));
    function base() { return $("base").value || $("docker-ref").value.trim(); }
    function showDockerRef() { $("docker-ref-field").hidden = $("base").value !== ""; }
    $("base").addEventListener("change", showDockerRef);
    showDockerRef();

    function fieldErrors(problems) {
      document.querySelectorAll(".field-error").forEach((e) => { e.textContent = ""; });
      document.querySelectorAll("[aria-invalid]").forEach((e) => e.removeAttribute("aria-invalid"));
      for (const p of problems) {
        const slot = $(p.field + "-error");
        if (!slot) continue;
        slot.textContent = slot.textContent ? slot.textContent + " " + p.message : p.message;
        const input = p.field === "base" ? ($("base").value ? $("base") : $("docker-ref")) : $(p.field);
        if (input) input.setAttribute("aria-invalid", "true");
      }
    }

    function renderListing(text, problems) {
      listing.replaceChildren();
      const byLine = {};
      for (const p of problems) if (p.line) (byLine[p.line] = byLine[p.line] || []).push(p.message);
      text.split("\n").forEach((line, i) => {
        const li = document.createElement("li");
        const code = document.createElement("code");
        code.textContent = line || " ";
        li.append(code);
        for (const message of byLine[i + 1] || []) {
          li.classList.add("bad");
          const note = document.createElement("span");
          note.className = "problem";
          note.textContent = message;
          li.append(note);
        }
        listing.append(li);
      });
      const count = problems.length;
      summary.className = count ? "error" : "ok";
      summary.textContent = count ? count + (count === 1 ? " problem: " : " problems: ")
        + problems.map((p) => p.message).join("; ") : (text.trim() ? "No problems found." : "");
    }

    async function checkNow() {
      const mine = ++generation, text = editor.value;
      const r = await postJSON("/api/check", {text, filename});
      if (mine !== generation || !r.ok) return;
      renderListing(text, r.body.problems);
    }
    editor.addEventListener("input", () => { clearTimeout(timer); timer = setTimeout(checkNow, 250); });

    $("compose").addEventListener("click", async () => {
      const r = await postJSON("/api/compose", {base: base(), debs: $("debs").value,
        pips: $("pips").value, post: $("post").value});
      if (!r.ok) { fieldErrors([{field: "base", message: r.body.detail || "cannot compose"}]); return; }
      const formProblems = r.body.problems.filter((p) => p.field !== "definition");
      fieldErrors(formProblems);
      if (formProblems.length) return;
      editor.value = r.body.text;
      renderListing(r.body.text, r.body.problems);
    });

    $("deffile").addEventListener("change", async () => {
      const file = $("deffile").files[0];
      if (!file) return;
      filename = file.name;
      editor.value = await file.text();
      checkNow();
    });

    $("build-form").addEventListener("submit", async (event) => {
      event.preventDefault();
      const out = $("build-error");
      out.textContent = "";
      fieldErrors([]);
      const m = mode(), data = new FormData();
      data.append("name", $("name").value.trim());
      data.append("mode", m === "sandbox" ? "sandbox" : "definition");
      if (m === "sandbox") {
        data.append("base", base());
      } else {
        data.append("definition", editor.value);
        data.append("filename", filename);
        if (m === "upload") {
          let total = 0;
          for (const f of $("files").files) { data.append("files", f, f.name); total += f.size; }
          if (maxUpload && total > maxUpload) {
            fieldErrors([{field: "files", message: "files: " + total + " bytes, over the limit of " + maxUpload}]);
            out.textContent = "The files are over the upload limit; nothing was sent.";
            return;
          }
        }
      }
      $("build").disabled = true;
      out.textContent = "";
      try {
        const r = await call("/api/build", {method: "POST", body: data});
        if (r.ok) { location.assign(r.body.url); return; }
        out.textContent = r.body.detail || "the build did not start";
        if (r.body.problems) {
          fieldErrors(r.body.problems);
          const lined = r.body.problems.filter((p) => p.field === "definition");
          if (lined.length) renderListing(editor.value, lined);
        }
      } finally {
        $("build").disabled = false;
      }
    });
    showMode();
  }

  // --- one container: its log, live, and its terminal ---------------------------------
  function containerPage() {
    const name = main.dataset.name, log = $("log"), status = $("log-status");
    const path = "/c/" + encodeURIComponent(name);
    let seen = 0, done = false, retry = 0;
    const live = {socket: null, connects: 0};
    window.u2cbLog = live;

    function follow() {
      const ws = new WebSocket(wsURL(path + "/log/ws?skip=" + seen));
      live.socket = ws;
      live.connects += 1;
      ws.onopen = () => { retry = 0; if (!done) status.textContent = "Following the log."; };
      ws.onmessage = (event) => {
        const msg = JSON.parse(event.data);
        if (msg.text !== undefined) {
          const atEnd = log.scrollTop + log.clientHeight >= log.scrollHeight - 4;
          log.append(msg.text);
          seen = msg.seen;
          if (atEnd) log.scrollTop = log.scrollHeight;
        } else if (msg.done) {
          done = true;
          const text = stateText(msg);
          status.textContent = "The build has ended: " + text + ".";
          if (msg.state !== main.dataset.state) setTimeout(() => location.reload(), 800);
        } else if (msg.error) {
          done = true;
          status.textContent = msg.error;
          status.className = "error";
        }
      };
      ws.onclose = () => {
        if (done) return;
        retry = Math.min(retry + 1, 5);
        status.textContent = "The connection was lost; reconnecting…";
        setTimeout(follow, 500 * retry);
      };
    }
    follow();

    const open = $("term-open");
    if (!open) return;
    const close = $("term-close"), termStatus = $("term-status"), box = $("terminal");
    let session = null;
    open.addEventListener("click", () => {
      if (session) return;
      box.hidden = false;
      const term = new Terminal({fontSize: 15, cursorBlink: true, screenReaderMode: false,
        scrollback: 2000});
      const fit = new FitAddon.FitAddon();
      term.loadAddon(fit);
      term.open(box);
      fit.fit();
      const ws = new WebSocket(wsURL(path + "/connect/ws?rows=" + term.rows + "&cols=" + term.cols));
      ws.binaryType = "arraybuffer";
      session = {term, ws};
      window.u2cbTerminal = session;
      const encoder = new TextEncoder();
      ws.onopen = () => { termStatus.textContent = "Connected: a root shell in " + name + "."; term.focus(); };
      ws.onmessage = (event) => {
        if (typeof event.data !== "string") { term.write(new Uint8Array(event.data)); return; }
        const msg = JSON.parse(event.data);
        if (msg.exit !== undefined) termStatus.textContent = "The session ended with exit status " + msg.exit + ".";
        if (msg.error) { termStatus.textContent = msg.error; termStatus.className = "error"; }
      };
      ws.onclose = () => {
        if (!/ended|error/.test(termStatus.textContent) && termStatus.className !== "error") {
          termStatus.textContent = "The session was disconnected.";
        }
        open.hidden = false;
        close.hidden = true;
        session = null;
        term.options.disableStdin = true;
        open.focus();
      };
      term.onData((data) => { if (ws.readyState === 1) ws.send(encoder.encode(data)); });
      term.onResize(({rows, cols}) => {
        if (ws.readyState === 1) ws.send(JSON.stringify({resize: [rows, cols]}));
      });
      term.attachCustomKeyEventHandler((e) => {
        if (e.key === "F6" && e.type === "keydown") { close.focus(); return false; }
        return true;
      });
      window.addEventListener("resize", () => fit.fit());
      open.hidden = true;
      close.hidden = false;
    });
    close.addEventListener("click", () => { if (session) session.ws.close(); });
  }

  const pages = {list: listPage, new: newPage, container: containerPage};
  if (pages[main.dataset.page]) pages[main.dataset.page]();
})();
