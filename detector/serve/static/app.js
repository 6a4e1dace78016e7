// The detection service's page: sends images to /v1/detect (or /v1/classify
// for classifiers) and draws the answer. Plain JS, no build step.
'use strict';

// Lower than any slider value, so the slider alone decides what is shown.
const REQUEST_THRESHOLD = 0.05;
const TOP_K = 5;
// The server queues a bounded number of images (503 queue_full beyond it).
const MAX_IN_FLIGHT = 4;
// One colour per class id, so a class looks the same in every card.
const PALETTE = [
  '#e6194b', '#3cb44b', '#4363d8', '#f58231', '#911eb4', '#42d4f4',
  '#f032e6', '#9a6324', '#469990', '#800000', '#808000', '#000075',
  '#bfef45', '#fabed4', '#ffd8b1', '#dcbeff', '#aaffc3', '#a9a9a9',
];

const els = {
  fileInput: document.getElementById('file-input'),
  dropZone: document.getElementById('drop-zone'),
  threshold: document.getElementById('threshold'),
  thresholdValue: document.getElementById('threshold-value'),
  results: document.getElementById('results'),
};

// Every upload waits for this: the task decides the route and the card.
const modelReady = loadModel();

async function loadModel() {
  try {
    const response = await fetch('/v1/model');
    const body = await response.json();
    if (!response.ok) throw new Error(errorText(body, response));
    document.getElementById('model-name').textContent = body.name;
    document.getElementById('model-format').textContent = body.format;
    document.getElementById('model-step').textContent =
        body.step === null ? '–' : String(body.step);
    document.getElementById('model-task').textContent = body.task;
    return body;
  } catch (err) {
    const box = document.getElementById('model-error');
    box.textContent = `Could not read the model: ${err.message}`;
    box.hidden = false;
    return null;  // Uploads still go to /v1/detect; the server answers.
  }
}

function errorText(body, response) {
  if (body && body.error) {
    return body.reason ? `${body.error} (${body.reason})` : body.error;
  }
  return `HTTP ${response.status} ${response.statusText}`;
}

// ---- Input: file chooser and drag & drop --------------------------------

els.fileInput.addEventListener('change', () => {
  handleFiles([...els.fileInput.files]);
  els.fileInput.value = '';  // So choosing the same file again fires.
});

// A drop that misses the zone would otherwise replace the page by the file.
window.addEventListener('dragover', (event) => event.preventDefault());
window.addEventListener('drop', (event) => event.preventDefault());
els.dropZone.addEventListener('dragover', (event) => {
  event.preventDefault();  // Without it the browser opens the file instead.
  els.dropZone.classList.add('dragging');
});
els.dropZone.addEventListener('dragleave', () => {
  els.dropZone.classList.remove('dragging');
});
els.dropZone.addEventListener('drop', (event) => {
  event.preventDefault();
  els.dropZone.classList.remove('dragging');
  handleFiles([...event.dataTransfer.files]);
});

async function handleFiles(files) {
  if (files.length === 0) return;
  const model = await modelReady;
  const classify = model !== null && model.task === 'classification';
  // Cards first, newest batch on top in the order chosen; answers fill
  // them as they come.
  const jobs = files.map((file) => ({file, card: createCard(file)}));
  els.results.prepend(...jobs.map((job) => job.card));
  let next = 0;
  const worker = async () => {
    while (next < jobs.length) {
      const job = jobs[next++];
      await analyse(job.file, job.card, classify);
    }
  };
  const workers = Math.min(MAX_IN_FLIGHT, jobs.length);
  await Promise.all(Array.from({length: workers}, worker));
}

// ---- One image: request and card ----------------------------------------

function createCard(file) {
  const card = document.createElement('article');
  card.className = 'result';
  card.dataset.name = file.name;
  card.dataset.state = 'pending';

  const title = document.createElement('h2');
  title.textContent = file.name;

  const figure = document.createElement('div');
  figure.className = 'figure';
  const img = document.createElement('img');
  img.alt = file.name;
  // Kept for the card's lifetime: the image stays on screen.
  img.src = URL.createObjectURL(file);
  // Not an image the browser can show: no broken-image icon in the card.
  img.addEventListener('error', () => { figure.hidden = true; });
  figure.append(img);

  const status = document.createElement('p');
  status.className = 'status';
  status.textContent = 'Waiting for the server…';

  card.append(title, figure, status);
  return card;
}

async function analyse(file, card, classify) {
  const url = classify ? `/v1/classify?top_k=${TOP_K}`
                       : `/v1/detect?score_threshold=${REQUEST_THRESHOLD}`;
  const start = performance.now();
  let response, body;
  try {
    response = await fetch(url, {
      method: 'POST',
      headers: {'Content-Type': file.type || 'application/octet-stream'},
      body: file,
    });
    body = await response.json().catch(() => null);
  } catch (err) {
    return showError(card, `Request failed: ${err.message}`);
  }
  const roundTrip = performance.now() - start;
  if (!response.ok || body === null) {
    return showError(card, errorText(body, response));
  }
  card.querySelector('.status').remove();
  if (classify) {
    renderTopK(card, body.top_k);
  } else {
    renderBoxes(card, body);
    renderCounts(card);
  }
  renderLatency(card, body.timing_ms.total, roundTrip);
  card.dataset.state = 'done';
}

