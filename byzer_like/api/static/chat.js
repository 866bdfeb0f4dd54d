// The chat page: talks to this server's OpenAI-compatible API (/v1/models, /v1/chat/completions).
// Model output is only ever put in the page as text (text nodes / textContent), never as HTML.
"use strict";

(function () {
  const STORE = "byzer-like.chat.";
  const $ = (id) => document.getElementById(id);
  const el = {
    model: $("model"), refresh: $("refresh-models"), modelInfo: $("model-info"),
    key: $("api-key"), toggleKey: $("toggle-key"), keyBox: $("key-box"), keyNotice: $("key-notice"),
    system: $("system"), temperature: $("temperature"), temperatureValue: $("temperature-value"),
    maxTokens: $("max-tokens"), toggleSettings: $("toggle-settings"),
    messages: $("messages"), emptyHint: $("empty-hint"),
    composer: $("composer"), input: $("input"), send: $("send"), stop: $("stop"), clear: $("clear"),
  };

  let history = [];          // [{role, content}] sent with each request (without the system prompt)
  let controller = null;     // the AbortController of the answer being streamed, if any
  let conversation = 0;      // bumped by "clear", so that a finishing stream leaves the new conversation alone
  let modelsRequest = 0;     // only the latest /v1/models answer is used
  let modelCards = new Map(); // id -> card from /v1/models

  // -- small helpers ---------------------------------------------------------------------------------
  function load(name, fallback) {
    try {
      const v = localStorage.getItem(STORE + name);
      return v === null ? fallback : v;
    } catch (e) {
      return fallback;
    }
  }

  function save(name, value) {
    try {
      localStorage.setItem(STORE + name, value);
    } catch (e) { /* storage disabled: settings just do not persist */ }
  }

  function authHeaders() {
    const key = el.key.value.trim();
    return key ? { Authorization: "Bearer " + key } : {};
  }

  // {status, message, code, type} from a failed response, whatever its body is.
  async function readError(resp) {
    let message = "", code = null, type = null;
    try {
      const text = await resp.text();
      try {
        const body = JSON.parse(text);
        const err = body && body.error;
        if (err && typeof err === "object") {
          message = String(err.message || "");
          code = err.code || null;
          type = err.type || null;
        } else if (typeof err === "string") {
          message = err;
        } else if (body && typeof body.detail === "string") {
          message = body.detail;
        } else {
          message = text;
        }
      } catch (e) {
        message = text;
      }
    } catch (e) { /* no body */ }
    message = message.trim().slice(0, 2000) || ("HTTP " + resp.status + " " + (resp.statusText || ""));
    return { status: resp.status, message, code, type };
  }

  function nearBottom() {
    const m = el.messages;
    return m.scrollHeight - m.scrollTop - m.clientHeight < 60;
  }

  function scrollDown(force) {
    if (force || nearBottom()) el.messages.scrollTop = el.messages.scrollHeight;
  }

  function updateEmptyHint() {
    el.emptyHint.hidden = el.messages.childElementCount > 0;
  }

  // On narrow screens the settings are folded away until asked for (or the key is needed).
  function showSettings(on) {
    document.body.classList.toggle("show-settings", on);
    el.toggleSettings.setAttribute("aria-expanded", String(on));
  }

  // -- the API key -----------------------------------------------------------------------------------
  function showKeyNeeded(message) {
    showSettings(true);
    el.keyBox.classList.add("needs-key");
    el.keyNotice.textContent = el.key.value.trim()
      ? "The server refused this API key (" + message + "). Enter a valid one."
      : "This server needs an API key. Enter it here.";
    el.keyNotice.hidden = false;
  }

  function clearKeyNeeded() {
    el.keyBox.classList.remove("needs-key");
    el.keyNotice.hidden = true;
    el.keyNotice.textContent = "";
  }

  // -- models ----------------------------------------------------------------------------------------
  function placeholder(text) {
    const opt = document.createElement("option");
    opt.value = "";
    opt.textContent = text;
    return opt;
  }

  function hasModels() {
    return Array.from(el.model.options).some((o) => o.value);
  }

  function showModelInfo() {
    const card = modelCards.get(el.model.value);
    if (!card) {
      el.modelInfo.textContent = "";
      return;
    }
    const meta = card.metadata || {};
    if (meta.error) {
      el.modelInfo.textContent = "Model metadata unavailable: " + meta.error;
      return;
    }
    const parts = [];
    if (card.status && card.status !== "RUNNING") parts.push("status " + card.status.toLowerCase());
    if (meta.family) parts.push(String(meta.family));
    if (meta.context_length) parts.push("context " + meta.context_length + " tokens");
    if (meta.num_parameters) {
      const n = Number(meta.num_parameters);
      parts.push((n >= 1e9 ? (n / 1e9).toFixed(1) + "B" : n >= 1e6 ? (n / 1e6).toFixed(1) + "M" : n.toLocaleString()) + " parameters");
    }
    if (meta.device) parts.push(String(meta.device));
    el.modelInfo.textContent = parts.join(" · ");
  }

  async function loadModels() {
    const mine = ++modelsRequest;
    el.refresh.disabled = true;
    try {
      let resp;
      try {
        resp = await fetch("/v1/models", { headers: authHeaders(), cache: "no-store" });
      } catch (e) {
        throw { status: 0, message: "cannot reach the server (" + e.message + ")" };
      }
      if (!resp.ok) throw await readError(resp);
      const body = await resp.json();
      if (mine !== modelsRequest) return;
      clearKeyNeeded();
      const cards = Array.isArray(body.data) ? body.data : [];
      const wanted = el.model.value || load("model", "");
      modelCards = new Map(cards.map((c) => [c.id, c]));
      const options = cards.map((c) => {
        const opt = document.createElement("option");
        opt.value = c.id;
        opt.textContent = c.status && c.status !== "RUNNING" ? c.id + " (" + c.status.toLowerCase() + ")" : c.id;
        return opt;
      });
      el.model.replaceChildren(...(options.length ? options : [placeholder("— no model is deployed —")]));
      if (modelCards.has(wanted)) el.model.value = wanted;
      showModelInfo();
    } catch (err) {
      if (mine !== modelsRequest) return;
      const message = err && err.message ? err.message : String(err);
      if (err && err.status === 401) showKeyNeeded(message);
      // A failed refresh keeps the list already shown; only an empty one says why it is empty.
      if (!hasModels()) {
        el.model.replaceChildren(placeholder(err && err.status === 401 ? "— API key needed —" : "— could not load models —"));
        el.modelInfo.textContent = err && err.status === 401 ? "" : "Could not load the models: " + message;
      }
    } finally {
      if (mine === modelsRequest) el.refresh.disabled = false;
    }
  }

  // -- the conversation ------------------------------------------------------------------------------
  function addMessage(kind, label, text) {
    const stick = nearBottom();
    const div = document.createElement("div");
    div.className = "msg " + kind;
    const role = document.createElement("span");
    role.className = "role";
    role.textContent = label;
    const body = document.createElement("span");
    body.className = "text";
    body.textContent = text;
    div.append(role, body);
    el.messages.append(div);
    updateEmptyHint();
    scrollDown(stick);
    return div;
  }

  function addError(message, detail) {
    const div = addMessage("error", detail ? "Error · " + detail : "Error", message);
    scrollDown(true);
    return div;
  }

  function addNote(div, text) {
    const note = document.createElement("span");
    note.className = "stopped";
    note.textContent = text;
    div.append(note);
  }

  function setStreaming(on) {
    el.send.disabled = on;
    el.stop.disabled = !on;
  }

  function requestBody(model) {
    const messages = [];
    const system = el.system.value.trim();
    if (system) messages.push({ role: "system", content: system });
    messages.push(...history);
    const body = { model, messages, stream: true };
    const temperature = parseFloat(el.temperature.value);
    if (Number.isFinite(temperature)) body.temperature = Math.min(2, Math.max(0, temperature));
    const maxTokens = parseInt(el.maxTokens.value, 10);
    if (Number.isFinite(maxTokens) && maxTokens >= 1) body.max_tokens = maxTokens;
    return body;
  }

  // Server-sent events from `reader`: calls onEvent(data) for each `data:` payload; returns on [DONE].
  async function readEvents(reader, onEvent) {
    const decoder = new TextDecoder();
    let buffer = "";
    const handle = (block) => {
      const data = block.split("\n").filter((l) => l.startsWith("data:"))
        .map((l) => l.slice(5).replace(/^ /, "")).join("\n");
      if (!data) return false;                     // a comment or keep-alive
      if (data.trim() === "[DONE]") return true;
      onEvent(data);
      return false;
    };
    for (;;) {
      const { value, done } = await reader.read();
      buffer += decoder.decode(value || new Uint8Array(), { stream: !done });
      // a "\r\n" may be split between two reads: a trailing "\r" waits for the next one
      const held = !done && buffer.endsWith("\r") ? "\r" : "";
      buffer = buffer.slice(0, buffer.length - held.length).replace(/\r\n?/g, "\n");
      let cut;
      while ((cut = buffer.indexOf("\n\n")) >= 0) {
        const block = buffer.slice(0, cut);
        buffer = buffer.slice(cut + 2);
        if (handle(block)) return true;
      }
      if (done) return buffer.trim() ? handle(buffer) : false;
      buffer += held;
    }
  }

  async function send() {
    if (controller) return;
    const text = el.input.value;
    if (!text.trim()) return;
    const model = el.model.value;
    if (!model) {
      if (hasModels()) addError("Pick a model first.");
      else if (el.keyBox.classList.contains("needs-key")) addError("Enter the server's API key first: the model list needs it.");
      else addError("No model to talk to: deploy one, then press Refresh (next to the model list).");
      return;
    }
    save("model", model);
    const conv = conversation;
    history.push({ role: "user", content: text });
    const userDiv = addMessage("user", "You", text);
    scrollDown(true);
    el.input.value = "";

    const div = addMessage("assistant", model, "");
    div.dataset.done = "false";
    const textNode = document.createTextNode("");
    div.querySelector(".text").append(textNode);
    const ctl = new AbortController();
    controller = ctl;
    setStreaming(true);

    let answer = "", error = null, stopped = false, complete = false, finish = null;
    try {
      const resp = await fetch("/v1/chat/completions", {
        method: "POST",
        headers: { "Content-Type": "application/json", Accept: "text/event-stream", ...authHeaders() },
        body: JSON.stringify(requestBody(model)),
        signal: ctl.signal,
      });
      if (!resp.ok) {
        error = await readError(resp);
      } else {
        const reader = resp.body.getReader();
        try {
          complete = await readEvents(reader, (data) => {
            let chunk;
            try {
              chunk = JSON.parse(data);
            } catch (e) {
              return;                                // not JSON: not for us
            }
            if (chunk && chunk.error) {
              const err = chunk.error;
              error = { status: null, message: String(err.message || JSON.stringify(err)), code: err.code || null, type: err.type || null };
              return;
            }
            const choice = chunk && Array.isArray(chunk.choices) ? chunk.choices[0] : null;
            if (!choice) return;
            const delta = choice.delta && typeof choice.delta.content === "string" ? choice.delta.content : "";
            if (delta && conv === conversation) {
              const stick = nearBottom();
              answer += delta;
              textNode.appendData(delta);
              scrollDown(stick);
            }
            if (choice.finish_reason) finish = choice.finish_reason;
          });
        } finally {
          reader.cancel().catch(() => {});
        }
        if (!complete && !error) {
          error = { status: null, message: "the answer was cut off: the connection closed before the end of the stream" };
        }
      }
    } catch (e) {
      if (e && e.name === "AbortError") stopped = true;
      else error = { status: 0, message: "cannot reach the server (" + (e && e.message ? e.message : e) + ")" };
    } finally {
      if (controller === ctl) {
        controller = null;
        setStreaming(false);
      }
    }

    if (conv !== conversation) return;               // cleared meanwhile: this conversation is gone
    div.dataset.done = "true";
    if (answer) {
      history.push({ role: "assistant", content: answer });
      if (stopped) addNote(div, "stopped");
      else if (finish === "length") addNote(div, "cut at the max tokens limit");
    } else if (stopped || error) {
      // No answer: the question is taken back (so that roles keep alternating) and offered again.
      history.pop();
      userDiv.classList.add("failed");
      if (!el.input.value) el.input.value = text;
      if (error) div.remove();
      else addNote(div, "stopped before any text");
    } else {
      history.push({ role: "assistant", content: "" });
      addNote(div, "(empty answer)");
    }
    if (error) {
      const detail = [error.status ? "HTTP " + error.status : "", error.code || ""].filter(Boolean).join(" ");
      addError(error.message, detail);
      if (error.status === 401) {
        showKeyNeeded(error.message);
        el.key.focus();
      }
    }
    updateEmptyHint();
  }

  function stop() {
    if (controller) controller.abort();
  }

  function clear() {
    conversation++;
    stop();
    controller = null;
    setStreaming(false);
    history = [];
    el.messages.replaceChildren();
    updateEmptyHint();
    el.input.focus();
  }

  // -- wiring ----------------------------------------------------------------------------------------
  function init() {
    el.key.value = load("api-key", "");
    el.system.value = load("system", "");
    el.temperature.value = load("temperature", el.temperature.value);
    el.maxTokens.value = load("max-tokens", el.maxTokens.value);
    el.temperatureValue.textContent = Number(el.temperature.value).toFixed(2);

    let keyTimer = null;
    el.key.addEventListener("input", () => {
      save("api-key", el.key.value.trim());
      clearTimeout(keyTimer);
      keyTimer = setTimeout(loadModels, 400);
    });
    el.toggleKey.addEventListener("click", () => {
      const show = el.key.type === "password";
      el.key.type = show ? "text" : "password";
      el.toggleKey.textContent = show ? "Hide" : "Show";
    });
    el.system.addEventListener("input", () => save("system", el.system.value));
    el.temperature.addEventListener("input", () => {
      el.temperatureValue.textContent = Number(el.temperature.value).toFixed(2);
      save("temperature", el.temperature.value);
    });
    el.maxTokens.addEventListener("input", () => save("max-tokens", el.maxTokens.value));
    el.model.addEventListener("change", () => {
      save("model", el.model.value);
      showModelInfo();
    });
    el.refresh.addEventListener("click", loadModels);
    el.toggleSettings.addEventListener("click", () => showSettings(!document.body.classList.contains("show-settings")));

    el.composer.addEventListener("submit", (e) => {
      e.preventDefault();
      send();
    });
    el.input.addEventListener("keydown", (e) => {
      if (e.key === "Enter" && !e.shiftKey && !e.isComposing && e.keyCode !== 229) {
        e.preventDefault();
        send();
      }
    });
    el.stop.addEventListener("click", stop);
    el.clear.addEventListener("click", clear);

    setStreaming(false);
    updateEmptyHint();
    loadModels();
    el.input.focus();
  }

  init();
})();
