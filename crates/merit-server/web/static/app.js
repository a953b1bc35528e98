// Merit's page scripts: small, no build step. Changes go to the JSON API with
// the session cookie and the page's CSRF token; every failure is shown in
// the page (#flash or next to the control), never swallowed.
"use strict";

const $ = (sel, root = document) => root.querySelector(sel);
const $$ = (sel, root = document) => Array.from(root.querySelectorAll(sel));
const csrf = () => (document.querySelector('meta[name="csrf-token"]') || {}).content || "";

function el(tag, attrs = {}, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") e.className = v;
    else if (k === "text") e.textContent = v;
    else if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
    else if (v !== null && v !== undefined && v !== false) e.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children) e.append(c instanceof Node ? c : document.createTextNode(String(c)));
  return e;
}

function flash(message) {
  const f = $("#flash");
  if (!f) return alert(message);
  f.textContent = message;
  f.hidden = false;
  f.scrollIntoView({ block: "nearest" });
}

/** Calls the API; resolves to the parsed JSON, rejects with the API's message. */
async function api(method, path, body) {
  const headers = { "X-CSRF-Token": csrf() };
  let payload = body;
  if (body !== undefined && !(body instanceof FormData)) {
    headers["Content-Type"] = "application/json";
    payload = JSON.stringify(body);
  }
  let resp;
  try {
    resp = await fetch("/api/v1" + path, { method, headers, body: payload, credentials: "same-origin" });
  } catch (e) {
    throw new Error("The server cannot be reached: " + e.message);
  }
  const text = await resp.text();
  let json = null;
  try { json = text ? JSON.parse(text) : null; } catch (_) { /* not JSON */ }
  if (!resp.ok) {
    const err = json && json.error;
    const msg = err ? `${err.message}${err.details && err.details.key ? ` (${err.details.key})` : ""}` : `HTTP ${resp.status}`;
    const e = new Error(msg);
    e.status = resp.status;
    throw e;
  }
  return json;
}

// htmx: a failed fragment request shows the server's message.
document.addEventListener("htmx:responseError", (ev) => {
  const x = ev.detail.xhr;
  let msg = `HTTP ${x.status}`;
  const m = /<p class="error">([^<]*)<\/p>/.exec(x.responseText || "");
  if (m) msg = m[1];
  flash("That did not work: " + msg);
});
document.addEventListener("htmx:sendError", () => flash("The server cannot be reached."));

// ---- contribute: drag and drop, dry run, per-file verdicts
function renderVerdicts(list, verdicts) {
  list.replaceChildren();
  for (const v of verdicts) {
    const li = el("li", { class: "verdict verdict-" + v.status });
    li.append(el("strong", { text: v.file }), " ", el("span", { class: "status status-" + v.status, text: v.dry_run ? v.status + " (dry run)" : v.status }));
    const facts = [];
    if (v.rows !== undefined && v.rows !== null) facts.push(`${v.rows} rows`);
    if (v.score !== undefined) facts.push(`score ${Number(v.score).toFixed(3)}`);
    if (v.version) facts.push(`now in version ${v.version}`);
    if (facts.length) li.append(el("span", { class: "muted", text: " · " + facts.join(" · ") }));
    if (v.reasons && v.reasons.length) {
      const ul = el("ul", { class: "reasons" });
      for (const r of v.reasons) {
        ul.append(el("li", {}, el("code", { text: r.gate }), " ", r.message + (r.row !== undefined && r.row !== null ? ` (row ${r.row})` : "")));
      }
      li.append(ul);
    }
    list.append(li);
  }
}

function initContribute() {
  const box = $("#contribute");
  if (!box) return;
  const name = box.dataset.datanet;
  const input = $("#files");
  const drop = $("#drop");
  let dropped = null;
  const files = () => dropped || Array.from(input.files);
  drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (e) => {
    e.preventDefault();
    drop.classList.remove("over");
    dropped = Array.from(e.dataTransfer.files);
    $("#drop-help").textContent = dropped.map((f) => f.name).join(", ");
  });
  drop.addEventListener("keydown", (e) => { if (e.key === "Enter" || e.key === " ") { e.preventDefault(); input.click(); } });
  input.addEventListener("change", () => { dropped = null; });
  const send = async (dryRun) => {
    const chosen = files();
    if (!chosen.length) return flash("Choose or drop at least one file first.");
    const form = new FormData();
    for (const f of chosen) form.append("file", f, f.name);
    const list = $("#verdicts");
    list.replaceChildren(el("li", { class: "muted", text: dryRun ? "Checking…" : "Uploading…" }));
    try {
      const verdicts = await api("POST", `/datanets/${encodeURIComponent(name)}/contributions${dryRun ? "?dry_run=true" : ""}`, form);
      renderVerdicts(list, verdicts);
    } catch (e) {
      list.replaceChildren(el("li", { class: "error", text: e.message }));
    }
  };
  $("#dry-run").addEventListener("click", () => send(true));
  $("#upload").addEventListener("click", () => send(false));
}

