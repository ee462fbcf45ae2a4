// The annotation canvas. Runs as gr.HTML's js_on_load: `element` is the component, `server` calls the Python
// functions in app/ui.py directly (one HTTP request per action, no queue). The mask is edited here, at the image's
// own resolution, and sent back as a PNG only when the annotator changed it.
const $ = (sel) => element.querySelector(sel);
const canvas = $('.ann-canvas');
const ctx = canvas.getContext('2d');
const layer = document.createElement('canvas');  // the mask overlay (fill + outline), redrawn after each edit
const S = {
  task: null, base: null, cam: null, mask: null, proposal: null, W: 0, H: 0,
  tool: 'brush', camOn: true, maskOn: true, edited: false, pos: [], neg: [], box: null,
  history: [], painting: false, last: null, dragStart: null, busy: false, loading: false, drawn: 0, refined: 0,
  zoom: 1, panX: 0, panY: 0, panning: null, spaceDown: false,  // the view: image pixel at the canvas' top left
};
const MAX_ZOOM = 16;

function loadImage(url) {
  return new Promise((resolve, reject) => {
    if (!url) { resolve(null); return; }
    const im = new Image();
    im.onload = () => resolve(im);
    im.onerror = () => reject(new Error('could not decode an image from the server'));
    im.src = url;
  });
}

async function maskFrom(url, w, h) {
  const im = await loadImage(url);
  const c = document.createElement('canvas');
  c.width = w; c.height = h;
  const g = c.getContext('2d');
  g.drawImage(im, 0, 0);
  const data = g.getImageData(0, 0, w, h).data;
  const out = new Uint8Array(w * h);
  for (let i = 0; i < out.length; i++) out[i] = data[4 * i] > 127 ? 1 : 0;
  return out;
}

function fitCanvas() {
  if (!S.W) return;
  const stage = $('.ann-stage');
  const maxW = stage.clientWidth - 8;
  if (maxW <= 0) return;  // the tab is hidden; the ResizeObserver calls again when it shows
  const top = stage.getBoundingClientRect().top + window.scrollY;  // fit below the header, in the window
  const maxH = Math.max(320, window.innerHeight - top - 16);
  const scale = Math.min(maxW / S.W, maxH / S.H);
  const cssW = Math.max(1, Math.floor(S.W * scale)), cssH = Math.max(1, Math.floor(S.H * scale));
  const dpr = window.devicePixelRatio || 1;
  if (canvas.style.width === `${cssW}px` && canvas.style.height === `${cssH}px` && canvas.dataset.fitted === S.key) {
    return;
  }
  canvas.dataset.fitted = S.key;
  canvas.style.width = `${cssW}px`;
  canvas.style.height = `${cssH}px`;
  canvas.width = Math.round(cssW * dpr);  // drawn at screen resolution: crisp outlines at any zoom
  canvas.height = Math.round(cssH * dpr);
  if (S.mask) { rebuildLayer(); draw(); }
}

const small = document.createElement('canvas');  // the mask at image resolution

function rebuildLayer() {
  const { W, H, mask } = S;
  small.width = W; small.height = H;
  const sg = small.getContext('2d');
  const img = sg.createImageData(W, H);
  for (let i = 0; i < mask.length; i++) if (mask[i]) img.data[4 * i + 3] = 255;
  sg.putImageData(img, 0, 0);
  const CW = canvas.width, CH = canvas.height;
  layer.width = CW; layer.height = CH;
  const g = layer.getContext('2d', { willReadFrequently: true });
  g.imageSmoothingEnabled = false;
  g.drawImage(small, 0, 0, CW, CH);
  const big = g.getImageData(0, 0, CW, CH);
  const d = big.data;
  const t = Math.max(1, Math.round(window.devicePixelRatio || 1));  // outline thickness in device pixels
  const off = (x, y) => x < 0 || y < 0 || x >= CW || y >= CH || d[4 * (y * CW + x) + 3] === 0;
  const edge = new Uint8Array(CW * CH);
  for (let y = 0; y < CH; y++) {
    for (let x = 0; x < CW; x++) {
      if (d[4 * (y * CW + x) + 3] === 0) continue;
      for (let k = 1; k <= 2 * t; k++) {
        if (off(x - k, y) || off(x + k, y) || off(x, y - k) || off(x, y + k)) { edge[y * CW + x] = 1; break; }
      }
    }
  }
  for (let i = 0; i < edge.length; i++) {
    if (d[4 * i + 3] === 0) continue;
    if (edge[i]) { d[4 * i] = 40; d[4 * i + 1] = 255; d[4 * i + 2] = 40; d[4 * i + 3] = 255; }
    else { d[4 * i] = 0; d[4 * i + 1] = 255; d[4 * i + 2] = 0; d[4 * i + 3] = 40; }
  }
  g.putImageData(big, 0, 0);
}

