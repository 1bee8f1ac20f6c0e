/* Thing page: charts of every numeric metric, sets with when each member appeared,
 * violations, the last report; a time-range picker. Live ranges refresh every 10 s. */
"use strict";

(function () {
  const { el, clear, getJSON, time, ago, status, rejectedText } = DA;
  const REFRESH_MS = 10000;
  const LABELS = {
    "aws:all-bytes-in": "bytes in", "aws:all-bytes-out": "bytes out",
    "aws:all-packets-in": "packets in", "aws:all-packets-out": "packets out",
    "aws:num-established-tcp-connections": "established TCP connections",
    "aws:num-listening-tcp-ports": "listening TCP ports",
    "aws:num-listening-udp-ports": "listening UDP ports",
    "aws:listening-tcp-ports": "listening TCP ports",
    "aws:listening-udp-ports": "listening UDP ports",
    "aws:destination-ip-addresses": "destination IP addresses",
  };
  const name = new URLSearchParams(location.search).get("name") || "";
  const title = document.getElementById("title");
  const statusBox = document.getElementById("status");
  const range = document.getElementById("range");
  const from = document.getElementById("from");
  const to = document.getElementById("to");
  let plots = [];

  function label(metric) { return LABELS[metric] ? LABELS[metric] + " (" + metric + ")" : metric; }

  function localInput(seconds) {
    const d = new Date(seconds * 1000 - new Date().getTimezoneOffset() * 60000);
    return d.toISOString().slice(0, 19);
  }

  function window_() {
    if (range.value === "custom") {
      const since = Date.parse(from.value) / 1000, until = Date.parse(to.value) / 1000;
      if (!isFinite(since) || !isFinite(until) || since >= until) return null;
      return { since, until, live: false };
    }
    const until = Date.now() / 1000;
    return { since: until - Number(range.value), until, live: true };
  }

  function summary(doc) {
    const box = document.getElementById("summary");
    clear(box);
    const items = [
      [doc.state, "state", "state state-" + doc.state],
      [ago(doc.last_seen, doc.now), "last report (" + time(doc.last_seen) + ")", ""],
      [doc.reports, "reports stored", ""],
      [Math.round(doc.interval) + " s", "mean interval", ""],
      [doc.accepted === null ? "—" : doc.accepted, "accepted (this service run)", ""],
      [rejectedText(doc.rejected), "rejected by code", ""],
      [doc.active.length, "active violations", doc.active.length ? "alarm" : ""],
    ];
    for (const [n, text, cls] of items) {
      box.appendChild(el("div", { class: "count" }, [
        el("span", { class: "n " + cls, text: n }), el("span", { class: "label", text: text }),
      ]));
    }
  }

  function charts(doc) {
    const box = document.getElementById("charts");
    for (const p of plots) p.destroy();
    plots = [];
    clear(box);
    if (!doc.series.length) {
      box.appendChild(el("p", { class: "empty", text: "No numeric value in this time range." }));
      return;
    }
    for (const s of doc.series) {
      const holder = el("div", { class: "plot" });
      const card = el("div", { class: "chart", "data-metric": s.metric }, [
        el("h3", { text: label(s.metric) + (s.bucket_s > 1 ? " · mean per " + s.bucket_s + " s" : "") }),
        holder,
      ]);
      box.appendChild(card);
      const xs = s.points.map((p) => p[0]), ys = s.points.map((p) => p[1]);
      const width = Math.max(260, holder.clientWidth || 320);
      const opts = {
        width, height: 180,
        legend: { show: false },
        scales: { x: { time: true, range: [doc.since, doc.until] } },
        series: [{}, { label: s.metric, stroke: "#0969da", width: 2, fill: "rgba(9,105,218,0.08)",
          points: { show: s.points.length < 60, size: 5 } }],
        axes: [{}, { size: 60 }],
      };
      plots.push(new uPlot(opts, [xs, ys], holder));
    }
  }

  function sets(doc) {
    const box = document.getElementById("sets");
    clear(box);
    if (!doc.sets.length) {
      box.appendChild(el("p", { class: "empty", text: "No set-valued metric (ports, addresses, string lists) in this time range." }));
      return;
    }
    for (const s of doc.sets) {
      const rows = s.items.map((a) => el("tr", { class: a.present ? "" : "gone" }, [
        el("td", { class: "member", text: a.value }),
        el("td", { class: a.at_start ? "" : "new", text: (a.at_start ? "≤ " : "") + time(a.first) }),
        el("td", { text: a.present ? "now" : time(a.last) }),
      ]));
      const table = el("table", {}, [
        el("thead", {}, [el("tr", {}, [el("th", { text: "Value" }), el("th", { text: "First seen" }), el("th", { text: "Last seen" })])]),
        el("tbody", {}, rows.length ? rows : [el("tr", {}, [el("td", { colspan: 3, class: "muted", text: "empty set" })])]),
      ]);
      box.appendChild(el("div", { class: "chart", "data-metric": s.metric }, [
        el("h3", { text: label(s.metric) }), el("div", { class: "table-wrap" }, [table]),
      ]));
    }
  }

  function violations(doc) {
    const box = document.getElementById("violations");
    clear(box);
    const rows = [];
    for (const v of doc.active) {
      rows.push(el("tr", { class: "alarm" }, [
        el("td", { text: "active since " + time(v.violationStartTime) }),
        el("td", { text: v.securityProfileName }), el("td", { text: (v.behavior || {}).name }),
        el("td", { text: v.verificationState || "—" }),
      ]));
    }
    for (const e of doc.events.slice().reverse()) {
      rows.push(el("tr", {}, [
        el("td", { text: e.violationEventType + " " + time(e.violationEventTime) }),
        el("td", { text: e.securityProfileName }), el("td", { text: (e.behavior || {}).name }),
        el("td", { text: e.verificationState || "—" }),
      ]));
    }
    if (!rows.length) {
      box.appendChild(el("p", { class: "empty", text: "No violation in this time range." }));
      return;
    }
    box.appendChild(el("div", { class: "table-wrap" }, [el("table", {}, [
      el("thead", {}, [el("tr", {}, ["When", "Profile", "Behavior", "Verification"].map((t) => el("th", { text: t })))]),
      el("tbody", {}, rows),
    ])]));
  }

  function raw(doc) {
    const meta = document.getElementById("raw-meta");
    const pre = document.getElementById("raw");
    if (!doc.last_report) {
      meta.textContent = "No report document stored for this thing yet.";
      pre.textContent = "";
      return;
    }
    meta.textContent = "Received " + time(doc.last_report.received_at) + " as " +
      doc.last_report.format.toUpperCase() + (doc.last_report.format === "cbor" ? " (decoded)" : "");
    pre.textContent = JSON.stringify(doc.last_report.document, null, 2);
  }

  async function refresh() {
    const w = window_();
    if (!w) { status(statusBox, "pick a start before the end", true); return; }
    if (!name) { status(statusBox, "no thing named in the address (?name=…)", true); return; }
    const url = "/dashboard/api/thing?name=" + encodeURIComponent(name) +
      "&since=" + w.since + "&until=" + w.until;
    try {
      const doc = await getJSON(url);
      summary(doc); charts(doc); sets(doc); violations(doc); raw(doc);
      status(statusBox, "updated " + time(doc.now), false);
    } catch (e) {
      status(statusBox, "cannot load " + name + ": " + e.message, true);
    }
  }

  title.textContent = name || "Thing";
  document.title = (name || "Thing") + " · defender-agent";
  const now = Date.now() / 1000;
  from.value = localInput(now - 86400);
  to.value = localInput(now);
  range.addEventListener("change", () => { if (range.value !== "custom") refresh(); });
  document.getElementById("apply").addEventListener("click", () => { range.value = "custom"; refresh(); });
  refresh();
  setInterval(() => { const w = window_(); if (w && w.live) refresh(); }, REFRESH_MS);
})();