// ---- review queue
async function initReview() {
  const box = $("#review");
  if (!box) return;
  const name = box.dataset.datanet;
  const list = $("#pending");
  const load = async () => {
    let items;
    try {
      items = await api("GET", `/datanets/${encodeURIComponent(name)}/contributions?status=pending`);
    } catch (e) {
      list.replaceChildren(el("li", { class: "error", text: e.message }));
      return;
    }
    list.replaceChildren();
    if (!items.length) list.append(el("li", { class: "muted", text: "Nothing waits for review." }));
    for (const c of items) {
      const reason = el("input", { id: `reason-${c.id}`, placeholder: "why it is rejected" });
      const act = async (verb) => {
        try {
          await api("POST", `/datanets/${encodeURIComponent(name)}/contributions/${c.id}/${verb}`, verb === "reject" ? { reason: reason.value } : undefined);
          load();
        } catch (e) { flash(e.message); }
      };
      const head = [el("strong", { text: c.filename }), ` by ${c.contributor} · ${c.rows} rows · `,
        el("a", { href: `/api/v1/datanets/${encodeURIComponent(name)}/contributions/${c.id}/file`, text: "preview file" }), " "];
      // Nobody reviews their own file: the API would refuse, so the page does not offer it.
      const actions = c.contributor === box.dataset.me
        ? [el("span", { class: "muted", text: "your own: another curator or the owner reviews it" })]
        : [el("button", { type: "button", onclick: () => act("approve"), text: "Approve" }), " ",
          el("label", { for: `reason-${c.id}`, text: "Reason" }), reason,
          el("button", { type: "button", onclick: () => act("reject"), text: "Reject" })];
      list.append(el("li", { class: "verdict" }, ...head, ...actions));
    }
  };
  load();
}

// ---- sortable leaderboards
function initSortable() {
  for (const table of $$("table.sortable")) {
    for (const btn of $$("button[data-sort]", table)) {
      btn.addEventListener("click", () => {
        const key = btn.dataset.sort;
        const body = table.tBodies[0];
        const rows = Array.from(body.rows).sort((a, b) => Number(b.dataset[key]) - Number(a.dataset[key]));
        body.append(...rows);
        for (const th of $$("th", table)) th.removeAttribute("aria-sort");
        btn.closest("th").setAttribute("aria-sort", "descending");
      });
    }
  }
}

// ---- charts
const palette = ["#2563eb", "#dc2626", "#16a34a", "#9333ea", "#ea580c", "#0891b2", "#4b5563"];

function chart(target, label, seriesNames, format) {
  const width = Math.max(280, target.clientWidth || 480);
  const y = { label };
  if (format) y.values = (u, vals) => vals.map(format);
  const opts = {
    width, height: 220,
    scales: { x: { time: false } },
    axes: [{ label: "step" }, y],
    series: [{ label: "step" }].concat(seriesNames.map((s, i) => ({ label: s, stroke: palette[i % palette.length], width: 2, points: { show: true, size: 4 }, spanGaps: true }))),
  };
  const data = [[]].concat(seriesNames.map(() => []));
  const u = new uPlot(opts, data, target);
  new ResizeObserver(() => u.setSize({ width: Math.max(280, target.clientWidth), height: 220 })).observe(target);
  return { u, data };
}

/** Training and eval loss by step from metric events (objects of metrics.jsonl). */
function lossSeries(events) {
  const steps = new Map();
  for (const e of events) {
    if (e.kind !== "step" && e.kind !== "eval") continue;
    const row = steps.get(e.step) || { loss: null, eval: null };
    if (e.kind === "step") row.loss = e.loss; else row.eval = e.eval_loss;
    steps.set(e.step, row);
  }
  const xs = Array.from(steps.keys()).sort((a, b) => a - b);
  return [xs, xs.map((s) => steps.get(s).loss), xs.map((s) => steps.get(s).eval)];
}

