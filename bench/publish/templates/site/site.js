// Sorting, filtering and the details panel of the report page. No network, no library: the page
// works from file://. Data of the cells (fingerprints, protocols) comes from #bench-data.
"use strict";
(function () {
  const data = JSON.parse(document.getElementById("bench-data").textContent);
  const table = document.getElementById("board");
  const body = table.tBodies[0];
  const rows = Array.from(body.rows);
  const total = rows.length;

  // ---- filters -------------------------------------------------------------------------------
  const filters = {
    suite: document.getElementById("f-suite"),
    teacher: document.getElementById("f-teacher"),
    steps: document.getElementById("f-steps"),
    kind: document.getElementById("f-kind"),
  };
  const methodBox = document.getElementById("f-method");

  function matches(el) {
    for (const [key, select] of Object.entries(filters)) {
      if (select.value !== "" && el.dataset[key] !== undefined && el.dataset[key] !== select.value) {
        return false;
      }
    }
    return true;
  }

  function applyFilters() {
    const needle = methodBox.value.trim().toLowerCase();
    let shown = 0;
    for (const row of rows) {
      const visible = matches(row) && (needle === "" || row.dataset.method.toLowerCase().includes(needle));
      row.hidden = !visible;
      shown += visible ? 1 : 0;
    }
    for (const section of document.querySelectorAll("section.teacher")) {
      section.hidden = !matches(section);
    }
    document.getElementById("count").textContent = `Showing ${shown} of ${total} rows`;
  }

  for (const select of Object.values(filters)) select.addEventListener("change", applyFilters);
  methodBox.addEventListener("input", applyFilters);

  for (const box of document.querySelectorAll("input[data-group]")) {
    box.addEventListener("change", () => table.classList.toggle("hide-" + box.dataset.group, !box.checked));
  }

  // ---- sorting: first click ascending, second descending; empty cells always last ------------
  const headers = Array.from(table.tHead.rows[0].cells);
  headers.forEach((th, column) => {
    th.querySelector("button").addEventListener("click", () => {
      const ascending = th.getAttribute("aria-sort") !== "ascending";
      headers.forEach((other) => other.removeAttribute("aria-sort"));
      th.setAttribute("aria-sort", ascending ? "ascending" : "descending");
      const numeric = th.dataset.type === "num";
      const key = (row) => row.cells[column].dataset.sort;
      const sorted = rows.slice().sort((a, b) => {
        const x = key(a), y = key(b);
        if (x === "" || y === "") return (x === "") - (y === "");
        const order = numeric ? Number(x) - Number(y) : (x < y ? -1 : x > y ? 1 : 0);
        return ascending ? order : -order;
      });
      for (const row of sorted) body.appendChild(row);
    });
  });

  // ---- details panel -------------------------------------------------------------------------
  const panel = document.getElementById("panel");
  const panelBody = document.getElementById("panel-body");

  function el(tag, text, className) {
    const node = document.createElement(tag);
    if (text !== undefined && text !== null) node.textContent = String(text);
    if (className) node.className = className;
    return node;
  }

  function field(list, name, value) {
    if (value === undefined || value === null || value === "") return;
    list.append(el("dt", name), el("dd", value));
  }

  function showCell(info, metric) {
    const box = panelBody.querySelector(".cell-detail");
    box.replaceChildren();
    const cell = info.cells.find((c) => c.metric === metric);
    for (const tr of panelBody.querySelectorAll("tr[data-metric]")) {
      tr.classList.toggle("selected", tr.dataset.metric === metric);
    }
    if (!cell) return;
    box.append(el("h3", `${cell.label} cell`));
    const list = el("dl");
    field(list, "Fingerprint", cell.fingerprint);
    field(list, "Value", cell.value === null ? "" : cell.value);
    field(list, "Run", cell.run_id);
    field(list, "Time", cell.time);
    field(list, "Seed", cell.seed);
    field(list, "Student", cell.student);
    field(list, "Device", cell.device);
    field(list, "Note", cell.note);
    if (cell.superseded.length) {
      field(list, "Older fingerprints", cell.superseded.map(([fp, run]) => `${fp} (run ${run})`).join(", "));
    }
    box.append(list, el("h4", "Protocol"), el("pre", data.protocols[cell.protocol], "protocol"));
  }

  function openRow(index, metric) {
    const info = data.rows[index];
    panelBody.replaceChildren();
    panelBody.append(el("h2", `${info.method} · ${info.steps} step${info.steps === 1 ? "" : "s"} · CFG ${info.cfg}`));
    panelBody.firstChild.id = "panel-title";
    const about = el("dl");
    field(about, "Suite / teacher", `${info.suite} / ${info.teacher}`);
    field(about, "Kind", info.kind === "canonical" ? "canonical" : `ablation of ${info.varies}`);
    field(about, "Experiment file", info.config_path);
    field(about, "Experiment", info.description);
    field(about, "NFE", info.nfe);
    field(about, "Row fingerprint", info.fingerprint);
    panelBody.append(about);

    const cells = el("table", null, "cells");
    const head = cells.createTHead().insertRow();
    for (const name of ["Metric", "Value", "Fingerprint", "Run"]) head.append(el("th", name));
    const tbody = cells.createTBody();
    for (const cell of info.cells) {
      const name = cell.metric;
      const tr = tbody.insertRow();
      tr.dataset.metric = name;
      tr.tabIndex = 0;
      tr.append(el("td", cell.label), el("td", cell.value === null ? "—" : cell.value, "num"),
                el("td", cell.fingerprint, "mono"), el("td", cell.run_id, "mono"));
      tr.addEventListener("click", () => showCell(info, name));
      tr.addEventListener("keydown", (event) => { if (event.key === "Enter") showCell(info, name); });
    }
    panelBody.append(cells, el("div", null, "cell-detail"));
    const chosen = info.cells.find((c) => c.metric === metric) || info.cells[0];
    if (chosen) showCell(info, chosen.metric);
    if (!panel.open) panel.showModal();
  }

  body.addEventListener("click", (event) => {
    const button = event.target.closest("button.open");
    if (!button) return;
    openRow(Number(button.closest("tr").dataset.row), button.dataset.metric);
  });
  panel.addEventListener("click", (event) => { if (event.target === panel) panel.close(); });

  applyFilters();
})();
