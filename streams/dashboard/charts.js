// Small SVG drawings made by hand: a sparkline of dispatches per second against the limit,
// and a task's dependencies as a three-column graph. Text goes in with textContent only.

const SVG = "http://www.w3.org/2000/svg";

function svg(tag, attrs = {}, text = null) {
  const node = document.createElementNS(SVG, tag);
  for (const [name, value] of Object.entries(attrs)) node.setAttribute(name, String(value));
  if (text !== null) node.textContent = text;
  return node;
}

// samples: [{t: ms, rate: dispatches/s}], limit: calls/s or null.
export function sparkline(samples, limit, width = 300, height = 60) {
  const root = svg("svg", {
    width, height, viewBox: `0 0 ${width} ${height}`, class: "spark", role: "img",
    "aria-label": "dispatches per second",
  });
  const top = Math.max(limit || 0, ...samples.map((s) => s.rate), 0.001) * 1.15;
  const y = (value) => height - 4 - (value / top) * (height - 8);
  root.append(svg("rect", { x: 0, y: 0, width, height, class: "spark-bg" }));
  if (limit) {
    root.append(svg("line", { x1: 0, x2: width, y1: y(limit), y2: y(limit), class: "spark-limit" }));
    root.append(svg("text", { x: width - 4, y: Math.max(10, y(limit) - 3), class: "spark-label", "text-anchor": "end" },
      `limit ${formatRate(limit)}/s`));
  }
  if (samples.length >= 2) {
    const t0 = samples[0].t;
    const span = Math.max(1, samples[samples.length - 1].t - t0);
    const points = samples.map((s) => `${(((s.t - t0) / span) * (width - 2) + 1).toFixed(1)},${y(s.rate).toFixed(1)}`);
    root.append(svg("polyline", { points: points.join(" "), class: "spark-line" }));
  }
  const last = samples.length ? samples[samples.length - 1].rate : 0;
  root.append(svg("text", { x: 4, y: 12, class: "spark-label" }, `${formatRate(last)} dispatches/s`));
  return root;
}

export function formatRate(rate) {
  if (rate === 0) return "0";
  if (rate >= 10) return rate.toFixed(0);
  if (rate >= 0.1) return rate.toFixed(2);
  return rate.toPrecision(2);
}

// center: {id, status}; dependencies / dependents: [{id, status}]; onSelect(id).
export function dependencyGraph(center, dependencies, dependents, onSelect) {
  const rows = Math.max(1, dependencies.length, dependents.length);
  const width = 660;
  const rowHeight = 34;
  const height = rows * rowHeight + 16;
  const nodeWidth = 190;
  const columns = [10, (width - nodeWidth) / 2, width - nodeWidth - 10];
  const root = svg("svg", { width, height, viewBox: `0 0 ${width} ${height}`, class: "graph", role: "img",
    "aria-label": "dependencies of the task" });
  const defs = svg("defs");
  const marker = svg("marker", { id: "arrow", viewBox: "0 0 10 10", refX: 10, refY: 5, markerWidth: 6, markerHeight: 6, orient: "auto" });
  marker.append(svg("path", { d: "M0,0 L10,5 L0,10 z", class: "graph-arrow" }));
  defs.append(marker);
  root.append(defs);
  const middleY = height / 2;
  const place = (items, column) => items.map((item, i) => {
    const top = (height - items.length * rowHeight) / 2 + i * rowHeight + 4;
    return { ...item, x: columns[column], y: top + (rowHeight - 8) / 2 };
  });
  const left = place(dependencies, 0);
  const right = place(dependents, 2);
  for (const node of left) {
    root.append(svg("line", { x1: node.x + nodeWidth, y1: node.y, x2: columns[1], y2: middleY, class: "graph-edge", "marker-end": "url(#arrow)" }));
  }
  for (const node of right) {
    root.append(svg("line", { x1: columns[1] + nodeWidth, y1: middleY, x2: node.x, y2: node.y, class: "graph-edge", "marker-end": "url(#arrow)" }));
  }
  const drawNode = (node, x, y, isCenter) => {
    const group = svg("g", { class: `graph-node status-${node.status || "unknown"}${isCenter ? " graph-center" : ""}`, "data-testid": "graph-node", "data-task-id": node.id });
    group.append(svg("rect", { x, y: y - 13, width: nodeWidth, height: 26, rx: 5 }));
    group.append(svg("text", { x: x + 8, y: y + 4 }, clipText(node.id, 20)));
    group.append(svg("text", { x: x + nodeWidth - 8, y: y + 4, "text-anchor": "end", class: "graph-status" }, node.status || "?"));
    const title = svg("title", {}, `${node.id}: ${node.status || "unknown"}`);
    group.append(title);
    if (!isCenter && onSelect) {
      group.setAttribute("tabindex", "0");
      group.addEventListener("click", () => onSelect(node.id));
    }
    root.append(group);
  };
  for (const node of left) drawNode(node, node.x, node.y, false);
  for (const node of right) drawNode(node, node.x, node.y, false);
  drawNode(center, columns[1], middleY, true);
  if (!dependencies.length) root.append(svg("text", { x: columns[0], y: middleY + 4, class: "muted-svg" }, "no dependencies"));
  if (!dependents.length) root.append(svg("text", { x: columns[2], y: middleY + 4, class: "muted-svg" }, "no dependents"));
  return root;
}

function clipText(text, chars) {
  return text.length > chars ? `${text.slice(0, chars - 1)}…` : text;
}