function draw() {
  const CW = canvas.width, CH = canvas.height;
  ctx.setTransform(1, 0, 0, 1, 0, 0);
  ctx.clearRect(0, 0, CW, CH);
  if (!S.base) return;
  const z = S.zoom, k0 = CW / S.W;  // k0: image -> canvas pixels with the whole image in view
  ctx.setTransform(z, 0, 0, z, -S.panX * k0 * z, -S.panY * k0 * z);
  ctx.imageSmoothingEnabled = z < 3;  // zoomed in, each image pixel shows as a square
  ctx.drawImage(S.base, 0, 0, CW, CH);
  if (S.camOn && S.cam) ctx.drawImage(S.cam, 0, 0, CW, CH);
  if (S.maskOn) ctx.drawImage(layer, 0, 0);
  const k = k0 * z;  // image -> canvas pixels in the current view
  const dpr = window.devicePixelRatio || 1;
  ctx.setTransform(k, 0, 0, k, -S.panX * k, -S.panY * k);
  const line = 2 * dpr / k;
  if (S.box) {
    ctx.strokeStyle = '#ffd400'; ctx.lineWidth = line; ctx.setLineDash([4 * line, 3 * line]);
    const [x0, y0, x1, y1] = S.box;
    ctx.strokeRect(x0, y0, x1 - x0, y1 - y0);
    ctx.setLineDash([]);
  }
  const r = 5 * dpr / k;
  for (const [list, color] of [[S.pos, '#00e676'], [S.neg, '#ff1744']]) {
    for (const [x, y] of list) {
      ctx.beginPath(); ctx.arc(x, y, r, 0, 2 * Math.PI);
      ctx.fillStyle = color; ctx.fill(); ctx.lineWidth = line * 0.75; ctx.strokeStyle = '#fff'; ctx.stroke();
    }
  }
  ctx.setTransform(1, 0, 0, 1, 0, 0);
}

const fmt = (v, digits = 3) => (v === null || v === undefined ? '—' : Number(v).toFixed(digits));

function showFacts() {
  const t = S.task;
  $('.ann-facts').innerHTML = t.image_id === null ? '' :
    `<div><b>P(target present)</b> ${t.probability === null ? '— (untrained)' : fmt(t.probability)}</div>` +
    `<div><b>Uncertainty</b> ${fmt(t.uncertainty)}</div>` +
    `<div><b>Prompt box</b> ${S.box ? S.box.map((v) => Math.round(v)).join(', ') : '—'}` +
    `${t.box_is_fallback && !S.edited ? ' (central fallback: CAM found nothing)' : ''}</div>` +
    `<div><b>Mask</b> <span class="ann-pixels">${S.mask ? S.mask.reduce((a, b) => a + b, 0) : 0}</span> px` +
    `${S.edited ? ' (edited)' : ''}</div>`;
}

function say(text, error = false) {
  const box = $('.ann-message');
  box.textContent = text || '';
  box.classList.toggle('error', error);
}

async function show(t) {
  // S.task (the view every action answers) changes together with the mask and size it belongs to, after the
  // pictures are decoded; until then no action is sent: an accept pressed meanwhile sent the previous image's mask
  // with the new image's view (same size: saved on the new image as the annotator's own)
  S.loading = true;
  try {
    await showTask(t);
  } finally {
    S.loading = false;
  }
}

