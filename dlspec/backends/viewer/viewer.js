// dlspec's model viewer: lays out the model's graph at the current collapse state (layered,
// top to bottom), draws it as SVG and answers search, clicks and hovers. No library, no
// network: everything it shows is in the page's #model-data (dlspec/backends/html_view.py).
(function () {
  "use strict";
  const data = JSON.parse(document.getElementById("model-data").textContent);
  const SVGNS = "http://www.w3.org/2000/svg";
  const FRAME_FILLS = ["#F7F7F7", "#EEEEEE", "#E4E4E4"];
  const CLOSED_FILL = "#E8E8E8";
  const RAMP = ["#FFFFFF", "#FDD49E", "#EF6548"]; // colour scale: none, half, most (log)
  const GAP = 26; // between boxes of a rank
  const RANK_GAP = 40; // between ranks, before frame titles
  const FRAME_PAD = 8;
  const FRAME_TITLE = 18;
  const LABEL_CHARS = 64;

  const byId = new Map();
  data.nodes.forEach((node, index) => {
    node.index = index;
    node.children = [];
    byId.set(node.id, node);
  });
  for (const node of data.nodes) if (node.parent !== null) byId.get(node.parent).children.push(node);
  const roots = data.nodes.filter((node) => node.parent === null);
  const isContainer = (node) => node.children.length > 0;
  // blocks and repetitions start closed (unless `dlspec draw --expand` or --open), residuals open
  const expanded = new Set(data.nodes.filter((n) => n.kind === "residual").map((n) => n.id));
  for (const node of data.nodes) {
    const opened = data.open.paths.some((path) => path === node.id || path.startsWith(node.id + "."));
    if (isContainer(node) && (data.open.all || opened)) expanded.add(node.id);
  }

  // ---- text and numbers ------------------------------------------------------------------
  const fmt = (value) => value.toLocaleString("en-US");
  function short(count) {
    for (const [scale, suffix] of [[1e15, "P"], [1e12, "T"], [1e9, "G"], [1e6, "M"], [1e3, "K"]]) {
      if (Math.abs(count) >= scale) return (count / scale).toFixed(2) + suffix;
    }
    return String(count);
  }
  function bytes(count) {
    let value = count;
    for (const unit of ["B", "KiB", "MiB", "GiB", "TiB"]) {
      if (value < 1024 || unit === "TiB") {
        return unit === "B" ? fmt(value) + " B" : value.toFixed(2) + " " + unit;
      }
      value /= 1024;
    }
    return "";
  }
  const clip = (text, size) => (text.length > size ? text.slice(0, size - 1) + "…" : text);
  const canvas = document.createElement("canvas").getContext("2d");
  function textWidth(text, font) {
    canvas.font = font;
    return canvas.measureText(text).width;
  }
  function el(tag, attrs, parent) {
    const element = document.createElementNS(SVGNS, tag);
    for (const [key, value] of Object.entries(attrs || {})) element.setAttribute(key, value);
    if (parent) parent.appendChild(element);
    return element;
  }
  function html(tag, text, attrs) {
    const element = document.createElement(tag);
    if (text !== undefined) element.textContent = text;
    for (const [key, value] of Object.entries(attrs || {})) element.setAttribute(key, value);
    return element;
  }

  // ---- what is visible -------------------------------------------------------------------
  function visibleState() {
    const units = [];
    const frames = [];
    const unitOf = new Map();
    function visit(node, depth, unit) {
      if (unit) {
        unitOf.set(node.id, unit);
      } else if (isContainer(node) && expanded.has(node.id)) {
        node.depth = depth;
        frames.push(node);
        unitOf.set(node.id, null);
      } else {
        units.push(node);
        unitOf.set(node.id, node);
        unit = node;
      }
      for (const child of node.children) visit(child, depth + 1, unit);
    }
    for (const root of roots) visit(root, 0, null);
    const edges = new Map();
    for (const [from, to, label] of data.edges) {
      const a = unitOf.get(from);
      const b = unitOf.get(to);
      if (a === b) continue; // inside a closed container
      const key = a.id + "\u0000" + b.id;
      if (!edges.has(key)) edges.set(key, { from: a, to: b, label, shortcut: isShortcut(from, to) });
    }
    return { units, frames, edges: [...edges.values()] };
  }

  // an edge into a residual's sum that does not come from its main branch
  function isShortcut(from, to) {
    if (!to.startsWith("add/")) return false;
    const residual = to.slice(4);
    let node = byId.get(from);
    while (node && node.parent !== residual) node = node.parent === null ? null : byId.get(node.parent);
    return !node || node.branch === "shortcut";
  }

  // ---- layout: ranks by longest path, order by barycentres, x by averaging neighbours ----
  function measure(node) {
    const first = node.kind === "add" ? "add" : clip(node.name + "  " + node.label, LABEL_CHARS);
    const details = [];
    if (node.kind !== "add") details.push(node.shape);
    if (node.row && node.row.params) details.push(short(node.row.params) + " params");
    if (node.row && node.row.macs) details.push(short(node.row.macs) + " MACs");
    node.lines = [first, details.join("  ·  ")].filter((line) => line);
    const closed = isContainer(node);
    node.w = Math.max(
      textWidth(node.lines[0], "bold 12px Helvetica, Arial, sans-serif") + (closed ? 34 : 18),
      node.lines.length > 1 ? textWidth(node.lines[1], "10px Helvetica, Arial, sans-serif") + 18 : 0,
      node.kind === "add" ? 44 : 60,
    );
    node.h = node.lines.length > 1 ? 36 : 22;
  }

  function layout(state) {
    const { units, frames, edges } = state;
    const isUnit = new Set(units);
    const isFrame = new Set(frames);
    units.forEach(measure);
    const preds = new Map(units.map((u) => [u.id, []]));
    const succs = new Map(units.map((u) => [u.id, []]));
    for (const edge of edges) {
      preds.get(edge.to.id).push(edge.from);
      succs.get(edge.from.id).push(edge.to);
    }
    // topological order (data flows forward; ties in spec order)
    const indegree = new Map(units.map((u) => [u.id, preds.get(u.id).length]));
    const ready = units.filter((u) => indegree.get(u.id) === 0);
    const sorted = [];
    while (ready.length) {
      ready.sort((a, b) => a.index - b.index);
      const unit = ready.shift();
      sorted.push(unit);
      for (const next of succs.get(unit.id)) {
        indegree.set(next.id, indegree.get(next.id) - 1);
        if (indegree.get(next.id) === 0) ready.push(next);
      }
    }
    for (const unit of sorted) {
      unit.rank = Math.max(-1, ...preds.get(unit.id).map((p) => p.rank)) + 1;
    }
    // a source (a second input) sits just above its first reader
    for (const unit of sorted) {
      const after = succs.get(unit.id);
      if (!preds.get(unit.id).length && after.length) {
        unit.rank = Math.max(0, Math.min(...after.map((s) => s.rank)) - 1);
      }
    }
    // long edges pass through one point per rank they cross
    const ranks = [];
    const place = (item) => (ranks[item.rank] = ranks[item.rank] || []).push(item);
    sorted.forEach(place);
    const up = new Map(); // layered graph: item -> neighbours one rank above / below
    const down = new Map();
    const link = (a, b) => {
      (down.get(a) || down.set(a, []).get(a)).push(b);
      (up.get(b) || up.set(b, []).get(b)).push(a);
    };
    for (const edge of edges) {
      edge.points = [edge.from];
      let previous = edge.from;
      for (let r = edge.from.rank + 1; r < edge.to.rank; r++) {
        const dummy = { rank: r, w: 10, h: 0, index: edge.from.index + 0.5, dummy: true };
        place(dummy);
        link(previous, dummy);
        edge.points.push(dummy);
        previous = dummy;
      }
      link(previous, edge.to);
      edge.points.push(edge.to);
    }
    for (const rank of ranks) if (rank) rank.sort((a, b) => a.index - b.index);
    const layers = ranks.filter((rank) => rank);
    const position = (rank) => rank.forEach((item, i) => (item.order = i));
    layers.forEach(position);
    const mean = (items, key) => items.reduce((s, i) => s + i[key], 0) / items.length;
    for (let sweep = 0; sweep < 8; sweep++) {
      const downward = sweep % 2 === 0;
      const sequence = downward ? layers : [...layers].reverse();
      for (const rank of sequence) {
        for (const item of rank) {
          const near = (downward ? up : down).get(item) || [];
          item.bary = near.length ? mean(near, "order") : item.order;
        }
        rank.sort((a, b) => a.bary - b.bary || a.order - b.order);
        position(rank);
      }
    }
    // x: start packed, then pull each item toward its neighbours, keeping order and gaps
    for (const rank of layers) {
      let x = 0;
      for (const item of rank) {
        item.x = x + item.w / 2;
        x += item.w + GAP;
      }
      for (const item of rank) item.x -= x / 2;
    }
    for (let sweep = 0; sweep < 12; sweep++) {
      const downward = sweep % 2 === 0;
      for (const rank of downward ? layers : [...layers].reverse()) {
        const want = rank.map((item) => {
          const near = (downward ? up : down).get(item) || [];
          return near.length ? mean(near, "x") : item.x;
        });
        const left = [];
        const right = [];
        rank.forEach((item, i) => {
          left[i] = i ? Math.max(want[i], left[i - 1] + (rank[i - 1].w + item.w) / 2 + GAP) : want[i];
        });
        for (let i = rank.length - 1; i >= 0; i--) {
          const item = rank[i];
          right[i] = i < rank.length - 1
            ? Math.min(want[i], right[i + 1] - (rank[i + 1].w + item.w) / 2 - GAP)
            : want[i];
        }
        rank.forEach((item, i) => (item.x = (left[i] + right[i]) / 2));
      }
    }
    // y: rank by rank, with room above for the titles of the frames that open there
    const spans = frames.map((frame) => {
      let top = Infinity;
      let bottom = -Infinity;
      const visit = (node) => {
        if (isUnit.has(node)) {
          top = Math.min(top, node.rank);
          bottom = Math.max(bottom, node.rank);
        }
        node.children.forEach(visit);
      };
      visit(frame);
      return { frame, top, bottom };
    });
    let y = 40;
    ranks.forEach((rank, r) => {
      const opening = spans.filter((s) => s.top === r).length;
      const closing = spans.filter((s) => s.bottom === r - 1).length;
      y += (r ? RANK_GAP : 0) + opening * (FRAME_TITLE + FRAME_PAD) + closing * FRAME_PAD;
      const height = Math.max(0, ...(rank || []).map((item) => item.h));
      for (const item of rank || []) item.y = y + height / 2;
      y += height;
    });
    // frames, innermost first, around their visible contents
    for (const frame of [...frames].sort((a, b) => b.depth - a.depth)) {
      const boxes = [];
      const visit = (node) => {
        if (node !== frame && isFrame.has(node)) {
          if (node.rect) boxes.push(node.rect);
        } else if (isUnit.has(node)) {
          boxes.push({ x: node.x - node.w / 2, y: node.y - node.h / 2, w: node.w, h: node.h });
        }
        if (node === frame || !isFrame.has(node)) node.children.forEach(visit);
      };
      visit(frame);
      if (!boxes.length) {
        frame.rect = null;
        continue;
      }
      const x0 = Math.min(...boxes.map((b) => b.x)) - FRAME_PAD;
      const y0 = Math.min(...boxes.map((b) => b.y)) - FRAME_PAD - FRAME_TITLE;
      const x1 = Math.max(...boxes.map((b) => b.x + b.w)) + FRAME_PAD;
      const y1 = Math.max(...boxes.map((b) => b.y + b.h)) + FRAME_PAD;
      frame.rect = { x: x0, y: y0, w: x1 - x0, h: y1 - y0 };
    }
    for (const frame of frames) {
      if (frame.rect) frame.rect.title = frameTitle(frame);
    }
  }

  function frameTitle(frame) {
    const params = frame.row && frame.row.params ? "  ·  " + fmt(frame.row.params) + " params" : "";
    return "⊟ " + frame.name + "  " + frame.label + params;
  }

  // ---- colours ---------------------------------------------------------------------------
  let colourBy = "family";
  function metric(node) {
    return node.row ? node.row[colourBy] || 0 : 0;
  }
  function mix(a, b, t) {
    const channel = (hex, i) => parseInt(hex.slice(1 + 2 * i, 3 + 2 * i), 16);
    const parts = [0, 1, 2].map((i) => Math.round(channel(a, i) + (channel(b, i) - channel(a, i)) * t));
    return "#" + parts.map((v) => v.toString(16).padStart(2, "0")).join("");
  }
  function fill(node, most) {
    if (colourBy === "family") {
      if (node.kind === "input" || node.kind === "output") return "#FFFFFF";
      if (isContainer(node)) return CLOSED_FILL;
      return data.families[node.family] || "#FFFFFF";
    }
    const t = most > 0 ? Math.log1p(metric(node)) / Math.log1p(most) : 0;
    return t < 0.5 ? mix(RAMP[0], RAMP[1], t * 2) : mix(RAMP[1], RAMP[2], t * 2 - 1);
  }
  function legend(units, most) {
    const box = document.getElementById("legend");
    box.replaceChildren();
    if (colourBy === "family") {
      const seen = new Set(units.filter((u) => u.family && !isContainer(u)).map((u) => u.family));
      for (const [family, colour] of Object.entries(data.families)) {
        if (!seen.has(family)) continue;
        const item = html("span", "");
        item.append(html("span", "", { class: "swatch", style: "background:" + colour }), family);
        box.append(item);
      }
      const closed = html("span", "");
      closed.append(html("span", "", { class: "swatch", style: "background:" + CLOSED_FILL }), "closed block (double-click)");
      box.append(closed);
      return;
    }
    const shown = colourBy === "saved" ? bytes(most) : short(most);
    const ramp = html("span", "", {
      class: "ramp",
      style: `background: linear-gradient(to right, ${RAMP.join(", ")})`,
    });
    box.append(colourBy + " (log scale): 0", ramp, shown + (colourBy === "saved" ? ` at batch ${data.model.batch}` : ""));
  }

  // ---- drawing ---------------------------------------------------------------------------
  const svg = document.getElementById("canvas");
  const viewport = document.getElementById("viewport");
  let current = null;
  let selected = null;
  let matches = new Set();

  function render() {
    current = visibleState();
    layout(current);
    viewport.replaceChildren();
    const frameLayer = el("g", { class: "frames" }, viewport);
    const edgeLayer = el("g", { class: "edges" }, viewport);
    const nodeLayer = el("g", { class: "nodes" }, viewport);
    for (const frame of [...current.frames].sort((a, b) => a.depth - b.depth)) {
      if (!frame.rect) continue;
      const g = el("g", { class: "frame", "data-id": frame.id }, frameLayer);
      const r = frame.rect;
      el("rect", { x: r.x, y: r.y, width: r.w, height: r.h, rx: 6, fill: FRAME_FILLS[Math.min(frame.depth, 2)] }, g);
      const title = el("text", { class: "title", x: r.x + 6, y: r.y + 13 }, g);
      title.textContent = r.title;
      title.addEventListener("click", (event) => {
        event.stopPropagation();
        toggle(frame);
      });
    }
    drawEdges(edgeLayer);
    const most = Math.max(0, ...current.units.map(metric));
    for (const unit of current.units) drawNode(unit, nodeLayer, most);
    legend(current.units, most);
    highlight();
  }

  function drawEdges(layer) {
    // the ends of the edges meeting at a box spread along its side, in the order of their far ends
    const spread = (edges, end, other) => {
      const groups = new Map();
      for (const edge of edges) {
        const key = edge[end].id;
        (groups.get(key) || groups.set(key, []).get(key)).push(edge);
      }
      for (const group of groups.values()) {
        group.sort((a, b) => a.points[other(a)].x - b.points[other(b)].x);
        const box = group[0][end];
        const step = Math.min(14, box.w / (group.length + 1));
        group.forEach((edge, i) => (edge[end + "X"] = box.x + (i - (group.length - 1) / 2) * step));
      }
    };
    spread(current.edges, "from", () => 1);
    spread(current.edges, "to", (edge) => edge.points.length - 2);
    const labelled = new Set();
    for (const edge of current.edges) {
      const p = edge.points;
      const pts = p.map((item, i) => {
        if (i === 0) return [edge.fromX, item.y + item.h / 2];
        if (i === p.length - 1) return [edge.toX, item.y - item.h / 2];
        return [item.x, item.y];
      });
      let d = `M ${pts[0][0]} ${pts[0][1]}`;
      for (let i = 1; i < pts.length; i++) {
        const [x0, y0] = pts[i - 1];
        const [x1, y1] = pts[i];
        const dy = (y1 - y0) / 2;
        d += ` C ${x0} ${y0 + dy} ${x1} ${y1 - dy} ${x1} ${y1}`;
      }
      const g = el("g", { class: "edge" + (edge.shortcut ? " shortcut" : ""), "data-from": edge.from.id, "data-to": edge.to.id }, layer);
      el("path", { d, "marker-end": "url(#arrow)" }, g);
      const key = edge.from.id + "\u0000" + edge.label;
      if (!labelled.has(key)) {
        labelled.add(key);
        const text = el("text", { x: (pts[0][0] + pts[1][0]) / 2 + 4, y: (pts[0][1] + pts[1][1]) / 2 + 3 }, g);
        text.textContent = edge.label;
      }
    }
  }

  function drawNode(unit, layer, most) {
    const closed = isContainer(unit);
    const terminal = unit.kind === "input" || unit.kind === "output";
    const cls = "node" + (closed ? " container" : "") + (terminal ? " terminal" : "");
    const g = el("g", { class: cls, "data-id": unit.id, transform: `translate(${unit.x - unit.w / 2},${unit.y - unit.h / 2})` }, layer);
    const colour = fill(unit, most);
    const radius = unit.kind === "add" ? unit.h / 2 : 5;
    if (closed) el("rect", { class: "stack", x: 4, y: 4, width: unit.w, height: unit.h, rx: radius }, g);
    el("rect", { class: "main", width: unit.w, height: unit.h, rx: radius, fill: colour }, g);
    const left = closed ? 24 : 9;
    if (closed) el("text", { class: "toggle", x: 7, y: 16 }, g).textContent = "⊞";
    const name = el("text", { x: unit.kind === "add" ? unit.w / 2 : left, y: 15, "text-anchor": unit.kind === "add" ? "middle" : "start" }, g);
    const bold = el("tspan", { class: "name" }, name);
    const [first] = unit.lines;
    if (unit.kind === "add") {
      bold.textContent = first;
    } else {
      bold.textContent = first.slice(0, unit.name.length);
      el("tspan", {}, name).textContent = first.slice(unit.name.length);
    }
    if (unit.lines.length > 1) el("text", { class: "detail", x: left, y: 29 }, g).textContent = unit.lines[1];
    g.addEventListener("click", (event) => {
      event.stopPropagation();
      select(unit);
    });
    if (closed) {
      g.addEventListener("dblclick", (event) => {
        event.stopPropagation();
        toggle(unit);
      });
    }
    g.addEventListener("mousemove", (event) => showTooltip(unit, event));
    g.addEventListener("mouseleave", hideTooltip);
  }

  function highlight() {
    for (const g of viewport.querySelectorAll(".node")) {
      const node = byId.get(g.dataset.id);
      const inside = isContainer(node) && descendants(node).some((d) => matches.has(d.id));
      g.classList.toggle("match", matches.has(node.id));
      g.classList.toggle("contains", !matches.has(node.id) && inside);
      g.classList.toggle("selected", selected === node);
    }
    for (const g of viewport.querySelectorAll(".edge")) {
      const lit = selected && (g.dataset.from === selected.id || g.dataset.to === selected.id);
      g.classList.toggle("lit", Boolean(lit));
    }
  }

  function descendants(node) {
    const out = [];
    const visit = (n) => n.children.forEach((c) => (out.push(c), visit(c)));
    visit(node);
    return out;
  }

  // ---- opening and closing, keeping the toggled box where it was on screen ----------------
  function anchorOf(node) {
    if (node.rect) return { x: node.rect.x, y: node.rect.y };
    return { x: node.x - node.w / 2, y: node.y - node.h / 2 };
  }
  function toggle(node, open) {
    const before = anchorOf(node);
    const wanted = open === undefined ? !expanded.has(node.id) : open;
    if (wanted) expanded.add(node.id);
    else expanded.delete(node.id);
    render();
    const after = anchorOf(node);
    view.x += (before.x - after.x) * view.k;
    view.y += (before.y - after.y) * view.k;
    applyView();
    if (selected) select(selected);
  }

  // ---- the panel: the node's row of `dlspec check --format json` ---------------------------
  const panel = document.getElementById("panel");
  function select(node) {
    selected = node;
    panel.replaceChildren(html("h2", node.id));
    const table = html("table");
    const row = (title, value, field, raw) => {
      const tr = html("tr");
      const td = html("td");
      if (value instanceof Node) td.append(value);
      else td.textContent = value;
      if (field) td.dataset.field = field;
      if (raw !== undefined) td.dataset.value = String(raw);
      tr.append(html("th", title), td);
      table.append(tr);
    };
    const r = node.row;
    if (!r) {
      row("what", node.label);
      row("shape (per sample)", node.shape, "shape");
    } else {
      row("kind", r.kind, "kind");
      row("layer", r.label, "label");
      row("reads", r.inputs.join(", "));
      for (const t of r.outputs) {
        const values = t.value.join(", ") === t.shape.join(", ") ? "" : `  = [${t.value.join(", ")}]`;
        row(r.outputs.length > 1 ? "output " + t.name : "output", `${t.dtype}[${t.shape.join(", ")}]${values}`, "output");
      }
      row("parameters", fmt(r.params), "params", r.params);
      if (r.buffers) row("buffer elements", fmt(r.buffers), "buffers", r.buffers);
      row("MACs per sample", fmt(r.macs) + (r.macs_formula ? `  (${r.macs_formula})` : ""), "macs", r.macs);
      row(`saved for backward (batch ${data.model.batch})`, bytes(r.saved) + (r.saved_formula ? `  (${r.saved_formula} bytes)` : ""), "saved", r.saved);
      row(`spec line ${r.line}:${r.column}`, html("code", node.source), "source");
    }
    panel.append(table);
    if (isContainer(node)) {
      const open = expanded.has(node.id);
      const button = html("button", open ? "close ⊟" : `open ⊞ (${node.children.length} inside)`, { type: "button", id: "toggle" });
      button.addEventListener("click", () => toggle(node));
      panel.append(button);
    }
    highlight();
  }

  const tooltip = document.getElementById("tooltip");
  function showTooltip(node, event) {
    const r = node.row;
    const parts = [node.id, node.label, node.shape];
    if (r) parts.push(fmt(r.params) + " params", short(r.macs) + " MACs", bytes(r.saved) + " saved");
    tooltip.textContent = parts.join("  ·  ");
    tooltip.hidden = false;
    tooltip.style.left = event.clientX + 14 + "px";
    tooltip.style.top = event.clientY + 14 + "px";
  }
  function hideTooltip() {
    tooltip.hidden = true;
  }

  // ---- search ------------------------------------------------------------------------------
  const search = document.getElementById("search");
  const found = document.getElementById("found");
  function runSearch() {
    const query = search.value.trim().toLowerCase();
    matches = new Set();
    if (query) {
      for (const node of data.nodes) {
        const kind = node.row ? node.row.kind : node.kind;
        const texts = [node.name, node.label, kind, ...(query.includes(".") ? [node.id] : [])];
        if (texts.some((text) => text.toLowerCase().includes(query))) {
          matches.add(node.id);
        }
      }
    }
    const shown = new Set(current.units.map((u) => u.id));
    const hidden = [...matches].filter((id) => !shown.has(id) && !current.frames.includes(byId.get(id))).length;
    found.textContent = !query ? "" : !matches.size ? "nothing matches"
      : `${matches.size} found` + (hidden ? `, ${hidden} in closed blocks (Enter opens them)` : "");
    highlight();
  }
  search.addEventListener("input", runSearch);
  search.addEventListener("keydown", (event) => {
    if (event.key !== "Enter" || !matches.size) return;
    for (const id of matches) {
      for (let n = byId.get(byId.get(id).parent); n; n = n.parent === null ? null : byId.get(n.parent)) {
        expanded.add(n.id);
      }
    }
    render();
    runSearch();
    const first = current.units.find((u) => matches.has(u.id));
    if (first) centre(first);
  });

  // ---- pan and zoom --------------------------------------------------------------------------
  const view = { x: 0, y: 0, k: 1 };
  function applyView() {
    viewport.setAttribute("transform", `translate(${view.x},${view.y}) scale(${view.k})`);
  }
  function bounds() {
    const items = [...current.units.map((u) => ({ x: u.x - u.w / 2, y: u.y - u.h / 2, w: u.w, h: u.h })),
      ...current.frames.filter((f) => f.rect).map((f) => f.rect)];
    const x0 = Math.min(...items.map((b) => b.x));
    const y0 = Math.min(...items.map((b) => b.y));
    return { x0, y0, x1: Math.max(...items.map((b) => b.x + b.w)), y1: Math.max(...items.map((b) => b.y + b.h)) };
  }
  // the whole graph, or (readable) its width at most at full size, from the top
  function fit(whole) {
    const { x0, y0, x1, y1 } = bounds();
    const width = svg.clientWidth;
    const height = svg.clientHeight;
    const across = (width - 40) / (x1 - x0);
    view.k = whole ? Math.min(across, (height - 40) / (y1 - y0), 2) : Math.min(across, 1);
    view.x = width / 2 - ((x0 + x1) / 2) * view.k;
    const tall = (y1 - y0) * view.k > height - 40;
    view.y = tall && !whole ? 20 - y0 * view.k : height / 2 - ((y0 + y1) / 2) * view.k;
    applyView();
  }
  function centre(node) {
    view.x = svg.clientWidth / 2 - node.x * view.k;
    view.y = svg.clientHeight / 3 - node.y * view.k;
    applyView();
  }
  svg.addEventListener("wheel", (event) => {
    event.preventDefault();
    const box = svg.getBoundingClientRect();
    const px = event.clientX - box.left;
    const py = event.clientY - box.top;
    const k = Math.min(4, Math.max(0.03, view.k * Math.exp(-event.deltaY * 0.0015)));
    view.x = px - ((px - view.x) * k) / view.k;
    view.y = py - ((py - view.y) * k) / view.k;
    view.k = k;
    applyView();
  }, { passive: false });
  let drag = null;
  svg.addEventListener("mousedown", (event) => {
    drag = { x: event.clientX, y: event.clientY, vx: view.x, vy: view.y };
    svg.classList.add("panning");
  });
  window.addEventListener("mousemove", (event) => {
    if (!drag) return;
    view.x = drag.vx + event.clientX - drag.x;
    view.y = drag.vy + event.clientY - drag.y;
    applyView();
  });
  window.addEventListener("mouseup", () => {
    drag = null;
    svg.classList.remove("panning");
  });

  // ---- the header and the buttons ----------------------------------------------------------
  function header() {
    const m = data.model;
    const args = Object.entries(m.arguments).map(([k, v]) => `${k}=${v}`).join(", ");
    const title = document.getElementById("title");
    title.append(html("b", args ? `${m.name}(${args})` : m.name));
    const symbols = Object.entries(m.symbols).map(([k, v]) => `${k}=${v}`).join(", ");
    const totals = [
      `${fmt(m.params)} params (${short(m.params)})`,
      `${short(m.macs)} MACs per sample` + (symbols ? ` at ${symbols}` : ""),
      `${bytes(m.saved)} saved for backward at batch ${m.batch}`,
      `training with Adam ${bytes(m.training_adam)}`,
    ];
    title.append(html("span", totals.join("  ·  "), { class: "totals" }));
    if (data.errors.length) {
      const errors = document.getElementById("errors");
      const count = data.errors.length === 1 ? "1 error" : `${data.errors.length} errors`;
      errors.querySelector("summary").textContent =
        `${count}: drawn as far as the spec analyzes (the statements before the error and beside it); totals of what is drawn`;
      errors.querySelector("pre").textContent = data.errors.join("\n");
      errors.hidden = false;
    }
  }
  document.getElementById("colour").addEventListener("change", (event) => {
    colourBy = event.target.value;
    render();
  });
  const everything = () => data.nodes.filter(isContainer);
  document.getElementById("expand-all").addEventListener("click", () => {
    everything().forEach((n) => expanded.add(n.id));
    render();
    fit(false);
  });
  document.getElementById("collapse-all").addEventListener("click", () => {
    everything().forEach((n) => expanded.delete(n.id));
    render();
    fit(false);
  });
  document.getElementById("fit").addEventListener("click", () => fit(true));
  svg.addEventListener("click", () => {
    selected = null;
    highlight();
  });

  header();
  render();
  fit(false);
  document.body.dataset.ready = "true";
})();
