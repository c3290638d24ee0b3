/* ivig-cds SMART trend page: draws /smart/api/patient with Chart.js and its date-fns adapter
 * (vendored, same origin).
 *
 * Patient data reaches the DOM through textContent or Chart.js's canvas, never through HTML
 * parsing; the one exception is a card's detail, which the server renders from its Markdown
 * and sanitises (service/smart/card_html.py) before it is inserted as HTML. After each chart renders,
 * its canvas carries a machine-readable summary of what Chart.js drew (data-points,
 * data-thresholds, data-chart-area, data-clipped, data-dpr) and the body gets data-ready="true"
 * once everything is on the page (data-ready="error" on a failure).
 */
(function () {
  "use strict";

  var DAY = 86400000;
  var COLORS = {
    IgG: "#1f5fbf", IgGmid: "#6f9fe8", IgM: "#c25700", IgA: "#2e7d32",
    igm_low_mg_dl: "#c25700", igg_borderline_from_mg_dl: "#7fa6e0", igg_deficient_mg_dl: "#1f5fbf",
    iga_low_mg_dl: "#2e7d32", trough_target_mg_dl: "#7b1fa2", titer_protective_ug_ml: "#b00020",
    infusion: "#00838f", infection: "#b00020", ppsv23: "#6d4c41", pre: "#9e9e9e", post: "#1f5fbf"
  };
  var DASHES = {
    igm_low_mg_dl: [6, 4], igg_borderline_from_mg_dl: [2, 3], igg_deficient_mg_dl: [6, 4],
    iga_low_mg_dl: [6, 4], trough_target_mg_dl: [10, 4], titer_protective_ug_ml: [6, 4]
  };
  var LANES = ["Infection", "IVIG infusion", "PPSV23"];
  var MID = "IgG mid-interval (mg/dL)";
  //: above this ratio of largest to smallest value a linear axis would press the small ones onto the baseline
  var LOG_RATIO = 20;
  var POINT_RADIUS = 5;

  function el(tag, text, cls) {
    var node = document.createElement(tag);
    if (text !== undefined && text !== null) node.textContent = String(text);
    if (cls) node.className = cls;
    return node;
  }

  function show(id) { document.getElementById(id).hidden = false; }

  /* A calendar date as the browser's local midnight: the time scale's ticks are local days too. */
  function day(isoDate) {
    var p = isoDate.split("-");
    return new Date(+p[0], +p[1] - 1, +p[2]).getTime();
  }

  function round(v) { return Math.round(v * 1000) / 1000; }

  function topicNames(view, topics) {
    return topics.map(function (code) {
      var card = view.cards.filter(function (c) { return c.topic === code; })[0];
      return card && card.topic_display ? card.topic_display : code;
    });
  }

  /* What Chart.js actually laid out: drawn elements per dataset, threshold lines by pixel,
   * and the datasets with a point outside its scale (a point half cut off at the baseline). */
  var summaryPlugin = {
    id: "ivigSummary",
    afterRender: function (chart) {
      var points = {};
      var lines = [];
      var clipped = [];
      chart.data.datasets.forEach(function (ds, i) {
        var meta = chart.getDatasetMeta(i);
        if (!chart.isDatasetVisible(i)) return;
        var drawn = meta.data.filter(function (e) { return Number.isFinite(e.x) && Number.isFinite(e.y); });
        var scale = chart.scales[meta.yAxisID];
        if (ds.ivigThreshold) {
          var first = drawn[0], last = drawn[drawn.length - 1];
          if (!first) return;
          lines.push({
            key: ds.ivigThreshold.key, label: ds.label, configured: ds.ivigThreshold.value,
            source: ds.ivigThreshold.source, decided: ds.ivigThreshold.decided,
            value: round(scale.getValueForPixel(first.y)), y: round(first.y),
            x0: round(first.x), x1: round(last.x), color: ds.borderColor
          });
        } else {
          points[ds.label] = drawn.length;
          var r = typeof ds.pointRadius === "number" ? ds.pointRadius : 0;
          if (drawn.some(function (e) { return e.y - r < scale.top - 0.5 || e.y + r > scale.bottom + 0.5; })) {
            clipped.push(ds.label);
          }
        }
      });
      var canvas = chart.canvas;
      canvas.setAttribute("data-points", JSON.stringify(points));
      canvas.setAttribute("data-thresholds", JSON.stringify(lines));
      canvas.setAttribute("data-clipped", JSON.stringify(clipped));
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
      borderColor: COLORS[t.key] || "#555",
      borderDash: t.source === "lab range" ? [3, 3] : (DASHES[t.key] || [6, 4]), borderWidth: 2,
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
      li.appendChild(el("strong", c.summary, "summary"));
      li.appendChild(el("span", c.topic_display || c.topic, "topic"));
      var details = el("details");
      details.open = true;
      details.appendChild(el("summary", "Card detail"));
      var detail = el("div", null, "detail");
      detail.innerHTML = c.detail_html;  // rendered from Markdown and sanitised on the server
      details.appendChild(detail);
      li.appendChild(details);
      list.appendChild(li);
    });
    show("cards-section");
  }

  /* Linear from zero, unless the values span so much that the small ones would sit on the baseline
   * (IgA 3 mg/dL beside IgG 900): then logarithmic, from a power of ten below the smallest value.
   * A result of 0 has no place on a logarithmic axis, so with one the axis stays linear. */
  function valueScale(values) {
    var positive = values.filter(function (v) { return v > 0; });
    var lo = Math.min.apply(null, positive), hi = Math.max.apply(null, values);
    if (positive.length === values.length && hi / lo > LOG_RATIO) {
      return {
        type: "logarithmic", min: Math.pow(10, Math.floor(Math.log10(lo / 1.5))),
        max: Math.pow(10, Math.ceil(Math.log10(hi * 1.25))), text: "mg/dL (logarithmic scale)"
      };
    }
    return { type: "linear", min: 0, max: Math.ceil(hi * 1.1 / 100) * 100 || 100, text: "mg/dL" };
  }

  /* Ticks on calendar boundaries (week starts, month starts, years) so that equal gaps on the axis
   * are equal times: the unit follows the span shown, the width decides how many are labelled. */
  function tickUnit(span) {
    if (span <= 70 * DAY) return "week";
    if (span <= 3 * 365 * DAY) return "month";
    if (span <= 8 * 365 * DAY) return "quarter";
    return "year";
  }

  function igPoint(p) { return { x: day(p.date), y: p.value, point: p }; }

  function igChart(view) {
    var igThresholds = view.thresholds.filter(function (t) { return t.chart === "ig"; });
    var stamps = [day(view.today)];
    var values = [];
    ["IgG", "IgM", "IgA"].forEach(function (name) {
      view.series[name].points.forEach(function (p) { stamps.push(day(p.date)); values.push(p.value); });
    });
    view.ivig.infusions.forEach(function (i) { stamps.push(day(i.date)); });
    view.infections.episodes.forEach(function (e) { stamps.push(day(e.date)); });
    if (view.pneumococcal.vaccination) stamps.push(day(view.pneumococcal.vaccination));
    var xmin = Math.min.apply(null, stamps) - 30 * DAY;
    var xmax = day(view.today) + 15 * DAY;
    igThresholds.forEach(function (t) { values.push(t.value); });
    var yScale = valueScale(values);
    document.getElementById("ig-scale").textContent = yScale.type === "logarithmic" ?
      "Levels on a logarithmic scale: each gridline step is a factor, so IgA and IgM in single or double digits stay " +
      "readable next to IgG in hundreds." : "";

    var datasets = [];
    ["IgG", "IgM", "IgA"].forEach(function (name) {
      var color = COLORS[name];
      var points = view.series[name].points.filter(function (p) { return p.timing !== "mid-interval"; });
      datasets.push({
        type: "line", label: name + " (mg/dL)", yAxisID: "y", borderColor: color, backgroundColor: color,
        data: points.map(igPoint), pointRadius: POINT_RADIUS, pointHoverRadius: 7, borderWidth: 2, tension: 0,
        fill: false, order: 1,
        pointBackgroundColor: function (ctx) {
          var p = ctx.raw && ctx.raw.point;
          return p && p.confounded && !p.timing ? "#ffffff" : color;
        }
      });
    });
    var mid = view.series.IgG.points.filter(function (p) { return p.timing === "mid-interval"; });
    if (mid.length) {
      datasets.push({
        type: "scatter", label: MID, yAxisID: "y", pointStyle: "crossRot", pointRadius: POINT_RADIUS + 2,
        pointHoverRadius: 9, borderWidth: 3, borderColor: COLORS.IgGmid, backgroundColor: COLORS.IgGmid,
        data: mid.map(igPoint), order: 2
      });
    }
    igThresholds.forEach(function (t) { datasets.push(thresholdDataset(t, [xmin, xmax], "y")); });
    datasets.push({
      type: "scatter", label: "IVIG infusion", yAxisID: "events", pointStyle: "triangle", pointRadius: 6,
      borderColor: COLORS.infusion, backgroundColor: COLORS.infusion,
      data: view.ivig.infusions.map(function (i) { return { x: day(i.date), y: "IVIG infusion", infusion: i }; })
    });
    datasets.push({
      type: "scatter", label: "Infection", yAxisID: "events", pointStyle: "rectRot", pointRadius: 7,
      borderColor: COLORS.infection,
      backgroundColor: function (ctx) {
        var e = ctx.raw && ctx.raw.episode;
        return e && e.kind === "minor" ? "#ffffff" : COLORS.infection;
      },
      data: view.infections.episodes.map(function (e) { return { x: day(e.date), y: "Infection", episode: e }; })
    });
    datasets.push({
      type: "scatter", label: "PPSV23", yAxisID: "events", pointStyle: "star", pointRadius: 8, borderWidth: 2,
      borderColor: COLORS.ppsv23, backgroundColor: COLORS.ppsv23,
      data: view.pneumococcal.vaccination ?
        [{ x: day(view.pneumococcal.vaccination), y: "PPSV23", vaccination: view.pneumococcal.vaccination }] : []
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
            type: "time", min: xmin, max: xmax, title: { display: true, text: "Date" },
            time: {
              unit: tickUnit(xmax - xmin),
              displayFormats: { day: "d MMM yyyy", week: "d MMM yyyy", month: "MMM yyyy", quarter: "MMM yyyy",
                year: "yyyy" }
            },
            ticks: { source: "auto", maxRotation: 0, autoSkip: true, autoSkipPadding: 16 }
          },
          events: {
            type: "category", labels: LANES, position: "left", stack: "lanes", stackWeight: 1.4, offset: true,
            grid: { display: false }, border: { display: true }, ticks: { autoSkip: false, font: { size: 11 } }
          },
          y: {
            type: yScale.type, position: "left", stack: "lanes", stackWeight: 5, min: yScale.min, max: yScale.max,
            title: { display: true, text: yScale.text }
          }
        },
        plugins: {
          legend: { position: "bottom", labels: { usePointStyle: true, boxWidth: 30 } },
          tooltip: {
            callbacks: {
              // the exact date of the result or event, never the tick's rounded one
              title: function (items) {
                var raw = items.length ? items[0].raw || {} : {};
                var date = raw.point ? raw.point.date : raw.infusion ? raw.infusion.date :
                  raw.episode ? raw.episode.date : raw.vaccination || "";
                return raw.point && raw.point.time ? date + " " + raw.point.time.slice(11, 16) : date;
              },
              label: function (item) {
                var raw = item.raw || {};
                if (raw.point) {
                  var n = raw.point.notes.length ? " — " + raw.point.notes.join("; ") : "";
                  var name = item.dataset.label === MID ? "IgG (mid-interval, not a trough)" : item.dataset.label.split(" ")[0];
                  return name + " " + raw.point.display + n;
                }
                if (raw.infusion) {
                  return (raw.infusion.subcutaneous ? "SCIG dose" : "IVIG infusion") +
                    (raw.infusion.recorded ? " on record (an order or statement: the date it was recorded)" : "");
                }
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

  function thresholdList(view) {
    var ul = document.getElementById("threshold-list");
    view.thresholds.forEach(function (t) {
      var li = el("li", t.label + (t.source === "lab range" ? " — the lab's own limit, used instead of the guideline's" : ""));
      li.setAttribute("data-key", t.key);
      if (t.decided.length) {
        li.appendChild(el("span", " · compared with for: " + topicNames(view, t.decided).join(", "), "decided"));
      }
      ul.appendChild(li);
    });
  }

  function igTable(view) {
    var body = document.querySelector("#ig-table tbody");
    var rows = [];
    ["IgG", "IgM", "IgA"].forEach(function (name) {
      view.series[name].points.forEach(function (p) {
        var label = p.timing === "mid-interval" ? name + " (mid-interval)" : p.timing === "trough" ? name + " (trough)" : name;
        rows.push([p.date, label, p.display, p.notes.join("; ")]);
      });
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

  function factCell(row) {
    var td = el("td", row.value || null);
    if (row.items && row.items.length) {
      var ul = el("ul");
      row.items.forEach(function (item) { ul.appendChild(el("li", item)); });
      td.appendChild(ul);
    }
    return td;
  }

  function renderTrace(view) {
    var d = view.decision;
    document.getElementById("decision").textContent = d.rule ?
      "Decided by " + d.rule + (d.branch ? " — " + d.branch : "") :
      (d.in_scope ? "No decision rule applied." : "The IVIG question does not arise for this record.");
    var body = document.querySelector("#trace tbody");
    d.rules.forEach(function (r) {
      var tr = el("tr", null, r.result === "applies" ? "applies" : "");
      tr.appendChild(el("td", r.rule, "ident"));
      [r.branch || "", r.result, r.conclusion || r.reason || ""].forEach(function (c) { tr.appendChild(el("td", c)); });
      body.appendChild(tr);
    });
    var facts = document.querySelector("#facts tbody");
    d.fact_rows.forEach(function (row) {
      var tr = el("tr");
      tr.appendChild(el("th", row.fact));
      tr.appendChild(factCell(row));
      tr.appendChild(el("td", row.date));
      tr.appendChild(el("td", row.judged));
      facts.appendChild(tr);
    });
    var problems = d.data_problems.concat(d.notes);
    Object.keys(view.unavailable || {}).forEach(function (k) { problems.push(k + ": " + view.unavailable[k]); });
    var ul = document.getElementById("problems");
    if (!problems.length) document.getElementById("problems-box").hidden = true;
    problems.forEach(function (p) { ul.appendChild(el("li", p)); });
    show("trace-section");
  }

  /* Printing: every folded section open (a committee reads the paper, it cannot unfold it) and
   * each chart put on paper as a picture drawn for the page's width at twice the resolution.
   * A picture, because the browser lays out the printed page after this event: a live canvas
   * would keep its screen size and run into the text below it. Undone afterwards. */
  var PRINT_WIDTH = 700;  // CSS pixels inside A4 or Letter margins
  var folded = [];
  function beforePrint() {
    folded = Array.prototype.filter.call(document.querySelectorAll("details"), function (d) { return !d.open; });
    folded.forEach(function (d) { d.open = true; });
    Object.keys(Chart.instances).forEach(function (k) {
      var chart = Chart.instances[k];
      var box = chart.canvas.parentNode;
      if (box.hidden || box.querySelector("img.print-copy")) return;
      chart.options.devicePixelRatio = 2;
      chart.resize(PRINT_WIDTH, box.classList.contains("titers") ? 300 : 380);
      var img = new Image();
      img.className = "print-copy";
      img.alt = chart.canvas.getAttribute("aria-label") || "";
      img.src = chart.toBase64Image();
      box.appendChild(img);
      delete chart.options.devicePixelRatio;
      chart.resize();
    });
    document.body.setAttribute("data-printing", "true");
  }
  function afterPrint() {
    folded.forEach(function (d) { d.open = false; });
    folded = [];
    Array.prototype.forEach.call(document.querySelectorAll("img.print-copy"), function (img) { img.remove(); });
    document.body.removeAttribute("data-printing");
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
    thresholdList(view);
    igTable(view);
    titerChart(view);
    renderInfections(view);
    renderTrace(view);
    document.getElementById("status").hidden = true;
    window.addEventListener("beforeprint", beforePrint);
    window.addEventListener("afterprint", afterPrint);
    document.body.setAttribute("data-ready", "true");
  }

  function dateAdapterLoaded() {
    try {
      return Object.keys(new Chart._adapters._date().formats()).length > 0;
    } catch (e) {  // Chart.js's stand-in adapter throws: no time scale without the real one
      return false;
    }
  }

  function load() {
    if (typeof Chart === "undefined") { fail("The chart library did not load."); return; }
    if (!dateAdapterLoaded()) { fail("The chart library's date adapter did not load."); return; }
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
