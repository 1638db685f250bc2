// A small rolling line chart on a <canvas>: messages in and out per second.

function niceMax(value) {
  if (value <= 1) return 1;
  const power = 10 ** Math.floor(Math.log10(value));
  for (const step of [1, 2, 2.5, 5, 10]) {
    if (value <= step * power) return step * power;
  }
  return 10 * power;
}

export class RateChart {
  /**
   * @param canvas  the <canvas> to draw on (its CSS size decides the drawing size)
   * @param series  [{key, label, colorVar}] drawn from each point's [key]
   * @param length  how many points fit across
   */
  constructor(canvas, series, { length = 60, emptyText = "waiting for data" } = {}) {
    this.canvas = canvas;
    this.series = series;
    this.length = length;
    this.emptyText = emptyText;
    this.points = [];
    if (typeof ResizeObserver !== "undefined") {
      this._observer = new ResizeObserver(() => this.draw());
      this._observer.observe(canvas);
    }
    if (window.matchMedia) {
      window.matchMedia("(prefers-color-scheme: dark)").addEventListener?.("change", () => this.draw());
    }
  }

  setPoints(points) {
    this.points = points.slice(-this.length);
    this.draw();
  }

  _color(name, fallback) {
    const value = getComputedStyle(this.canvas).getPropertyValue(name).trim();
    return value || fallback;
  }

  draw() {
    const canvas = this.canvas;
    const ratio = window.devicePixelRatio || 1;
    const width = canvas.clientWidth;
    const height = canvas.clientHeight;
    if (!width || !height) return;
    if (canvas.width !== Math.round(width * ratio) || canvas.height !== Math.round(height * ratio)) {
      canvas.width = Math.round(width * ratio);
      canvas.height = Math.round(height * ratio);
    }
    const ctx = canvas.getContext("2d");
    ctx.setTransform(ratio, 0, 0, ratio, 0, 0);
    ctx.clearRect(0, 0, width, height);

    const grid = this._color("--grid", "#ddd");
    const muted = this._color("--muted", "#777");
    const font = `12px ${getComputedStyle(document.body).fontFamily}`;
    ctx.font = font;

    const left = 44;
    const right = width - 8;
    const top = 8;
    const bottom = height - 18;

    let max = 0;
    for (const point of this.points) {
      for (const s of this.series) max = Math.max(max, point[s.key] || 0);
    }
    max = niceMax(max);

    // grid lines and labels
    ctx.strokeStyle = grid;
    ctx.fillStyle = muted;
    ctx.lineWidth = 1;
    ctx.textAlign = "right";
    ctx.textBaseline = "middle";
    for (let i = 0; i <= 4; i += 1) {
      const y = Math.round(bottom - ((bottom - top) * i) / 4) + 0.5;
      ctx.beginPath();
      ctx.moveTo(left, y);
      ctx.lineTo(right, y);
      ctx.stroke();
      const label = (max * i) / 4;
      ctx.fillText(Number.isInteger(label) ? String(label) : label.toFixed(1), left - 6, y);
    }
    ctx.textAlign = "left";
    ctx.textBaseline = "alphabetic";
    ctx.fillText("msg/s", 2, height - 4);

    if (this.points.length < 2) {
      ctx.textAlign = "center";
      ctx.fillText(this.emptyText, (left + right) / 2, (top + bottom) / 2);
      return;
    }

    const step = (right - left) / (this.length - 1);
    const offset = this.length - this.points.length;
    for (const s of this.series) {
      ctx.strokeStyle = this._color(s.colorVar, "#06c");
      ctx.lineWidth = 2;
      ctx.lineJoin = "round";
      ctx.beginPath();
      this.points.forEach((point, i) => {
        const x = left + (offset + i) * step;
        const y = bottom - ((point[s.key] || 0) / max) * (bottom - top);
        if (i === 0) ctx.moveTo(x, y);
        else ctx.lineTo(x, y);
      });
      ctx.stroke();
    }
  }
}