// ---- a run's page: live metrics by server-sent events
function initRun() {
  const data = $("#run-json");
  if (!data) return;
  const run = JSON.parse(data.textContent);
  const events = [];
  let charts = null;
  const log = $("#log");
  const redraw = () => {
    if (!events.some((e) => e.kind === "step")) return;
    if (!charts) {
      charts = {
        loss: chart($("#chart-loss"), "loss", ["train loss", "eval loss"]),
        lr: chart($("#chart-lr"), "learning rate", ["lr"], (v) => (v === 0 ? "0" : v.toExponential(1))),
        tps: chart($("#chart-tps"), "tokens/s", ["tokens/s"]),
      };
    }
    charts.loss.u.setData(lossSeries(events));
    const st = events.filter((e) => e.kind === "step");
    charts.lr.u.setData([st.map((e) => e.step), st.map((e) => e.lr)]);
    charts.tps.u.setData([st.map((e) => e.step), st.map((e) => e.tokens_per_s)]);
    const last = st[st.length - 1];
    $("#progress").max = last.total_steps;
    $("#progress").value = last.step;
    const eta = last.eta_s > 0 ? `, about ${Math.round(last.eta_s)} s left` : "";
    $("#progress-text").textContent = `step ${last.step} of ${last.total_steps} · loss ${last.loss.toFixed(4)} · ${Math.round(last.tokens_per_s)} tokens/s${eta}`;
    document.body.dataset.points = String(st.length);
  };
  const line = (text) => {
    log.textContent += text + "\n";
    const lines = log.textContent.split("\n");
    if (lines.length > 200) log.textContent = lines.slice(-200).join("\n");
    log.scrollTop = log.scrollHeight;
  };
  const src = new EventSource(`/api/v1/runs/${run.id}/events`);
  const onMetric = (ev) => {
    const e = JSON.parse(ev.data);
    events.push(e);
    if (e.kind === "step") line(`step ${e.step}/${e.total_steps} loss ${e.loss.toFixed(4)} lr ${e.lr.toExponential(2)} ${Math.round(e.tokens_per_s)} tok/s`);
    if (e.kind === "eval") line(`step ${e.step}: eval loss ${e.eval_loss.toFixed(4)} (perplexity ${e.eval_perplexity.toFixed(2)})`);
    if (e.kind === "checkpoint") line(`checkpoint at step ${e.step}`);
    redraw();
  };
  for (const kind of ["step", "eval", "checkpoint"]) src.addEventListener(kind, onMetric);
  src.addEventListener("status", (ev) => {
    const s = JSON.parse(ev.data).status;
    $("#run-status").textContent = s;
    $("#run-status").className = "status status-" + s;
    line(`status: ${s}`);
  });
  src.addEventListener("end", (ev) => {
    const r = JSON.parse(ev.data);
    src.close();
    $("#run-status").textContent = r.status;
    $("#run-status").className = "status status-" + r.status;
    $("#stop-run").hidden = true;
    if ($("#resume-run")) $("#resume-run").hidden = !["stopped", "interrupted", "failed"].includes(r.status);
    if ($("#publish-run")) $("#publish-run").hidden = !["done", "stopped"].includes(r.status) || !!r.published_at;
    line(`ended: ${r.status}${r.error ? " — " + r.error : ""}`);
    if (r.error) flash(`Run ${r.id} failed: ${r.error}`);
  });
  src.onerror = () => { if (src.readyState === EventSource.CLOSED) line("(stream closed)"); };
  const resume = $("#resume-run");
  if (resume) {
    resume.addEventListener("click", async () => {
      resume.disabled = true;
      try { await api("POST", `/runs/${run.id}/resume`); location.reload(); } catch (e) { flash(e.message); resume.disabled = false; }
    });
  }
  const publish = $("#publish-run");
  if (publish) {
    publish.addEventListener("click", async () => {
      publish.disabled = true;
      try {
        const r = await api("POST", `/runs/${run.id}/publish`);
        $("#adapter-sha").textContent = r.adapter_sha256;
        $("#published").hidden = false;
        publish.hidden = true;
      } catch (e) { flash(e.message); publish.disabled = false; }
    });
  }
  const stop = $("#stop-run");
  stop.addEventListener("click", async () => {
    stop.disabled = true;
    try {
      const r = await api("POST", `/runs/${run.id}/stop`);
      line(r.status === "running" ? "stopping after this step…" : `status: ${r.status}`);
    } catch (e) { flash(e.message); stop.disabled = false; }
  });
}

// ---- the runs list: overlay the loss curves of the ticked runs
async function metricsOf(id) {
  const resp = await fetch(`/api/v1/runs/${id}/files/metrics.jsonl`, { credentials: "same-origin" });
  if (!resp.ok) return [];
  return (await resp.text()).split("\n").filter((l) => l.trim()).map((l) => JSON.parse(l));
}

function initCompare() {
  const target = $("#compare-chart");
  if (!target) return;
  let u = null;
  const update = async () => {
    const ids = $$("input.compare:checked").map((c) => c.value);
    if (u) { u.destroy(); u = null; }
    target.replaceChildren();
    if (!ids.length) return;
    const per = await Promise.all(ids.map(metricsOf));
    const xs = Array.from(new Set(per.flatMap((ev) => ev.filter((e) => e.kind === "step").map((e) => e.step)))).sort((a, b) => a - b);
    const series = [];
    const names = [];
    per.forEach((ev, i) => {
      const [sx, loss, evl] = lossSeries(ev);
      const at = (ys) => { const m = new Map(sx.map((s, j) => [s, ys[j]])); return xs.map((s) => (m.has(s) ? m.get(s) : null)); };
      series.push(at(loss), at(evl));
      names.push(`run ${ids[i]} loss`, `run ${ids[i]} eval`);
    });
    const c = chart(target, "loss", names);
    c.u.setData([xs, ...series]);
    u = c.u;
  };
  for (const c of $$("input.compare")) c.addEventListener("change", update);
}

// ---- the new-run form: presets, live estimates, fork, submit
const PRESETS = {
  quick: { rank: 4, alpha: 8, epochs: 1, max_steps: 20, batch: 2, grad_accum: 1, cutoff_len: 256, lr: "5e-4", eval_split: 0.1 },
  balanced: { rank: 8, alpha: 16, epochs: 3, max_steps: 0, batch: 2, grad_accum: 8, cutoff_len: 1024, lr: "2e-4", eval_split: 0.1 },
  thorough: { rank: 16, alpha: 32, epochs: 5, max_steps: 0, batch: 4, grad_accum: 8, cutoff_len: 2048, lr: "1e-4", eval_split: 0.1 },
};

