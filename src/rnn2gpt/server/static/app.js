// The rnn2gpt playground: one page, no build step, nothing fetched from any other host.
//
// It lists the server's models, sends the same prompt and seed to every model picked (their
// outputs stream side by side, one column each), and shows each generated token shaded by its
// probability. Hovering a token lists the alternatives the model weighed (logprobs: 5); clicking
// one continues the text from that token instead ("branch here").
"use strict";

const state = {
  models: [],          // cards from /v1/models
  controllers: [],     // one AbortController per running column
  key: localStorage.getItem("rnn2gpt-key") || "",
};

const $ = (id) => document.getElementById(id);

function headers() {
  const h = { "Content-Type": "application/json" };
  if (state.key) h.Authorization = "Bearer " + state.key;
  return h;
}

async function api(path, body, signal) {
  const response = await fetch(path, {
    method: body === undefined ? "GET" : "POST",
    headers: headers(),
    body: body === undefined ? undefined : JSON.stringify(body),
    signal,
  });
  if (response.status === 401) {
    $("apikey-panel").hidden = false;
    throw new Error("this server needs an API key");
  }
  if (!response.ok) {
    let message = response.statusText;
    try { message = (await response.json()).error.message; } catch (e) { /* keep the status */ }
    throw new Error(message);
  }
  return response;
}

// ---------------------------------------------------------------------------- models

async function loadModels() {
  try {
    const response = await api("/v1/models");
    state.models = (await response.json()).data;
  } catch (error) {
    $("models").innerHTML = "";
    $("models").append(note(error.message));
    return;
  }
  const box = $("models");
  box.innerHTML = "";
  state.models.forEach((card, i) => {
    const label = document.createElement("label");
    label.className = "model-choice";
    const input = document.createElement("input");
    input.type = "checkbox";
    input.value = card.id;
    input.checked = i === 0;
    input.addEventListener("change", updatePromptLabel);
    const name = document.createElement("span");
    name.textContent = `${card.id}`;
    const about = document.createElement("small");
    about.textContent = ` ${card.architecture}, ${card.task}`;
    label.append(input, name, about);
    box.append(label);
  });
  updatePromptLabel();
}

function chosenModels() {
  const ids = [...document.querySelectorAll("#models input:checked")].map((i) => i.value);
  return state.models.filter((card) => ids.includes(card.id));
}

function updatePromptLabel() {
  const picked = chosenModels();
  const source = picked.length > 0 && picked.every((card) => card.task !== "lm");
  $("prompt-label").textContent = source ? "Source text" : "Prompt";
}

// ---------------------------------------------------------------------------- settings

function settings() {
  const value = (id) => Number($(id).value);
  return {
    temperature: value("temperature"),
    top_p: value("top_p"),
    top_k: value("top_k"),
    max_tokens: value("max_tokens"),
    seed: value("seed"),
    num_beams: value("num_beams"),
  };
}

for (const id of ["temperature", "top_p", "top_k", "max_tokens", "seed", "num_beams"]) {
  const show = () => { $(id + "-value").textContent = $(id).value; };
  $(id).addEventListener("input", show);
  show();
}

// ---------------------------------------------------------------------------- generating

function column(card) {
  const col = document.createElement("article");
  col.className = "column";
  col.dataset.model = card.id;
  const title = document.createElement("h2");
  title.textContent = card.id;
  const text = document.createElement("div");
  text.className = "text";
  const prompt = document.createElement("span");
  prompt.className = "prompt";
  text.append(prompt);
  col.append(title, text);
  return col;
}

async function generate() {
  stop();
  const picked = chosenModels();
  if (picked.length === 0) { $("status").textContent = "pick a model"; return; }
  const prompt = $("prompt").value;
  const output = $("output");
  output.innerHTML = "";
  output.style.setProperty("--columns", String(picked.length));
  $("generate").disabled = true;
  $("stop").disabled = false;
  $("status").textContent = "generating...";
  const runs = picked.map((card) => {
    const col = column(card);
    output.append(col);
    const controller = new AbortController();
    state.controllers.push(controller);
    const run = card.task === "lm" ? complete : transform;
    return run(card, prompt, col, controller.signal).catch((error) => {
      if (error.name !== "AbortError") col.append(note(error.message));
    });
  });
  await Promise.all(runs);
  $("generate").disabled = false;
  $("stop").disabled = true;
  $("status").textContent = state.controllers.some((c) => c.signal.aborted) ? "stopped" : "done";
  state.controllers = [];
}

function stop() {
  for (const controller of state.controllers) controller.abort();
}

