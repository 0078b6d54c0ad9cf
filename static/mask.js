// The mask painter of the generate page's init-image tools (MaskPainter,
// used by generate.js), its strokes by static/brush.js.
import { $, el } from "./api.js";
import { Brush } from "./brush.js";


// A canvas over the init image, at the image's own pixel size: strokes are
// drawn in a see-through colour, and the PNG sent with the request is white
// where something is painted, black elsewhere (white = repaint).
var MASK_COLOUR = "rgb(255, 64, 160)";

function MaskPainter(canvas, image) {
  var self = this;
  this.canvas = canvas;
  this.image = image;
  this.ctx = canvas.getContext("2d", { willReadFrequently: true });  // coverage() reads it back
  this.erasing = false;
  this.painted = false;   // anything painted since the last clear
  this.brush = new Brush(canvas, this.ctx, {
    size: function () { return $("mask-brush").value; },
    paint: function (ctx) {
      ctx.globalCompositeOperation = self.erasing ? "destination-out" : "source-over";
      ctx.strokeStyle = MASK_COLOUR;
      if (!self.erasing) self.painted = true;
    },
    end: function () { self.changed(); },
  });
  $("mask-brush").addEventListener("input", function () { $("mask-brush-value").textContent = $("mask-brush").value; });
  $("mask-eraser").addEventListener("click", function () {
    self.erasing = !self.erasing;
    $("mask-eraser").setAttribute("aria-pressed", String(self.erasing));
  });
  $("mask-clear").addEventListener("click", function () { self.clear(); });
  $("mask-all").addEventListener("click", function () { self.fillAll(); });
  $("mask-invert").addEventListener("click", function () { self.invert(); });
}

MaskPainter.prototype.reset = function (url, width, height) {
  this.canvas.width = width || 0;
  this.canvas.height = height || 0;
  if (url) this.image.src = url; else this.image.removeAttribute("src");
  this.clear();
};

MaskPainter.prototype.clear = function () {
  this.ctx.clearRect(0, 0, this.canvas.width, this.canvas.height);
  this.painted = false;
  this.changed();
};

MaskPainter.prototype.fillAll = function () {
  this.ctx.fillStyle = MASK_COLOUR;
  this.ctx.fillRect(0, 0, this.canvas.width, this.canvas.height);
  this.painted = true;
  this.changed();
};

MaskPainter.prototype.invert = function () {
  var copy = el("canvas", { width: this.canvas.width, height: this.canvas.height });
  copy.getContext("2d").drawImage(this.canvas, 0, 0);
  this.ctx.save();
  this.ctx.clearRect(0, 0, this.canvas.width, this.canvas.height);
  this.ctx.fillStyle = MASK_COLOUR;
  this.ctx.fillRect(0, 0, this.canvas.width, this.canvas.height);
  this.ctx.globalCompositeOperation = "destination-out";
  this.ctx.drawImage(copy, 0, 0);
  this.ctx.restore();
  this.painted = true;
  this.changed();
};

// The share of the image painted, 0..1 (a pixel counts when it is more than half covered).
MaskPainter.prototype.coverage = function () {
  if (!this.painted || !this.canvas.width || !this.canvas.height) return 0;
  var data = this.ctx.getImageData(0, 0, this.canvas.width, this.canvas.height).data, count = 0;
  for (var i = 3; i < data.length; i += 4) if (data[i] > 127) count++;
  return count / (data.length / 4);
};

MaskPainter.prototype.changed = function () {
  var share = this.coverage();
  $("mask-state").textContent = share === 0 ? "No mask: the whole image changes."
    : "Mask: " + Math.max(1, Math.round(share * 100)) + "% of the image is repainted.";
};

// The mask PNG (white = repaint) as a data URL; null when nothing is painted.
MaskPainter.prototype.toDataURL = function () {
  if (this.coverage() === 0) return null;
  var out = el("canvas", { width: this.canvas.width, height: this.canvas.height }), ctx = out.getContext("2d");
  ctx.drawImage(this.canvas, 0, 0);
  ctx.globalCompositeOperation = "source-in";  // the painted shape, in white
  ctx.fillStyle = "#fff";
  ctx.fillRect(0, 0, out.width, out.height);
  ctx.globalCompositeOperation = "destination-over";  // on black
  ctx.fillStyle = "#000";
  ctx.fillRect(0, 0, out.width, out.height);
  return out.toDataURL("image/png");
};

export { MaskPainter };