function initRunForm() {
  const form = $("#run-form");
  if (!form) return;
  const info = JSON.parse($("#run-data").textContent);
  const field = (n) => form.elements[n];
  const sync = () => {
    for (const r of $$('input[type="range"]', form)) {
      const out = $(`#${r.id}-out`);
      if (out) out.textContent = r.value;
    }
    estimate();
  };
  const set = (values) => {
    for (const [k, v] of Object.entries(values)) {
      const f = field(k);
      if (!f) continue;
      if (f.type === "checkbox") f.checked = !!v; else f.value = v;
    }
    sync();
  };
  for (const b of $$("button[data-preset]", form)) b.addEventListener("click", () => set(PRESETS[b.dataset.preset]));
  form.addEventListener("input", sync);

  function estimate() {
    const dl = $("#estimates");
    const m = info.models.find((x) => x.name === field("base").value);
    const rank = Number(field("rank").value);
    const items = [];
    const rows = $$('input[name="datanet"]:checked', form).map((c) => {
      const d = info.datanets.find((x) => c.value.startsWith(x.name + "@"));
      return d ? d.stats.rows : 0;
    }).reduce((a, b) => a + b, 0);
    const cutoff = Number(field("cutoff_len").value);
    const trainRows = Math.round(rows * (1 - Number(field("eval_split").value)));
    const tokensPerEpoch = trainRows * Math.min(cutoff, 256);
    if (m && m.hidden_size) {
      const h = m.hidden_size, inter = m.intermediate_size || 4 * h, kv = (m.kv_heads || m.heads) * (m.head_dim || h / m.heads);
      const dims = { q_proj: [h, (m.heads || 1) * (m.head_dim || h / m.heads)], k_proj: [h, kv], v_proj: [h, kv], o_proj: [(m.heads || 1) * (m.head_dim || h / m.heads), h], gate_proj: [h, inter], up_proj: [h, inter], down_proj: [inter, h] };
      const targets = field("targets").value === "all" ? Object.keys(dims) : field("targets").value.split(",");
      const perLayer = targets.reduce((a, t) => a + (dims[t] ? rank * (dims[t][0] + dims[t][1]) : 0), 0);
      const trainable = perLayer * m.layers;
      const count = (n) => (n >= 1e9 ? (n / 1e9).toFixed(1) + " B" : n >= 1e6 ? (n / 1e6).toFixed(1) + " M" : n >= 1e3 ? (n / 1e3).toFixed(1) + " k" : String(n));
      items.push(["Trainable parameters", `${trainable.toLocaleString()} (${(100 * trainable / m.params).toFixed(2)}% of ${count(m.params)})`]);
      const weightBytes = field("method").value === "qlora" ? m.params * 0.56 : m.params * 4;
      const act = Number(field("batch").value) * cutoff * m.layers * h * 4 * (field("gradient_checkpointing").checked ? 2 : 30);
      const total = weightBytes + act + trainable * 16;
      const mib = (b) => (b >= 2 ** 20 ? `${(b / 2 ** 20).toFixed(0)} MiB` : `${Math.max(1, Math.round(b / 1024))} KiB`);
      items.push(["Memory", `about ${mib(total)} (weights ${mib(weightBytes)}, activations ${mib(act)} at the cut-off)`]);
    } else if (m) {
      items.push(["Trainable parameters", "unknown for this model"]);
    }
    items.push(["Tokens per epoch", rows ? `about ${tokensPerEpoch.toLocaleString()} (${trainRows} rows)` : "pick a datanet version"]);
    const measured = info.measured.find((x) => m && x.base === m.name && x.method === field("method").value) || info.measured[0];
    const epochs = Number(field("epochs").value);
    const steps = Number(field("max_steps").value);
    const tokens = steps > 0 ? steps * Number(field("batch").value) * Number(field("grad_accum").value) * Math.min(cutoff, 256) : tokensPerEpoch * epochs;
    if (measured && tokens) {
      const secs = tokens / measured.tokens_per_s;
      items.push(["Time", `about ${secs < 120 ? Math.round(secs) + " s" : Math.round(secs / 60) + " min"} at ${Math.round(measured.tokens_per_s)} tokens/s (measured here on ${measured.base}, ${measured.method})`]);
    } else {
      items.push(["Time", "no run has finished on this server yet: the first one measures its speed"]);
    }
    dl.replaceChildren(...items.flatMap(([k, v]) => [el("dt", { text: k }), el("dd", { text: v })]));
  }

  const fork = new URLSearchParams(location.search).get("fork");
  if (fork) {
    api("GET", `/runs/${fork}`).then((r) => {
      const c = r.config;
      set({ base: c.base, method: c.method, rank: c.rank, alpha: c.alpha, dropout: c.dropout, lr: String(c.lr), scheduler: c.scheduler, epochs: Math.round(c.epochs), max_steps: c.max_steps || 0, batch: c.batch, grad_accum: c.grad_accum, cutoff_len: c.data.cutoff_len, eval_split: c.data.eval_split, eval_every: c.eval_every || 0, seed: c.seed, gradient_checkpointing: c.gradient_checkpointing });
      const t = c.targets.join(",");
      if ([...field("targets").options].some((o) => o.value === t)) field("targets").value = t;
      for (const cb of $$('input[name="datanet"]', form)) cb.checked = c.sources.includes("datanet:" + cb.value);
      sync();
    }).catch((e) => flash(`Cannot fork run ${fork}: ${e.message}`));
  }

  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    const err = $("#run-error");
    err.hidden = true;
    const datanets = $$('input[name="datanet"]:checked', form).map((c) => c.value);
    if (!datanets.length) { err.textContent = "Pick at least one datanet version."; err.hidden = false; return; }
    const num = (n) => Number(field(n).value);
    const body = {
      base: field("base").value, datanets, method: field("method").value, rank: num("rank"), alpha: num("alpha"),
      dropout: num("dropout"), targets: field("targets").value.split(","), lr: Number(field("lr").value),
      scheduler: field("scheduler").value, epochs: num("epochs"), batch: num("batch"), grad_accum: num("grad_accum"),
      seed: num("seed"), gradient_checkpointing: field("gradient_checkpointing").checked,
      data: { cutoff_len: num("cutoff_len"), eval_split: num("eval_split") },
    };
    if (num("max_steps") > 0) body.max_steps = num("max_steps");
    if (num("eval_every") > 0) body.eval_every = num("eval_every");
    $("#start").disabled = true;
    try {
      const run = await api("POST", "/runs", body);
      location.href = `/runs/${run.id}`;
    } catch (x) {
      err.textContent = x.message;
      err.hidden = false;
      $("#start").disabled = false;
    }
  });
  sync();
}