async function showTask(t) {
  element.dataset.annotator = t.annotator || '';
  $('.ann-counts').textContent = `${t.done} done · ${t.left} left · you are ${t.annotator}`;
  $('.ann-model').textContent = `${t.model_note} ${t.trainer ? '· ' + t.trainer : ''}`;
  $('[data-act="undo"]').title = t.last_save ? `Withdraw your last save (${t.last_save.image}) and go back to it (U)`
    : 'Nothing of yours to undo';
  const empty = t.image_id === null;
  $('.ann-empty').hidden = !empty;
  canvas.hidden = empty;
  if (empty) {
    $('.ann-title').textContent = 'Queue empty';
    S.task = t; S.base = null; S.W = 0; showFacts(); say(t.message);
    element.dataset.imageId = '';
    element.dataset.drawn = String(++S.drawn);
    return;
  }
  const [base, cam, mask] = await Promise.all([loadImage(t.image), loadImage(t.cam), maskFrom(t.mask, t.width, t.height)]);
  Object.assign(S, { task: t, key: `${t.image_id}-${S.drawn}`, base, cam, mask, proposal: mask.slice(), W: t.width, H: t.height, pos: [], neg: [],
                     box: t.box ? t.box.slice() : null, history: [], edited: false, keptAt: Date.now() });
  setView(1, 0, 0);  // each image starts whole
  showWindow(t.window, t.range);
  $('.ann-title').textContent = `${t.name} (image ${t.image_id}, ${t.width}×${t.height})` +
    (t.skipped_before ? ' · skipped before' : '');
  if (t.model === 'pretrained') setTool('box');  // no proposal before the first round: one drag gives the mask
  fitCanvas(); showFacts(); say(t.message);
  element.dataset.imageId = String(t.image_id);
  element.dataset.drawn = String(++S.drawn);  // tests and the latency benchmark wait on this counter
}

async function call(name, args) {
  if (S.busy || S.loading) return null;
  S.busy = true;
  let stale = null;
  try {
    const result = await server[name](args);
    if (!result) throw new Error('no answer from the server (see its log)');
    if (result.error) { stale = result.stale ? result.error : null; throw new Error(result.error); }
    return result;
  } catch (err) {
    say(`${name} failed: ${err && err.message ? err.message : err}`, true);
    return null;
  } finally {
    S.busy = false;
    if (stale) reload(stale);
  }
}

const KEEP_EVERY_MS = 60000;  // the 10-minute lease: brush strokes reach the server only with the save

async function keepLease() {  // the annotator is still here: keep their lease (not through call(): never busy)
  const t = S.task;
  if (!t || t.image_id === null || Date.now() - (S.keptAt || 0) < KEEP_EVERY_MS) return;
  S.keptAt = Date.now();
  try {
    const r = await server.keep({ view: t.view });
    if (r && r.error && !r.stale) say(`${r.error} (your edits stay on screen)`, true);
  } catch (err) {
    // a lost keep-alive is no error of its own: the save will say if the image went to someone else
  }
}

async function reload(why) {
  // The server no longer knows the proposal on screen (saved, too old, or it restarted): show the current one,
  // keeping the annotator's edits when it is the same image, so a server restart costs no drawing.
  const kept = S.task && S.edited ? { id: S.task.image_id, mask: S.mask, pos: S.pos, neg: S.neg, box: S.box } : null;
  const t = await call('task', {});
  if (!t) return;
  await show(t);
  if (kept && t.image_id === kept.id) {
    Object.assign(S, { mask: kept.mask, pos: kept.pos, neg: kept.neg, box: kept.box, edited: true });
    rebuildLayer(); draw(); showFacts();
    why += ' Your edits are kept: save again.';
  }
  say(why, true);
}

function encodeMask() {
  const c = document.createElement('canvas');
  c.width = S.W; c.height = S.H;
  const g = c.getContext('2d');
  const img = g.createImageData(S.W, S.H);
  for (let i = 0; i < S.mask.length; i++) {
    const v = S.mask[i] ? 255 : 0;
    img.data[4 * i] = v; img.data[4 * i + 1] = v; img.data[4 * i + 2] = v; img.data[4 * i + 3] = 255;
  }
  g.putImageData(img, 0, 0);
  return c.toDataURL('image/png');
}

