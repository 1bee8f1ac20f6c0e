/* Fleet page: every thing, counts at the top; refreshed every few seconds without reload. */
"use strict";

(function () {
  const { el, clear, getJSON, time, ago, thingLink, status, rejectedText } = DA;
  const REFRESH_MS = 5000;
  const columns = [
    { key: "name", label: "Thing" },
    { key: "state", label: "State" },
    { key: "last_seen", label: "Last report" },
    { key: "reports", label: "Stored", cls: "hide-narrow" },
    { key: "accepted", label: "Accepted", cls: "hide-narrow" },
    { key: "rejected_total", label: "Rejected" },
    { key: "violations", label: "Violations" },
    { key: "ports", label: "Listening ports" },
  ];
  let sortKey = "name";
  let sortDir = 1;
  let last = null;

  const box = document.getElementById("fleet");
  const countsBox = document.getElementById("counts");
  const filter = document.getElementById("filter");
  const stateFilter = document.getElementById("state-filter");
  const statusBox = document.getElementById("status");

  function rejectedTotal(t) {
    return Object.values(t.rejected || {}).reduce((a, b) => a + b, 0);
  }

  function portsText(t) {
    const parts = [];
    if (t.tcp_ports.length) parts.push("TCP " + t.tcp_ports.join(", "));
    if (t.udp_ports.length) parts.push("UDP " + t.udp_ports.join(", "));
    return parts.join("; ") || "—";
  }

  function value(t, key) {
    if (key === "rejected_total") return rejectedTotal(t);
    if (key === "ports") return t.tcp_ports.length + t.udp_ports.length;
    if (key === "accepted") return t.accepted === null ? -1 : t.accepted;
    return t[key];
  }

  function renderCounts(counts) {
    clear(countsBox);
    const items = [["things", "things"], ["reporting", "reporting"], ["late", "late"],
      ["silent", "silent"], ["in_alarm", "in alarm"]];
    for (const [key, label] of items) {
      countsBox.appendChild(el("div", { class: "count", id: "count-" + key }, [
        el("span", { class: "n", text: counts[key] }), el("span", { class: "label", text: label }),
      ]));
    }
  }

  function visible(things) {
    const needle = filter.value.trim().toLowerCase();
    const state = stateFilter.value;
    return things.filter((t) => {
      if (state === "alarm" ? !t.violations : state && t.state !== state) return false;
      if (!needle) return true;
      return t.name.toLowerCase().includes(needle) || portsText(t).toLowerCase().includes(needle);
    }).sort((a, b) => {
      const x = value(a, sortKey), y = value(b, sortKey);
      return (x < y ? -1 : x > y ? 1 : 0) * sortDir || (a.name < b.name ? -1 : 1);
    });
  }

  function render() {
    if (!last) return;
    renderCounts(last.counts);
    clear(box);
    if (!last.things.length) {
      box.appendChild(el("p", { class: "empty", id: "empty", text:
        "No thing has reported yet. Reports accepted by the service appear here within seconds." }));
      return;
    }
    const head = el("tr", {}, columns.map((c) => {
      const th = el("th", { class: "sortable " + (c.cls || ""), "data-key": c.key, text: c.label });
      if (c.key === sortKey) th.classList.add(sortDir > 0 ? "sorted-asc" : "sorted-desc");
      th.addEventListener("click", () => {
        sortDir = sortKey === c.key ? -sortDir : 1;
        sortKey = c.key;
        render();
      });
      return th;
    }));
    const rows = visible(last.things).map((t) => el("tr", { "data-thing": t.name }, [
      el("td", {}, [thingLink(t.name)]),
      el("td", { class: "state state-" + t.state, text: t.state }),
      el("td", { title: time(t.last_seen), text: ago(t.last_seen, last.now) }),
      el("td", { class: "hide-narrow", text: t.reports }),
      el("td", { class: "hide-narrow", text: t.accepted === null ? "—" : t.accepted }),
      el("td", { text: rejectedText(t.rejected) }),
      el("td", { class: t.violations ? "alarm" : "", text: t.violations }),
      el("td", { text: portsText(t) }),
    ]));
    const table = el("table", { id: "fleet-table" }, [el("thead", {}, [head]), el("tbody", {}, rows)]);
    box.appendChild(el("div", { class: "table-wrap" }, [table]));
    if (!rows.length) box.appendChild(el("p", { class: "empty", text: "No thing matches the filter." }));
  }

  async function refresh() {
    try {
      last = await getJSON("/dashboard/api/fleet");
      render();
      status(statusBox, "updated " + time(last.now), false);
    } catch (e) {
      status(statusBox, "cannot load the fleet: " + e.message, true);
    }
  }

  filter.addEventListener("input", render);
  stateFilter.addEventListener("change", render);
  refresh();
  setInterval(refresh, REFRESH_MS);
})();