// ---- the ledger: entries and in-page proof verification (RFC 9162)
const hex = (buf) => Array.from(new Uint8Array(buf)).map((b) => b.toString(16).padStart(2, "0")).join("");
const unhex = (s) => new Uint8Array(s.match(/../g).map((h) => parseInt(h, 16)));
async function sha256(...parts) {
  const len = parts.reduce((a, p) => a + p.length, 0);
  const all = new Uint8Array(len);
  let o = 0;
  for (const p of parts) { all.set(p, o); o += p.length; }
  return new Uint8Array(await crypto.subtle.digest("SHA-256", all));
}

/** RFC 9162 §2.1.3.2: the root an inclusion proof leads to. */
async function rootFromProof(index, size, leafHash, path) {
  if (index >= size) throw new Error("index beyond the tree");
  let fn = index, sn = size - 1, r = leafHash;
  for (const p of path) {
    if (sn === 0) throw new Error("proof too long");
    if ((fn & 1) === 1 || fn === sn) {
      r = await sha256(new Uint8Array([1]), p, r);
      if ((fn & 1) === 0) { while ((fn & 1) === 0 && fn !== 0) { fn >>= 1; sn >>= 1; } }
    } else {
      r = await sha256(new Uint8Array([1]), r, p);
    }
    fn >>= 1; sn >>= 1;
  }
  if (sn !== 0) throw new Error("proof too short");
  return r;
}

function initLedger() {
  const box = $("#entries");
  if (!box) return;
  const lines = $("#checkpoint").textContent.split("\n");
  const size = Number(lines[1]);
  const root = Uint8Array.from(atob(lines[2] || ""), (c) => c.charCodeAt(0));
  let top = size;
  const page = 20;
  const show = async () => {
    const from = Math.max(0, top - page);
    let res;
    try { res = await api("GET", `/ledger/entries?from=${from}&limit=${page}`); } catch (e) { box.replaceChildren(el("p", { class: "error", text: e.message })); return; }
    const table = el("table", {}, el("thead", {}, el("tr", {}, el("th", { scope: "col", text: "#" }), el("th", { scope: "col", text: "Event" }), el("th", { scope: "col", text: "Proof" }))));
    const body = el("tbody");
    for (const e of res.entries.slice().reverse()) {
      const ev = e.event || {};
      const what = e.hidden ? "(not shown to you: about an unpublished datanet or another user's pending or rejected file)"
        : ev.type ? `${ev.type} ${JSON.stringify(Object.fromEntries(Object.entries(ev).filter(([k]) => k !== "type")))}` : "(undecoded)";
      body.append(el("tr", {}, el("td", { text: e.index }), el("td", {}, el("code", { text: what.slice(0, 160) })),
        el("td", {}, el("button", { type: "button", class: "verify", "data-index": e.index, onclick: () => verify(e), text: "Verify inclusion" }))));
    }
    table.append(body);
    box.replaceChildren(size ? table : el("p", { class: "empty", text: "The ledger is empty." }));
  };
  const verify = async (entry) => {
    const card = $("#proof-card");
    const out = $("#proof");
    card.hidden = false;
    out.replaceChildren(el("p", { class: "muted", text: "Checking…" }));
    try {
      // A hidden entry is checked by its leaf hash alone.
      let leafHash = unhex(entry.leaf_hash);
      if (!entry.hidden) {
        const leaf = Uint8Array.from(atob(entry.leaf), (c) => c.charCodeAt(0));
        leafHash = await sha256(new Uint8Array([0]), leaf);
        if (hex(leafHash) !== entry.leaf_hash) throw new Error("the entry's bytes do not hash to its leaf hash");
      }
      const proof = await api("GET", `/ledger/proof/inclusion?index=${entry.index}&size=${size}`);
      const got = await rootFromProof(entry.index, size, leafHash, proof.hashes.map(unhex));
      const ok = hex(got) === hex(root);
      out.replaceChildren(
        el("p", { class: ok ? "ok" : "error", id: "proof-result", text: ok ? `Verified: entry ${entry.index} is in the log of ${size} entries.` : "NOT verified: the proof leads to a different root." }),
        el("p", { text: `Your browser hashed the entry (SHA-256 of 0x00 and its ${leaf.length} bytes), then combined it with the ${proof.hashes.length} sibling hashes of the proof, pairwise as RFC 9162 says, up to a root. That root ${ok ? "equals" : "differs from"} the root in the signed checkpoint above, so the server could not have left the entry out or changed it without changing the checkpoint it signed.` }),
        el("pre", { text: `leaf hash  ${hex(leafHash)}\nroot       ${hex(got)}\ncheckpoint ${hex(root)}` }));
    } catch (e) {
      out.replaceChildren(el("p", { class: "error", id: "proof-result", text: "Not verified: " + e.message }));
    }
  };
  $("#entries-prev").addEventListener("click", () => { top = Math.min(size, top + page); show(); });
  $("#entries-next").addEventListener("click", () => { if (top - page > 0) { top -= page; show(); } });
  show();
}

