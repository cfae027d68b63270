"""The web page (`app.server` serves it): one HTML file with its script, no build step."""

PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>diffusion_keras</title>
<style>
  body { font-family: system-ui, sans-serif; margin: 1.5em; max-width: 70em; }
  fieldset { border: 1px solid #ccc; margin: 0 0 1em 0; }
  label { margin-right: 1em; white-space: nowrap; }
  input[type=number] { width: 6em; }
  #editor { position: relative; width: 256px; height: 256px; display: none; }
  #editor canvas { position: absolute; left: 0; top: 0; width: 256px; height: 256px; }
  #mask { opacity: 0.6; cursor: crosshair; }
  #error { color: #b00020; min-height: 1.2em; }
  .result { border-top: 1px solid #ddd; padding: 0.5em 0; }
  .result img { image-rendering: pixelated; width: 128px; height: 128px; margin: 2px; }
  .result figure { display: inline-block; margin: 0 4px; text-align: center; }
  .settings { font-family: monospace; font-size: 0.85em; color: #444; }
</style>
</head>
<body>
<h1>diffusion_keras</h1>
<p id="model">loading the model's settings...</p>
<fieldset>
  <legend>what to make</legend>
  <label><input type="radio" name="mode" value="generate" checked> generate</label>
  <label><input type="radio" name="mode" value="image-to-image"> image to image</label>
  <label><input type="radio" name="mode" value="inpaint"> inpaint</label>
</fieldset>
<fieldset>
  <legend>sampling</legend>
  <label>seed <input id="seed" type="number" value="0"></label>
  <label>images <input id="num_images" type="number" value="4" min="1"></label>
  <label>steps <input id="steps" type="number" min="1" placeholder="default"></label>
  <label>sampler <select id="sampler"><option value="">default</option></select></label>
</fieldset>
<fieldset id="conditioning" style="display: none">
  <legend>conditioning</legend>
  <label id="class_box">class
    <select id="class_label"><option value="">none</option></select></label>
  <label id="prompt_box">prompt <input id="prompt" size="40"></label>
  <label>guidance <input id="guidance_scale" type="number" step="0.5" min="0"
         placeholder="default"></label>
</fieldset>
<fieldset id="editing" style="display: none">
  <legend>the image to edit</legend>
  <input id="init_image" type="file" accept="image/*">
  <label id="strength_box">strength <input id="strength" type="range" min="0.05" max="1"
         step="0.05" value="0.6"> <span id="strength_value">0.6</span></label>
  <span id="mask_help">draw over what should change</span>
  <button id="clear_mask" type="button">clear mask</button>
  <div id="editor"><canvas id="picture" width="256" height="256"></canvas>
    <canvas id="mask" width="256" height="256"></canvas></div>
</fieldset>
<button id="generate" type="button">generate</button>
<progress id="progress" value="0" max="1"></progress> <span id="status"></span>
<div id="error" role="alert"></div>
<div id="gallery"></div>
<script>
"use strict";
const $ = (id) => document.getElementById(id);
let info = null, upload = null, picture = null, painting = false;

function mode() { return document.querySelector("input[name=mode]:checked").value; }

function showMode() {
  const m = mode();
  $("editing").style.display = m === "generate" ? "none" : "block";
  $("strength_box").style.display = m === "image-to-image" ? "inline" : "none";
  for (const id of ["mask_help", "clear_mask"]) {
    $(id).style.display = m === "inpaint" ? "inline" : "none";
  }
  $("mask").style.display = m === "inpaint" ? "block" : "none";
}

function fail(message) { $("error").textContent = String(message).split("\\n")[0]; }

async function loadInfo() {
  info = await (await fetch("/api/model")).json();
  const d = info.defaults;
  $("model").textContent = `${info.image_size}x${info.image_size} model; default sampling: ` +
    `${d.sampler}, ${d.diffusion_steps} ${d.spacing} steps, eta ${d.eta}`;
  for (const s of info.samplers) $("sampler").add(new Option(s, s));
  for (const c of info.classes) $("class_label").add(new Option(c, c));
  $("num_images").max = info.max_images;
  $("conditioning").style.display = info.classes.length || info.prompts ? "block" : "none";
  $("class_box").style.display = info.classes.length ? "inline" : "none";
  $("prompt_box").style.display = info.prompts ? "inline" : "none";
  if (!info.editing) {
    for (const input of document.querySelectorAll("input[name=mode]")) {
      if (input.value !== "generate") input.disabled = true;
    }
  }
}

$("init_image").addEventListener("change", () => {
  const file = $("init_image").files[0];
  upload = null; picture = null;
  if (!file) return;
  const reader = new FileReader();
  reader.onload = () => {
    upload = reader.result;
    const image = new Image();
    image.onload = () => {
      picture = image;
      $("editor").style.display = "block";
      $("picture").getContext("2d").drawImage(image, 0, 0, 256, 256);
      $("mask").getContext("2d").clearRect(0, 0, 256, 256);
    };
    image.onerror = () => { $("editor").style.display = "none"; };
    image.src = upload;
  };
  reader.readAsDataURL(file);
});

// White strokes: a segment from the last point, so a fast drag leaves no gaps.
let last = null;
function paint(event) {
  if (!painting) return;
  const box = $("mask").getBoundingClientRect();
  const point = [event.clientX - box.left, event.clientY - box.top];
  const context = $("mask").getContext("2d");
  context.strokeStyle = "#fff";
  context.lineWidth = 28;
  context.lineCap = "round";
  context.beginPath();
  context.moveTo(...(last || point));
  context.lineTo(...point);
  context.stroke();
  last = point;
}
$("mask").addEventListener("mousedown", (e) => { painting = true; last = null; paint(e); });
$("mask").addEventListener("mousemove", paint);
window.addEventListener("mouseup", () => { painting = false; last = null; });
$("clear_mask").addEventListener("click",
  () => $("mask").getContext("2d").clearRect(0, 0, 256, 256));
$("strength").addEventListener("input",
  () => { $("strength_value").textContent = $("strength").value; });
for (const input of document.querySelectorAll("input[name=mode]")) {
  input.addEventListener("change", showMode);
}

// The mask at the picture's own size, black (keep) and white (change), no grey.
function maskDataUrl() {
  const w = picture.naturalWidth, h = picture.naturalHeight;
  const canvas = document.createElement("canvas");
  canvas.width = w; canvas.height = h;
  const context = canvas.getContext("2d");
  context.imageSmoothingEnabled = false;
  context.drawImage($("mask"), 0, 0, w, h);
  const pixels = context.getImageData(0, 0, w, h);
  for (let i = 0; i < pixels.data.length; i += 4) {
    const on = pixels.data[i + 3] > 0 ? 255 : 0;
    pixels.data[i] = pixels.data[i + 1] = pixels.data[i + 2] = on;
    pixels.data[i + 3] = 255;
  }
  context.putImageData(pixels, 0, 0);
  return canvas.toDataURL("image/png");
}

function fields() {
  const f = { mode: mode(), seed: $("seed").value, num_images: $("num_images").value,
              steps: $("steps").value, sampler: $("sampler").value,
              class_label: $("class_label").value, prompt: $("prompt").value,
              guidance_scale: $("guidance_scale").value };
  if (f.mode !== "generate") {
    if (!upload) throw new Error("choose an image to edit first");
    f.init_image = upload;
  }
  if (f.mode === "image-to-image") f.strength = $("strength").value;
  if (f.mode === "inpaint") {
    if (!picture) throw new Error("the chosen file is not an image this browser can show");
    f.mask = maskDataUrl();
  }
  return f;
}

function addResult(job, clicked) {
  const entry = document.createElement("div");
  entry.className = "result";
  const settings = document.createElement("div");
  settings.className = "settings";
  const shown = ((performance.now() - clicked) / 1000).toFixed(3);
  entry.dataset.seconds = shown;  // from the click to the images
  settings.textContent = JSON.stringify(job.settings) +
    ` (${job.seconds} s sampling, ${shown} s from the click)`;
  entry.appendChild(settings);
  job.images.forEach((url, index) => {
    const figure = document.createElement("figure");
    const image = document.createElement("img");
    image.className = "generated";
    image.src = url;
    const link = document.createElement("a");
    link.href = url;
    link.download = `seed${job.settings.seed}_${index}.png`;
    link.textContent = "download";
    figure.appendChild(image);
    figure.appendChild(document.createElement("br"));
    figure.appendChild(link);
    entry.appendChild(figure);
  });
  $("gallery").prepend(entry);
}

// Long polling: the server answers when the job has moved on from `version`.
async function follow(id, clicked) {
  let version = -1;
  for (;;) {
    const job = await (await fetch(`/api/jobs/${id}?after=${version}`)).json();
    version = job.version;
    if (job.state === "queued") {
      $("status").textContent = `queued: ${job.place} ahead of it, counting itself`;
    } else if (job.state === "running") {
      $("progress").max = Math.max(job.total, 1); $("progress").value = job.done;
      $("status").textContent = `step ${job.done} of ${job.total || "?"}`;
    } else if (job.state === "done") {
      $("progress").value = $("progress").max; $("status").textContent = "done";
      addResult(job, clicked); return;
    } else {
      $("status").textContent = ""; fail(job.error || "the job failed"); return;
    }
  }
}

$("generate").addEventListener("click", async () => {
  const clicked = performance.now();
  fail("");
  let body;
  try { body = JSON.stringify(fields()); } catch (error) { fail(error.message); return; }
  const answer = await fetch("/api/jobs", { method: "POST", body,
                                            headers: { "Content-Type": "application/json" } });
  const reply = await answer.json();
  if (!answer.ok) { fail(reply.error); return; }
  $("status").textContent = "queued";
  follow(reply.id, clicked).catch((error) => fail(error.message));
});

showMode();
loadInfo().catch((error) => fail("cannot reach the server: " + error.message));
</script>
</body>
</html>
"""
