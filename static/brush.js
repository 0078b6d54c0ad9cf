// Freehand brush strokes on a canvas (Brush), shared by the inpaint mask painter (static/mask.js)
// and ControlNet's map editor (static/controlnet.js).
// Pointer events, so mouse, pen and touch all paint (the canvas needs touch-action: none). Points are
// in the canvas's own pixels whatever its size on the screen, and the brush diameter is in screen
// pixels. The owner's options:
//   size(): the brush diameter, in screen pixels;
//   paint(ctx): set the stroke's colour and compositing (ctx is saved and restored around it);
//   start(): before a stroke's first dab (an undo snapshot); end(): after its last.
function Brush(canvas, ctx, options) {
  var self = this;
  this.canvas = canvas;
  this.ctx = ctx;
  this.options = options;
  this.last = null;       // the last point of the stroke being drawn
  this.pointer = null;    // the pointer drawing it
  canvas.addEventListener("pointerdown", function (event) { self.down(event); });
  canvas.addEventListener("pointermove", function (event) { self.move(event); });
  ["pointerup", "pointercancel", "lostpointercapture"].forEach(function (type) {
    canvas.addEventListener(type, function (event) { if (event.pointerId === self.pointer) self.up(); });
  });
}

Brush.prototype.point = function (event) {
  var box = this.canvas.getBoundingClientRect();
  var scale = box.width ? this.canvas.width / box.width : 1;
  return { x: (event.clientX - box.left) * scale, y: (event.clientY - box.top) * scale,
           width: Number(this.options.size()) * scale };
};

Brush.prototype.down = function (event) {
  if (event.button > 0 || this.pointer !== null) return;  // one stroke at a time; no right-button painting
  event.preventDefault();
  this.pointer = event.pointerId;
  try { this.canvas.setPointerCapture(event.pointerId); } catch (e) { /* synthetic events */ }
  if (this.options.start) this.options.start();
  this.last = this.point(event);
  this.stroke(this.last, this.last);
};

Brush.prototype.move = function (event) {
  if (event.pointerId !== this.pointer || !this.last) return;
  event.preventDefault();
  var next = this.point(event);
  this.stroke(this.last, next);
  this.last = next;
};

Brush.prototype.up = function () {
  this.pointer = null;
  this.last = null;
  if (this.options.end) this.options.end();
};

Brush.prototype.stroke = function (from, to) {
  var ctx = this.ctx;
  ctx.save();
  this.options.paint(ctx);
  ctx.lineWidth = to.width;
  ctx.lineCap = "round";
  ctx.lineJoin = "round";
  ctx.beginPath();
  ctx.moveTo(from.x, from.y);
  ctx.lineTo(to.x + (from === to ? 0.01 : 0), to.y);  // a tap paints a dot
  ctx.stroke();
  ctx.restore();
};

export { Brush };