async function act(name) {
  const t = S.task;
  if (name === 'reset') { resetToProposal(); return; }
  if (name !== 'undo' && (!t || t.image_id === null)) return;
  if (name === 'undo' && S.edited && !window.confirm('Undo your last save? The unsaved edits on this image '
                                                   + 'will be lost.')) return;
  const drops = { no_finding: 'Mark this image "no finding"', skip: 'Skip this image', tag: 'Tag it without a mask' };
  if (drops[name] && S.edited && !window.confirm(`${drops[name]}? Your unsaved drawing on it will be lost.`)) return;
  const args = { view: t ? t.view : null };  // the showing this action answers
  if (name === 'undo' && t && t.last_save) args.save = t.last_save.id;  // a repeated request cannot undo twice
  if (name === 'accept') args.mask = S.edited ? encodeMask() : null;
  const next = await call(name, args);
  if (next) await show(next);
}

function resetToProposal() {
  if (!S.proposal) return;
  pushHistory();
  S.mask = S.proposal.slice(); S.pos = []; S.neg = []; S.box = S.task.box ? S.task.box.slice() : null;
  S.edited = false; rebuildLayer(); draw(); showFacts();
}

function pushHistory() {
  S.history.push({ mask: S.mask.slice(), pos: S.pos.slice(), neg: S.neg.slice(), box: S.box && S.box.slice(),
                   edited: S.edited });
  if (S.history.length > 30) S.history.shift();
}

function undoEdit() {
  const h = S.history.pop();
  if (!h) return;
  Object.assign(S, h); rebuildLayer(); draw(); showFacts();
}

async function refine() {
  const t = S.task;
  const started = performance.now();
  const r = await call('refine', { view: t.view, positive: S.pos, negative: S.neg, box: S.box });
  if (!r || !S.task || S.task.image_id !== r.image_id) return;
  S.mask = await maskFrom(r.mask, S.W, S.H);
  S.box = r.box;  // the box SAM was given (clicks edit it for LiteMedSAM): later clicks edit it further
  S.edited = true; rebuildLayer(); draw(); showFacts();
  element.dataset.refined = String(++S.refined);
  say(`SAM redrew the mask: ${r.ms} ms on the server, ${Math.round(performance.now() - started)} ms in all`);
}

function toImage(ev) {
  const rect = canvas.getBoundingClientRect();
  return [S.panX + (ev.clientX - rect.left) * S.W / rect.width / S.zoom,
          S.panY + (ev.clientY - rect.top) * S.H / rect.height / S.zoom];
}

function brushRadius() {  // the slider is in screen pixels: a zoomed-in brush paints finer
  const rect = canvas.getBoundingClientRect();
  return Math.max(0.5, Number($('.ann-brush').value) / 2 * S.W / rect.width / S.zoom);
}

// -- volumes: PageDown / PageUp save an edited slice, then go to the next / previous unlabeled slice; the mask left
// behind prompts SAM on the new slice (its box) when the model proposes nothing there: lesions change little --

function maskBox(mask, W, H) {
  let x0 = W, y0 = H, x1 = -1, y1 = -1;
  for (let y = 0; y < H; y++) {
    for (let x = 0; x < W; x++) {
      if (mask[y * W + x]) { x0 = Math.min(x0, x); y0 = Math.min(y0, y); x1 = Math.max(x1, x); y1 = Math.max(y1, y); }
    }
  }
  return x1 < 0 ? null : [x0, y0, x1 + 1, y1 + 1];
}

async function page(step) {  // edited: the slice is saved first
  if (!S.task || S.task.image_id === null) return;
  const before = { id: S.task.image_id, box: S.mask ? maskBox(S.mask, S.W, S.H) : null, W: S.W, H: S.H };
  const t = S.edited ? await call('accept', { view: S.task.view, mask: encodeMask(), step })
    : await call('page_slice', { view: S.task.view, step });
  if (!t) return;
  if (t.image_id === S.task.image_id && !S.edited) {  // nowhere to go: stay on the same showing, keep the zoom
    S.task.view = t.view;
    say(t.message);
    return;
  }
  await show(t);
  // the box only on the neighbouring slice itself (not on the queue's next image when no slice was free)
  if (before.box && t.paged_from === before.id && before.W === S.W && before.H === S.H && !S.mask.some((v) => v)) {
    S.box = before.box;
    await refine();
    say(`${t.message}: the previous slice's box prompted this mask`);
  }
}

// -- window/level: the server re-renders the image from its stored values (an 8-bit picture cannot be re-windowed
// here without losing what its first window clipped); sliders span the image's values, starting at its own window --

let windowTimer = null;