// ---- create / edit a datanet: the policy fields become a TOML policy
function initDatanetForm() {
  const form = $("#datanet-form");
  if (!form) return;
  const d = JSON.parse($("#datanet-json").textContent);
  const f = (n) => form.elements[n];
  if (d) {
    const p = d.policy;
    f("kind").value = p.kind;
    f("rows").value = typeof p.rows === "string" ? p.rows : "text";
    f("review").value = p.review;
    f("max_file_bytes").value = p.max_file_bytes;
    f("gates.min_words").value = p.gates.min_words;
    f("gates.max_words").value = p.gates.max_words;
    f("gates.languages").value = (p.gates.languages || []).join(", ");
    f("gates.pii").value = p.gates.pii;
    f("limits.user_files_per_day").value = p.limits.user_files_per_day;
  }
  const list = (s) => s.split(",").map((x) => x.trim()).filter((x) => x);
  const toml = () => [
    `kind = ${JSON.stringify(f("kind").value)}`,
    `rows = ${JSON.stringify(f("rows").value)}`,
    `review = ${JSON.stringify(f("review").value)}`,
    `max_file_bytes = ${Number(f("max_file_bytes").value)}`,
    "[limits]",
    `user_files_per_day = ${Number(f("limits.user_files_per_day").value)}`,
    "[gates]",
    `min_words = ${Number(f("gates.min_words").value)}`,
    `max_words = ${Number(f("gates.max_words").value)}`,
    `languages = ${JSON.stringify(list(f("gates.languages").value))}`,
    `pii = ${JSON.stringify(f("gates.pii").value)}`,
  ].join("\n") + "\n";
  const clear = () => { for (const e of $$(".field-error", form)) { e.hidden = true; e.textContent = ""; } $("#datanet-error").hidden = true; };
  const fail = (e) => {
    const key = e.key && $(`[id="err-${e.key}"]`);
    const target = key || $("#datanet-error");
    target.textContent = e.message;
    target.hidden = false;
    (key ? key.previousElementSibling : target).focus?.();
  };
  // Inline checks as the values change; the server checks again on submit.
  const live = () => {
    const problems = {};
    const name = f("name").value.trim();
    if (!d && name && !/^[a-z0-9][a-z0-9._-]*$/.test(name)) problems.name = "Lower-case letters, digits, - _ . only, starting with a letter or digit.";
    const mfb = Number(f("max_file_bytes").value);
    if (!(mfb >= 1 && mfb <= 268435456)) problems.max_file_bytes = "Between 1 byte and 268435456 (256 MiB).";
    const lo = Number(f("gates.min_words").value), hi = Number(f("gates.max_words").value);
    if (!(lo >= 0)) problems["gates.min_words"] = "0 or more.";
    if (hi > 0 && lo > hi) problems["gates.max_words"] = "At least the fewest words, or 0 for no limit.";
    if (!(Number(f("limits.user_files_per_day").value) >= 0)) problems["limits.user_files_per_day"] = "0 or more.";
    const langs = list(f("gates.languages").value);
    if (langs.some((l) => !/^[a-z]{2}$/.test(l))) problems["gates.languages"] = "Two-letter ISO 639-1 codes, such as en, fr.";
    for (const e of $$(".field-error", form)) {
      const key = e.id.slice(4);
      e.textContent = problems[key] || "";
      e.hidden = !problems[key];
    }
    return Object.keys(problems).length === 0;
  };
  form.addEventListener("input", live);
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    clear();
    if (!live()) { $(".field-error:not([hidden])", form).previousElementSibling.focus(); return; }
    if (!d && !f("name").value.trim()) return fail({ key: "name", message: "A datanet needs a name (lower-case letters, digits, - _ .)." });
    const body = { summary: f("summary").value, description: f("description").value, tags: list(f("tags").value) };
    if (!d || !d.published) body.policy = toml();
    $("#datanet-save").disabled = true;
    try {
      if (d) {
        await api("PATCH", `/datanets/${encodeURIComponent(d.name)}`, body);
        location.href = `/datanets/${encodeURIComponent(d.name)}`;
      } else {
        body.name = f("name").value.trim();
        body.publish = f("publish").checked;
        const made = await api("POST", "/datanets", body);
        location.href = `/datanets/${encodeURIComponent(made.name)}`;
      }
    } catch (e) {
      const m = /policy key `([^`]+)`/.exec(e.message);
      fail({ key: m ? m[1] : null, message: e.message });
      $("#datanet-save").disabled = false;
    }
  });
}

function initPublish() {
  const b = $("#publish-datanet");
  if (!b) return;
  b.addEventListener("click", async () => {
    if (!confirm("Publish? Anyone can then see and contribute, and the policy is fixed.")) return;
    try { await api("POST", `/datanets/${encodeURIComponent(b.dataset.datanet)}/publish`); location.reload(); } catch (e) { flash(e.message); }
  });
}

// ---- the OpenAI-compatible API from the page
async function openai(path, body, signal) {
  const resp = await fetch(path, {
    method: "POST", credentials: "same-origin", signal,
    headers: { "Content-Type": "application/json", "X-CSRF-Token": csrf() },
    body: JSON.stringify(body),
  });
  if (!resp.ok) {
    let msg = `HTTP ${resp.status}`;
    try { msg = (await resp.json()).error.message; } catch (_) { /* not JSON */ }
    throw new Error(msg);
  }
  return resp;
}

/** Streams a chat completion, calling onText with each piece; resolves to the final chunk. */
async function streamChat(body, onText, signal) {
  const resp = await openai("/v1/chat/completions", { ...body, stream: true }, signal);
  const reader = resp.body.getReader();
  const dec = new TextDecoder();
  let buf = "", last = null;
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buf += dec.decode(value, { stream: true });
    let i;
    while ((i = buf.indexOf("\n\n")) >= 0) {
      const block = buf.slice(0, i);
      buf = buf.slice(i + 2);
      const data = block.split("\n").filter((l) => l.startsWith("data:")).map((l) => l.slice(5).trim()).join("");
      if (!data || data === "[DONE]") continue;
      const chunk = JSON.parse(data);
      if (chunk.error) throw new Error(chunk.error.message);
      const piece = chunk.choices[0].delta.content;
      if (piece) onText(piece);
      last = chunk;
    }
  }
  return last;
}

/** The `attribution` of an answer: who it draws on, with their shares and the spans. */
function attributionList(items, method) {
  const box = el("div", { class: "attribution" });
  if (!items.length) {
    const none = method === "gradient"
      ? "No training row of a published adapter resembles this answer by its gradient."
      : "No verbatim span of 8+ tokens from a published adapter's training rows.";
    box.append(el("p", { class: "hint", text: none }));
    return box;
  }
  const list = el("ul");
  for (const a of items) {
    const spans = a.spans.length ? a.spans.map((s) => `“${s.text}”`).join(" · ") : "by gradient influence";
    list.append(el("li", {},
      el("strong", { text: `${Math.round(a.score * 100)}% ${a.contributor}` }),
      el("span", { class: "hint", text: ` ${a.datanet}, contribution #${a.contribution_id}` }),
      el("p", { class: "span-text", text: spans })));
  }
  box.append(el("p", { class: "hint", text: "Drawn from:" }), list);
  return box;
}

