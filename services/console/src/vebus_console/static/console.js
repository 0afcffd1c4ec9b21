// vebus console: the little the pages need a script for. No library, no build step.
// - the live view: server-sent events, newest first, at most MAX_ROWS rows, drawn once
//   per animation frame; pause; the sampling notice; an event's detail and its routes
// - copy as JSON; select all; a replay's progress
"use strict";

(function () {
  const MAX_ROWS = 200;
  const csrf = document.body.dataset.csrf || "";

  function el(tag, text, cls) {
    const e = document.createElement(tag);
    if (text !== undefined && text !== null) e.textContent = String(text);
    if (cls) e.className = cls;
    return e;
  }

  async function copyText(text, button) {
    try {
      await navigator.clipboard.writeText(text);
    } catch (_) {
      const area = el("textarea");
      area.value = text;
      document.body.appendChild(area);
      area.select();
      document.execCommand("copy");
      area.remove();
    }
    if (button) {
      const label = button.textContent;
      button.textContent = "Copied";
      setTimeout(() => { button.textContent = label; }, 1200);
    }
  }

  // ------------------------------------------------------------------ live view

  function live(root) {
    const q = root.dataset.q || "";
    const tbody = document.getElementById("rows");
    const state = document.getElementById("state");
    const sampling = document.getElementById("sampling");
    const pauseButton = document.getElementById("pause");
    const detail = document.getElementById("detail");
    const docs = new WeakMap(); // row -> CloudEvent
    let incoming = []; // frames not drawn yet, oldest first
    let held = []; // frames that came while paused
    let heldDropped = 0;
    let paused = false;
    let scheduled = false;
    let selected = null;

    function draw() {
      scheduled = false;
      if (!incoming.length) return;
      const batch = incoming.slice(-MAX_ROWS);
      incoming = [];
      const frag = document.createDocumentFragment();
      for (let i = batch.length - 1; i >= 0; i--) frag.appendChild(row(batch[i]));
      tbody.insertBefore(frag, tbody.firstChild);
      while (tbody.rows.length > MAX_ROWS) tbody.deleteRow(tbody.rows.length - 1);
    }

    function schedule() {
      if (!scheduled) {
        scheduled = true;
        requestAnimationFrame(draw);
      }
    }

    function row(item) {
      const r = item.row;
      const tr = el("tr", null, "clickable fresh");
      tr.appendChild(el("td", (r.time || "").replace("T", " ").slice(0, 23), "time"));
      tr.appendChild(el("td", r.vcenter));
      tr.appendChild(el("td", r.kind));
      tr.appendChild(el("td", r.object));
      tr.appendChild(el("td", r.user));
      tr.appendChild(el("td", r.message, "msg"));
      tr.dataset.type = r.type;
      tr.dataset.id = r.id;
      docs.set(tr, item.event);
      return tr;
    }

    function show(tr) {
      const event = docs.get(tr);
      if (!event) return;
      if (selected) selected.classList.remove("selected");
      selected = tr;
      tr.classList.add("selected");
      detail.hidden = false;
      detail.parentElement.classList.add("with-detail");
      document.getElementById("detail-title").textContent = (event.subject || event.type) + " · " + event.id;
      const text = JSON.stringify(event, null, 2);
      document.getElementById("detail-json").textContent = text;
      detail.dataset.json = text;
      const list = document.getElementById("detail-routes");
      list.replaceChildren(el("li", "…"));
      fetch("/api/explain", {
        method: "POST",
        headers: { "Content-Type": "application/json", "X-CSRF-Token": csrf },
        body: text,
        credentials: "same-origin",
      })
        .then((r) => r.json())
        .then((doc) => {
          list.replaceChildren();
          if (doc.error) { list.appendChild(el("li", doc.error)); return; }
          if (!doc.routes.length) list.appendChild(el("li", "No route is running."));
          for (const route of doc.routes) {
            const li = el("li", null, route.matched ? "match" : "nomatch");
            li.appendChild(el("pre", route.lines.join("\n")));
            list.appendChild(li);
          }
        })
        .catch((e) => list.replaceChildren(el("li", "could not ask the console: " + e)));
    }

    tbody.addEventListener("click", (e) => {
      const tr = e.target.closest("tr");
      if (tr) show(tr);
    });
    document.getElementById("close").addEventListener("click", () => {
      detail.hidden = true;
      detail.parentElement.classList.remove("with-detail");
      if (selected) selected.classList.remove("selected");
    });
    document.getElementById("copy").addEventListener("click", (e) => {
      copyText(detail.dataset.json || "", e.target);
    });
    pauseButton.addEventListener("click", () => {
      paused = !paused;
      pauseButton.textContent = paused ? "Resume" : "Pause";
      if (!paused) {
        incoming = incoming.concat(held);
        held = [];
        heldDropped = 0;
        schedule();
        state.textContent = "live";
      } else {
        state.textContent = "paused";
      }
    });

    const source = new EventSource("/live/stream" + (q ? "?q=" + encodeURIComponent(q) : ""));
    source.onopen = () => { state.textContent = paused ? "paused" : "live"; };
    source.onerror = () => { state.textContent = "reconnecting…"; };
    source.addEventListener("ev", (e) => {
      const item = JSON.parse(e.data);
      if (paused) {
        held.push(item);
        if (held.length > MAX_ROWS) { held.shift(); heldDropped++; }
        state.textContent = "paused: " + (held.length + heldDropped) + " new";
        return;
      }
      incoming.push(item);
      if (incoming.length > MAX_ROWS) incoming.shift();
      schedule();
    });
    source.addEventListener("stats", (e) => {
      const s = JSON.parse(e.data);
      root.dataset.received = s.received;
      if (s.skipped > 0) {
        sampling.hidden = false;
        sampling.textContent = "Sampling: " + s.matched + " matching events/s arrive, this page is sent at most " +
          s.rate + "/s; " + s.skipped + " skipped in the last second (the history has them all).";
      } else {
        sampling.hidden = true;
      }
    });
    window.addEventListener("pagehide", () => source.close());
  }

  // ------------------------------------------------------------------ replay progress

  function replay(root) {
    const id = root.dataset.job;
    const set = (name, value) => { document.getElementById(name).textContent = value; };
    async function poll() {
      const r = await fetch("/api/replays/" + id, { credentials: "same-origin" });
      if (r.ok) {
        const job = await r.json();
        const done = job.replayed + job.gone + job.failed;
        set("job-state", job.state);
        set("job-done", done);
        set("job-total", job.total);
        set("job-replayed", job.replayed);
        set("job-failed", job.failed);
        set("job-gone", job.gone);
        const bar = document.getElementById("job-progress");
        bar.max = job.total || 1;
        bar.value = job.total ? done : 1;
        const errors = document.getElementById("job-errors");
        errors.replaceChildren(...(job.errors || []).map((t) => el("li", t)));
        if (job.state !== "running") return;
      }
      setTimeout(poll, 1000);
    }
    setTimeout(poll, 500);
  }

  document.addEventListener("DOMContentLoaded", () => {
    const liveRoot = document.getElementById("live");
    if (liveRoot) live(liveRoot);
    const job = document.getElementById("replay-job");
    if (job) replay(job);
    for (const b of document.querySelectorAll("button.copy")) {
      b.addEventListener("click", () => {
        const source = document.querySelector(b.dataset.copy);
        copyText(source ? source.textContent : "", b);
      });
    }
    const all = document.getElementById("select-all");
    if (all) {
      all.addEventListener("change", () => {
        for (const box of document.querySelectorAll('input[name="id"]')) box.checked = all.checked;
      });
    }
  });
})();
