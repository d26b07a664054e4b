// Rendering helpers. Everything shown comes from the API and may hold user input (task ids,
// targets, errors): it only ever enters the page as text nodes or attribute values, never as
// markup: nothing here parses HTML.

// h("td", {class: "x", "data-testid": "y"}, "text", childNode, ...)
export function h(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (value === undefined || value === null || value === false) continue;
    node.setAttribute(name, String(value));
  }
  for (const child of children.flat()) {
    if (child === undefined || child === null) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

export function replace(parent, ...children) {
  parent.replaceChildren(...children.flat().filter((c) => c !== null && c !== undefined));
}

export function text(id, value) {
  document.getElementById(id).textContent = value;
}

export function pad(n, width = 2) {
  return String(n).padStart(width, "0");
}

// 12:04:05 (UTC), or "–"
export function clock(ms, withMillis = false) {
  if (ms === null || ms === undefined || ms <= 0) return "–";
  const d = new Date(ms);
  const base = `${pad(d.getUTCHours())}:${pad(d.getUTCMinutes())}:${pad(d.getUTCSeconds())}`;
  return withMillis ? `${base}.${pad(d.getUTCMilliseconds(), 3)}` : base;
}

export function iso(ms) {
  return ms ? new Date(ms).toISOString() : "";
}

// "in 4 s", "12 s ago", "now"
export function relative(ms, now) {
  if (!ms) return "";
  const seconds = (ms - now) / 1000;
  const words = (s) => (s >= 3600 ? `${(s / 3600).toFixed(1)} h` : s >= 60 ? `${(s / 60).toFixed(1)} min` : `${s.toFixed(s < 10 ? 1 : 0)} s`);
  if (Math.abs(seconds) < 0.05) return "now";
  return seconds > 0 ? `in ${words(seconds)}` : `${words(-seconds)} ago`;
}

// A bar: value out of max, with a label; role=meter for assistive tools. A "use" bar turns
// amber then red as it fills (a limit being reached); a "progress" bar stays one colour.
export function bar(value, max, label, testid = "bar", kind = "use") {
  const share = max > 0 ? Math.min(1, Math.max(0, value / max)) : 0;
  const level = kind === "progress" ? "progress" : share >= 1 ? "full" : share >= 0.8 ? "high" : "ok";
  const fill = h("span", { class: `bar-fill bar-${level}` });
  fill.style.width = `${(share * 100).toFixed(1)}%`;
  return h("span", {
    class: "bar", role: "meter", "aria-valuemin": 0, "aria-valuemax": max, "aria-valuenow": value,
    "data-testid": testid, "data-value": value, "data-max": max,
  }, fill, h("span", { class: "bar-label" }, label));
}

export function statusBadge(status) {
  return h("span", { class: `badge status-${status}`, "data-testid": "status" }, status);
}

export function facts(pairs) {
  return pairs.filter(([, value]) => value !== null && value !== undefined && value !== "")
    .flatMap(([name, value]) => [h("dt", {}, name), h("dd", {}, value)]);
}