// A language model: stream /v1/completions, one span per token.
async function complete(card, prompt, col, signal) {
  const s = settings();
  col.querySelector(".prompt").textContent = prompt;
  const body = {
    model: card.id, prompt, stream: true, logprobs: 5,
    max_tokens: await tokensThatFit(card, prompt, s.max_tokens, signal),
    temperature: s.temperature, top_p: s.top_p, top_k: s.top_k, seed: s.seed,
  };
  const response = await api("/v1/completions", body, signal);
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  const text = col.querySelector(".text");
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += decoder.decode(value, { stream: true });
    let cut;
    while ((cut = buffer.indexOf("\n\n")) >= 0) {
      const event = buffer.slice(0, cut).trim();
      buffer = buffer.slice(cut + 2);
      if (!event.startsWith("data: ")) continue;
      const data = event.slice(6);
      if (data === "[DONE]") return;
      const chunk = JSON.parse(data);
      if (chunk.error) throw new Error(chunk.error.message);
      for (const choice of chunk.choices) addToken(text, choice);
    }
  }
}

// A GPT cannot write past its context: ask for at most what fits after the prompt, so a short
// model still answers (a column says when the prompt alone fills the context).
async function tokensThatFit(card, prompt, wanted, signal) {
  if (!card.context) return wanted;
  const response = await api("/tokenize", { model: card.id, prompt }, signal);
  // An empty prompt still takes one token: the model starts from its start token.
  const room = card.context - Math.max((await response.json()).count, 1);
  if (room < 1) throw new Error(`the prompt fills this model's context of ${card.context} tokens`);
  return Math.min(wanted, room);
}

function addToken(text, choice) {
  if (!choice.text) return;
  const span = document.createElement("span");
  span.className = "token";
  span.textContent = choice.text;
  const lp = choice.logprobs;
  if (lp && lp.token_logprobs.length) {
    const p = Math.exp(lp.token_logprobs[0]);
    span.dataset.prob = p.toFixed(4);
    span.style.setProperty("--p", String(p));
    span.dataset.alternatives = JSON.stringify((lp.top_logprobs || [{}])[0]);
    span.addEventListener("mouseenter", () => showAlternatives(span));
  } else {
    span.classList.add("plain");
  }
  text.append(span);
}

// An encoder-decoder: one beam-search request, one output.
async function transform(card, source, col, signal) {
  const s = settings();
  const path = card.task === "translation" ? "/v1/translate" : "/v1/summarize";
  col.querySelector(".prompt").textContent = "";
  const response = await api(path, { model: card.id, input: source, num_beams: s.num_beams }, signal);
  const result = await response.json();
  const out = document.createElement("span");
  out.className = "token plain";
  out.textContent = result.outputs[0];
  col.querySelector(".text").append(out);
}

// ---------------------------------------------------------------------------- alternatives

function showAlternatives(span) {
  const box = $("alternatives");
  box.innerHTML = "";
  const heading = document.createElement("div");
  heading.className = "alt-head";
  heading.textContent = `p = ${Number(span.dataset.prob).toFixed(3)}; branch here with:`;
  box.append(heading);
  const alternatives = Object.entries(JSON.parse(span.dataset.alternatives || "{}"))
    .sort((a, b) => b[1] - a[1]);
  for (const [piece, logprob] of alternatives) {
    const item = document.createElement("button");
    item.type = "button";
    item.className = "alt";
    item.dataset.piece = piece;
    item.textContent = `${JSON.stringify(piece)}  ${Math.exp(logprob).toFixed(3)}`;
    item.addEventListener("click", () => branch(span, piece));
    box.append(item);
  }
  const rect = span.getBoundingClientRect();
  box.style.left = `${rect.left + window.scrollX}px`;
  box.style.top = `${rect.bottom + window.scrollY + 4}px`;
  box.hidden = false;
  box.dataset.for = span.closest(".column").dataset.model;
}

// Continue from the text before `span`, with `piece` in its place.
function branch(span, piece) {
  const text = span.closest(".text");
  let before = text.querySelector(".prompt").textContent;
  for (const node of text.querySelectorAll(".token")) {
    if (node === span) break;
    before += node.textContent;
  }
  $("alternatives").hidden = true;
  $("prompt").value = before + piece;
  generate();
}

document.addEventListener("mouseover", (event) => {
  const box = $("alternatives");
  if (!box.hidden && !event.target.closest("#alternatives") && !event.target.closest(".token")) {
    box.hidden = true;
  }
});

// ---------------------------------------------------------------------------- start

function note(message) {
  const p = document.createElement("p");
  p.className = "error";
  p.textContent = message;
  return p;
}

$("generate").addEventListener("click", generate);
$("stop").addEventListener("click", stop);
$("save-key").addEventListener("click", () => {
  state.key = $("apikey").value.trim();
  localStorage.setItem("rnn2gpt-key", state.key);
  $("apikey-panel").hidden = true;
  loadModels();
});
loadModels();
