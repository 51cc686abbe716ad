// goatclaw dashboard: draws the task graph (dagre, or by level past a few hundred nodes) and keeps a
// running run's graph and task table live over the run's Server-Sent Events. No framework, no build step.
"use strict";
(function () {
  const SVG = "http://www.w3.org/2000/svg";
  const W = 176, H = 30;
  const ORDER = ["failed", "running", "waiting", "upstream_failed", "cancelled", "pending", "skipped", "cached", "succeeded"];
  const STATE = {"task.started": "running", "task.retrying": "running", "task.succeeded": "succeeded",
    "task.failed": "failed", "task.skipped": "skipped", "task.cached": "cached", "task.cancelled": "cancelled",
    "task.upstream_failed": "upstream_failed", "task.waiting": "waiting"};
  const ENDS = ["run.succeeded", "run.failed", "run.cancelled", "run.blocked", "run.waiting"];

  function el(name, attrs, parent) {
    const e = document.createElementNS(SVG, name);
    for (const k in attrs) e.setAttribute(k, attrs[k]);
    if (parent) parent.appendChild(e);
    return e;
  }

  function layout(data) {
    const pos = {}, paths = [];
    if (data.layout === "dagre" && window.dagre) {
      const g = new dagre.graphlib.Graph();
      g.setGraph({rankdir: "LR", nodesep: 10, ranksep: 44, marginx: 8, marginy: 8});
      g.setDefaultEdgeLabel(function () { return {}; });
      data.nodes.forEach(function (n) { g.setNode(n.id, {width: W, height: H}); });
      data.edges.forEach(function (e) { g.setEdge(e[0], e[1]); });
      dagre.layout(g);
      data.nodes.forEach(function (n) { const p = g.node(n.id); pos[n.id] = {x: p.x - W / 2, y: p.y - H / 2}; });
      data.edges.forEach(function (e) { paths.push(g.edge(e[0], e[1]).points); });
      const size = g.graph();
      return {pos: pos, paths: paths, width: size.width, height: size.height};
    }
    const rows = {};  // by level: x is the level, y the place in it
    let width = 0, height = 0;
    data.nodes.forEach(function (n) {
      const i = rows[n.level] = (rows[n.level] || 0) + 1;
      pos[n.id] = {x: 8 + n.level * (W + 44), y: 8 + (i - 1) * (H + 8)};
      width = Math.max(width, pos[n.id].x + W + 8); height = Math.max(height, pos[n.id].y + H + 8);
    });
    data.edges.forEach(function (e) {
      const a = pos[e[0]], b = pos[e[1]];
      paths.push([{x: a.x + W, y: a.y + H / 2}, {x: b.x, y: b.y + H / 2}]);
    });
    return {pos: pos, paths: paths, width: width, height: height};
  }

  function label(text) { return text.length > 24 ? text.slice(0, 23) + "…" : text; }

  function groupStatus(counts) {
    for (const s of ORDER) if (counts[s]) return s;
    return "pending";
  }

  function draw(canvas, data) {
    const got = layout(data);
    const svg = el("svg", {width: got.width, height: got.height, viewBox: "0 0 " + got.width + " " + got.height,
                           "aria-hidden": "true"});
    got.paths.forEach(function (pts) {
      el("path", {class: "edge", d: "M" + pts.map(function (p) { return p.x + "," + p.y; }).join(" L")}, svg);
    });
    const nodes = {};
    data.nodes.forEach(function (n) {
      const p = got.pos[n.id];
      const g = el("g", {class: "node s-" + n.status + (n.group ? " group" : ""), "data-node": n.id,
                         transform: "translate(" + p.x + "," + p.y + ")"}, svg);
      el("rect", {width: W, height: H}, g);
      const t = el("text", {x: 8, y: 19}, g);
      t.textContent = label(n.group ? n.members[0] + " +" + (n.members.length - 1) : n.label);
      const title = el("title", {}, g);
      nodes[n.id] = {node: n, g: g, title: title};
      retitle(nodes[n.id]);
    });
    canvas.appendChild(svg);
    return nodes;
  }

  function retitle(entry) {
    const n = entry.node;
    entry.title.textContent = n.group
      ? n.label + ": " + Object.keys(n.counts).map(function (k) { return n.counts[k] + " " + k; }).join(", ")
      : n.label + ": " + n.status;
  }

  function live(run, drawn, data) {
    const nodeOf = {}, stateOf = {};
    data.nodes.forEach(function (n) {
      (n.members || [n.id]).forEach(function (m) { nodeOf[m] = n.id; });
    });
    document.querySelectorAll("#tasks tr[data-task]").forEach(function (tr) {
      stateOf[tr.dataset.task] = tr.querySelector(".status").textContent.trim().replace(/ /g, "_");
    });
    const base = document.body.dataset.base || "";
    const url = base + "/runs/" + encodeURIComponent(run.dataset.run) + "/events?after=" + run.dataset.after;
    const source = new EventSource(url);
    let moved = false;
    source.onmessage = function (msg) {
      const ev = JSON.parse(msg.data);
      const state = STATE[ev.topic];
      if (state && ev.task) { setState(ev.task, state); moved = true; }
      if (ENDS.indexOf(ev.topic) >= 0) { source.close(); setTimeout(function () { location.reload(); }, 400); }
    };
    source.addEventListener("end", function () {
      source.close();
      if (moved || run.dataset.status === "running") setTimeout(function () { location.reload(); }, 400);
    });

    function setState(task, state) {
      const before = stateOf[task] || "pending";
      stateOf[task] = state;
      const cell = document.querySelector('#tasks tr[data-task="' + CSS.escape(task) + '"] .task-status');
      if (cell) cell.innerHTML = '<span class="status s-' + state + '">' + state.replace(/_/g, " ") + "</span>";
      const entry = drawn && drawn[nodeOf[task]];
      if (!entry) return;
      const n = entry.node;
      n.counts[before] = Math.max(0, (n.counts[before] || 0) - 1);
      n.counts[state] = (n.counts[state] || 0) + 1;
      n.status = n.group ? groupStatus(n.counts) : state;
      entry.g.setAttribute("class", "node s-" + n.status + (n.group ? " group" : ""));
      retitle(entry);
    }
  }

  function login(form) {
    // the server's login is JSON (POST /auth/login): its rate limits, threat score and audit apply
    form.addEventListener("submit", function (e) {
      e.preventDefault();
      const body = {};
      new FormData(form).forEach(function (v, k) { body[k] = v; });
      const shown = document.getElementById("login-error");
      fetch(form.getAttribute("action"), {method: "POST", headers: {"Content-Type": "application/json"},
                                          body: JSON.stringify(body), credentials: "same-origin"})
        .then(function (r) {
          if (r.ok) { location.assign(form.dataset.next); return null; }
          return r.json().then(function (d) { throw new Error(d.detail || d.error || ("HTTP " + r.status)); },
                               function () { throw new Error("HTTP " + r.status); });
        })
        .catch(function (err) { shown.textContent = err.message; shown.hidden = false; });
    });
  }

  document.addEventListener("DOMContentLoaded", function () {
    const form = document.getElementById("login");
    if (form) login(form);
    const canvas = document.getElementById("graph");
    const source = document.getElementById("graph-data");
    const data = source ? JSON.parse(source.textContent) : null;
    const drawn = canvas && data ? draw(canvas, data) : null;
    const run = document.getElementById("run");
    if (run && run.dataset.status === "running" && data) live(run, drawn, data);
    if (canvas) canvas.dataset.drawn = "true";
  });
})();