function initChat() {
  const form = $("#chat-form");
  if (!form) return;
  const select = $("#chat-model");
  const conv = $("#conversation");
  const history = [];
  fetch("/v1/models", { credentials: "same-origin" }).then((r) => r.json()).then((list) => {
    const ids = (list.data || []).map((m) => m.id);
    select.replaceChildren(...ids.map((id) => el("option", { value: id, text: id })));
    if (!ids.length) select.append(el("option", { value: "", text: "no model: merit model pull smollm2" }));
    const want = select.dataset.selected;
    if (want && ids.includes(want)) select.value = want;
  }).catch((e) => flash("Cannot list the models: " + e.message));
  for (const id of ["chat-temperature", "chat-top-p"]) {
    const r = $("#" + id);
    r.addEventListener("input", () => { $(`#${id}-out`).textContent = r.value; });
  }
  $("#chat-clear").addEventListener("click", () => { history.length = 0; conv.replaceChildren(); });
  $("#chat-input").addEventListener("keydown", (e) => { if (e.key === "Enter" && !e.shiftKey) { e.preventDefault(); form.requestSubmit(); } });
  let abort = null;
  $("#chat-stop").addEventListener("click", () => abort && abort.abort());
  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    const text = $("#chat-input").value.trim();
    if (!text || abort) return;
    $("#chat-input").value = "";
    history.push({ role: "user", content: text });
    conv.append(el("li", { class: "msg msg-user" }, el("strong", { text: "You" }), el("p", { text })));
    const out = el("p", { class: "answer" });
    const meta = el("span", { class: "muted" });
    conv.append(el("li", { class: "msg msg-assistant" }, el("strong", { text: select.value }), out, meta));
    const messages = [];
    const system = $("#chat-system").value.trim();
    if (system) messages.push({ role: "system", content: system });
    messages.push(...history);
    const method = $("#chat-attribution").value;
    abort = new AbortController();
    $("#chat-stop").hidden = false;
    $("#chat-send").disabled = true;
    try {
      const last = await streamChat({
        model: select.value, messages, temperature: Number($("#chat-temperature").value), top_p: Number($("#chat-top-p").value),
        max_tokens: Number($("#chat-max-tokens").value), seed: Number($("#chat-seed").value),
        attribution: method === "off" ? false : method === "gradient" ? { method: "gradient" } : true,
      }, (piece) => { out.textContent += piece; }, abort.signal);
      history.push({ role: "assistant", content: out.textContent });
      if (last && last.usage) meta.textContent = `${last.usage.completion_tokens} tokens · ${last.choices[0].finish_reason}`;
      if (last && Array.isArray(last.attribution)) meta.after(attributionList(last.attribution, method));
    } catch (x) {
      if (x.name === "AbortError") meta.textContent = "stopped";
      else { out.classList.add("error"); out.textContent = x.message; history.pop(); }
    } finally {
      abort = null;
      $("#chat-stop").hidden = true;
      $("#chat-send").disabled = false;
    }
  });
}