function showError(card, message) {
  const status = card.querySelector('.status');
  status.className = 'error';
  status.textContent = message;
  card.dataset.state = 'error';
}

function colourOf(classId) {
  return PALETTE[classId % PALETTE.length];
}

function renderBoxes(card, body) {
  const figure = card.querySelector('.figure');
  // Boxes are in pixels of the image as the server decoded it (after EXIF
  // orientation, as the browser shows it); percentages make them follow
  // the image at any displayed size.
  const {width, height} = body.image;
  for (const det of body.detections) {
    const [x0, y0, x1, y1] = det.box_xyxy;
    const box = document.createElement('div');
    box.className = 'box';
    box.dataset.score = String(det.score);
    box.dataset.class = det.class_name;
    box.dataset.classId = String(det.class_id);
    box.style.left = `${(100 * x0) / width}%`;
    box.style.top = `${(100 * y0) / height}%`;
    box.style.width = `${(100 * (x1 - x0)) / width}%`;
    box.style.height = `${(100 * (y1 - y0)) / height}%`;
    box.style.setProperty('--colour', colourOf(det.class_id));
    const label = document.createElement('span');
    label.className = 'label';
    label.textContent = `${det.class_name} ${det.score.toFixed(2)}`;
    box.append(label);
    figure.append(box);
  }
  applyThreshold(card, Number(els.threshold.value));
}

function renderCounts(card) {
  // One row per class the server found; the slider only changes the counts.
  const classes = new Map();
  for (const box of card.querySelectorAll('.box')) {
    classes.set(box.dataset.class, Number(box.dataset.classId));
  }
  const table = document.createElement('table');
  table.className = 'counts';
  table.innerHTML = '<thead><tr><th>class</th><th>shown</th></tr></thead>' +
      '<tbody></tbody><tfoot><tr class="total"><th>total</th><td></td></tr>' +
      '</tfoot>';
  const sorted = [...classes].sort((a, b) => a[1] - b[1]);
  for (const [name, classId] of sorted) {
    const row = document.createElement('tr');
    row.dataset.class = name;
    const nameCell = document.createElement('td');
    nameCell.textContent = name;
    nameCell.style.setProperty('--colour', colourOf(classId));
    row.append(nameCell, document.createElement('td'));
    table.tBodies[0].append(row);
  }
  card.append(table);
  updateCounts(card);
}

function renderTopK(card, topK) {
  const list = document.createElement('ol');
  list.className = 'top-k';
  for (const item of topK) {
    const entry = document.createElement('li');
    entry.dataset.class = item.class_name;
    entry.dataset.probability = String(item.probability);
    entry.style.setProperty('--colour', colourOf(item.class_id));
    entry.style.setProperty('--share', `${100 * item.probability}%`);
    entry.textContent =
        `${item.class_name} ${(100 * item.probability).toFixed(1)}%`;
    list.append(entry);
  }
  card.append(list);
}

function renderLatency(card, serverMs, roundTripMs) {
  const latency = document.createElement('p');
  latency.className = 'latency';
  latency.dataset.serverMs = String(serverMs);
  latency.dataset.roundTripMs = String(roundTripMs);
  latency.textContent = `server ${serverMs.toFixed(1)} ms · ` +
      `round trip ${roundTripMs.toFixed(1)} ms`;
  card.append(latency);
}

// ---- Score slider: filters what is already drawn, no new request ---------

els.threshold.addEventListener('input', () => {
  const threshold = Number(els.threshold.value);
  els.thresholdValue.textContent = threshold.toFixed(2);
  for (const card of els.results.querySelectorAll('.result')) {
    applyThreshold(card, threshold);
  }
});

function applyThreshold(card, threshold) {
  for (const box of card.querySelectorAll('.box')) {
    box.hidden = Number(box.dataset.score) < threshold;
  }
  updateCounts(card);
}

function updateCounts(card) {
  const table = card.querySelector('table.counts');
  if (table === null) return;  // Boxes are drawn before the table exists.
  const counts = new Map();
  for (const box of card.querySelectorAll('.box:not([hidden])')) {
    counts.set(box.dataset.class, (counts.get(box.dataset.class) || 0) + 1);
  }
  let total = 0;
  for (const row of table.tBodies[0].rows) {
    const count = counts.get(row.dataset.class) || 0;
    row.cells[1].textContent = String(count);
    row.classList.toggle('empty', count === 0);
    total += count;
  }
  table.querySelector('tr.total td').textContent = String(total);
}