function showWindow(own, range) {
  const [low, high] = range;
  const span = Math.max(high - low, 1e-6);
  const level = $('.ann-level'), width = $('.ann-width');
  level.min = String(low); level.max = String(high); level.value = String(own[0]);
  width.min = String(span / 256); width.max = String(2 * span); width.value = String(own[1]);
  element.dataset.window = `${Number(level.value)},${Number(width.value)}`;
}

function applyWindow() {
  clearTimeout(windowTimer);
  windowTimer = setTimeout(async () => {  // one request per pause, not per slider step
    const center = Number($('.ann-level').value), width = Number($('.ann-width').value);
    const r = await call('display', { view: S.task.view, center, width });
    if (!r || r.image_id !== S.task.image_id) return;
    S.base = await loadImage(r.image);
    element.dataset.window = `${r.window[0]},${r.window[1]}`;
    draw();
  }, 120);
}

$('.ann-level').addEventListener('input', applyWindow);
$('.ann-width').addEventListener('input', applyWindow);

// -- zoom and pan: the wheel zooms around the pointer, right-drag or Space+drag pans, 0 (or Fit) shows it all --

function setView(zoom, panX, panY) {
  S.zoom = Math.min(MAX_ZOOM, Math.max(1, zoom));
  S.panX = Math.min(Math.max(0, panX), S.W - S.W / S.zoom);
  S.panY = Math.min(Math.max(0, panY), S.H - S.H / S.zoom);
  element.dataset.zoom = S.zoom.toFixed(4);
  element.dataset.pan = `${S.panX.toFixed(2)},${S.panY.toFixed(2)}`;
}

function zoomAt(ev, factor) {
  const rect = canvas.getBoundingClientRect();
  const [x, y] = toImage(ev);  // this image point stays under the pointer
  const zoom = Math.min(MAX_ZOOM, Math.max(1, S.zoom * factor));
  setView(zoom, x - (ev.clientX - rect.left) * S.W / rect.width / zoom,
          y - (ev.clientY - rect.top) * S.H / rect.height / zoom);
  draw();
}

canvas.addEventListener('wheel', (ev) => {
  if (!S.base) return;
  ev.preventDefault();
  zoomAt(ev, ev.deltaY < 0 ? 1.25 : 0.8);
}, { passive: false });
canvas.addEventListener('contextmenu', (ev) => ev.preventDefault());  // right-drag pans

function stamp(x, y, value) {
  const r = brushRadius();
  const { W, H, mask } = S;
  for (let yy = Math.max(0, Math.floor(y - r)); yy <= Math.min(H - 1, Math.ceil(y + r)); yy++) {
    for (let xx = Math.max(0, Math.floor(x - r)); xx <= Math.min(W - 1, Math.ceil(x + r)); xx++) {
      if ((xx - x) ** 2 + (yy - y) ** 2 <= r * r) mask[yy * W + xx] = value;
    }
  }
}

function strokeTo(x, y) {
  const value = S.tool === 'brush' ? 1 : 0;
  const [lx, ly] = S.last || [x, y];
  const steps = Math.max(1, Math.ceil(Math.hypot(x - lx, y - ly) / Math.max(1, brushRadius() / 2)));
  for (let k = 1; k <= steps; k++) stamp(lx + (x - lx) * k / steps, ly + (y - ly) * k / steps, value);
  S.last = [x, y];
  S.edited = true;
  rebuildLayer(); draw();
}

canvas.addEventListener('pointerdown', (ev) => {
  if (!S.base) return;
  if (ev.button === 2 || ev.button === 1 || S.spaceDown) {
    ev.preventDefault();
    canvas.setPointerCapture(ev.pointerId);
    S.panning = [ev.clientX, ev.clientY, S.panX, S.panY];
    return;
  }
  if (S.busy) return;
  ev.preventDefault();
  const [x, y] = toImage(ev);
  if (S.tool === 'brush' || S.tool === 'eraser') {
    pushHistory();
    canvas.setPointerCapture(ev.pointerId);
    S.painting = true; S.last = null; strokeTo(x, y);
  } else if (S.tool === 'positive' || S.tool === 'negative') {
    pushHistory();
    (S.tool === 'positive' ? S.pos : S.neg).push([Math.round(x), Math.round(y)]);
    draw(); refine();
  } else if (S.tool === 'box') {
    canvas.setPointerCapture(ev.pointerId);
    S.dragStart = [x, y];
  }
});