function initEvaluate() {
  const b = $("#eval-run");
  if (!b) return;
  b.addEventListener("click", async () => {
    const prompts = $("#eval-prompts").value.split("\n").map((p) => p.trim()).filter((p) => p);
    if (!prompts.length) return flash("Write at least one prompt.");
    const table = $("#eval-table");
    const body = table.tBodies[0];
    body.replaceChildren();
    table.hidden = false;
    b.disabled = true;
    for (const p of prompts) {
      const cells = [el("td", { text: "…" }), el("td", { text: "…" })];
      body.append(el("tr", {}, el("td", { text: p }), ...cells));
      for (const [i, model] of [b.dataset.base, b.dataset.tuned].entries()) {
        try {
          const r = await (await openai("/v1/chat/completions", { model, messages: [{ role: "user", content: p }], temperature: 0, max_tokens: 96 })).json();
          cells[i].textContent = r.choices[0].message.content;
        } catch (e) {
          cells[i].textContent = e.message;
          cells[i].classList.add("error");
        }
      }
    }
    b.disabled = false;
  });
}

// ---- the account page: API tokens
function initAccount() {
  const box = $("#tokens");
  if (!box) return;
  const when = (ms) => (ms ? new Date(ms).toISOString().slice(0, 16).replace("T", " ") : "—");
  const load = async () => {
    let list;
    try { list = await api("GET", "/tokens"); } catch (e) { box.replaceChildren(el("p", { class: "error", text: e.message })); return; }
    const table = el("table", {}, el("thead", {}, el("tr", {}, ...["Token", "Label", "Made", "Expires", "State", ""].map((h) => el("th", { scope: "col", text: h })))));
    const body = el("tbody");
    for (const t of list) {
      const state = t.active ? "active" : t.revoked_at ? `revoked ${when(t.revoked_at)}` : "expired";
      const revoke = el("button", { type: "button", class: "revoke", "data-id": t.id, text: "Revoke", "aria-label": `Revoke token ${t.id}` });
      revoke.hidden = !t.active;
      revoke.addEventListener("click", async () => {
        revoke.disabled = true;
        try { await api("DELETE", `/tokens/${t.id}`); await load(); } catch (e) { flash(e.message); revoke.disabled = false; }
      });
      body.append(el("tr", { "data-id": t.id }, el("td", {}, el("code", { text: t.id })), el("td", { text: t.label || "—" }),
        el("td", { text: when(t.created_at) }), el("td", { text: when(t.expires_at) }), el("td", { class: "state", text: state }), el("td", {}, revoke)));
    }
    table.append(body);
    box.replaceChildren(table);
  };
  $("#new-token").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const body = { label: $("#token-label").value };
    const days = $("#token-days").value;
    if (days) body.expires_in_days = Number(days);
    try {
      const made = await api("POST", "/tokens", body);
      const out = $("#new-token-value");
      out.querySelector("code").textContent = made.token;
      out.hidden = false;
      await load();
    } catch (e) { flash(e.message); }
  });
  load();
}

document.addEventListener("DOMContentLoaded", () => {
  initAccount();
  initChat();
  initEvaluate();
  initDatanetForm();
  initPublish();
  initContribute();
  initReview();
  initSortable();
  initRun();
  initCompare();
  initRunForm();
  initLedger();
});
