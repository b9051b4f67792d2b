// bloomchat web chat: conversations kept in localStorage, replies streamed from
// /v1/chat/completions (server-sent events), a Stop button that aborts the request (the server
// then stops generating), parameter controls. Model text is only ever set with textContent
// (see markdown.js).
"use strict";
(function () {
  const $ = (id) => document.getElementById(id);
  const STORE = "bloomchat.conversations", PARAMS = "bloomchat.params", KEY = "bloomchat.apiKey";
  const FIELDS = ["temperature", "top_p", "top_k", "repetition_penalty", "max_tokens", "seed"];
  let config = { model: "bloomchat", auth: false, defaults: {} };
  let convs = JSON.parse(localStorage.getItem(STORE) || "[]");
  let current = null, controller = null;

  function save() { localStorage.setItem(STORE, JSON.stringify(convs.slice(0, 100))); }
  function status(text) { $("status").textContent = text; }

  function newConversation() {
    current = { id: Date.now().toString(36) + Math.random().toString(36).slice(2, 6), title: "New chat", messages: [] };
    convs.unshift(current); save(); drawHistory(); drawMessages();
  }

  function drawHistory() {
    const ul = $("history");
    ul.replaceChildren();
    for (const c of convs) {
      const li = document.createElement("li");
      if (current && c.id === current.id) li.className = "active";
      const open = document.createElement("button");
      open.type = "button"; open.className = "open"; open.textContent = c.title; open.title = c.title;
      open.addEventListener("click", () => { if (!controller) { current = c; drawHistory(); drawMessages(); } });
      const del = document.createElement("button");
      del.type = "button"; del.className = "del"; del.textContent = "×"; del.title = "Delete";
      del.addEventListener("click", () => {
        if (controller) return;
        convs = convs.filter((x) => x.id !== c.id); save();
        if (current && current.id === c.id) { current = convs[0] || null; if (!current) newConversation(); }
        drawHistory(); drawMessages();
      });
      li.append(open, del);
      ul.appendChild(li);
    }
  }

  function bubble(role, text, meta) {
    const div = document.createElement("div");
    div.className = "msg " + role;
    const body = document.createElement("div");
    body.className = "body";
    if (role === "assistant") body.appendChild(window.renderMarkdown(text)); else body.textContent = text;
    div.appendChild(body);
    if (meta) { const m = document.createElement("div"); m.className = "meta"; m.textContent = meta; div.appendChild(m); }
    $("messages").appendChild(div);
    $("messages").scrollTop = $("messages").scrollHeight;
    return div;
  }

  function drawMessages() {
    $("messages").replaceChildren();
    if (!current) return;
    for (const m of current.messages) bubble(m.role, m.content, m.meta);
  }

  function readParams() {
    const p = {};
    for (const f of FIELDS) {
      const v = $(f).value.trim();
      if (v !== "") p[f] = f === "max_tokens" || f === "seed" || f === "top_k" ? parseInt(v, 10) : parseFloat(v);
    }
    return p;
  }

  function loadParams() {
    const saved = JSON.parse(localStorage.getItem(PARAMS) || "{}");
    for (const f of FIELDS) {
      const v = f in saved ? saved[f] : config.defaults[f];
      $(f).value = v === undefined || v === null ? "" : v;
    }
    $("system").value = saved.system || "";
    $("api_key").value = localStorage.getItem(KEY) || "";
  }

  function storeParams() {
    localStorage.setItem(PARAMS, JSON.stringify({ ...readParams(), system: $("system").value }));
    localStorage.setItem(KEY, $("api_key").value);
  }

  function busy(on) {
    $("send").disabled = on; $("stop").disabled = !on; $("new-chat").disabled = on;
  }

  async function send(text) {
    if (!current) newConversation();
    current.messages.push({ role: "user", content: text });
    if (current.title === "New chat") { current.title = text.slice(0, 40); drawHistory(); }
    save();
    bubble("user", text);
    const div = bubble("assistant", "");
    const body = div.querySelector(".body");
    const history = current.messages.map((m) => ({ role: m.role, content: m.content }));
    const sys = $("system").value.trim();
    const messages = sys ? [{ role: "system", content: sys }, ...history] : history;
    const request = { model: config.model, messages, stream: true, stream_options: { include_usage: true }, ...readParams() };
    const headers = { "Content-Type": "application/json" };
    if ($("api_key").value) headers.Authorization = "Bearer " + $("api_key").value;
    controller = new AbortController();
    busy(true);
    let reply = "", finish = null, usage = null, errorText = null;
    const started = performance.now();
    try {
      const resp = await fetch("/v1/chat/completions", { method: "POST", headers, body: JSON.stringify(request), signal: controller.signal });
      if (!resp.ok) {
        let msg = resp.status + " " + resp.statusText;
        try { msg = (await resp.json()).error.message; } catch (e) { /* not JSON */ }
        throw new Error(msg);
      }
      const reader = resp.body.getReader();
      const decoder = new TextDecoder();
      let buf = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buf += decoder.decode(value, { stream: true });
        let cut;
        while ((cut = buf.indexOf("\n\n")) >= 0) {
          const event = buf.slice(0, cut); buf = buf.slice(cut + 2);
          for (const line of event.split("\n")) {
            if (!line.startsWith("data:")) continue;
            const data = line.slice(5).trim();
            if (data === "[DONE]") continue;
            const obj = JSON.parse(data);
            if (obj.error) throw new Error(obj.error.message);
            if (obj.usage) usage = obj.usage;
            for (const ch of obj.choices || []) {
              if (ch.delta && ch.delta.content) reply += ch.delta.content;
              if (ch.finish_reason) finish = ch.finish_reason;
            }
          }
          body.replaceChildren(window.renderMarkdown(reply));
          $("messages").scrollTop = $("messages").scrollHeight;
        }
      }
    } catch (e) {
      if (e.name === "AbortError") finish = "stopped";
      else { errorText = e.message; div.classList.add("error"); }
    } finally {
      controller = null;
      busy(false);
    }
    const secs = ((performance.now() - started) / 1000).toFixed(1);
    const meta = errorText ? "error: " + errorText
      : `${finish || "?"} · ${usage ? usage.completion_tokens + " tokens · " : ""}${secs}s`;
    const m = document.createElement("div"); m.className = "meta"; m.textContent = meta; div.appendChild(m);
    if (errorText) { current.messages.pop(); body.textContent = ""; }
    else current.messages.push({ role: "assistant", content: reply, meta });
    save();
    refreshStatus();
  }

  async function refreshStatus() {
    try {
      const headers = {};  // the counts need the key when the server has keys
      if ($("api_key").value) headers.Authorization = "Bearer " + $("api_key").value;
      const h = await (await fetch("/health", { headers })).json();
      if (!h.guards) { status(""); return; }
      const c = h.guards.counts;
      status(`requests ${h.requests} · batch max ${h.largest_batch}\nguards: language drift ${c.language_drift}` +
        ` (resampled ${c.language_resampled}), loops cut ${c.repetition_cut},` +
        ` moderation ${c.moderation_input_blocked + c.moderation_output_blocked}`);
    } catch (e) { status(""); }
  }

  $("composer").addEventListener("submit", (e) => {
    e.preventDefault();
    const text = $("input").value.trim();
    if (!text || controller) return;
    $("input").value = "";
    send(text);
  });
  $("input").addEventListener("keydown", (e) => {
    if (e.key === "Enter" && !e.shiftKey && !e.isComposing) { e.preventDefault(); $("composer").requestSubmit(); }
  });
  $("stop").addEventListener("click", () => { if (controller) controller.abort(); });
  $("new-chat").addEventListener("click", newConversation);
  $("reset-params").addEventListener("click", () => { localStorage.removeItem(PARAMS); loadParams(); });
  for (const f of [...FIELDS, "system", "api_key"]) $(f).addEventListener("change", storeParams);

  fetch("/v1/web-config").then((r) => r.json()).then((c) => {
    config = c;
    $("model-name").textContent = c.model;
    document.title = c.model + " · bloomchat";
    $("key-row").hidden = !c.auth;
    loadParams();
  }).catch(() => loadParams());
  current = convs[0] || null;
  if (!current) newConversation(); else { drawHistory(); drawMessages(); }
  refreshStatus();
})();
