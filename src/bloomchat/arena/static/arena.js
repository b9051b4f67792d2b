// bloomchat arena page. Every text from the server goes into the page with textContent, never
// innerHTML, so prompts and replies holding markup are shown as text.
"use strict";
(function () {
  const $ = (id) => document.getElementById(id);
  let token = sessionStorage.getItem("arenaToken") || "";
  let current = null;

  async function api(path, opts = {}) {
    const headers = Object.assign({ Authorization: "Bearer " + token }, opts.headers || {});
    const resp = await fetch(path, Object.assign({}, opts, { headers }));
    if (!resp.ok) {
      let detail = resp.status + " " + resp.statusText;
      try { detail = (await resp.json()).detail || detail; } catch (e) { /* not JSON */ }
      const err = new Error(typeof detail === "string" ? detail : JSON.stringify(detail));
      err.status = resp.status;
      throw err;
    }
    return resp;
  }

  function show(section) {
    for (const id of ["signin", "rate", "finished", "results"]) $(id).hidden = id !== section;
    $("signout").hidden = section === "signin";
  }

  async function signIn() {
    try {
      const me = await (await api("/api/me")).json();
      sessionStorage.setItem("arenaToken", token);
      $("who").textContent = me.name + (me.is_admin ? " (admin)" : " - " + me.langs.join(", "));
      $("signin-error").textContent = "";
      if (me.is_admin) { show("results"); loadResults(); } else { show("rate"); loadNext(); }
    } catch (e) {
      sessionStorage.removeItem("arenaToken");
      show("signin");
      $("signin-error").textContent = e.status === 401 ? "This token is not valid." : e.message;
    }
  }

  function setText(id, text) { $(id).textContent = text; }

  // A model may stop at once and write nothing: say so, so the rater judges it rather than a blank box.
  function setReply(id, text) {
    const empty = !text || !text.trim();
    $(id).textContent = empty ? "(empty reply: the model wrote nothing)" : text;
    $(id).classList.toggle("empty", empty);
  }

  async function loadNext() {
    $("rate-error").textContent = "";
    $("choices").hidden = true;  // shown again once the new pair is on the page
    const data = await (await api("/api/next")).json();
    if (data.done) { show("finished"); return; }
    current = data;
    const hist = $("history");
    hist.replaceChildren();
    const turns = data.turns;
    for (const t of turns.slice(0, -1)) {
      const div = document.createElement("div");
      div.className = "turn";
      const label = document.createElement("div");
      label.className = "label";
      label.textContent = t.role === "human" ? "Earlier request" : "Earlier reply";
      const body = document.createElement("div");
      body.className = "text";
      body.textContent = t.text;
      div.append(label, body);
      hist.append(div);
    }
    setText("prompt", turns[turns.length - 1].text);
    setText("lang", "(" + data.lang + ")");
    setReply("left", data.left);
    setReply("right", data.right);
    setText("name-left", "");
    setText("name-right", "");
    setText("progress", "You have rated " + data.votes + " pair" + (data.votes === 1 ? "" : "s") + ".");
    $("comment").value = "";
    $("comment").disabled = false;
    for (const b of $("choices").querySelectorAll("button")) b.disabled = false;
    $("choices").hidden = false;
    $("after").hidden = true;
  }

  async function vote(choice) {
    if (!current) return;
    for (const b of $("choices").querySelectorAll("button")) b.disabled = true;
    try {
      const body = JSON.stringify({ assignment_id: current.assignment_id, choice, comment: $("comment").value || null });
      const res = await (await api("/api/vote", { method: "POST", body, headers: { "Content-Type": "application/json" } })).json();
      setText("name-left", "- " + res.left_system);
      setText("name-right", "- " + res.right_system);
      const said = { left: "A is better", right: "B is better", tie: "Tie", both_bad: "Both bad" }[res.choice];
      setText("reveal", "Saved: " + said + ". A was " + res.left_system + ", B was " + res.right_system + ".");
      current.votes += 1;
      setText("progress", "You have rated " + current.votes + " pair" + (current.votes === 1 ? "" : "s") + ".");
      $("comment").disabled = true;
      $("choices").hidden = true;
      $("after").hidden = false;
      $("next").focus();
    } catch (e) {
      $("rate-error").textContent = "Vote not saved: " + e.message;
      for (const b of $("choices").querySelectorAll("button")) b.disabled = false;
    }
  }

  const pct = (x) => (x === null || x === undefined ? "-" : (100 * x).toFixed(1) + "%");
  const ci = (c) => (!c || c[0] === null ? "-" : "[" + (100 * c[0]).toFixed(1) + ", " + (100 * c[1]).toFixed(1) + "]");

  function fillTable(id, header, rows) {
    const table = $(id);
    table.replaceChildren();
    const tr = document.createElement("tr");
    for (const h of header) { const th = document.createElement("th"); th.textContent = h; tr.append(th); }
    table.append(tr);
    for (const r of rows) {
      const row = document.createElement("tr");
      for (const cell of r) {
        const td = document.createElement("td");
        td.textContent = String(cell);
        if (typeof cell === "string" && !/^[-\d\[]/.test(cell)) td.className = "txt";  // names: left-aligned
        row.append(td);
      }
      table.append(row);
    }
  }

  let chartUrl = null;
  async function loadResults() {
    $("results-error").textContent = "";
    try {
      const rule = $("tie-rule").value;
      const doc = await (await api("/api/results?tie_rule=" + encodeURIComponent(rule))).json();
      setText("summary", doc.votes + " votes. Ties: " + doc.tie_rule.description + ". Intervals: " + doc.interval + ".");
      fillTable("pairs-table", ["lang", "A", "B", "n", "A preferred", "95% CI", "B preferred", "95% CI", "tie / both bad"],
        doc.pairs.map((r) => [r.lang, r.system_a, r.system_b, r.n, pct(r.a_share), ci(r.a_ci), pct(r.b_share), ci(r.b_ci), pct(r.tie_share)]));
      fillTable("field-table", ["lang", "system", "n", "preferred", "95% CI"],
        doc.versus_field.map((r) => [r.lang, r.system, r.n, pct(r.share), ci(r.ci)]));
      const rank = [];
      for (const [lang, rows] of Object.entries(doc.ranking))
        for (const r of rows) rank.push([lang, r.rank, r.system, r.rating.toFixed(0), "[" + r.ci[0].toFixed(0) + ", " + r.ci[1].toFixed(0) + "]", r.n]);
      fillTable("rank-table", ["lang", "rank", "system", "rating", "95% CI", "n"], rank);
      fillTable("agree-table", ["lang", "pairs with 2+ raters", "ratings", "% agreement", "Krippendorff alpha"],
        Object.entries(doc.agreement).map(([lang, a]) => [lang, a.pairs, a.ratings, pct(a.percent_agreement),
          a.krippendorff_alpha === null ? "-" : a.krippendorff_alpha.toFixed(2)]));
      fillTable("lang-table", ["lang", "votes"], Object.entries(doc.votes_by_lang));
      fillTable("rater-table", ["rater", "votes"], Object.entries(doc.votes_by_rater));
      const blob = await (await api("/api/chart.png?tie_rule=" + encodeURIComponent(rule))).blob();
      if (chartUrl) URL.revokeObjectURL(chartUrl);
      chartUrl = URL.createObjectURL(blob);
      $("chart").src = chartUrl;
    } catch (e) {
      $("results-error").textContent = e.message;
    }
  }

  async function download(path, filename) {
    try {
      const blob = await (await api(path)).blob();
      const a = document.createElement("a");
      a.href = URL.createObjectURL(blob);
      a.download = filename;
      document.body.append(a);
      a.click();
      a.remove();
    } catch (e) { $("results-error").textContent = e.message; }
  }

  document.addEventListener("DOMContentLoaded", () => {
    $("signin-form").addEventListener("submit", (ev) => { ev.preventDefault(); token = $("token").value.trim(); signIn(); });
    $("signout").addEventListener("click", () => { sessionStorage.removeItem("arenaToken"); token = ""; $("who").textContent = ""; show("signin"); });
    for (const b of $("choices").querySelectorAll("button")) b.addEventListener("click", () => vote(b.dataset.choice));
    $("next").addEventListener("click", () => loadNext().catch((e) => { $("rate-error").textContent = e.message; }));
    $("refresh").addEventListener("click", loadResults);
    $("tie-rule").addEventListener("change", loadResults);
    $("dl-csv").addEventListener("click", () => download("/api/results.csv?tie_rule=" + $("tie-rule").value, "arena-results.csv"));
    $("dl-json").addEventListener("click", () => download("/api/results?tie_rule=" + $("tie-rule").value, "arena-results.json"));
    $("dl-votes").addEventListener("click", () => download("/api/votes.jsonl", "arena-votes.jsonl"));
    // keys 1-4 vote (A, B, tie, both bad) and n goes on, except while typing a comment
    document.addEventListener("keydown", (ev) => {
      if ($("rate").hidden || ev.target.tagName === "TEXTAREA" || ev.target.tagName === "INPUT" || ev.ctrlKey || ev.metaKey || ev.altKey) return;
      const choice = { 1: "left", 2: "right", 3: "tie", 4: "both_bad" }[ev.key];
      if (choice && !$("choices").hidden) { ev.preventDefault(); vote(choice); }
      else if (ev.key === "n" && !$("after").hidden) { ev.preventDefault(); $("next").click(); }
    });
    if (token) signIn(); else show("signin");
  });
})();
