// Line charts drawn as inline SVG: one line per series, time on x, 0..max on y.
// No library: the console draws a handful of small charts and nothing more.

const SVG = "http://www.w3.org/2000/svg";
const WIDTH = 480;
const HEIGHT = 180;
const PAD = { left: 48, right: 12, top: 12, bottom: 24 };
// Colour-blind safe (Okabe-Ito), readable on white.
export const COLOURS = ["#0072b2", "#d55e00", "#009e73", "#cc79a7", "#e69f00", "#56b4e9", "#000000"];

function el(tag, attrs = {}, text) {
  const node = document.createElementNS(SVG, tag);
  for (const [name, value] of Object.entries(attrs)) node.setAttribute(name, String(value));
  if (text !== undefined) node.textContent = text;
  return node;
}

function niceMax(value) {
  if (!(value > 0)) return 1;
  const step = 10 ** Math.floor(Math.log10(value));
  for (const m of [1, 2, 2.5, 5, 10]) if (value <= m * step) return m * step;
  return 10 * step;
}

function formatValue(value, unit) {
  if (unit === "%") return `${(value * 100).toFixed(value < 0.1 ? 1 : 0)}%`;
  if (Math.abs(value) >= 100) return value.toFixed(0);
  if (Math.abs(value) >= 10) return value.toFixed(1);
  return value.toFixed(2).replace(/\.?0+$/, "") || "0";
}

/**
 * Return an <svg> line chart.
 * series: [{name, colour, points: [[timeMs, value|null], ...]}]
 * options: {title, unit ("%" scales 0..1 as percent), spanMs, now}
 */
export function lineChart(series, { title, unit = "", spanMs = 300000, now = Date.now() }) {
  const svg = el("svg", {
    viewBox: `0 0 ${WIDTH} ${HEIGHT}`,
    class: "chart",
    role: "img",
    "aria-label": title,
  });
  const points = series.reduce((n, s) => n + s.points.filter(([, v]) => v !== null).length, 0);
  svg.dataset.points = String(points);
  svg.append(el("title", {}, title));
  const values = series.flatMap((s) => s.points.map(([, v]) => v)).filter((v) => v !== null);
  const top = unit === "%" ? Math.max(niceMax(Math.max(0, ...values)), 0.01) : niceMax(Math.max(0, ...values));
  const start = now - spanMs;
  const plotW = WIDTH - PAD.left - PAD.right;
  const plotH = HEIGHT - PAD.top - PAD.bottom;
  const x = (t) => PAD.left + ((t - start) / spanMs) * plotW;
  const y = (v) => PAD.top + plotH - (v / top) * plotH;

  for (let i = 0; i <= 4; i += 1) {
    const value = (top * i) / 4;
    svg.append(el("line", { x1: PAD.left, x2: WIDTH - PAD.right, y1: y(value), y2: y(value), class: "grid" }));
    svg.append(el("text", { x: PAD.left - 6, y: y(value) + 4, class: "tick", "text-anchor": "end" }, formatValue(value, unit)));
  }
  for (let minutes = 0; minutes * 60000 <= spanMs; minutes += 1) {
    const t = now - minutes * 60000;
    svg.append(el("text", { x: x(t), y: HEIGHT - 6, class: "tick", "text-anchor": "middle" }, minutes ? `-${minutes}m` : "now"));
  }

  series.forEach((s, index) => {
    const colour = s.colour || COLOURS[index % COLOURS.length];
    const visible = s.points.filter(([t, v]) => v !== null && t >= start);
    // A gap in the data (a poll without samples) breaks the line.
    let run = [];
    const runs = [];
    for (const [t, v] of s.points) {
      if (t < start) continue;
      if (v === null) {
        if (run.length) runs.push(run);
        run = [];
      } else run.push(`${x(t).toFixed(1)},${y(v).toFixed(1)}`);
    }
    if (run.length) runs.push(run);
    for (const line of runs) {
      svg.append(el("polyline", { points: line.join(" "), fill: "none", stroke: colour, "stroke-width": 2, class: "series" }));
    }
    const last = visible[visible.length - 1];
    if (last) svg.append(el("circle", { cx: x(last[0]), cy: y(last[1]), r: 3, fill: colour }));
  });
  return svg;
}
