// A small SVG step chart of our own: counts per time bucket, local-time ticks, vertical markers.
//
// renderChart(container, spec) draws into container at its current width and again whenever
// that width changes; it returns the <svg>. spec:
//   { start: Date, step: ms, series: [{ key, label, values: [n, ...] }],
//     markers: [{ at: Date, kind, short, label }], label: 'accessible description',
//     locale: 'en' | 'zh-CN', height: 260 }
// Colours come from audit.css (.series-KEY, .marker-KIND): no inline styles under a strict CSP.

const SVG = 'http://www.w3.org/2000/svg';
const MINUTE = 60_000;
const TICK_STEPS_MIN = [1, 2, 5, 10, 15, 30, 60, 120, 180, 360, 720, 1440];
const PAD = { top: 22, right: 24, bottom: 28, left: 36 };

function el(name, attrs = {}, parent = null) {
  const node = document.createElementNS(SVG, name);
  for (const [key, value] of Object.entries(attrs)) node.setAttribute(key, String(value));
  if (parent) parent.appendChild(node);
  return node;
}

/** Round to 0.1 px: short paths, stable output. */
function r(n) {
  return Math.round(n * 10) / 10;
}

/** Time ticks at round local-clock minutes, at most maxTicks of them. */
export function timeTicks(startMs, endMs, maxTicks) {
  const span = Math.max(endMs - startMs, MINUTE);
  let step = TICK_STEPS_MIN[TICK_STEPS_MIN.length - 1] * MINUTE;
  for (const minutes of TICK_STEPS_MIN) {
    if (span / (minutes * MINUTE) <= maxTicks) {
      step = minutes * MINUTE;
      break;
    }
  }
  // Align to the local clock (the offset is taken at the start; good enough within a day).
  const offset = new Date(startMs).getTimezoneOffset() * MINUTE;
  const ticks = [];
  for (let t = Math.ceil((startMs - offset) / step) * step + offset; t <= endMs; t += step) {
    ticks.push(t);
  }
  return ticks;
}

/** Integer ticks 0..max with a round step, at most about five. */
export function countTicks(max) {
  const top = Math.max(1, max);
  const rough = top / 4;
  const magnitude = 10 ** Math.floor(Math.log10(Math.max(rough, 1)));
  const step = [1, 2, 5, 10].map((m) => m * magnitude).find((s) => s >= rough) || magnitude * 10;
  const ticks = [];
  for (let v = 0; v <= top + step - 1 && ticks.length < 12; v += Math.max(1, step)) ticks.push(v);
  return ticks;
}

function draw(container, spec, width) {
  const height = spec.height || 260;
  const { start, step, series, markers = [] } = spec;
  const count = Math.max(0, ...series.map((s) => s.values.length));
  const startMs = start.getTime();
  const endMs = startMs + Math.max(count, 1) * step;
  const ticksY = countTicks(Math.max(0, ...series.flatMap((s) => s.values)));
  const yTop = ticksY[ticksY.length - 1] || 1;
  const plotW = Math.max(10, width - PAD.left - PAD.right);
  const plotH = height - PAD.top - PAD.bottom;
  const x = (ms) => PAD.left + ((ms - startMs) / (endMs - startMs)) * plotW;
  const y = (v) => PAD.top + plotH - (v / yTop) * plotH;
  const timeFormat = new Intl.DateTimeFormat(spec.locale, {
    hour: '2-digit',
    minute: '2-digit',
    hourCycle: 'h23',
  });

  const svg = el('svg', {
    class: 'chart',
    role: 'img',
    'aria-label': spec.label,
    width,
    height,
    viewBox: `0 0 ${width} ${height}`,
  });
  el('title', {}, svg).textContent = spec.label;

  const grid = el('g', { class: 'chart-grid' }, svg);
  const axisY = el('g', { class: 'chart-axis chart-axis-y' }, svg);
  for (const v of ticksY) {
    el('line', { x1: PAD.left, x2: PAD.left + plotW, y1: r(y(v)), y2: r(y(v)) }, grid);
    const label = el('text', { x: PAD.left - 6, y: r(y(v)), 'text-anchor': 'end', dy: '0.32em' }, axisY);
    label.textContent = String(v);
  }
  const axisX = el('g', { class: 'chart-axis chart-axis-x' }, svg);
  el('line', { x1: PAD.left, x2: PAD.left + plotW, y1: PAD.top + plotH, y2: PAD.top + plotH }, axisX);
  for (const t of timeTicks(startMs, endMs, Math.max(2, Math.floor(plotW / 70)))) {
    const at = r(x(t));
    el('line', { x1: at, x2: at, y1: PAD.top + plotH, y2: PAD.top + plotH + 4 }, axisX);
    const label = el('text', { x: at, y: height - 8, 'text-anchor': 'middle' }, axisX);
    label.textContent = timeFormat.format(new Date(t));
  }

  for (const s of series) {
    if (!s.values.length) continue;
    // A step path: each bucket's count held across the bucket.
    let d = '';
    s.values.forEach((v, i) => {
      const x0 = r(x(startMs + i * step));
      const x1 = r(x(startMs + (i + 1) * step));
      const yv = r(y(v));
      d += (i === 0 ? `M${x0},${yv}` : `V${yv}`) + `H${x1}`;
    });
    const path = el('path', { class: `series series-${s.key}`, d, fill: 'none' }, svg);
    el('title', {}, path).textContent = s.label;
  }

  const marks = el('g', { class: 'chart-markers' }, svg);
  for (const m of markers) {
    const ms = m.at.getTime();
    if (ms < startMs || ms > endMs) continue;
    const at = r(x(ms));
    const g = el('g', { class: `marker marker-${m.kind}`, 'data-kind': m.kind }, marks);
    el('title', {}, g).textContent = `${timeFormat.format(m.at)} ${m.label}`;
    el('line', { x1: at, x2: at, y1: PAD.top - 4, y2: PAD.top + plotH }, g);
    const text = el('text', { x: at, y: PAD.top - 8, 'text-anchor': 'middle' }, g);
    text.textContent = m.short;
  }
  return svg;
}

function legend(series) {
  const list = document.createElement('ul');
  list.className = 'chart-legend';
  for (const s of series) {
    const item = document.createElement('li');
    const swatch = document.createElement('span');
    swatch.className = `swatch swatch-${s.key}`;
    swatch.setAttribute('aria-hidden', 'true');
    item.append(swatch, s.label);
    list.appendChild(item);
  }
  return list;
}

const observers = new WeakMap();

/** Draw spec into container (replacing what was there) and follow its width. */
export function renderChart(container, spec) {
  observers.get(container)?.disconnect();
  let lastWidth = 0;
  const paint = () => {
    const width = Math.max(280, Math.floor(container.clientWidth || 600));
    if (width === lastWidth) return;
    lastWidth = width;
    container.replaceChildren(draw(container, spec, width), legend(spec.series));
  };
  paint();
  if (typeof ResizeObserver === 'function') {
    const observer = new ResizeObserver(paint);
    observer.observe(container);
    observers.set(container, observer);
  }
  return container.querySelector('svg');
}
