/* ivig-cds SMART trend page: draws /smart/api/patient with Chart.js (vendored, same origin).
 *
 * Every piece of patient data reaches the DOM through textContent or Chart.js's canvas, never
 * through HTML parsing. After each chart renders, its canvas carries a machine-readable summary
 * of what Chart.js drew (data-points, data-thresholds, data-chart-area, data-dpr) and the body
 * gets data-ready="true" once everything is on the page (data-ready="error" on a failure).
 */
(function () {
  "use strict";

  var DAY = 86400000;
  var COLORS = {
    IgG: "#1f5fbf", IgM: "#c25700", IgA: "#2e7d32",
    igm_low_mg_dl: "#c25700", igg_borderline_from_mg_dl: "#7fa6e0", igg_deficient_mg_dl: "#1f5fbf",
    trough_target_mg_dl: "#7b1fa2", titer_protective_ug_ml: "#b00020",
    infusion: "#00838f", infection: "#b00020", ppsv23: "#6d4c41", pre: "#9e9e9e", post: "#1f5fbf"
  };
  var DASHES = {
    igm_low_mg_dl: [6, 4], igg_borderline_from_mg_dl: [2, 3], igg_deficient_mg_dl: [6, 4],
    trough_target_mg_dl: [10, 4], titer_protective_ug_ml: [6, 4]
  };
  var LANES = ["Infection", "IVIG infusion", "PPSV23"];

  function el(tag, text, cls) {
    var node = document.createElement(tag);
    if (text !== undefined && text !== null) node.textContent = String(text);
    if (cls) node.className = cls;
    return node;
  }

  function show(id) { document.getElementById(id).hidden = false; }

  function ts(isoDate) {
    var p = isoDate.split("-");
    return Date.UTC(+p[0], +p[1] - 1, +p[2]);
  }

  function isoDay(ms) { return new Date(ms).toISOString().slice(0, 10); }

  function round(v) { return Math.round(v * 1000) / 1000; }

  /* What Chart.js actually laid out: drawn elements per dataset, threshold lines by pixel. */
  var summaryPlugin = {
    id: "ivigSummary",
    afterRender: function (chart) {
      var points = {};
      var lines = [];
      chart.data.datasets.forEach(function (ds, i) {
        var meta = chart.getDatasetMeta(i);
        if (!chart.isDatasetVisible(i)) return;
        var drawn = meta.data.filter(function (e) { return Number.isFinite(e.x) && Number.isFinite(e.y); });
        if (ds.ivigThreshold) {
          var scale = chart.scales[meta.yAxisID];
          var first = drawn[0], last = drawn[drawn.length - 1];
          if (!first) return;
          lines.push({
            key: ds.ivigThreshold.key, label: ds.label, configured: ds.ivigThreshold.value,
            value: round(scale.getValueForPixel(first.y)), y: round(first.y),
            x0: round(first.x), x1: round(last.x), color: ds.borderColor
          });
        } else {
          points[ds.label] = drawn.length;
        }
      });
      var canvas = chart.canvas;
      canvas.setAttribute("data-points", JSON.stringify(points));
      canvas.setAttribute("data-thresholds", JSON.stringify(lines));
      canvas.setAttribute("data-chart-area", JSON.stringify({
        left: round(chart.chartArea.left), right: round(chart.chartArea.right),
        top: round(chart.chartArea.top), bottom: round(chart.chartArea.bottom)
      }));
      canvas.setAttribute("data-dpr", String(chart.currentDevicePixelRatio));
      canvas.setAttribute("data-rendered", "true");
    }
  };

  function thresholdDataset(t, xs, yAxisID) {
    return {
      type: "line", label: t.label, ivigThreshold: t, yAxisID: yAxisID,
      data: xs.map(function (x) { return { x: x, y: t.value }; }),
      borderColor: COLORS[t.key] || "#555", borderDash: DASHES[t.key] || [6, 4], borderWidth: 2,
      pointStyle: "line", pointRadius: 0, pointHoverRadius: 0, pointHitRadius: 0, fill: false, tension: 0, order: 10
    };
  }

  function renderPatient(view) {
    var dl = document.getElementById("patient");
    var p = view.patient || {};
    var rows = [["Patient", p.name || "(no name on record)"], ["Born", p.birthDate || "unknown"],
      ["Age", p.age !== null && p.age !== undefined ? p.age + " years" : "unknown"], ["Sex", p.gender || "unknown"]];
    rows.forEach(function (r) { dl.appendChild(el("dt", r[0])); dl.appendChild(el("dd", r[1])); });
    document.getElementById("today").textContent = view.today;
    document.getElementById("ruleset").textContent = view.ruleset_version;
  }

  function renderCards(view) {
    var list = document.getElementById("cards");
    if (!view.cards.length) {
      list.appendChild(el("li", "No cards: nothing for the IVIG question in this record.", "card none"));
    }
    view.cards.forEach(function (c) {
      var li = el("li", null, "card " + (c.indicator || "info"));
      li.setAttribute("data-topic", c.topic || "");
      li.appendChild(el("span", c.indicator, "indicator"));
      li.appendChild(el("strong", c.summary));
      li.appendChild(el("span", c.topic_display || c.topic, "topic"));
      var details = el("details");
      details.appendChild(el("summary", "Card detail"));
      details.appendChild(el("pre", c.detail, "detail"));
      li.appendChild(details);
      list.appendChild(li);
    });
    show("cards-section");
  }

  function igChart(view) {
    var igThresholds = view.thresholds.filter(function (t) { return t.chart === "ig"; });
    var stamps = [ts(view.today)];
    var maxValue = 0;
    ["IgG", "IgM", "IgA"].forEach(function (name) {
      view.series[name].points.forEach(function (p) { stamps.push(ts(p.date)); maxValue = Math.max(maxValue, p.value); });
    });
    view.ivig.infusions.forEach(function (i) { stamps.push(ts(i.date)); });
    view.infections.episodes.forEach(function (e) { stamps.push(ts(e.date)); });
    if (view.pneumococcal.vaccination) stamps.push(ts(view.pneumococcal.vaccination));
    var xmin = Math.min.apply(null, stamps) - 30 * DAY;
    var xmax = ts(view.today) + 15 * DAY;
    igThresholds.forEach(function (t) { maxValue = Math.max(maxValue, t.value); });

    var datasets = [];
    ["IgG", "IgM", "IgA"].forEach(function (name) {
      var color = COLORS[name];
      datasets.push({
        type: "line", label: name + " (mg/dL)", yAxisID: "y", borderColor: color, backgroundColor: color,
        data: view.series[name].points.map(function (p) { return { x: ts(p.date), y: p.value, point: p }; }),
        pointRadius: 5, pointHoverRadius: 7, borderWidth: 2, tension: 0, fill: false, order: 1,
        pointBackgroundColor: function (ctx) {
          return ctx.raw && ctx.raw.point && ctx.raw.point.confounded ? "#ffffff" : color;
        }
      });
    });
    igThresholds.forEach(function (t) { datasets.push(thresholdDataset(t, [xmin, xmax], "y")); });
    datasets.push({
      type: "scatter", label: "IVIG infusion", yAxisID: "events", pointStyle: "triangle", pointRadius: 6,
      borderColor: COLORS.infusion, backgroundColor: COLORS.infusion,
      data: view.ivig.infusions.map(function (i) { return { x: ts(i.date), y: "IVIG infusion", infusion: i }; })
    });
    datasets.push({
      type: "scatter", label: "Infection", yAxisID: "events", pointStyle: "rectRot", pointRadius: 7,
      borderColor: COLORS.infection,
      backgroundColor: function (ctx) {
        var e = ctx.raw && ctx.raw.episode;
        return e && e.kind === "minor" ? "#ffffff" : COLORS.infection;
      },
      data: view.infections.episodes.map(function (e) { return { x: ts(e.date), y: "Infection", episode: e }; })
    });
    datasets.push({
      type: "scatter", label: "PPSV23", yAxisID: "events", pointStyle: "star", pointRadius: 8, borderWidth: 2,
      borderColor: COLORS.ppsv23, backgroundColor: COLORS.ppsv23,
      data: view.pneumococcal.vaccination ? [{ x: ts(view.pneumococcal.vaccination), y: "PPSV23" }] : []
    });

    var canvas = document.getElementById("ig-chart");
    show("ig-section");
    return new Chart(canvas, {
      data: { datasets: datasets },
      plugins: [summaryPlugin],
      options: {
        animation: false, responsive: true, maintainAspectRatio: false, parsing: true,
        interaction: { mode: "nearest", intersect: true },
        scales: {
          x: {
            type: "linear", min: xmin, max: xmax, title: { display: true, text: "Date" },
            ticks: { callback: function (v) { return isoDay(v).slice(0, 7); }, maxRotation: 0, autoSkipPadding: 12 }
          },
          events: {
            type: "category", labels: LANES, position: "left", stack: "lanes", stackWeight: 1.4, offset: true,
            grid: { display: false }, border: { display: true }, ticks: { autoSkip: false, font: { size: 11 } }
          },
          y: {
            type: "linear", position: "left", stack: "lanes", stackWeight: 5, min: 0,
            max: Math.ceil(maxValue * 1.1 / 100) * 100, title: { display: true, text: "mg/dL" }
          }
        },
        plugins: {
          legend: { position: "bottom", labels: { usePointStyle: true, boxWidth: 30 } },
          tooltip: {
            callbacks: {
              title: function (items) { return items.length ? isoDay(items[0].parsed.x) : ""; },
              label: function (item) {
                var raw = item.raw || {};
                if (raw.point) {
                  var n = raw.point.notes.length ? " — " + raw.point.notes.join("; ") : "";
                  return item.dataset.label.split(" ")[0] + " " + raw.point.display + n;
                }
                if (raw.infusion) return raw.infusion.subcutaneous ? "SCIG dose" : "IVIG infusion";
                if (raw.episode) {
                  var e = raw.episode;
                  return e.label + " (" + e.kind + (e.encapsulated ? ", encapsulated organism" : "") +
                    (e.hospitalised ? ", hospitalised" : "") + ")";
                }
                return item.dataset.label;
              }
            }
          }
        }
      }
    });
  }

  function igTable(view) {
    var body = document.querySelector("#ig-table tbody");
    var rows = [];
    ["IgG", "IgM", "IgA"].forEach(function (name) {
      view.series[name].points.forEach(function (p) { rows.push([p.date, name, p.display, p.notes.join("; ")]); });
    });
    rows.sort(function (a, b) { return a[0] < b[0] ? -1 : a[0] > b[0] ? 1 : 0; });
    rows.forEach(function (r) {
      var tr = el("tr");
      r.forEach(function (c) { tr.appendChild(el("td", c)); });
      body.appendChild(tr);
    });
  }

  function titerChart(view) {
    var p = view.pneumococcal;
    var summary = document.getElementById("titer-summary");
    summary.textContent = "PPSV23 response: " + p.summary +
      (p.vaccination ? " · vaccinated " + p.vaccination : "") + (p.problems.length ? " · " + p.problems.join("; ") : "");
    show("titer-section");
    var canvas = document.getElementById("titer-chart");
    if (!p.serotypes.length) {
      canvas.parentNode.hidden = true;
      return null;
    }
    var labels = p.serotypes.map(function (s) { return s.serotype; });
    var t = view.thresholds.filter(function (x) { return x.chart === "titers"; })[0];
    var maxValue = t.value;
    p.serotypes.forEach(function (s) {
      ["pre", "post"].forEach(function (k) { if (s[k]) maxValue = Math.max(maxValue, s[k].value); });
    });
    function bars(phase, label, color) {
      return {
        type: "bar", label: label, backgroundColor: color, borderColor: color, order: 2,
        data: p.serotypes.map(function (s) { return s[phase] ? s[phase].value : null; }),
        titers: p.serotypes.map(function (s) { return s[phase]; })
      };
    }
    return new Chart(canvas, {
      data: {
        labels: labels,
        datasets: [bars("pre", "Pre-vaccination (µg/mL)", COLORS.pre), bars("post", "Post-vaccination (µg/mL)", COLORS.post),
          Object.assign(thresholdDataset(t, labels, "y"), { data: labels.map(function () { return t.value; }) })]
      },
      plugins: [summaryPlugin],
      options: {
        animation: false, responsive: true, maintainAspectRatio: false,
        scales: {
          x: { type: "category", title: { display: true, text: "Serotype" } },
          y: { type: "linear", min: 0, max: Math.ceil(maxValue * 1.15 * 2) / 2, title: { display: true, text: "µg/mL" } }
        },
        plugins: {
          legend: { position: "bottom" },
          tooltip: {
            callbacks: {
              label: function (item) {
                var tt = item.dataset.titers && item.dataset.titers[item.dataIndex];
                if (tt) return item.dataset.label.split(" (")[0] + ": " + tt.display + " (" + tt.date + ")";
                return item.dataset.label;
              }
            }
          }
        }
      }
    });
  }

  function renderInfections(view) {
    var ul = document.getElementById("infections");
    var inf = view.infections;
    if (!inf.episodes.length) {
      ul.appendChild(el("li", inf.known ? "No infections since " + inf.window_start + "." :
        "Infection history unknown: " + (inf.problems.join("; ") || "no clinical data in the window")));
    }
    inf.episodes.forEach(function (e) {
      ul.appendChild(el("li", e.date + " — " + e.label + " (" + e.kind +
        (e.encapsulated ? ", encapsulated organism" : "") + (e.hospitalised ? ", hospitalised" : "") + ")"));
    });
    show("infection-section");
  }

  function renderTrace(view) {
    var d = view.decision;
    document.getElementById("decision").textContent = d.rule ?
      "Decided by " + d.rule + (d.branch ? " — " + d.branch : "") :
      (d.in_scope ? "No decision rule applied." : "The IVIG question does not arise for this record.");
    var body = document.querySelector("#trace tbody");
    d.rules.forEach(function (r) {
      var tr = el("tr", null, r.result === "applies" ? "applies" : "");
      [r.rule, r.branch || "", r.result, r.conclusion || r.reason || ""].forEach(function (c) { tr.appendChild(el("td", c)); });
      body.appendChild(tr);
    });
    document.getElementById("facts").textContent = JSON.stringify(d.facts, null, 2);
    var problems = d.data_problems.concat(d.notes);
    Object.keys(view.unavailable || {}).forEach(function (k) { problems.push(k + ": " + view.unavailable[k]); });
    var ul = document.getElementById("problems");
    if (!problems.length) document.getElementById("problems-box").hidden = true;
    problems.forEach(function (p) { ul.appendChild(el("li", p)); });
    show("trace-section");
  }

  function fail(message) {
    var status = document.getElementById("status");
    status.textContent = message;
    status.className = "status error";
    document.body.setAttribute("data-ready", "error");
  }

  function render(view) {
    renderPatient(view);
    renderCards(view);
    igChart(view);
    igTable(view);
    titerChart(view);
    renderInfections(view);
    renderTrace(view);
    document.getElementById("status").hidden = true;
    document.body.setAttribute("data-ready", "true");
  }

  function load() {
    if (typeof Chart === "undefined") { fail("The chart library did not load."); return; }
    fetch(document.body.getAttribute("data-api"), { credentials: "same-origin", headers: { Accept: "application/json" } })
      .then(function (resp) {
        return resp.json().then(function (body) {
          if (!resp.ok) throw new Error(body && body.message ? body.message : "HTTP " + resp.status);
          return body;
        });
      })
      .then(render)
      .catch(function (err) { fail("Cannot show the record: " + err.message); });
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", load);
  else load();
})();
