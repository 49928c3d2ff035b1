// The web page of `seq2seq serve`: translate with POST /v1/translate, draw the attention of the chosen
// hypothesis as a table (one row per output piece, one column per source piece), show GET /v1/model.
// Plain JavaScript, no libraries: the page works offline.
"use strict";

const $ = (id) => document.getElementById(id);
let lastTranslation = null;

function apiHeaders() {
  const headers = { "Content-Type": "application/json" };
  const key = $("api-key").value.trim();
  if (key) headers["Authorization"] = "Bearer " + key;
  return headers;
}

async function callApi(method, path, body) {
  const response = await fetch(path, {
    method: method,
    headers: apiHeaders(),
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const data = await response.json().catch(() => ({ detail: response.statusText }));
  if (response.status === 401) {
    $("key-label").hidden = false;
  }
  if (!response.ok) {
    throw new Error(data.detail || "HTTP " + response.status);
  }
  return data;
}

function showError(message) {
  $("error").textContent = message;
  $("error").hidden = !message;
}

function options() {
  const chosen = {
    beam: parseInt($("beam").value, 10),
    n_best: parseInt($("n-best").value, 10),
    sample: $("sample").checked,
  };
  if (chosen.sample) chosen.temperature = parseFloat($("temperature").value);
  if (!chosen.sample && chosen.n_best > chosen.beam) chosen.beam = chosen.n_best;
  return chosen;
}

async function translate(event) {
  event.preventDefault();
  const text = $("source").value.trim();
  if (!text) return;
  $("translate").disabled = true;
  showError("");
  try {
    const result = await callApi("POST", "/v1/translate", Object.assign({ text: text, attention: true }, options()));
    lastTranslation = result.translations[0];
    showHypotheses(lastTranslation);
    showAttention(lastTranslation, 0);
    $("output").hidden = false;
  } catch (error) {
    $("output").hidden = true; // not the last sentence's translation under this one
    showError(error.message);
  } finally {
    $("translate").disabled = false;
  }
}

function showHypotheses(translation) {
  const list = $("hypotheses");
  list.replaceChildren();
  translation.hypotheses.forEach((hypothesis, index) => {
    const item = document.createElement("li");
    item.className = "hypothesis" + (index === 0 ? " chosen" : "");
    item.tabIndex = 0; // chosen with the keyboard too (Enter or Space)
    const text = document.createElement("span");
    text.className = "text";
    text.textContent = hypothesis.text || "(empty)";
    const score = document.createElement("span");
    score.className = "score";
    score.textContent = "score " + formatNumber(hypothesis.score) + ", log p " + formatNumber(hypothesis.log_prob);
    item.append(text, score);
    const choose = () => {
      document.querySelectorAll(".hypothesis").forEach((other) => other.classList.remove("chosen"));
      item.classList.add("chosen");
      showAttention(translation, index);
    };
    item.addEventListener("click", choose);
    item.addEventListener("keydown", (event) => {
      if (event.key === "Enter" || event.key === " ") {
        event.preventDefault();
        choose();
      }
    });
    list.append(item);
  });
}

function formatNumber(value) {
  return value === null ? "n/a" : value.toFixed(3);
}

function showAttention(translation, index) {
  const hypothesis = translation.hypotheses[index];
  const table = $("heatmap");
  table.replaceChildren();
  const head = table.createTHead().insertRow();
  head.append(document.createElement("th"));
  translation.source_pieces.forEach((piece, column) => {
    const cell = document.createElement("th");
    cell.className = "src-piece";
    cell.dataset.column = column;
    cell.textContent = piece;
    head.append(cell);
  });
  const body = table.createTBody();
  hypothesis.pieces.forEach((piece, row) => {
    const line = body.insertRow();
    const label = document.createElement("th");
    label.className = "out-piece";
    label.textContent = piece;
    line.append(label);
    hypothesis.attention[row].forEach((weight, column) => {
      const cell = line.insertCell();
      cell.className = "cell";
      cell.dataset.column = column;
      cell.dataset.weight = weight;
      cell.style.backgroundColor = "rgba(37, 99, 235, " + Math.min(1, weight).toFixed(3) + ")";
      cell.title = piece + " <- " + translation.source_pieces[column] + ": " + weight.toFixed(3);
      cell.tabIndex = -1;
      cell.addEventListener("mouseenter", () => highlight(table, line, column, cell.title));
      cell.addEventListener("focus", () => highlight(table, line, column, cell.title));
    });
  });
}

function highlight(table, line, column, info) {
  table.querySelectorAll(".hot").forEach((element) => element.classList.remove("hot"));
  if (line !== null) {
    line.classList.add("hot");
    line.querySelector(".out-piece").classList.add("hot");
    table.querySelectorAll('[data-column="' + column + '"]').forEach((element) => element.classList.add("hot"));
  }
  $("cell-info").textContent = info;
}

async function showModelCard() {
  try {
    const card = await callApi("GET", "/v1/model");
    $("languages").textContent = card.languages.source + " \u2192 " + card.languages.target;
    const checkpoint = card.checkpoints[0];
    const facts = [
      ["languages", card.languages.source + " \u2192 " + card.languages.target],
      ["attention", card.attention.type],
      ["sizes", "embedding " + card.model.embedding_size + ", encoder " + card.model.encoder_hidden_size +
        " x" + card.model.encoder_layers + " (bidirectional GRU), decoder " + card.model.decoder_hidden_size +
        " x" + card.model.decoder_layers + ", input feeding " + card.model.input_feeding],
      ["parameters", card.parameters.toLocaleString("en")],
      ["vocabulary", card.vocabulary.model_type + " SentencePiece, " + card.vocabulary.source_size +
        (card.vocabulary.joint ? " pieces (joint)" : " / " + card.vocabulary.target_size + " pieces")],
      ["checkpoints", card.checkpoints.map((c) => c.name + " (step " + (c.step ?? "n/a") + ", dev BLEU " +
        (c.best_bleu ?? "n/a") + ")").join(", ")],
      ["saved", (checkpoint.run && checkpoint.run.saved_at) || "n/a"],
      ["decoding", "beam " + card.decode.beam + ", alpha " + card.decode.alpha + ", n-best " + card.decode.n_best],
      ["versions", Object.entries(card.versions).map(([name, version]) => name + " " + version).join(", ")],
    ];
    const list = $("model-card");
    list.replaceChildren();
    for (const [name, value] of facts) {
      const term = document.createElement("dt");
      term.textContent = name;
      const detail = document.createElement("dd");
      detail.textContent = value;
      list.append(term, detail);
    }
    $("beam").max = $("n-best").max = card.limits.max_beam;
    $("beam").value = card.decode.beam; // the server's own decoding, within its limits
    $("n-best").value = Math.min(3, card.limits.max_beam);
    $("source").maxLength = card.limits.max_chars;
  } catch (error) {
    showError("model card: " + error.message);
  }
}

$("translate-form").addEventListener("submit", translate);
$("heatmap").addEventListener("mouseleave", () => highlight($("heatmap"), null, null, "\u00a0"));
$("api-key").addEventListener("change", showModelCard);
$("source").addEventListener("keydown", (event) => {
  if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
    event.preventDefault(); // Enter translates; Shift+Enter is a new line
    $("translate-form").requestSubmit();
  }
});
showModelCard();