canvas.addEventListener('pointermove', (ev) => {
  if (S.panning) {
    const rect = canvas.getBoundingClientRect();
    const [cx, cy, px, py] = S.panning;
    setView(S.zoom, px - (ev.clientX - cx) * S.W / rect.width / S.zoom, py - (ev.clientY - cy) * S.H / rect.height / S.zoom);
    draw();
  } else if (S.painting) { const [x, y] = toImage(ev); strokeTo(x, y); }
  else if (S.dragStart) {
    const [x, y] = toImage(ev);
    const [x0, y0] = S.dragStart;
    S.box = [Math.min(x0, x), Math.min(y0, y), Math.max(x0, x), Math.max(y0, y)];
    draw();
  }
});

canvas.addEventListener('pointerup', () => {
  if (S.panning) { S.panning = null; return; }
  if (S.painting) { S.painting = false; showFacts(); keepLease(); }
  if (S.dragStart) {
    S.dragStart = null;
    if (S.box && S.box[2] - S.box[0] > 2 && S.box[3] - S.box[1] > 2) {
      pushHistory();
      S.box = S.box.map((v) => Math.round(v));
      refine();
    }
  }
});

function setTool(tool) {
  S.tool = tool;
  element.querySelectorAll('[data-tool]').forEach((b) => b.classList.toggle('active', b.dataset.tool === tool));
}

element.querySelectorAll('[data-tool]').forEach((b) => b.addEventListener('click', () => setTool(b.dataset.tool)));
element.querySelectorAll('[data-act]').forEach((b) => b.addEventListener('click', () => act(b.dataset.act)));
$('.ann-fit').addEventListener('click', () => { setView(1, 0, 0); draw(); });
$('.ann-cam').addEventListener('change', (ev) => { S.camOn = ev.target.checked; draw(); });
$('.ann-mask').addEventListener('change', (ev) => { S.maskOn = ev.target.checked; draw(); });
new ResizeObserver(() => fitCanvas()).observe($('.ann-stage'));

const KEYS = { a: 'accept', enter: 'accept', f: 'no_finding', t: 'tag', s: 'skip', u: 'undo', r: 'reset' };
const TOOLS = { b: 'brush', e: 'eraser', p: 'positive', n: 'negative', x: 'box' };
document.addEventListener('keydown', (ev) => {
  if (!element.isConnected || element.offsetParent === null) return;  // another tab is showing
  const target = ev.target;
  if (target && (target.isContentEditable || ['INPUT', 'TEXTAREA', 'SELECT'].includes(target.tagName)) &&
      target.type !== 'checkbox' && target.type !== 'range') return;
  const key = ev.key.toLowerCase();
  if (key === ' ') { ev.preventDefault(); S.spaceDown = true; return; }  // held: drag pans
  if ((ev.ctrlKey || ev.metaKey) && key === 'z') { ev.preventDefault(); undoEdit(); return; }
  if (ev.ctrlKey || ev.metaKey || ev.altKey) return;
  if (KEYS[key]) { ev.preventDefault(); if (!ev.repeat) act(KEYS[key]); }  // a held key is one action, not a burst
  else if (TOOLS[key]) { setTool(TOOLS[key]); }
  else if (key === '0') { setView(1, 0, 0); draw(); }
  else if (key === 'pagedown' || key === 'pageup') { ev.preventDefault(); page(key === 'pagedown' ? 1 : -1); }
  else if (key === 'w' && S.task && S.task.window) { showWindow(S.task.window, S.task.range); applyWindow(); }
  else if (key === 'c') { const box = $('.ann-cam'); box.checked = !box.checked; S.camOn = box.checked; draw(); }
  else if (key === 'm') { const box = $('.ann-mask'); box.checked = !box.checked; S.maskOn = box.checked; draw(); }
  else if (key === '[' || key === ']') {
    const slider = $('.ann-brush');
    slider.value = String(Number(slider.value) + (key === ']' ? 3 : -3));
  }
});

document.addEventListener('keyup', (ev) => { if (ev.key === ' ') S.spaceDown = false; });

setTool('brush');
call('task', {}).then((t) => t && show(t));
