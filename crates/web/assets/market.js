// The API market's pages: the interactive API reference (Swagger UI) and the usage chart
// (uPlot). Each starts when its element is on the page; the data comes from the page itself.
"use strict";

document.addEventListener("DOMContentLoaded", () => {
  const reference = document.getElementById("swagger-ui");
  if (reference && window.SwaggerUIBundle) {
    window.SwaggerUIBundle({
      url: reference.dataset.url,
      dom_id: "#swagger-ui",
      deepLinking: false,
      tryItOutEnabled: true,
      persistAuthorization: false,
      requestSnippetsEnabled: true,
    });
  }

  const chart = document.getElementById("usage-chart");
  const data = document.getElementById("usage-data");
  if (chart && data && window.uPlot) {
    // Every minute of the last hour, those without requests at zero.
    const points = new Map(
      JSON.parse(data.textContent).map((p) => [Date.parse(p.minute) / 1000, p]),
    );
    const end = Math.floor(Date.now() / 60000) * 60;
    const times = [];
    for (let t = end - 59 * 60; t <= end; t += 60) times.push(t);
    const at = (t, field) => (points.has(t) ? points.get(t)[field] : 0);
    const options = {
      width: Math.max(chart.clientWidth, 320),
      height: 220,
      series: [
        {},
        { label: "Requests", stroke: "#1c7ed6", width: 2 },
        { label: "Errors", stroke: "#e03131", width: 2 },
      ],
      axes: [{}, { label: "per minute" }],
    };
    new window.uPlot(
      options,
      [times, times.map((t) => at(t, "requests")), times.map((t) => at(t, "errors"))],
      chart,
    );
  }
});
